//! The subscription endpoint end to end: the server binary, a real MariaDB
//! database per test, and fake panels on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakepanel::{FakePanel, Kind, Mode, PanelConfig, TestPki};
use mysql::prelude::Queryable;

use crate::support::client::{self, Reply};
use crate::support::mariadb::TestDb;
use crate::support::process::Server;

const OWNER: i64 = 1001;
const KEY: &str = "AppKey-Secret-7";

fn vless(name: &str) -> String {
    format!("vless://11111111-2222-3333-4444-555555555555@vpn.example.com:443?security=tls#{name}")
}

/// A database with the schema and the seeding helpers the tests need.
struct World {
    db: TestDb,
}

impl World {
    fn new(label: &str) -> World {
        let db = TestDb::create(label);
        valhalla::db::schema::migrate(&mut db.conn()).unwrap();
        World { db }
    }

    fn exec(&self, sql: &str, params: impl Into<mysql::Params>) {
        self.db.conn().exec_drop(sql, params).unwrap();
    }

    fn app_user(&self, owner: i64, username: &str, key: &str) {
        self.exec(
            "INSERT INTO app_users (telegram_user_id, username, app_key) VALUES (?, ?, ?)",
            (owner, username, key),
        );
    }

    fn local_user(&self, owner: i64, username: &str, limit: i64, used: i64) -> i64 {
        let mut conn = self.db.conn();
        conn.exec_drop(
            "INSERT INTO local_users (owner_id, username, plan_limit_bytes, used_bytes) \
             VALUES (?, ?, ?, ?)",
            (owner, username, limit, used),
        )
        .unwrap();
        conn.last_insert_id() as i64
    }

    fn panel(&self, owner: i64, name: &str, panel: &FakePanel, panel_type: &str) -> i64 {
        self.panel_at(owner, name, &panel.url(), panel, panel_type)
    }

    /// A panel row whose URL names `panel` another way (by host name).
    fn panel_at(
        &self,
        owner: i64,
        name: &str,
        url: &str,
        panel: &FakePanel,
        panel_type: &str,
    ) -> i64 {
        let mut conn = self.db.conn();
        conn.exec_drop(
            "INSERT INTO panels (telegram_user_id, panel_url, name, panel_type, admin_username, \
             access_token) VALUES (?, ?, ?, ?, 'admin', ?)",
            (owner, url, name, panel_type, panel.token()),
        )
        .unwrap();
        conn.last_insert_id() as i64
    }

    fn link(&self, owner: i64, local: &str, panel_id: i64, remote: &str) {
        self.exec(
            "INSERT INTO local_user_panel_links (owner_id, local_username, panel_id, \
             remote_username) VALUES (?, ?, ?, ?)",
            (owner, local, panel_id, remote),
        );
    }

    /// An app user of `OWNER` with the test key and its local user; returns
    /// the local user's id.
    fn subscriber(&self, username: &str, limit: i64, used: i64) -> i64 {
        self.app_user(OWNER, username, KEY);
        self.local_user(OWNER, username, limit, used)
    }

    /// A panel of `OWNER` that `username` is linked to under its own name;
    /// returns the panel's id.
    fn linked_panel(&self, username: &str, name: &str, panel: &FakePanel, panel_type: &str) -> i64 {
        let id = self.panel(OWNER, name, panel, panel_type);
        self.link(OWNER, username, id, username);
        id
    }

    fn user_flag(&self, id: i64) -> i64 {
        self.db
            .conn()
            .exec_first(
                "SELECT disabled_pushed FROM local_users WHERE id = ?",
                (id,),
            )
            .unwrap()
            .unwrap()
    }

    fn server(&self, extra: &[(&str, &str)]) -> Server {
        let mut env = self.db.env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Server::start(&env)
    }
}

fn marzneshin() -> FakePanel {
    FakePanel::start(Kind::Marzneshin, PanelConfig::default())
}

fn marzban() -> FakePanel {
    FakePanel::start(Kind::Marzban, PanelConfig::default())
}

fn sub(server: &Server, username: &str, key: &str) -> Reply {
    client::get(server.addr, &format!("/sub/{username}/{key}/links"), &[]).unwrap()
}

fn lines(reply: &Reply) -> Vec<String> {
    reply.text().lines().map(str::to_string).collect()
}

