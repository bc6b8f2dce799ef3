//! The outbound client and the panel clients against fake panels on loopback.
//!
//! Every call runs inside a may coroutine, as in the server.

use std::time::{Duration, Instant};

use fakepanel::{FakePanel, Kind, Latency, LinksFormat, Mode, PanelConfig, TestPki, V2rayMode};
use serde_json::json;
use valhalla::upstream::{
    CallClass, Client, ClientOptions, OutboundRequest, PanelError, PanelKind, PanelRef, Panels,
    RemoteUser, UpstreamError,
};

/// Runs `f` in a may coroutine with the server's stack size and waits for it.
fn in_coroutine<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = may::go_with!(64 * 1024, f).expect("spawn coroutine");
    handle.join().expect("coroutine panicked")
}

fn options() -> ClientOptions {
    ClientOptions {
        user_timeout: Duration::from_secs(5),
        link_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn panels_with(opts: ClientOptions) -> Panels {
    Panels::new(Client::new(opts).expect("client"))
}

fn panels() -> Panels {
    panels_with(options())
}

/// An owned panel row, so it can move into a coroutine.
#[derive(Clone)]
struct Row {
    kind: PanelKind,
    url: String,
    token: String,
}

impl Row {
    fn of(panel: &FakePanel, kind: PanelKind) -> Row {
        Row {
            kind,
            url: panel.url(),
            token: panel.token(),
        }
    }

    fn panel_ref(&self) -> PanelRef<'_> {
        PanelRef {
            id: 7,
            name: "fake",
            kind: self.kind,
            base_url: &self.url,
            token: &self.token,
        }
    }
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn fetch_links(panels: &Panels, row: &Row, user: &str) -> Result<Vec<String>, PanelError> {
    let (panels, row, user) = (panels.clone(), row.clone(), user.to_owned());
    in_coroutine(move || panels.fetch_links(&row.panel_ref(), &user, deadline()))
}

fn fetch_user(panels: &Panels, row: &Row, user: &str) -> Result<Option<RemoteUser>, PanelError> {
    let (panels, row, user) = (panels.clone(), row.clone(), user.to_owned());
    in_coroutine(move || panels.fetch_user(&row.panel_ref(), &user, deadline()))
}

fn disable_user(panels: &Panels, row: &Row, user: &str) -> Result<(), PanelError> {
    let (panels, row, user) = (panels.clone(), row.clone(), user.to_owned());
    in_coroutine(move || panels.disable_user(&row.panel_ref(), &user, deadline()))
}

fn links(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("vless://id-{n}@example.com:443?security=tls#{n}"))
        .collect()
}

fn paths(panel: &FakePanel) -> Vec<String> {
    panel
        .calls()
        .into_iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

#[test]
fn marzneshin_links_in_every_format() {
    for format in [
        LinksFormat::JsonList,
        LinksFormat::JsonObject,
        LinksFormat::Text,
    ] {
        let panel = FakePanel::start(
            Kind::Marzneshin,
            PanelConfig {
                links_format: format,
                ..PanelConfig::default()
            },
        );
        panel.add_user("ali", links(&["a", "b"]));
        let row = Row::of(&panel, PanelKind::Marzneshin);

        let got = fetch_links(&panels(), &row, "ali").unwrap();

        assert_eq!(got, links(&["a", "b"]), "{format:?}");
        let calls = panel.calls();
        assert_eq!(calls.len(), 2, "one lookup and one links call: {calls:?}");
        assert_eq!(calls[0].path, "/api/users/ali");
        assert!(calls[0].authorized, "the bearer token was sent");
        assert!(calls[1].path.starts_with("/sub/ali/") && calls[1].path.ends_with("/links"));
    }
}

#[test]
fn marzban_links_from_base64_v2ray() {
    let panel = FakePanel::start(Kind::Marzban, PanelConfig::default());
    panel.add_user("ali", links(&["a", "b", "c"]));
    let row = Row::of(&panel, PanelKind::Marzban);

    let got = fetch_links(&panels(), &row, "ali").unwrap();

    assert_eq!(got, links(&["a", "b", "c"]));
    let paths = paths(&panel);
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(paths[0], "GET /api/user/ali");
    assert!(paths[1].starts_with("GET /sub/") && paths[1].ends_with("/v2ray"));
}

#[test]
fn mislabelled_marzban_row_falls_back_on_404() {
    let panel = FakePanel::start(Kind::Marzban, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let row = Row::of(&panel, PanelKind::Marzneshin);

    let got = fetch_links(&panels(), &row, "ali").unwrap();

    assert_eq!(got, links(&["a"]));
    let paths = paths(&panel);
    assert_eq!(paths[0], "GET /api/users/ali", "the row's own api first");
    assert_eq!(paths[1], "GET /api/user/ali", "then marzban's");
    assert_eq!(paths.len(), 3, "{paths:?}");
}

#[test]
fn mislabelled_marzneshin_row_falls_back_on_404() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let row = Row::of(&panel, PanelKind::Marzban);

    assert_eq!(fetch_links(&panels(), &row, "ali").unwrap(), links(&["a"]));
    let paths = paths(&panel);
    assert_eq!(&paths[..2], ["GET /api/user/ali", "GET /api/users/ali"]);
}

#[test]
fn username_is_retried_in_lower_case() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let row = Row::of(&panel, PanelKind::Marzneshin);

    assert_eq!(fetch_links(&panels(), &row, "Ali").unwrap(), links(&["a"]));
    let paths = paths(&panel);
    assert_eq!(
        &paths[..3],
        [
            "GET /api/users/Ali",
            "GET /api/user/Ali",
            "GET /api/users/ali"
        ]
    );
}

#[test]
fn marzban_legacy_path_when_v2ray_is_missing_or_empty() {
    for mode in [V2rayMode::Missing, V2rayMode::Empty] {
        let panel = FakePanel::start(
            Kind::Marzban,
            PanelConfig {
                v2ray: mode,
                ..PanelConfig::default()
            },
        );
        panel.add_user("ali", links(&["a", "b"]));
        let row = Row::of(&panel, PanelKind::Marzban);

        assert_eq!(
            fetch_links(&panels(), &row, "ali").unwrap(),
            links(&["a", "b"])
        );
        let paths = paths(&panel);
        assert_eq!(paths.len(), 3, "{mode:?}: {paths:?}");
        assert!(
            paths[2].starts_with("GET /sub/") && paths[2].ends_with('/'),
            "{paths:?}"
        );
    }
}

#[test]
fn marzban_plain_v2ray_is_kept_as_links() {
    let panel = FakePanel::start(
        Kind::Marzban,
        PanelConfig {
            v2ray: V2rayMode::Plain,
            ..PanelConfig::default()
        },
    );
    panel.add_user("ali", links(&["a", "b"]));
    let row = Row::of(&panel, PanelKind::Marzban);

    assert_eq!(
        fetch_links(&panels(), &row, "ali").unwrap(),
        links(&["a", "b"])
    );
    assert_eq!(panel.calls().len(), 2, "no legacy call needed");
}

#[test]
fn unknown_user_is_not_found_everywhere() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels();

    let error = fetch_links(&panels, &row, "Nobody").unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert_eq!(panel.calls().len(), 4, "two apis, two spellings");

    assert_eq!(fetch_user(&panels, &row, "nobody").unwrap(), None);
}

