//! The listener: options, the accept coroutine, the registry of open
//! connections, and graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::conn;
use super::service::Service;
use super::tls::TlsAcceptor;

/// How the server listens and how long it waits for clients.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub addr: SocketAddr,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
    /// The deadline of one request, from its complete head to its answer.
    /// Deferred work still running then is abandoned with a 504.
    pub request_timeout: Duration,
    /// How long a started request (head or body) may take to arrive; a
    /// client that has not finished sending it by then gets 408. The same
    /// bound applies to a write that makes no progress.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take in total.
    pub tls_handshake_timeout: Duration,
    /// Connections beyond this many are accepted and closed at once, so that
    /// the backlog does not fill with clients that would wait in vain.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            addr: SocketAddr::from(([0, 0, 0, 0], 5000)),
            tls: None,
            request_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            // Clients poll every few hours, so a connection is rarely reused;
            // a minute covers a browser loading the status page and its
            // follow-up requests.
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Timeouts as the connections use them. Zero would mean "already late" to
/// a deadline and "forever" to a socket, so each is at least a millisecond.
pub(super) struct Timeouts {
    pub(super) request: Duration,
    pub(super) header: Duration,
    pub(super) idle: Duration,
    pub(super) tls_handshake: Duration,
}

/// What every connection of one server shares.
pub(super) struct Shared {
    pub(super) service: Arc<dyn Service>,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) timeouts: Timeouts,
    max_connections: usize,
    shutting_down: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    // The open connections by id. A std mutex is fine here: it is held for a
    // map operation or a scan of shutdown(2) calls, never across a wait.
    registry: Mutex<HashMap<u64, Arc<Slot>>>,
    refused: RateLimitedWarning,
}

/// One open connection as the shutdown path sees it.
struct Slot {
    fd: RawFd,
    // True while a request is in progress (bytes of it received, or its
    // answer being produced or written); false while waiting for the next
    // request, when the connection may be closed at once.
    busy: AtomicBool,
}

impl Shared {
    pub(super) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // A panic cannot leave the map half-updated (each use is a single
        // map call), so a poisoned lock is still consistent.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(self: &Arc<Shared>, fd: RawFd) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            fd,
            busy: AtomicBool::new(false),
        });
        self.active.fetch_add(1, Ordering::SeqCst);
        self.registry().insert(id, Arc::clone(&slot));
        Registration {
            shared: Arc::clone(self),
            slot,
            id,
        }
    }

    /// Shuts down the sockets of connections (only the idle ones unless
    /// `busy_too`): their coroutines wake up to end of file and end.
    fn close_connections(&self, busy_too: bool) {
        let registry = self.registry();
        for slot in registry.values() {
            if busy_too || !slot.busy.load(Ordering::SeqCst) {
                // SAFETY: shutdown(2) takes no pointers. The descriptor is
                // still open: a connection leaves the registry, under this
                // lock, before its socket is closed (see `Socket`), so the
                // number cannot belong to a newer, unrelated file.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RDWR) };
            }
        }
    }
}

/// A connection's entry in the registry, released when it is dropped.
pub(super) struct Registration {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    id: u64,
}

impl Registration {
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Marks the connection busy (a request in progress) or idle. Returns
    /// false when it went idle while the server is shutting down: it must
    /// close. Both sides use SeqCst, so either the connection sees the
    /// shutdown flag here or the shutdown scan sees it idle and closes it.
    pub(super) fn set_busy(&self, busy: bool) -> bool {
        self.slot.busy.store(busy, Ordering::SeqCst);
        busy || !self.shared.shutting_down()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.registry().remove(&self.id);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A warning that is logged at most once per interval, with the number of
/// occurrences since the last one.
struct RateLimitedWarning {
    started: Instant,
    last_ms: AtomicU64,
    count: AtomicU64,
}

impl RateLimitedWarning {
    const INTERVAL_MS: u64 = 10_000;

    fn new() -> RateLimitedWarning {
        RateLimitedWarning {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; returns the count to report when it is time
    /// to log again.
    fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64 + Self::INTERVAL_MS;
        let last_ms = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_ms) < Self::INTERVAL_MS {
            return None;
        }
        self.last_ms
            .compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| self.count.swap(0, Ordering::Relaxed))
    }
}

/// A running server. Dropping it stops accepting and closes idle
/// connections without waiting; [`Server::shutdown`] waits for requests in
/// progress.
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<may::coroutine::JoinHandle<()>>,
}