fn disable_calls(panel: &FakePanel) -> usize {
    panel
        .calls()
        .iter()
        .filter(|call| {
            call.path.contains("disable") || call.method == "PUT" || call.path.contains("update")
        })
        .count()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_panel_with_a_private_ca_is_reached_once_panel_ca_file_names_it() {
    let world = World::new("panelca");
    let pki = TestPki::generate(&["localhost"]);
    let panel = FakePanel::start(
        Kind::Marzneshin,
        PanelConfig {
            tls: Some(pki.identity()),
            ..PanelConfig::default()
        },
    );
    panel.add_user("ali", vec![vless("private")]);
    world.subscriber("ali", 0, 0);
    let url = panel.url_with_host("localhost");
    let panel_id = world.panel_at(OWNER, "home", &url, &panel, "marzneshin");
    world.link(OWNER, "ali", panel_id, "ali");

    // Without the CA the certificate is refused: the panel is unavailable.
    let untrusting = world.server(&[]);
    let reply = sub(&untrusting, "ali", KEY);
    assert_eq!(
        lines(&reply),
        vec!["# home: unavailable"],
        "{}",
        reply.text()
    );
    drop(untrusting);

    let ca = std::env::temp_dir().join(format!("valhalla-panel-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let trusting = world.server(&[("PANEL_CA_FILE", ca.to_str().unwrap())]);
    let reply = sub(&trusting, "ali", KEY);
    std::fs::remove_file(&ca).unwrap();
    assert_eq!(lines(&reply), vec![vless("private")], "{}", reply.text());
}

/// The most calls the panel received within any `window` of time: with
/// answers that take longer than the window, calls that arrive that close
/// together were in flight at once.
fn most_calls_within(panel: &FakePanel, window: Duration) -> usize {
    let arrivals: Vec<u64> = panel.calls().iter().map(|call| call.at_ms).collect();
    let window = window.as_millis() as u64;
    arrivals
        .iter()
        .map(|&start| {
            arrivals
                .iter()
                .filter(|&&at| at >= start && at < start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn fetch_max_workers_bounds_the_panel_calls_of_one_request() {
    let world = World::new("fetchworkers");
    let panel = marzneshin();
    world.subscriber("ali", 0, 0);
    // Six panel rows on one fake panel, so every call lands in one log. A
    // panel URL is unique per owner, so the rows belong to other owners;
    // the user's links name them by id.
    let mut panel_ids = Vec::new();
    for index in 0..6 {
        let remote = format!("ali{index}");
        panel.add_user(&remote, vec![vless(&format!("P{index}"))]);
        let id = world.panel(
            OWNER + 1 + index,
            &format!("p{index}"),
            &panel,
            "marzneshin",
        );
        world.link(OWNER, "ali", id, &remote);
        panel_ids.push(id);
    }
    panel.set_mode(Mode::Latency(fakepanel::Latency::Fixed(
        Duration::from_millis(400),
    )));

    for (workers, expected) in [("2", 2), ("6", 6)] {
        panel.clear_calls();
        let server = world.server(&[("FETCH_MAX_WORKERS", workers), ("FETCH_CACHE_TTL", "0")]);
        let reply = sub(&server, "ali", KEY);
        assert_eq!(lines(&reply).len(), 6, "{}", reply.text());
        assert_eq!(
            most_calls_within(&panel, Duration::from_millis(300)),
            expected,
            "FETCH_MAX_WORKERS={workers}: {:?}",
            panel.calls()
        );

        // Every panel call is counted by panel, call and outcome, with its
        // duration, and every account missed the empty cache once.
        let metrics = client::get(server.addr, "/metrics", &[]).unwrap().text();
        for id in &panel_ids {
            let calls = format!(
                "valhalla_panel_calls_total{{panel_id=\"{id}\",call=\"links\",outcome=\"ok\"}} 1"
            );
            assert!(metrics.contains(&calls), "{calls} missing from {metrics}");
            let timed = format!(
                "valhalla_panel_call_duration_seconds_count{{panel_id=\"{id}\",call=\"links\"}} 1"
            );
            assert!(metrics.contains(&timed), "{timed} missing from {metrics}");
        }
        assert!(
            metrics.contains("valhalla_cache_misses_total{cache=\"panel_links\"} 6"),
            "{metrics}"
        );
    }
}

#[test]
fn links_from_every_panel_are_merged_in_link_order_without_duplicates() {
    let world = World::new("merge");
    let (first, second) = (marzneshin(), marzban());
    first.add_user(
        "ali",
        vec![vless("A1"), vless("shared"), "not a config".into()],
    );
    second.add_user(
        "ali_remote",
        vec![
            vless("B1"),
            vless("shared"),
            "  'trojan://pw@h:443#T'  ".into(),
        ],
    );
    world.subscriber("ali", 10_000, 2_500);
    let p1 = world.panel(OWNER, "Germany", &first, "marzneshin");
    let p2 = world.panel(OWNER, "Finland", &second, "marzban");
    // Linked in the other order than the panels were created: the links'
    // order decides.
    world.link(OWNER, "ali", p2, "ali_remote");
    world.link(OWNER, "ali", p1, "ali");
    let server = world.server(&[]);

    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        lines(&reply),
        vec![
            vless("B1"),
            vless("shared"),
            "trojan://pw@h:443#T".to_string(),
            vless("A1"),
        ]
    );
    assert!(reply.text().ends_with('\n'));
    assert_eq!(reply.header("X-Plan-Limit-Bytes"), Some("10000"));
    assert_eq!(reply.header("X-Used-Bytes"), Some("2500"));
    assert_eq!(reply.header("X-Remaining-Bytes"), Some("7500"));
    assert_eq!(reply.header("X-Disabled-Pushed"), Some("0"));
    assert_eq!(
        reply.header("subscription-userinfo"),
        Some("upload=0; download=2500; total=10000; expire=0")
    );
    assert!(
        reply
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(reply.header("profile-update-interval").is_some());
}

#[test]
fn an_unknown_owner_or_a_key_in_the_wrong_case_is_404() {
    let world = World::new("owner404");
    world.subscriber("ali", 0, 0);
    let server = world.server(&[]);
    assert_eq!(sub(&server, "nobody", KEY).status, 404);
    assert_eq!(sub(&server, "ali", &KEY.to_lowercase()).status, 404);
    assert_eq!(sub(&server, "ali", KEY).status, 200);
}

#[test]
fn a_known_owner_without_that_local_user_gets_an_empty_answer() {
    let world = World::new("nouser");
    world.app_user(OWNER, "ghost", KEY);
    let server = world.server(&[]);
    let reply = sub(&server, "ghost", KEY);
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    let page = client::get(
        server.addr,
        &format!("/sub/ghost/{KEY}/links"),
        &[("Accept", "text/html")],
    )
    .unwrap();
    assert_eq!(page.status, 404);
    assert!(
        page.header("Content-Type")
            .unwrap()
            .starts_with("text/html")
    );
}

#[test]
fn disabled_names_and_numbers_filter_each_panel() {
    let world = World::new("filters");
    let panel = marzneshin();
    panel.add_user(
        "ali",
        vec![
            "# a comment line".into(),
            vless("Keep%201"),
            vless("Drop%20me%20%F0%9F%91%A4%20ali%201.5GB%2F10GB"),
            vless("Third"),
            vless("Keep%202"),
        ],
    );
    world.subscriber("ali", 0, 0);
    let id = world.linked_panel("ali", "P", &panel, "marzneshin");
    world.exec(
        "INSERT INTO panel_disabled_configs (telegram_user_id, panel_id, config_name) VALUES (?, ?, 'Drop me')",
        (OWNER, id),
    );
    // Position 3 among the config links (the comment line does not count).
    world.exec(
        "INSERT INTO panel_disabled_numbers (telegram_user_id, panel_id, config_index) VALUES (?, ?, 3)",
        (OWNER, id),
    );
    let server = world.server(&[]);
    assert_eq!(
        lines(&sub(&server, "ali", KEY)),
        vec![vless("Keep%201"), vless("Keep%202")]
    );
}

#[test]
fn a_user_without_links_is_looked_up_on_every_owner_panel() {
    let world = World::new("fallback");
    let (first, second) = (marzneshin(), marzban());
    first.add_user("sara", vec![vless("S1")]);
    second.add_user("sara", vec![vless("S2")]);
    world.subscriber("sara", 0, 0);
    world.panel(OWNER, "one", &first, "marzneshin");
    world.panel(OWNER, "two", &second, "marzban");
    let server = world.server(&[]);
    assert_eq!(
        lines(&sub(&server, "sara", KEY)),
        vec![vless("S1"), vless("S2")]
    );
}

#[test]
fn admins_share_their_users() {
    let world = World::new("admins");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    // The app user belongs to admin 1; the local user and panel to admin 2.
    world.app_user(1, "ali", KEY);
    world.local_user(2, "ali", 0, 0);
    let id = world.panel(2, "P", &panel, "marzneshin");
    world.link(2, "ali", id, "ali");
    let shared = world.server(&[("ADMIN_IDS", "1,2")]);
    assert_eq!(lines(&sub(&shared, "ali", KEY)), vec![vless("A")]);
    drop(shared);
    let separate = world.server(&[]);
    let reply = sub(&separate, "ali", KEY);
    assert_eq!((reply.status, reply.body.len()), (200, 0));
}

#[test]
fn a_user_over_quota_is_disabled_once_and_told_why() {
    let world = World::new("quota");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    let user = world.subscriber("ali", 1_000, 1_000);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[]);

    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("X-Remaining-Bytes"), Some("0"));
    assert_eq!(reply.header("X-Disabled-Pushed"), Some("1"));
    assert_eq!(reply.header("X-Plan-Limit-Bytes"), Some("1000"));
    let body = lines(&reply);
    assert_eq!(body.len(), 1, "one notice line: {body:?}");
    assert!(
        !body[0].contains("vpn.example.com"),
        "no real config for a blocked user"
    );

    wait_until("the remote disable", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false)
    });
    wait_until("the confirmed flag", Duration::from_secs(5), || {
        world.user_flag(user) == 1
    });
    for _ in 0..3 {
        assert_eq!(
            sub(&server, "ali", KEY).header("X-Disabled-Pushed"),
            Some("1")
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(panel.disabled_users(), vec!["ali".to_string()]);
}

#[test]
fn an_expired_user_is_blocked_in_utc() {
    let world = World::new("expired");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    let user = world.subscriber("ali", 0, 0);
    world.exec(
        "UPDATE local_users SET expire_at = UTC_TIMESTAMP() - INTERVAL 1 MINUTE WHERE id = ?",
        (user,),
    );
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[]);
    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.header("X-Disabled-Pushed"), Some("1"));
    wait_until("the remote disable", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false)
    });

    // One minute ahead, in UTC, is still active.
    world.exec(
        "UPDATE local_users SET expire_at = UTC_TIMESTAMP() + INTERVAL 1 MINUTE, disabled_pushed = 0 WHERE id = ?",
        (user,),
    );
    let reply = sub(&server, "ali", KEY);
    assert_eq!(lines(&reply), vec![vless("A")]);
}

#[test]
fn a_blocked_agent_disables_every_account_of_its_users() {
    let world = World::new("agent");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    panel.add_user("bob", vec![vless("B")]);
    world.subscriber("ali", 0, 0);
    world.local_user(OWNER, "bob", 0, 0);
    let id = world.linked_panel("ali", "P", &panel, "marzneshin");
    world.link(OWNER, "bob", id, "bob");
    world.exec(
        "INSERT INTO agents (telegram_user_id, name, plan_limit_bytes, total_used_bytes, active) \
         VALUES (?, 'reseller', 100, 150, 1)",
        (OWNER,),
    );
    let server = world.server(&[]);
    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("X-Disabled-Pushed"),
        Some("1"),
        "a blocked agent's users get the X- headers"
    );
    wait_until("both disables", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false) && panel.user_enabled("bob") == Some(false)
    });
    wait_until("the agent's confirmed flag", Duration::from_secs(5), || {
        let flag: Option<i64> = world
            .db
            .conn()
            .query_first("SELECT disabled_pushed FROM agents")
            .unwrap();
        flag == Some(1)
    });
    let page = client::get(
        server.addr,
        &format!("/sub/ali/{KEY}/links"),
        &[("Accept", "text/html")],
    )
    .unwrap();
    assert!(
        page.text().contains("data-state=\"disabled\""),
        "the page must not say active"
    );
}