#[test]
fn fetch_user_reads_both_apis() {
    let marzneshin = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    marzneshin.add_user("ali", links(&["a"]));
    let marzban = FakePanel::start(Kind::Marzban, PanelConfig::default());
    marzban.add_user("bob", links(&["b"]));
    let panels = panels();

    let ali = fetch_user(&panels, &Row::of(&marzneshin, PanelKind::Marzneshin), "ali")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ali.username.as_str(), ali.enabled, ali.used_bytes),
        ("ali", true, Some(1024))
    );

    let bob = fetch_user(&panels, &Row::of(&marzban, PanelKind::Marzban), "bob")
        .unwrap()
        .unwrap();
    assert_eq!(
        (bob.username.as_str(), bob.enabled, bob.used_bytes),
        ("bob", true, Some(2048))
    );
}

#[test]
fn disable_marzneshin_and_marzban() {
    let marzneshin = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    marzneshin.add_user("ali", links(&["a"]));
    let marzban = FakePanel::start(Kind::Marzban, PanelConfig::default());
    marzban.add_user("bob", links(&["b"]));
    let panels = panels();

    disable_user(&panels, &Row::of(&marzneshin, PanelKind::Marzneshin), "ali").unwrap();
    assert_eq!(marzneshin.disabled_users(), ["ali"]);
    assert_eq!(paths(&marzneshin), ["POST /api/users/ali/disable"]);

    disable_user(&panels, &Row::of(&marzban, PanelKind::Marzban), "bob").unwrap();
    assert_eq!(marzban.disabled_users(), ["bob"]);
    let call = &marzban.calls()[0];
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("PUT", "/api/user/bob")
    );
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body, json!({"status": "disabled"}));

    let bob = fetch_user(&panels, &Row::of(&marzban, PanelKind::Marzban), "bob")
        .unwrap()
        .unwrap();
    assert!(!bob.enabled);

    let missing = disable_user(&panels, &Row::of(&marzban, PanelKind::Marzban), "nobody");
    assert!(missing.unwrap_err().is_not_found());
}

