//! The sizing report: guidance derived from sweep results, `docs/sizing.md`
//! and its SVG plots.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::sweep::CellResult;

/// MySQL's and MariaDB's default `max_connections`.
pub const MAX_CONNECTIONS: usize = 151;

/// Connections kept for everything that is not valhalla: the management bot,
/// backups, an operator's client.
pub const RESERVED_CONNECTIONS: usize = 21;

/// A cell counts only when at most this share of its requests failed.
pub const MAX_ERROR_RATE: f64 = 0.01;

/// The share of the best throughput a pool must reach to count as the knee.
/// Repeated cells on this 2-core machine differ by up to 10 to 20%, so a
/// tighter share would pick noise.
pub const KNEE_SHARE: f64 = 0.90;

/// The p99 that still counts as a good answer for a VPN client.
pub const P99_LIMIT_MS: f64 = 1_000.0;

/// How clearly throughput levels off as the pool grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clarity {
    /// A steep rise, then a plateau within 10%.
    Clear,
    /// A rise, but the values after it scatter or keep creeping up.
    Soft,
    /// Throughput drops by more than 10% beyond the knee: big pools hurt.
    Peaked,
    /// Less than 10% between the smallest and the best pool: the pool is
    /// not what limits throughput here.
    Flat,
}

impl Clarity {
    pub fn describe(self) -> &'static str {
        match self {
            Clarity::Clear => "clear (a steep rise, then a plateau)",
            Clarity::Soft => "soft (a rise, then values that scatter or creep up)",
            Clarity::Peaked => "peaked (throughput falls again with bigger pools)",
            Clarity::Flat => "flat (the pool size hardly mattered in this range)",
        }
    }
}

/// The smallest pool that reaches [`KNEE_SHARE`] of the best throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knee {
    pub pool: usize,
    pub rps: f64,
    pub best_rps: f64,
    /// The smallest pool of the curve, its req/s and its error rate.
    pub smallest_pool: (usize, f64, f64),
    pub clarity: Clarity,
}

impl Knee {
    /// What the smallest pool did, for the text: its throughput, or its
    /// failures when too many requests failed for the throughput to count.
    /// Empty when the knee is the smallest pool itself.
    fn describe_smallest_pool(&self) -> String {
        let (pool, rps, error_rate) = self.smallest_pool;
        if pool == self.pool {
            String::new()
        } else if error_rate <= MAX_ERROR_RATE {
            format!(" (pool {pool}: {} req/s)", fmt_rps(rps))
        } else {
            format!(
                " (pool {pool}: {:.0}% of requests failed)",
                100.0 * error_rate
            )
        }
    }
}

/// Finds the knee in (pool, req/s, error rate) points of one curve.
pub fn knee(points: &[(usize, f64, f64)]) -> Option<Knee> {
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.0);
    let valid: Vec<&(usize, f64, f64)> = points.iter().filter(|p| p.2 <= MAX_ERROR_RATE).collect();
    let best = valid.iter().map(|p| p.1).fold(0.0, f64::max);
    if best <= 0.0 {
        return None;
    }
    let at_knee = valid.iter().find(|p| p.1 >= KNEE_SHARE * best)?;
    let smallest_pool = *points.first()?;
    let smallest = if smallest_pool.2 <= MAX_ERROR_RATE {
        smallest_pool.1
    } else {
        0.0
    };
    let after: Vec<f64> = points
        .iter()
        .filter(|p| p.0 > at_knee.0)
        .map(|p| p.1)
        .collect();
    let after_min = after.iter().copied().fold(f64::INFINITY, f64::min);
    let clarity = if smallest >= 0.9 * best {
        Clarity::Flat
    } else if !after.is_empty() && after_min < 0.9 * best {
        Clarity::Peaked
    } else if after.iter().all(|r| (best - r) / best <= 0.10) && smallest <= 0.75 * best {
        Clarity::Clear
    } else {
        Clarity::Soft
    };
    Some(Knee {
        pool: at_knee.0,
        rps: at_knee.1,
        best_rps: best,
        smallest_pool,
        clarity,
    })
}