#[test]
fn an_expired_agent_blocks_its_users_under_quota() {
    let world = World::new("agentexpired");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    world.exec(
        "INSERT INTO agents (telegram_user_id, name, plan_limit_bytes, total_used_bytes, \
         expire_at, active) VALUES (?, 'reseller', 0, 0, UTC_TIMESTAMP() - INTERVAL 1 HOUR, 1)",
        (OWNER,),
    );
    let server = world.server(&[]);
    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("X-Disabled-Pushed"), Some("1"));
    assert!(!reply.text().contains(&vless("A")), "{}", reply.text());
    wait_until("the disable", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false)
    });
}

#[test]
fn a_blocked_user_without_links_is_disabled_on_every_owner_panel() {
    let world = World::new("blocknolinks");
    let (first, second) = (marzneshin(), marzban());
    first.add_user("ali", vec![vless("A")]);
    second.add_user("ali", vec![vless("B")]);
    world.subscriber("ali", 10, 20);
    world.panel(OWNER, "first", &first, "marzneshin");
    world.panel(OWNER, "second", &second, "marzban");
    let server = world.server(&[]);

    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("X-Disabled-Pushed"), Some("1"));
    wait_until(
        "the disable on both panels",
        Duration::from_secs(10),
        || first.user_enabled("ali") == Some(false) && second.user_enabled("ali") == Some(false),
    );
}