#[test]
fn username_with_hash_is_escaped() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("h#1", links(&["hash"]));
    panel.add_user("h", links(&["wrong"]));
    let row = Row::of(&panel, PanelKind::Marzneshin);

    assert_eq!(
        fetch_links(&panels(), &row, "h#1").unwrap(),
        links(&["hash"])
    );
    assert_eq!(panel.calls()[0].path, "/api/users/h%231");
}

#[test]
fn wrong_token_is_unauthorized_and_not_shown() {
    let panel = FakePanel::start(Kind::Marzban, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let mut row = Row::of(&panel, PanelKind::Marzban);
    row.token = "stolen-secret-value".to_owned();

    let error = fetch_links(&panels(), &row, "ali").unwrap_err();

    assert!(
        matches!(error, PanelError::Unauthorized { status: 401 }),
        "{error}"
    );
    assert!(!format!("{error} {error:?}").contains("stolen-secret-value"));
    assert!(!panel.calls()[0].authorized);
}

#[test]
fn base_url_without_trailing_slash() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let mut row = Row::of(&panel, PanelKind::Marzneshin);
    row.url = row.url.trim_end_matches('/').to_owned();

    assert_eq!(fetch_links(&panels(), &row, "ali").unwrap(), links(&["a"]));
    assert_eq!(panel.calls()[0].path, "/api/users/ali");
}

#[test]
fn xui_links_are_built_from_inbounds() {
    let panel = FakePanel::start(Kind::Xui, PanelConfig::default());
    panel.add_user("ali", Vec::new());
    let row = Row::of(&panel, PanelKind::Xui);

    let got = fetch_links(&panels(), &row, "ali").unwrap();

    assert_eq!(got.len(), 2, "one per inbound: {got:?}");
    assert!(
        got[0].starts_with("vless://") && got[0].contains("@127.0.0.1:20001?"),
        "{got:?}"
    );
    assert!(got[0].contains("type=ws") && got[0].ends_with("#fake-vless-ws"));
    assert!(got[1].starts_with("trojan://pw-") && got[1].contains("security=tls"));
    assert!(got[1].contains("sni=fake.example"));
    let call = &panel.calls()[0];
    assert_eq!(call.path, "/panel/api/inbounds/list");
    assert!(call.authorized, "the session cookie was sent");

    let mut stranger = row.clone();
    stranger.token = "3x-ui=expired".to_owned();
    let error = fetch_links(&panels(), &stranger, "ali").unwrap_err();
    assert!(
        matches!(error, PanelError::Unauthorized { status: 401 }),
        "{error}"
    );

    let error = fetch_links(&panels(), &row, "nobody").unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[test]
fn xui_several_emails_and_other_protocols() {
    let panel = FakePanel::start(Kind::Xui, PanelConfig::default());
    panel.add_inbound(json!({
        "remark": "vm", "enable": true, "listen": "192.0.2.10", "port": 30001, "protocol": "vmess",
        "settings": {"clients": [{"id": "11111111-2222-4333-8444-555555555555", "email": "ali-vm", "enable": true}]},
        "streamSettings": {"network": "grpc", "security": "none", "grpcSettings": {"serviceName": "svc"}},
    }));
    panel.add_inbound(json!({
        "remark": "ss", "enable": true, "listen": "", "port": 30002, "protocol": "shadowsocks",
        "settings": {"method": "chacha20-ietf-poly1305", "clients": [{"password": "pw", "email": "ali-ss", "enable": true}]},
        "streamSettings": {"network": "tcp", "security": "none"},
    }));
    let row = Row::of(&panel, PanelKind::Xui);

    let got = fetch_links(&panels(), &row, "ali-ss, ali-vm").unwrap();

    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("ss://") && got[0].ends_with("@127.0.0.1:30002#ss"),
        "{got:?}"
    );
    assert!(got[1].starts_with("vmess://"), "{got:?}");
}

