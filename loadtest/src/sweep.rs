//! The sizing sweep: for each cell of WORKERS × MYSQL_POOL_SIZE × panel
//! latency × concurrent users, a fresh server, one goose attack, and a JSON
//! line of what was measured.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::panels::{self, PanelInfo, PanelSpec};
use crate::scenario::{self, Attack, Plan, Weights};
use crate::seed::{self, DbTarget, Identities, SeedPlan};
use crate::server::{self, ServerProcess};

/// One cell's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub workers: usize,
    pub pool: usize,
    /// Panel latency as `50ms` or `20ms..80ms`.
    pub latency: String,
    pub users: usize,
}

/// What one cell measured; one JSON line each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    #[serde(flatten)]
    pub cell: Cell,
    pub seconds: f64,
    pub requests: u64,
    pub failures: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Largest number of database jobs seen waiting for a connection.
    pub pool_waiting_max: f64,
    /// Average of the samples of waiting jobs.
    pub pool_waiting_mean: f64,
    /// Average share of the pool busy, 0 to 1.
    pub pool_busy_share: f64,
    /// Jobs refused with 503 because no connection came free in time.
    pub pool_exhausted: f64,
    /// CPU cores used on average during the attack.
    pub server_cpu: f64,
    pub loadgen_cpu: f64,
    pub panels_cpu: f64,
    pub db_cpu: f64,
    /// Panel requests per subscription request.
    pub panel_calls_per_request: f64,
    /// Sample failure reasons.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl CellResult {
    /// Correct answers per second: what clients got. A refused or wrong
    /// answer is quick to make, so `rps` alone would reward failing.
    pub fn ok_rps(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.rps * self.requests.saturating_sub(self.failures) as f64 / self.requests as f64
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub cells: Vec<Cell>,
    pub seconds: usize,
    pub db_users: u64,
    pub users_per_owner: u64,
    pub links_per_user: usize,
    pub panels: Vec<PanelSpec>,
    pub weights: Weights,
    pub port: u16,
    pub db: DbTarget,
    /// JSON lines, server logs and goose's folder go here.
    pub out_dir: PathBuf,
    pub label: String,
}

/// The cells of a product of lists, latency outermost so the panels change
/// latency as rarely as possible.
pub fn product(
    workers: &[usize],
    pools: &[usize],
    latencies: &[String],
    users: &[usize],
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for latency in latencies {
        for &w in workers {
            for &pool in pools {
                for &u in users {
                    cells.push(Cell {
                        workers: w,
                        pool,
                        latency: latency.clone(),
                        users: u,
                    });
                }
            }
        }
    }
    cells
}

/// Adds the cells of `more` that `cells` does not have yet, then orders all by
/// latency so that each latency is set once.
pub fn union(mut cells: Vec<Cell>, more: Vec<Cell>) -> Vec<Cell> {
    for cell in more {
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    let mut order: Vec<String> = Vec::new();
    for cell in &cells {
        if !order.contains(&cell.latency) {
            order.push(cell.latency.clone());
        }
    }
    cells.sort_by_key(|c| order.iter().position(|l| *l == c.latency));
    cells
}

/// The fake panels in a child process (`valhalla-loadtest panels`), so that
/// their CPU time is measured apart from the load generator's.
struct PanelProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    infos: Vec<PanelInfo>,
}

