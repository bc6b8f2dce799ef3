//! The database boundary: connection settings, errors, the startup wait, and the
//! executor that runs blocking `mysql` work off the coroutine workers.
//!
//! The `mysql` crate blocks the OS thread it runs on (its sockets and its own
//! pool's locks are std primitives), and a blocked may worker stalls every
//! coroutine scheduled on it. So no query ever runs on a worker: [`Db`] owns a
//! fixed set of dedicated threads, each holding at most one connection, and a
//! caller parks (coroutine or thread alike) on a may channel until its job is
//! done. The crate's own `Pool` is not used.

mod executor;
pub mod queries;
pub mod schema;

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

pub use executor::{Db, PoolStats};

/// How long [`wait_for_database`] sleeps after its first failed attempt; each
/// later delay doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The longest pause between two startup attempts, so a database that comes up
/// is noticed within a few seconds.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Where the database is and how the executor talks to it.
///
/// `Debug` never prints the password.
#[derive(Clone)]
pub struct PoolOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// MYSQL_SOCKET: connect through this Unix socket instead of TCP.
    pub socket: Option<std::path::PathBuf>,
    /// MYSQL_POOL_SIZE: the number of connection threads, each with one
    /// connection.
    pub size: usize,
    /// How long a caller waits for a free connection thread before it gets
    /// [`DbError::Exhausted`].
    pub acquire_timeout: Duration,
    /// The TCP connect timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Read and write timeout of an established connection. It bounds how long a
    /// dead or hung database can hold a connection thread; set it to the
    /// request timeout so no statement outlives the request that issued it.
    pub io_timeout: Duration,
}

