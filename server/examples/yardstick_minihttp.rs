//! The yardstick's reference contestant: `/healthz` ("ok\n") served by
//! may_minihttp 0.1.11, the smallest fast HTTP server on may.
//!
//! Run: `cargo run --release --example yardstick_minihttp -- 127.0.0.1:8082 2`
//! (address, may workers); `scripts/yardstick` starts it next to
//! `yardstick_valhalla` and loads both with wrk.

mod yardstick;

use std::io;

use anyhow::Context;
use may_minihttp::{HttpServer, HttpService, Request, Response};

/// The same answer as our `/healthz`: status 200, the same content type and
/// body. may_minihttp adds `Server` and `Date`; our layer adds `Date`, so
/// the heads differ by a few bytes only.
#[derive(Clone)]
struct Healthz;

impl HttpService for Healthz {
    fn call(
        &mut self,
        request: Request<'_, '_, '_>,
        response: &mut Response<'_>,
    ) -> io::Result<()> {
        if request.path() == "/healthz" {
            response.header("Content-Type: text/plain; charset=utf-8");
            response.body("ok\n");
        } else {
            response.status_code(404, "Not Found");
            response.header("Content-Type: text/plain; charset=utf-8");
            response.body("not found\n");
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let (addr, workers) = yardstick::arguments("yardstick_minihttp")?;
    // The same runtime settings as our server, so that only the layers
    // differ.
    valhalla::configure_runtime(workers);
    valhalla::http::raise_open_files_limit().context("cannot raise the open files limit")?;

    let server = HttpServer(Healthz)
        .start(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("yardstick_minihttp listening on {addr} with {workers} workers");
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the may_minihttp listener panicked"))?;
    Ok(())
}