impl Server {
    /// Binds (may's listener) and starts the accept coroutine; returns at
    /// once.
    pub fn start(options: ServerOptions, service: Arc<dyn Service>) -> io::Result<Server> {
        if options.addr.port() != 0 {
            // may binds with SO_REUSEPORT, so a second server on a taken port
            // would silently share its traffic. A plain bind first turns that
            // into the usual "address in use" error.
            drop(std::net::TcpListener::bind(options.addr)?);
        }
        let listener = may::net::TcpListener::bind(options.addr)?;
        let local_addr = listener.local_addr()?;
        let at_least = |timeout: Duration| timeout.max(Duration::from_millis(1));
        let shared = Arc::new(Shared {
            service,
            tls: options.tls,
            timeouts: Timeouts {
                request: at_least(options.request_timeout),
                header: at_least(options.header_timeout),
                idle: at_least(options.idle_timeout),
                tls_handshake: at_least(options.tls_handshake_timeout),
            },
            max_connections: options.max_connections.max(1),
            shutting_down: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            registry: Mutex::new(HashMap::new()),
            refused: RateLimitedWarning::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = may::go!(move || accept_loop(&listener, &accept_shared));
        tracing::debug!(address = %local_addr, tls = shared.tls.is_some(), "listener started");
        Ok(Server {
            local_addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The real bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open connections, busy or idle.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Stop accepting, let in-flight requests finish for up to `grace`,
    /// close idle connections (and connections that finish their current
    /// response), then return. Returns how many connections were still busy
    /// when grace ran out.
    pub fn shutdown(mut self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        self.stop();
        loop {
            let active = self.active_connections();
            if active == 0 {
                return 0;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // What is left is abandoned: shut the sockets so that the
                // coroutines end as soon as they touch them.
                self.shared.close_connections(true);
                return active;
            }
            // Works from a thread (it sleeps the thread) and from a coroutine.
            may::coroutine::sleep(remaining.min(Duration::from_millis(10)));
        }
    }

    /// Stops accepting and closes idle connections.
    fn stop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            // SAFETY: cancelling makes the accept coroutine unwind (a panic
            // that may raises at its next wait, here always `accept`), which
            // the release profile allows (panic = "unwind"). The coroutine
            // holds no lock across that wait and owns everything it touches
            // (the listener, an Arc of the shared state), so unwinding drops
            // the listener and leaves nothing inconsistent. Joining then
            // guarantees the port is closed before we go on.
            unsafe { accept.coroutine().cancel() };
            let _ = accept.join();
        }
        self.shared.close_connections(false);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("active_connections", &self.active_connections())
            .finish()
    }
}

fn accept_loop(listener: &may::net::TcpListener, shared: &Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(&error);
                continue;
            }
        };
        if shared.shutting_down() {
            break;
        }
        if shared.active.load(Ordering::SeqCst) >= shared.max_connections {
            drop(stream);
            if let Some(refused) = shared.refused.hit() {
                tracing::warn!(
                    refused,
                    max_connections = shared.max_connections,
                    "connection limit reached, closing new connections"
                );
            }
            continue;
        }
        // Answers are written in one batch per read, so Nagle's delay would
        // only hold back the last segment of each batch.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot disable nagle");
        }
        let registration = shared.register(stream.as_raw_fd());
        may::go!(move || conn::serve(stream, peer, registration));
    }
}

fn accept_failed(error: &io::Error) {
    match error.raw_os_error() {
        // Out of descriptors: an operator must raise the limit. Pausing keeps
        // the loop from spinning while the condition lasts.
        Some(libc::EMFILE | libc::ENFILE) => {
            tracing::error!(%error, "cannot accept connections: out of file descriptors");
            may::coroutine::sleep(Duration::from_millis(100));
        }
        // A client that gave up between its connect and our accept.
        Some(libc::ECONNABORTED) => tracing::debug!(%error, "connection aborted before accept"),
        _ => {
            tracing::warn!(%error, "accept failed");
            may::coroutine::sleep(Duration::from_millis(10));
        }
    }
}

/// Raises the soft limit of open files to the hard limit and returns the new
/// soft limit. Each connection holds a descriptor, and the usual soft limit
/// (1,024) is far below the connections one process can serve.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
