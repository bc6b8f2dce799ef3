//! `valhalla-loadtest demo`: fake panels, one demo owner and user in a local
//! database, the server, and the subscription URLs to try; Ctrl-C stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::panels::{PanelSet, default_specs};
use crate::seed::{self, DbTarget};
use crate::server::{self, ServerProcess};

/// The demo user: fixed so the printed URL stays the same between runs.
const DEMO_OWNER: u64 = 100_000_001;
const DEMO_USER: &str = "demo";
const DEMO_KEY: &str = "Demo-Key-2f9c41";

pub fn run(port: u16) -> Result<()> {
    let binary = server::find_binary()?;
    let db = DbTarget::from_env("valhalla_demo")?;
    db.ensure()?;
    seed::migrate(&db, &binary)?;

    let panels = PanelSet::start(&default_specs());
    let infos = panels.infos();
    let mut conn = db.connect()?;
    // Start from a clean demo owner each time: the panels' ports change.
    conn.exec_drop(
        "DELETE FROM panels WHERE telegram_user_id = ?",
        (DEMO_OWNER,),
    )?;
    conn.exec_drop(
        "DELETE FROM local_user_panel_links WHERE owner_id = ?",
        (DEMO_OWNER,),
    )?;
    conn.exec_drop("DELETE FROM local_users WHERE owner_id = ?", (DEMO_OWNER,))?;
    conn.exec_drop(
        "DELETE FROM app_users WHERE telegram_user_id = ?",
        (DEMO_OWNER,),
    )?;
    conn.exec_drop(
        "INSERT INTO app_users (telegram_user_id, username, app_key) VALUES (?, ?, ?)",
        (DEMO_OWNER, DEMO_USER, DEMO_KEY),
    )?;
    conn.exec_drop(
        "INSERT INTO local_users (owner_id, username, plan_limit_bytes, used_bytes, expire_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP() + INTERVAL 30 DAY)",
        (DEMO_OWNER, DEMO_USER, 50u64 << 30, 12u64 << 30),
    )?;
    for panel in &infos {
        conn.exec_drop(
            "INSERT INTO panels (telegram_user_id, panel_url, name, panel_type, admin_username, access_token) \
             VALUES (?, ?, ?, ?, 'admin', ?)",
            (DEMO_OWNER, &panel.url, format!("Demo {} {}", panel.panel_type, panel.index), &panel.panel_type, &panel.token),
        )?;
        let panel_id = conn.last_insert_id();
        let remote = if panel.panel_type == "sanaei" {
            crate::panels::xui_client(0)
        } else {
            DEMO_USER.to_owned()
        };
        conn.exec_drop(
            "INSERT INTO local_user_panel_links (owner_id, local_username, panel_id, remote_username) VALUES (?, ?, ?, ?)",
            (DEMO_OWNER, DEMO_USER, panel_id, remote),
        )?;
    }
    drop(conn);

    let log = server::work_dir()?.join("demo-server.log");
    let base = format!("http://127.0.0.1:{port}");
    let mut env = db.server_env();
    env.push(("PUBLIC_BASE_URL".into(), base.clone()));
    env.push(("LOG_LEVEL".into(), "info".into()));
    let mut process = ServerProcess::start(&binary, port, &env, &log)?;
    process.wait_ready(Duration::from_secs(30))?;

    let url = format!("{base}/sub/{DEMO_USER}/{DEMO_KEY}/links");
    println!(
        "valhalla is running on {base} (database {}, {} fake panels)",
        db.database,
        infos.len()
    );
    println!();
    println!("  subscription (what VPN apps fetch):  curl -s {url}");
    println!("  status page (what browsers see):     {url}");
    println!("  metrics:                             curl -s {base}/metrics");
    println!();
    println!("server log: {}", log.display());
    println!("press Ctrl-C to stop");

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))
        .context("installing the Ctrl-C handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))
        .context("installing the SIGTERM handler")?;
    while !stop.load(Ordering::Relaxed) {
        if let Some(status) = process_exited(&mut process) {
            anyhow::bail!(
                "the server stopped by itself ({status}): {}",
                process.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping");
    process.stop(Duration::from_secs(5))?;
    drop(panels);
    Ok(())
}

fn process_exited(process: &mut ServerProcess) -> Option<String> {
    process.try_exit_status()
}
