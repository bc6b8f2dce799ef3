//! The `valhalla` binary end to end: configuration errors, startup against a
//! database that is late or missing, the operational routes, subcommands,
//! logs and signals.

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::support::client;
use crate::support::mariadb::TestDb;
use crate::support::process::{self, Server};
use crate::support::proxy::Proxy;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn with_db(db: &TestDb, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = db.env();
    all.extend(env(pairs));
    all
}

fn run_to_end(args: &[&str], vars: &[(String, String)]) -> (i32, String, String) {
    let output = process::command(vars)
        .args(args)
        .output()
        .expect("run valhalla");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_stops_startup_with_one_line_per_problem() {
    let (code, _, stderr) = run_to_end(
        &[],
        &env(&[
            ("MYSQL_POOL_SIZE", "abc"),
            ("FLASK_PORT", "http"),
            ("MYSQL_PASSWORD", "do-not-print-me"),
            ("SSL_KEY_PATH", "/nowhere/key.pem"),
        ]),
    );
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        vec![
            "valhalla: config: FLASK_PORT must be a port number, got \"http\"",
            "valhalla: config: SSL_KEY_PATH is set but SSL_CERT_PATH is not (both are needed for HTTPS)",
            "valhalla: config: MYSQL_POOL_SIZE must be a positive integer up to 10000, got \"abc\"",
        ]
    );
    assert!(!stderr.contains("do-not-print-me"));
}

#[test]
fn a_missing_certificate_file_is_named() {
    let (code, _, stderr) = run_to_end(
        &[],
        &env(&[
            ("SSL_CERT_PATH", "/nowhere/fullchain.pem"),
            ("SSL_KEY_PATH", "/nowhere/privkey.pem"),
        ]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("valhalla: config: "), "{stderr}");
    assert!(stderr.contains("/nowhere/fullchain.pem"), "{stderr}");
}

#[test]
fn an_unusable_panel_ca_file_is_named() {
    let (code, _, stderr) = run_to_end(&[], &env(&[("PANEL_CA_FILE", "/nowhere/panel-ca.pem")]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("valhalla: config: PANEL_CA_FILE /nowhere/panel-ca.pem: cannot read"),
        "{stderr}"
    );

    let garbage = std::env::temp_dir().join(format!("valhalla-ca-{}.pem", std::process::id()));
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (code, _, stderr) = run_to_end(&[], &env(&[("PANEL_CA_FILE", garbage.to_str().unwrap())]));
    std::fs::remove_file(&garbage).unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("PANEL_CA_FILE {}", garbage.display())),
        "{stderr}"
    );
}

