//! The yardstick's contestant for our HTTP layer: `/healthz` ("ok\n") served
//! by `valhalla::http` with the production routing, nothing else.
//!
//! Run: `cargo run --release --example yardstick_valhalla -- 127.0.0.1:8081 2`
//! (address, may workers); `scripts/yardstick` starts it next to
//! `yardstick_minihttp` and loads both with wrk.

mod yardstick;

use std::sync::Arc;

use anyhow::Context;
use valhalla::app::{Route, route};
use valhalla::http::{Outcome, Request, Response, Server, ServerOptions, Service};

/// Answers the way `valhalla::app::App` answers `/healthz`: the same route
/// lookup, method and body checks, and response. The access log and the
/// request metrics of `App` are left out: they are the application's cost,
/// not the layer's (docs/benchmarks.md says what they add).
struct Healthz;

impl Service for Healthz {
    fn call(&self, request: &Request<'_>) -> Outcome {
        let answer = match route(request.path()) {
            Route::Healthz if !matches!(request.method(), "GET" | "HEAD") => {
                Response::text(405, "method not allowed\n").header("Allow", "GET, HEAD")
            }
            Route::Healthz if !request.body().is_empty() => {
                Response::text(413, "this route takes no request body\n")
            }
            Route::Healthz => Response::text(200, "ok\n"),
            _ => Response::text(404, "not found\n"),
        };
        Outcome::Ready(answer)
    }
}

fn main() -> anyhow::Result<()> {
    let (addr, workers) = yardstick::arguments("yardstick_valhalla")?;
    valhalla::configure_runtime(workers);
    valhalla::http::raise_open_files_limit().context("cannot raise the open files limit")?;

    let options = ServerOptions {
        addr,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::new(Healthz))
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!(
        "yardstick_valhalla listening on {} with {workers} workers",
        server.local_addr()
    );

    // The server runs on may's worker threads; this thread only keeps the
    // process alive until the script kills it.
    loop {
        std::thread::park();
    }
}
