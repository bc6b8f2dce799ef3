//! The server under test as a child process: finding the binary, checking the
//! port, starting, waiting until ready, CPU time, scraping `/metrics`, stopping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `valhalla` binary: `VALHALLA_BIN`, else the one next to this binary
/// (same target directory and profile).
pub fn find_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("VALHALLA_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("VALHALLA_BIN names {}, which is not a file", path.display());
        }
        return Ok(path);
    }
    let me = std::env::current_exe().context("locating this program")?;
    let beside = me.with_file_name("valhalla");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "the valhalla binary is not next to {} and VALHALLA_BIN is not set; build it with \
         `cargo build --release -p valhalla -p valhalla-loadtest` (or set VALHALLA_BIN)",
        me.display()
    )
}

/// An empty directory to run the server in, so that no stray `.env` file is
/// read: everything the server gets is in its environment.
pub fn work_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("valhalla-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Whether nothing listens on `port` of 127.0.0.1 and the port can be bound.
///
/// may binds with SO_REUSEPORT, so a second server on a busy port would start
/// and silently share the traffic; a connect attempt finds any listener, and
/// a plain bind finds the port taken by something that does not accept.
pub fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        return false;
    }
    TcpListener::bind(addr).is_ok()
}

/// Waits up to `limit` for `port` to become free (a stopped server's socket
/// goes away a moment after it exits).
pub fn wait_port_free(port: u16, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while !port_is_free(port) {
        if started.elapsed() > limit {
            bail!(
                "port {port} on 127.0.0.1 is in use; stop whatever listens there (another valhalla \
                 would share the load through SO_REUSEPORT) or pick another with --port"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A running server child process; dropping it stops the process.
pub struct ServerProcess {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` on 127.0.0.1:`port` with `env`, logging to `log`,
    /// after checking that the port is free.
    pub fn start(
        binary: &Path,
        port: u16,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<ServerProcess> {
        wait_port_free(port, Duration::from_secs(5))?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .current_dir(work_dir()?)
            .env("FLASK_HOST", "127.0.0.1")
            .env("FLASK_PORT", port.to_string())
            .env("LOG_LEVEL", "warn")
            .env("SHUTDOWN_GRACE", "2")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(ServerProcess {
            child: Some(child),
            port,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status when the process has ended by itself.
    pub fn try_exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Waits until `/readyz` answers 200, or fails with the end of the log.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "the server exited ({status}) before it was ready: {}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = http_get(self.port, "/readyz", Duration::from_secs(1)) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "the server was not ready within {limit:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Sends SIGTERM, waits for the exit, and kills after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with a pid this process spawned and has not
            // reaped yet, so it cannot name another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > grace {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(3));
    }
}

/// A minimal GET over a fresh connection: status and body. Used for
/// readiness and `/metrics`, outside the measured traffic.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status in the answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled metric (or the sum over its label sets) in
/// Prometheus text; None when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: count the
    // fields after the last ')'. utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) / ticks)
}

/// The pid of the local MariaDB (or MySQL) server, to record its CPU too.
pub fn database_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "mariadbd" | "mysqld") {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name_and_summed_over_labels() {
        let text = "# HELP valhalla_db_pool_waiting x\n\
                    valhalla_db_pool_waiting 3\n\
                    valhalla_db_pool_waiting_other 100\n\
                    valhalla_cache_hits_total{cache=\"links\"} 5\n\
                    valhalla_cache_hits_total{cache=\"users\"} 7\n";
        assert_eq!(metric(text, "valhalla_db_pool_waiting"), Some(3.0));
        assert_eq!(metric(text, "valhalla_cache_hits_total"), Some(12.0));
        assert_eq!(metric(text, "valhalla_missing"), None);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let before = cpu_seconds(0).unwrap();
        let mut x: u64 = 1;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(0).unwrap() > before);
    }

    #[test]
    fn a_listening_port_is_not_free() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        drop(listener);
        assert!(port_is_free(port));
        assert!(wait_port_free(port, Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn http_get_reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).unwrap();
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
                .unwrap();
        });
        let (status, body) = http_get(port, "/readyz", Duration::from_secs(2)).unwrap();
        server.join().unwrap();
        assert_eq!((status, body.as_str()), (503, "busy"));
    }
}
