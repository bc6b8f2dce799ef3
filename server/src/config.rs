//! Settings from the environment and an optional `.env` file: parsing,
//! validation with one message per problem, and a summary without secrets.
//!
//! This is the only module that reads the environment. The variable names of
//! the Python deployment stay valid so that its `.env` files work unchanged;
//! clearer names are accepted beside them as aliases.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every variable as text, exactly as found. Validation happens afterwards so
/// that each problem can be reported with the variable's real name.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    flask_host: Option<String>,
    flask_port: Option<String>,
    workers: Option<String>,
    gunicorn_timeout: Option<String>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    shutdown_grace: Option<String>,
    ssl_cert_path: Option<String>,
    ssl_key_path: Option<String>,
    mysql_host: Option<String>,
    mysql_port: Option<String>,
    mysql_user: Option<String>,
    mysql_password: Option<String>,
    mysql_database: Option<String>,
    mysql_socket: Option<String>,
    mysql_pool_size: Option<String>,
    mysql_acquire_timeout_ms: Option<String>,
    mysql_startup_wait: Option<String>,
    admin_ids: Option<String>,
    fetch_cache_ttl: Option<String>,
    fetch_max_workers: Option<String>,
    cache_max_bytes: Option<String>,
    stale_ttl: Option<String>,
    panel_user_timeout: Option<String>,
    panel_link_timeout: Option<String>,
    panel_ca_file: Option<String>,
    public_base_url: Option<String>,
    profile_update_interval: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    rust_log: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone)]
pub struct MysqlSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// A Unix socket to connect through instead of TCP (local MariaDB with
    /// socket authentication).
    pub socket: Option<PathBuf>,
    pub pool_size: usize,
    pub acquire_timeout: Duration,
    pub startup_wait: Duration,
}

impl fmt::Debug for MysqlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("socket", &self.socket)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// The effective configuration of one valhalla process.
#[derive(Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
    pub mysql: MysqlSettings,
    pub admin_ids: Vec<i64>,
    pub fetch_cache_ttl: Duration,
    pub fetch_max_workers: usize,
    pub cache_max_bytes: usize,
    pub stale_ttl: Duration,
    pub panel_user_timeout: Duration,
    pub panel_link_timeout: Duration,
    /// PEM certificates trusted for panels besides the system's roots (a
    /// private CA, or a panel's self-signed certificate).
    pub panel_ca_file: Option<PathBuf>,
    pub public_base_url: Option<String>,
    pub profile_update_interval_hours: u32,
    pub log_format: LogFormat,
    /// A `tracing` filter directive: `RUST_LOG` when set, else `LOG_LEVEL`.
    pub log_filter: String,
}

