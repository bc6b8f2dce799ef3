//! The `valhalla` command: serve (the default), `migrate`, `healthcheck`.
//!
//! Exit codes: 0 on success and after a clean shutdown, 1 when the database
//! or the listener fails, 2 for a configuration problem or a bad command line.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use signal_hook::consts::{SIGINT, SIGTERM};

use valhalla::app::App;
use valhalla::config::{ConfigError, Settings};
use valhalla::db::{self, Db, PoolOptions};
use valhalla::http::{Server, ServerOptions, TlsAcceptor};
use valhalla::metrics::HttpMetrics;
use valhalla::subscription::cache::CacheSettings;
use valhalla::subscription::{FlowSettings, Subscriptions};
use valhalla::upstream::{Client, ClientOptions, Panels};

const USAGE: &str = "\
usage: valhalla [serve | migrate | healthcheck | --version]

  serve        wait for MySQL, create missing tables, serve HTTP(S) (default)
  migrate      wait for MySQL, create missing tables and indexes, exit
  healthcheck  ask the local server's /healthz; exit 0 when it answers 200

Settings come from the environment and from .env in the working directory;
see the README for the variables.";

/// A failure that ends the process, with the exit code it deserves.
enum Fatal {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Fatal {
    fn from(error: ConfigError) -> Fatal {
        Fatal::Config(error.to_string())
    }
}

impl From<anyhow::Error> for Fatal {
    fn from(error: anyhow::Error) -> Fatal {
        Fatal::Runtime(error)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["serve"] => Settings::from_env().map_err(Fatal::from).and_then(serve),
        ["migrate"] => Settings::from_env().map_err(Fatal::from).and_then(migrate),
        ["healthcheck"] => Settings::from_env()
            .map_err(Fatal::from)
            .and_then(healthcheck),
        ["--version" | "-V"] => {
            println!("valhalla {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Fatal::Config(format!(
            "unknown arguments {other:?}\n{USAGE}"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Config(message)) => {
            for line in message.lines() {
                eprintln!("valhalla: {line}");
            }
            ExitCode::from(2)
        }
        Err(Fatal::Runtime(error)) => {
            tracing::error!(error = format!("{error:#}"), "valhalla stopped");
            eprintln!("valhalla: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn pool_options(settings: &Settings) -> PoolOptions {
    let mysql = &settings.mysql;
    PoolOptions {
        host: mysql.host.clone(),
        port: mysql.port,
        user: mysql.user.clone(),
        password: mysql.password.clone(),
        database: mysql.database.clone(),
        socket: mysql.socket.clone(),
        size: mysql.pool_size,
        acquire_timeout: mysql.acquire_timeout,
        connect_timeout: Duration::from_secs(5),
        // A little longer than a request may take: the request deadline
        // answers first (504), and a statement hung on a dead database still
        // frees its connection thread soon after.
        io_timeout: settings.request_timeout + Duration::from_secs(5),
    }
}

fn flow_settings(settings: &Settings) -> FlowSettings {
    FlowSettings {
        admin_ids: settings.admin_ids.clone(),
        fetch_max_workers: settings.fetch_max_workers,
        public_base_url: settings.public_base_url.clone(),
        profile_update_interval_hours: settings.profile_update_interval_hours,
        disable_timeout: settings.panel_link_timeout * 2,
        cache: CacheSettings {
            name: "panel_links",
            ttl: settings.fetch_cache_ttl,
            stale_ttl: settings.stale_ttl,
            max_bytes: settings.cache_max_bytes,
        },
    }
}

/// Something the main thread waits for while it starts up or serves.
enum Event {
    Signal(i32),
    DatabaseReady(anyhow::Result<()>),
}

/// Forwards SIGTERM and SIGINT to `events`. Installed first, so that a
/// signal during the wait for the database stops the process at once.
fn forward_signals(events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("start the signal thread")?;
    Ok(())
}

/// Waits for the database, then creates whatever tables and indexes are
/// missing. Runs on a plain thread: the mysql crate blocks its thread.
fn prepare_database(settings: &Settings) -> anyhow::Result<()> {
    let options = pool_options(settings);
    let mut conn = db::wait_for_database(&options, settings.mysql.startup_wait)
        .context("database not reachable")?;
    let report = db::schema::migrate(&mut conn).context("create the schema")?;
    tracing::info!(%report, "schema ready");
    Ok(())
}

fn wait_for_database_or_signal(
    settings: &Settings,
    events: &mpsc::Sender<Event>,
    incoming: &mpsc::Receiver<Event>,
) -> Result<bool, Fatal> {
    let worker_settings = settings.clone();
    let ready = events.clone();
    std::thread::Builder::new()
        .name("startup".into())
        .spawn(move || {
            let _ = ready.send(Event::DatabaseReady(prepare_database(&worker_settings)));
        })
        .context("start the startup thread")?;
    match incoming.recv() {
        Ok(Event::DatabaseReady(result)) => result.map(|()| true).map_err(Fatal::from),
        Ok(Event::Signal(signal)) => {
            tracing::info!(signal, "stopped while waiting for the database");
            Ok(false)
        }
        Err(_) => Err(Fatal::Runtime(anyhow::anyhow!("startup thread vanished"))),
    }
}

fn serve(settings: Settings) -> Result<(), Fatal> {
    valhalla::logging::init(&settings);
    valhalla::abort_on_runtime_panic();
    valhalla::configure_runtime(settings.workers);
    match valhalla::http::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }

    // Certificate problems are configuration problems: report them before
    // anything else, with the file they concern.
    let tls = match &settings.tls {
        Some(files) => Some(
            TlsAcceptor::from_pem_files(&files.cert, &files.key)
                .map_err(|error| Fatal::Config(format!("config: {error}")))?,
        ),
        None => None,
    };
    let panel_ca = match &settings.panel_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|error| {
            Fatal::Config(format!(
                "config: PANEL_CA_FILE {}: cannot read: {error}",
                path.display()
            ))
        })?),
        None => None,
    };
    let client = Client::new(ClientOptions {
        user_timeout: settings.panel_user_timeout,
        link_timeout: settings.panel_link_timeout,
        extra_root_pem: panel_ca,
        ..ClientOptions::default()
    })
    .map_err(|error| match &settings.panel_ca_file {
        Some(path) => Fatal::Config(format!("config: PANEL_CA_FILE {}: {error}", path.display())),
        None => Fatal::from(anyhow::Error::new(error).context("set up the panel client")),
    })?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), settings = %settings, "starting");

    let (events, incoming) = mpsc::channel();
    forward_signals(events.clone())?;
    if !wait_for_database_or_signal(&settings, &events, &incoming)? {
        return Ok(());
    }

    let mut registry = Registry::default();
    let db = Db::start(pool_options(&settings), &mut registry);
    let subscriptions = Subscriptions::new(
        db.clone(),
        Panels::new(client),
        flow_settings(&settings),
        &mut registry,
    );
    let http_metrics = HttpMetrics::register(&mut registry);
    let app = App::new(db.clone(), subscriptions, Arc::new(registry), http_metrics);

    let options = ServerOptions {
        addr: SocketAddr::new(settings.host, settings.port),
        tls,
        request_timeout: settings.request_timeout,
        idle_timeout: settings.idle_timeout,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::new(app))
        .with_context(|| format!("listen on {}:{}", settings.host, settings.port))?;
    tracing::info!(address = %server.local_addr(), "listening");

    loop {
        match incoming.recv() {
            Ok(Event::Signal(signal)) => {
                tracing::info!(
                    signal,
                    grace_s = settings.shutdown_grace.as_secs(),
                    "shutting down"
                );
                break;
            }
            Ok(Event::DatabaseReady(_)) => {}
            Err(_) => break,
        }
    }
    let started = Instant::now();
    let unfinished = server.shutdown(settings.shutdown_grace);
    db.shutdown();
    if unfinished > 0 {
        tracing::warn!(unfinished, "grace period over with requests still running");
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

fn migrate(settings: Settings) -> Result<(), Fatal> {
    valhalla::logging::init(&settings);
    prepare_database(&settings)?;
    Ok(())
}

/// Asks the local server for `/healthz`. The container image uses this as
/// its health check, so it needs no shell or curl inside the image.
fn healthcheck(settings: Settings) -> Result<(), Fatal> {
    let host = match settings.host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        ip => ip,
    };
    let addr = SocketAddr::new(host, settings.port);
    let status = probe(addr, settings.tls.is_some())
        .with_context(|| format!("health check of {addr} failed"))?;
    if status == 200 {
        println!("healthy");
        Ok(())
    } else {
        Err(Fatal::Runtime(anyhow::anyhow!(
            "health check of {addr} answered {status}"
        )))
    }
}

fn probe(addr: SocketAddr, tls: bool) -> anyhow::Result<u16> {
    let timeout = Duration::from_secs(3);
    let stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    if tls {
        // The certificate names the public host, not the loopback address
        // this probe dials, and nothing secret is sent: verification would
        // only make the probe fail for a healthy server.
        let connector = native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .context("set up TLS")?;
        let mut stream = connector
            .connect("localhost", stream)
            .context("TLS handshake")?;
        stream.write_all(request.as_bytes())?;
        let _ = stream.read_to_end(&mut answer);
    } else {
        let mut stream = stream;
        stream.write_all(request.as_bytes())?;
        let _ = stream.read_to_end(&mut answer);
    }
    let status_line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("no HTTP answer")?;
    Ok(status)
}
