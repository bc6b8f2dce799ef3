//! The fake panels' API: Marzneshin, Marzban and 3x-ui routes over the shared state.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::{Kind, LinksFormat, Shared, State, User, V2rayMode};

pub(crate) struct Request {
    pub(crate) method: String,
    /// Raw request target, percent-encoded, with any query.
    pub(crate) path: String,
    /// Lower-case names.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// Decoded path segments, without the leading slash and the query; a
    /// trailing slash gives a trailing empty segment.
    fn segments(&self) -> Vec<String> {
        let path = self.path.split('?').next().unwrap_or("");
        path.trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect()
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    pub(crate) fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn not_found() -> Response {
        Response::json(404, r#"{"detail":"Not Found"}"#.to_owned())
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request carries the credential the panel expects on its API
/// paths; subscription paths are public, as on the real panels.
pub(crate) fn authorized(shared: &Shared, request: &Request) -> bool {
    let path = request.path.as_str();
    match shared.kind {
        Kind::Marzneshin | Kind::Marzban => {
            if !path.starts_with("/api/") {
                return true;
            }
            let want = format!("Bearer {}", shared.token);
            request.header("authorization") == Some(want.as_str())
        }
        Kind::Xui => {
            if !path.starts_with("/panel/") {
                return true;
            }
            request
                .header("cookie")
                .is_some_and(|cookies| cookies.split(';').any(|c| c.trim() == shared.token))
        }
    }
}

pub(crate) fn handle(shared: &Shared, request: &Request) -> Response {
    let segments = request.segments();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method.as_str();
    let mut state = shared.state();
    match shared.kind {
        Kind::Marzneshin => marzneshin(shared, &mut state, method, &segments),
        Kind::Marzban => marzban(shared, &mut state, method, &segments, &request.body),
        Kind::Xui => xui(&mut state, method, &segments, &request.body),
    }
}

/// A user's subscription key (Marzneshin) or token (Marzban): the name in
/// hex, so a catch-all panel can map it back without storing anything.
pub(crate) fn key_for(username: &str) -> String {
    let mut key = String::from("k");
    for byte in username.as_bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

fn name_of_key(key: &str) -> Option<String> {
    let hex = key.strip_prefix('k')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn lookup(shared: &Shared, state: &State, name: &str) -> Option<User> {
    if let Some(user) = state.users.get(name) {
        return Some(user.clone());
    }
    shared.config.catch_all_links.as_ref().map(|links| User {
        key: key_for(name),
        links: links.clone(),
        enabled: true,
    })
}

fn disable(shared: &Shared, state: &mut State, name: &str) -> Option<User> {
    let mut user = lookup(shared, state, name)?;
    if user.enabled {
        state.disabled.push(name.to_owned());
    }
    user.enabled = false;
    state.users.insert(name.to_owned(), user.clone());
    Some(user)
}

fn marzneshin_user(name: &str, user: &User) -> Response {
    let body = json!({
        "id": 1, "username": name, "key": user.key, "enabled": user.enabled,
        "is_active": user.enabled, "expire_strategy": "never", "expire_date": null,
        "used_traffic": 1024, "lifetime_used_traffic": 1024, "data_limit": null,
        "subscription_url": format!("/sub/{name}/{}", user.key),
    });
    Response::json(200, body.to_string())
}

fn marzneshin(shared: &Shared, state: &mut State, method: &str, segments: &[&str]) -> Response {
    match (method, segments) {
        ("GET", ["api", "users", name]) => match lookup(shared, state, name) {
            Some(user) => marzneshin_user(name, &user),
            None => Response::json(404, r#"{"detail":"User not found"}"#.to_owned()),
        },
        ("POST", ["api", "users", name, "disable"]) => match disable(shared, state, name) {
            Some(user) => marzneshin_user(name, &user),
            None => Response::json(404, r#"{"detail":"User not found"}"#.to_owned()),
        },
        ("GET", ["sub", name, key, "links"]) => {
            let Some(user) = lookup(shared, state, name).filter(|u| u.key == *key) else {
                return Response::not_found();
            };
            match shared.config.links_format {
                LinksFormat::JsonList => Response::json(200, json!(user.links).to_string()),
                LinksFormat::JsonObject => {
                    Response::json(200, json!({ "links": user.links }).to_string())
                }
                LinksFormat::Text => Response::text(200, &user.links.join("\n")),
            }
        }
        _ => Response::not_found(),
    }
}

fn marzban_user(name: &str, user: &User) -> Response {
    let body = json!({
        "username": name, "status": if user.enabled { "active" } else { "disabled" },
        "expire": null, "data_limit": null, "used_traffic": 2048, "lifetime_used_traffic": 2048,
        "subscription_url": format!("/sub/{}", user.key), "links": user.links,
        "proxies": {}, "inbounds": {},
    });
    Response::json(200, body.to_string())
}

fn marzban(
    shared: &Shared,
    state: &mut State,
    method: &str,
    segments: &[&str],
    body: &[u8],
) -> Response {
    match (method, segments) {
        ("GET", ["api", "user", name]) => match lookup(shared, state, name) {
            Some(user) => marzban_user(name, &user),
            None => Response::json(404, r#"{"detail":"User not found"}"#.to_owned()),
        },
        ("PUT", ["api", "user", name]) => {
            let Ok(change) = serde_json::from_slice::<Value>(body) else {
                return Response::json(422, r#"{"detail":"invalid json"}"#.to_owned());
            };
            if lookup(shared, state, name).is_none() {
                return Response::json(404, r#"{"detail":"User not found"}"#.to_owned());
            }
            if change.get("status").and_then(Value::as_str) == Some("disabled")
                && let Some(user) = disable(shared, state, name)
            {
                return marzban_user(name, &user);
            }
            match lookup(shared, state, name) {
                Some(user) => marzban_user(name, &user),
                None => Response::not_found(),
            }
        }
        ("GET", ["sub", token, "v2ray"]) => {
            let Some(user) = name_of_key(token).and_then(|n| lookup(shared, state, &n)) else {
                return Response::not_found();
            };
            match shared.config.v2ray {
                V2rayMode::Base64 => Response::text(200, &STANDARD.encode(user.links.join("\n"))),
                V2rayMode::Plain => Response::text(200, &user.links.join("\n")),
                V2rayMode::Missing => Response::not_found(),
                V2rayMode::Empty => Response::text(200, ""),
            }
        }
        ("GET", ["sub", token] | ["sub", token, ""]) => {
            let Some(user) = name_of_key(token).and_then(|n| lookup(shared, state, &n)) else {
                return Response::not_found();
            };
            Response::text(200, &STANDARD.encode(user.links.join("\n")))
        }
        _ => Response::not_found(),
    }
}

/// The inbounds a fresh 3x-ui fake has: vless over websocket and trojan with
/// TLS, both listening on every address (so links use the panel's host).
pub(crate) fn default_inbounds() -> Vec<Value> {
    let mut inbounds = Vec::new();
    add_inbound(
        &mut inbounds,
        json!({
            "remark": "fake-vless-ws", "enable": true, "listen": "", "port": 20001,
            "protocol": "vless",
            "settings": {"clients": [], "decryption": "none", "fallbacks": []},
            "streamSettings": {"network": "ws", "security": "none",
                "wsSettings": {"path": "/ws", "headers": {"Host": "fake.example"}}},
        }),
    );
    add_inbound(
        &mut inbounds,
        json!({
            "remark": "fake-trojan-tls", "enable": true, "listen": "0.0.0.0", "port": 20002,
            "protocol": "trojan",
            "settings": {"clients": [], "fallbacks": []},
            "streamSettings": {"network": "tcp", "security": "tls",
                "tlsSettings": {"serverName": "fake.example", "alpn": ["h2", "http/1.1"],
                    "settings": {"fingerprint": "chrome"}}},
        }),
    );
    inbounds
}

/// Stores `settings` and `streamSettings` as JSON strings, as 3x-ui does.
pub(crate) fn add_inbound(inbounds: &mut Vec<Value>, mut inbound: Value) -> i64 {
    let id = inbounds
        .iter()
        .filter_map(|i| i.get("id").and_then(Value::as_i64))
        .max()
        .unwrap_or(0)
        + 1;
    if let Value::Object(map) = &mut inbound {
        map.insert("id".to_owned(), json!(id));
        for key in ["settings", "streamSettings", "sniffing"] {
            let value = map.remove(key).unwrap_or_else(|| json!({}));
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            map.insert(key.to_owned(), Value::String(text));
        }
        map.entry("up").or_insert(json!(0));
        map.entry("down").or_insert(json!(0));
        map.entry("total").or_insert(json!(0));
        map.entry("expiryTime").or_insert(json!(0));
        map.entry("tag").or_insert(json!(format!("inbound-{id}")));
    }
    inbounds.push(inbound);
    id
}

fn settings_of(inbound: &Value) -> Value {
    inbound
        .get("settings")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| json!({}))
}

/// A stable UUID-shaped id for a client (FNV-1a of the email and inbound).
fn uuid_for(email: &str, inbound_id: i64) -> String {
    let hash = |salt: u64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
        for byte in email.bytes().chain(inbound_id.to_le_bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let hex = format!("{:016x}{:016x}", hash(1), hash(2));
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

pub(crate) fn add_xui_client(inbounds: &mut [Value], email: &str) {
    for inbound in inbounds.iter_mut() {
        let id = inbound.get("id").and_then(Value::as_i64).unwrap_or(0);
        let mut settings = settings_of(inbound);
        let Some(clients) = settings
            .as_object_mut()
            .map(|m| m.entry("clients").or_insert_with(|| json!([])))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        if clients
            .iter()
            .any(|c| c.get("email").and_then(Value::as_str) == Some(email))
        {
            continue;
        }
        clients.push(json!({
            "id": uuid_for(email, id), "password": format!("pw-{}", &uuid_for(email, -id)[..8]),
            "email": email, "enable": true, "flow": "", "limitIp": 0, "totalGB": 0,
            "expiryTime": 0, "tgId": "", "subId": "",
        }));
        inbound["settings"] = Value::String(settings.to_string());
    }
}

fn find_client(state: &State, email: &str) -> Option<(i64, Value)> {
    state.inbounds.iter().find_map(|inbound| {
        let id = inbound.get("id").and_then(Value::as_i64)?;
        let settings = settings_of(inbound);
        let client = settings
            .get("clients")?
            .as_array()?
            .iter()
            .find(|c| c.get("email").and_then(Value::as_str) == Some(email))?
            .clone();
        Some((id, client))
    })
}

fn client_enabled(client: &Value) -> bool {
    client
        .get("enable")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

fn xui(state: &mut State, method: &str, segments: &[&str], body: &[u8]) -> Response {
    match (method, segments) {
        ("GET", ["panel", "api", "inbounds", "list"]) => Response::json(
            200,
            json!({"success": true, "msg": "", "obj": state.inbounds}).to_string(),
        ),
        ("GET", ["panel", "api", "inbounds", "getClientTraffics", email]) => {
            let obj = match find_client(state, email) {
                Some((inbound_id, client)) => json!({
                    "id": 1, "inboundId": inbound_id, "enable": client_enabled(&client),
                    "email": email, "up": 1000, "down": 2000,
                    "expiryTime": client.get("expiryTime").cloned().unwrap_or(json!(0)),
                    "total": client.get("totalGB").cloned().unwrap_or(json!(0)), "reset": 0,
                }),
                None => Value::Null,
            };
            Response::json(
                200,
                json!({"success": true, "msg": "", "obj": obj}).to_string(),
            )
        }
        ("POST", ["panel", "api", "inbounds", "update", id]) => {
            let Ok(id) = id.parse::<i64>() else {
                return Response::not_found();
            };
            let Ok(mut sent) = serde_json::from_slice::<Value>(body) else {
                return Response::json(
                    200,
                    r#"{"success":false,"msg":"invalid inbound json"}"#.to_owned(),
                );
            };
            let Some(stored) = state
                .inbounds
                .iter_mut()
                .find(|i| i.get("id").and_then(Value::as_i64) == Some(id))
            else {
                return Response::json(
                    200,
                    r#"{"success":false,"msg":"inbound not found"}"#.to_owned(),
                );
            };
            if !sent.get("settings").is_some_and(Value::is_string) {
                return Response::json(
                    200,
                    r#"{"success":false,"msg":"settings must be a json string"}"#.to_owned(),
                );
            }
            let before = settings_of(stored);
            let after = settings_of(&sent);
            let was_enabled = |email: &str| {
                before
                    .get("clients")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| c.get("email").and_then(Value::as_str) == Some(email))
                    })
                    .is_some_and(client_enabled)
            };
            let mut newly_disabled = Vec::new();
            for client in after
                .get("clients")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let email = client.get("email").and_then(Value::as_str).unwrap_or("");
                if !client_enabled(client) && was_enabled(email) {
                    newly_disabled.push(email.to_owned());
                }
            }
            sent["id"] = json!(id);
            *stored = sent;
            let obj = stored.clone();
            state.disabled.extend(newly_disabled);
            Response::json(
                200,
                json!({"success": true, "msg": "Inbound updated", "obj": obj}).to_string(),
            )
        }
        _ => Response::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_back_to_names() {
        for name in ["ali", "h#1", "علی", ""] {
            assert_eq!(name_of_key(&key_for(name)).as_deref(), Some(name));
        }
        assert_eq!(name_of_key("zzz"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("h%231"), "h#1");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%D8%B9"), "ع");
    }

    #[test]
    fn uuids_are_stable_and_shaped() {
        let id = uuid_for("ali", 1);
        assert_eq!(id, uuid_for("ali", 1));
        assert_ne!(id, uuid_for("ali", 2));
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
