//! valhalla: one subscription URL per user, merged from the user's accounts on
//! several VPN panels, with per-user and per-reseller quotas.

pub mod app;
pub mod config;
pub mod db;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod page;
pub mod subscription;
pub mod upstream;

/// Stack size of every may coroutine, in bytes.
///
/// may's default is 32 KiB and an overflow is a segfault, not a panic. The
/// deepest code measured on a coroutine was a direct `mysql` query at about
/// 28 KiB; queries now run on dedicated threads, and the deepest remaining
/// paths are TLS (about 10 KiB server side, 11 KiB for a client request) plus
/// the JSON parsing and page rendering of the subscription flow. 64 KiB
/// leaves more than twice the measured peak while keeping 2,000 idle
/// connections at about 128 MiB of reserved (mostly untouched) stack.
pub const COROUTINE_STACK_SIZE: usize = 64 * 1024;

/// Configures the may runtime: `workers` scheduler threads and the
/// coroutine stack size. Call it once, before the first coroutine starts.
///
/// may counts stack sizes in machine words, not bytes.
pub fn configure_runtime(workers: usize) {
    may::config()
        .set_workers(workers)
        .set_stack_size(COROUTINE_STACK_SIZE / std::mem::size_of::<usize>());
}
