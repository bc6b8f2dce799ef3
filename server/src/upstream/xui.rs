//! The 3x-ui ("sanaei") API: inbounds, config links built from them, traffic, disable.
//!
//! 3x-ui has no subscription endpoint the aggregator can rely on, so links are
//! built from the inbound list: the inbound's protocol, port, transport and
//! security, and the client's credential. A remote username may list several
//! client emails separated by commas; each is looked up in every inbound.
//!
//! Naming: a link is named after its inbound's remark (the client's email
//! when the remark is empty), as the original did, so names stored in
//! `panel_disabled_configs` for it keep matching. Several listed clients on
//! one inbound therefore share a name; their links still differ by
//! credential, so none is lost to duplicate removal. When the inbound lists
//! external proxies (3x-ui's way of publishing other addresses), each gets
//! its own link, named `remark-proxy remark` when the proxy has a remark.

use std::net::IpAddr;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::client::{CallClass, Client, Method, OutboundRequest};
use super::{
    PanelError, PanelRef, RemoteUser, UpstreamError, check_status, decode_error, encode_segment,
    host_of, join_url,
};

/// Characters left as they are in link query values and names.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Failures of reading a 3x-ui inbound list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XuiError {
    #[error("inbound list is not valid: {0}")]
    Decode(String),
    #[error("panel reported failure: {0}")]
    Refused(String),
    #[error("no listed client email is on the panel")]
    NoClient,
}

/// One inbound with its JSON-string fields parsed.
struct Inbound {
    raw: Value,
    settings: Value,
    stream: Value,
    settings_was_text: bool,
}

/// Splits a remote username into the client emails it lists.
pub fn split_emails(remote_username: &str) -> Vec<&str> {
    remote_username
        .split(',')
        .map(str::trim)
        .filter(|email| !email.is_empty())
        .collect()
}

/// Reads an embedded field that 3x-ui stores as a JSON string (older builds
/// and some forks send an object instead; both are accepted).
fn embedded(raw: &Value, key: &str) -> Result<(Value, bool), XuiError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok((Value::Object(Map::new()), true)),
        Some(Value::String(text)) if text.trim().is_empty() => {
            Ok((Value::Object(Map::new()), true))
        }
        Some(Value::String(text)) => serde_json::from_str(text)
            .map(|v| (v, true))
            .map_err(|e| XuiError::Decode(format!("inbound {key}: {e}"))),
        Some(other) => Ok((other.clone(), false)),
    }
}

fn load_inbounds(body: &[u8]) -> Result<Vec<Inbound>, XuiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| XuiError::Decode(e.to_string()))?;
    let list = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => {
            if map.get("success").and_then(Value::as_bool) == Some(false) {
                let message = map.get("msg").and_then(Value::as_str).unwrap_or("");
                return Err(XuiError::Refused(message.chars().take(200).collect()));
            }
            match map.remove("obj") {
                Some(Value::Array(items)) => items,
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err(XuiError::Decode("obj is not a list".to_owned())),
            }
        }
        _ => return Err(XuiError::Decode("not a json object".to_owned())),
    };
    list.into_iter()
        .map(|raw| {
            let (settings, settings_was_text) = embedded(&raw, "settings")?;
            let (stream, _) = embedded(&raw, "streamSettings")?;
            Ok(Inbound {
                raw,
                settings,
                stream,
                settings_was_text,
            })
        })
        .collect()
}

fn clients(inbound: &Inbound) -> &[Value] {
    inbound
        .settings
        .get("clients")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Where an email's client sits: (inbound index, client index) pairs, exact
/// matches first; when there are none, matches ignoring case.
fn find_client(inbounds: &[Inbound], email: &str) -> Vec<(usize, usize)> {
    let collect = |same: &dyn Fn(&str) -> bool| {
        let mut found = Vec::new();
        for (i, inbound) in inbounds.iter().enumerate() {
            for (c, client) in clients(inbound).iter().enumerate() {
                if client
                    .get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|e| same(e.trim()))
                {
                    found.push((i, c));
                }
            }
        }
        found
    };
    let exact = collect(&|e| e == email);
    if exact.is_empty() {
        collect(&|e| e.eq_ignore_ascii_case(email))
    } else {
        exact
    }
}

