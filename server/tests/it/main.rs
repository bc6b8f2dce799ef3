//! The integration tests of valhalla: real sockets, a real MariaDB, fake panels
//! that are real HTTP servers on loopback.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

mod cli;
mod db;
mod http;
mod page;
mod subscription;
mod tls;
mod upstream;
