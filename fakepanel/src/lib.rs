//! Fake Marzneshin, Marzban and 3x-ui panels: real HTTP(S) servers on loopback for tests.
//!
//! Each [`FakePanel`] listens on `127.0.0.1:0` and serves the parts of a
//! panel's API that valhalla calls, checking the credential like the real
//! panel does (401 otherwise). Faults are switched on at run time with
//! [`FakePanel::set_mode`]: latency (fixed or uniform), a hang, a connection
//! reset, HTTP 500, bytes that are not HTTP, and a random failure rate.
//!
//! The servers run on plain threads with std sockets, one thread per
//! connection: they are fixtures, and keeping them off may keeps them
//! independent of the code under test. Dropping a panel stops it.

mod certs;
mod routes;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use certs::TestPki;
use serde_json::Value;

/// Which panel API to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Marzneshin,
    Marzban,
    /// 3x-ui ("sanaei").
    Xui,
}

/// How Marzneshin's `sub/{name}/{key}/links` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinksFormat {
    /// A JSON array of strings.
    #[default]
    JsonList,
    /// `{"links": [...]}`.
    JsonObject,
    /// One link per line.
    Text,
}

/// How Marzban's `sub/{token}/v2ray` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V2rayMode {
    /// Base64 of the newline-separated links, as Marzban sends.
    #[default]
    Base64,
    /// The links as plain text (some reverse proxies and forks do this).
    Plain,
    /// 404: only the legacy `sub/{token}/` path exists.
    Missing,
    /// 200 with an empty body.
    Empty,
}

/// A certificate chain and PKCS#8 key in PEM, to serve HTTPS.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Settings of a fake panel; `PanelConfig::default()` serves plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct PanelConfig {
    /// The credential; a default is chosen per kind when None
    /// (a Bearer token, or a `name=value` cookie for 3x-ui).
    pub token: Option<String>,
    /// Serve HTTPS with this identity.
    pub tls: Option<TlsIdentity>,
    pub links_format: LinksFormat,
    pub v2ray: V2rayMode,
    /// Send bodies with chunked transfer encoding instead of Content-Length.
    pub chunked: bool,
    /// Marzneshin and Marzban: every username not added explicitly exists
    /// with these links (for load tests with many users).
    pub catch_all_links: Option<Vec<String>>,
    /// Calls kept in the log; older ones are dropped. Default 100 000.
    pub max_logged_calls: Option<usize>,
}

/// Latency added before an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    /// Uniformly random between `min` and `max`.
    Uniform {
        min: Duration,
        max: Duration,
    },
}

/// How the panel answers from now on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// Answer normally after a delay.
    Latency(Latency),
    /// Read the request and never answer (until the client gives up).
    Hang,
    /// Close the connection with a TCP reset instead of answering.
    Reset,
    /// Answer every request with HTTP 500.
    Status500,
    /// Answer with bytes that are not HTTP, then close.
    Garbage,
}

/// One request the panel received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    /// The raw request target, still percent-encoded.
    pub path: String,
    /// Milliseconds since the panel started.
    pub at_ms: u64,
    /// Which accepted connection carried it (1 for the first).
    pub connection: u64,
    pub authorized: bool,
    pub body: Vec<u8>,
}

/// A Marzneshin or Marzban user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) key: String,
    pub(crate) links: Vec<String>,
    pub(crate) enabled: bool,
}

pub(crate) struct State {
    pub(crate) mode: Mode,
    pub(crate) failure_rate: f64,
    pub(crate) reset_next: u32,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) inbounds: Vec<Value>,
    pub(crate) calls: Vec<Call>,
    pub(crate) disabled: Vec<String>,
    pub(crate) rng: u64,
}