#[test]
fn a_failed_disable_is_retried_until_the_panel_confirms() {
    let world = World::new("retry");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    panel.set_mode(Mode::Status500);
    let user = world.subscriber("ali", 10, 10);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[]);

    sub(&server, "ali", KEY);
    server.wait_for_line("disable failed on a panel", Duration::from_secs(10));
    let pending: Option<i64> = world
        .db
        .conn()
        .exec_first(
            "SELECT attempts FROM valhalla_disable_retries WHERE subject_id = ?",
            (user,),
        )
        .unwrap();
    assert_eq!(pending, Some(1));
    assert_eq!(
        world.user_flag(user),
        0,
        "the flag waits until a panel confirms"
    );

    // Before the back-off ends, nothing is retried.
    let before = disable_calls(&panel);
    sub(&server, "ali", KEY);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(disable_calls(&panel), before);

    panel.set_mode(Mode::Normal);
    world.exec(
        "UPDATE valhalla_disable_retries SET next_attempt_at = UTC_TIMESTAMP() - INTERVAL 1 SECOND",
        (),
    );
    sub(&server, "ali", KEY);
    wait_until("the retried disable", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false)
    });
    wait_until("the retry row to go", Duration::from_secs(5), || {
        let left: Option<i64> = world
            .db
            .conn()
            .query_first("SELECT COUNT(*) FROM valhalla_disable_retries")
            .unwrap();
        left == Some(0)
    });
    assert_eq!(world.user_flag(user), 1);
    let metrics = client::get(server.addr, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("valhalla_disables_total{panel_id=\""),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"failed\"") && metrics.contains("outcome=\"pushed\""));
}

