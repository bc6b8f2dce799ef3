//! The panel-answer cache: a byte-bounded, single-flight cache that serves a stale answer when a fetch fails.
//!
//! Every subscription request asks each of the user's panels for the user's
//! links, and clients poll every few hours, often many at once after a
//! network comes back. The cache keeps a good answer for `ttl` (the
//! `FETCH_CACHE_TTL` setting), lets only one fetch per key run at a time so a
//! burst of requests costs a panel one call, and keeps answers for
//! `stale_ttl` more so that a panel that is down still yields the links it
//! gave last. Failures are never stored: the next request tries again.
//!
//! Locking: one `std::sync::Mutex` guards the map and is held only for short
//! map operations, never across a fetch or a wait, so it never blocks a may
//! worker thread for long. Requests waiting for another's fetch wait on a
//! `may::sync::mpsc` channel, which parks a coroutine (or a thread) without
//! blocking the worker thread under it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use std::sync::mpsc::RecvTimeoutError;

use may::sync::mpsc::{self, Sender};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Bytes counted for each entry on top of what `weigh` reports: the map
/// slot, the recency index and the bookkeeping fields, rounded up.
const ENTRY_OVERHEAD: usize = 128;

/// How many of the least recently used entries an insert checks for answers
/// past `stale_ttl`, so that expired answers leave even when the byte bound
/// is never reached, at a bounded cost per insert.
const EXPIRED_SWEEP: usize = 2;

/// The knobs of one cache.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Label value of this cache's metrics (`cache="..."`).
    pub name: &'static str,
    /// How long an answer is served without asking the panel again.
    pub ttl: Duration,
    /// How long an answer may still be served, marked stale, when a new
    /// fetch fails or cannot finish before the caller's deadline.
    pub stale_ttl: Duration,
    /// Upper bound of the bytes held, as counted by the weigh function.
    pub max_bytes: usize,
}