/// The guidance drawn from one sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Guidance {
    pub cores: usize,
    /// Concurrent users of the pool grid.
    pub grid_users: usize,
    pub workers: usize,
    /// Per worker count: its best req/s as a share of the best of any
    /// count, the worst share over the panel latencies.
    pub workers_best: Vec<(usize, f64)>,
    /// CPU cores the server used, averaged over the pool grid.
    pub server_cores: f64,
    /// Per latency: the knee at the recommended worker count.
    pub knees: Vec<(String, Knee)>,
    pub pool: usize,
    pub max_instances: usize,
    pub concurrency: Vec<ConcurrencyLimit>,
}

/// For one line of the concurrency grid: the most users whose p99 stayed
/// under the limit without errors, with the req/s and p99 there.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyLimit {
    pub latency: String,
    pub pool: usize,
    pub best: Option<(usize, f64, f64)>,
}

fn distinct<T: Ord + Clone>(values: impl Iterator<Item = T>) -> Vec<T> {
    values.collect::<BTreeSet<T>>().into_iter().collect()
}

/// Latencies in the order they were swept.
fn latencies(results: &[CellResult]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for r in results {
        if !order.contains(&r.cell.latency) {
            order.push(r.cell.latency.clone());
        }
    }
    order
}

/// The user count with the most cells: the pool grid's.
fn grid_users(results: &[CellResult]) -> usize {
    let users = distinct(results.iter().map(|r| r.cell.users));
    users
        .iter()
        .copied()
        .max_by_key(|u| (results.iter().filter(|r| r.cell.users == *u).count(), *u))
        .unwrap_or(0)
}

/// Rounds a pool size up to 1, 2, 4, 8, ... so the advice reads as a rule.
/// The middle value (the mean of the two middle ones for an even count), 0
/// for none.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn round_pool(pool: f64) -> usize {
    let mut size = 1;
    while (size as f64) < pool {
        size *= 2;
    }
    size
}

pub fn derive(results: &[CellResult], cores: usize) -> Option<Guidance> {
    let cores = cores.max(1);
    let users = grid_users(results);
    let grid: Vec<&CellResult> = results.iter().filter(|r| r.cell.users == users).collect();
    let lats = latencies(results);

    // Workers: for each count, the median of its pools that served without
    // failures (one lucky cell must not decide), as a share of the best
    // count's median, the worst share over the latencies, so a count must do
    // well everywhere; then the smallest count within the noise of the best,
    // as extra threads cost memory and switching.
    let worker_counts = distinct(grid.iter().map(|r| r.cell.workers));
    let typical = |w: usize, latency: &str| {
        median(
            grid.iter()
                .filter(|r| {
                    r.cell.latency == latency
                        && r.cell.workers == w
                        && r.error_rate() <= MAX_ERROR_RATE
                })
                .map(|r| r.ok_rps())
                .collect(),
        )
    };
    let mut workers_best = Vec::new();
    for &w in &worker_counts {
        let mut worst_share = f64::INFINITY;
        for latency in &lats {
            let best_here = worker_counts
                .iter()
                .map(|&other| typical(other, latency))
                .fold(0.0, f64::max);
            if best_here > 0.0 {
                worst_share = worst_share.min(typical(w, latency) / best_here);
            }
        }
        workers_best.push((
            w,
            if worst_share.is_finite() {
                worst_share
            } else {
                0.0
            },
        ));
    }
    let top = workers_best.iter().map(|w| w.1).fold(0.0, f64::max);
    let workers = workers_best
        .iter()
        .find(|w| w.1 >= top - (1.0 - KNEE_SHARE))?
        .0;

    let mut knees = Vec::new();
    for latency in &lats {
        let points: Vec<(usize, f64, f64)> = grid
            .iter()
            .filter(|r| r.cell.latency == *latency && r.cell.workers == workers)
            .map(|r| (r.cell.pool, r.ok_rps(), r.error_rate()))
            .collect();
        if let Some(k) = knee(&points) {
            knees.push((latency.clone(), k));
        }
    }
    let needed = knees.iter().map(|(_, k)| k.pool).max()?;
    let pool = round_pool(needed as f64 / cores as f64) * cores;
    let max_instances = (MAX_CONNECTIONS - RESERVED_CONNECTIONS) / pool.max(1);

    // Concurrency: cells outside the pool grid's user count, grouped by
    // latency and pool, plus the grid cells of the same settings.
    let mut concurrency = Vec::new();
    let conc_cells: Vec<&CellResult> = results.iter().filter(|r| r.cell.users != users).collect();
    let conc_keys = distinct(
        conc_cells
            .iter()
            .map(|r| (r.cell.latency.clone(), r.cell.pool, r.cell.workers)),
    );
    for (latency, pool_size, w) in conc_keys {
        let line: Vec<&CellResult> = results
            .iter()
            .filter(|r| {
                r.cell.latency == latency && r.cell.pool == pool_size && r.cell.workers == w
            })
            .collect();
        let ok = line
            .iter()
            .filter(|r| r.error_rate() <= MAX_ERROR_RATE && r.p99_ms <= P99_LIMIT_MS)
            .max_by_key(|r| r.cell.users)
            .map(|r| (r.cell.users, r.ok_rps(), r.p99_ms));
        concurrency.push(ConcurrencyLimit {
            latency,
            pool: pool_size,
            best: ok,
        });
    }

    let server_cores = grid.iter().map(|r| r.server_cpu).sum::<f64>() / grid.len().max(1) as f64;

    Some(Guidance {
        cores,
        grid_users: users,
        workers,
        workers_best,
        server_cores,
        knees,
        pool,
        max_instances,
        concurrency,
    })
}