#[test]
fn a_dead_panel_is_named_without_its_url_or_error() {
    let world = World::new("dead");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    panel.set_mode(Mode::Garbage);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "Berlin", &panel, "marzneshin");
    let server = world.server(&[]);
    let reply = sub(&server, "ali", KEY);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "# Berlin: unavailable\n");
    let text = reply.text();
    assert!(!text.contains("127.0.0.1") && !text.contains(&panel.token()));
    assert!(
        !server.output().contains(&panel.token()),
        "the token never reaches the log"
    );
}

#[test]
fn each_fault_mode_costs_only_its_own_panel() {
    for (label, mode) in [
        ("reset", Mode::Reset),
        ("status500", Mode::Status500),
        ("garbage", Mode::Garbage),
        ("hang", Mode::Hang),
    ] {
        let world = World::new(label);
        let (good, bad) = (marzneshin(), marzneshin());
        good.add_user("ali", vec![vless("Good")]);
        bad.add_user("ali", vec![vless("Bad")]);
        bad.set_mode(mode);
        world.subscriber("ali", 0, 0);
        let good_id = world.panel(OWNER, "good", &good, "marzneshin");
        world.linked_panel("ali", "bad", &bad, "marzneshin");
        world.link(OWNER, "ali", good_id, "ali");
        let server = world.server(&[("PANEL_LINK_TIMEOUT", "1"), ("PANEL_USER_TIMEOUT", "1")]);
        let started = Instant::now();
        let reply = sub(&server, "ali", KEY);
        assert_eq!(lines(&reply), vec![vless("Good")], "{label}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{label}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn panel_calls_stop_before_the_request_deadline_with_what_arrived() {
    let world = World::new("deadline");
    let (fast, slow) = (marzneshin(), marzneshin());
    fast.add_user("ali", vec![vless("Fast")]);
    slow.add_user("ali", vec![vless("Slow")]);
    slow.set_mode(Mode::Hang);
    world.subscriber("ali", 0, 0);
    let slow_id = world.panel(OWNER, "slow", &slow, "marzneshin");
    let fast_id = world.panel(OWNER, "fast", &fast, "marzneshin");
    world.link(OWNER, "ali", slow_id, "ali");
    world.link(OWNER, "ali", fast_id, "ali");
    let server = world.server(&[("REQUEST_TIMEOUT", "2")]);
    let started = Instant::now();
    let reply = sub(&server, "ali", KEY);
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(lines(&reply), vec![vless("Fast")]);
    assert!(elapsed < Duration::from_secs(2), "answered in {elapsed:?}");
    assert!(
        elapsed > Duration::from_millis(1500),
        "waited for the slow panel: {elapsed:?}"
    );
}

#[test]
fn a_failing_panel_serves_its_last_good_answer() {
    let world = World::new("stale");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[("FETCH_CACHE_TTL", "0")]);
    assert_eq!(lines(&sub(&server, "ali", KEY)), vec![vless("A")]);
    panel.set_mode(Mode::Status500);
    assert_eq!(lines(&sub(&server, "ali", KEY)), vec![vless("A")]);
    let metrics = client::get(server.addr, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("valhalla_cache_stale_total{cache=\"panel_links\"} 1"),
        "{metrics}"
    );
}

#[test]
fn the_cache_answers_repeat_requests_without_calling_the_panel() {
    let world = World::new("cache");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[]);
    sub(&server, "ali", KEY);
    let calls = panel.call_count();
    for _ in 0..5 {
        assert_eq!(lines(&sub(&server, "ali", KEY)), vec![vless("A")]);
    }
    assert_eq!(panel.call_count(), calls);
}

