//! Shared test helpers: the may runtime, free ports, a database per test, the
//! server binary as a child process, and a small raw HTTP client.

#![allow(dead_code, reason = "each test module uses a different subset")]

pub mod client;
pub mod mariadb;
pub mod process;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::sync::Once;

/// Configures may once per test binary, the same way the server binary does.
pub fn init_may() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        valhalla::configure_runtime(2);
    });
}

/// A port that nothing listens on right now. may binds with SO_REUSEPORT, so a
/// port taken by another server would silently share traffic: ask the kernel
/// for a fresh one instead of guessing.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
