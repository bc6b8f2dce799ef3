//! The outbound HTTP/1.1 client: may sockets, native-tls, DNS off the workers, keep-alive pool.
//!
//! No published HTTP client runs on may coroutines, so this is a small one. It
//! speaks just enough HTTP/1.1 for the panels' JSON and subscription APIs:
//! one request per call, bodies by Content-Length, chunked or until close, and
//! idle connections kept per (scheme, host, port) for reuse.
//!
//! Every wait is bounded by a deadline: the earlier of the caller's request
//! deadline and the per-call limit of the request's class. Each socket read and
//! write gets the time left as its timeout, so a server that drips bytes cannot
//! stretch a call past the deadline.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use may::net::TcpStream;
use native_tls::{HandshakeError, TlsConnector, TlsStream};

/// Largest response head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most response headers parsed; panels send a dozen.
const MAX_HEADERS: usize = 64;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How long a resolved address list is reused before asking the resolver again.
const DNS_CACHE_TTL: Duration = Duration::from_secs(60);

/// Threads that run the blocking system resolver.
///
/// `getaddrinfo` blocks its thread, and a may worker thread must never block,
/// so lookups run here. Panels are a handful of hosts and answers are cached,
/// so a few threads are plenty; a resolver that hangs holds one of them, while
/// the waiting coroutine gives up at its deadline.
const RESOLVER_THREADS: usize = 4;

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-call limit of user lookups (the original used 15 s).
    pub user_timeout: Duration,
    /// Per-call limit of link and disable calls (the original used 20 s).
    pub link_timeout: Duration,
    /// Largest body accepted; a longer one is an error.
    pub max_body: usize,
    /// How long an idle connection is kept for reuse. Marzneshin and Marzban
    /// run under uvicorn, which closes idle connections after 5 s, so the
    /// default stays below that to rarely pick a connection the server is
    /// closing.
    pub idle_keepalive: Duration,
    /// Idle connections kept per (scheme, host, port).
    pub max_idle_per_host: usize,
    /// An extra trusted root certificate (PEM), added to the system roots.
    /// Meant for tests and private CAs; certificate and hostname checks stay on.
    pub extra_root_pem: Option<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            user_timeout: Duration::from_secs(15),
            link_timeout: Duration::from_secs(20),
            max_body: 8 * 1024 * 1024,
            idle_keepalive: Duration::from_secs(4),
            max_idle_per_host: 32,
            extra_root_pem: None,
        }
    }
}

/// Which per-call limit of [`ClientOptions`] applies to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// A user lookup: `user_timeout`.
    User,
    /// A link fetch or a disable call: `link_timeout`.
    Link,
}

/// HTTP methods the panels need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
}

impl Method {
    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    /// Whether repeating the request is harmless (RFC 9110 section 9.2.2).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post)
    }
}

/// One request to send.
#[derive(Debug, Clone, Copy)]
pub struct OutboundRequest<'a> {
    pub method: Method,
    /// Absolute `http://` or `https://` URL; the path must already be
    /// percent-encoded.
    pub url: &'a str,
    /// Extra headers, such as `Authorization` or `Cookie`. Their values never
    /// appear in errors or logs.
    pub headers: &'a [(&'a str, &'a str)],
    /// A body, sent with its Content-Length.
    pub body: Option<&'a [u8]>,
    /// Which per-call limit applies.
    pub class: CallClass,
}

impl<'a> OutboundRequest<'a> {
    /// A GET of `url` with the given headers.
    pub fn get(url: &'a str, headers: &'a [(&'a str, &'a str)], class: CallClass) -> Self {
        OutboundRequest {
            method: Method::Get,
            url,
            headers,
            body: None,
            class,
        }
    }
}