#[test]
fn head_answers_the_quota_headers_without_calling_panels() {
    let world = World::new("head");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 5_000, 1_000);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let server = world.server(&[]);
    let reply =
        client::request(server.addr, "HEAD", &format!("/sub/ali/{KEY}/links"), &[]).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("subscription-userinfo"),
        Some("upload=0; download=1000; total=5000; expire=0")
    );
    assert_eq!(panel.call_count(), 0);
}

#[test]
fn browsers_get_the_status_page() {
    let world = World::new("page");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "home", &panel, "marzneshin");
    let server = world.server(&[("PUBLIC_BASE_URL", "https://sub.example.com")]);
    let browser = [
        ("Accept", "Text/HTML,application/xhtml+xml"),
        ("Accept-Language", "en-US,en;q=0.9"),
    ];
    let page = client::get(server.addr, &format!("/sub/ali/{KEY}/links"), &browser).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("https://sub.example.com/sub/ali/"), "{html}");
    assert!(html.contains("data-state=\"active\""));
    assert_eq!(
        page.header("profile-web-page-url"),
        Some(format!("https://sub.example.com/sub/ali/{KEY}/links").as_str())
    );
    assert_eq!(
        panel.call_count(),
        0,
        "the page shows no links, so no panel is asked: {:?}",
        panel.calls()
    );

    // A wrong key gets the friendly page with 404, and no panel is asked.
    let wrong = client::get(server.addr, "/sub/ali/not-the-key/links", &browser).unwrap();
    assert_eq!(wrong.status, 404);
    assert_eq!(
        wrong.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(!wrong.text().contains(KEY));
    assert_eq!(panel.call_count(), 0);
}

#[test]
fn client_headers_carry_the_quota_the_title_and_the_file_name() {
    let world = World::new("clientheaders");
    let panel = marzneshin();
    let persian = "\u{0639}\u{0644}\u{06CC}";
    panel.add_user("remote", vec![vless("A")]);
    world.app_user(OWNER, persian, KEY);
    world.local_user(OWNER, persian, 50 << 30, 12 << 30);
    let id = world.panel(OWNER, "home", &panel, "marzneshin");
    world.link(OWNER, persian, id, "remote");
    let server = world.server(&[("PROFILE_UPDATE_INTERVAL", "6")]);

    let path = format!("/sub/%D8%B9%D9%84%DB%8C/{KEY}/links");
    let reply = client::get(server.addr, &path, &[]).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(lines(&reply), vec![vless("A")]);
    assert_eq!(reply.header("profile-update-interval"), Some("6"));
    assert_eq!(
        reply.header("subscription-userinfo"),
        Some(
            format!(
                "upload=0; download={}; total={}; expire=0",
                12u64 << 30,
                50u64 << 30
            )
            .as_str()
        )
    );
    // Non-ASCII titles travel base64-encoded, as clients expect.
    assert_eq!(reply.header("profile-title"), Some("base64:2LnZhNuM"));
    let disposition = reply.header("content-disposition").expect("a file name");
    assert!(
        disposition.contains("filename*=UTF-8''%D8%B9%D9%84%DB%8C"),
        "{disposition}"
    );
}