#[test]
fn xui_disable_posts_the_inbound_to_the_real_update_path() {
    let panel = FakePanel::start(Kind::Xui, PanelConfig::default());
    panel.add_user("ali", Vec::new());
    panel.add_user("bob", Vec::new());
    let row = Row::of(&panel, PanelKind::Xui);
    let panels = panels();

    disable_user(&panels, &row, "ali").unwrap();

    let paths = paths(&panel);
    assert_eq!(
        paths,
        [
            "GET /panel/api/inbounds/list",
            "POST /panel/api/inbounds/update/1",
            "POST /panel/api/inbounds/update/2",
        ]
    );
    assert_eq!(
        panel.disabled_users(),
        ["ali", "ali"],
        "one client per inbound"
    );
    assert!(
        fetch_links(&panels, &row, "ali").unwrap().is_empty(),
        "disabled clients give no links"
    );
    assert_eq!(
        fetch_links(&panels, &row, "bob").unwrap().len(),
        2,
        "bob untouched"
    );

    let ali = fetch_user(&panels, &row, "ali").unwrap().unwrap();
    assert!(!ali.enabled);
    assert_eq!(ali.used_bytes, Some(3000));
    assert_eq!(fetch_user(&panels, &row, "nobody").unwrap(), None);

    panel.clear_calls();
    disable_user(&panels, &row, "ali").unwrap();
    assert_eq!(panel.calls().len(), 1, "already disabled: no update");
}

/// Runs a fetch against a panel in `mode` with 600 ms limits; returns the
/// result and how long it took.
fn fetch_in_mode(mode: Mode) -> (Result<Vec<String>, PanelError>, Duration) {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    panel.set_mode(mode);
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels_with(ClientOptions {
        user_timeout: Duration::from_millis(600),
        link_timeout: Duration::from_millis(600),
        ..ClientOptions::default()
    });
    let started = Instant::now();
    let result = fetch_links(&panels, &row, "ali");
    (result, started.elapsed())
}

#[test]
fn latency_under_the_limit_is_fine() {
    let (result, elapsed) =
        fetch_in_mode(Mode::Latency(Latency::Fixed(Duration::from_millis(150))));
    assert_eq!(result.unwrap(), links(&["a"]));
    assert!(
        elapsed >= Duration::from_millis(300),
        "two calls of 150 ms: {elapsed:?}"
    );

    let (result, _) = fetch_in_mode(Mode::Latency(Latency::Uniform {
        min: Duration::from_millis(10),
        max: Duration::from_millis(60),
    }));
    assert_eq!(result.unwrap(), links(&["a"]));
}