/// The parts of an answer the panel clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub set_cookies: Vec<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl UpstreamResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The step of a call that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Dns,
    Connect,
    Tls,
    Write,
    Read,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Dns => "dns lookup",
            Stage::Connect => "connect",
            Stage::Tls => "tls handshake",
            Stage::Write => "sending the request",
            Stage::Read => "reading the answer",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failures of an outbound call. Messages name the host, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream url: {reason}")]
    InvalidUrl { reason: &'static str },
    #[error("tls setup failed: {reason}")]
    Setup { reason: String },
    #[error("dns lookup of {host} failed: {source}")]
    Dns { host: String, source: io::Error },
    #[error("connect to {host} failed: {source}")]
    Connect { host: String, source: io::Error },
    #[error("tls handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("timeout during {stage} with {host}")]
    Timeout { host: String, stage: Stage },
    #[error("{host} closed the connection before answering")]
    Closed { host: String },
    #[error("i/o with {host} failed: {source}")]
    Io { host: String, source: io::Error },
    #[error("malformed answer from {host}: {reason}")]
    Protocol { host: String, reason: &'static str },
    #[error("answer from {host} is larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("{host} answered status {status}")]
    Status { host: String, status: u16 },
    #[error("undecodable answer from {host}: {reason}")]
    Decode { host: String, reason: String },
}

impl UpstreamError {
    /// A short constant name of the error's kind, for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::InvalidUrl { .. } => "invalid_url",
            UpstreamError::Setup { .. } => "setup",
            UpstreamError::Dns { .. } => "dns",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Closed { .. } => "closed",
            UpstreamError::Io { .. } => "io",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Decode { .. } => "decode",
        }
    }
}

/// The HTTP client. Cloning is cheap and clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ClientOptions,
    tls: TlsConnector,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    connections_opened: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tls: bool,
    host: String,
    port: u16,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client; fails only when the TLS setup or the extra root is bad.
    pub fn new(opts: ClientOptions) -> Result<Client, UpstreamError> {
        let mut builder = TlsConnector::builder();
        builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        if let Some(pem) = &opts.extra_root_pem {
            let certs =
                native_tls::Certificate::stack_from_pem(pem).map_err(|e| UpstreamError::Setup {
                    reason: format!("extra root certificate: {e}"),
                })?;
            if certs.is_empty() {
                return Err(UpstreamError::Setup {
                    reason: "extra root certificate: no certificate in the pem".to_owned(),
                });
            }
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        let tls = builder.build().map_err(|e| UpstreamError::Setup {
            reason: e.to_string(),
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                opts,
                tls,
                idle: Mutex::new(HashMap::new()),
                connections_opened: AtomicU64::new(0),
            }),
        })
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// How many connections the client has opened so far (a reused connection
    /// counts once); tests use it to see keep-alive at work.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// Sends one request and reads the whole answer, whatever its status.
    ///
    /// Idempotent requests may take an idle connection; when that connection
    /// turns out dead before any byte of the answer arrived, the request is
    /// sent once more on a fresh connection. Other requests always open a
    /// fresh connection, so a stale one can never swallow them.
    pub fn send(
        &self,
        req: OutboundRequest<'_>,
        deadline: Instant,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let target = Target::parse(req.url)?;
        let started = Instant::now();
        let limit = match req.class {
            CallClass::User => self.inner.opts.user_timeout,
            CallClass::Link => self.inner.opts.link_timeout,
        };
        let deadline = deadline.min(started + limit);
        let key = PoolKey {
            tls: target.tls,
            host: target.host.clone(),
            port: target.port,
        };

        let pooled = if req.method.is_idempotent() {
            self.take_idle(&key)
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect(&target, deadline)?,
        };

        let outcome = match exchange(&mut conn, &req, &target, deadline, &self.inner.opts) {
            Err(failure) if reused && failure.before_answer => {
                tracing::debug!(
                    host = %target.host,
                    error = %failure.error,
                    "reused upstream connection failed, retrying on a fresh one"
                );
                conn = self.connect(&target, deadline)?;
                exchange(&mut conn, &req, &target, deadline, &self.inner.opts)
            }
            other => other,
        };

        match outcome {
            Ok((response, reusable)) => {
                tracing::debug!(
                    host = %target.host,
                    method = req.method.as_str(),
                    status = response.status,
                    reused,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "upstream call done"
                );
                if reusable {
                    self.put_idle(key, conn);
                }
                Ok(response)
            }
            Err(failure) => Err(failure.error),
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Conn> {
        let now = Instant::now();
        let max_age = self.inner.opts.idle_keepalive;
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        // The newest connection is the likeliest to be alive; older ones that
        // outlived the keep-alive window are dropped on the way.
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) <= max_age && entry.conn.looks_alive() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put_idle(&self, key: PoolKey, conn: Conn) {
        let now = Instant::now();
        let max_age = self.inner.opts.idle_keepalive;
        let max_idle = self.inner.opts.max_idle_per_host;
        if max_idle == 0 || max_age.is_zero() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|entry| now.duration_since(entry.since) <= max_age);
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }

    fn connect(&self, target: &Target, deadline: Instant) -> Result<Conn, UpstreamError> {
        let addrs = resolve(&target.host, target.port, deadline)?;
        let tcp = connect_any(&target.host, &addrs, deadline)?;
        self.inner
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let stream = if target.tls {
            let left = time_left(deadline).ok_or_else(|| timeout(&target.host, Stage::Tls))?;
            set_timeouts(&tcp, left).map_err(|e| io_error(&target.host, e))?;
            match self.inner.tls.connect(&target.host, tcp) {
                Ok(tls) => Stream::Tls(Box::new(tls)),
                Err(e) => return Err(tls_failure(&target.host, e, deadline)),
            }
        } else {
            Stream::Plain(tcp)
        };
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }
}

