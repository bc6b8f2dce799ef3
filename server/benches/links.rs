//! Benches of the link pipeline (decode a Marzban payload, name configs,
//! canonicalise names, apply the disabled filters, merge and dedupe) and of
//! building 3x-ui links from an inbound list.
//!
//! Run: `cargo bench -p valhalla --bench links`

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use valhalla::subscription::links::{apply_panel_filters, canonical_name, config_name, merge};
use valhalla::upstream::marzban::encode_v2ray_payload;
use valhalla::upstream::{decode_v2ray_payload, xui_links};

mod fixtures;

use fixtures::{
    DISABLED_NUMBERS, LINK_COUNTS, USERNAME, XUI_PANEL_HOST, disabled_names, link, links,
    per_panel, raw_panel_lines, xui_inbounds,
};

/// Clients per 3x-ui inbound: a small reseller panel and a busy one (the
/// whole inbound list is parsed for every fetch, whatever the user).
const XUI_CLIENTS_PER_INBOUND: [usize; 2] = [10, 500];

/// Marzban's `/v2ray` answer: base64 of the links, one per line.
fn decode_payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_v2ray_payload");
    for count in LINK_COUNTS {
        let payload = encode_v2ray_payload(&links(count));
        assert_eq!(decode_v2ray_payload(payload.as_bytes()).len(), count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &payload,
            |b, payload| b.iter(|| decode_v2ray_payload(black_box(payload.as_bytes()))),
        );
    }
    group.finish();
}

/// The name of one link: a fragment to percent-decode, against a vmess
/// payload to base64-decode and parse as JSON (the expensive kind).
fn name_of_link(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_name");
    for (scheme, index) in [("vless", 0), ("vmess", 1), ("trojan", 2), ("ss", 3)] {
        let link = link(index);
        assert!(config_name(&link).is_some(), "{scheme} link has no name");
        group.bench_with_input(BenchmarkId::from_parameter(scheme), &link, |b, link| {
            b.iter(|| config_name(black_box(link)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("canonical_name");
    let decorated = fixtures::config_display_name(7);
    assert_eq!(canonical_name(&decorated), "\u{1F1EB}\u{1F1EE} Finland-2");
    let plain = "Germany Hetzner 1";
    for (kind, name) in [("decorated", decorated.as_str()), ("plain", plain)] {
        group.bench_with_input(BenchmarkId::from_parameter(kind), name, |b, name| {
            b.iter(|| canonical_name(black_box(name)))
        });
    }
    group.finish();
}

/// One panel's lines through the filters: no filter set (the common case,
/// positions only), against disabled names, which name every link.
fn panel_filters(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_panel_filters");
    let names: HashSet<String> = disabled_names().into_iter().collect();
    let numbers: HashSet<u32> = DISABLED_NUMBERS.into_iter().collect();
    let no_names = HashSet::new();
    for count in LINK_COUNTS {
        let lines = raw_panel_lines(count);
        let kept = apply_panel_filters(lines.clone(), &names, &numbers).len();
        assert!(
            count < 10 || kept < count,
            "the filters dropped nothing at {count}"
        );
        group.throughput(Throughput::Elements(count as u64));
        for (kind, names) in [("numbers_only", &no_names), ("names_and_numbers", &names)] {
            group.bench_with_input(BenchmarkId::new(kind, count), &lines, |b, lines| {
                b.iter_batched(
                    || lines.clone(),
                    |lines| apply_panel_filters(lines, names, &numbers),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// Two panels' lists merged, a tenth of the first repeated by the second.
fn merge_panels(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for count in LINK_COUNTS {
        let panels = per_panel(&links(count));
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &panels, |b, panels| {
            b.iter_batched(|| panels.clone(), merge, criterion::BatchSize::SmallInput)
        });
    }
    group.finish();
}

/// The whole per-request pipeline after the panels answered, as the
/// subscription flow runs it: the disabled names canonicalised, each panel's
/// cached list copied and filtered, the lists merged, the body joined. A
/// cold fetch adds `decode_v2ray_payload` for a Marzban panel (measured in
/// the same group for comparison).
fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_pipeline");
    let stored_names = disabled_names();
    for count in LINK_COUNTS {
        let cached: Vec<Vec<String>> = per_panel(&raw_panel_lines(count));
        let payloads: Vec<String> = cached
            .iter()
            .map(|list| encode_v2ray_payload(list))
            .collect();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("cached", count), &cached, |b, cached| {
            b.iter(|| {
                let per_panel = cached
                    .iter()
                    .map(|list| filter_panel(list.clone(), &stored_names));
                body(merge(per_panel.collect::<Vec<_>>()))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("decoded", count),
            &payloads,
            |b, payloads| {
                b.iter(|| {
                    let per_panel = payloads.iter().map(|payload| {
                        filter_panel(decode_v2ray_payload(payload.as_bytes()), &stored_names)
                    });
                    body(merge(per_panel.collect::<Vec<_>>()))
                })
            },
        );
    }
    group.finish();
}

fn filter_panel(lines: Vec<String>, stored_names: &[String]) -> Vec<String> {
    let names: HashSet<String> = stored_names
        .iter()
        .map(|name| canonical_name(name))
        .collect();
    let numbers: HashSet<u32> = DISABLED_NUMBERS.into_iter().collect();
    apply_panel_filters(lines, &names, &numbers)
}

fn body(links: Vec<String>) -> String {
    let mut body = String::with_capacity(links.iter().map(|link| link.len() + 1).sum());
    for link in &links {
        body.push_str(link);
        body.push('\n');
    }
    body
}

/// 3x-ui links of one user from the panel's whole inbound list.
fn xui(c: &mut Criterion) {
    let mut group = c.benchmark_group("xui_links");
    for clients in XUI_CLIENTS_PER_INBOUND {
        let inbounds = xui_inbounds(clients);
        let built = xui_links(&inbounds, &[USERNAME], XUI_PANEL_HOST).expect("the user is listed");
        assert_eq!(built.len(), 5, "one link per inbound: {built:?}");
        group.throughput(Throughput::Bytes(inbounds.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("clients_per_inbound", clients),
            &inbounds,
            |b, inbounds| b.iter(|| xui_links(black_box(inbounds), &[USERNAME], XUI_PANEL_HOST)),
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    decode_payload,
    name_of_link,
    panel_filters,
    merge_panels,
    pipeline,
    xui
);
criterion_main!(benches);