#[test]
fn hang_times_out_near_the_limit() {
    let (result, elapsed) = fetch_in_mode(Mode::Hang);
    let error = result.unwrap_err();
    assert_eq!(error.kind(), "timeout", "{error}");
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

#[test]
fn request_deadline_caps_the_call_limit() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    panel.set_mode(Mode::Hang);
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels();
    let started = Instant::now();

    let result = in_coroutine(move || {
        panels.fetch_links(
            &row.panel_ref(),
            "ali",
            Instant::now() + Duration::from_millis(300),
        )
    });

    assert_eq!(result.unwrap_err().kind(), "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn reset_is_a_quick_closed_error() {
    let (result, elapsed) = fetch_in_mode(Mode::Reset);
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            PanelError::Upstream(UpstreamError::Closed { .. } | UpstreamError::Io { .. })
        ),
        "{error:?}"
    );
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
}

#[test]
fn status_500_is_a_status_error() {
    let (result, elapsed) = fetch_in_mode(Mode::Status500);
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            PanelError::Upstream(UpstreamError::Status { status: 500, .. })
        ),
        "{error:?}"
    );
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
}

#[test]
fn garbage_is_a_protocol_error() {
    let (result, elapsed) = fetch_in_mode(Mode::Garbage);
    let error = result.unwrap_err();
    assert_eq!(error.kind(), "protocol", "{error:?}");
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
}

#[test]
fn failure_rate_one_always_fails() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    panel.set_failure_rate(1.0);
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let error = fetch_links(&panels(), &row, "ali").unwrap_err();
    assert_eq!(error.kind(), "status");
}

#[test]
fn keep_alive_reuses_one_connection() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels();

    fetch_links(&panels, &row, "ali").unwrap();
    fetch_links(&panels, &row, "ali").unwrap();

    assert_eq!(panel.calls().len(), 4);
    assert!(
        panel.calls().iter().all(|c| c.connection == 1),
        "{:?}",
        panel.calls()
    );
    assert_eq!(panel.accepted_connections(), 1);
    assert_eq!(panels.client().connections_opened(), 1);
}

#[test]
fn dead_pooled_connection_is_retried_once_on_a_fresh_one() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels();
    fetch_links(&panels, &row, "ali").unwrap();

    panel.reset_next(1);
    assert_eq!(fetch_links(&panels, &row, "ali").unwrap(), links(&["a"]));

    assert_eq!(panel.accepted_connections(), 2);
    let calls = panel.calls();
    assert_eq!(
        calls.len(),
        5,
        "two calls, one reset attempt, two more: {calls:?}"
    );
    assert_eq!((calls[2].connection, calls[3].connection), (1, 2));

    // A fresh connection that dies is not retried: the panel may have acted.
    let fresh = panels_with(options());
    panel.reset_next(1);
    let error = fetch_links(&fresh, &row, "ali").unwrap_err();
    assert_eq!(error.kind(), "closed", "{error:?}");
}

#[test]
fn chunked_answers_are_read() {
    let panel = FakePanel::start(
        Kind::Marzban,
        PanelConfig {
            chunked: true,
            ..PanelConfig::default()
        },
    );
    let many: Vec<String> = (0..50)
        .map(|n| format!("trojan://p{n}@h:{n}#n{n}"))
        .collect();
    panel.add_user("ali", many.clone());
    let row = Row::of(&panel, PanelKind::Marzban);
    let panels = panels();

    assert_eq!(fetch_links(&panels, &row, "ali").unwrap(), many);
    assert_eq!(fetch_links(&panels, &row, "ali").unwrap(), many);
    assert_eq!(
        panel.accepted_connections(),
        1,
        "chunked answers keep the connection"
    );
}

#[test]
fn body_larger_than_the_cap_is_an_error() {
    // The cap holds whether the panel announces the length or streams
    // chunks of unknown total size.
    for chunked in [false, true] {
        let panel = FakePanel::start(
            Kind::Marzban,
            PanelConfig {
                chunked,
                ..PanelConfig::default()
            },
        );
        panel.add_user("ali", links(&["a", "b", "c", "d", "e", "f"]));
        let row = Row::of(&panel, PanelKind::Marzban);
        let panels = panels_with(ClientOptions {
            max_body: 100,
            ..options()
        });

        let error = fetch_links(&panels, &row, "ali").unwrap_err();
        assert_eq!(error.kind(), "too_large", "chunked={chunked}: {error:?}");
    }
}