fn tls_failure(host: &str, error: HandshakeError<TcpStream>, deadline: Instant) -> UpstreamError {
    match error {
        // A blocking socket reports WouldBlock only when its timeout hit.
        HandshakeError::WouldBlock(_) => timeout(host, Stage::Tls),
        HandshakeError::Failure(e) => {
            if has_timeout_source(&e) || Instant::now() >= deadline {
                timeout(host, Stage::Tls)
            } else {
                UpstreamError::Tls {
                    host: host.to_owned(),
                    reason: e.to_string(),
                }
            }
        }
    }
}

fn has_timeout_source(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && is_timeout(io)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Where a URL points: scheme, host, port and the path with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    /// Lower-case host, IPv6 literals without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, UpstreamError> {
        let invalid = |reason| UpstreamError::InvalidUrl { reason };
        let (tls, rest) = if let Some(rest) = strip_prefix_ci(url, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ci(url, "http://") {
            (false, rest)
        } else {
            return Err(invalid("scheme must be http or https"));
        };
        if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("whitespace or control character in url"));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.is_empty() {
            "/".to_owned()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_owned()
        };
        if authority.contains('@') {
            return Err(invalid("credentials in the url are not supported"));
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed
                .find(']')
                .ok_or_else(|| invalid("unclosed ipv6 bracket"))?;
            let host = &bracketed[..close];
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("bad ipv6 address"));
            }
            let after = &bracketed[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(invalid("junk after ipv6 address")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("bad port"))?,
        };
        Ok(Target {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The Host header value: the port only when it is not the default one.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        Some(&text[prefix.len()..])
    } else {
        None
    }
}

fn time_left(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { None } else { Some(left) }
}

fn timeout(host: &str, stage: Stage) -> UpstreamError {
    UpstreamError::Timeout {
        host: host.to_owned(),
        stage,
    }
}

fn io_error(host: &str, source: io::Error) -> UpstreamError {
    UpstreamError::Io {
        host: host.to_owned(),
        source,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn set_timeouts(tcp: &TcpStream, left: Duration) -> io::Result<()> {
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

// --- DNS -------------------------------------------------------------------

struct ResolveJob {
    host: String,
    port: u16,
    reply: may::sync::mpsc::Sender<io::Result<Vec<SocketAddr>>>,
}

/// When a lookup was made, and what it found.
type CachedAddrs = (Instant, Arc<[SocketAddr]>);

struct Resolver {
    jobs: Mutex<std::sync::mpsc::Sender<ResolveJob>>,
    cache: Mutex<HashMap<(String, u16), CachedAddrs>>,
}

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<ResolveJob>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..RESOLVER_THREADS {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("dns-{n}"))
                .spawn(move || resolver_loop(&queue));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a dns resolver thread");
            }
        }
        Resolver {
            jobs: Mutex::new(jobs),
            cache: Mutex::new(HashMap::new()),
        }
    })
}

fn resolver_loop(queue: &Mutex<std::sync::mpsc::Receiver<ResolveJob>>) {
    loop {
        // These are plain threads, so holding a std mutex while waiting for
        // the next job only parks sibling resolver threads.
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        let answer = (job.host.as_str(), job.port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>());
        // The asking coroutine may have given up already; that is fine.
        let _ = job.reply.send(answer);
    }
}