fn text(value: &Value, path: &[&str]) -> Option<String> {
    let mut current = value;
    for key in path {
        current = current.get(key)?;
    }
    match current {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A string, or the first of a list of strings.
fn first_text(value: &Value, path: &[&str]) -> Option<String> {
    let mut current = value;
    for key in path {
        current = current.get(key)?;
    }
    match current {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_owned),
        _ => text(current, &[]),
    }
}

/// A string, or a list of strings joined by commas.
fn joined_text(value: &Value, path: &[&str]) -> Option<String> {
    let mut current = value;
    for key in path {
        current = current.get(key)?;
    }
    match current {
        Value::Array(items) => {
            let parts: Vec<&str> = items
                .iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if parts.is_empty() {
                None
            } else {
                Some(parts.join(","))
            }
        }
        _ => text(current, &[]),
    }
}

fn number(value: &Value, key: &str) -> Option<u64> {
    match value.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Transport and security of an inbound, in the terms share links use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StreamInfo {
    network: String,
    header_type: Option<String>,
    host: Option<String>,
    path: Option<String>,
    service_name: Option<String>,
    authority: Option<String>,
    mode: Option<String>,
    seed: Option<String>,
    security: String,
    sni: Option<String>,
    alpn: Option<String>,
    fingerprint: Option<String>,
    public_key: Option<String>,
    short_id: Option<String>,
    spider_x: Option<String>,
}

fn stream_info(stream: &Value) -> StreamInfo {
    let network = text(stream, &["network"])
        .unwrap_or_else(|| "tcp".to_owned())
        .to_ascii_lowercase();
    let mut info = StreamInfo {
        network: network.clone(),
        security: text(stream, &["security"])
            .unwrap_or_else(|| "none".to_owned())
            .to_ascii_lowercase(),
        ..StreamInfo::default()
    };

    match network.as_str() {
        "tcp" | "raw" => {
            let settings = stream
                .get("tcpSettings")
                .or_else(|| stream.get("rawSettings"));
            if let Some(settings) = settings
                && text(settings, &["header", "type"]).as_deref() == Some("http")
            {
                info.header_type = Some("http".to_owned());
                info.path = first_text(settings, &["header", "request", "path"]);
                info.host = joined_text(settings, &["header", "request", "headers", "Host"])
                    .or_else(|| joined_text(settings, &["header", "request", "headers", "host"]));
            }
        }
        "ws" => {
            let settings = stream.get("wsSettings").unwrap_or(&Value::Null);
            info.path = text(settings, &["path"]);
            info.host = text(settings, &["host"])
                .or_else(|| first_text(settings, &["headers", "Host"]))
                .or_else(|| first_text(settings, &["headers", "host"]));
        }
        "httpupgrade" => {
            let settings = stream.get("httpupgradeSettings").unwrap_or(&Value::Null);
            info.path = text(settings, &["path"]);
            info.host =
                text(settings, &["host"]).or_else(|| first_text(settings, &["headers", "Host"]));
        }
        "xhttp" | "splithttp" => {
            let settings = stream
                .get("xhttpSettings")
                .or_else(|| stream.get("splithttpSettings"))
                .unwrap_or(&Value::Null);
            info.path = text(settings, &["path"]);
            info.host =
                text(settings, &["host"]).or_else(|| first_text(settings, &["headers", "Host"]));
            info.mode = text(settings, &["mode"]);
        }
        "grpc" => {
            let settings = stream.get("grpcSettings").unwrap_or(&Value::Null);
            info.service_name = text(settings, &["serviceName"]);
            info.authority = text(settings, &["authority"]);
            if settings.get("multiMode").and_then(Value::as_bool) == Some(true) {
                info.mode = Some("multi".to_owned());
            }
        }
        "http" | "h2" => {
            let settings = stream.get("httpSettings").unwrap_or(&Value::Null);
            info.path = text(settings, &["path"]);
            info.host = joined_text(settings, &["host"]);
        }
        "kcp" | "mkcp" => {
            let settings = stream.get("kcpSettings").unwrap_or(&Value::Null);
            info.header_type = text(settings, &["header", "type"]);
            info.seed = text(settings, &["seed"]);
        }
        _ => {}
    }

    match info.security.as_str() {
        "tls" => {
            let tls = stream.get("tlsSettings").unwrap_or(&Value::Null);
            info.sni =
                text(tls, &["serverName"]).or_else(|| text(tls, &["settings", "serverName"]));
            info.alpn = joined_text(tls, &["alpn"]);
            info.fingerprint =
                text(tls, &["settings", "fingerprint"]).or_else(|| text(tls, &["fingerprint"]));
        }
        "reality" => {
            let reality = stream.get("realitySettings").unwrap_or(&Value::Null);
            info.public_key =
                text(reality, &["settings", "publicKey"]).or_else(|| text(reality, &["publicKey"]));
            info.short_id = first_text(reality, &["shortIds"]);
            info.sni = first_text(reality, &["serverNames"])
                .or_else(|| text(reality, &["settings", "serverName"]));
            info.fingerprint = text(reality, &["settings", "fingerprint"])
                .or_else(|| text(reality, &["fingerprint"]));
            info.spider_x =
                text(reality, &["settings", "spiderX"]).or_else(|| text(reality, &["spiderX"]));
        }
        _ => info.security = "none".to_owned(),
    }
    info
}

/// One address a client reaches the inbound at.
struct Endpoint {
    host: String,
    port: u64,
    /// Name suffix from an external proxy's remark.
    suffix: Option<String>,
    /// An external proxy's `forceTls`: "tls", "none" or "same".
    force_tls: String,
}

/// Whether an inbound's `listen` is an address clients can dial: not empty,
/// not a wildcard or loopback address, not a Unix socket path.
fn public_listen(listen: &str) -> Option<&str> {
    let listen = listen.trim();
    if listen.is_empty() || listen.starts_with('/') || listen.starts_with('@') {
        return None;
    }
    match listen.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_loopback() => None,
        _ => Some(listen),
    }
}

fn endpoints(inbound: &Inbound, panel_host: &str) -> Vec<Endpoint> {
    let port = number(&inbound.raw, "port").unwrap_or(0);
    let proxies = inbound
        .stream
        .get("externalProxy")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let from_proxies: Vec<Endpoint> = proxies
        .iter()
        .filter_map(|proxy| {
            Some(Endpoint {
                host: text(proxy, &["dest"])?,
                port: number(proxy, "port").unwrap_or(port),
                suffix: text(proxy, &["remark"]),
                force_tls: text(proxy, &["forceTls"]).unwrap_or_else(|| "same".to_owned()),
            })
        })
        .collect();
    if !from_proxies.is_empty() {
        return from_proxies;
    }
    let listen = inbound
        .raw
        .get("listen")
        .and_then(Value::as_str)
        .unwrap_or("");
    let host = public_listen(listen).unwrap_or(panel_host).to_owned();
    vec![Endpoint {
        host,
        port,
        suffix: None,
        force_tls: "same".to_owned(),
    }]
}

/// A host as it appears in a URL authority: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{bare}]")
    } else {
        host.to_owned()
    }
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

