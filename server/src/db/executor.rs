//! The query executor: dedicated connection threads, a bounded job queue, the
//! acquire timeout, and the pool metrics.
//!
//! Callers push a job into a queue shared with `size` OS threads and park on a
//! may channel for its result, which works the same from a coroutine and from a
//! plain thread. The queue is a std `Mutex<VecDeque>` with a `Condvar`: the pool
//! threads are real OS threads, so blocking on the condvar is fine there, and a
//! caller holds the lock only for a push or a removal, never across a wait.
//!
//! A job is owned by exactly one side: a pool thread pops it from the queue
//! under the lock, or the caller removes it under the same lock when its
//! acquire timeout expires. Whoever finds it in the queue owns it, so a job can
//! never both run and be reported as exhausted.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{DbError, PoolOptions, connect_error};

/// Queued jobs allowed per connection thread before new jobs are refused at
/// once. A queued job waits at most the acquire timeout anyway, so the bound
/// only caps memory in a flood (a queued job is a few hundred bytes) and lets
/// a hopeless backlog be answered 503 without waiting. It must stay well above
/// what a healthy pool drains within the acquire timeout: a connection thread
/// runs a lookup in a few milliseconds at most, and the sizing sweep saw a
/// bound of 32 per thread refuse requests that would have been served in time.
const QUEUED_JOBS_PER_THREAD: usize = 256;

/// The smallest queue bound, so a pool of one or two threads still absorbs a
/// burst of a few hundred clients.
const MIN_QUEUE_CAPACITY: usize = 1024;

/// At most one "pool exhausted" log line per this interval; the others are
/// counted and reported in the next line.
const EXHAUSTED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The log message of an exhausted pool, which operators grep for.
const EXHAUSTED_MESSAGE: &str =
    "MySQL connection pool exhausted; consider increasing MYSQL_POOL_SIZE";

/// A job as a pool thread sees it: it receives the thread's connection, or the
/// reason there is none, and answers whether the connection must be dropped.
type ErasedJob = Box<dyn FnOnce(Result<&mut mysql::Conn, DbError>) -> bool + Send>;

struct QueuedJob {
    id: u64,
    job: ErasedJob,
}

struct Queue {
    jobs: VecDeque<QueuedJob>,
    shutting_down: bool,
}

/// A snapshot of the executor's state, for logs and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connection threads.
    pub size: usize,
    /// Threads running a job now.
    pub in_use: usize,
    /// Jobs queued for a free thread.
    pub waiting: usize,
    /// Jobs refused because no thread became free in time, since start.
    pub exhausted_total: u64,
}

struct PoolMetrics {
    size: Gauge,
    in_use: Gauge,
    waiting: Gauge,
    exhausted_total: Counter,
}

impl PoolMetrics {
    fn register(registry: &mut Registry) -> PoolMetrics {
        let metrics = PoolMetrics {
            size: Gauge::default(),
            in_use: Gauge::default(),
            waiting: Gauge::default(),
            exhausted_total: Counter::default(),
        };
        registry.register(
            "valhalla_db_pool_size",
            "Connection threads of the MySQL executor",
            metrics.size.clone(),
        );
        registry.register(
            "valhalla_db_pool_in_use",
            "MySQL connection threads running a job",
            metrics.in_use.clone(),
        );
        registry.register(
            "valhalla_db_pool_waiting",
            "Database jobs waiting for a free connection thread",
            metrics.waiting.clone(),
        );
        // The client library appends `_total` to counters.
        registry.register(
            "valhalla_db_pool_exhausted",
            "Database jobs refused because every connection stayed busy",
            metrics.exhausted_total.clone(),
        );
        metrics
    }
}

