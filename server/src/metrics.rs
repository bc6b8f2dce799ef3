//! Request metrics and the Prometheus text exposition of every registered
//! metric (pool, panels and cache register their own at startup).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// Latency buckets in seconds: from a cached answer (a millisecond) to the
/// panel time-outs of tens of seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Counts answered requests by route and status, and their latency by route.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "valhalla_http_requests",
            "Answered HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "valhalla_http_request_duration_seconds",
            "Time from a complete request head to its answer, by route",
            latency.clone(),
        );
        HttpMetrics { requests, latency }
    }

    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }
}

/// The Prometheus text format of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        // Encoding into a String only fails on a formatter error, which a
        // String never raises; answer what was written so far.
        tracing::warn!("metrics encoding stopped early");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_latency_appear_in_the_exposition() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        metrics.observe("healthz", 200, Duration::from_millis(3));
        metrics.observe("healthz", 200, Duration::from_millis(3));
        metrics.observe("not_found", 404, Duration::from_micros(200));
        let text = render(&registry);
        assert!(
            text.contains("valhalla_http_requests_total{route=\"healthz\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "valhalla_http_request_duration_seconds_bucket{le=\"0.005\",route=\"healthz\"} 2"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