/// Every problem found in the configuration, one message each.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "config: {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The number of cores this process may use, the base of several defaults.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Settings {
    /// Reads the process environment, with `.env` in the working directory
    /// filling in variables the environment does not set.
    pub fn from_env() -> Result<Settings, ConfigError> {
        let mut variables: HashMap<String, String> = HashMap::new();
        let dotenv = Path::new(".env");
        if dotenv.exists() {
            let entries = dotenvy::from_path_iter(dotenv).map_err(|error| ConfigError {
                problems: vec![format!("cannot read {}: {error}", dotenv.display())],
            })?;
            for entry in entries {
                let (name, value) = entry.map_err(|error| ConfigError {
                    problems: vec![describe_dotenv_error(dotenv, &error)],
                })?;
                variables.insert(name, value);
            }
        }
        variables.extend(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }));
        Settings::from_vars(variables, available_cores())
    }

    /// Builds settings from variable pairs. `cores` feeds the defaults that
    /// depend on the machine, so tests can fix it.
    pub fn from_vars<I>(variables: I, cores: usize) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Empty values count as unset, as they did for the Python app, whose
        // `.env` files often carry `SSL_CERT_PATH=` lines.
        let variables = variables
            .into_iter()
            .filter(|(name, value)| !value.trim().is_empty() && name.chars().all(is_env_char));
        let raw: RawEnv = envy::from_iter(variables).map_err(|error| ConfigError {
            problems: vec![format!("cannot read the environment: {error}")],
        })?;
        let mut check = Checker::default();
        let cores = cores.max(1);

        let host = match raw.flask_host.as_deref().map(str::trim) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(text) => resolve_host(text).unwrap_or_else(|| {
                check.problem(format!(
                    "FLASK_HOST must be an IP address or a host name of this machine, got {text:?}"
                ));
                IpAddr::from([0, 0, 0, 0])
            }),
        };
        let port = check.parse(
            "FLASK_PORT",
            raw.flask_port.as_deref(),
            "a port number",
            || 5000,
        );
        let workers = check.positive("WORKERS", raw.workers.as_deref(), cores, 1024);

        let request_timeout = match (&raw.request_timeout, &raw.gunicorn_timeout) {
            (Some(value), _) => check.seconds("REQUEST_TIMEOUT", Some(value), 120),
            (None, value) => check.seconds("GUNICORN_TIMEOUT", value.as_deref(), 120),
        };
        let idle_timeout = check.seconds("IDLE_TIMEOUT", raw.idle_timeout.as_deref(), 60);
        let shutdown_grace = check.seconds("SHUTDOWN_GRACE", raw.shutdown_grace.as_deref(), 30);

        let tls = match (&raw.ssl_cert_path, &raw.ssl_key_path) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (Some(_), None) => {
                check.problem(
                    "SSL_CERT_PATH is set but SSL_KEY_PATH is not (both are needed for HTTPS)",
                );
                None
            }
            (None, Some(_)) => {
                check.problem(
                    "SSL_KEY_PATH is set but SSL_CERT_PATH is not (both are needed for HTTPS)",
                );
                None
            }
            (None, None) => None,
        };

        let mysql = MysqlSettings {
            host: raw.mysql_host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: check.parse(
                "MYSQL_PORT",
                raw.mysql_port.as_deref(),
                "a port number",
                || 3306,
            ),
            user: raw.mysql_user.clone().unwrap_or_else(|| "root".into()),
            password: raw.mysql_password.clone().unwrap_or_default(),
            database: raw
                .mysql_database
                .clone()
                .unwrap_or_else(|| "valhalla".into()),
            socket: raw.mysql_socket.as_deref().map(PathBuf::from),
            pool_size: check.positive(
                "MYSQL_POOL_SIZE",
                raw.mysql_pool_size.as_deref(),
                5 * cores,
                10_000,
            ),
            acquire_timeout: Duration::from_millis(check.positive(
                "MYSQL_ACQUIRE_TIMEOUT_MS",
                raw.mysql_acquire_timeout_ms.as_deref(),
                250,
                600_000,
            ) as u64),
            startup_wait: check.seconds_or_zero(
                "MYSQL_STARTUP_WAIT",
                raw.mysql_startup_wait.as_deref(),
                60,
            ),
        };

        let admin_ids = raw.admin_ids.as_deref().map_or_else(Vec::new, |list| {
            list.split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .filter_map(|id| match id.parse::<i64>() {
                    Ok(id) => Some(id),
                    Err(_) => {
                        check.problem(format!(
                            "ADMIN_IDS must be comma-separated Telegram ids, got {id:?}"
                        ));
                        None
                    }
                })
                .collect()
        });

        let fetch_cache_ttl =
            check.seconds_or_zero("FETCH_CACHE_TTL", raw.fetch_cache_ttl.as_deref(), 300);
        let fetch_max_workers = check.positive(
            "FETCH_MAX_WORKERS",
            raw.fetch_max_workers.as_deref(),
            5,
            1024,
        );
        let cache_max_bytes = check.positive(
            "CACHE_MAX_BYTES",
            raw.cache_max_bytes.as_deref(),
            64 << 20,
            usize::MAX,
        );
        let stale_ttl = check.seconds_or_zero("STALE_TTL", raw.stale_ttl.as_deref(), 86_400);
        let panel_user_timeout =
            check.seconds("PANEL_USER_TIMEOUT", raw.panel_user_timeout.as_deref(), 15);
        let panel_link_timeout =
            check.seconds("PANEL_LINK_TIMEOUT", raw.panel_link_timeout.as_deref(), 20);

        let public_base_url = raw.public_base_url.as_deref().and_then(|url| {
            let trimmed = url.trim().trim_end_matches('/');
            if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
                Some(trimmed.to_string())
            } else {
                check.problem(format!(
                    "PUBLIC_BASE_URL must start with http:// or https://, got {url:?}"
                ));
                None
            }
        });
        let profile_update_interval_hours = check.positive(
            "PROFILE_UPDATE_INTERVAL",
            raw.profile_update_interval.as_deref(),
            12,
            24 * 365,
        ) as u32;

        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None => LogFormat::Text,
            Some(value) if value.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(value) if value.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(value) => {
                check.problem(format!("LOG_FORMAT must be text or json, got {value:?}"));
                LogFormat::Text
            }
        };
        let log_filter = match (&raw.rust_log, &raw.log_level) {
            (Some(filter), _) => filter.trim().to_string(),
            (None, Some(level)) => {
                let level = level.trim().to_ascii_lowercase();
                if !["error", "warn", "warning", "info", "debug", "trace"].contains(&&*level) {
                    check.problem(format!(
                        "LOG_LEVEL must be one of error, warn, info, debug, trace, got {level:?}"
                    ));
                }
                if level == "warning" {
                    "warn".to_string()
                } else {
                    level
                }
            }
            (None, None) => "info".to_string(),
        };

        if !check.problems.is_empty() {
            return Err(ConfigError {
                problems: check.problems,
            });
        }
        Ok(Settings {
            host,
            port,
            workers,
            request_timeout,
            idle_timeout,
            shutdown_grace,
            tls,
            mysql,
            admin_ids,
            fetch_cache_ttl,
            fetch_max_workers,
            cache_max_bytes,
            stale_ttl,
            panel_user_timeout,
            panel_link_timeout,
            panel_ca_file: raw
                .panel_ca_file
                .as_deref()
                .map(|path| PathBuf::from(path.trim())),
            public_base_url,
            profile_update_interval_hours,
            log_format,
            log_filter,
        })
    }
}

