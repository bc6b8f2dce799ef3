//! Benches of the status page a browser gets at a subscription URL.
//!
//! Run: `cargo bench -p valhalla --bench page`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use valhalla::page::{Lang, PageInput, UserState, render_status};
use valhalla::subscription::headers::subscription_url;

mod fixtures;

use fixtures::{APP_KEY, PUBLIC_BASE_URL, USERNAME};

/// 2025-06-01T12:00:00Z: the "now" of every rendered page.
const NOW: i64 = 1_748_779_200;

/// A 50 GB plan, 12.3 GB of it used, expiring in 23 days and a bit.
const PLAN_LIMIT_BYTES: u64 = 50 * 1024 * 1024 * 1024;
const USED_BYTES: u64 = 13_207_024_435;
const EXPIRE_AT: i64 = NOW + 23 * 86_400 + 3_600;

/// The page in Persian (the default) and English, for a limited plan with an
/// expiry and for an unlimited plan without one. The QR code of the
/// subscription URL is part of every page.
fn status_page(c: &mut Criterion) {
    let url = subscription_url(PUBLIC_BASE_URL, USERNAME, APP_KEY);
    let limited = PageInput {
        username: USERNAME,
        state: UserState::Active,
        used: USED_BYTES,
        limit: PLAN_LIMIT_BYTES,
        expire_at: Some(EXPIRE_AT),
        now: NOW,
        subscription_url: &url,
        lang: Lang::Fa,
    };
    let unlimited = PageInput {
        limit: 0,
        expire_at: None,
        ..limited
    };

    let mut group = c.benchmark_group("render_status");
    for (name, input) in [
        ("fa_limited", limited),
        (
            "en_limited",
            PageInput {
                lang: Lang::En,
                ..limited
            },
        ),
        ("fa_unlimited", unlimited),
        (
            "fa_limit_reached",
            PageInput {
                state: UserState::LimitReached,
                ..limited
            },
        ),
    ] {
        let page = render_status(&input);
        assert!(
            page.contains(USERNAME) && page.contains("<svg"),
            "{name}: incomplete page"
        );
        group.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| render_status(black_box(input)))
        });
    }
    group.finish();
}

criterion_group!(benches, status_page);
criterion_main!(benches);
