//! Tests of the database boundary against the real MariaDB: the executor, the
//! startup wait and schema creation, each test in a database of its own.

use std::io::{self, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mysql::prelude::Queryable;
use prometheus_client::registry::Registry;
use valhalla::db::schema::{self, MigrationReport};
use valhalla::db::{Db, DbError, PoolOptions, wait_for_database};

use crate::support::mariadb::TestDb;
use crate::support::proxy::Proxy;
use crate::support::{free_port, init_may};

/// Every table a fresh database must have.
const ALL_TABLES: &[&str] = &[
    "panels",
    "app_users",
    "local_users",
    "agents",
    "local_user_panel_links",
    "panel_disabled_configs",
    "panel_disabled_numbers",
    "agent_panels",
    "services",
    "service_panels",
    "account_presets",
    "valhalla_disable_retries",
];

/// The lookups of the request path, as (table, leading columns of an index).
const REQUEST_PATH_LOOKUPS: &[(&str, &[&str])] = &[
    ("app_users", &["username", "app_key"]),
    ("local_users", &["owner_id", "username"]),
    ("agents", &["telegram_user_id"]),
    ("panels", &["telegram_user_id"]),
    ("local_user_panel_links", &["owner_id", "local_username"]),
    ("panel_disabled_configs", &["panel_id"]),
    ("panel_disabled_numbers", &["panel_id"]),
];

const EXHAUSTED_MESSAGE: &str =
    "MySQL connection pool exhausted; consider increasing MYSQL_POOL_SIZE";

/// Executor settings for a test database; tests adjust the pool fields.
fn pool_options(database: &TestDb) -> PoolOptions {
    let mut options = PoolOptions::new(
        &database.host,
        database.port,
        &database.user,
        &database.password,
        &database.name,
    );
    options.size = 2;
    options.acquire_timeout = Duration::from_secs(5);
    options.connect_timeout = Duration::from_secs(5);
    options.io_timeout = Duration::from_secs(30);
    options
}

fn start(options: PoolOptions) -> (Db, Registry) {
    init_may();
    let mut registry = Registry::default();
    let db = Db::start(options, &mut registry);
    (db, registry)
}

fn in_seconds(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

/// Log lines written while a closure runs on this thread.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn during<T>(&self, body: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, body)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

fn encoded_metrics(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// Waits until `condition` holds, for at most `limit`.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    condition()
}

#[test]
fn db_runs_statements_and_returns_their_results() {
    let database = TestDb::create("db");
    let (db, registry) = start(pool_options(&database));

    let sum: Option<i64> = db
        .run(in_seconds(5), |conn| conn.query_first("SELECT 40 + 2"))
        .unwrap();
    assert_eq!(sum, Some(42));

    db.run(in_seconds(5), |conn| {
        conn.query_drop("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(64))")?;
        conn.exec_drop(
            "INSERT INTO notes (id, body) VALUES (?, ?), (?, ?)",
            (1, "سلام", 2, "hello"),
        )
    })
    .unwrap();
    let bodies: Vec<String> = db
        .run(in_seconds(5), |conn| {
            conn.query("SELECT body FROM notes ORDER BY id")
        })
        .unwrap();
    assert_eq!(bodies, ["سلام", "hello"]);

    db.ping(in_seconds(5)).unwrap();

    let failed = db.run(in_seconds(5), |conn| {
        conn.query_drop("SELECT * FROM missing_table")
    });
    assert!(matches!(failed, Err(DbError::Query(_))), "{failed:?}");

    // A thread marks itself free just after it hands over the result.
    assert!(wait_until(Duration::from_secs(1), || db.stats().in_use == 0));
    let stats = db.stats();
    assert_eq!((stats.size, stats.in_use, stats.waiting), (2, 0, 0));
    assert_eq!(stats.exhausted_total, 0);
    let metrics = encoded_metrics(&registry);
    assert!(metrics.contains("valhalla_db_pool_size 2"), "{metrics}");
    assert!(metrics.contains("valhalla_db_pool_in_use 0"), "{metrics}");
    assert!(metrics.contains("valhalla_db_pool_waiting 0"), "{metrics}");
    assert!(
        metrics.contains("valhalla_db_pool_exhausted_total 0"),
        "{metrics}"
    );

    db.shutdown();
}

/// MYSQL_SOCKET: a local MariaDB reached over its Unix socket, as the NixOS
/// module's password-less local database is. The socket is the one the
/// running server reports, so the test follows the machine's configuration.
#[test]
fn db_connects_through_the_unix_socket() {
    let database = TestDb::create("db_socket");
    let socket: String = database
        .conn()
        .query_first("SELECT @@socket")
        .unwrap()
        .expect("the server reports its socket");
    let mut options = pool_options(&database);
    options.host = "host.invalid".into();
    options.socket = Some(socket.clone().into());
    assert_eq!(options.address(), socket);
    let (db, _registry) = start(options);

    // The host cannot be resolved, so an answer proves the socket was used;
    // MariaDB names a socket client's host without a port.
    let client_host: Option<String> = db
        .run(in_seconds(5), |conn| {
            conn.query_first(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
            )
        })
        .unwrap();
    assert_eq!(client_host.as_deref(), Some("localhost"));
}

#[test]
fn exhausted_pool_refuses_quickly_logs_once_and_counts_every_refusal() {
    let database = TestDb::create("db");
    let mut options = pool_options(&database);
    options.size = 1;
    options.acquire_timeout = Duration::from_millis(50);
    let (db, registry) = start(options);

    let holder = {
        let db = db.clone();
        thread::spawn(move || {
            db.run(in_seconds(10), |conn| {
                conn.query_drop("SELECT SLEEP(2)")?;
                Ok("held")
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || db.stats().in_use == 1),
        "the holding job never started"
    );

    let logs = CapturedLogs::default();
    let (first, first_elapsed, second) = logs.during(|| {
        let started = Instant::now();
        let first = db.run(in_seconds(10), |conn| conn.query_drop("SELECT 1"));
        let first_elapsed = started.elapsed();
        let second = db.run(in_seconds(10), |conn| conn.query_drop("SELECT 1"));
        (first, first_elapsed, second)
    });

    assert!(matches!(first, Err(DbError::Exhausted)), "{first:?}");
    assert!(matches!(second, Err(DbError::Exhausted)), "{second:?}");
    assert!(
        first_elapsed >= Duration::from_millis(50) && first_elapsed < Duration::from_millis(150),
        "refused after {first_elapsed:?}"
    );

    let text = logs.text();
    assert_eq!(text.matches(EXHAUSTED_MESSAGE).count(), 1, "{text}");
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("suppressed=0"), "{text}");

    assert_eq!(db.stats().exhausted_total, 2);
    let metrics = encoded_metrics(&registry);
    assert!(
        metrics.contains("valhalla_db_pool_exhausted_total 2"),
        "{metrics}"
    );

    // The refused jobs never ran, and the holder was not disturbed.
    assert_eq!(holder.join().unwrap().unwrap(), "held");
    assert_eq!(db.stats().waiting, 0);
    db.ping(in_seconds(5)).unwrap();
}

#[test]
fn a_deadline_shorter_than_the_job_is_a_timeout() {
    let database = TestDb::create("db");
    let (db, _registry) = start(pool_options(&database));

    let started = Instant::now();
    let result = db.run(Instant::now() + Duration::from_millis(200), |conn| {
        conn.query_drop("SELECT SLEEP(1)")
    });
    assert!(matches!(result, Err(DbError::Timeout)), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    let past = db.run(Instant::now(), |conn| conn.query_drop("SELECT 1"));
    assert!(matches!(past, Err(DbError::Timeout)), "{past:?}");
}

#[test]
fn twenty_sleeps_on_ten_connections_run_ten_at_a_time() {
    let database = TestDb::create("db");
    let mut options = pool_options(&database);
    options.size = 10;
    let (db, _registry) = start(options);
    // Connect every thread first, so the measurement is about the queries.
    let warm: Vec<_> = (0..10)
        .map(|_| {
            let db = db.clone();
            thread::spawn(move || {
                db.run(in_seconds(10), |conn| conn.query_drop("SELECT SLEEP(0.1)"))
            })
        })
        .collect();
    for handle in warm {
        handle.join().unwrap().unwrap();
    }

    let started = Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            thread::spawn(move || {
                db.run(in_seconds(10), |conn| conn.query_drop("SELECT SLEEP(0.5)"))
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap().unwrap();
    }
    let elapsed = started.elapsed();

    assert!(
        elapsed >= Duration::from_millis(1000),
        "{elapsed:?}: more than 10 ran at once"
    );
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
}

#[test]
fn coroutines_waiting_on_the_database_do_not_stall_other_coroutines() {
    let database = TestDb::create("db");
    let mut options = pool_options(&database);
    options.size = 16;
    let (db, _registry) = start(options);

    // Sixteen jobs that each sleep on the server: if they blocked the two may
    // workers, the ticker below would stop for half a second or more.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = Arc::clone(&stop);
        may::go!(move || {
            let mut ticks = Vec::new();
            while !stop.load(Ordering::Acquire) {
                ticks.push(Instant::now());
                may::coroutine::sleep(Duration::from_millis(10));
            }
            ticks
        })
    };

    let started = Instant::now();
    let jobs: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            may::go!(move || {
                db.run(in_seconds(10), |conn| conn.query_drop("SELECT SLEEP(0.5)"))
            })
        })
        .collect();
    for job in jobs {
        job.join().unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    let ticks = ticker.join().unwrap();

    assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
    let during: Vec<&Instant> = ticks
        .iter()
        .filter(|tick| **tick >= started && **tick <= started + elapsed)
        .collect();
    assert!(
        during.len() >= 20,
        "only {} ticks in {elapsed:?}",
        during.len()
    );
    let longest_gap = during
        .windows(2)
        .map(|pair| pair[1].duration_since(*pair[0]))
        .max()
        .unwrap();
    assert!(
        longest_gap < Duration::from_millis(150),
        "ticker stalled {longest_gap:?}"
    );
}

#[test]
fn a_connection_killed_while_idle_is_replaced_before_the_next_job() {
    let database = TestDb::create("db");
    let mut options = pool_options(&database);
    options.size = 1;
    let (db, _registry) = start(options);

    let first_id: u64 = db
        .run(in_seconds(5), |conn| {
            conn.query_first("SELECT CONNECTION_ID()")
        })
        .unwrap()
        .unwrap();
    database
        .conn()
        .query_drop(format!("KILL {first_id}"))
        .unwrap();

    let second_id: u64 = db
        .run(in_seconds(5), |conn| {
            conn.query_first("SELECT CONNECTION_ID()")
        })
        .unwrap()
        .unwrap();
    assert_ne!(first_id, second_id);
}

#[test]
fn a_connection_killed_during_a_job_fails_that_job_only() {
    let database = TestDb::create("db");
    let mut options = pool_options(&database);
    options.size = 1;
    let (db, _registry) = start(options);

    let first_id: u64 = db
        .run(in_seconds(5), |conn| {
            conn.query_first("SELECT CONNECTION_ID()")
        })
        .unwrap()
        .unwrap();
    let sleeper = {
        let db = db.clone();
        thread::spawn(move || db.run(in_seconds(10), |conn| conn.query_drop("SELECT SLEEP(5)")))
    };
    assert!(wait_until(Duration::from_secs(5), || db.stats().in_use == 1));
    // Give the statement time to reach the server before killing its session.
    thread::sleep(Duration::from_millis(200));
    database
        .conn()
        .query_drop(format!("KILL {first_id}"))
        .unwrap();

    let killed = sleeper.join().unwrap();
    assert!(matches!(killed, Err(DbError::Query(_))), "{killed:?}");

    let second_id: u64 = db
        .run(in_seconds(5), |conn| {
            conn.query_first("SELECT CONNECTION_ID()")
        })
        .unwrap()
        .unwrap();
    assert_ne!(first_id, second_id);
}

#[test]
fn jobs_fail_as_unavailable_while_the_database_cannot_be_reached() {
    let port = free_port();
    let mut options = PoolOptions::new("127.0.0.1", port, "root", "", "valhalla");
    options.size = 1;
    let mut registry = Registry::default();
    let db = Db::start(options, &mut registry);

    let result = db.ping(in_seconds(5));
    match result {
        Err(DbError::Unavailable(message)) => {
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn wait_for_database_gives_up_after_max_wait_naming_the_address() {
    let port = free_port();
    let options = PoolOptions::new("127.0.0.1", port, "root", "s3cret-password", "valhalla");

    let logs = CapturedLogs::default();
    let started = Instant::now();
    let result = logs.during(|| wait_for_database(&options, Duration::from_secs(1)));
    let elapsed = started.elapsed();

    let message = match result {
        Err(DbError::Unavailable(message)) => message,
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to a port with nothing listening"),
    };
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    let text = logs.text();
    let retries = text.matches("database not reachable yet, retrying").count();
    assert!(retries >= 2, "{retries} retries logged:\n{text}");
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("attempt=2"), "{text}");
    assert!(!text.contains("s3cret-password"), "{text}");
    assert!(!message.contains("s3cret-password"), "{message}");
}

#[test]
fn wait_for_database_connects_once_the_server_becomes_reachable() {
    let database = TestDb::create("db");
    // The proxy refuses connections, like a server still starting, and
    // forwards them to MariaDB after a second.
    let target = (database.host.as_str(), database.port)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = Arc::new(Proxy::start(target, false));
    let opener = {
        let proxy = Arc::clone(&proxy);
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(1));
            proxy.up();
        })
    };
    let mut options = pool_options(&database);
    options.port = proxy.port;

    let logs = CapturedLogs::default();
    let started = Instant::now();
    let mut conn = logs
        .during(|| wait_for_database(&options, Duration::from_secs(15)))
        .unwrap();
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let current: Option<String> = conn.query_first("SELECT DATABASE()").unwrap();
    assert_eq!(current.as_deref(), Some(database.name.as_str()));
    assert!(
        logs.text().contains("database not reachable yet, retrying"),
        "{}",
        logs.text()
    );
    opener.join().unwrap();
}

#[test]
fn migrate_creates_every_table_and_index_in_an_empty_database() {
    let database = TestDb::create("db");
    let mut conn = database.conn();

    let report = schema::migrate(&mut conn).unwrap();
    let mut created = report.tables_created.clone();
    created.sort();
    let mut expected: Vec<String> = ALL_TABLES.iter().map(|name| (*name).to_owned()).collect();
    expected.sort();
    assert_eq!(created, expected);
    assert!(report.indexes_skipped.is_empty(), "{report:?}");

    for table in ALL_TABLES {
        let (engine, collation): (String, String) = conn
            .exec_first(
                "SELECT ENGINE, TABLE_COLLATION FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                (table,),
            )
            .unwrap()
            .unwrap_or_else(|| panic!("table {table} missing"));
        assert_eq!(engine, "InnoDB", "{table}");
        assert!(collation.starts_with("utf8mb4"), "{table}: {collation}");
    }
    for (table, columns) in REQUEST_PATH_LOOKUPS {
        assert!(
            has_index_starting_with(&mut conn, table, columns),
            "{table}{columns:?}"
        );
    }

    // The tables work together: a link to a panel, removed with the panel.
    conn.query_drop(
        "INSERT INTO panels (telegram_user_id, panel_url, name, admin_username, access_token) \
         VALUES (7, 'https://panel.example', 'p', 'admin', 'token')",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO local_user_panel_links (owner_id, local_username, panel_id, remote_username) \
         SELECT 7, 'alice', id, 'alice' FROM panels",
    )
    .unwrap();
    conn.query_drop("DELETE FROM panels").unwrap();
    let links: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM local_user_panel_links")
        .unwrap();
    assert_eq!(links, Some(0));

    let again = schema::migrate(&mut conn).unwrap();
    assert_eq!(again, MigrationReport::default());
    assert!(again.is_noop());
    assert_eq!(again.to_string(), "schema up to date: nothing to do");
}

#[test]
fn migrate_keeps_existing_tables_data_and_extra_columns() {
    let database = TestDb::create("db");
    let mut conn = database.conn();

    // An older database as the management tool left it: INT panel ids, no
    // index for the app_users lookup, and columns valhalla does not know.
    conn.query_drop(
        "CREATE TABLE panels (
            id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            panel_url VARCHAR(255) NOT NULL,
            name VARCHAR(128) NOT NULL,
            access_token VARCHAR(2048) NOT NULL,
            usage_multiplier DOUBLE NOT NULL DEFAULT 1,
            UNIQUE KEY uq_user_url (telegram_user_id, panel_url)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    conn.query_drop(
        "CREATE TABLE app_users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            username VARCHAR(64) NOT NULL,
            app_key VARCHAR(64) NOT NULL,
            legacy_flag TINYINT(1) NOT NULL DEFAULT 0,
            UNIQUE KEY uq_owner_username (telegram_user_id, username)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    conn.query_drop(
        "CREATE TABLE local_users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            owner_id BIGINT NOT NULL,
            username VARCHAR(64) NOT NULL,
            plan_limit_bytes BIGINT NOT NULL,
            used_bytes BIGINT NOT NULL DEFAULT 0,
            expire_at DATETIME NULL,
            extra_note TEXT NULL,
            UNIQUE KEY uq_local (owner_id, username)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO panels (telegram_user_id, panel_url, name, access_token, usage_multiplier) \
         VALUES (11, 'https://a.example/', 'a', 'tok-a', 1.5), (11, 'https://b.example', 'b', 'tok-b', 1)",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO app_users (telegram_user_id, username, app_key, legacy_flag) \
         VALUES (11, 'alice', 'KeyA', 1), (11, 'bob', 'keyb', 0)",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO local_users (owner_id, username, plan_limit_bytes, used_bytes, expire_at, extra_note) \
         VALUES (11, 'alice', 1000, 10, '2030-01-02 03:04:05', 'vip'), (11, 'bob', 0, 0, NULL, NULL)",
    )
    .unwrap();
    let before = snapshot(&mut conn, &["panels", "app_users", "local_users"]);

    let report = schema::migrate(&mut conn).unwrap();

    let mut created = report.tables_created.clone();
    created.sort();
    let mut expected: Vec<String> = ALL_TABLES
        .iter()
        .filter(|name| !["panels", "app_users", "local_users"].contains(name))
        .map(|name| (*name).to_owned())
        .collect();
    expected.sort();
    assert_eq!(created, expected);
    assert_eq!(report.indexes_added, ["app_users(username, app_key)"]);
    assert!(report.indexes_skipped.is_empty(), "{report:?}");

    let after = snapshot(&mut conn, &["panels", "app_users", "local_users"]);
    assert_eq!(before, after, "existing rows or columns changed");
    for (table, columns) in REQUEST_PATH_LOOKUPS {
        assert!(
            has_index_starting_with(&mut conn, table, columns),
            "{table}{columns:?}"
        );
    }

    // New tables reference the old INT ids.
    conn.query_drop(
        "INSERT INTO local_user_panel_links (owner_id, local_username, panel_id, remote_username) \
         SELECT 11, 'alice', id, 'alice-remote' FROM panels WHERE name = 'a'",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO panel_disabled_numbers (telegram_user_id, panel_id, config_index) \
         SELECT 11, id, 2 FROM panels WHERE name = 'b'",
    )
    .unwrap();

    let again = schema::migrate(&mut conn).unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(again.to_string(), "schema up to date: nothing to do");
    assert_eq!(
        before,
        snapshot(&mut conn, &["panels", "app_users", "local_users"])
    );
}

#[test]
fn migrate_skips_an_index_whose_column_is_missing() {
    let database = TestDb::create("db");
    let mut conn = database.conn();
    conn.query_drop(
        "CREATE TABLE app_users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            telegram_user_id BIGINT NOT NULL,
            username VARCHAR(64) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();

    let report = schema::migrate(&mut conn).unwrap();
    assert_eq!(
        report.indexes_skipped,
        ["app_users(username, app_key): missing column app_key"]
    );
    assert!(!report.tables_created.contains(&"app_users".to_owned()));
    let columns: Vec<String> = conn
        .query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'app_users' ORDER BY ORDINAL_POSITION",
        )
        .unwrap();
    assert_eq!(columns, ["id", "telegram_user_id", "username"]);
}

#[test]
fn datetimes_are_written_and_read_in_utc() {
    let database = TestDb::create("db");
    let (db, _registry) = start(pool_options(&database));

    let zone: Option<String> = db
        .run(in_seconds(5), |conn| {
            conn.query_first("SELECT @@session.time_zone")
        })
        .unwrap();
    assert_eq!(zone.as_deref(), Some("+00:00"));

    let (written, stamped): (mysql::Value, mysql::Value) = db
        .run(in_seconds(5), |conn| {
            conn.query_drop(
                "CREATE TABLE stamps (id INT PRIMARY KEY, at DATETIME NOT NULL, \
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
            )?;
            conn.query_drop("INSERT INTO stamps (id, at) VALUES (1, NOW())")?;
            // The binary protocol (exec) returns dates as Value::Date; the text
            // protocol would return their text.
            let row: Option<(mysql::Value, mysql::Value)> =
                conn.exec_first("SELECT at, created_at FROM stamps WHERE id = 1", ())?;
            Ok(row.expect("the inserted row"))
        })
        .unwrap();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for value in [written, stamped] {
        let seconds = unix_seconds(&value);
        assert!(
            (seconds - now).abs() <= 5,
            "{value:?} is not UTC now ({now})"
        );
    }

    // A value stored by another session in another zone reads back as UTC:
    // TIMESTAMP columns are converted to the reading session's zone.
    let mut other = database.conn();
    other.query_drop("SET time_zone = '+03:30'").unwrap();
    other
        .query_drop("INSERT INTO stamps (id, at, created_at) VALUES (2, '2024-01-01 00:00:00', '2024-01-01 03:30:00')")
        .unwrap();
    let stored: mysql::Value = db
        .run(in_seconds(5), |conn| {
            let value: Option<mysql::Value> =
                conn.exec_first("SELECT created_at FROM stamps WHERE id = 2", ())?;
            Ok(value.expect("the second row"))
        })
        .unwrap();
    assert_eq!(stored, mysql::Value::Date(2024, 1, 1, 0, 0, 0, 0));
}

/// Every column definition and every row of the tables, to compare states.
fn snapshot(conn: &mut mysql::Conn, tables: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for table in tables {
        let columns: Vec<(String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_DEFAULT FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (table,),
            )
            .unwrap();
        lines.push(format!("{table} columns {columns:?}"));
        let rows: Vec<mysql::Row> = conn
            .query(format!("SELECT * FROM {table} ORDER BY id"))
            .unwrap();
        for row in rows {
            lines.push(format!("{table} row {:?}", row.unwrap()));
        }
    }
    lines
}

fn has_index_starting_with(conn: &mut mysql::Conn, table: &str, columns: &[&str]) -> bool {
    let rows: Vec<(String, u32, String)> = conn
        .exec(
            "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (table,),
        )
        .unwrap();
    let mut names: Vec<&String> = rows.iter().map(|row| &row.0).collect();
    names.dedup();
    names.into_iter().any(|name| {
        let index_columns: Vec<&str> = rows
            .iter()
            .filter(|row| &row.0 == name)
            .map(|row| row.2.as_str())
            .collect();
        index_columns.starts_with(columns)
    })
}

/// Seconds since the epoch of a DATETIME or TIMESTAMP value read as UTC.
fn unix_seconds(value: &mysql::Value) -> i64 {
    let mysql::Value::Date(year, month, day, hour, minute, second, _) = *value else {
        panic!("not a date: {value:?}");
    };
    // Days from the civil date, counting years from March so leap days fall
    // at the end of a year.
    let (year, month) = (i64::from(year), i64::from(month));
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second)
}