/// Lets one log line through per interval and counts the rest.
///
/// Pure logic on a caller-supplied clock so it can be tested without waiting.
pub(crate) struct LogLimiter {
    interval: Duration,
    origin: Instant,
    /// Nanoseconds since `origin` of the last line let through, or `u64::MAX`
    /// before the first one.
    last_logged: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration, origin: Instant) -> LogLimiter {
        LogLimiter {
            interval,
            origin,
            last_logged: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(number of occurrences suppressed since the last line) when a line
    /// may be logged at `now`, None when this occurrence is to be suppressed.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let now_ns = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX - 1);
        let interval_ns = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let mut last = self.last_logged.load(Ordering::Acquire);
        loop {
            if last != u64::MAX && now_ns.saturating_sub(last) < interval_ns {
                self.suppressed.fetch_add(1, Ordering::AcqRel);
                return None;
            }
            match self.last_logged.compare_exchange(
                last,
                now_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::AcqRel)),
                Err(current) => last = current,
            }
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    job_ready: Condvar,
    queue_capacity: usize,
    options: PoolOptions,
    driver_opts: mysql::Opts,
    metrics: PoolMetrics,
    exhausted_log: LogLimiter,
    next_job_id: AtomicU64,
}

impl Shared {
    /// The queue lock. A panic while it was held cannot leave the queue
    /// inconsistent (every critical section is a single push, pop or
    /// removal), so a poisoned lock is still used.
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_waiting(&self, queue: &Queue) {
        self.metrics.waiting.set(gauge_value(queue.jobs.len()));
    }