fn push_transport(info: &StreamInfo, query: &mut Vec<(&'static str, String)>) {
    let fields = [
        ("path", &info.path),
        ("host", &info.host),
        ("headerType", &info.header_type),
        ("serviceName", &info.service_name),
        ("authority", &info.authority),
        ("mode", &info.mode),
        ("seed", &info.seed),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
}

fn push_security(info: &StreamInfo, query: &mut Vec<(&'static str, String)>) {
    query.push(("security", info.security.clone()));
    let fields: &[(&'static str, &Option<String>)] = match info.security.as_str() {
        "tls" => &[
            ("sni", &info.sni),
            ("alpn", &info.alpn),
            ("fp", &info.fingerprint),
        ],
        "reality" => &[
            ("sni", &info.sni),
            ("fp", &info.fingerprint),
            ("pbk", &info.public_key),
            ("sid", &info.short_id),
            ("spx", &info.spider_x),
        ],
        _ => &[],
    };
    for (key, value) in fields {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
}

fn query_string(query: &[(&'static str, String)]) -> String {
    query
        .iter()
        .map(|(key, value)| format!("{key}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Applies an external proxy's `forceTls` to the inbound's security.
fn with_forced_tls(info: &StreamInfo, force_tls: &str) -> StreamInfo {
    let mut info = info.clone();
    match force_tls {
        "none" => {
            info.security = "none".to_owned();
            info.sni = None;
            info.alpn = None;
            info.fingerprint = None;
            info.public_key = None;
            info.short_id = None;
            info.spider_x = None;
        }
        "tls" if info.security != "tls" => {
            info.security = "tls".to_owned();
            info.public_key = None;
            info.short_id = None;
            info.spider_x = None;
        }
        _ => {}
    }
    info
}

/// The share links of one client of one inbound (none for protocols that
/// have no share link, such as socks or dokodemo-door).
fn client_links(inbound: &Inbound, client: &Value, email: &str, panel_host: &str) -> Vec<String> {
    let protocol = text(&inbound.raw, &["protocol"])
        .unwrap_or_default()
        .to_ascii_lowercase();
    let base_info = stream_info(&inbound.stream);
    let remark = text(&inbound.raw, &["remark"]).unwrap_or_else(|| email.to_owned());
    let mut links = Vec::new();
    for endpoint in endpoints(inbound, panel_host) {
        let info = with_forced_tls(&base_info, &endpoint.force_tls);
        let name = match &endpoint.suffix {
            Some(suffix) => format!("{remark}-{suffix}"),
            None => remark.clone(),
        };
        let host = url_host(&endpoint.host);
        let port = endpoint.port;
        let link = match protocol.as_str() {
            "vless" => {
                let Some(id) = text(client, &["id"]) else {
                    continue;
                };
                let mut query = vec![
                    ("type", info.network.clone()),
                    ("encryption", "none".to_owned()),
                ];
                push_transport(&info, &mut query);
                push_security(&info, &mut query);
                if let Some(flow) = flow(client, &info) {
                    query.push(("flow", flow));
                }
                format!(
                    "vless://{}@{host}:{port}?{}#{}",
                    encode(&id),
                    query_string(&query),
                    encode(&name)
                )
            }
            "trojan" => {
                let Some(password) = text(client, &["password"]) else {
                    continue;
                };
                let mut query = vec![("type", info.network.clone())];
                push_transport(&info, &mut query);
                push_security(&info, &mut query);
                if let Some(flow) = flow(client, &info) {
                    query.push(("flow", flow));
                }
                format!(
                    "trojan://{}@{host}:{port}?{}#{}",
                    encode(&password),
                    query_string(&query),
                    encode(&name)
                )
            }
            "vmess" => {
                let Some(id) = text(client, &["id"]) else {
                    continue;
                };
                vmess_link(&info, &id, client, &endpoint.host, port, &name)
            }
            "shadowsocks" => {
                let Some(userinfo) = shadowsocks_userinfo(&inbound.settings, client) else {
                    continue;
                };
                let mut link = format!(
                    "ss://{}@{host}:{port}",
                    general_purpose::URL_SAFE_NO_PAD.encode(userinfo)
                );
                let plain_tcp =
                    info.network == "tcp" && info.header_type.is_none() && info.security == "none";
                if !plain_tcp {
                    let mut query = vec![("type", info.network.clone())];
                    push_transport(&info, &mut query);
                    push_security(&info, &mut query);
                    link.push('?');
                    link.push_str(&query_string(&query));
                }
                link.push('#');
                link.push_str(&encode(&name));
                link
            }
            _ => continue,
        };
        links.push(link);
    }
    links
}

/// The client's flow (XTLS Vision), which only applies over TCP with TLS or
/// REALITY; elsewhere a client app would refuse the link.
fn flow(client: &Value, info: &StreamInfo) -> Option<String> {
    let flow = text(client, &["flow"])?;
    let fits = matches!(info.network.as_str(), "tcp" | "raw")
        && matches!(info.security.as_str(), "tls" | "reality");
    fits.then_some(flow)
}

/// `method:password` for a Shadowsocks client. For SS-2022 with clients the
/// server key comes first (`method:server_key:user_key`), as multi-user
/// SS-2022 expects.
fn shadowsocks_userinfo(settings: &Value, client: &Value) -> Option<String> {
    let method = text(client, &["method"]).or_else(|| text(settings, &["method"]))?;
    let client_password = text(client, &["password"]);
    let server_password = text(settings, &["password"]);
    let password = if method.starts_with("2022-") {
        match (server_password, client_password) {
            (Some(server), Some(user)) => format!("{server}:{user}"),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return None,
        }
    } else {
        client_password.or(server_password)?
    };
    Some(format!("{method}:{password}"))
}

/// A vmess link: base64 of the JSON form v2rayN defined ("v": "2").
fn vmess_link(
    info: &StreamInfo,
    id: &str,
    client: &Value,
    host: &str,
    port: u64,
    name: &str,
) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let is_grpc = info.network == "grpc";
    let header_type = if is_grpc {
        info.mode.clone().unwrap_or_else(|| "gun".to_owned())
    } else {
        info.header_type
            .clone()
            .unwrap_or_else(|| "none".to_owned())
    };
    let path = if is_grpc {
        info.service_name.clone()
    } else {
        info.path.clone()
    };
    // vmess has no REALITY; only TLS is carried.
    let tls = info.security == "tls";
    let value = json!({
        "v": "2",
        "ps": name,
        "add": host,
        "port": port,
        "id": id,
        "aid": number(client, "alterId").unwrap_or(0),
        "scy": text(client, &["security"]).unwrap_or_else(|| "auto".to_owned()),
        "net": info.network,
        "type": header_type,
        "host": info.host.clone().unwrap_or_default(),
        "path": path.unwrap_or_default(),
        "tls": if tls { "tls" } else { "" },
        "sni": if tls { info.sni.clone().unwrap_or_default() } else { String::new() },
        "alpn": if tls { info.alpn.clone().unwrap_or_default() } else { String::new() },
        "fp": if tls { info.fingerprint.clone().unwrap_or_default() } else { String::new() },
    });
    format!(
        "vmess://{}",
        general_purpose::STANDARD.encode(value.to_string())
    )
}

fn is_enabled(value: &Value) -> bool {
    value.get("enable").and_then(Value::as_bool).unwrap_or(true)
}

/// Builds the config links of the listed client emails from a 3x-ui inbound
/// list (`{"success":true,"obj":[...]}` or a bare array). `panel_host` is used
/// when an inbound does not listen on a public address.
///
/// Disabled clients and disabled inbounds give no links. Errs with
/// [`XuiError::NoClient`] when none of the emails exists on the panel.
pub fn xui_links(
    inbounds_json: &[u8],
    emails: &[&str],
    panel_host: &str,
) -> Result<Vec<String>, XuiError> {
    let inbounds = load_inbounds(inbounds_json)?;
    let mut any_found = false;
    let mut links = Vec::new();
    for email in emails {
        for (i, c) in find_client(&inbounds, email) {
            any_found = true;
            let inbound = &inbounds[i];
            let client = &clients(inbound)[c];
            if !is_enabled(&inbound.raw) || !is_enabled(client) {
                continue;
            }
            links.extend(client_links(inbound, client, email, panel_host));
        }
    }
    if any_found {
        Ok(links)
    } else {
        Err(XuiError::NoClient)
    }
}

/// One `inbounds/update/{id}` call: the whole inbound with the listed clients
/// set to `enable: false`.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundUpdate {
    pub id: i64,
    pub body: Vec<u8>,
}

/// The updates that disable the listed clients. Clients already disabled need
/// none; [`XuiError::NoClient`] when no email exists on the panel.
pub fn xui_disable_updates(
    inbounds_json: &[u8],
    emails: &[&str],
) -> Result<Vec<InboundUpdate>, XuiError> {
    let mut inbounds = load_inbounds(inbounds_json)?;
    let mut any_found = false;
    let mut touched = vec![false; inbounds.len()];
    for email in emails {
        for (i, c) in find_client(&inbounds, email) {
            any_found = true;
            let client = inbounds[i]
                .settings
                .get_mut("clients")
                .and_then(Value::as_array_mut)
                .and_then(|list| list.get_mut(c));
            if let Some(Value::Object(client)) = client
                && client.get("enable").and_then(Value::as_bool) != Some(false)
            {
                client.insert("enable".to_owned(), Value::Bool(false));
                touched[i] = true;
            }
        }
    }
    if !any_found {
        return Err(XuiError::NoClient);
    }
    let mut updates = Vec::new();
    for (inbound, touched) in inbounds.into_iter().zip(touched) {
        if !touched {
            continue;
        }
        let id = inbound
            .raw
            .get("id")
            .and_then(Value::as_i64)
            .ok_or_else(|| XuiError::Decode("inbound without an id".to_owned()))?;
        let mut raw = inbound.raw;
        let settings = if inbound.settings_was_text {
            Value::String(inbound.settings.to_string())
        } else {
            inbound.settings
        };
        if let Value::Object(map) = &mut raw {
            map.insert("settings".to_owned(), settings);
        }
        let body = serde_json::to_vec(&raw).map_err(|e| XuiError::Decode(e.to_string()))?;
        updates.push(InboundUpdate { id, body });
    }
    Ok(updates)
}

/// Status check for 3x-ui: a redirect means the session cookie is no longer
/// valid (3x-ui sends API calls without a session to the login page).
fn check_xui_status(
    response: super::UpstreamResponse,
    base_url: &str,
) -> Result<super::UpstreamResponse, PanelError> {
    match response.status {
        status @ 300..=399 => Err(PanelError::Unauthorized { status }),
        // A 404 of a list or update path says nothing about the user: it is
        // a wrong base path, or a 3x-ui build that hides its API from
        // requests without a session.
        404 => Err(PanelError::Upstream(UpstreamError::Status {
            host: host_of(base_url),
            status: 404,
        })),
        _ => check_status(response, base_url),
    }
}

fn xui_error(error: XuiError, base_url: &str) -> PanelError {
    match error {
        XuiError::NoClient => PanelError::NotFound,
        XuiError::Refused(message) => PanelError::answer(format!("3x-ui refused: {message}")),
        XuiError::Decode(reason) => decode_error(base_url, reason),
    }
}

fn list_inbounds(
    client: &Client,
    panel: &PanelRef<'_>,
    deadline: Instant,
) -> Result<Vec<u8>, PanelError> {
    let url = join_url(panel.base_url, "panel/api/inbounds/list");
    let headers = [("Cookie", panel.token), ("Accept", "application/json")];
    let response = client.send(
        OutboundRequest::get(&url, &headers, CallClass::Link),
        deadline,
    )?;
    Ok(check_xui_status(response, panel.base_url)?.body)
}

pub(crate) fn fetch_links(
    client: &Client,
    panel: &PanelRef<'_>,
    remote_username: &str,
    deadline: Instant,
) -> Result<Vec<String>, PanelError> {
    let emails = split_emails(remote_username);
    if emails.is_empty() {
        return Err(PanelError::NotFound);
    }
    let body = list_inbounds(client, panel, deadline)?;
    xui_links(&body, &emails, &host_of(panel.base_url)).map_err(|e| xui_error(e, panel.base_url))
}

pub(crate) fn fetch_user(
    client: &Client,
    panel: &PanelRef<'_>,
    remote_username: &str,
    deadline: Instant,
) -> Result<RemoteUser, PanelError> {
    let headers = [("Cookie", panel.token), ("Accept", "application/json")];
    let mut user: Option<RemoteUser> = None;
    for email in split_emails(remote_username) {
        let url = join_url(
            panel.base_url,
            &format!(
                "panel/api/inbounds/getClientTraffics/{}",
                encode_segment(email)
            ),
        );
        let response = client.send(
            OutboundRequest::get(&url, &headers, CallClass::User),
            deadline,
        )?;
        let response = match check_xui_status(response, panel.base_url) {
            Ok(response) => response,
            Err(PanelError::Upstream(UpstreamError::Status { status: 404, .. })) => continue,
            Err(e) => return Err(e),
        };
        let value: Value =
            serde_json::from_slice(&response.body).map_err(|e| decode_error(panel.base_url, e))?;
        if value.get("success").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(traffic) = value.get("obj").filter(|obj| obj.is_object()) else {
            continue;
        };
        let used = number(traffic, "up")
            .unwrap_or(0)
            .saturating_add(number(traffic, "down").unwrap_or(0));
        // 3x-ui stores expiry in milliseconds; negative values mean "starts
        // on first use" and zero means never.
        let expire = traffic
            .get("expiryTime")
            .and_then(Value::as_i64)
            .filter(|ms| *ms > 0)
            .map(|ms| ms / 1000);
        let limit = number(traffic, "total").filter(|t| *t > 0);
        let enabled = is_enabled(traffic);
        user = Some(match user {
            None => RemoteUser {
                username: text(traffic, &["email"]).unwrap_or_else(|| email.to_owned()),
                enabled,
                expire,
                used_bytes: Some(used),
                data_limit: limit,
            },
            // Several clients make one account: enabled while any is, used
            // traffic summed, the earliest expiry, limits summed.
            Some(mut acc) => {
                acc.enabled |= enabled;
                acc.used_bytes = Some(acc.used_bytes.unwrap_or(0).saturating_add(used));
                acc.expire = match (acc.expire, expire) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                acc.data_limit = match (acc.data_limit, limit) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    _ => None,
                };
                acc
            }
        });
    }
    user.ok_or(PanelError::NotFound)
}

pub(crate) fn disable_user(
    client: &Client,
    panel: &PanelRef<'_>,
    remote_username: &str,
    deadline: Instant,
) -> Result<(), PanelError> {
    let emails = split_emails(remote_username);
    if emails.is_empty() {
        return Err(PanelError::NotFound);
    }
    let body = list_inbounds(client, panel, deadline)?;
    let updates = xui_disable_updates(&body, &emails).map_err(|e| xui_error(e, panel.base_url))?;
    let headers = [
        ("Cookie", panel.token),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
    ];
    for update in updates {
        // The original posted to `panel/api/inbound/update/{id}`, a path
        // 3x-ui does not have; this is the real one.
        let url = join_url(
            panel.base_url,
            &format!("panel/api/inbounds/update/{}", update.id),
        );
        let request = OutboundRequest {
            method: Method::Post,
            url: &url,
            headers: &headers,
            body: Some(&update.body),
            class: CallClass::Link,
        };
        let response = client.send(request, deadline)?;
        let response = check_xui_status(response, panel.base_url)?;
        // 3x-ui answers 200 with `success: false` when it rejects a change.
        if let Ok(value) = serde_json::from_slice::<Value>(&response.body)
            && value.get("success").and_then(Value::as_bool) == Some(false)
        {
            let message = value.get("msg").and_then(Value::as_str).unwrap_or("");
            return Err(PanelError::answer(format!(
                "3x-ui refused the update: {}",
                message.chars().take(200).collect::<String>()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn inbound(
        id: i64,
        protocol: &str,
        listen: &str,
        port: u16,
        settings: Value,
        stream: Value,
    ) -> Value {
        json!({
            "id": id, "remark": format!("in{id}"), "enable": true, "listen": listen,
            "port": port, "protocol": protocol,
            "settings": settings.to_string(), "streamSettings": stream.to_string(),
        })
    }

    fn list(inbounds: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({"success": true, "msg": "", "obj": inbounds})).unwrap()
    }

    fn query_of(link: &str) -> Vec<(String, String)> {
        let query = link.split('?').nth(1).unwrap().split('#').next().unwrap();
        query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (
                    k.to_owned(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect()
    }

    fn param(link: &str, key: &str) -> Option<String> {
        query_of(link)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    const UUID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

    #[test]
    fn vless_reality_over_tcp_with_flow() {
        let body = list(vec![inbound(
            1,
            "vless",
            "",
            443,
            json!({"clients": [{"id": UUID, "email": "ali", "enable": true, "flow": "xtls-rprx-vision"}],
                   "decryption": "none"}),
            json!({"network": "tcp", "security": "reality",
                   "realitySettings": {"serverNames": ["www.speedtest.net", "x"], "shortIds": ["6ba85179e30d4fc2", ""],
                     "settings": {"publicKey": "Z84J2IelR9ch3k8VtlVhhs5ycBUlXA7wHBWcBrjqnAw", "fingerprint": "chrome", "spiderX": "/"}},
                   "tcpSettings": {"header": {"type": "none"}}}),
        )]);
        let links = xui_links(&body, &["ali"], "panel.example.com").unwrap();
        assert_eq!(links.len(), 1);
        let link = &links[0];
        assert!(
            link.starts_with(&format!("vless://{UUID}@panel.example.com:443?")),
            "{link}"
        );
        assert!(link.ends_with("#in1"));
        assert_eq!(
            query_of(link),
            vec![
                ("type".into(), "tcp".into()),
                ("encryption".into(), "none".into()),
                ("security".into(), "reality".into()),
                ("sni".into(), "www.speedtest.net".into()),
                ("fp".into(), "chrome".into()),
                (
                    "pbk".into(),
                    "Z84J2IelR9ch3k8VtlVhhs5ycBUlXA7wHBWcBrjqnAw".into()
                ),
                ("sid".into(), "6ba85179e30d4fc2".into()),
                ("spx".into(), "/".into()),
                ("flow".into(), "xtls-rprx-vision".into()),
            ]
        );
    }

    #[test]
    fn vless_ws_tls_carries_path_host_sni_alpn_and_drops_flow() {
        let body = list(vec![inbound(
            2,
            "vless",
            "203.0.113.7",
            8443,
            json!({"clients": [{"id": UUID, "email": "ali", "flow": "xtls-rprx-vision"}]}),
            json!({"network": "ws", "security": "tls",
                   "wsSettings": {"path": "/ws?ed=2048", "headers": {"Host": "cdn.example.com"}},
                   "tlsSettings": {"serverName": "cdn.example.com", "alpn": ["h2", "http/1.1"],
                                   "settings": {"fingerprint": "firefox"}}}),
        )]);
        let links = xui_links(&body, &["ali"], "panel.example.com").unwrap();
        let link = &links[0];
        assert!(
            link.starts_with(&format!("vless://{UUID}@203.0.113.7:8443?")),
            "{link}"
        );
        assert_eq!(param(link, "type").as_deref(), Some("ws"));
        assert_eq!(param(link, "path").as_deref(), Some("/ws?ed=2048"));
        assert_eq!(param(link, "host").as_deref(), Some("cdn.example.com"));
        assert_eq!(param(link, "security").as_deref(), Some("tls"));
        assert_eq!(param(link, "sni").as_deref(), Some("cdn.example.com"));
        assert_eq!(param(link, "alpn").as_deref(), Some("h2,http/1.1"));
        assert_eq!(param(link, "fp").as_deref(), Some("firefox"));
        assert_eq!(param(link, "flow"), None, "vision only applies over tcp");
    }

    #[test]
    fn transports_grpc_httpupgrade_xhttp_and_tcp_http_header() {
        let client = json!({"clients": [{"id": UUID, "email": "ali"}]});
        let body = list(vec![
            inbound(
                1,
                "vless",
                "0.0.0.0",
                1,
                client.clone(),
                json!({"network": "grpc", "security": "none", "grpcSettings": {"serviceName": "svc", "multiMode": true}}),
            ),
            inbound(
                2,
                "vless",
                "::",
                2,
                client.clone(),
                json!({"network": "httpupgrade", "httpupgradeSettings": {"path": "/up", "host": "h.example"}}),
            ),
            inbound(
                3,
                "vless",
                "127.0.0.1",
                3,
                client.clone(),
                json!({"network": "xhttp", "xhttpSettings": {"path": "/x", "host": "x.example", "mode": "packet-up"}}),
            ),
            inbound(
                4,
                "vless",
                "",
                4,
                client.clone(),
                json!({"network": "tcp", "tcpSettings": {"header": {"type": "http",
                    "request": {"path": ["/a", "/b"], "headers": {"Host": ["one.example", "two.example"]}}}}}),
            ),
        ]);
        let links = xui_links(&body, &["ali"], "10.1.1.1").unwrap();
        assert_eq!(links.len(), 4);
        for link in &links {
            assert!(
                link.contains("@10.1.1.1:"),
                "wildcard and loopback listen use the panel host: {link}"
            );
        }
        assert_eq!(param(&links[0], "serviceName").as_deref(), Some("svc"));
        assert_eq!(param(&links[0], "mode").as_deref(), Some("multi"));
        assert_eq!(param(&links[1], "type").as_deref(), Some("httpupgrade"));
        assert_eq!(param(&links[1], "path").as_deref(), Some("/up"));
        assert_eq!(param(&links[1], "host").as_deref(), Some("h.example"));
        assert_eq!(param(&links[2], "type").as_deref(), Some("xhttp"));
        assert_eq!(param(&links[2], "mode").as_deref(), Some("packet-up"));
        assert_eq!(param(&links[3], "headerType").as_deref(), Some("http"));
        assert_eq!(param(&links[3], "path").as_deref(), Some("/a"));
        assert_eq!(
            param(&links[3], "host").as_deref(),
            Some("one.example,two.example")
        );
    }

    #[test]
    fn vmess_is_base64_json_v2() {
        let body = list(vec![inbound(
            5,
            "vmess",
            "",
            2083,
            json!({"clients": [{"id": UUID, "email": "ali", "alterId": 0}]}),
            json!({"network": "ws", "security": "tls", "wsSettings": {"path": "/vm", "host": "v.example"},
                   "tlsSettings": {"serverName": "v.example", "alpn": ["http/1.1"], "fingerprint": "chrome"}}),
        )]);
        let links = xui_links(&body, &["ali"], "panel.example.com").unwrap();
        let payload = links[0].strip_prefix("vmess://").unwrap();
        let decoded = general_purpose::STANDARD.decode(payload).unwrap();
        let value: Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            value,
            json!({"v": "2", "ps": "in5", "add": "panel.example.com", "port": 2083, "id": UUID,
                   "aid": 0, "scy": "auto", "net": "ws", "type": "none", "host": "v.example",
                   "path": "/vm", "tls": "tls", "sni": "v.example", "alpn": "http/1.1", "fp": "chrome"})
        );
    }

    #[test]
    fn trojan_and_shadowsocks() {
        let body = list(vec![
            inbound(
                6,
                "trojan",
                "",
                443,
                json!({"clients": [{"password": "p@ss word", "email": "ali"}]}),
                json!({"network": "tcp", "security": "tls", "tlsSettings": {"serverName": "t.example"}}),
            ),
            inbound(
                7,
                "shadowsocks",
                "",
                8388,
                json!({"method": "2022-blake3-aes-128-gcm", "password": "c2VydmVyS2V5",
                       "clients": [{"password": "dXNlcktleQ==", "email": "ali"}]}),
                json!({"network": "tcp", "security": "none"}),
            ),
            inbound(
                8,
                "shadowsocks",
                "",
                8389,
                json!({"method": "chacha20-ietf-poly1305", "clients": [{"password": "secret", "email": "ali", "method": ""}]}),
                json!({"network": "tcp"}),
            ),
        ]);
        let links = xui_links(&body, &["ali"], "h.example").unwrap();
        assert_eq!(links.len(), 3);
        assert!(
            links[0].starts_with(
                "trojan://p%40ss%20word@h.example:443?type=tcp&security=tls&sni=t.example#in6"
            ),
            "{}",
            links[0]
        );

        let ss_2022 = links[1].strip_prefix("ss://").unwrap();
        let (userinfo, rest) = ss_2022.split_once('@').unwrap();
        assert_eq!(rest, "h.example:8388#in7");
        let userinfo = general_purpose::URL_SAFE_NO_PAD.decode(userinfo).unwrap();
        assert_eq!(
            userinfo,
            b"2022-blake3-aes-128-gcm:c2VydmVyS2V5:dXNlcktleQ=="
        );

        let classic = links[2].strip_prefix("ss://").unwrap();
        let (userinfo, rest) = classic.split_once('@').unwrap();
        assert_eq!(rest, "h.example:8389#in8");
        assert_eq!(
            general_purpose::URL_SAFE_NO_PAD.decode(userinfo).unwrap(),
            b"chacha20-ietf-poly1305:secret"
        );
    }

    #[test]
    fn several_emails_disabled_clients_and_case() {
        let body = list(vec![
            inbound(
                1,
                "vless",
                "",
                1,
                json!({"clients": [{"id": "u-1", "email": "Ali"}, {"id": "u-2", "email": "bob", "enable": false}]}),
                json!({"network": "tcp"}),
            ),
            inbound(
                2,
                "vless",
                "",
                2,
                json!({"clients": [{"id": "u-3", "email": "carol"}]}),
                json!({"network": "tcp"}),
            ),
        ]);
        let links = xui_links(&body, &split_emails("carol, ali ,bob"), "h").unwrap();
        assert_eq!(links.len(), 2, "{links:?}");
        assert!(links[0].starts_with("vless://u-3@h:2?"));
        assert!(
            links[1].starts_with("vless://u-1@h:1?"),
            "case-insensitive match"
        );

        assert_eq!(
            xui_links(&body, &["bob"], "h").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(xui_links(&body, &["nobody"], "h"), Err(XuiError::NoClient));
    }

    #[test]
    fn external_proxy_and_ipv6_hosts() {
        let body = list(vec![inbound(
            9,
            "vless",
            "",
            443,
            json!({"clients": [{"id": "u", "email": "ali"}]}),
            json!({"network": "ws", "security": "tls", "tlsSettings": {"serverName": "s"},
                   "externalProxy": [{"forceTls": "same", "dest": "cdn.example", "port": 8443, "remark": "cdn"},
                                     {"forceTls": "none", "dest": "2001:db8::1", "port": 80, "remark": ""}]}),
        )]);
        let links = xui_links(&body, &["ali"], "h").unwrap();
        assert_eq!(links.len(), 2);
        assert!(links[0].starts_with("vless://u@cdn.example:8443?"));
        assert!(links[0].ends_with("#in9-cdn"));
        assert!(links[1].starts_with("vless://u@[2001:db8::1]:80?"));
        assert_eq!(param(&links[1], "security").as_deref(), Some("none"));
        assert_eq!(param(&links[1], "sni"), None);
        assert!(links[1].ends_with("#in9"));
    }

    #[test]
    fn names_are_percent_encoded_remarks() {
        let mut value = inbound(
            1,
            "vless",
            "",
            1,
            json!({"clients": [{"id": "u", "email": "ali"}]}),
            json!({}),
        );
        value["remark"] = json!("🇩🇪 Germany #1");
        let links = xui_links(&list(vec![value]), &["ali"], "h").unwrap();
        let name = links[0].split('#').nth(1).unwrap();
        assert_eq!(
            percent_encoding::percent_decode_str(name)
                .decode_utf8()
                .unwrap(),
            "🇩🇪 Germany #1"
        );
        assert!(!name.contains(' ') && !name.contains('#'));
    }

    #[test]
    fn bad_lists_are_errors() {
        assert!(matches!(
            xui_links(b"<html>", &["a"], "h"),
            Err(XuiError::Decode(_))
        ));
        assert_eq!(
            xui_links(br#"{"success":false,"msg":"nope","obj":null}"#, &["a"], "h"),
            Err(XuiError::Refused("nope".into()))
        );
        assert_eq!(
            xui_links(br#"{"success":true,"obj":null}"#, &["a"], "h"),
            Err(XuiError::NoClient)
        );
    }

    #[test]
    fn disable_updates_only_touch_enabled_listed_clients() {
        let body = list(vec![
            inbound(
                1,
                "vless",
                "",
                1,
                json!({"clients": [{"id": "u-1", "email": "ali"}, {"id": "u-2", "email": "bob"}]}),
                json!({"network": "tcp"}),
            ),
            inbound(
                2,
                "vless",
                "",
                2,
                json!({"clients": [{"id": "u-3", "email": "ali2", "enable": false}]}),
                json!({"network": "tcp"}),
            ),
        ]);
        let updates = xui_disable_updates(&body, &["ali", "ali2"]).unwrap();
        assert_eq!(
            updates.len(),
            1,
            "the already disabled client needs no call"
        );
        assert_eq!(updates[0].id, 1);
        let sent: Value = serde_json::from_slice(&updates[0].body).unwrap();
        assert_eq!(sent["port"], json!(1));
        let settings: Value = serde_json::from_str(sent["settings"].as_str().unwrap()).unwrap();
        assert_eq!(settings["clients"][0]["enable"], json!(false));
        assert_eq!(settings["clients"][1].get("enable"), None);

        assert!(xui_disable_updates(&body, &["ali2"]).unwrap().is_empty());
        assert_eq!(
            xui_disable_updates(&body, &["zed"]),
            Err(XuiError::NoClient)
        );
    }
}
