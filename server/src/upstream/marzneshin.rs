//! The Marzneshin API: user lookup, the `/links` subscription, disable.

use std::time::Instant;

use serde_json::Value;

use super::client::{CallClass, Client, Method, OutboundRequest};
use super::{
    PanelError, PanelRef, RemoteUser, check_status, decode_error, encode_segment, join_url,
    parse_iso8601,
};

/// The fields of a Marzneshin user the flow needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarzneshinUser {
    pub username: Option<String>,
    /// The subscription key, part of the `/sub/{name}/{key}/links` path.
    pub key: Option<String>,
    pub enabled: bool,
    pub expire: Option<i64>,
    pub used_bytes: Option<u64>,
    pub data_limit: Option<u64>,
}

/// Parses the JSON of `GET api/users/{name}`.
pub fn parse_user(body: &[u8]) -> Result<MarzneshinUser, serde_json::Error> {
    let value: Value = serde_json::from_slice(body)?;
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(MarzneshinUser {
        username: text("username"),
        key: text("key"),
        enabled: value
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        expire: value
            .get("expire_date")
            .and_then(Value::as_str)
            .and_then(parse_iso8601),
        used_bytes: value.get("used_traffic").and_then(Value::as_u64),
        data_limit: value.get("data_limit").and_then(Value::as_u64),
    })
}

/// Reads a link list in any of the shapes panels send: a JSON array of
/// strings, a JSON object with a `links` array, or text with one link per
/// line. Text without any `://` is tried as a base64 payload. Blank lines are
/// dropped and entries trimmed.
pub fn parse_link_list(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(value) = serde_json::from_str::<Value>(trimmed)
    {
        let list = match &value {
            Value::Array(items) => Some(items),
            Value::Object(map) => map.get("links").and_then(Value::as_array),
            _ => None,
        };
        return list
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
    }
    if !trimmed.contains("://") && !trimmed.is_empty() {
        return super::marzban::decode_v2ray_payload(trimmed.as_bytes());
    }
    lines(trimmed)
}

/// Non-empty trimmed lines.
pub(crate) fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn get_user(
    client: &Client,
    panel: &PanelRef<'_>,
    name: &str,
    deadline: Instant,
) -> Result<MarzneshinUser, PanelError> {
    let url = join_url(
        panel.base_url,
        &format!("api/users/{}", encode_segment(name)),
    );
    let auth = format!("Bearer {}", panel.token);
    let headers = [("Authorization", auth.as_str())];
    let response = client.send(
        OutboundRequest::get(&url, &headers, CallClass::User),
        deadline,
    )?;
    let response = check_status(response, panel.base_url)?;
    parse_user(&response.body).map_err(|e| decode_error(panel.base_url, e))
}

pub(crate) fn fetch_user(
    client: &Client,
    panel: &PanelRef<'_>,
    name: &str,
    deadline: Instant,
) -> Result<RemoteUser, PanelError> {
    let user = get_user(client, panel, name, deadline)?;
    Ok(RemoteUser {
        username: user.username.unwrap_or_else(|| name.to_owned()),
        enabled: user.enabled,
        expire: user.expire,
        used_bytes: user.used_bytes,
        data_limit: user.data_limit,
    })
}

pub(crate) fn fetch_links(
    client: &Client,
    panel: &PanelRef<'_>,
    name: &str,
    deadline: Instant,
) -> Result<Vec<String>, PanelError> {
    let user = get_user(client, panel, name, deadline)?;
    let key = user
        .key
        .ok_or_else(|| PanelError::answer("marzneshin user without a subscription key"))?;
    // The panel's own spelling of the name, as the subscription path checks it.
    let username = user.username.as_deref().unwrap_or(name);
    let url = join_url(
        panel.base_url,
        &format!(
            "sub/{}/{}/links",
            encode_segment(username),
            encode_segment(&key)
        ),
    );
    let response = client.send(OutboundRequest::get(&url, &[], CallClass::Link), deadline)?;
    match check_status(response, panel.base_url) {
        Ok(response) => Ok(parse_link_list(&response.body)),
        // The user exists, so a 404 here is the panel's fault, not a reason
        // to try the other API.
        Err(PanelError::NotFound) => Err(PanelError::answer(
            "marzneshin subscription links answered 404",
        )),
        Err(e) => Err(e),
    }
}

pub(crate) fn disable_user(
    client: &Client,
    panel: &PanelRef<'_>,
    name: &str,
    deadline: Instant,
) -> Result<(), PanelError> {
    let url = join_url(
        panel.base_url,
        &format!("api/users/{}/disable", encode_segment(name)),
    );
    let auth = format!("Bearer {}", panel.token);
    let headers = [("Authorization", auth.as_str())];
    let request = OutboundRequest {
        method: Method::Post,
        url: &url,
        headers: &headers,
        body: None,
        class: CallClass::Link,
    };
    let response = client.send(request, deadline)?;
    check_status(response, panel.base_url).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn user_fields_are_read() {
        let body = br#"{"username":"ali","key":"k123","enabled":false,
            "expire_date":"2024-05-01T12:00:00","used_traffic":1024,"data_limit":4096}"#;
        let user = parse_user(body).unwrap();
        assert_eq!(
            user,
            MarzneshinUser {
                username: Some("ali".into()),
                key: Some("k123".into()),
                enabled: false,
                expire: Some(1_714_564_800),
                used_bytes: Some(1024),
                data_limit: Some(4096),
            }
        );
        let sparse = parse_user(br#"{"key":"k","expire_date":null}"#).unwrap();
        assert!(sparse.enabled);
        assert_eq!(sparse.expire, None);
        assert!(parse_user(b"<html>").is_err());
    }

    #[test]
    fn link_lists_in_every_shape() {
        let want = vec!["vless://a@h:1#x".to_owned(), "trojan://b@h:2#y".to_owned()];
        assert_eq!(
            parse_link_list(br#"["vless://a@h:1#x", " trojan://b@h:2#y ", ""]"#),
            want
        );
        assert_eq!(
            parse_link_list(br#"{"links":["vless://a@h:1#x","trojan://b@h:2#y"]}"#),
            want
        );
        assert_eq!(
            parse_link_list(b"vless://a@h:1#x\r\n\r\ntrojan://b@h:2#y\n"),
            want
        );
        // A base64 payload is decoded rather than returned as one bogus line.
        assert_eq!(
            parse_link_list(b"dmxlc3M6Ly9hQGg6MSN4CnRyb2phbjovL2JAaDoyI3k="),
            want
        );
        assert!(parse_link_list(b"").is_empty());
        assert!(parse_link_list(br#"{"detail":"x"}"#).is_empty());
    }
}