fn workers_text(workers: usize) -> String {
    if workers == 1 {
        "1 worker".to_owned()
    } else {
        format!("{workers} workers")
    }
}

/// Says a count of workers relative to the cores, e.g. "the number of cores".
fn per_cores(value: usize, cores: usize) -> String {
    if value == cores {
        "the number of cores".to_owned()
    } else if value.is_multiple_of(cores) {
        format!("{} × the number of cores", value / cores)
    } else if cores.is_multiple_of(value) {
        format!("the number of cores ÷ {}", cores / value)
    } else {
        format!("{value} on {cores} cores")
    }
}

/// Everything the report needs besides the results.
#[derive(Debug, Clone)]
pub struct ReportContext {
    pub date: String,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub method: Vec<String>,
    pub image_prefix: String,
}

fn fmt_rps(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn table_by_pool(out: &mut String, cells: &[&CellResult], value: impl Fn(&CellResult) -> String) {
    let pools = distinct(cells.iter().map(|r| r.cell.pool));
    let workers = distinct(cells.iter().map(|r| r.cell.workers));
    let _ = write!(out, "| WORKERS \\ MYSQL_POOL_SIZE |");
    for p in &pools {
        let _ = write!(out, " {p} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---:|".repeat(pools.len()));
    for w in &workers {
        let _ = write!(out, "| {w} |");
        for p in &pools {
            let cell = cells
                .iter()
                .find(|r| r.cell.workers == *w && r.cell.pool == *p);
            let _ = write!(out, " {} |", cell.map_or("–".to_owned(), |r| value(r)));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
}

/// Writes the Markdown report and its plots; returns the Markdown.
pub fn write(
    results: &[CellResult],
    context: &ReportContext,
    md_path: &Path,
    img_dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(img_dir).with_context(|| format!("creating {}", img_dir.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let guidance = derive(results, cores);
    let lats = latencies(results);
    let users = grid_users(results);
    let mut md = String::new();
    let _ = writeln!(md, "# Sizing valhalla: WORKERS and MYSQL_POOL_SIZE\n");
    let _ = writeln!(
        md,
        "Generated by `{}` on {}; every figure and every recommendation below comes from that run.",
        context.command, context.date
    );
    let _ = writeln!(
        md,
        "Do not edit by hand: run the sweep again (see [How to rerun](#how-to-rerun)).\n"
    );

    let _ = writeln!(md, "## Guidance\n");
    match &guidance {
        Some(g) => write_guidance(&mut md, g),
        None => {
            let _ = writeln!(
                md,
                "The sweep produced no cell without errors, so no guidance can be drawn from it.\n"
            );
        }
    }

    let _ = writeln!(md, "## Method\n");
    for line in &context.method {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(md, "\n## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    for (key, value) in &context.machine {
        let _ = writeln!(md, "| {key} | {value} |");
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Throughput against pool size\n");
    let _ = writeln!(
        md,
        "{users} concurrent users, each sending its next request as soon as the last is answered.\n"
    );
    for latency in &lats {
        let cells: Vec<&CellResult> = results
            .iter()
            .filter(|r| r.cell.users == users && r.cell.latency == *latency)
            .collect();
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### Panel latency {latency}\n");
        let image = format!("sizing-throughput-{}.svg", slug(latency));
        plot_throughput(&cells, latency, users, &img_dir.join(&image))?;
        let _ = writeln!(
            md,
            "![requests per second against MYSQL_POOL_SIZE, one line per WORKERS, panel latency {latency}]({}{image})\n",
            context.image_prefix
        );
        let _ = writeln!(md, "Correct answers per second:\n");
        table_by_pool(&mut md, &cells, |r| fmt_rps(r.ok_rps()));
        let _ = writeln!(md, "p50 / p99 in milliseconds:\n");
        table_by_pool(&mut md, &cells, |r| {
            format!("{:.0} / {:.0}", r.p50_ms, r.p99_ms)
        });
        let _ = writeln!(
            md,
            "Failed requests in percent (503 when the pool stays busy past MYSQL_ACQUIRE_TIMEOUT_MS) and the most jobs seen waiting for a connection:\n"
        );
        table_by_pool(&mut md, &cells, |r| {
            format!("{:.1}% / {:.0}", 100.0 * r.error_rate(), r.pool_waiting_max)
        });
        let _ = writeln!(
            md,
            "CPU cores used by the server / load generator / fake panels / MariaDB:\n"
        );
        table_by_pool(&mut md, &cells, |r| {
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                r.server_cpu, r.loadgen_cpu, r.panels_cpu, r.db_cpu
            )
        });
    }

    let conc: Vec<&CellResult> = results.iter().filter(|r| r.cell.users != users).collect();
    if !conc.is_empty() {
        let _ = writeln!(md, "## Latency against concurrent users\n");
        let image = "sizing-p99-users.svg";
        plot_p99(results, users, &img_dir.join(image))?;
        let _ = writeln!(
            md,
            "![p99 in milliseconds against concurrent users, one line per panel latency and pool size]({}{image})\n",
            context.image_prefix
        );
        let _ = writeln!(
            md,
            "| panel latency | WORKERS | MYSQL_POOL_SIZE | users | correct answers/s | p50 ms | p95 ms | p99 ms | failed |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let keys = distinct(
            conc.iter()
                .map(|r| (r.cell.latency.clone(), r.cell.workers, r.cell.pool)),
        );
        let mut ordered: Vec<(String, usize, usize)> = Vec::new();
        for latency in &lats {
            ordered.extend(keys.iter().filter(|k| k.0 == *latency).cloned());
        }
        for (latency, w, pool) in ordered {
            let mut line: Vec<&CellResult> = results
                .iter()
                .filter(|r| r.cell.latency == latency && r.cell.workers == w && r.cell.pool == pool)
                .collect();
            line.sort_by_key(|r| r.cell.users);
            for r in line {
                let _ = writeln!(
                    md,
                    "| {latency} | {w} | {pool} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1}% |",
                    r.cell.users,
                    fmt_rps(r.ok_rps()),
                    r.p50_ms,
                    r.p95_ms,
                    r.p99_ms,
                    100.0 * r.error_rate()
                );
            }
        }
        let _ = writeln!(md);
    }

    let troubled: Vec<&CellResult> = results.iter().filter(|r| !r.errors.is_empty()).collect();
    if !troubled.is_empty() {
        let _ = writeln!(md, "## Failures seen\n");
        for r in troubled {
            let _ = writeln!(
                md,
                "- WORKERS {}, MYSQL_POOL_SIZE {}, panel latency {}, {} users: {}",
                r.cell.workers,
                r.cell.pool,
                r.cell.latency,
                r.cell.users,
                r.errors.join("; ").replace('\n', " ")
            );
        }
        let _ = writeln!(md);
    }

    write_comparison(&mut md, results, guidance.as_ref());
    let _ = writeln!(md, "## How to rerun\n");
    let _ = writeln!(
        md,
        "```sh\nscripts/ensure-mariadb\ncargo build --release -p valhalla -p valhalla-loadtest\ntarget/release/valhalla-loadtest sweep          # about 10 minutes; rewrites this file\ntarget/release/valhalla-loadtest sweep --quick  # under a minute, writes to target/loadtest\n```\n"
    );
    let _ = writeln!(
        md,
        "The raw results are JSON lines (`target/loadtest/sweep-full.jsonl`); `valhalla-loadtest report FILE` rewrites this page from them."
    );
    std::fs::write(md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(md)
}

fn write_guidance(md: &mut String, g: &Guidance) {
    let _ = writeln!(
        md,
        "- **WORKERS = {}** ({} here, {} cores). Typical throughput per worker count (the median over the pools that served without failures), as the worst share of the best over the panel latencies: {}. The server itself used {:.2} cores on average; MariaDB, the load generator and the fake panels had the rest, so count the cores that are left for valhalla.",
        per_cores(g.workers, g.cores),
        g.workers,
        g.cores,
        g.workers_best
            .iter()
            .map(|(w, share)| format!("{} {:.0}%", workers_text(*w), 100.0 * share))
            .collect::<Vec<_>>()
            .join(", "),
        g.server_cores
    );
    let _ = writeln!(
        md,
        "  may workers are threads that each run many coroutines; a slow panel parks a coroutine, not a worker, so more workers than cores only add switching. Gunicorn's 2 × cores + 1 was for processes that block."
    );
    let pool_rule = if g.pool == g.cores {
        "the number of cores".to_owned()
    } else {
        format!("{} × the number of cores", g.pool / g.cores)
    };
    let _ = writeln!(
        md,
        "- **MYSQL_POOL_SIZE = {pool_rule}** ({} here). The knee (the smallest pool reaching {:.0}% of the best throughput) at {}:",
        g.pool,
        100.0 * KNEE_SHARE,
        workers_text(g.workers)
    );
    for (latency, k) in &g.knees {
        let _ = writeln!(
            md,
            "  - panel latency {latency}: pool {} gives {} req/s of a best {}{}; the knee is {}.",
            k.pool,
            fmt_rps(k.rps),
            fmt_rps(k.best_rps),
            k.describe_smallest_pool(),
            k.clarity.describe()
        );
    }
    let _ = writeln!(
        md,
        "  A request holds a connection only while its own queries run, never while it waits for a panel, so slow panels do not call for a bigger pool; the database work per request and the cores do."
    );
    let _ = writeln!(
        md,
        "- **Instances against `max_connections`**: every instance opens MYSQL_POOL_SIZE connections at start. With the default `max_connections` of {MAX_CONNECTIONS} and {RESERVED_CONNECTIONS} kept for the management bot and operators, at most **{} instances** of pool {} fit; raise `max_connections` or shrink the pool before adding more.",
        g.max_instances, g.pool
    );
    if !g.concurrency.is_empty() {
        let _ = writeln!(
            md,
            "- **Traffic**: concurrent clients one instance served with p99 under {P99_LIMIT_MS:.0} ms and under {:.0}% failures:",
            100.0 * MAX_ERROR_RATE
        );
        for ConcurrencyLimit {
            latency,
            pool,
            best,
        } in &g.concurrency
        {
            match best {
                Some((users, rps, p99)) => {
                    let polls = rps * 12.0 * 3600.0 / 2.0;
                    let _ = writeln!(
                        md,
                        "  - panel latency {latency}, pool {pool}: {users} users at {} req/s (p99 {p99:.0} ms). Polling every 12 hours with half the capacity kept for bursts, that is about {} subscribers per instance.",
                        fmt_rps(*rps),
                        thousands(polls)
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "  - panel latency {latency}, pool {pool}: no user count met the limit."
                    );
                }
            }
        }
    }
    let _ = writeln!(md);
}

fn thousands(value: f64) -> String {
    let rounded = if value >= 10_000.0 {
        (value / 1_000.0).round() as u64 * 1_000
    } else {
        value.round() as u64
    };
    let digits = rounded.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_comparison(md: &mut String, results: &[CellResult], guidance: Option<&Guidance>) {
    let _ = writeln!(
        md,
        "## Compared with the Python original and the usual rules\n"
    );
    let best = |latency_zero: bool| {
        results
            .iter()
            .filter(|r| {
                (r.cell.latency == "0ms") == latency_zero && r.error_rate() <= MAX_ERROR_RATE
            })
            .max_by(|a, b| a.ok_rps().total_cmp(&b.ok_rps()))
    };
    let _ = writeln!(
        md,
        "The Flask/Gunicorn original was measured on the same kind of machine (5 sync workers, wrk with 64 connections, 22,000 users):\n"
    );
    let _ = writeln!(
        md,
        "| scenario | Python original | this sweep (best cell) |"
    );
    let _ = writeln!(md, "|---|---|---|");
    let ours = |r: Option<&CellResult>| {
        r.map_or("–".to_owned(), |r| {
            format!(
                "{} req/s, p50 {:.0} ms ({} workers, pool {}, {} users, panels at {})",
                fmt_rps(r.ok_rps()),
                r.p50_ms,
                r.cell.workers,
                r.cell.pool,
                r.cell.users,
                r.cell.latency
            )
        })
    };
    let _ = writeln!(
        md,
        "| distinct users, instant panels | 194 req/s, p50 325 ms (one user, warm cache) | {} |",
        ours(best(true))
    );
    let _ = writeln!(
        md,
        "| distinct users, slow panels, cold cache | 27 req/s, p50 2.3 s (panels at 50 ms) | {} |",
        ours(best(false))
    );
    let _ = writeln!(
        md,
        "| unknown users (404) | 170 req/s, p50 344 ms | one request in ten of every cell above |"
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "The rules the seed's advice came from, and what the data says of them:\n"
    );
    let _ = writeln!(
        md,
        "- Gunicorn's design notes start sync workers at 2 × cores + 1, because a sync worker blocks for the whole request; calls to external services make clients pile up behind them. valhalla's workers do not block on panels{}.",
        guidance.map_or(String::new(), |g| format!(
            ", and the sweep found {} workers enough on {} cores",
            g.workers, g.cores
        ))
    );
    let _ = writeln!(
        md,
        "- The PostgreSQL wiki (\"Number Of Database Connections\") suggests connections ≈ cores × 2 + effective spindles (none when the data is cached){}.",
        guidance.map_or(String::new(), |g| format!(
            "; here {} cores and the knee gave {}",
            g.cores, g.pool
        ))
    );
    let _ = writeln!(
        md,
        "- HikariCP's \"About Pool Sizing\" reports an Oracle test going from about 100 ms to about 3 ms response time when the pool shrank from 2,048 to 96: a small pool with requests queueing for it beats a large one, which the flat or falling curves past the knee agree with."
    );
    let _ = writeln!(
        md,
        "- The seed's \"5 to 10 connections per worker\" guessed for processes; here connections serve all coroutines of all workers through one queue, so the pool follows the database work, not the worker count."
    );
    let _ = writeln!(md);
}

fn slug(latency: &str) -> String {
    latency
        .replace("..", "-")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "")
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One line chart with a log2 x axis.
fn chart(
    path: &Path,
    legend: SeriesLabelPosition,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| x.max(1.0).log2()))
        .collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min - 0.2, x_max + 0.2)
    } else {
        (-1.0, 1.0)
    };
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    let ticks = (x_max - x_min).round() as usize + 1;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(ticks.max(2))
        .x_label_formatter(&|x| {
            let value = 2f64.powf(*x);
            if (value - value.round()).abs() < 0.05 {
                format!("{}", value.round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, y)| (x.max(1.0).log2(), *y))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_throughput(cells: &[&CellResult], latency: &str, users: usize, path: &Path) -> Result<()> {
    let workers = distinct(cells.iter().map(|r| r.cell.workers));
    let series: Vec<(String, Vec<(f64, f64)>)> = workers
        .iter()
        .map(|w| {
            let points = cells
                .iter()
                .filter(|r| r.cell.workers == *w)
                .map(|r| (r.cell.pool as f64, r.ok_rps()))
                .collect();
            (format!("WORKERS={w}"), points)
        })
        .collect();
    chart(
        path,
        SeriesLabelPosition::LowerRight,
        &format!("Throughput, panel latency {latency}, {users} users"),
        "MYSQL_POOL_SIZE",
        "requests per second",
        &series,
    )
}

fn plot_p99(results: &[CellResult], grid_users: usize, path: &Path) -> Result<()> {
    let keys = distinct(
        results
            .iter()
            .filter(|r| r.cell.users != grid_users)
            .map(|r| (r.cell.latency.clone(), r.cell.workers, r.cell.pool)),
    );
    let series: Vec<(String, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|(latency, w, pool)| {
            let points = results
                .iter()
                .filter(|r| {
                    r.cell.latency == *latency && r.cell.workers == *w && r.cell.pool == *pool
                })
                .map(|r| (r.cell.users as f64, r.p99_ms))
                .collect();
            (
                format!("panels {latency}, WORKERS={w}, pool {pool}"),
                points,
            )
        })
        .collect();
    chart(
        path,
        SeriesLabelPosition::UpperLeft,
        "p99 against concurrent users",
        "concurrent users",
        "p99 (ms)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::Cell;

    fn result(
        workers: usize,
        pool: usize,
        latency: &str,
        users: usize,
        rps: f64,
        failures: u64,
    ) -> CellResult {
        CellResult {
            cell: Cell {
                workers,
                pool,
                latency: latency.into(),
                users,
            },
            seconds: 5.0,
            requests: (rps * 5.0) as u64,
            failures,
            rps,
            p50_ms: 1_000.0 * users as f64 / rps / 2.0,
            p95_ms: 1_000.0 * users as f64 / rps,
            p99_ms: 1_500.0 * users as f64 / rps,
            pool_waiting_max: 0.0,
            pool_waiting_mean: 0.0,
            pool_busy_share: 0.5,
            pool_exhausted: 0.0,
            server_cpu: 1.0,
            loadgen_cpu: 0.3,
            panels_cpu: 0.2,
            db_cpu: 0.4,
            panel_calls_per_request: 2.0,
            errors: vec![],
        }
    }

    #[test]
    fn a_steep_rise_then_a_plateau_is_a_clear_knee() {
        let k = knee(&[
            (1, 300.0, 0.0),
            (2, 600.0, 0.0),
            (4, 980.0, 0.0),
            (8, 1_000.0, 0.0),
            (16, 990.0, 0.0),
        ])
        .unwrap();
        assert_eq!(k.pool, 4);
        assert_eq!(k.clarity, Clarity::Clear);
        assert_eq!(k.best_rps, 1_000.0);
    }

    #[test]
    fn flat_peaked_and_failing_curves_are_told_apart() {
        let flat = knee(&[(1, 950.0, 0.0), (4, 1_000.0, 0.0), (16, 990.0, 0.0)]).unwrap();
        assert_eq!((flat.pool, flat.clarity), (1, Clarity::Flat));
        let peaked = knee(&[(1, 300.0, 0.0), (4, 1_000.0, 0.0), (16, 700.0, 0.0)]).unwrap();
        assert_eq!((peaked.pool, peaked.clarity), (4, Clarity::Peaked));
        // A pool of 1 that fails 20% of its requests does not count.
        let failing = knee(&[(1, 1_200.0, 0.2), (2, 960.0, 0.0), (4, 1_000.0, 0.0)]).unwrap();
        assert_eq!(failing.pool, 2);
        assert_eq!(
            failing.describe_smallest_pool(),
            " (pool 1: 20% of requests failed)"
        );
        let clear = knee(&[(1, 300.0, 0.0), (4, 1_000.0, 0.0)]).unwrap();
        assert_eq!(clear.describe_smallest_pool(), " (pool 1: 300 req/s)");
        assert_eq!(flat.describe_smallest_pool(), "");
        assert!(knee(&[(1, 100.0, 0.5)]).is_none());
    }

    #[test]
    fn guidance_picks_the_fewest_workers_near_the_best_and_the_knee_pool() {
        let mut results = Vec::new();
        for (w, factor) in [(1, 0.7), (2, 1.0), (4, 0.98)] {
            for (pool, rps) in [(1, 300.0), (2, 600.0), (4, 980.0), (8, 1_000.0)] {
                results.push(result(w, pool, "0ms", 128, rps * factor, 0));
                results.push(result(w, pool, "50ms", 128, rps * factor * 0.8, 0));
            }
        }
        results.push(result(2, 4, "50ms", 16, 150.0, 0));
        results.push(result(2, 4, "50ms", 512, 800.0, 0));
        let g = derive(&results, 2).unwrap();
        assert_eq!(g.workers, 2);
        assert_eq!(g.grid_users, 128);
        assert_eq!(g.knees.len(), 2);
        assert_eq!(g.knees[0].1.pool, 4);
        assert_eq!(g.pool, 4);
        assert_eq!(g.max_instances, (151 - 21) / 4);
        assert_eq!(g.concurrency.len(), 1);
        // 512 users at 800 req/s have a p99 of 960 ms: still under the limit.
        assert_eq!(g.concurrency[0].best.map(|c| c.0), Some(512));
    }

    #[test]
    fn pools_round_up_to_powers_of_two_and_counts_read_per_core() {
        assert_eq!(round_pool(0.5), 1);
        assert_eq!(round_pool(3.0), 4);
        assert_eq!(per_cores(2, 2), "the number of cores");
        assert_eq!(per_cores(4, 2), "2 × the number of cores");
        assert_eq!(per_cores(1, 2), "the number of cores ÷ 2");
        assert_eq!(thousands(1_234_567.0), "1,235,000");
        assert_eq!(slug("20ms..80ms"), "20ms-80ms");
    }

    #[test]
    fn the_report_and_its_plots_are_written() {
        let mut results = Vec::new();
        for w in [1, 2] {
            for (pool, rps) in [(1, 300.0), (2, 600.0), (4, 980.0)] {
                results.push(result(w, pool, "0ms", 64, rps, 0));
            }
        }
        results.push(result(2, 4, "0ms", 8, 500.0, 0));
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        let context = ReportContext {
            date: "2025-01-01".into(),
            command: "valhalla-loadtest sweep".into(),
            machine: vec![("cores".into(), "2".into())],
            method: vec!["a method line".into()],
            image_prefix: "img/".into(),
        };
        let md = write(&results, &context, &dir.join("sizing.md"), &dir.join("img")).unwrap();
        assert!(md.contains("WORKERS ="), "{md}");
        assert!(md.contains("](img/sizing-throughput-0ms.svg)"));
        let svg = std::fs::read_to_string(dir.join("img/sizing-throughput-0ms.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("WORKERS=2"));
        assert!(dir.join("img/sizing-p99-users.svg").is_file());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