#[test]
fn a_slow_panel_does_not_delay_users_on_other_panels() {
    let world = World::new("slow");
    let (slow, fast) = (marzneshin(), marzneshin());
    slow.set_mode(Mode::Latency(fakepanel::Latency::Fixed(
        Duration::from_secs(10),
    )));
    world.app_user(OWNER, "slowuser", KEY);
    world.app_user(OWNER, "fastuser", KEY);
    world.local_user(OWNER, "slowuser", 0, 0);
    world.local_user(OWNER, "fastuser", 0, 0);
    let slow_id = world.panel(OWNER, "slow", &slow, "marzneshin");
    let fast_id = world.panel(OWNER, "fast", &fast, "marzneshin");
    slow.add_user("slowuser", vec![vless("S")]);
    fast.add_user("fastuser", vec![vless("F")]);
    world.link(OWNER, "slowuser", slow_id, "slowuser");
    world.link(OWNER, "fastuser", fast_id, "fastuser");
    let server = Arc::new(world.server(&[("WORKERS", "1"), ("MYSQL_POOL_SIZE", "2")]));

    let stuck: Vec<_> = (0..16)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || sub(&server, "slowuser", KEY))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(lines(&sub(&server, "fastuser", KEY)), vec![vless("F")]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    for handle in stuck {
        assert_eq!(lines(&handle.join().unwrap()), vec![vless("S")]);
    }
}

