//! The `valhalla-loadtest` command line: fake panels, seeder, goose runs, the
//! sizing sweep with its report, and the newcomers' demo.
//!
//! Build and run (MariaDB on 127.0.0.1:3306, see scripts/ensure-mariadb):
//!
//!     cargo build --release -p valhalla -p valhalla-loadtest
//!     target/release/valhalla-loadtest sweep --quick
//!     target/release/valhalla-loadtest run --users-total 100000 -- -H http://127.0.0.1:5000 -u 64 -t 30s

mod demo;
mod panels;
mod report;
mod scenario;
mod seed;
mod server;
mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use goose::config::GooseConfiguration;
use goose::prelude::*;

use crate::panels::PanelSpec;
use crate::scenario::{Plan, Weights};
use crate::seed::{DbTarget, Identities, SeedPlan};
use crate::sweep::{Cell, SweepSettings};

#[derive(Parser)]
#[command(
    name = "valhalla-loadtest",
    version,
    about = "Load test, sizing sweep and demo for valhalla"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct PanelArgs {
    /// A fake panel, e.g. "marzneshin latency=20ms..80ms fail=0.01 configs=3"
    /// (kinds: marzneshin, marzban, 3x-ui); repeat for more panels.
    #[arg(long = "panel", value_name = "DESCRIPTION")]
    panels: Vec<String>,
    /// A file with one panel description per line (# starts a comment).
    #[arg(long = "panels-file", value_name = "FILE")]
    panels_file: Option<PathBuf>,
}