impl PoolOptions {
    /// Settings for the given server with the defaults of the other fields.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<String>,
        database: impl Into<String>,
    ) -> PoolOptions {
        PoolOptions {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            database: database.into(),
            ..PoolOptions::default()
        }
    }

    /// `host:port` (or the socket path), as error messages and logs name
    /// the database.
    pub fn address(&self) -> String {
        match &self.socket {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The driver's connection options: TCP only, UTC session time zone,
    /// utf8mb4, and timeouts on every socket operation.
    pub(crate) fn mysql_opts(&self) -> mysql::Opts {
        let password = if self.password.is_empty() {
            None
        } else {
            Some(self.password.clone())
        };
        let database = if self.database.is_empty() {
            None
        } else {
            Some(self.database.clone())
        };

        // All DATETIME and TIMESTAMP values are UTC: the session time zone makes
        // NOW() and TIMESTAMP conversions agree with that whatever the server's
        // own zone is. The driver already negotiates utf8mb4 in the handshake;
        // SET NAMES states it for the session too.
        let init = vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"];

        mysql::OptsBuilder::new()
            .ip_or_hostname(Some(self.host.clone()))
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(password)
            .db_name(database)
            .socket(self.socket.as_ref().map(|path| path.display().to_string()))
            .prefer_socket(false)
            .tcp_connect_timeout(Some(self.connect_timeout))
            .read_timeout(Some(self.io_timeout))
            .write_timeout(Some(self.io_timeout))
            .tcp_nodelay(true)
            .init(init)
            .into()
    }
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            host: "127.0.0.1".to_owned(),
            port: 3306,
            user: "root".to_owned(),
            password: String::new(),
            database: "valhalla".to_owned(),
            socket: None,
            size: 10,
            acquire_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.password.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        };
        f.debug_struct("PoolOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &password)
            .field("database", &self.database)
            .field("socket", &self.socket)
            .field("size", &self.size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

/// What can go wrong when the request path uses the database.
#[derive(thiserror::Error, Debug)]
pub enum DbError {
    /// Every connection thread stayed busy for the whole acquire timeout, or the
    /// queue of waiting jobs was full. The job never ran.
    #[error("MySQL connection pool exhausted; consider increasing MYSQL_POOL_SIZE")]
    Exhausted,
    /// No connection could be made or the executor is gone; the message names
    /// the address and the cause, never the password.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The job's statements failed.
    #[error("database query failed: {0}")]
    Query(#[source] mysql::Error),
    /// The caller's deadline passed while its job was queued or running.
    #[error("database deadline exceeded")]
    Timeout,
}

/// Connects once, with the executor's settings, from the calling OS thread.
///
/// This blocks the thread: call it from `main` or a plain thread, never from a
/// coroutine.
pub fn connect(options: &PoolOptions) -> Result<mysql::Conn, DbError> {
    mysql::Conn::new(options.mysql_opts()).map_err(|error| connect_error(options, &error))
}

/// Waits at startup until the database accepts a connection, as the Python
/// deployment's wait-for-mysql script did, and returns that connection.
///
/// Each failed attempt is logged at warn with the attempt number, the error and
/// the next delay; the delays grow from 250 ms to 5 s. After `max_wait` the
/// error names the address and the last failure. Blocks the calling OS thread.
pub fn wait_for_database(
    options: &PoolOptions,
    max_wait: Duration,
) -> Result<mysql::Conn, DbError> {
    let started = Instant::now();
    let give_up_at = started + max_wait;
    let address = options.address();
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt: u32 = 0;

    loop {
        attempt += 1;

        // A connect attempt never runs past the overall limit, so a server that
        // silently drops packets cannot stretch the wait.
        let remaining = give_up_at.saturating_duration_since(Instant::now());
        let mut attempt_options = options.clone();
        attempt_options.connect_timeout = options
            .connect_timeout
            .min(remaining)
            .max(Duration::from_millis(1));

        let error = match mysql::Conn::new(attempt_options.mysql_opts()) {
            Ok(conn) => {
                if attempt > 1 {
                    tracing::info!(
                        address = %address,
                        attempts = attempt,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "database reachable"
                    );
                }
                return Ok(conn);
            }
            Err(error) => error,
        };

        let remaining = give_up_at.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(DbError::Unavailable(format!(
                "database at {address} not reachable after {attempt} attempts in {:.1} s: {error}",
                started.elapsed().as_secs_f64()
            )));
        }

        let next_delay = delay.min(remaining);
        tracing::warn!(
            address = %address,
            attempt,
            error = %error,
            next_delay_ms = next_delay.as_millis() as u64,
            "database not reachable yet, retrying"
        );
        thread::sleep(next_delay);
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The error of a failed connection attempt, naming the address.
pub(crate) fn connect_error(options: &PoolOptions, error: &mysql::Error) -> DbError {
    DbError::Unavailable(format!(
        "cannot connect to database at {}: {error}",
        options.address()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let options = PoolOptions::new("db", 3306, "app", "hunter2-secret", "valhalla");
        let printed = format!("{options:?}");
        assert!(!printed.contains("hunter2-secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn driver_options_carry_the_session_settings() {
        let options = PoolOptions::new("db.example", 3307, "app", "", "vh");
        let opts = options.mysql_opts();
        assert_eq!(opts.get_ip_or_hostname(), "db.example");
        assert_eq!(opts.get_tcp_port(), 3307);
        assert_eq!(opts.get_pass(), None);
        assert_eq!(opts.get_db_name(), Some("vh"));
        assert!(!opts.get_prefer_socket());
        assert!(
            opts.get_init()
                .iter()
                .any(|statement| statement == "SET time_zone = '+00:00'")
        );
        assert_eq!(opts.get_read_timeout(), Some(&options.io_timeout));
        assert_eq!(
            opts.get_tcp_connect_timeout(),
            Some(options.connect_timeout)
        );
    }

    #[test]
    fn exhausted_message_is_the_operator_hint() {
        assert_eq!(
            DbError::Exhausted.to_string(),
            "MySQL connection pool exhausted; consider increasing MYSQL_POOL_SIZE"
        );
    }
}
