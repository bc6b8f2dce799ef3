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

/// Makes a panic inside may's own scheduler end the process at once.
///
/// Handlers run in coroutines, and their panics are caught there: the client
/// gets 500 and the server goes on. A panic outside every coroutine on one of
/// may's scheduler threads comes from the runtime itself, and the coroutines
/// of that worker never run again afterwards: the listener can keep
/// accepting while nothing answers. may 0.3.51 has such a race between an io
/// wake-up and the timer of the same io's timeout ("RefCell already borrowed"
/// in its `EventData`), seen once in a load sweep with more workers than
/// cores. Aborting turns that silent hang into an exit, which the supervisor
/// (systemd, a container restart policy) answers with a restart.
///
/// may's scheduler and timer threads are the process's unnamed threads:
/// every thread of ours has a name. Install this once, in the binary.
pub fn abort_on_runtime_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if is_runtime_panic(
            may::coroutine::is_coroutine(),
            std::thread::current().name(),
        ) {
            tracing::error!("panic in the may runtime; aborting so that the server is restarted");
            eprintln!(
                "valhalla: panic in the may runtime; aborting so that the server is restarted"
            );
            std::process::abort();
        }
    }));
}

fn is_runtime_panic(in_coroutine: bool, thread_name: Option<&str>) -> bool {
    !in_coroutine && thread_name.is_none()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;

    use super::*;

    /// Set in the child process that [`child_panics_where_told`] runs in.
    const CHILD_MODE: &str = "VALHALLA_PANIC_GUARD_CHILD";

    #[test]
    fn only_panics_outside_coroutines_on_unnamed_threads_are_runtime_panics() {
        assert!(is_runtime_panic(false, None));
        assert!(!is_runtime_panic(true, None));
        assert!(!is_runtime_panic(false, Some("mysql-0")));
        assert!(!is_runtime_panic(false, Some("main")));
    }

    /// The body of the child processes below; a no-op in a normal test run.
    #[test]
    fn child_panics_where_told() {
        let Ok(mode) = std::env::var(CHILD_MODE) else {
            return;
        };
        abort_on_runtime_panic();
        let joined = match mode.as_str() {
            "unnamed-thread" => std::thread::spawn(|| fail("scheduler failure"))
                .join()
                .is_err(),
            "named-thread" => std::thread::Builder::new()
                .name("mysql-0".into())
                .spawn(|| fail("job failure"))
                .unwrap()
                .join()
                .is_err(),
            "coroutine" => {
                configure_runtime(1);
                // SAFETY: the closure borrows nothing and may's runtime is
                // configured above.
                unsafe { may::coroutine::spawn(|| fail("handler failure")) }
                    .join()
                    .is_err()
            }
            other => panic!("unknown mode {other}"),
        };
        assert!(joined, "the panic did not reach join");
        println!("survived");
    }

    fn fail(message: &str) {
        panic!("{message}");
    }

    fn run_child(mode: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child_panics_where_told", "--nocapture"])
            .env(CHILD_MODE, mode)
            .output()
            .unwrap()
    }

    #[test]
    fn a_panic_of_the_runtime_aborts_the_process() {
        let output = run_child("unnamed-thread");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
        assert!(
            stderr.contains("panic in the may runtime; aborting"),
            "{stderr}"
        );
    }

    #[test]
    fn panics_of_handlers_and_named_threads_do_not_abort() {
        for mode in ["named-thread", "coroutine"] {
            let output = run_child(mode);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{mode}: {stderr}");
            assert!(stdout.contains("survived"), "{mode}: {stdout}");
            assert!(!stderr.contains("aborting"), "{mode}: {stderr}");
        }
    }
}