impl PanelArgs {
    /// The described panels, or the default mix when none are given.
    fn specs(&self) -> Result<Vec<PanelSpec>> {
        let mut specs = Vec::new();
        if let Some(path) = &self.panels_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            specs.extend(
                PanelSpec::parse_file(&text).with_context(|| format!("in {}", path.display()))?,
            );
        }
        for line in &self.panels {
            specs.push(PanelSpec::parse(line).with_context(|| format!("--panel {line:?}"))?);
        }
        if specs.is_empty() {
            specs = panels::default_specs();
        }
        Ok(specs)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve fake panels on loopback until standard input closes; prints
    /// them as one JSON line (url, token, type) and obeys `latency 50ms`.
    Panels {
        #[command(flatten)]
        panels: PanelArgs,
        /// Also write the JSON line to this file (for `seed --panels-json`).
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Fill a database (MYSQL_* variables; default database
    /// valhalla_loadtest, dropped and created again) with N subscribers.
    Seed {
        /// Subscribers to create.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000)]
        users_per_owner: u64,
        /// Panels each subscriber is linked to.
        #[arg(long, default_value_t = 2)]
        links_per_user: usize,
        /// The JSON file `panels --write` wrote.
        #[arg(long, value_name = "FILE")]
        panels_json: PathBuf,
        /// Mixed into the app keys; `run --salt` must match.
        #[arg(long, default_value = "valhalla-loadtest")]
        salt: String,
    },
    /// A goose attack against a seeded server; goose's own options follow
    /// `--` (for example `-- -H http://127.0.0.1:5000 -u 64 -t 30s`).
    Run {
        /// Subscribers seeded (`seed --users`).
        #[arg(long, default_value_t = 100_000)]
        users_total: u64,
        #[arg(long, default_value_t = 1_000)]
        users_per_owner: u64,
        #[arg(long, default_value = "valhalla-loadtest")]
        salt: String,
        /// Weights of VPN clients, browsers and unknown users.
        #[arg(long, default_value = "8,1,1")]
        weights: Weights,
        /// A config name that must never be served (filtered); repeatable.
        #[arg(long = "forbid", value_name = "NAME")]
        forbidden: Vec<String>,
        /// goose's options; `-- --help` lists them.
        #[arg(last = true, value_name = "GOOSE OPTIONS")]
        goose: Vec<String>,
    },
    /// Sweep WORKERS × MYSQL_POOL_SIZE × panel latency × users against
    /// servers this command starts, and write docs/sizing.md with plots.
    Sweep {
        /// A run of under a minute for CI: three small cells; results go to
        /// the output directory, not docs/.
        #[arg(long)]
        quick: bool,
        /// WORKERS values of the pool grid (comma-separated).
        #[arg(long, value_delimiter = ',')]
        workers: Option<Vec<usize>>,
        /// MYSQL_POOL_SIZE values of the pool grid.
        #[arg(long, value_delimiter = ',')]
        pools: Option<Vec<usize>>,
        /// Panel latencies, e.g. 0ms,50ms or 20ms..80ms.
        #[arg(long, value_delimiter = ',')]
        latencies: Option<Vec<String>>,
        /// Concurrent users of the pool grid.
        #[arg(long)]
        grid_users: Option<usize>,
        /// Concurrent users of the concurrency grid (workers 2 by default,
        /// pools 4 and 16).
        #[arg(long, value_delimiter = ',')]
        users: Option<Vec<usize>>,
        /// Seconds each cell is measured.
        #[arg(long)]
        seconds: Option<usize>,
        /// Subscribers in the database.
        #[arg(long)]
        db_users: Option<u64>,
        /// The server's port during the sweep.
        #[arg(long, default_value_t = 18_080)]
        port: u16,
        /// JSON lines and logs (default: the target directory's loadtest/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where sizing.md and img/ go (default: docs/ of the workspace for a
        /// full sweep, the output directory for --quick).
        #[arg(long)]
        docs: Option<PathBuf>,
        #[command(flatten)]
        panels: PanelArgs,
    },
    /// The goose half of scripts/yardstick: hammer URL's /healthz for
    /// SECONDS and print `requests_per_second=N`; fails on any wrong answer.
    Yardstick {
        /// The server's base URL (a path, if given, is ignored).
        url: String,
        seconds: usize,
        /// Concurrent goose users.
        #[arg(long, default_value_t = 64)]
        users: usize,
    },
    /// Rewrite sizing.md and the plots from a sweep's JSON lines.
    Report {
        jsonl: PathBuf,
        #[arg(long)]
        docs: Option<PathBuf>,
    },
    /// Start fake panels, seed a demo user (database valhalla_demo unless
    /// MYSQL_DATABASE is set), start the server and print its URLs.
    Demo {
        #[arg(long, default_value_t = 5_000)]
        port: u16,
    },
}

fn main() {
    if let Err(error) = run() {
        eprintln!("valhalla-loadtest: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Panels { panels, write } => panels::serve(&panels.specs()?, write.as_deref()),
        Command::Seed {
            users,
            users_per_owner,
            links_per_user,
            panels_json,
            salt,
        } => {
            let text = std::fs::read_to_string(&panels_json)
                .with_context(|| format!("reading {}", panels_json.display()))?;
            let infos: Vec<panels::PanelInfo> =
                serde_json::from_str(text.trim()).with_context(|| {
                    format!(
                        "{} is not what `panels --write` writes",
                        panels_json.display()
                    )
                })?;
            let db = DbTarget::from_env("valhalla_loadtest")?;
            db.recreate()?;
            seed::migrate(&db, &server::find_binary()?)?;
            let plan = SeedPlan {
                identities: Identities {
                    users,
                    users_per_owner,
                    salt,
                },
                links_per_user,
            };
            let report = seed::seed(&db, &infos, &plan, true)?;
            println!(
                "seeded {} rows into {} in {:.1} s",
                report.rows,
                db.database,
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Run {
            users_total,
            users_per_owner,
            salt,
            weights,
            forbidden,
            goose,
        } => run_goose(
            Plan {
                identities: Identities {
                    users: users_total,
                    users_per_owner,
                    salt,
                },
                forbidden,
            },
            weights,
            &goose,
        ),
        Command::Sweep {
            quick,
            workers,
            pools,
            latencies,
            grid_users,
            users,
            seconds,
            db_users,
            port,
            out,
            docs,
            panels,
        } => {
            let root = workspace_root();
            let out_dir = out.unwrap_or_else(|| default_out_dir(&root));
            let (cells, seconds, db_users) = if quick {
                let cells = sweep::union(
                    sweep::product(
                        &workers.unwrap_or(vec![1, 2]),
                        &pools.unwrap_or(vec![4]),
                        &latencies.clone().unwrap_or(vec!["10ms".into()]),
                        &[grid_users.unwrap_or(16)],
                    ),
                    sweep::product(
                        &[2],
                        &[4],
                        &latencies.unwrap_or(vec!["10ms".into()]),
                        &users.unwrap_or(vec![4]),
                    ),
                );
                (cells, seconds.unwrap_or(3), db_users.unwrap_or(2_000))
            } else {
                let latencies = latencies.unwrap_or(vec!["0ms".into(), "50ms".into()]);
                let cells = sweep::union(
                    sweep::product(
                        &workers.unwrap_or(vec![1, 2, 4]),
                        &pools.unwrap_or(vec![1, 2, 4, 8, 16, 32]),
                        &latencies,
                        &[grid_users.unwrap_or(128)],
                    ),
                    sweep::product(
                        &[2],
                        &[4, 16],
                        &latencies,
                        &users.unwrap_or(vec![8, 32, 512]),
                    ),
                );
                (cells, seconds.unwrap_or(8), db_users.unwrap_or(100_000))
            };
            for latency in cells.iter().map(|c| &c.latency) {
                panels::parse_latency(latency)
                    .with_context(|| format!("--latencies {latency:?}"))?;
            }
            let settings = SweepSettings {
                cells,
                seconds,
                db_users,
                users_per_owner: 1_000,
                links_per_user: 2,
                panels: panels.specs()?,
                weights: Weights::default(),
                port,
                db: DbTarget::from_env("valhalla_loadtest")?,
                out_dir: out_dir.clone(),
                label: if quick { "quick".into() } else { "full".into() },
            };
            let started = std::time::Instant::now();
            let load_before = load_average();
            let results = sweep::run(&settings)?;
            let docs = docs.unwrap_or_else(|| {
                if quick {
                    out_dir.join("quick")
                } else {
                    root.join("docs")
                }
            });
            let command = command_line();
            let mut context = report_context(&settings, &command, started.elapsed())?;
            context.machine.push((
                "load average (1 min)".into(),
                format!(
                    "{load_before} before the sweep (anything above 0 is other work competing with the figures), {} at its end (the sweep's own processes included)",
                    load_average()
                ),
            ));
            let md_path = docs.join("sizing.md");
            report::write(&results, &context, &md_path, &docs.join("img"))?;
            print_summary(&results);
            eprintln!(
                "sweep: {} written in {:.0} s",
                md_path.display(),
                started.elapsed().as_secs_f64()
            );
            if quick {
                check_quick(&results)?;
            }
            Ok(())
        }
        Command::Report { jsonl, docs } => {
            let results = sweep::read_results(&jsonl)?;
            let docs = docs.unwrap_or_else(|| workspace_root().join("docs"));
            let context = report::ReportContext {
                date: utc_date(),
                command: format!("valhalla-loadtest report {}", jsonl.display()),
                machine: machine(None),
                method: vec![format!("Results read from `{}`.", jsonl.display())],
                image_prefix: "img/".into(),
            };
            report::write(
                &results,
                &context,
                &docs.join("sizing.md"),
                &docs.join("img"),
            )?;
            Ok(())
        }
        Command::Yardstick {
            url,
            seconds,
            users,
        } => yardstick(&url, seconds, users),
        Command::Demo { port } => demo::run(port),
    }
}

/// `run`: goose parses its own options; the defaults here only fill gaps.
fn run_goose(plan: Plan, weights: Weights, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let mut command = GooseConfiguration::command();
        println!("{}", command.render_help());
        return Ok(());
    }
    let config = GooseConfiguration::parse_args_default(args).context("goose options")?;
    scenario::install(plan);
    let attack = GooseAttack::initialize_with_config(config)?
        .set_default(GooseDefault::Host, "http://127.0.0.1:5000")?
        .set_default(GooseDefault::NoTelnet, true)?;
    let attack = scenario::register(*attack, weights)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let metrics = runtime
        .block_on(attack.execute())
        .context("running the goose attack")?;
    let summary = scenario::summarize(&metrics);
    println!(
        "{} requests in {:.0} s: {:.0} req/s, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, {} failed",
        summary.requests,
        summary.seconds,
        summary.rate(),
        summary.p50_ms,
        summary.p95_ms,
        summary.p99_ms,
        summary.failures
    );
    for error in &summary.errors {
        println!("  failure: {error}");
    }
    Ok(())
}

fn yardstick(url: &str, seconds: usize, users: usize) -> Result<()> {
    let host = base_url(url);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(scenario::run_healthz(&host, users, seconds))?;
    if summary.failures > 0 {
        bail!(
            "{} of {} answers from {host} were wrong: {}",
            summary.failures,
            summary.requests,
            summary.errors.join("; ")
        );
    }
    println!("requests={}", summary.requests);
    println!("requests_per_second={:.0}", summary.rate());
    Ok(())
}

/// `scheme://authority` of a URL: goose joins request paths onto its host.
fn base_url(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => url[..after_scheme + slash].to_owned(),
        None => url.to_owned(),
    }
}

/// The directory holding the workspace's Cargo.toml and loadtest/, found
/// upwards from the current directory (or the current directory).
fn workspace_root() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    here.ancestors()
        .find(|dir| dir.join("loadtest/Cargo.toml").is_file() && dir.join("Cargo.toml").is_file())
        .map_or(here.clone(), Path::to_path_buf)
}

fn default_out_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("loadtest"),
        None => root.join("target/loadtest"),
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("valhalla-loadtest {}", args.join(" "))
}

/// A quick sweep is CI's smoke test: every cell must have answered, right.
fn check_quick(results: &[sweep::CellResult]) -> Result<()> {
    for r in results {
        if r.requests == 0 || r.error_rate() > 0.01 {
            bail!(
                "quick sweep: cell {:?} made {} requests with {} failures: {}",
                r.cell,
                r.requests,
                r.failures,
                r.errors.join("; ")
            );
        }
    }
    println!("quick sweep: {} passed, 0 failed", results.len());
    Ok(())
}

fn print_summary(results: &[sweep::CellResult]) {
    println!("workers pool latency   users    req/s   p50 ms   p99 ms  failed  server cpu");
    for r in results {
        let Cell {
            workers,
            pool,
            latency,
            users,
        } = &r.cell;
        println!(
            "{workers:>7} {pool:>4} {latency:<9} {users:>5} {:>8.0} {:>8.1} {:>8.1} {:>6.2}% {:>10.2}",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            100.0 * r.error_rate(),
            r.server_cpu
        );
    }
}

/// The one-minute load average, as /proc/loadavg says it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date in UTC as YYYY-MM-DD, from the days since 1970.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil-from-days algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn machine(db: Option<&DbTarget>) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.0} GiB", kb / 1_048_576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut rows = vec![
        ("CPU".into(), model),
        (
            "cores".into(),
            format!(
                "{cores}, shared by the server, MariaDB, the fake panels and the load generator"
            ),
        ),
        ("memory".into(), memory),
        ("kernel".into(), kernel.trim().to_owned()),
    ];
    if let Some(db) = db {
        use mysql::prelude::Queryable as _;
        let version = db.connect_server().ok().and_then(|mut c| {
            c.query_first::<String, _>("SELECT VERSION()")
                .ok()
                .flatten()
        });
        let max_connections = db.connect_server().ok().and_then(|mut c| {
            c.query_first::<(String, String), _>("SHOW VARIABLES LIKE 'max_connections'")
                .ok()
                .flatten()
        });
        rows.push((
            "database".into(),
            version.unwrap_or_else(|| "unknown".into()),
        ));
        if let Some((_, value)) = max_connections {
            rows.push(("max_connections".into(), value));
        }
    }
    rows
}