#[test]
fn disable_happens_once_under_200_concurrent_requests_from_two_processes() {
    let world = World::new("once");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    let user = world.subscriber("ali", 100, 500);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    let servers = [Arc::new(world.server(&[])), Arc::new(world.server(&[]))];

    let barrier = Arc::new(std::sync::Barrier::new(200));
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let server = Arc::clone(&servers[i % 2]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                sub(&server, "ali", KEY).status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.join().unwrap(), 200);
    }
    wait_until("the disable", Duration::from_secs(10), || {
        panel.user_enabled("ali") == Some(false)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(panel.disabled_users(), vec!["ali".to_string()]);
    assert_eq!(disable_calls(&panel), 1);
    wait_until("the confirmed flag", Duration::from_secs(5), || {
        world.user_flag(user) == 1
    });
}

#[test]
fn a_3x_ui_panel_gives_links_for_every_listed_client() {
    let world = World::new("xui");
    let panel = FakePanel::start(Kind::Xui, PanelConfig::default());
    panel.add_inbound(serde_json::json!({
        "remark": "DE-reality",
        "port": 443,
        "protocol": "vless",
        "enable": true,
        "settings": {"clients": [], "decryption": "none"},
        "streamSettings": {
            "network": "tcp",
            "security": "reality",
            "realitySettings": {
                "serverNames": ["www.example.com"],
                "shortIds": ["ab12"],
                "settings": {"publicKey": "PUBKEY", "fingerprint": "chrome"}
            }
        }
    }));
    panel.add_user("ali-phone", vec![]);
    panel.add_user("ali-laptop", vec![]);
    world.subscriber("ali", 0, 0);
    let id = world.panel(OWNER, "X", &panel, "sanaei");
    world.link(OWNER, "ali", id, "ali-phone,ali-laptop");
    let server = world.server(&[]);
    let body = lines(&sub(&server, "ali", KEY));
    // The fake panel has two inbounds of its own besides this one: three
    // inbounds for each of the two clients.
    assert_eq!(body.len(), 6, "{body:?}");
    let reality: Vec<&String> = body
        .iter()
        .filter(|link| link.ends_with("#DE-reality"))
        .collect();
    assert_eq!(reality.len(), 2, "{body:?}");
    assert_ne!(reality[0], reality[1], "one link per client");
    for link in reality {
        assert!(link.starts_with("vless://"), "{link}");
        assert!(
            link.contains("security=reality") && link.contains("pbk=PUBKEY"),
            "{link}"
        );
        assert!(
            link.contains("sni=www.example.com") && link.contains("sid=ab12"),
            "{link}"
        );
    }
}

/// Holds a write lock on `app_users` from another connection, so every
/// lookup of the server waits on it while holding its pool connection.
fn lock_app_users(world: &World) -> mysql::Conn {
    let mut conn = world.db.conn();
    conn.query_drop("LOCK TABLES app_users WRITE").unwrap();
    conn
}

#[test]
fn an_exhausted_pool_answers_503_at_once_and_says_so_in_the_log() {
    let world = World::new("exhausted");
    world.subscriber("ali", 0, 0);
    let server = Arc::new(world.server(&[
        ("MYSQL_POOL_SIZE", "1"),
        ("MYSQL_ACQUIRE_TIMEOUT_MS", "20"),
        ("REQUEST_TIMEOUT", "20"),
    ]));
    let mut lock = lock_app_users(&world);

    let holder = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || sub(&server, "ali", KEY))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let refused = sub(&server, "ali", KEY);
    let elapsed = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.header("Retry-After").is_some());
    assert!(
        elapsed < Duration::from_millis(100),
        "refused after {elapsed:?}"
    );
    server.wait_for_line(
        "MySQL connection pool exhausted; consider increasing MYSQL_POOL_SIZE",
        Duration::from_secs(2),
    );

    lock.query_drop("UNLOCK TABLES").unwrap();
    assert_eq!(holder.join().unwrap().status, 200);
    let metrics = client::get(server.addr, "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("valhalla_db_pool_exhausted_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_request_past_its_deadline_gets_504() {
    let world = World::new("gateway");
    world.subscriber("ali", 0, 0);
    let server = world.server(&[("REQUEST_TIMEOUT", "1")]);
    let mut lock = lock_app_users(&world);
    let started = Instant::now();
    let reply = sub(&server, "ali", KEY);
    let elapsed = started.elapsed();
    lock.query_drop("UNLOCK TABLES").unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        !reply.text().to_lowercase().contains("mysql"),
        "no internals: {}",
        reply.text()
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(
        lines(&sub(&server, "ali", KEY)).len(),
        0,
        "serves again after the lock"
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let world = World::new("inflight");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 0, 0);
    world.linked_panel("ali", "P", &panel, "marzneshin");
    panel.set_mode(Mode::Latency(fakepanel::Latency::Fixed(
        Duration::from_millis(1500),
    )));
    let mut server = world.server(&[("SHUTDOWN_GRACE", "10")]);
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || {
        client::get(addr, &format!("/sub/ali/{KEY}/links"), &[]).unwrap()
    });
    std::thread::sleep(Duration::from_millis(400));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        client::get(addr, "/healthz", &[]).is_err(),
        "no new connections after SIGTERM"
    );
    let reply = in_flight.join().unwrap();
    assert_eq!(lines(&reply), vec![vless("A")]);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.output());
}

#[test]
fn a_user_under_quota_costs_one_database_round_trip() {
    let world = World::new("roundtrip");
    let panel = marzneshin();
    panel.add_user("ali", vec![vless("A")]);
    world.subscriber("ali", 1_000_000, 10);
    world.exec(
        "INSERT INTO agents (telegram_user_id, name, plan_limit_bytes, total_used_bytes) \
         VALUES (?, 'reseller', 0, 0)",
        (OWNER,),
    );
    let id = world.linked_panel("ali", "P", &panel, "marzneshin");
    world.exec(
        "INSERT INTO panel_disabled_numbers (telegram_user_id, panel_id, config_index) VALUES (?, ?, 9)",
        (OWNER, id),
    );
    let proxy = crate::support::proxy::Proxy::start(crate::support::loopback(world.db.port), true);
    let mut env: Vec<(&str, String)> = vec![("MYSQL_POOL_SIZE", "1".into())];
    env.push(("MYSQL_PORT", proxy.port.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = world.server(&env);

    // The first request prepares the statement on the pool's connection.
    assert_eq!(lines(&sub(&server, "ali", KEY)), vec![vless("A")]);
    let before = proxy.commands();
    for _ in 0..5 {
        assert_eq!(lines(&sub(&server, "ali", KEY)), vec![vless("A")]);
    }
    assert_eq!(proxy.commands() - before, 5, "one statement per request");
}