impl CacheSettings {
    /// The defaults: 300 s fresh as the original, 24 h stale, 64 MiB.
    pub fn new(name: &'static str) -> Self {
        CacheSettings {
            name,
            ttl: Duration::from_secs(300),
            stale_ttl: Duration::from_secs(24 * 60 * 60),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why no fresh answer could be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure<E> {
    /// The fetch ran and failed.
    Fetch(E),
    /// The caller's deadline passed before an answer arrived.
    Deadline,
}

/// The answer of [`Cache::get_or_fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<V, E> {
    /// This call fetched the answer.
    Fresh(V),
    /// A stored answer younger than `ttl`, or the answer of a fetch that
    /// another call ran while this one waited.
    Cached(V),
    /// No fresh answer: the last good one, younger than `stale_ttl`, and why
    /// it is not fresh.
    Stale(V, Failure<E>),
    /// No answer at all.
    Failed(Failure<E>),
}

impl<V, E> Lookup<V, E> {
    /// The answer, fresh or not.
    pub fn value(&self) -> Option<&V> {
        match self {
            Lookup::Fresh(value) | Lookup::Cached(value) | Lookup::Stale(value, _) => Some(value),
            Lookup::Failed(_) => None,
        }
    }

    /// Why the answer is not fresh, when it is not.
    pub fn failure(&self) -> Option<&Failure<E>> {
        match self {
            Lookup::Stale(_, failure) | Lookup::Failed(failure) => Some(failure),
            Lookup::Fresh(_) | Lookup::Cached(_) => None,
        }
    }
}

/// The counters of one cache, registered as `valhalla_cache_*` with a
/// `cache` label.
#[derive(Clone, Debug, Default)]
pub struct CacheStats {
    /// Answers served without running a fetch of their own.
    pub hits: Counter,
    /// Fetches run.
    pub misses: Counter,
    /// Stale answers served.
    pub stale: Counter,
    /// Bytes held, as counted by the weigh function plus a fixed overhead.
    pub bytes: Gauge,
}

impl CacheStats {
    fn register(&self, registry: &mut Registry, name: &'static str) {
        let registry =
            registry.sub_registry_with_label((Cow::Borrowed("cache"), Cow::Borrowed(name)));
        registry.register(
            "valhalla_cache_hits",
            "Panel answers served from the cache without a fetch of their own",
            self.hits.clone(),
        );
        registry.register(
            "valhalla_cache_misses",
            "Panel fetches run because no fresh answer was cached",
            self.misses.clone(),
        );
        registry.register(
            "valhalla_cache_stale",
            "Stale panel answers served because a fetch failed or was late",
            self.stale.clone(),
        );
        registry.register(
            "valhalla_cache_bytes",
            "Bytes of panel answers held in the cache",
            self.bytes.clone(),
        );
    }
}

/// A stored good answer.
struct Stored<V> {
    value: V,
    stored_at: Instant,
    weight: usize,
    /// Position in the recency index.
    tick: u64,
}

/// One key: its last good answer and, while a fetch runs, the calls waiting
/// for that fetch.
struct Slot<V, E> {
    stored: Option<Stored<V>>,
    waiters: Option<Vec<Sender<Lookup<V, E>>>>,
}

struct State<K, V, E> {
    slots: HashMap<K, Slot<V, E>>,
    /// Keys with a stored answer, least recently used first.
    recency: BTreeMap<u64, K>,
    next_tick: u64,
    bytes: usize,
}

/// What a call does after looking at the map.
enum Step<V, E> {
    Done(Lookup<V, E>),
    Wait(mpsc::Receiver<Lookup<V, E>>),
    Fetch,
}

/// A cache of panel answers; see the module documentation.
///
/// `V` should be cheap to clone (for example `Arc<[String]>`): every hit
/// and every waiter gets a clone. `E` is the fetch error, cloned to every
/// call that waited on the failed fetch.
pub struct Cache<K, V, E> {
    settings: CacheSettings,
    weigh: fn(&K, &V) -> usize,
    state: Mutex<State<K, V, E>>,
    stats: CacheStats,
}

impl<K, V, E> Cache<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
{
    /// A cache whose entries weigh `weigh(key, value)` bytes, with its
    /// counters registered in `registry`.
    pub fn new(
        settings: CacheSettings,
        weigh: fn(&K, &V) -> usize,
        registry: &mut Registry,
    ) -> Self {
        let stats = CacheStats::default();
        stats.register(registry, settings.name);
        Cache {
            settings,
            weigh,
            state: Mutex::new(State {
                slots: HashMap::new(),
                recency: BTreeMap::new(),
                next_tick: 0,
                bytes: 0,
            }),
            stats,
        }
    }

    /// The counters, for tests and for a status route.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Number of keys with a stored answer.
    pub fn len(&self) -> usize {
        self.lock().recency.len()
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer for `key`: a stored one younger than `ttl`, or the result
    /// of `fetch`, run by this call unless another call is already fetching
    /// the same key, in which case this call waits for that result until
    /// `deadline`.
    ///
    /// `fetch` should itself give up by `deadline`; a call whose deadline
    /// has already passed does not start it. When no fresh answer can be
    /// had, a stored one younger than `stale_ttl` is returned as
    /// [`Lookup::Stale`].
    pub fn get_or_fetch(
        &self,
        key: K,
        deadline: Instant,
        fetch: impl FnOnce() -> Result<V, E>,
    ) -> Lookup<V, E> {
        loop {
            let now = Instant::now();
            let receiver = match self.look(&key, now) {
                Step::Done(lookup) => return lookup,
                Step::Fetch => return self.lead(key, deadline, now, fetch),
                Step::Wait(receiver) => receiver,
            };

            let wait = deadline.saturating_duration_since(now);
            match receiver.recv_timeout(wait) {
                Ok(lookup) => return self.count(lookup),
                Err(RecvTimeoutError::Timeout) => {
                    return self.fallback(&key, Instant::now(), Failure::Deadline);
                }
                // The fetching call panicked and dropped the waiters; take
                // its place.
                Err(RecvTimeoutError::Disconnected) => continue,
            }
        }
    }

    /// Under the lock: serve a fresh answer, join a running fetch, or claim
    /// the fetch for this call.
    fn look(&self, key: &K, now: Instant) -> Step<V, E> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let slot = state.slots.entry(key.clone()).or_insert_with(|| Slot {
            stored: None,
            waiters: None,
        });

        if let Some(stored) = &mut slot.stored
            && now.saturating_duration_since(stored.stored_at) < self.settings.ttl
        {
            let value = stored.value.clone();
            touch(&mut state.recency, &mut state.next_tick, stored);
            self.stats.hits.inc();
            return Step::Done(Lookup::Cached(value));
        }

        match &mut slot.waiters {
            Some(waiters) => {
                let (sender, receiver) = mpsc::channel();
                waiters.push(sender);
                Step::Wait(receiver)
            }
            None => {
                slot.waiters = Some(Vec::new());
                Step::Fetch
            }
        }
    }

    /// Runs the fetch for `key`, stores a good answer and hands the outcome
    /// to every call that waited for it.
    fn lead(
        &self,
        key: K,
        deadline: Instant,
        now: Instant,
        fetch: impl FnOnce() -> Result<V, E>,
    ) -> Lookup<V, E> {
        let mut leader = Leader {
            cache: self,
            key: key.clone(),
            armed: true,
        };
        let result = if now >= deadline {
            Err(Failure::Deadline)
        } else {
            self.stats.misses.inc();
            fetch().map_err(Failure::Fetch)
        };
        leader.armed = false;

        let finished = Instant::now();
        let (lookup, waiters) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let waiters = state
                .slots
                .get_mut(&key)
                .and_then(|slot| slot.waiters.take())
                .unwrap_or_default();
            let lookup = match result {
                Ok(value) => {
                    self.store(state, key, value.clone(), finished);
                    Lookup::Fresh(value)
                }
                Err(failure) => self.stale_or_failed(state, &key, finished, failure),
            };
            self.stats.bytes.set(gauge_value(state.bytes));
            (lookup, waiters)
        };

        if !waiters.is_empty() {
            let shared = match &lookup {
                Lookup::Fresh(value) => Lookup::Cached(value.clone()),
                other => other.clone(),
            };
            for waiter in waiters {
                // A waiter whose deadline passed has gone; nothing to do.
                let _ = waiter.send(shared.clone());
            }
        }
        self.count_own(lookup)
    }

    /// Stores `value` for `key`, then evicts what no longer fits.
    fn store(&self, state: &mut State<K, V, E>, key: K, value: V, now: Instant) {
        let weight = (self.weigh)(&key, &value).saturating_add(ENTRY_OVERHEAD);
        let tick = state.next_tick;
        state.next_tick += 1;

        let slot = state.slots.entry(key.clone()).or_insert_with(|| Slot {
            stored: None,
            waiters: None,
        });
        let previous = slot.stored.replace(Stored {
            value,
            stored_at: now,
            weight,
            tick,
        });
        if let Some(previous) = previous {
            state.recency.remove(&previous.tick);
            state.bytes -= previous.weight;
        }
        state.recency.insert(tick, key);
        state.bytes += weight;

        self.sweep_expired(state, now);
        while state.bytes > self.settings.max_bytes {
            let Some((_, oldest)) = state.recency.pop_first() else {
                break;
            };
            drop_stored(state, &oldest);
        }
    }

    /// Drops the least recently used answers that are past `stale_ttl`.
    fn sweep_expired(&self, state: &mut State<K, V, E>, now: Instant) {
        for _ in 0..EXPIRED_SWEEP {
            let expired = state.recency.first_key_value().and_then(|(_, key)| {
                let stored = state.slots.get(key)?.stored.as_ref()?;
                let age = now.saturating_duration_since(stored.stored_at);
                (age >= self.settings.stale_ttl).then(|| key.clone())
            });
            let Some(key) = expired else {
                return;
            };
            state.recency.pop_first();
            drop_stored(state, &key);
        }
    }

    /// After a failed or late fetch: the stored answer if it is still young
    /// enough, otherwise the failure (and the too old answer goes).
    fn stale_or_failed(
        &self,
        state: &mut State<K, V, E>,
        key: &K,
        now: Instant,
        failure: Failure<E>,
    ) -> Lookup<V, E> {
        let Some(slot) = state.slots.get(key) else {
            return Lookup::Failed(failure);
        };
        let young = slot.stored.as_ref().map(|stored| {
            let age = now.saturating_duration_since(stored.stored_at);
            (age < self.settings.stale_ttl, stored.tick)
        });
        match young {
            Some((true, _)) => match slot.stored.as_ref() {
                Some(stored) => Lookup::Stale(stored.value.clone(), failure),
                None => Lookup::Failed(failure),
            },
            Some((false, tick)) => {
                state.recency.remove(&tick);
                drop_stored(state, key);
                Lookup::Failed(failure)
            }
            None => {
                if slot.waiters.is_none() {
                    state.slots.remove(key);
                }
                Lookup::Failed(failure)
            }
        }
    }

    /// A waiter whose deadline passed: a stale answer if there is one.
    fn fallback(&self, key: &K, now: Instant, failure: Failure<E>) -> Lookup<V, E> {
        let lookup = {
            let mut guard = self.lock();
            let state = &mut *guard;
            match state.slots.get(key).and_then(|slot| slot.stored.as_ref()) {
                Some(stored)
                    if now.saturating_duration_since(stored.stored_at)
                        < self.settings.stale_ttl =>
                {
                    Lookup::Stale(stored.value.clone(), failure)
                }
                _ => Lookup::Failed(failure),
            }
        };
        self.count(lookup)
    }

    /// Counts an answer this call got without fetching.
    fn count(&self, lookup: Lookup<V, E>) -> Lookup<V, E> {
        match &lookup {
            Lookup::Fresh(_) | Lookup::Cached(_) => {
                self.stats.hits.inc();
            }
            Lookup::Stale(..) => {
                self.stats.stale.inc();
            }
            Lookup::Failed(_) => {}
        }
        lookup
    }

    /// Counts the answer of the call that fetched (its miss is counted
    /// when the fetch starts).
    fn count_own(&self, lookup: Lookup<V, E>) -> Lookup<V, E> {
        if let Lookup::Stale(..) = lookup {
            self.stats.stale.inc();
        }
        lookup
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        // The map stays consistent between statements, so a panic elsewhere
        // while the lock was held leaves nothing half done worth refusing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks `stored` as just used.
fn touch<K, V>(recency: &mut BTreeMap<u64, K>, next_tick: &mut u64, stored: &mut Stored<V>) {
    if let Some(key) = recency.remove(&stored.tick) {
        stored.tick = *next_tick;
        *next_tick += 1;
        recency.insert(stored.tick, key);
    }
}

/// Removes the stored answer of `key` (already out of the recency index) and
/// the slot itself unless a fetch for it is running.
fn drop_stored<K: Hash + Eq, V, E>(state: &mut State<K, V, E>, key: &K) {
    let Some(slot) = state.slots.get_mut(key) else {
        return;
    };
    if let Some(stored) = slot.stored.take() {
        state.bytes -= stored.weight;
    }
    if slot.waiters.is_none() {
        state.slots.remove(key);
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The claim of the call that fetches a key. If the fetch panics, dropping
/// the armed claim releases the key: the waiters' channels close and one of
/// them fetches instead, rather than every later call waiting for an answer
/// that will never come.
struct Leader<'a, K: Hash + Eq + Clone, V: Clone, E: Clone> {
    cache: &'a Cache<K, V, E>,
    key: K,
    armed: bool,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Drop for Leader<'_, K, V, E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.cache.lock();
        if let Some(slot) = state.slots.get_mut(&self.key) {
            slot.waiters = None;
            if slot.stored.is_none() {
                state.slots.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::encoding::text::encode;

    type Links = Arc<[String]>;
    type TestCache = Cache<(u64, String), Links, String>;

    fn weigh(key: &(u64, String), links: &Links) -> usize {
        key.1.len() + links.iter().map(String::len).sum::<usize>()
    }

    fn cache(ttl: Duration, stale_ttl: Duration, max_bytes: usize) -> (TestCache, Registry) {
        let mut registry = Registry::default();
        let settings = CacheSettings {
            name: "links",
            ttl,
            stale_ttl,
            max_bytes,
        };
        (Cache::new(settings, weigh, &mut registry), registry)
    }

    fn key(panel: u64) -> (u64, String) {
        (panel, "ali".to_owned())
    }

    fn links(items: &[&str]) -> Links {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn second_call_is_served_from_the_cache() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        let first = cache.get_or_fetch(key(1), later(), || Ok(links(&["vless://a"])));
        assert_eq!(first, Lookup::Fresh(links(&["vless://a"])));

        let second = cache.get_or_fetch(key(1), later(), || -> Result<Links, String> {
            panic!("a fresh answer must not be fetched again")
        });
        assert_eq!(second, Lookup::Cached(links(&["vless://a"])));
        assert_eq!(cache.stats().hits.get(), 1);
        assert_eq!(cache.stats().misses.get(), 1);
    }

    #[test]
    fn keys_are_separate() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://one"])));
        let other = cache.get_or_fetch(key(2), later(), || Ok(links(&["ss://two"])));
        assert_eq!(other, Lookup::Fresh(links(&["ss://two"])));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn an_expired_answer_is_fetched_again() {
        let (cache, _) = cache(Duration::from_millis(30), HOUR, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://old"])));
        std::thread::sleep(Duration::from_millis(40));
        let again = cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://new"])));
        assert_eq!(again, Lookup::Fresh(links(&["ss://new"])));
        let cached = cache.get_or_fetch(key(1), later(), || Err("unused".to_owned()));
        assert_eq!(cached, Lookup::Cached(links(&["ss://new"])));
    }

    #[test]
    fn failures_are_not_cached() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        let failed = cache.get_or_fetch(key(1), later(), || Err("panel down".to_owned()));
        assert_eq!(
            failed,
            Lookup::Failed(Failure::Fetch("panel down".to_owned()))
        );
        assert!(cache.is_empty());

        let next = cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://back"])));
        assert_eq!(next, Lookup::Fresh(links(&["ss://back"])));
    }

    #[test]
    fn a_failed_fetch_serves_the_last_good_answer_as_stale() {
        let (cache, _) = cache(Duration::ZERO, HOUR, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://good"])));
        let stale = cache.get_or_fetch(key(1), later(), || Err("timeout".to_owned()));
        assert_eq!(
            stale,
            Lookup::Stale(links(&["ss://good"]), Failure::Fetch("timeout".to_owned()))
        );
        assert_eq!(stale.value(), Some(&links(&["ss://good"])));
        assert_eq!(cache.stats().stale.get(), 1);
        // The stale answer is kept for the next failure too.
        assert!(matches!(
            cache.get_or_fetch(key(1), later(), || Err("timeout".to_owned())),
            Lookup::Stale(..)
        ));
    }

    #[test]
    fn an_answer_past_stale_ttl_is_not_served() {
        let (cache, _) = cache(Duration::ZERO, Duration::ZERO, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://good"])));
        let failed = cache.get_or_fetch(key(1), later(), || Err("down".to_owned()));
        assert_eq!(failed, Lookup::Failed(Failure::Fetch("down".to_owned())));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_passed_deadline_does_not_start_a_fetch() {
        let (cache, _) = cache(Duration::ZERO, HOUR, 1 << 20);
        let past = Instant::now();
        let failed = cache.get_or_fetch(key(1), past, || -> Result<Links, String> {
            panic!("must not fetch after the deadline")
        });
        assert_eq!(failed, Lookup::Failed(Failure::Deadline));

        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://good"])));
        let stale = cache.get_or_fetch(key(1), Instant::now(), || Ok(links(&["ss://unused"])));
        assert_eq!(
            stale,
            Lookup::Stale(links(&["ss://good"]), Failure::Deadline)
        );
    }

    #[test]
    fn bytes_are_bounded_by_evicting_the_least_recently_used() {
        // Each entry weighs 3 (key) + 100 (link) + the overhead.
        let entry = 3 + 100 + ENTRY_OVERHEAD;
        let (cache, _) = cache(HOUR, HOUR, 3 * entry);
        let link = "v".repeat(100);
        for panel in 1..=3 {
            cache.get_or_fetch(key(panel), later(), || Ok(links(&[&link])));
        }
        assert_eq!(cache.bytes(), 3 * entry);

        // Using panel 1 makes panel 2 the least recently used.
        assert!(matches!(
            cache.get_or_fetch(key(1), later(), || Err(String::new())),
            Lookup::Cached(_)
        ));
        cache.get_or_fetch(key(4), later(), || Ok(links(&[&link])));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), 3 * entry);
        assert_eq!(cache.stats().bytes.get(), i64::try_from(3 * entry).unwrap());

        let refetched = AtomicUsize::new(0);
        for panel in [1, 3, 4, 2] {
            cache.get_or_fetch(key(panel), later(), || {
                refetched.fetch_add(1, Ordering::Relaxed);
                Ok(links(&[&link]))
            });
        }
        assert_eq!(
            refetched.load(Ordering::Relaxed),
            1,
            "only panel 2 was evicted"
        );
    }

    #[test]
    fn replacing_an_answer_keeps_the_byte_count_exact() {
        let (cache, _) = cache(Duration::ZERO, HOUR, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://aaaa"])));
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://b"])));
        assert_eq!(cache.bytes(), 3 + 6 + ENTRY_OVERHEAD);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_answer_larger_than_the_bound_is_returned_but_not_kept() {
        let (cache, _) = cache(HOUR, HOUR, 64);
        let big = cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://x"])));
        assert_eq!(big, Lookup::Fresh(links(&["ss://x"])));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn expired_answers_are_swept_on_insert() {
        let (cache, _) = cache(Duration::ZERO, Duration::from_millis(20), 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://one"])));
        std::thread::sleep(Duration::from_millis(30));
        cache.get_or_fetch(key(2), later(), || Ok(links(&["ss://two"])));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn metrics_are_registered_with_the_cache_label() {
        let (cache, registry) = cache(HOUR, HOUR, 1 << 20);
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://a"])));
        cache.get_or_fetch(key(1), later(), || Ok(links(&["ss://a"])));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("valhalla_cache_hits_total{cache=\"links\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("valhalla_cache_misses_total{cache=\"links\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("valhalla_cache_stale_total{cache=\"links\"} 0"),
            "{text}"
        );
        let bytes = 3 + 6 + ENTRY_OVERHEAD;
        assert!(
            text.contains(&format!("valhalla_cache_bytes{{cache=\"links\"}} {bytes}")),
            "{text}"
        );
    }

    /// Runs `body` on `n` may coroutines and collects what they return.
    fn on_coroutines<T: Send + 'static>(
        n: usize,
        body: impl Fn(usize) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let body = Arc::new(body);
        let handles: Vec<_> = (0..n)
            .map(|index| {
                let body = Arc::clone(&body);
                // SAFETY: the coroutines touch no thread-local storage and
                // only use may's own blocking primitives.
                unsafe { may::coroutine::spawn(move || body(index)) }
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    }

    #[test]
    fn concurrent_calls_share_one_fetch() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        let cache = Arc::new(cache);
        let fetches = Arc::new(AtomicUsize::new(0));

        let results = {
            let cache = Arc::clone(&cache);
            let fetches = Arc::clone(&fetches);
            on_coroutines(10, move |_| {
                cache.get_or_fetch(key(7), later(), || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // Long enough for every other coroutine to arrive and wait.
                    may::coroutine::sleep(Duration::from_millis(200));
                    Ok(links(&["vless://shared"]))
                })
            })
        };

        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let fresh = results
            .iter()
            .filter(|lookup| matches!(lookup, Lookup::Fresh(_)))
            .count();
        let cached = results
            .iter()
            .filter(|lookup| matches!(lookup, Lookup::Cached(_)))
            .count();
        assert_eq!((fresh, cached), (1, 9));
        assert!(
            results
                .iter()
                .all(|lookup| lookup.value() == Some(&links(&["vless://shared"])))
        );
        assert_eq!(cache.stats().misses.get(), 1);
        assert_eq!(cache.stats().hits.get(), 9);
    }

    #[test]
    fn concurrent_callers_share_a_failure_and_the_next_call_retries() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        let cache = Arc::new(cache);
        let fetches = Arc::new(AtomicUsize::new(0));

        let results = {
            let cache = Arc::clone(&cache);
            let fetches = Arc::clone(&fetches);
            on_coroutines(10, move |_| {
                cache.get_or_fetch(key(7), later(), || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    may::coroutine::sleep(Duration::from_millis(200));
                    Err("connection refused".to_owned())
                })
            })
        };
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let refused = Lookup::Failed(Failure::Fetch("connection refused".to_owned()));
        assert!(results.iter().all(|lookup| *lookup == refused));

        let retried = cache.get_or_fetch(key(7), later(), || Ok(links(&["ss://up"])));
        assert_eq!(retried, Lookup::Fresh(links(&["ss://up"])));
    }

    #[test]
    fn a_waiter_gives_up_at_its_own_deadline() {
        let (cache, _) = cache(Duration::ZERO, HOUR, 1 << 20);
        let cache = Arc::new(cache);
        cache.get_or_fetch(key(3), later(), || Ok(links(&["ss://old"])));

        let results = {
            let cache = Arc::clone(&cache);
            on_coroutines(2, move |index| {
                if index == 0 {
                    cache.get_or_fetch(key(3), later(), || {
                        may::coroutine::sleep(Duration::from_millis(400));
                        Ok(links(&["ss://new"]))
                    })
                } else {
                    // Arrive while the first coroutine's fetch is running.
                    may::coroutine::sleep(Duration::from_millis(100));
                    let started = Instant::now();
                    let deadline = started + Duration::from_millis(50);
                    let lookup =
                        cache.get_or_fetch(key(3), deadline, || Err("second fetch".to_owned()));
                    assert!(started.elapsed() < Duration::from_millis(300));
                    lookup
                }
            })
        };
        assert_eq!(results[0], Lookup::Fresh(links(&["ss://new"])));
        assert_eq!(
            results[1],
            Lookup::Stale(links(&["ss://old"]), Failure::Deadline)
        );
    }

    #[test]
    fn a_panicking_fetch_releases_its_waiters() {
        let (cache, _) = cache(HOUR, HOUR, 1 << 20);
        let cache = Arc::new(cache);

        let results = {
            let cache = Arc::clone(&cache);
            on_coroutines(2, move |index| {
                if index == 0 {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        cache.get_or_fetch(key(5), later(), || -> Result<Links, String> {
                            may::coroutine::sleep(Duration::from_millis(200));
                            panic!("a bug in a panel client")
                        })
                    }));
                    assert!(outcome.is_err());
                    None
                } else {
                    may::coroutine::sleep(Duration::from_millis(50));
                    Some(cache.get_or_fetch(key(5), later(), || Ok(links(&["ss://retry"]))))
                }
            })
        };
        assert_eq!(results[1], Some(Lookup::Fresh(links(&["ss://retry"]))));
    }
}