impl State {
    /// A pseudo-random number in [0, 1): xorshift, good enough for faults.
    pub(crate) fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(crate) struct Shared {
    pub(crate) kind: Kind,
    pub(crate) config: PanelConfig,
    pub(crate) token: String,
    pub(crate) started: Instant,
    pub(crate) stop: AtomicBool,
    pub(crate) accepted: AtomicU64,
    pub(crate) total_calls: AtomicU64,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the fixture down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake panel. Dropping it stops the server.
pub struct FakePanel {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FakePanel {
    /// Starts a panel of `kind` on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When the socket cannot be bound or the TLS identity is unusable: a
    /// fixture that cannot start is a failed test.
    pub fn start(kind: Kind, config: PanelConfig) -> FakePanel {
        let token = config.token.clone().unwrap_or_else(|| match kind {
            Kind::Xui => "3x-ui=fake-session-cookie".to_owned(),
            _ => "fake-admin-token".to_owned(),
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let inbounds = if kind == Kind::Xui {
            routes::default_inbounds()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            kind,
            config,
            token,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            total_calls: AtomicU64::new(0),
            state: Mutex::new(State {
                mode: Mode::Normal,
                failure_rate: 0.0,
                reset_next: 0,
                users: BTreeMap::new(),
                inbounds,
                calls: Vec::new(),
                disabled: Vec::new(),
                rng: seed,
            }),
        });
        let (addr, acceptor) = server::spawn(Arc::clone(&shared));
        FakePanel {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// The socket address the panel listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT/` (https with a TLS identity).
    pub fn url(&self) -> String {
        self.url_with_host("127.0.0.1")
    }

    /// The base URL with another host name for the same port, e.g.
    /// `localhost` to exercise DNS or to match a certificate's name.
    pub fn url_with_host(&self, host: &str) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{}/", self.addr.port())
    }

    /// The expected credential: the Bearer token, or the 3x-ui `name=value` cookie.
    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    pub fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// Adds (or replaces) a user with these links.
    ///
    /// For 3x-ui, `links` is ignored: the panel builds no links, the client
    /// does. The user becomes a client (email = `username`) of every inbound,
    /// so it gets one link per inbound; see [`FakePanel::add_inbound`].
    pub fn add_user(&self, username: &str, links: Vec<String>) {
        let mut state = self.shared.state();
        match self.shared.kind {
            Kind::Xui => routes::add_xui_client(&mut state.inbounds, username),
            Kind::Marzneshin | Kind::Marzban => {
                let key = routes::key_for(username);
                state.users.insert(
                    username.to_owned(),
                    User {
                        key,
                        links,
                        enabled: true,
                    },
                );
            }
        }
    }

    /// 3x-ui: adds an inbound (settings and streamSettings as objects or JSON
    /// strings) and returns its id. Existing users are not added to it.
    pub fn add_inbound(&self, inbound: Value) -> i64 {
        let mut state = self.shared.state();
        routes::add_inbound(&mut state.inbounds, inbound)
    }

    /// 3x-ui: the current inbounds, as the list endpoint returns them.
    pub fn inbounds(&self) -> Vec<Value> {
        self.shared.state().inbounds.clone()
    }

    /// Whether a Marzneshin or Marzban user is enabled (None if unknown).
    pub fn user_enabled(&self, username: &str) -> Option<bool> {
        self.shared.state().users.get(username).map(|u| u.enabled)
    }

    /// Switches how the panel answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.state().mode = mode;
    }

    /// Resets the next `n` requests (as [`Mode::Reset`] does), then goes back
    /// to the current mode: a connection that dies while idle in a pool.
    pub fn reset_next(&self, n: u32) {
        self.shared.state().reset_next = n;
    }

    /// Probability in [0, 1] that an otherwise normal answer is a 500.
    pub fn set_failure_rate(&self, rate: f64) {
        self.shared.state().failure_rate = rate.clamp(0.0, 1.0);
    }

    /// The logged calls, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.state().calls.clone()
    }

    /// How many requests arrived in total (also those no longer logged).
    pub fn call_count(&self) -> u64 {
        self.shared.total_calls.load(Ordering::Relaxed)
    }

    /// Forgets the call log.
    pub fn clear_calls(&self) {
        self.shared.state().calls.clear();
    }

    /// How many connections were accepted.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Usernames (3x-ui: client emails) disabled through the API, in order.
    pub fn disabled_users(&self) -> Vec<String> {
        self.shared.state().disabled.clone()
    }
}

impl Drop for FakePanel {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, which checks the flag after every accept.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
