//! Benches of the panel-answer cache on its hit path, the path of every
//! subscription request while a panel's answer is fresh.
//!
//! Run: `cargo bench -p valhalla --bench cache`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use valhalla::subscription::cache::{Cache, CacheSettings, Lookup};

mod fixtures;

use fixtures::{USERNAME, links};

/// The key and value types the subscription flow caches: (panel id, remote
/// username) to the panel's links.
type LinkCache = Cache<(i64, String), Arc<[String]>, String>;

/// Links per cached answer: a panel with several locations and protocols.
const LINKS_PER_ANSWER: usize = 20;

/// Entries in the cache besides the one looked up: one panel answer, and a
/// reseller base of 10,000 users (on one panel each, or fewer users on
/// several).
const POPULATIONS: [usize; 2] = [1, 10_000];

/// The panel the looked-up user is on.
const PANEL_ID: i64 = 3;

fn filled_cache(population: usize) -> LinkCache {
    let cache = LinkCache::new(
        CacheSettings::new("bench"),
        |key, links| key.1.len() + links.iter().map(String::len).sum::<usize>(),
        &mut Registry::default(),
    );
    let answer: Arc<[String]> = links(LINKS_PER_ANSWER).into();
    let far = Instant::now() + Duration::from_secs(3600);
    for index in 0..population {
        let key = if index == 0 {
            (PANEL_ID, USERNAME.to_owned())
        } else {
            (1 + index as i64 % 4, format!("user_{index}"))
        };
        let stored = cache.get_or_fetch(key, far, || Ok(Arc::clone(&answer)));
        assert!(matches!(stored, Lookup::Fresh(_)));
    }
    cache
}

/// One lookup as the flow makes it: the key built from the account row,
/// the answer cloned out (an `Arc`).
fn lookup(cache: &LinkCache, deadline: Instant) -> Lookup<Arc<[String]>, String> {
    let key = (PANEL_ID, black_box(USERNAME).to_owned());
    cache.get_or_fetch(key, deadline, || Err("a hit must not fetch".to_owned()))
}

fn hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_get_or_fetch");
    let deadline = Instant::now() + Duration::from_secs(3600);
    for population in POPULATIONS {
        let cache = filled_cache(population);
        assert!(matches!(lookup(&cache, deadline), Lookup::Cached(_)));
        group.bench_function(BenchmarkId::new("hit", population), |b| {
            b.iter(|| lookup(&cache, deadline))
        });
    }

    // The same hit while another thread hits the same cache without pause:
    // the cost of the one lock when both may workers serve cached users.
    let cache = Arc::new(filled_cache(POPULATIONS[1]));
    group.bench_function(BenchmarkId::new("hit_contended", POPULATIONS[1]), |b| {
        b.iter_custom(|iterations| {
            let stop = Arc::new(AtomicBool::new(false));
            let rival = {
                let cache = Arc::clone(&cache);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        black_box(lookup(&cache, deadline));
                    }
                })
            };
            let started = Instant::now();
            for _ in 0..iterations {
                black_box(lookup(&cache, deadline));
            }
            let elapsed = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            rival.join().expect("the rival thread panicked");
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
