//! Schema creation: the tables of the management tool's database and the
//! indexes the subscription path needs, created only where missing.
//!
//! valhalla usually runs against a database that the management bot created and
//! keeps writing, so migration is additive only: `CREATE TABLE IF NOT EXISTS`
//! for missing tables and `CREATE INDEX` where no existing index already serves
//! a lookup. It never drops, alters or rewrites columns or rows. Column names
//! and types follow the management tool so that a database created here is one
//! it can use.

use std::fmt;

use mysql::prelude::Queryable;

/// What one [`migrate`] run changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Tables that did not exist and were created, in creation order.
    pub tables_created: Vec<String>,
    /// Indexes added to existing tables, as `table(column, ...)`.
    pub indexes_added: Vec<String>,
    /// Indexes that could not be added because a column they need is missing
    /// from an existing table, with the reason.
    pub indexes_skipped: Vec<String>,
}

impl MigrationReport {
    /// True when the database already had every table and index.
    pub fn is_noop(&self) -> bool {
        self.tables_created.is_empty() && self.indexes_added.is_empty()
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_noop() && self.indexes_skipped.is_empty() {
            return write!(f, "schema up to date: nothing to do");
        }
        for table in &self.tables_created {
            writeln!(f, "created table {table}")?;
        }
        for index in &self.indexes_added {
            writeln!(f, "added index on {index}")?;
        }
        for skipped in &self.indexes_skipped {
            writeln!(f, "skipped index: {skipped}")?;
        }
        Ok(())
    }
}

/// A lookup of the request path and the index that serves it.
struct RequiredIndex {
    table: &'static str,
    name: &'static str,
    columns: &'static [&'static str],
}

/// Indexes the subscription path relies on. An existing index whose leading
/// columns are these (a unique key included) is as good, so none is
/// duplicated. Added indexes are never unique: an existing table may hold
/// duplicates that a unique index would refuse.
const REQUIRED_INDEXES: &[RequiredIndex] = &[
    // The owner lookup by username and app key; the original had no index for
    // it, so every unknown user was a full table scan.
    RequiredIndex {
        table: "app_users",
        name: "idx_app_users_username_app_key",
        columns: &["username", "app_key"],
    },
    RequiredIndex {
        table: "local_users",
        name: "idx_local_users_owner_username",
        columns: &["owner_id", "username"],
    },
    RequiredIndex {
        table: "agents",
        name: "idx_agents_telegram_user_id",
        columns: &["telegram_user_id"],
    },
    RequiredIndex {
        table: "panels",
        name: "idx_panels_telegram_user_id",
        columns: &["telegram_user_id"],
    },
    RequiredIndex {
        table: "local_user_panel_links",
        name: "idx_links_owner_local_username",
        columns: &["owner_id", "local_username"],
    },
    RequiredIndex {
        table: "panel_disabled_configs",
        name: "idx_disabled_configs_panel",
        columns: &["panel_id"],
    },
    RequiredIndex {
        table: "panel_disabled_numbers",
        name: "idx_disabled_numbers_panel",
        columns: &["panel_id"],
    },
];