/// The server binary's build profile, from the directory it lives in.
fn build_profile() -> &'static str {
    match server::find_binary() {
        Ok(path) if path.components().any(|c| c.as_os_str() == "release") => "release",
        Ok(path) if path.components().any(|c| c.as_os_str() == "debug") => {
            "debug (figures not representative)"
        }
        _ => "unknown",
    }
}

fn report_context(
    settings: &SweepSettings,
    command: &str,
    elapsed: std::time::Duration,
) -> Result<report::ReportContext> {
    let panels: Vec<String> = settings.panels.iter().map(|p| format!("`{p}`")).collect();
    let weights = settings.weights;
    let method = vec![
        format!("`valhalla-loadtest sweep` started the fake panels in a child process, created the database `{}` with the server's own `valhalla migrate`, and seeded {} subscribers ({} per owner, each linked to {} panels, with one name filter and one number filter per owner and panel).", settings.db.database, settings.db_users, settings.users_per_owner, settings.links_per_user),
        format!("Fake panels: {}. Latency was then set for all panels per cell; `0ms` answers at once.", panels.join(", ")),
        format!("For each of the {} cells it started the `valhalla` binary ({} build) (after checking that port {} was free: may binds with SO_REUSEPORT), waited for `/readyz`, ran one goose attack of {} s with all users started at once and metrics reset after the start, then stopped the server, so every cell starts with an empty cache.", settings.cells.len(), build_profile(), settings.port, settings.seconds),
        format!("goose users send requests back to back (no think time), mixed by weight: VPN clients polling the text subscription {}, browsers opening the status page {}, unknown users getting 404 {}. Every request addresses another subscriber until all were asked once, so the panel cache sees the misses of a real polling cycle.", weights.text, weights.page, weights.unknown),
        "Each answer is checked, not only its status: the text answer must be `text/plain` with `X-Plan-Limit-Bytes`, hold at least one config link and none of the filtered configs; the page must be HTML naming the user; an unknown user must get 404.".to_owned(),
        "Throughput counts every request goose recorded (`raw_data.counter`) over the measured seconds; percentiles come from goose's response-time buckets. Pool waits are samples of `valhalla_db_pool_waiting` from `/metrics` every 200 ms; CPU is from `/proc` for the server, this load generator, the fake panels' process and MariaDB.".to_owned(),
        "Everything shares the same cores, so absolute figures are lower than on a machine where the database and the clients live elsewhere; the shapes (where throughput stops growing) are what carry over.".to_owned(),
        format!("The whole sweep took {:.0} s.", elapsed.as_secs_f64()),
    ];
    Ok(report::ReportContext {
        date: utc_date(),
        command: command.to_owned(),
        machine: machine(Some(&settings.db)),
        method,
        image_prefix: "img/".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yardstick_urls_lose_their_path() {
        assert_eq!(
            base_url("http://127.0.0.1:18081/healthz"),
            "http://127.0.0.1:18081"
        );
        assert_eq!(base_url("http://127.0.0.1:18081"), "http://127.0.0.1:18081");
        assert_eq!(base_url("https://h.example/a/b"), "https://h.example");
    }

    #[test]
    fn the_date_is_iso_shaped() {
        let date = utc_date();
        assert_eq!(date.len(), 10);
        assert!(date.starts_with("20"));
        assert_eq!(&date[4..5], "-");
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "valhalla-loadtest",
            "run",
            "--weights",
            "1,0,0",
            "--",
            "-u",
            "4",
        ])
        .unwrap();
        let Command::Run { weights, goose, .. } = cli.command else {
            panic!("not run");
        };
        assert_eq!(weights.page, 0);
        assert_eq!(goose, vec!["-u".to_owned(), "4".to_owned()]);
        let config = GooseConfiguration::parse_args_default(&goose).unwrap();
        assert_eq!(config.users, Some(4));
    }
}
