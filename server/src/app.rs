//! The application behind the HTTP layer: routing, the operational
//! endpoints, the mapping of internal errors to statuses, and the access log.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::db::{Db, DbError};
use crate::http::{Exchange, Outcome, Request, Response, Service};
use crate::metrics::{self, HttpMetrics};
use crate::page;
use crate::subscription::{SubscriptionRequest, Subscriptions};

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Subscription { username: &'a str, app_key: &'a str },
    NotFound,
}

impl Route<'_> {
    /// The label of this route in metrics: a fixed set, never user input.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Subscription { .. } => "subscription",
            Route::NotFound => "not_found",
        }
    }
}

/// Maps a path (without the query) to its route.
pub fn route(path: &str) -> Route<'_> {
    match path {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        _ => subscription_route(path).unwrap_or(Route::NotFound),
    }
}

fn subscription_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/sub/")?;
    let mut segments = rest.split('/');
    let username = segments.next().filter(|s| !s.is_empty())?;
    let app_key = segments.next().filter(|s| !s.is_empty())?;
    match (segments.next(), segments.next()) {
        (Some("links"), None) => Some(Route::Subscription { username, app_key }),
        _ => None,
    }
}

/// The request target as it may appear in logs: the query is dropped and the
/// app key of a subscription path is replaced, because both can carry
/// credentials.
pub fn redact(target: &str) -> Cow<'_, str> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match route(path) {
        Route::Subscription { username, .. } => {
            Cow::Owned(format!("/sub/{username}/<redacted>/links"))
        }
        _ if path.len() == target.len() => Cow::Borrowed(target),
        _ => Cow::Borrowed(path),
    }
}

/// The shared state every request sees.
pub struct App {
    db: Db,
    subscriptions: Subscriptions,
    registry: Arc<Registry>,
    http_metrics: HttpMetrics,
}

impl App {
    pub fn new(
        db: Db,
        subscriptions: Subscriptions,
        registry: Arc<Registry>,
        http_metrics: HttpMetrics,
    ) -> App {
        App {
            db,
            subscriptions,
            registry,
            http_metrics,
        }
    }

    fn subscription(&self, request: &Request<'_>, username: &str, app_key: &str) -> Outcome {
        let (Some(username), Some(app_key)) = (decode_segment(username), decode_segment(app_key))
        else {
            return Outcome::Ready(Response::text(404, "not found\n"));
        };
        let html = request.header("Accept").is_some_and(|accept| {
            accept
                .as_bytes()
                .windows(b"text/html".len())
                .any(|window| window.eq_ignore_ascii_case(b"text/html"))
        });
        let scheme = if request.is_tls() { "https" } else { "http" };
        let host = request
            .header("Host")
            .filter(|host| is_plain_host(host))
            .unwrap_or("localhost");
        let subscription = SubscriptionRequest {
            username,
            app_key,
            html,
            head_only: request.is_head(),
            lang: page::preferred_lang(request.header("Accept-Language")),
            origin: format!("{scheme}://{host}"),
        };
        let subscriptions = self.subscriptions.clone();
        Outcome::Deferred(Box::new(move |deadline| {
            subscriptions.answer(&subscription, deadline)
        }))
    }

    fn readyz(&self) -> Outcome {
        let db = self.db.clone();
        Outcome::Deferred(Box::new(move |deadline| {
            match db.ping(deadline.instant()) {
                Ok(()) => Response::text(200, "ready\n"),
                Err(error) => db_error_response(&error),
            }
        }))
    }
}

impl Service for App {
    fn call(&self, request: &Request<'_>) -> Outcome {
        let route = route(request.path());
        if route == Route::NotFound {
            return Outcome::Ready(Response::text(404, "not found\n"));
        }
        if !matches!(request.method(), "GET" | "HEAD") {
            return Outcome::Ready(
                Response::text(405, "method not allowed\n").header("Allow", "GET, HEAD"),
            );
        }
        if !request.body().is_empty() {
            return Outcome::Ready(Response::text(413, "this route takes no request body\n"));
        }
        match route {
            Route::Healthz => Outcome::Ready(Response::text(200, "ok\n")),
            Route::Readyz => self.readyz(),
            Route::Metrics => Outcome::Ready(Response::new(200).with_body(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics::render(&self.registry),
            )),
            Route::Subscription { username, app_key } => {
                self.subscription(request, username, app_key)
            }
            Route::NotFound => Outcome::Ready(Response::text(404, "not found\n")),
        }
    }

    fn completed(&self, exchange: &Exchange<'_>) {
        let path = exchange
            .target
            .split_once('?')
            .map_or(exchange.target, |(path, _)| path);
        let label = route(path).label();
        self.http_metrics
            .observe(label, exchange.status, exchange.elapsed);
        tracing::info!(
            method = exchange.method,
            path = %redact(exchange.target),
            status = exchange.status,
            bytes = exchange.bytes,
            duration_ms = exchange.elapsed.as_secs_f64() * 1000.0,
            peer = %exchange.peer.ip(),
            "request"
        );
    }
}

/// A percent-encoded path segment as text; `None` when it is not UTF-8.
fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// A Host header that can be echoed into a URL: a name or address and an
/// optional port, nothing that could break out of the URL.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The one place a database failure becomes an HTTP answer. Bodies stay
/// generic: the details are in the log, never in front of a client.
pub fn db_error_response(error: &DbError) -> Response {
    match error {
        DbError::Exhausted => {
            Response::text(503, "server busy, retry shortly\n").header("Retry-After", "1")
        }
        // The request deadline passed while the query was queued or running:
        // the same answer the HTTP layer gives for any request out of time.
        DbError::Timeout => Response::text(504, "gateway timeout\n"),
        _ => {
            tracing::error!(%error, "database request failed");
            Response::text(503, "database unavailable\n").header("Retry-After", "5")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recognised() {
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/readyz"), Route::Readyz);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(
            route("/sub/ali/k3y/links"),
            Route::Subscription {
                username: "ali",
                app_key: "k3y"
            }
        );
        for path in [
            "/",
            "/sub/ali/k3y",
            "/sub//k3y/links",
            "/sub/ali/k3y/links/x",
            "/healthz/",
        ] {
            assert_eq!(route(path), Route::NotFound, "{path}");
        }
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode_segment("%D8%B9%D9%84%DB%8C").as_deref(), Some("علی"));
        assert_eq!(decode_segment("h%231").as_deref(), Some("h#1"));
        assert_eq!(decode_segment("%FF"), None);
        assert!(is_plain_host("sub.example.com:8443"));
        assert!(!is_plain_host("evil.example/\"><script>"));
    }

    #[test]
    fn app_keys_and_queries_never_reach_the_log() {
        assert_eq!(redact("/sub/ali/s3cret/links"), "/sub/ali/<redacted>/links");
        assert_eq!(
            redact("/sub/ali/s3cret/links?token=x"),
            "/sub/ali/<redacted>/links"
        );
        assert_eq!(redact("/healthz?probe=1"), "/healthz");
        assert_eq!(redact("/metrics"), "/metrics");
    }
}