/// Every table, in an order where referenced tables come first. `{panel_id}`
/// and `{service_id}` stand for the column types of `panels.id` and
/// `services.id` as they are in this database, so a foreign key to an older
/// table with INT ids still matches.
const TABLES: &[(&str, &str)] = &[
    (
        "panels",
        "CREATE TABLE IF NOT EXISTS panels (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            panel_url VARCHAR(255) NOT NULL,
            name VARCHAR(128) NOT NULL,
            panel_type VARCHAR(32) NOT NULL DEFAULT 'marzneshin',
            admin_username VARCHAR(64) NOT NULL,
            access_token VARCHAR(2048) NOT NULL,
            template_username VARCHAR(64) NULL,
            sub_url VARCHAR(2048) NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_panels_owner_url (telegram_user_id, panel_url)
        )",
    ),
    (
        "app_users",
        "CREATE TABLE IF NOT EXISTS app_users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            username VARCHAR(64) NOT NULL,
            app_key VARCHAR(64) NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_app_users_owner_username (telegram_user_id, username),
            KEY idx_app_users_username_app_key (username, app_key)
        )",
    ),
    (
        "local_users",
        "CREATE TABLE IF NOT EXISTS local_users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            owner_id BIGINT NOT NULL,
            username VARCHAR(64) NOT NULL,
            plan_limit_bytes BIGINT NOT NULL DEFAULT 0,
            used_bytes BIGINT NOT NULL DEFAULT 0,
            expire_at DATETIME NULL,
            note VARCHAR(255) NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
            disabled_pushed TINYINT(1) NOT NULL DEFAULT 0,
            disabled_pushed_at DATETIME NULL,
            service_id BIGINT NULL,
            UNIQUE KEY uq_local_users_owner_username (owner_id, username)
        )",
    ),
    (
        "agents",
        "CREATE TABLE IF NOT EXISTS agents (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            name VARCHAR(128) NOT NULL,
            plan_limit_bytes BIGINT NOT NULL DEFAULT 0,
            expire_at DATETIME NULL,
            active TINYINT(1) NOT NULL DEFAULT 1,
            user_limit BIGINT NOT NULL DEFAULT 0,
            max_user_bytes BIGINT NOT NULL DEFAULT 0,
            total_used_bytes BIGINT NOT NULL DEFAULT 0,
            disabled_pushed TINYINT(1) NOT NULL DEFAULT 0,
            disabled_pushed_at DATETIME NULL,
            service_id BIGINT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_agents_telegram_user_id (telegram_user_id)
        )",
    ),
    (
        "local_user_panel_links",
        "CREATE TABLE IF NOT EXISTS local_user_panel_links (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            owner_id BIGINT NOT NULL,
            local_username VARCHAR(64) NOT NULL,
            panel_id {panel_id} NOT NULL,
            remote_username VARCHAR(128) NOT NULL,
            last_used_traffic BIGINT NOT NULL DEFAULT 0,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
            UNIQUE KEY uq_links_owner_user_panel (owner_id, local_username, panel_id),
            KEY idx_links_panel (panel_id),
            CONSTRAINT fk_links_panel FOREIGN KEY (panel_id) REFERENCES panels (id) ON DELETE CASCADE
        )",
    ),
    (
        "panel_disabled_configs",
        "CREATE TABLE IF NOT EXISTS panel_disabled_configs (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            panel_id {panel_id} NOT NULL,
            config_name VARCHAR(255) NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_disabled_configs_panel_name (panel_id, config_name),
            CONSTRAINT fk_disabled_configs_panel FOREIGN KEY (panel_id) REFERENCES panels (id) ON DELETE CASCADE
        )",
    ),
    (
        "panel_disabled_numbers",
        "CREATE TABLE IF NOT EXISTS panel_disabled_numbers (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            panel_id {panel_id} NOT NULL,
            config_index INT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_disabled_numbers_panel_index (panel_id, config_index),
            CONSTRAINT fk_disabled_numbers_panel FOREIGN KEY (panel_id) REFERENCES panels (id) ON DELETE CASCADE
        )",
    ),
    (
        "agent_panels",
        "CREATE TABLE IF NOT EXISTS agent_panels (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            agent_tg_id BIGINT NOT NULL,
            panel_id {panel_id} NOT NULL,
            UNIQUE KEY uq_agent_panels_agent_panel (agent_tg_id, panel_id),
            KEY idx_agent_panels_panel (panel_id),
            CONSTRAINT fk_agent_panels_panel FOREIGN KEY (panel_id) REFERENCES panels (id) ON DELETE CASCADE
        )",
    ),
    (
        "services",
        "CREATE TABLE IF NOT EXISTS services (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(128) NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        )",
    ),
    (
        "service_panels",
        "CREATE TABLE IF NOT EXISTS service_panels (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            service_id {service_id} NOT NULL,
            panel_id {panel_id} NOT NULL,
            UNIQUE KEY uq_service_panels_service_panel (service_id, panel_id),
            KEY idx_service_panels_panel (panel_id),
            CONSTRAINT fk_service_panels_service FOREIGN KEY (service_id) REFERENCES services (id) ON DELETE CASCADE,
            CONSTRAINT fk_service_panels_panel FOREIGN KEY (panel_id) REFERENCES panels (id) ON DELETE CASCADE
        )",
    ),
    (
        "account_presets",
        "CREATE TABLE IF NOT EXISTS account_presets (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            limit_bytes BIGINT NOT NULL,
            duration_days INT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            UNIQUE KEY uq_account_presets_owner_preset (telegram_user_id, limit_bytes, duration_days)
        )",
    ),
    // valhalla's own table: a disable that the panels have not confirmed yet,
    // with the time of its next attempt. A row is written in the same
    // transaction as the claim, so a process that dies mid-disable leaves it
    // for another request to finish.
    (
        "valhalla_disable_retries",
        "CREATE TABLE IF NOT EXISTS valhalla_disable_retries (
            subject VARCHAR(8) NOT NULL,
            subject_id BIGINT NOT NULL,
            attempts INT NOT NULL DEFAULT 1,
            next_attempt_at DATETIME NOT NULL,
            PRIMARY KEY (subject, subject_id)
        )",
    ),
];