impl fmt::Display for Settings {
    /// The one-line summary logged at startup. It names every effective
    /// setting that shapes behaviour and never a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mysql = &self.mysql;
        write!(
            f,
            "listen={}:{} tls={} workers={} request_timeout={:?} idle_timeout={:?} \
             shutdown_grace={:?} mysql={}@",
            self.host,
            self.port,
            if self.tls.is_some() { "on" } else { "off" },
            self.workers,
            self.request_timeout,
            self.idle_timeout,
            self.shutdown_grace,
            mysql.user,
        )?;
        match &mysql.socket {
            Some(socket) => write!(f, "unix:{}", socket.display())?,
            None => write!(f, "{}:{}", mysql.host, mysql.port)?,
        }
        write!(
            f,
            "/{} password={} pool={} acquire_timeout={:?} startup_wait={:?} admins={} \
             cache_ttl={:?} stale_ttl={:?} cache_max_bytes={} fetch_workers={} \
             panel_timeouts={:?}/{:?} panel_ca={} public_url={} profile_update_interval={}h \
             log={}:{}",
            mysql.database,
            if mysql.password.is_empty() {
                "none"
            } else {
                "set"
            },
            mysql.pool_size,
            mysql.acquire_timeout,
            mysql.startup_wait,
            self.admin_ids.len(),
            self.fetch_cache_ttl,
            self.stale_ttl,
            self.cache_max_bytes,
            self.fetch_max_workers,
            self.panel_user_timeout,
            self.panel_link_timeout,
            self.panel_ca_file.as_deref().map_or_else(
                || "system".into(),
                |path| format!("system+{}", path.display())
            ),
            self.public_base_url.as_deref().unwrap_or("unset"),
            self.profile_update_interval_hours,
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            self.log_filter,
        )
    }
}

fn is_env_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Collects problems while parsing, so every one is reported at once.
#[derive(Default)]
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    fn parse<T: std::str::FromStr>(
        &mut self,
        name: &str,
        value: Option<&str>,
        what: &str,
        default: impl FnOnce() -> T,
    ) -> T {
        match value.map(str::trim) {
            None => default(),
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.problem(format!("{name} must be {what}, got {text:?}"));
                default()
            }),
        }
    }

    fn positive(&mut self, name: &str, value: Option<&str>, default: usize, max: usize) -> usize {
        match value.map(str::trim) {
            None => default,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n >= 1 && n <= max => n,
                _ => {
                    let range = if max == usize::MAX {
                        String::new()
                    } else {
                        format!(" up to {max}")
                    };
                    self.problem(format!(
                        "{name} must be a positive integer{range}, got {text:?}"
                    ));
                    default
                }
            },
        }
    }

    fn seconds(&mut self, name: &str, value: Option<&str>, default: u64) -> Duration {
        match value.map(str::trim) {
            None => Duration::from_secs(default),
            Some(text) => match parse_seconds(text) {
                Some(duration) if !duration.is_zero() => duration,
                _ => {
                    self.problem(format!(
                        "{name} must be a positive number of seconds, got {text:?}"
                    ));
                    Duration::from_secs(default)
                }
            },
        }
    }

    fn seconds_or_zero(&mut self, name: &str, value: Option<&str>, default: u64) -> Duration {
        match value.map(str::trim) {
            None => Duration::from_secs(default),
            Some(text) => parse_seconds(text).unwrap_or_else(|| {
                self.problem(format!("{name} must be a number of seconds, got {text:?}"));
                Duration::from_secs(default)
            }),
        }
    }
}