/// Resolves `host` without blocking the calling may worker thread: IP
/// literals directly, names through the resolver threads and a short cache.
fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Arc<[SocketAddr]>, UpstreamError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Arc::from([SocketAddr::new(ip, port)]));
    }
    let resolver = resolver();
    let key = (host.to_owned(), port);
    {
        let cache = resolver.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, addrs)) = cache.get(&key)
            && at.elapsed() < DNS_CACHE_TTL
        {
            return Ok(Arc::clone(addrs));
        }
    }

    let (reply, answer) = may::sync::mpsc::channel();
    let job = ResolveJob {
        host: host.to_owned(),
        port,
        reply,
    };
    let queued = resolver
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job);
    if queued.is_err() {
        return Err(UpstreamError::Dns {
            host: host.to_owned(),
            source: io::Error::other("resolver threads are gone"),
        });
    }
    let left = time_left(deadline).ok_or_else(|| timeout(host, Stage::Dns))?;
    let addrs = match answer.recv_timeout(left) {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(source)) => {
            return Err(UpstreamError::Dns {
                host: host.to_owned(),
                source,
            });
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(timeout(host, Stage::Dns)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(UpstreamError::Dns {
                host: host.to_owned(),
                source: io::Error::other("resolver dropped the lookup"),
            });
        }
    };
    if addrs.is_empty() {
        return Err(UpstreamError::Dns {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        });
    }
    let addrs: Arc<[SocketAddr]> = Arc::from(addrs);
    let mut cache = resolver.cache.lock().unwrap_or_else(|e| e.into_inner());
    // The cache only grows with the set of panel hosts; the bound guards
    // against a misconfiguration listing thousands of them.
    if cache.len() > 1024 {
        cache.clear();
    }
    cache.insert(key, (Instant::now(), Arc::clone(&addrs)));
    drop(cache);
    Ok(addrs)
}

/// Tries every address in turn. Each gets a fair share of the time left, so
/// one unreachable address cannot use up the whole budget of the others.
fn connect_any(
    host: &str,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<TcpStream, UpstreamError> {
    let mut last_error = None;
    for (n, addr) in addrs.iter().enumerate() {
        let left = time_left(deadline).ok_or_else(|| timeout(host, Stage::Connect))?;
        let remaining_addrs = (addrs.len() - n) as u32;
        let share = if remaining_addrs > 1 {
            (left / remaining_addrs)
                .max(Duration::from_secs(1))
                .min(left)
        } else {
            left
        };
        match TcpStream::connect_timeout(addr, share) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::debug!(host, addr = %addr, error = %e, "upstream connect failed");
                last_error = Some(e);
            }
        }
    }
    match last_error {
        Some(e) if is_timeout(&e) => Err(timeout(host, Stage::Connect)),
        Some(source) => Err(UpstreamError::Connect {
            host: host.to_owned(),
            source,
        }),
        None => Err(UpstreamError::Connect {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        }),
    }
}

// --- connections -------------------------------------------------------------

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

