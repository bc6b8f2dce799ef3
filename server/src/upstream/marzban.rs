//! The Marzban API: user lookup, the `/v2ray` and legacy subscriptions, disable.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde_json::Value;

use super::client::{CallClass, Client, Method, OutboundRequest};
use super::marzneshin::lines;
use super::{
    PanelError, PanelRef, RemoteUser, check_status, decode_error, encode_segment, join_url,
};

/// Standard alphabet, padding optional, stray low bits tolerated: what the
/// subscription decoders of VPN apps accept.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The fields of a Marzban user the flow needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarzbanUser {
    pub username: Option<String>,
    /// The last path segment of `subscription_url`.
    pub sub_token: Option<String>,
    pub enabled: bool,
    pub expire: Option<i64>,
    pub used_bytes: Option<u64>,
    pub data_limit: Option<u64>,
}

/// Parses the JSON of `GET api/user/{name}`. A `status` of "disabled" means
/// not enabled; "limited", "expired" and "on_hold" are the panel's own gates
/// and leave the account enabled.
pub fn parse_user(body: &[u8]) -> Result<MarzbanUser, serde_json::Error> {
    let value: Value = serde_json::from_slice(body)?;
    let status = value
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("active");
    Ok(MarzbanUser {
        username: value
            .get("username")
            .and_then(Value::as_str)
            .map(str::to_owned),
        sub_token: value
            .get("subscription_url")
            .and_then(Value::as_str)
            .and_then(subscription_token)
            .map(str::to_owned),
        enabled: !status.eq_ignore_ascii_case("disabled"),
        expire: value
            .get("expire")
            .and_then(Value::as_i64)
            .filter(|t| *t > 0),
        used_bytes: value.get("used_traffic").and_then(Value::as_u64),
        data_limit: value.get("data_limit").and_then(Value::as_u64),
    })
}

/// The last non-empty path segment of a subscription URL, absolute or not.
pub fn subscription_token(url: &str) -> Option<&str> {
    let without_fragment = url.split('#').next().unwrap_or("");
    let without_query = without_fragment.split('?').next().unwrap_or("");
    let path = match without_query.split_once("://") {
        Some((_, after_scheme)) => after_scheme.find('/').map_or("", |at| &after_scheme[at..]),
        None => without_query,
    };
    path.rsplit('/').find(|segment| !segment.is_empty())
}

/// Decodes a `/v2ray` subscription body into links.
///
/// Leniently: whitespace and line breaks inside the base64 are skipped,
/// missing padding is accepted, and the URL-safe alphabet is read too. A body
/// that already holds plain links (it has `://`, which base64 never has) is
/// kept as links instead of being decoded into garbage. A body that decodes
/// to nothing link-like gives no links.
pub fn decode_v2ray_payload(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.contains("://") {
        return lines(text);
    }
    let compact: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    let compact = compact.trim_end_matches('=');
    let Ok(decoded) = LENIENT.decode(compact) else {
        return Vec::new();
    };
    match std::str::from_utf8(&decoded) {
        Ok(decoded) if decoded.contains("://") => lines(decoded),
        _ => Vec::new(),
    }
}

/// Encodes links the way Marzban's `/v2ray` does; the fake panels and tests
/// use it.
pub fn encode_v2ray_payload(links: &[String]) -> String {
    general_purpose::STANDARD.encode(links.join("\n"))
}

