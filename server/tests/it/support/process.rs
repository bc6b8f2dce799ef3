//! The `valhalla` binary as a child process, its output collected line by
//! line so tests can wait for and assert on log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{client, free_port, loopback};

/// Variables of the server that the test environment must not leak in.
const SERVER_VARIABLES: &[&str] = &[
    "FLASK_HOST",
    "FLASK_PORT",
    "WORKERS",
    "GUNICORN_TIMEOUT",
    "REQUEST_TIMEOUT",
    "IDLE_TIMEOUT",
    "SHUTDOWN_GRACE",
    "SSL_CERT_PATH",
    "SSL_KEY_PATH",
    "MYSQL_HOST",
    "MYSQL_PORT",
    "MYSQL_USER",
    "MYSQL_PASSWORD",
    "MYSQL_DATABASE",
    "MYSQL_SOCKET",
    "MYSQL_POOL_SIZE",
    "MYSQL_ACQUIRE_TIMEOUT_MS",
    "MYSQL_STARTUP_WAIT",
    "ADMIN_IDS",
    "FETCH_CACHE_TTL",
    "FETCH_MAX_WORKERS",
    "CACHE_MAX_BYTES",
    "STALE_TTL",
    "PANEL_USER_TIMEOUT",
    "PANEL_LINK_TIMEOUT",
    "PANEL_CA_FILE",
    "PUBLIC_BASE_URL",
    "PROFILE_UPDATE_INTERVAL",
    "RUST_LOG",
    "LOG_LEVEL",
    "LOG_FORMAT",
];

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
}

/// A command for the server binary with a clean environment, run in an empty
/// directory so no stray `.env` is read.
pub fn command(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valhalla"));
    for name in SERVER_VARIABLES {
        command.env_remove(name);
    }
    command.current_dir(std::env::temp_dir());
    command.env("LOG_LEVEL", "debug");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

impl Server {
    /// Starts `valhalla` on a free loopback port with `env`, without waiting.
    pub fn spawn(env: &[(String, String)]) -> Server {
        Server::spawn_args(&[], env)
    }

    pub fn spawn_args(args: &[&str], env: &[(String, String)]) -> Server {
        let port = free_port();
        let mut command = command(env);
        command
            .args(args)
            .env("FLASK_HOST", "127.0.0.1")
            .env("FLASK_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the valhalla binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        Server {
            child: Some(child),
            addr: loopback(port),
            output,
        }
    }

    /// Starts the server and waits until `/healthz` answers.
    pub fn start(env: &[(String, String)]) -> Server {
        let server = Server::spawn(env);
        server.wait_healthy(Duration::from_secs(30));
        server
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(reply) = client::get(self.addr, "/healthz", &[])
                && reply.status == 200
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "server did not become healthy within {limit:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits until a line of output contains `needle`, and returns that line.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                started.elapsed() < limit,
                "no output line contains {needle:?} within {limit:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) with a pid this test spawned and still owns.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!(
                    "server did not exit within {limit:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