/// Storage options of every created table. The collation is left to the
/// server's default for utf8mb4, as the management tool does, so columns of
/// tables created by either side compare without a collation conflict.
const TABLE_OPTIONS: &str = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// The type used when a referenced id column cannot be read.
const DEFAULT_ID_TYPE: &str = "BIGINT";

/// Creates every missing table and every missing request-path index in the
/// connection's current database. Idempotent; never drops or alters existing
/// columns or data.
pub fn migrate(conn: &mut mysql::Conn) -> Result<MigrationReport, mysql::Error> {
    let mut report = MigrationReport::default();
    let mut existing = existing_tables(conn)?;

    for (table, template) in TABLES {
        if existing.iter().any(|name| name.eq_ignore_ascii_case(table)) {
            continue;
        }
        let panel_id = referenced_id_type(conn, "panels")?;
        let service_id = referenced_id_type(conn, "services")?;
        let ddl = template
            .replace("{panel_id}", &panel_id)
            .replace("{service_id}", &service_id);
        conn.query_drop(format!("{ddl}{TABLE_OPTIONS}"))?;
        tracing::info!(table, "created table");
        report.tables_created.push((*table).to_owned());
        existing.push((*table).to_owned());
    }

    for required in REQUIRED_INDEXES {
        let described = format!("{}({})", required.table, required.columns.join(", "));
        let columns = table_columns(conn, required.table)?;
        let missing: Vec<&str> = required
            .columns
            .iter()
            .copied()
            .filter(|column| !columns.iter().any(|have| have.eq_ignore_ascii_case(column)))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                index = %described,
                missing_columns = %missing.join(", "),
                "table lacks columns of a request-path index; index not added"
            );
            report.indexes_skipped.push(format!(
                "{described}: missing column {}",
                missing.join(", ")
            ));
            continue;
        }
        if has_covering_index(conn, required.table, required.columns)? {
            continue;
        }
        conn.query_drop(format!(
            "CREATE INDEX {} ON {} ({})",
            required.name,
            required.table,
            required.columns.join(", ")
        ))?;
        tracing::info!(index = %described, "added index");
        report.indexes_added.push(described);
    }

    Ok(report)
}

fn existing_tables(conn: &mut mysql::Conn) -> Result<Vec<String>, mysql::Error> {
    conn.query(
        "SELECT TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE()",
    )
}

fn table_columns(conn: &mut mysql::Conn, table: &str) -> Result<Vec<String>, mysql::Error> {
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (table,),
    )
}

/// The column type of `table.id` as declared in this database (for example
/// `bigint(20)` or `int(10) unsigned`), so a new foreign key matches it.
fn referenced_id_type(conn: &mut mysql::Conn, table: &str) -> Result<String, mysql::Error> {
    let declared: Option<String> = conn.exec_first(
        "SELECT COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'id'",
        (table,),
    )?;
    Ok(declared
        .filter(|column_type| is_plain_integer_type(column_type))
        .unwrap_or_else(|| DEFAULT_ID_TYPE.to_owned()))
}