impl PanelProcess {
    fn start(specs: &[PanelSpec]) -> Result<PanelProcess> {
        let me = std::env::current_exe().context("locating this program")?;
        let mut command = Command::new(me);
        command.arg("panels");
        for spec in specs {
            command.arg("--panel").arg(spec.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the fake panels process")?;
        let stdin = child.stdin.take().context("panels stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("panels stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let infos: Vec<PanelInfo> = serde_json::from_str(line.trim())
            .with_context(|| format!("the panels process said {:?}", line.trim()))?;
        Ok(PanelProcess {
            child,
            stdin,
            stdout,
            infos,
        })
    }

    fn command(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let line = line.trim().to_owned();
        if let Some(error) = line.strip_prefix("error ") {
            bail!("fake panels: {error}");
        }
        Ok(line)
    }

    fn set_latency(&mut self, latency: &str) -> Result<()> {
        self.command(&format!("latency {latency}")).map(drop)
    }

    fn calls(&mut self) -> Result<u64> {
        let line = self.command("calls")?;
        line.strip_prefix("calls ")
            .and_then(|n| n.parse().ok())
            .context("the panels process did not report its calls")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PanelProcess {
    fn drop(&mut self) {
        // Closing standard input ends the process; kill it if it lingers.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples of the server's pool gauges while an attack runs.
#[derive(Debug, Default)]
struct PoolSamples {
    waiting: Vec<f64>,
    busy_share: Vec<f64>,
}

fn sample_pool(port: u16, stop: &AtomicBool) -> PoolSamples {
    let mut samples = PoolSamples::default();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((200, text)) = server::http_get(port, "/metrics", Duration::from_secs(1)) {
            let waiting = server::metric(&text, "valhalla_db_pool_waiting").unwrap_or(0.0);
            let in_use = server::metric(&text, "valhalla_db_pool_in_use").unwrap_or(0.0);
            let size = server::metric(&text, "valhalla_db_pool_size").unwrap_or(0.0);
            samples.waiting.push(waiting);
            if size > 0.0 {
                samples.busy_share.push(in_use / size);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    samples
}

fn exhausted(port: u16) -> f64 {
    server::http_get(port, "/metrics", Duration::from_secs(2))
        .ok()
        .and_then(|(_, text)| server::metric(&text, "valhalla_db_pool_exhausted_total"))
        .unwrap_or(0.0)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// CPU seconds of a process now (0 when unreadable).
fn cpu(pid: u32) -> f64 {
    server::cpu_seconds(pid).unwrap_or(0.0)
}

/// Config names the seeded filters remove, which no answer may hold.
pub fn forbidden_names(infos: &[PanelInfo]) -> Vec<String> {
    let mut names = Vec::new();
    for panel in infos.iter().filter(|p| p.panel_type != "sanaei") {
        if panel.configs >= 2 {
            names.push(panels::config_name(panel.index, panel.configs));
        }
        if panel.configs >= 3 {
            names.push(panels::config_name(panel.index, 1));
        }
    }
    names
}

/// Runs every cell and returns the results; also appends them to
/// `out_dir/sweep-LABEL.jsonl` as they come.
pub fn run(settings: &SweepSettings) -> Result<Vec<CellResult>> {
    let binary = server::find_binary()?;
    std::fs::create_dir_all(&settings.out_dir)
        .with_context(|| format!("creating {}", settings.out_dir.display()))?;
    server::wait_port_free(settings.port, Duration::from_secs(2))?;

    eprintln!("sweep: starting {} fake panels", settings.panels.len());
    let mut panels = PanelProcess::start(&settings.panels)?;

    eprintln!(
        "sweep: seeding {} users into database {}",
        settings.db_users, settings.db.database
    );
    settings.db.recreate()?;
    seed::migrate(&settings.db, &binary)?;
    let identities = Identities {
        users: settings.db_users,
        users_per_owner: settings.users_per_owner,
        salt: "valhalla-loadtest".into(),
    };
    let report = seed::seed(
        &settings.db,
        &panels.infos,
        &SeedPlan {
            identities: identities.clone(),
            links_per_user: settings.links_per_user,
        },
        true,
    )?;
    eprintln!(
        "sweep: seeded {} rows in {:.1} s",
        report.rows,
        report.elapsed.as_secs_f64()
    );
    let plan = Plan {
        identities,
        forbidden: forbidden_names(&panels.infos),
    };

    let jsonl_path = settings
        .out_dir
        .join(format!("sweep-{}.jsonl", settings.label));
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .with_context(|| format!("creating {}", jsonl_path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let db_pid = server::database_pid();

    // Each cell costs its attack plus about two seconds of starting and
    // stopping; the bar's estimate uses that until real timings come in.
    let bar = ProgressBar::new(settings.cells.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} cell {pos}/{len} {msg} [{elapsed} spent, about {eta} left]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::with_capacity(settings.cells.len());
    let mut current_latency: Option<String> = None;
    for (number, cell) in settings.cells.iter().enumerate() {
        bar.set_message(format!(
            "workers={} pool={} latency={} users={}",
            cell.workers, cell.pool, cell.latency, cell.users
        ));
        if current_latency.as_deref() != Some(cell.latency.as_str()) {
            panels.set_latency(&cell.latency)?;
            current_latency = Some(cell.latency.clone());
        }
        let log = settings
            .out_dir
            .join(format!("server-{}-{number:03}.log", settings.label));
        let result = run_cell(
            settings,
            &binary,
            &runtime,
            &mut panels,
            &plan,
            cell,
            &log,
            db_pid,
        )
        .with_context(|| format!("cell {} ({cell:?})", number + 1))?;
        writeln!(jsonl, "{}", serde_json::to_string(&result)?)?;
        if result.error_rate() > 0.01 {
            bar.println(format!(
                "sweep: cell {} had {:.1}% errors: {}",
                number + 1,
                100.0 * result.error_rate(),
                result.errors.join("; ")
            ));
        } else {
            // A clean cell's server log holds nothing worth keeping.
            let _ = std::fs::remove_file(&log);
        }
        results.push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("sweep: results in {}", jsonl_path.display());
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
fn run_cell(
    settings: &SweepSettings,
    binary: &Path,
    runtime: &tokio::runtime::Runtime,
    panels: &mut PanelProcess,
    plan: &Plan,
    cell: &Cell,
    log: &Path,
    db_pid: Option<u32>,
) -> Result<CellResult> {
    let mut env = settings.db.server_env();
    env.push(("WORKERS".into(), cell.workers.to_string()));
    env.push(("MYSQL_POOL_SIZE".into(), cell.pool.to_string()));
    let mut server = ServerProcess::start(binary, settings.port, &env, log)?;
    server.wait_ready(Duration::from_secs(30))?;
    let server_pid = server.pid();

    let exhausted_before = exhausted(settings.port);
    let calls_before = panels.calls()?;
    let cpu_before = (
        cpu(server_pid),
        cpu(0),
        cpu(panels.pid()),
        db_pid.map_or(0.0, cpu),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let port = settings.port;
        std::thread::spawn(move || sample_pool(port, &stop))
    };
    let started = Instant::now();
    let attack = Attack {
        host: format!("http://127.0.0.1:{}", settings.port),
        users: cell.users,
        seconds: settings.seconds,
        weights: settings.weights,
    };
    let summary = runtime.block_on(scenario::run_quiet(plan.clone(), &attack));
    let wall = started.elapsed().as_secs_f64().max(0.001);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let summary = summary?;
    let cpu_after = (
        cpu(server_pid),
        cpu(0),
        cpu(panels.pid()),
        db_pid.map_or(0.0, cpu),
    );
    let calls = panels.calls()?.saturating_sub(calls_before);
    let exhausted_total = (exhausted(settings.port) - exhausted_before).max(0.0);
    // A server that died during the attack makes every later request fail;
    // say so first, with its last words, rather than only count failures.
    let mut errors = summary.errors.clone();
    if let Some(status) = server.try_exit_status() {
        errors.insert(
            0,
            format!(
                "the server exited during the cell ({status}): {}",
                server.log_tail()
            ),
        );
    }
    server.stop(Duration::from_secs(5))?;

    Ok(CellResult {
        cell: cell.clone(),
        seconds: summary.seconds,
        requests: summary.requests,
        failures: summary.failures,
        rps: summary.rate(),
        p50_ms: summary.p50_ms,
        p95_ms: summary.p95_ms,
        p99_ms: summary.p99_ms,
        pool_waiting_max: samples.waiting.iter().copied().fold(0.0, f64::max),
        pool_waiting_mean: mean(&samples.waiting),
        pool_busy_share: mean(&samples.busy_share),
        pool_exhausted: exhausted_total,
        server_cpu: (cpu_after.0 - cpu_before.0) / wall,
        loadgen_cpu: (cpu_after.1 - cpu_before.1) / wall,
        panels_cpu: (cpu_after.2 - cpu_before.2) / wall,
        db_cpu: (cpu_after.3 - cpu_before.3) / wall,
        panel_calls_per_request: if summary.requests > 0 {
            calls as f64 / summary.requests as f64
        } else {
            0.0
        },
        errors,
    })
}

/// Reads results written earlier.
pub fn read_results(path: &Path) -> Result<Vec<CellResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), n + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_puts_latency_outermost_and_union_adds_only_new_cells() {
        let cells = product(&[1, 2], &[4], &["0ms".into(), "50ms".into()], &[16]);
        assert_eq!(cells.len(), 4);
        assert_eq!(cells[0].latency, "0ms");
        assert_eq!(cells[3].latency, "50ms");
        let more = product(&[2], &[4, 8], &["50ms".into(), "0ms".into()], &[16]);
        let all = union(cells, more);
        assert_eq!(all.len(), 6);
        // Grouped by latency: every 0ms cell before every 50ms cell.
        let first_50 = all.iter().position(|c| c.latency == "50ms").unwrap();
        assert!(all[first_50..].iter().all(|c| c.latency == "50ms"));
    }

    #[test]
    fn results_round_trip_through_json_lines() {
        let result = CellResult {
            cell: Cell {
                workers: 2,
                pool: 8,
                latency: "50ms".into(),
                users: 128,
            },
            seconds: 5.0,
            requests: 5_000,
            failures: 5,
            rps: 1_000.0,
            p50_ms: 100.0,
            p95_ms: 150.0,
            p99_ms: 200.0,
            pool_waiting_max: 3.0,
            pool_waiting_mean: 0.5,
            pool_busy_share: 0.4,
            pool_exhausted: 0.0,
            server_cpu: 0.9,
            loadgen_cpu: 0.3,
            panels_cpu: 0.2,
            db_cpu: 0.3,
            panel_calls_per_request: 2.0,
            errors: vec![],
        };
        let line = serde_json::to_string(&result).unwrap();
        assert!(line.contains("\"workers\":2"));
        let dir = std::env::temp_dir().join(format!("lt-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
        let back = read_results(&path).unwrap();
        assert_eq!(back, vec![result.clone(), result.clone()]);
        assert!((result.error_rate() - 0.001).abs() < 1e-9);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn filtered_names_follow_the_seeded_filters() {
        let info = |index, panel_type: &str, configs| PanelInfo {
            index,
            panel_type: panel_type.into(),
            url: String::new(),
            token: String::new(),
            configs,
        };
        let names = forbidden_names(&[
            info(0, "marzneshin", 3),
            info(1, "marzban", 1),
            info(2, "sanaei", 3),
        ]);
        assert_eq!(names, vec!["p0-cfg3".to_owned(), "p0-cfg1".to_owned()]);
    }
}