struct Conn {
    stream: Stream,
    /// Bytes read but not yet consumed live in `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Whether an idle connection still seems usable: the peer has not closed
    /// it and sent nothing unasked. may keeps the socket non-blocking, so the
    /// peek answers at once.
    fn looks_alive(&self) -> bool {
        if self.pos < self.buf.len() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.tcp().inner().peek(&mut probe) {
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` means the peer closed.
    fn fill(&mut self, host: &str, deadline: Instant) -> Result<usize, io::Error> {
        let left = time_left(deadline).ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.tcp().set_read_timeout(Some(left))?;
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let read = self.stream.read(&mut self.buf[len..]);
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        tracing::trace!(host, bytes = n, "upstream read");
        read
    }
}

/// A failed exchange, and whether it failed before any byte of the answer
/// (only then may an idempotent request be sent again).
struct Failure {
    error: UpstreamError,
    before_answer: bool,
}

impl Failure {
    fn after(error: UpstreamError) -> Failure {
        Failure {
            error,
            before_answer: false,
        }
    }
}

fn exchange(
    conn: &mut Conn,
    req: &OutboundRequest<'_>,
    target: &Target,
    deadline: Instant,
    opts: &ClientOptions,
) -> Result<(UpstreamResponse, bool), Failure> {
    let host = target.host.as_str();
    let head = request_head(req, target);
    write_request(conn, &head, req.body, host, deadline)?;
    read_response(conn, req.method, host, deadline, opts.max_body)
}

fn request_head(req: &OutboundRequest<'_>, target: &Target) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let mut line = |name: &str, value: &str| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    line("Host", &target.host_header());
    line(
        "User-Agent",
        concat!("valhalla/", env!("CARGO_PKG_VERSION")),
    );
    line("Accept", "*/*");
    line("Accept-Encoding", "identity");
    line("Connection", "keep-alive");
    for (name, value) in req.headers {
        // A header value with a line break would split the request; such a
        // header is dropped rather than sent.
        if value.bytes().any(|b| b == b'\r' || b == b'\n')
            || name.bytes().any(|b| b <= b' ' || b == b':')
        {
            tracing::warn!(header = *name, "upstream header with a line break dropped");
            continue;
        }
        line(name, value);
    }
    if let Some(body) = req.body {
        line("Content-Length", &body.len().to_string());
    } else if matches!(req.method, Method::Post | Method::Put) {
        line("Content-Length", "0");
    }

    let mut full = Vec::with_capacity(head.len() + target.path.len() + 32);
    full.extend_from_slice(req.method.as_str().as_bytes());
    full.push(b' ');
    full.extend_from_slice(target.path.as_bytes());
    full.extend_from_slice(b" HTTP/1.1\r\n");
    full.extend_from_slice(&head);
    full.extend_from_slice(b"\r\n");
    full
}

fn write_request(
    conn: &mut Conn,
    head: &[u8],
    body: Option<&[u8]>,
    host: &str,
    deadline: Instant,
) -> Result<(), Failure> {
    let fail = |e: io::Error| {
        if is_timeout(&e) {
            Failure::after(timeout(host, Stage::Write))
        } else if is_peer_gone(&e) {
            Failure {
                error: UpstreamError::Closed {
                    host: host.to_owned(),
                },
                before_answer: true,
            }
        } else {
            Failure::after(io_error(host, e))
        }
    };
    let left = time_left(deadline).ok_or_else(|| Failure::after(timeout(host, Stage::Write)))?;
    conn.stream
        .tcp()
        .set_write_timeout(Some(left))
        .map_err(fail)?;
    // Head and body go out in one write where possible: one segment for the
    // small JSON bodies the panels take.
    match body {
        Some(body) if !body.is_empty() => {
            let mut all = Vec::with_capacity(head.len() + body.len());
            all.extend_from_slice(head);
            all.extend_from_slice(body);
            conn.stream.write_all(&all).map_err(fail)?;
        }
        _ => conn.stream.write_all(head).map_err(fail)?,
    }
    conn.stream.flush().map_err(fail)
}

/// What the head says about the body and the connection.
struct Head {
    response: UpstreamResponse,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
}

fn read_response(
    conn: &mut Conn,
    method: Method,
    host: &str,
    deadline: Instant,
    max_body: usize,
) -> Result<(UpstreamResponse, bool), Failure> {
    let mut received_any = false;
    let head = loop {
        let head = read_head(conn, host, deadline, &mut received_any)?;
        // Interim 1xx answers (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&head.response.status) && head.response.status != 101 {
            continue;
        }
        break head;
    };
    let Head {
        mut response,
        content_length,
        chunked,
        keep_alive,
    } = head;

    let bodiless = method == Method::Head
        || response.status == 204
        || response.status == 304
        || response.status == 101;
    let reusable = if bodiless {
        keep_alive
    } else if chunked {
        response.body = read_chunked(conn, host, deadline, max_body)?;
        keep_alive
    } else if let Some(length) = content_length {
        if length > max_body as u64 {
            return Err(Failure::after(UpstreamError::TooLarge {
                host: host.to_owned(),
                limit: max_body,
            }));
        }
        response.body = read_exact_body(conn, length as usize, host, deadline)?;
        keep_alive
    } else {
        response.body = read_to_close(conn, host, deadline, max_body)?;
        false
    };
    // Bytes beyond the answer mean the two sides disagree on framing; such a
    // connection is not worth keeping.
    let reusable = reusable && conn.buffered().is_empty();
    Ok((response, reusable))
}

fn read_failure(host: &str, e: io::Error, received_any: bool) -> Failure {
    if is_timeout(&e) {
        Failure::after(timeout(host, Stage::Read))
    } else if !received_any && is_peer_gone(&e) {
        Failure {
            error: UpstreamError::Closed {
                host: host.to_owned(),
            },
            before_answer: true,
        }
    } else {
        Failure::after(io_error(host, e))
    }
}

fn protocol(host: &str, reason: &'static str) -> Failure {
    Failure::after(UpstreamError::Protocol {
        host: host.to_owned(),
        reason,
    })
}

fn read_head(
    conn: &mut Conn,
    host: &str,
    deadline: Instant,
    received_any: &mut bool,
) -> Result<Head, Failure> {
    loop {
        if !conn.buffered().is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(conn.buffered()) {
                Ok(httparse::Status::Complete(used)) => {
                    let head = interpret_head(&parsed, host)?;
                    conn.consume(used);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if conn.buffered().len() > MAX_HEAD_BYTES {
                        return Err(protocol(host, "response head too large"));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(protocol(host, "too many response headers"));
                }
                Err(_) => return Err(protocol(host, "not an http/1.x response")),
            }
        }
        match conn.fill(host, deadline) {
            Ok(0) if !*received_any => {
                return Err(Failure {
                    error: UpstreamError::Closed {
                        host: host.to_owned(),
                    },
                    before_answer: true,
                });
            }
            Ok(0) => return Err(protocol(host, "connection closed inside the response head")),
            Ok(_) => *received_any = true,
            Err(e) => return Err(read_failure(host, e, *received_any)),
        }
    }
}

fn interpret_head(parsed: &httparse::Response<'_, '_>, host: &str) -> Result<Head, Failure> {
    let status = parsed
        .code
        .ok_or_else(|| protocol(host, "missing status code"))?;
    let version = parsed.version.unwrap_or(1);
    let mut response = UpstreamResponse {
        status,
        content_type: None,
        set_cookies: Vec::new(),
        location: None,
        body: Vec::new(),
    };
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == 0;
    for header in parsed.headers.iter() {
        let name = header.name;
        let value = std::str::from_utf8(header.value)
            .map_err(|_| protocol(host, "header value is not utf-8"))?
            .trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<u64>()
                .map_err(|_| protocol(host, "bad content-length"))?;
            if content_length.is_some_and(|known| known != length) {
                return Err(protocol(host, "conflicting content-length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                return Err(protocol(host, "unsupported transfer-encoding"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            response.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("set-cookie") {
            response.set_cookies.push(value.to_owned());
        } else if name.eq_ignore_ascii_case("location") {
            response.location = Some(value.to_owned());
        }
    }
    Ok(Head {
        response,
        content_length: if chunked { None } else { content_length },
        chunked,
        keep_alive: !close,
    })
}

fn read_exact_body(
    conn: &mut Conn,
    length: usize,
    host: &str,
    deadline: Instant,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::with_capacity(length);
    while body.len() < length {
        if conn.buffered().is_empty() {
            match conn.fill(host, deadline) {
                Ok(0) => return Err(protocol(host, "connection closed inside the body")),
                Ok(_) => {}
                Err(e) => return Err(read_failure(host, e, true)),
            }
        }
        let take = (length - body.len()).min(conn.buffered().len());
        body.extend_from_slice(&conn.buffered()[..take]);
        conn.consume(take);
    }
    Ok(body)
}

fn read_to_close(
    conn: &mut Conn,
    host: &str,
    deadline: Instant,
    max_body: usize,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        body.extend_from_slice(conn.buffered());
        let n = conn.buffered().len();
        conn.consume(n);
        if body.len() > max_body {
            return Err(Failure::after(UpstreamError::TooLarge {
                host: host.to_owned(),
                limit: max_body,
            }));
        }
        match conn.fill(host, deadline) {
            Ok(0) => return Ok(body),
            Ok(_) => {}
            // TLS peers often drop the connection without a close_notify;
            // for a body delimited by the close that still ends the body.
            Err(e) if is_peer_gone(&e) => return Ok(body),
            Err(e) => return Err(read_failure(host, e, true)),
        }
    }
}

/// Reads one CRLF-terminated line (without the CRLF) of at most `max` bytes.
fn read_line(
    conn: &mut Conn,
    host: &str,
    deadline: Instant,
    max: usize,
) -> Result<Vec<u8>, Failure> {
    loop {
        if let Some(end) = conn.buffered().windows(2).position(|w| w == b"\r\n") {
            let line = conn.buffered()[..end].to_vec();
            conn.consume(end + 2);
            return Ok(line);
        }
        if conn.buffered().len() > max {
            return Err(protocol(host, "chunk framing line too long"));
        }
        match conn.fill(host, deadline) {
            Ok(0) => return Err(protocol(host, "connection closed inside a chunked body")),
            Ok(_) => {}
            Err(e) => return Err(read_failure(host, e, true)),
        }
    }
}

fn read_chunked(
    conn: &mut Conn,
    host: &str,
    deadline: Instant,
    max_body: usize,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn, host, deadline, 4096)?;
        let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]);
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| protocol(host, "bad chunk size"))?
            .trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| protocol(host, "bad chunk size"))?;
        if size == 0 {
            // Trailer fields, if any, end with an empty line; they are ignored.
            loop {
                let trailer = read_line(conn, host, deadline, MAX_HEAD_BYTES)?;
                if trailer.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len().saturating_add(size) > max_body {
            return Err(Failure::after(UpstreamError::TooLarge {
                host: host.to_owned(),
                limit: max_body,
            }));
        }
        let chunk = read_exact_body(conn, size, host, deadline)?;
        body.extend_from_slice(&chunk);
        let end = read_line(conn, host, deadline, 2)?;
        if !end.is_empty() {
            return Err(protocol(host, "chunk not followed by a line break"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn target_parses_scheme_host_port_and_path() {
        let t = Target::parse("https://Panel.Example.com:8443/base/api?x=1#frag").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "panel.example.com".into(),
                port: 8443,
                path: "/base/api?x=1".into()
            }
        );
        assert_eq!(t.host_header(), "panel.example.com:8443");

        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert_eq!(t.host_header(), "127.0.0.1");

        let t = Target::parse("HTTPS://[::1]:9/x").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 9, true));
        assert_eq!(t.host_header(), "[::1]:9");

        let t = Target::parse("http://h?q").unwrap();
        assert_eq!(t.path, "/?q");
    }

    #[test]
    fn target_rejects_bad_urls() {
        for url in [
            "ftp://h/",
            "h/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://h/a b",
            "http://[::1/",
            "http://[zz]/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(UpstreamError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn request_head_drops_headers_with_line_breaks() {
        let target = Target::parse("http://h:8080/p").unwrap();
        let headers = [("Authorization", "Bearer t"), ("X-Bad", "a\r\nInjected: 1")];
        let req = OutboundRequest {
            method: Method::Put,
            url: "http://h:8080/p",
            headers: &headers,
            body: Some(b"{}"),
            class: CallClass::Link,
        };
        let head = String::from_utf8(request_head(&req, &target)).unwrap();
        assert!(head.starts_with("PUT /p HTTP/1.1\r\nHost: h:8080\r\n"));
        assert!(head.contains("\r\nAuthorization: Bearer t\r\n"));
        assert!(head.contains("\r\nContent-Length: 2\r\n"));
        assert!(!head.contains("Injected"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_address_is_tried_until_one_connects() {
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // The same port on another loopback address: nothing listens there
        // while `live` holds the port, so the connection is refused.
        let refused = SocketAddr::from(([127, 0, 0, 2], live.local_addr().unwrap().port()));
        let deadline = Instant::now() + Duration::from_secs(5);

        let stream = connect_any("panel", &[refused, live.local_addr().unwrap()], deadline)
            .expect("the second address answers");
        assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());

        let error = connect_any("panel", &[refused, refused], deadline).unwrap_err();
        assert_eq!(error.kind(), "connect", "{error:?}");
    }

    #[test]
    fn errors_do_not_show_credentials() {
        let e = UpstreamError::Status {
            host: "panel".into(),
            status: 401,
        };
        assert_eq!(e.to_string(), "panel answered status 401");
        assert_eq!(e.kind(), "status");
    }
}