/// The address to listen on for `FLASK_HOST`: an IP address, or a host name
/// such as `localhost` (which Gunicorn accepted), resolved once at startup
/// with IPv4 preferred.
fn resolve_host(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let addresses: Vec<IpAddr> = (text, 0)
        .to_socket_addrs()
        .ok()?
        .map(|address| address.ip())
        .collect();
    addresses
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| addresses.first().copied())
}

/// Says which line of `.env` could not be parsed without showing the line:
/// dotenvy's own message quotes it whole, and it may hold a password. The
/// variable name before `=` is shown, as is the line number when the file
/// still reads the same.
fn describe_dotenv_error(path: &Path, error: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(line, index) = error else {
        return format!("cannot read {}: {error}", path.display());
    };
    let name = line
        .split_once('=')
        .map(|(name, _)| name.trim().trim_start_matches("export ").trim())
        .filter(|name| !name.is_empty() && name.chars().all(is_env_char));
    let number = std::fs::read_to_string(path).ok().and_then(|text| {
        let first = line.lines().next().unwrap_or_default();
        text.lines().position(|candidate| candidate == first)
    });
    let number = number.map_or_else(String::new, |n| format!(" line {}", n + 1));
    let name = name.map_or_else(String::new, |name| format!(" ({name})"));
    format!(
        "cannot parse {}{number}{name}: malformed at character {}, often an unclosed quote; \
         the line is not shown because it may hold a password",
        path.display(),
        index + 1
    )
}

