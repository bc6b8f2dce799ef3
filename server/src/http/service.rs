//! The contract between the HTTP layer and the application: the service
//! trait, what a call returns, the request deadline and the record of an
//! answered request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::request::Request;
use super::response::Response;

/// The application behind the listener. One instance serves every
/// connection, from several worker threads at once.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. It runs on the connection's coroutine, so it
    /// must not wait: anything that waits returns [`Outcome::Deferred`].
    fn call(&self, request: &Request<'_>) -> Outcome;

    /// Called once per answered request (also for answers the layer produced
    /// itself: 400, 408, 413, 414, 431, 500, 504) after the response is
    /// queued. For access logs and metrics.
    fn completed(&self, exchange: &Exchange<'_>) {
        let _ = exchange;
    }
}

/// What [`Service::call`] returns.
pub enum Outcome {
    /// Answer now (cheap handlers: health, metrics, 404).
    Ready(Response),
    /// Work that may wait (database, panels): the layer runs it in its own
    /// coroutine and waits for it at most until the request deadline; at the
    /// deadline it answers 504 and abandons (cancels) the work; a panic in it
    /// answers 500.
    Deferred(Box<dyn FnOnce(Deadline) -> Response + Send + 'static>),
}

/// The moment by which a request must be answered: its start plus the
/// server's request timeout. Deferred work passes it on to whatever it waits
/// for (database queries, panel calls) so that nothing outlives the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Deadline {
        Deadline(instant)
    }

    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now() + timeout)
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left until the deadline, zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// One answered request, as the access log and the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct Exchange<'a> {
    /// The method as sent, or `-` when the request could not be parsed.
    pub method: &'a str,
    /// The raw request target (query included: redact before logging), or
    /// `-` when the request could not be parsed.
    pub target: &'a str,
    pub status: u16,
    /// Body bytes sent (zero for HEAD).
    pub bytes: usize,
    /// From the moment the request head was complete to the moment its
    /// answer was queued.
    pub elapsed: Duration,
    pub peer: SocketAddr,
}