fn get_user(
    client: &Client,
    panel: &PanelRef<'_>,
    name: &str,
    deadline: Instant,
) -> Result<MarzbanUser, PanelError> {
    let url = join_url(
        panel.base_url,
        &format!("api/user/{}", encode_segment(name)),
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
    let token = user
        .sub_token
        .ok_or_else(|| PanelError::answer("marzban user without a subscription url"))?;
    let token = encode_segment(&token);

    // The /v2ray form first; the legacy path when it is missing (older
    // panels) or gives nothing usable.
    let v2ray_url = join_url(panel.base_url, &format!("sub/{token}/v2ray"));
    let response = client.send(
        OutboundRequest::get(&v2ray_url, &[], CallClass::Link),
        deadline,
    )?;
    match check_status(response, panel.base_url) {
        Ok(response) => {
            let links = decode_v2ray_payload(&response.body);
            if !links.is_empty() {
                return Ok(links);
            }
        }
        Err(PanelError::NotFound) => {}
        Err(e) => return Err(e),
    }

    let legacy_url = join_url(panel.base_url, &format!("sub/{token}/"));
    let response = client.send(
        OutboundRequest::get(&legacy_url, &[], CallClass::Link),
        deadline,
    )?;
    match check_status(response, panel.base_url) {
        Ok(response) => Ok(super::parse_link_list(&response.body)),
        // The user exists, so a 404 on both subscription paths is not a reason
        // to try the other API.
        Err(PanelError::NotFound) => Err(PanelError::answer(
            "marzban subscription paths answered 404",
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
        &format!("api/user/{}", encode_segment(name)),
    );
    let auth = format!("Bearer {}", panel.token);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let request = OutboundRequest {
        method: Method::Put,
        url: &url,
        headers: &headers,
        body: Some(br#"{"status":"disabled"}"#),
        class: CallClass::Link,
    };
    let response = client.send(request, deadline)?;
    check_status(response, panel.base_url).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn links() -> Vec<String> {
        vec![
            "vless://a@h:1?security=tls#x".to_owned(),
            "trojan://b@h:2#y".to_owned(),
        ]
    }

    #[test]
    fn user_fields_are_read() {
        let body = br#"{"username":"ali","status":"disabled","expire":1714564800,
            "used_traffic":5,"data_limit":0,
            "subscription_url":"https://sub.example.com/sub/eyJhbGciOi.x_y/?ua=1"}"#;
        let user = parse_user(body).unwrap();
        assert_eq!(
            user,
            MarzbanUser {
                username: Some("ali".into()),
                sub_token: Some("eyJhbGciOi.x_y".into()),
                enabled: false,
                expire: Some(1_714_564_800),
                used_bytes: Some(5),
                data_limit: Some(0),
            }
        );
        let limited = parse_user(br#"{"status":"limited","subscription_url":"/sub/t"}"#).unwrap();
        assert!(limited.enabled);
        assert_eq!(limited.sub_token.as_deref(), Some("t"));
        assert_eq!(limited.expire, None);
    }

    #[test]
    fn subscription_token_is_the_last_segment() {
        assert_eq!(subscription_token("/sub/abc"), Some("abc"));
        assert_eq!(subscription_token("https://h:8/sub/abc/"), Some("abc"));
        assert_eq!(subscription_token("https://h/"), None);
        assert_eq!(subscription_token(""), None);
    }

    #[test]
    fn payload_round_trips() {
        assert_eq!(
            decode_v2ray_payload(encode_v2ray_payload(&links()).as_bytes()),
            links()
        );
    }

    #[test]
    fn payload_decoding_is_lenient() {
        let encoded = encode_v2ray_payload(&links());
        let unpadded = encoded.trim_end_matches('=');
        assert_eq!(decode_v2ray_payload(unpadded.as_bytes()), links());

        let wrapped: String = encoded
            .as_bytes()
            .chunks(10)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            decode_v2ray_payload(format!(" {wrapped}\n").as_bytes()),
            links()
        );

        let url_safe = general_purpose::URL_SAFE_NO_PAD.encode("vless://a@h:1?p=~~~>>>#x");
        assert!(url_safe.contains('-') || url_safe.contains('_'));
        assert_eq!(
            decode_v2ray_payload(url_safe.as_bytes()),
            vec!["vless://a@h:1?p=~~~>>>#x".to_owned()]
        );
    }

    #[test]
    fn plain_links_are_kept_not_decoded() {
        assert_eq!(
            decode_v2ray_payload(b"vless://a@h:1?security=tls#x\ntrojan://b@h:2#y\n"),
            links()
        );
    }

    #[test]
    fn garbage_gives_no_links() {
        assert!(decode_v2ray_payload(b"").is_empty());
        assert!(decode_v2ray_payload(b"<html>not found</html>").is_empty());
        assert!(decode_v2ray_payload(b"aGVsbG8gd29ybGQ=").is_empty());
        assert!(decode_v2ray_payload(&[0xff, 0xfe, 0x00]).is_empty());
    }
}