#[test]
fn localhost_is_resolved_and_every_address_tried() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    let mut row = Row::of(&panel, PanelKind::Marzneshin);
    row.url = panel.url_with_host("localhost");

    assert_eq!(fetch_links(&panels(), &row, "ali").unwrap(), links(&["a"]));

    let mut nowhere = row.clone();
    nowhere.url = "http://no-such-host.invalid/".to_owned();
    let error = fetch_links(&panels(), &nowhere, "ali").unwrap_err();
    assert_eq!(error.kind(), "dns", "{error:?}");
}

#[test]
fn https_needs_a_trusted_certificate_for_the_right_name() {
    let pki = TestPki::generate(&["localhost"]);
    let panel = FakePanel::start(
        Kind::Marzneshin,
        PanelConfig {
            tls: Some(pki.identity()),
            ..PanelConfig::default()
        },
    );
    panel.add_user("ali", links(&["a"]));
    let mut row = Row::of(&panel, PanelKind::Marzneshin);
    row.url = panel.url_with_host("localhost");
    assert!(row.url.starts_with("https://"));

    let trusting = panels_with(ClientOptions {
        extra_root_pem: Some(pki.ca_pem.clone()),
        ..options()
    });
    assert_eq!(fetch_links(&trusting, &row, "ali").unwrap(), links(&["a"]));
    assert_eq!(fetch_links(&trusting, &row, "ali").unwrap(), links(&["a"]));
    assert_eq!(
        panel.accepted_connections(),
        1,
        "tls connections are reused too"
    );

    let error = fetch_links(&panels(), &row, "ali").unwrap_err();
    assert_eq!(error.kind(), "tls", "an unknown ca is refused: {error:?}");

    // The certificate names localhost only; by address the name check fails.
    let mut by_ip = row.clone();
    by_ip.url = panel.url();
    let error = fetch_links(&trusting, &by_ip, "ali").unwrap_err();
    assert_eq!(error.kind(), "tls", "a name mismatch is refused: {error:?}");
}

#[test]
fn bad_extra_root_is_a_setup_error() {
    let error = Client::new(ClientOptions {
        extra_root_pem: Some(b"not a pem".to_vec()),
        ..options()
    })
    .unwrap_err();
    assert_eq!(error.kind(), "setup");
}

#[test]
fn raw_send_reports_status_and_content_type() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    let client = Client::new(options()).unwrap();
    let url = format!("{}api/users/nobody", panel.url());
    let token = format!("Bearer {}", panel.token());

    let response = in_coroutine(move || {
        let headers = [("Authorization", token.as_str())];
        client.send(
            OutboundRequest::get(&url, &headers, CallClass::User),
            deadline(),
        )
    })
    .unwrap();

    assert_eq!(response.status, 404);
    assert_eq!(response.content_type.as_deref(), Some("application/json"));
    assert_eq!(response.body, br#"{"detail":"User not found"}"#);
}

#[test]
fn slow_panels_do_not_block_worker_threads() {
    let panel = FakePanel::start(Kind::Marzneshin, PanelConfig::default());
    panel.add_user("ali", links(&["a"]));
    panel.set_mode(Mode::Latency(Latency::Fixed(Duration::from_millis(300))));
    let row = Row::of(&panel, PanelKind::Marzneshin);
    let panels = panels();
    let started = Instant::now();

    let handles: Vec<_> = (0..40)
        .map(|_| {
            let (panels, row) = (panels.clone(), row.clone());
            may::go_with!(64 * 1024, move || {
                panels.fetch_links(&row.panel_ref(), "ali", deadline())
            })
            .expect("spawn")
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("coroutine").unwrap(), links(&["a"]));
    }

    // 40 fetches of two 300 ms calls each: about 0.6 s when they overlap,
    // 12 s or more if each held a worker thread.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
