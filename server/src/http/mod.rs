//! Our HTTP/1.1 server on may: listener and shutdown, the connection loop,
//! the request view, the response builder and the TLS acceptor.
//!
//! One coroutine serves one connection. It reads into a reusable buffer,
//! parses heads in place with httparse, hands each request to the
//! [`Service`] as a borrowed [`Request`] view, and writes the answers of
//! pipelined requests in one batch. Cheap answers are produced on the
//! connection's own coroutine; work that waits (database, panels) runs in a
//! coroutine of its own under a deadline (see [`Outcome::Deferred`]).
//!
//! The layer knows nothing of subscriptions or the database.

mod conn;
mod date;
mod request;
mod response;
mod server;
mod service;
mod tls;
mod transport;

pub use request::Request;
pub use response::{Body, HeaderValue, Response};
pub use server::{Server, ServerOptions, raise_open_files_limit};
pub use service::{Deadline, Exchange, Outcome, Service};
pub use tls::{TlsAcceptor, TlsError};

/// Largest request line (method, target and version) accepted; a longer one
/// is answered with 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Largest request head (request line and headers) accepted; a longer one is
/// answered with 431.
pub const MAX_HEAD: usize = 32 * 1024;

/// Most header fields accepted in one request; more are answered with 431.
pub const MAX_HEADERS: usize = 100;

/// Largest request body accepted (by Content-Length); a larger one is
/// answered with 413.
pub const MAX_BODY: usize = 64 * 1024;
