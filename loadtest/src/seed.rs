//! The seeder: N subscribers spread over owners, their panel links and the
//! owners' config filters, written with multi-row inserts in one transaction.
//!
//! Every name and key is derived from the user's index, so a load generator
//! that knows N (and the key salt) can address any seeded user without
//! reading the database.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use crate::panels::{self, PanelInfo};
use crate::server;

/// Where the database is: the server's own `MYSQL_*` variables.
#[derive(Debug, Clone)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl DbTarget {
    /// Reads `MYSQL_HOST`, `MYSQL_PORT`, `MYSQL_USER`, `MYSQL_PASSWORD`, with
    /// the server's defaults, and the given default database name unless
    /// `MYSQL_DATABASE` is set.
    pub fn from_env(default_database: &str) -> Result<DbTarget> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port = match var("MYSQL_PORT") {
            Some(text) => text
                .parse()
                .with_context(|| format!("MYSQL_PORT must be a port number, got {text:?}"))?,
            None => 3306,
        };
        let database = var("MYSQL_DATABASE").unwrap_or_else(|| default_database.to_owned());
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("MYSQL_DATABASE must be letters, digits and underscores, got {database:?}");
        }
        Ok(DbTarget {
            host: var("MYSQL_HOST").unwrap_or_else(|| "127.0.0.1".to_owned()),
            port,
            user: var("MYSQL_USER").unwrap_or_else(|| "root".to_owned()),
            password: var("MYSQL_PASSWORD").unwrap_or_default(),
            database,
        })
    }

    /// The variables that point the server at this database.
    pub fn server_env(&self) -> Vec<(String, String)> {
        vec![
            ("MYSQL_HOST".into(), self.host.clone()),
            ("MYSQL_PORT".into(), self.port.to_string()),
            ("MYSQL_USER".into(), self.user.clone()),
            ("MYSQL_PASSWORD".into(), self.password.clone()),
            ("MYSQL_DATABASE".into(), self.database.clone()),
        ]
    }

    fn opts(&self, with_database: bool) -> OptsBuilder {
        let opts = OptsBuilder::new()
            .ip_or_hostname(Some(self.host.clone()))
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .tcp_connect_timeout(Some(Duration::from_secs(5)));
        if with_database {
            opts.db_name(Some(self.database.clone()))
        } else {
            opts
        }
    }

    /// A connection to the server without selecting the database.
    pub fn connect_server(&self) -> Result<Conn> {
        Conn::new(self.opts(false)).with_context(|| {
            format!(
                "connecting to MySQL at {}:{} as {} (is MariaDB running? scripts/ensure-mariadb starts it)",
                self.host, self.port, self.user
            )
        })
    }

    pub fn connect(&self) -> Result<Conn> {
        Conn::new(self.opts(true))
            .with_context(|| format!("connecting to database {}", self.database))
    }

    /// Drops and creates the database: a load test owns its database.
    pub fn recreate(&self) -> Result<()> {
        let mut conn = self.connect_server()?;
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.database))?;
        conn.query_drop(format!(
            "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
            self.database
        ))?;
        Ok(())
    }

    /// Creates the database when it is missing.
    pub fn ensure(&self) -> Result<()> {
        let mut conn = self.connect_server()?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4",
            self.database
        ))?;
        Ok(())
    }
}

/// Derives subscriber names and keys from an index.
#[derive(Debug, Clone)]
pub struct Identities {
    /// Seeded subscribers.
    pub users: u64,
    /// Subscribers per owner.
    pub users_per_owner: u64,
    /// Mixed into every app key, so keys of one deployment are not guessable
    /// from another's.
    pub salt: String,
}

/// Telegram ids of owners start here, far from real ids.
const FIRST_OWNER: u64 = 9_000_000_000;

impl Identities {
    pub fn username(&self, index: u64) -> String {
        format!("lt{index:07}")
    }

    pub fn owner(&self, index: u64) -> u64 {
        FIRST_OWNER + index / self.users_per_owner.max(1)
    }