/// Seconds as an integer or a decimal (`120`, `0.5`), at most a year.
fn parse_seconds(text: &str) -> Option<Duration> {
    let seconds: f64 = text.parse().ok()?;
    (seconds.is_finite() && (0.0..=31_536_000.0).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let pairs = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()));
        Settings::from_vars(pairs, 2)
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        match settings(pairs) {
            Ok(_) => panic!("expected a configuration error for {pairs:?}"),
            Err(error) => error.problems,
        }
    }

    #[test]
    fn defaults_follow_the_core_count() {
        let settings = settings(&[]).unwrap();
        assert_eq!(settings.port, 5000);
        assert_eq!(settings.host.to_string(), "0.0.0.0");
        assert_eq!(settings.workers, 2);
        assert_eq!(settings.mysql.pool_size, 10);
        assert_eq!(settings.request_timeout, Duration::from_secs(120));
        assert_eq!(settings.mysql.database, "valhalla");
        assert_eq!(settings.fetch_max_workers, 5);
        assert_eq!(settings.fetch_cache_ttl, Duration::from_secs(300));
        assert!(settings.tls.is_none());
        assert_eq!(settings.log_filter, "info");
    }

    #[test]
    fn python_deployment_names_are_read() {
        let settings = settings(&[
            ("FLASK_HOST", "127.0.0.1"),
            ("FLASK_PORT", "8080"),
            ("WORKERS", "3"),
            ("GUNICORN_TIMEOUT", "30"),
            ("MYSQL_POOL_SIZE", "7"),
            ("ADMIN_IDS", "11, 22,,33"),
            ("PUBLIC_BASE_URL", "https://sub.example.com/"),
            ("SSL_CERT_PATH", ""),
        ])
        .unwrap();
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.workers, 3);
        assert_eq!(settings.request_timeout, Duration::from_secs(30));
        assert_eq!(settings.mysql.pool_size, 7);
        assert_eq!(settings.admin_ids, vec![11, 22, 33]);
        assert_eq!(
            settings.public_base_url.as_deref(),
            Some("https://sub.example.com")
        );
        assert!(
            settings.tls.is_none(),
            "an empty SSL_CERT_PATH counts as unset"
        );
    }

    #[test]
    fn flask_host_takes_addresses_and_host_names() {
        let host = |value: &str| settings(&[("FLASK_HOST", value)]).map(|s| s.host);
        assert_eq!(host("::").unwrap(), IpAddr::from([0u16; 8]));
        assert_eq!(host("localhost").unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(host(" 10.1.2.3 ").unwrap(), IpAddr::from([10, 1, 2, 3]));
        assert_eq!(
            problems(&[("FLASK_HOST", "no such host.invalid")]),
            vec![
                "FLASK_HOST must be an IP address or a host name of this machine, got \"no such host.invalid\""
            ]
        );
    }

    #[test]
    fn a_malformed_dotenv_line_is_named_without_its_value() {
        let dir = std::env::temp_dir().join(format!("valhalla-dotenv-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(
            &path,
            "FLASK_PORT=5000\nMYSQL_PASSWORD=\"pa55'word\nWORKERS=2\n",
        )
        .unwrap();
        let error = dotenvy::from_path_iter(&path)
            .unwrap()
            .find_map(Result::err)
            .expect("the unclosed quote is an error");
        let message = describe_dotenv_error(&path, &error);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!message.contains("pa55"), "{message}");
        assert!(
            message.contains(".env line 2 (MYSQL_PASSWORD): malformed at character"),
            "{message}"
        );
    }

    #[test]
    fn request_timeout_is_an_alias_that_wins() {
        let settings = settings(&[("GUNICORN_TIMEOUT", "30"), ("REQUEST_TIMEOUT", "45")]).unwrap();
        assert_eq!(settings.request_timeout, Duration::from_secs(45));
    }

    #[test]
    fn every_problem_is_reported_with_its_variable_and_value() {
        let problems = problems(&[
            ("MYSQL_POOL_SIZE", "abc"),
            ("FLASK_PORT", "70000"),
            ("WORKERS", "0"),
            ("GUNICORN_TIMEOUT", "-5"),
            ("LOG_FORMAT", "xml"),
            ("ADMIN_IDS", "12,bob"),
        ]);
        assert_eq!(
            problems,
            vec![
                "FLASK_PORT must be a port number, got \"70000\"",
                "WORKERS must be a positive integer up to 1024, got \"0\"",
                "GUNICORN_TIMEOUT must be a positive number of seconds, got \"-5\"",
                "MYSQL_POOL_SIZE must be a positive integer up to 10000, got \"abc\"",
                "ADMIN_IDS must be comma-separated Telegram ids, got \"bob\"",
                "LOG_FORMAT must be text or json, got \"xml\"",
            ]
        );
    }

    #[test]
    fn one_tls_file_alone_is_an_error() {
        assert_eq!(
            problems(&[("SSL_KEY_PATH", "/certs/key.pem")]),
            vec!["SSL_KEY_PATH is set but SSL_CERT_PATH is not (both are needed for HTTPS)"]
        );
        assert_eq!(
            problems(&[("SSL_CERT_PATH", "/certs/cert.pem")]),
            vec!["SSL_CERT_PATH is set but SSL_KEY_PATH is not (both are needed for HTTPS)"]
        );
    }

    #[test]
    fn the_summary_never_shows_the_password() {
        let settings = settings(&[("MYSQL_PASSWORD", "hunter2-secret")]).unwrap();
        let summary = settings.to_string();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(summary.contains("password=set"), "{summary}");
        assert!(!format!("{:?}", settings.mysql).contains("hunter2"));
    }

    #[test]
    fn the_summary_names_every_effective_setting() {
        let summary = settings(&[
            ("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"),
            ("IDLE_TIMEOUT", "0.5"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap()
        .to_string();
        assert_eq!(
            summary,
            "listen=0.0.0.0:5000 tls=off workers=2 request_timeout=120s idle_timeout=500ms \
             shutdown_grace=30s mysql=root@unix:/run/mysqld/mysqld.sock/valhalla password=none \
             pool=10 acquire_timeout=250ms startup_wait=60s admins=0 cache_ttl=300s \
             stale_ttl=86400s cache_max_bytes=67108864 fetch_workers=5 panel_timeouts=15s/20s \
             panel_ca=system public_url=unset profile_update_interval=12h log=json:info"
        );
    }

    #[test]
    fn rust_log_takes_precedence_over_log_level() {
        let settings = settings(&[("LOG_LEVEL", "debug"), ("RUST_LOG", "valhalla=trace")]).unwrap();
        assert_eq!(settings.log_filter, "valhalla=trace");
        assert_eq!(
            problems(&[("LOG_LEVEL", "loud")]),
            vec!["LOG_LEVEL must be one of error, warn, info, debug, trace, got \"loud\""]
        );
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let settings = settings(&[("IDLE_TIMEOUT", "0.5")]).unwrap();
        assert_eq!(settings.idle_timeout, Duration::from_millis(500));
    }
}