/// Whether a declared type is a plain integer type that is safe to paste into
/// DDL: an integer keyword, an optional display width, an optional `unsigned`.
fn is_plain_integer_type(column_type: &str) -> bool {
    let lower = column_type.trim().to_ascii_lowercase();
    let rest = lower.strip_suffix(" unsigned").unwrap_or(&lower);
    let base = match rest.split_once('(') {
        Some((base, width)) => {
            let Some(digits) = width.strip_suffix(')') else {
                return false;
            };
            if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                return false;
            }
            base
        }
        None => rest,
    };
    matches!(
        base,
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
    )
}

/// Whether some index of `table` starts with exactly `columns`, in order.
fn has_covering_index(
    conn: &mut mysql::Conn,
    table: &str,
    columns: &[&str],
) -> Result<bool, mysql::Error> {
    let rows: Vec<(String, u32, String)> = conn.exec(
        "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (table,),
    )?;
    Ok(index_covers(&rows, columns))
}

/// The pure part of [`has_covering_index`]: rows are (index, position, column)
/// sorted by index and position.
fn index_covers(rows: &[(String, u32, String)], columns: &[&str]) -> bool {
    let mut start = 0;
    while start < rows.len() {
        let index_name = &rows[start].0;
        let end = rows[start..]
            .iter()
            .position(|row| &row.0 != index_name)
            .map_or(rows.len(), |offset| start + offset);
        let index_columns = &rows[start..end];
        let covers = index_columns.len() >= columns.len()
            && columns
                .iter()
                .zip(index_columns)
                .all(|(wanted, row)| row.2.eq_ignore_ascii_case(wanted));
        if covers {
            return true;
        }
        start = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(entries: &[(&str, u32, &str)]) -> Vec<(String, u32, String)> {
        entries
            .iter()
            .map(|(index, seq, column)| ((*index).to_owned(), *seq, (*column).to_owned()))
            .collect()
    }

    #[test]
    fn a_leading_prefix_of_an_index_covers_the_lookup() {
        let stats = rows(&[
            ("PRIMARY", 1, "id"),
            ("uq_user_url", 1, "telegram_user_id"),
            ("uq_user_url", 2, "panel_url"),
        ]);
        assert!(index_covers(&stats, &["telegram_user_id"]));
        assert!(index_covers(&stats, &["telegram_user_id", "panel_url"]));
        assert!(!index_covers(&stats, &["panel_url"]));
        assert!(!index_covers(&stats, &["telegram_user_id", "name"]));
    }

    #[test]
    fn columns_split_across_indexes_do_not_cover_the_lookup() {
        let stats = rows(&[("a", 1, "username"), ("b", 1, "app_key")]);
        assert!(!index_covers(&stats, &["username", "app_key"]));
        assert!(!index_covers(&[], &["username"]));
    }

    #[test]
    fn only_plain_integer_types_are_pasted_into_ddl() {
        assert!(is_plain_integer_type("bigint(20)"));
        assert!(is_plain_integer_type("int(10) unsigned"));
        assert!(is_plain_integer_type("BIGINT"));
        assert!(!is_plain_integer_type("varchar(36)"));
        assert!(!is_plain_integer_type("int(1); DROP TABLE x"));
        assert!(!is_plain_integer_type("int()"));
    }

    #[test]
    fn every_table_of_the_spec_is_created() {
        let names: Vec<&str> = TABLES.iter().map(|(name, _)| *name).collect();
        for table in [
            "app_users",
            "local_users",
            "agents",
            "panels",
            "local_user_panel_links",
            "panel_disabled_configs",
            "panel_disabled_numbers",
            "agent_panels",
            "services",
            "service_panels",
            "account_presets",
        ] {
            assert!(names.contains(&table), "{table} missing");
        }
        for required in REQUIRED_INDEXES {
            assert!(names.contains(&required.table));
        }
    }

    #[test]
    fn report_says_when_nothing_was_done() {
        let report = MigrationReport::default();
        assert!(report.is_noop());
        assert_eq!(report.to_string(), "schema up to date: nothing to do");
    }
}