    pub fn owners(&self) -> u64 {
        self.users.div_ceil(self.users_per_owner.max(1))
    }

    /// A 24-character key: FNV-1a of salt and index, twice, in hex with
    /// upper-case letters mixed in, as app keys are case-sensitive.
    pub fn app_key(&self, index: u64) -> String {
        let hash = |round: u64| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round;
            for byte in self.salt.bytes().chain(index.to_le_bytes()) {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        };
        let text = format!("{:016x}{:08x}", hash(1), hash(2) >> 32);
        text.char_indices()
            .map(|(i, c)| {
                if i % 3 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// The path a client polls for user `index`.
    pub fn path(&self, index: u64) -> String {
        format!(
            "/sub/{}/{}/links",
            self.username(index),
            self.app_key(index)
        )
    }
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub identities: Identities,
    /// Panels each user is linked to (at most the number of panels).
    pub links_per_user: usize,
}

/// How many rows went in, and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct SeedReport {
    pub rows: u64,
    pub elapsed: Duration,
}

/// Rows per INSERT statement: big enough that round trips do not matter,
/// well under `max_allowed_packet`.
const BATCH: u64 = 2_000;

/// Plan limit of every seeded user (100 GiB) and what they used: all are
/// active, so every request goes to the panels.
const PLAN_LIMIT: u64 = 100 << 30;

/// Seeds a database whose schema the server's `migrate` command has created.
pub fn seed(
    db: &DbTarget,
    panels: &[PanelInfo],
    plan: &SeedPlan,
    progress: bool,
) -> Result<SeedReport> {
    let started = Instant::now();
    let ids = &plan.identities;
    let mut conn = db.connect()?;
    // One transaction without per-row checks: this is a bulk load into an
    // empty database, and the unique keys hold by construction.
    conn.query_drop("SET unique_checks = 0, foreign_key_checks = 0")?;
    conn.query_drop("START TRANSACTION")?;

    let owners = ids.owners();
    let links_per_user = plan.links_per_user.clamp(1, panels.len().max(1));
    let total_rows =
        owners * (1 + panels.len() as u64 * 3) + ids.users * (2 + links_per_user as u64);
    let bar = if progress {
        let bar = ProgressBar::new(total_rows);
        bar.set_style(
            ProgressStyle::with_template("seeding {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    // Owners are agents without limits, each with its own row per panel and
    // filters on it: the name filter drops the panel's last config, the
    // number filter its first (when it has three or more).
    let mut panel_ids: Vec<Vec<u64>> = Vec::with_capacity(owners as usize);
    for owner_index in 0..owners {
        let owner = FIRST_OWNER + owner_index;
        conn.exec_drop(
            "INSERT INTO agents (telegram_user_id, name, plan_limit_bytes, active) VALUES (?, ?, 0, 1)",
            (owner, format!("load test agent {owner_index}")),
        )?;
        let mut ids_of_owner = Vec::with_capacity(panels.len());
        for panel in panels {
            conn.exec_drop(
                "INSERT INTO panels (telegram_user_id, panel_url, name, panel_type, admin_username, access_token) \
                 VALUES (?, ?, ?, ?, 'admin', ?)",
                (owner, &panel.url, format!("panel {}", panel.index), &panel.panel_type, &panel.token),
            )?;
            let panel_id = conn.last_insert_id();
            if panel.panel_type != "sanaei" && panel.configs >= 2 {
                conn.exec_drop(
                    "INSERT INTO panel_disabled_configs (telegram_user_id, panel_id, config_name) VALUES (?, ?, ?)",
                    (owner, panel_id, panels::config_name(panel.index, panel.configs)),
                )?;
            }
            if panel.panel_type != "sanaei" && panel.configs >= 3 {
                conn.exec_drop(
                    "INSERT INTO panel_disabled_numbers (telegram_user_id, panel_id, config_index) VALUES (?, ?, 1)",
                    (owner, panel_id),
                )?;
            }
            ids_of_owner.push(panel_id);
        }
        panel_ids.push(ids_of_owner);
        bar.inc(1 + panels.len() as u64 * 3);
    }

    let mut start = 0;
    while start < ids.users {
        let end = (start + BATCH).min(ids.users);
        let mut app_users =
            String::from("INSERT INTO app_users (telegram_user_id, username, app_key) VALUES ");
        let mut local_users = String::from(
            "INSERT INTO local_users (owner_id, username, plan_limit_bytes, used_bytes) VALUES ",
        );
        let mut links = String::from(
            "INSERT INTO local_user_panel_links (owner_id, local_username, panel_id, remote_username) VALUES ",
        );
        for index in start..end {
            let separator = if index == start { "" } else { "," };
            let owner = ids.owner(index);
            let name = ids.username(index);
            // Names and keys are generated from [a-zA-Z0-9] only, so they can
            // be written into the statement without escaping.
            app_users.push_str(&format!(
                "{separator}({owner},'{name}','{}')",
                ids.app_key(index)
            ));
            let used = (index * 7_919) % (PLAN_LIMIT / 2);
            local_users.push_str(&format!(
                "{separator}({owner},'{name}',{PLAN_LIMIT},{used})"
            ));
            let owner_panels = &panel_ids[(owner - FIRST_OWNER) as usize];
            for step in 0..links_per_user {
                let slot = (index as usize + step) % panels.len();
                let remote = if panels[slot].panel_type == "sanaei" {
                    panels::xui_client(index)
                } else {
                    name.clone()
                };
                let separator = if index == start && step == 0 { "" } else { "," };
                links.push_str(&format!(
                    "{separator}({owner},'{name}',{},'{remote}')",
                    owner_panels[slot]
                ));
            }
        }
        conn.query_drop(&app_users)?;
        conn.query_drop(&local_users)?;
        conn.query_drop(&links)?;
        bar.inc((end - start) * (2 + links_per_user as u64));
        start = end;
    }
    conn.query_drop("COMMIT")?;
    bar.finish_and_clear();
    Ok(SeedReport {
        rows: total_rows,
        elapsed: started.elapsed(),
    })
}

/// Creates the schema by running the server's own `migrate` command, so the
/// load test never duplicates the schema.
pub fn migrate(db: &DbTarget, server_bin: &Path) -> Result<()> {
    let work_dir = server::work_dir()?;
    let output = std::process::Command::new(server_bin)
        .arg("migrate")
        .envs(db.server_env())
        .env("LOG_LEVEL", "warn")
        .current_dir(&work_dir)
        .output()
        .with_context(|| format!("running {} migrate", server_bin.display()))?;
    if !output.status.success() {
        bail!(
            "{} migrate failed ({}): {}",
            server_bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Identities {
        Identities {
            users: 2_500,
            users_per_owner: 1_000,
            salt: "salt".into(),
        }
    }

    #[test]
    fn names_and_keys_are_stable_distinct_and_safe_to_inline() {
        let ids = ids();
        assert_eq!(ids.username(42), "lt0000042");
        assert_eq!(ids.app_key(42), ids.app_key(42));
        assert_ne!(ids.app_key(42), ids.app_key(43));
        let key = ids.app_key(7);
        assert_eq!(key.len(), 24);
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric()));
        let other_salt = Identities {
            salt: "other".into(),
            ..ids.clone()
        };
        assert_ne!(other_salt.app_key(7), key);
        assert_eq!(
            ids.path(1),
            format!("/sub/lt0000001/{}/links", ids.app_key(1))
        );
    }

    #[test]
    fn users_are_spread_over_owners() {
        let ids = ids();
        assert_eq!(ids.owners(), 3);
        assert_eq!(ids.owner(0), FIRST_OWNER);
        assert_eq!(ids.owner(999), FIRST_OWNER);
        assert_eq!(ids.owner(1_000), FIRST_OWNER + 1);
        assert_eq!(ids.owner(2_499), FIRST_OWNER + 2);
    }
}