#[test]
fn unknown_arguments_are_a_usage_error() {
    let (code, _, stderr) = run_to_end(&["serve", "--now"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("usage: valhalla"), "{stderr}");
}

#[test]
fn dotenv_in_the_working_directory_is_read_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("valhalla-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "FLASK_PORT=notaport\nWORKERS=zero\n").unwrap();
    let output = process::command(&env(&[("WORKERS", "2")]))
        .current_dir(&dir)
        .output()
        .expect("run valhalla");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "valhalla: config: FLASK_PORT must be a port number, got \"notaport\""
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_dotenv_line_stops_startup_without_showing_its_value() {
    let dir = std::env::temp_dir().join(format!("valhalla-dotenv-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "FLASK_PORT=5000\nMYSQL_PASSWORD=\"Unclosed-S3cret\nWORKERS=2\n",
    )
    .unwrap();
    let output = process::command(&[])
        .current_dir(&dir)
        .output()
        .expect("run valhalla");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(".env line 2 (MYSQL_PASSWORD)"), "{stderr}");
    assert!(!stderr.contains("S3cret"), "{stderr}");
}

#[test]
fn the_database_password_never_reaches_the_output() {
    let db = TestDb::create("password");
    let vars = with_db(
        &db,
        &[
            ("MYSQL_PASSWORD", "Wr0ng-But-S3cret"),
            ("MYSQL_STARTUP_WAIT", "1"),
            ("LOG_LEVEL", "debug"),
        ],
    );
    let (code, stdout, stderr) = run_to_end(&["serve"], &vars);
    assert_eq!(code, 1, "{stderr}");
    let output = format!("{stdout}{stderr}");
    assert!(
        output.contains("pool="),
        "the startup summary is missing: {output}"
    );
    assert!(!output.contains("S3cret"), "{output}");
}

#[test]
fn serves_operational_routes_and_creates_the_schema() {
    let db = TestDb::create("ops");
    let server = Server::start(&with_db(&db, &[]));

    let tables: Vec<String> = db.conn().query("SHOW TABLES").unwrap();
    for table in [
        "app_users",
        "local_users",
        "agents",
        "panels",
        "local_user_panel_links",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }

    let health = client::get(server.addr, "/healthz", &[]).unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let ready = client::get(server.addr, "/readyz", &[]).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());

    let missing = client::get(server.addr, "/nothing-here", &[]).unwrap();
    assert_eq!(missing.status, 404);

    let post =
        client::request(server.addr, "POST", "/healthz", &[("Content-Length", "0")]).unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));

    let metrics = client::get(server.addr, "/metrics", &[]).unwrap();
    let text = metrics.text();
    assert_eq!(metrics.status, 200);
    assert!(
        text.contains("valhalla_http_requests_total{route=\"healthz\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("valhalla_http_requests_total{route=\"not_found\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("valhalla_db_pool_size"), "{text}");
    assert!(text.contains("valhalla_db_pool_exhausted_total"), "{text}");

    server.wait_for_line("/nothing-here", Duration::from_secs(5));
}

#[test]
fn access_log_is_json_on_request_and_never_shows_the_app_key() {
    let db = TestDb::create("json");
    let server = Server::start(&with_db(
        &db,
        &[("LOG_FORMAT", "json"), ("LOG_LEVEL", "info")],
    ));
    let _ = client::get(server.addr, "/sub/ali/Sup3rS3cretKey/links?x=1", &[]).unwrap();
    let line = server.wait_for_line("/sub/ali/", Duration::from_secs(5));
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["path"], "/sub/ali/<redacted>/links");
    assert_eq!(record["method"], "GET");
    assert!(
        record["status"].is_u64() && record["bytes"].is_u64(),
        "{line}"
    );
    assert!(!server.output().contains("Sup3rS3cretKey"));
    let startup = server.wait_for_line("\"starting\"", Duration::from_secs(1));
    assert!(startup.contains("pool="), "{startup}");
}

#[test]
fn waits_for_a_database_that_comes_up_late() {
    let db = TestDb::create("late");
    let proxy = Proxy::start(crate::support::loopback(db.port), false);
    let mut vars = with_db(&db, &[("MYSQL_STARTUP_WAIT", "30")]);
    vars.retain(|(name, _)| name != "MYSQL_PORT");
    vars.push(("MYSQL_PORT".into(), proxy.port.to_string()));
    let server = Server::spawn(&vars);

    server.wait_for_line("database not reachable yet", Duration::from_secs(10));
    assert!(
        client::get(server.addr, "/healthz", &[]).is_err(),
        "must not serve before the schema"
    );
    proxy.up();
    server.wait_healthy(Duration::from_secs(20));
    assert_eq!(
        client::get(server.addr, "/readyz", &[]).unwrap().status,
        200
    );
}

#[test]
fn gives_up_on_a_database_that_never_comes() {
    let port = crate::support::free_port();
    let (code, stdout, stderr) = run_to_end(
        &["migrate"],
        &env(&[
            ("MYSQL_PORT", &port.to_string()),
            ("MYSQL_STARTUP_WAIT", "1"),
        ]),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn readiness_follows_the_database_while_serving() {
    let db = TestDb::create("restart");
    let proxy = Proxy::start(crate::support::loopback(db.port), true);
    let mut vars = with_db(&db, &[]);
    vars.retain(|(name, _)| name != "MYSQL_PORT");
    vars.push(("MYSQL_PORT".into(), proxy.port.to_string()));
    let server = Server::start(&vars);
    assert_eq!(
        client::get(server.addr, "/readyz", &[]).unwrap().status,
        200
    );

    proxy.down();
    let during = client::get(server.addr, "/readyz", &[]).unwrap();
    assert_eq!(during.status, 503);
    assert!(
        !during.text().contains(&proxy.port.to_string()),
        "no internals in the body"
    );
    assert_eq!(
        client::get(server.addr, "/healthz", &[]).unwrap().status,
        200
    );

    proxy.up();
    let started = Instant::now();
    loop {
        if client::get(server.addr, "/readyz", &[]).unwrap().status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn migrate_creates_tables_and_is_idempotent() {
    let db = TestDb::create("migrate");
    let (code, stdout, stderr) = run_to_end(&["migrate"], &with_db(&db, &[]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let count: Option<u64> = db
        .conn()
        .query_first(format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}'",
            db.name
        ))
        .unwrap();
    assert!(count.unwrap() >= 12, "{count:?}");
    let (again, stdout, stderr) = run_to_end(&["migrate"], &with_db(&db, &[]));
    assert_eq!(again, 0, "{stdout}{stderr}");
}

#[test]
fn healthcheck_reports_the_local_server() {
    let db = TestDb::create("health");
    let server = Server::start(&with_db(&db, &[]));
    let port = server.addr.port().to_string();
    let (code, stdout, _) = run_to_end(
        &["healthcheck"],
        &env(&[("FLASK_PORT", &port), ("FLASK_HOST", "0.0.0.0")]),
    );
    assert_eq!(code, 0, "{stdout}");
    drop(server);
    let (code, _, stderr) = run_to_end(&["healthcheck"], &env(&[("FLASK_PORT", &port)]));
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn sigterm_and_sigint_stop_the_server_cleanly() {
    let db = TestDb::create("signals");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(&with_db(&db, &[("SHUTDOWN_GRACE", "5")]));
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "signal {signal}: {}",
            server.output()
        );
        server.wait_for_line("stopped", Duration::from_secs(1));
    }
}