    /// Blocks the pool thread until a job arrives; None once the pool shuts down.
    fn next_job(&self) -> Option<QueuedJob> {
        let mut queue = self.lock_queue();
        loop {
            if queue.shutting_down {
                return None;
            }
            if let Some(job) = queue.jobs.pop_front() {
                self.set_waiting(&queue);
                return Some(job);
            }
            queue = self
                .job_ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes the job back if no thread has claimed it yet.
    fn cancel(&self, id: u64) -> bool {
        let mut queue = self.lock_queue();
        let Some(position) = queue.jobs.iter().position(|queued| queued.id == id) else {
            return false;
        };
        let removed = queue.jobs.remove(position);
        self.set_waiting(&queue);
        drop(queue);

        // The job (and the result sender inside it) is dropped outside the lock.
        drop(removed);
        true
    }

    /// Counts a refused job and logs it, at most once per interval.
    fn exhausted(&self) -> DbError {
        self.metrics.exhausted_total.inc();
        if let Some(suppressed) = self.exhausted_log.admit(Instant::now()) {
            tracing::error!(
                suppressed,
                pool_size = self.options.size,
                acquire_timeout_ms = self.options.acquire_timeout.as_millis() as u64,
                "{}",
                EXHAUSTED_MESSAGE
            );
        }
        DbError::Exhausted
    }
}

/// The MySQL executor. Cheap to clone; every clone uses the same threads.
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
}

impl Db {
    /// Spawns `options.size` connection threads named `mysql-N` and registers
    /// the pool metrics. Threads connect lazily, on their first job, and
    /// reconnect after a lost connection, so this returns at once even when the
    /// database is down.
    pub fn start(options: PoolOptions, registry: &mut Registry) -> Db {
        let size = options.size.max(1);
        let metrics = PoolMetrics::register(registry);
        metrics.size.set(gauge_value(size));

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                shutting_down: false,
            }),
            job_ready: Condvar::new(),
            queue_capacity: (size * QUEUED_JOBS_PER_THREAD).max(MIN_QUEUE_CAPACITY),
            driver_opts: options.mysql_opts(),
            options,
            metrics,
            exhausted_log: LogLimiter::new(EXHAUSTED_LOG_INTERVAL, Instant::now()),
            next_job_id: AtomicU64::new(0),
        });

        for index in 0..size {
            let thread_shared = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("mysql-{index}"))
                .spawn(move || connection_thread(&thread_shared));
            if let Err(error) = spawned {
                // Fewer threads only means less parallelism; the pool still works
                // as long as one thread exists.
                tracing::error!(thread = index, error = %error, "cannot spawn a database thread");
            }
        }

        Db { shared }
    }

    /// Runs `job` on a connection thread and parks the caller, coroutine or
    /// thread, until the result arrives or `deadline` passes.
    ///
    /// When no thread takes the job within the acquire timeout the job is
    /// withdrawn and never runs: [`DbError::Exhausted`]. When the deadline
    /// passes first, [`DbError::Timeout`]; a job that already started then
    /// finishes on its thread and its result is discarded, so jobs must not
    /// rely on the caller seeing their effects.
    ///
    /// A job holds its connection thread until it returns: it must only talk
    /// to the database, never wait on a panel, a channel or another job, or a
    /// small pool deadlocks under load.
    pub fn run<T, F>(&self, deadline: Instant, job: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut mysql::Conn) -> Result<T, mysql::Error> + Send + 'static,
    {
        let shared = &*self.shared;
        let queued_at = Instant::now();
        if deadline <= queued_at {
            return Err(DbError::Timeout);
        }

        let (result_tx, result_rx) = may::sync::mpsc::channel::<Result<T, DbError>>();
        let erased: ErasedJob = Box::new(move |conn| match conn {
            Ok(conn) => {
                let outcome = job(conn);
                let connection_lost = matches!(&outcome, Err(error) if is_connection_error(error));
                // The caller may have given up; then nobody needs the result.
                let _ = result_tx.send(outcome.map_err(DbError::Query));
                connection_lost
            }
            Err(error) => {
                let _ = result_tx.send(Err(error));
                false
            }
        });

        let id = shared.next_job_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut queue = shared.lock_queue();
            if queue.shutting_down {
                return Err(DbError::Unavailable(
                    "the database executor is shut down".to_owned(),
                ));
            }
            if queue.jobs.len() >= shared.queue_capacity {
                drop(queue);
                return Err(shared.exhausted());
            }
            queue.jobs.push_back(QueuedJob { id, job: erased });
            shared.set_waiting(&queue);
        }
        shared.job_ready.notify_one();

        let acquire_deadline = (queued_at + shared.options.acquire_timeout).min(deadline);
        match result_rx.recv_timeout(acquire_deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Disconnected) => return Err(job_lost()),
            Err(RecvTimeoutError::Timeout) => {}
        }

        if shared.cancel(id) {
            return if acquire_deadline < deadline {
                Err(shared.exhausted())
            } else {
                Err(DbError::Timeout)
            };
        }

        // A thread claimed the job in time; wait for it up to the deadline.
        match result_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(DbError::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(job_lost()),
        }
    }

    /// Checks that a connection thread can reach the database (`SELECT 1`), for
    /// readiness probes.
    pub fn ping(&self, deadline: Instant) -> Result<(), DbError> {
        self.run(deadline, |conn| {
            use mysql::prelude::Queryable;
            let one: Option<i64> = conn.query_first("SELECT 1")?;
            debug_assert_eq!(one, Some(1));
            Ok(())
        })
    }

    /// The pool's current state.
    pub fn stats(&self) -> PoolStats {
        let shared = &*self.shared;
        let waiting = shared.lock_queue().jobs.len();
        PoolStats {
            size: usize::try_from(shared.metrics.size.get()).unwrap_or(0),
            in_use: usize::try_from(shared.metrics.in_use.get()).unwrap_or(0),
            waiting,
            exhausted_total: shared.metrics.exhausted_total.get(),
        }
    }

    /// Stops the executor: threads exit after their current job, queued jobs
    /// are dropped (their callers get [`DbError::Unavailable`]) and later calls
    /// are refused.
    pub fn shutdown(&self) {
        let shared = &*self.shared;
        let dropped = {
            let mut queue = shared.lock_queue();
            queue.shutting_down = true;
            let dropped: Vec<QueuedJob> = queue.jobs.drain(..).collect();
            shared.set_waiting(&queue);
            dropped
        };
        shared.job_ready.notify_all();
        drop(dropped);
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("address", &self.shared.options.address())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The body of one connection thread: take a job, make sure the connection is
/// usable, run the job, repeat until shutdown.
fn connection_thread(shared: &Shared) {
    let mut conn: Option<mysql::Conn> = None;

    while let Some(queued) = shared.next_job() {
        shared.metrics.in_use.inc();

        // A connection the server closed while it sat idle (restart, KILL,
        // wait_timeout) is noticed here, before the job uses it, so the job
        // runs on a fresh connection instead of failing.
        if conn
            .as_ref()
            .is_some_and(|open| !is_idle_connection_usable(open))
        {
            tracing::debug!("database connection closed while idle, reconnecting");
            conn = None;
        }
        if conn.is_none() {
            match mysql::Conn::new(shared.driver_opts.clone()) {
                Ok(fresh) => conn = Some(fresh),
                Err(error) => {
                    tracing::warn!(
                        address = %shared.options.address(),
                        error = %error,
                        "cannot connect to the database"
                    );
                    let reason = connect_error(&shared.options, &error);
                    run_guarded(queued.job, Err(reason));
                    shared.metrics.in_use.dec();
                    continue;
                }
            }
        }

        if let Some(open) = conn.as_mut() {
            let keep = run_guarded(queued.job, Ok(open));
            if !keep {
                conn = None;
            }
        }
        shared.metrics.in_use.dec();
    }
}

/// Runs a job and answers whether its connection may be kept. A panicking job
/// loses its connection (its session state is unknown) but not the thread; its
/// caller sees the dropped result channel.
fn run_guarded(job: ErasedJob, conn: Result<&mut mysql::Conn, DbError>) -> bool {
    match panic::catch_unwind(AssertUnwindSafe(move || job(conn))) {
        Ok(connection_lost) => !connection_lost,
        Err(_) => {
            tracing::error!("a database job panicked; its connection was dropped");
            false
        }
    }
}

/// Whether an idle connection can still be used: its socket has nothing to
/// read. A healthy idle MySQL connection never receives unsolicited bytes, so
/// end-of-file or pending data (the server's "connection killed" packet) both
/// mean the server has closed it.
fn is_idle_connection_usable(conn: &mysql::Conn) -> bool {
    let fd = conn.as_raw_fd();
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket owned by `conn`, which outlives this call;
    // `recv` with MSG_PEEK only looks at the receive queue and writes at most
    // one byte into `byte`, which is valid for that write.
    let received = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast::<libc::c_void>(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if received < 0 {
        let error = std::io::Error::last_os_error();
        return matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    false
}

/// Errors after which the connection cannot be trusted: socket and protocol
/// failures, and the server's "connection killed" and "server shutdown" codes.
fn is_connection_error(error: &mysql::Error) -> bool {
    match error {
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) | mysql::Error::DriverError(_) => {
            true
        }
        // 1053 server shutdown, 1927 connection killed (MariaDB), 4031
        // disconnected for inactivity (MySQL 8).
        mysql::Error::MySqlError(server) => matches!(server.code, 1053 | 1927 | 4031),
        _ => false,
    }
}

fn job_lost() -> DbError {
    DbError::Unavailable("the database job was dropped before it finished".to_owned())
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exhaustion_is_logged_then_suppressed_for_the_interval() {
        let origin = Instant::now();
        let limiter = LogLimiter::new(Duration::from_secs(10), origin);

        assert_eq!(limiter.admit(origin), Some(0));
        assert_eq!(limiter.admit(origin + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit(origin + Duration::from_millis(9_999)), None);
        assert_eq!(limiter.admit(origin + Duration::from_secs(10)), Some(2));
        assert_eq!(limiter.admit(origin + Duration::from_secs(11)), None);
        assert_eq!(limiter.admit(origin + Duration::from_secs(25)), Some(1));
        assert_eq!(limiter.admit(origin + Duration::from_secs(40)), Some(0));
    }

    #[test]
    fn limiter_admits_one_line_among_concurrent_callers() {
        let origin = Instant::now();
        let limiter = Arc::new(LogLimiter::new(Duration::from_secs(10), origin));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                thread::spawn(move || {
                    (0..100)
                        .filter(|_| limiter.admit(origin + Duration::from_secs(1)).is_some())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles
            .into_iter()
            .map(|handle| handle.join().expect("limiter thread"))
            .sum();
        assert_eq!(admitted, 1);
        assert_eq!(limiter.admit(origin + Duration::from_secs(12)), Some(799));
    }

    #[test]
    fn killed_and_io_errors_drop_the_connection() {
        let io = mysql::Error::IoError(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_connection_error(&io));
        let killed = mysql::Error::MySqlError(mysql::MySqlError {
            state: "70100".to_owned(),
            message: "Connection was killed".to_owned(),
            code: 1927,
        });
        assert!(is_connection_error(&killed));
        let syntax = mysql::Error::MySqlError(mysql::MySqlError {
            state: "42000".to_owned(),
            message: "syntax error".to_owned(),
            code: 1064,
        });
        assert!(!is_connection_error(&syntax));
    }
}
