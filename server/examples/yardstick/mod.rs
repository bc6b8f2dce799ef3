//! What the two yardstick servers share: their command line.

use std::net::SocketAddr;

use anyhow::Context;

/// `ADDR WORKERS`, both required so that the script states them; `name` is
/// the example's name for the usage line.
pub fn arguments(name: &str) -> anyhow::Result<(SocketAddr, usize)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, workers] = args.as_slice() else {
        anyhow::bail!("usage: {name} ADDR WORKERS");
    };
    let addr = addr
        .parse()
        .with_context(|| format!("address {addr:?} is not ip:port"))?;
    let workers = workers
        .parse()
        .with_context(|| format!("workers {workers:?} is not a number"))?;
    Ok((addr, workers))
}
