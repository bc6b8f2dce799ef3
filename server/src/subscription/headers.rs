//! The response headers of a subscription answer: quota figures and the conventions VPN client apps read.
//!
//! Each function returns a header as a `(name, value)` pair and is pure, so
//! the endpoint flow and the benches call them without a request. Values
//! never contain CR or LF: every piece of user text is either plain
//! printable ASCII, percent-encoded or base64.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// A response header: a constant name and its value.
pub type Header = (&'static str, String);

/// What a user may use and has used, as read from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Plan limit in bytes; 0 means unlimited.
    pub limit: u64,
    /// Bytes used so far.
    pub used: u64,
    /// Expiry as Unix seconds (UTC); `None` means no expiry.
    pub expire_at: Option<i64>,
    /// Whether the user's remote accounts have been disabled on the panels.
    pub disabled_pushed: bool,
}

impl Quota {
    /// Bytes left before the limit, or `None` when the plan is unlimited.
    pub fn remaining(&self) -> Option<u64> {
        (self.limit > 0).then(|| self.limit.saturating_sub(self.used))
    }
}

/// Characters left as they are in a URL path segment: RFC 3986's unreserved
/// set. Everything else, `/`, `#`, `?` and `%` included, is escaped so a
/// username cannot change the path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters allowed unescaped in an RFC 8187 `ext-value` (`attr-char`).
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `X-Plan-Limit-Bytes`, `X-Used-Bytes`, `X-Remaining-Bytes` and
/// `X-Disabled-Pushed` for a user who is served.
///
/// `X-Remaining-Bytes` is `limit - used` (never below 0), or `unlimited`
/// when the limit is 0.
pub fn quota_headers(quota: &Quota) -> [Header; 4] {
    let remaining = match quota.remaining() {
        Some(bytes) => bytes.to_string(),
        None => "unlimited".to_owned(),
    };
    [
        ("X-Plan-Limit-Bytes", quota.limit.to_string()),
        ("X-Used-Bytes", quota.used.to_string()),
        ("X-Remaining-Bytes", remaining),
        ("X-Disabled-Pushed", flag(quota.disabled_pushed).to_owned()),
    ]
}

/// The same four headers for a user who is blocked (over the limit or
/// expired): nothing remains and the accounts are, or are being, disabled,
/// whatever the row said when it was read.
pub fn blocked_quota_headers(quota: &Quota) -> [Header; 4] {
    [
        ("X-Plan-Limit-Bytes", quota.limit.to_string()),
        ("X-Used-Bytes", quota.used.to_string()),
        ("X-Remaining-Bytes", "0".to_owned()),
        ("X-Disabled-Pushed", flag(true).to_owned()),
    ]
}

fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

/// `subscription-userinfo`, which clients show as a usage bar and expiry:
/// `upload=0; download=USED; total=LIMIT; expire=UNIX`.
///
/// Panels report one usage figure, so it all counts as download. `total`
/// is 0 for an unlimited plan and `expire` 0 for no expiry, as clients
/// expect; an expiry before 1970 is also sent as 0 rather than negative.
pub fn subscription_userinfo(quota: &Quota) -> Header {
    let expire = quota.expire_at.unwrap_or(0).max(0);
    let value = format!(
        "upload=0; download={}; total={}; expire={expire}",
        quota.used, quota.limit
    );
    ("subscription-userinfo", value)
}

/// `profile-update-interval`: how often, in hours, clients should refresh.
pub fn profile_update_interval(hours: u32) -> Header {
    ("profile-update-interval", hours.to_string())
}

/// `profile-title`: the name clients give the subscription.
///
/// Sent as is when it is printable ASCII; otherwise (Persian names, emoji)
/// as `base64:` and the base64 of its UTF-8, the form clients decode.
pub fn profile_title(title: &str) -> Header {
    let plain = title.bytes().all(|byte| matches!(byte, b' '..=b'~'));
    let value = if plain {
        title.to_owned()
    } else {
        format!("base64:{}", STANDARD.encode(title))
    };
    ("profile-title", value)
}

/// The public subscription URL of a user: `{base}/sub/{username}/{app_key}/links`,
/// with the username and key percent-encoded as path segments and any
/// trailing slash of `public_base_url` ignored.
pub fn subscription_url(public_base_url: &str, username: &str, app_key: &str) -> String {
    format!(
        "{}/sub/{}/{}/links",
        public_base_url.trim_end_matches('/'),
        utf8_percent_encode(username, PATH_SEGMENT),
        utf8_percent_encode(app_key, PATH_SEGMENT),
    )
}

/// `profile-web-page-url`: the status page clients link to, which is the
/// subscription URL itself opened in a browser.
pub fn profile_web_page_url(public_base_url: &str, username: &str, app_key: &str) -> Header {
    (
        "profile-web-page-url",
        subscription_url(public_base_url, username, app_key),
    )
}

/// `content-disposition`: an attachment named `file_name`.
///
/// `filename` gets an ASCII-only copy (other characters, quotes and
/// backslashes become `_`) for old clients; when the name is not plain ASCII
/// the exact name follows as RFC 8187 `filename*=UTF-8''...`, which current
/// clients prefer.
pub fn content_disposition(file_name: &str) -> Header {
    let fallback: String = file_name
        .chars()
        .map(|ch| match ch {
            ' '..='~' if ch != '"' && ch != '\\' => ch,
            _ => '_',
        })
        .collect();
    let value = if fallback == file_name {
        format!("attachment; filename=\"{fallback}\"")
    } else {
        format!(
            "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
            utf8_percent_encode(file_name, ATTR_CHAR)
        )
    };
    ("content-disposition", value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn quota(limit: u64, used: u64) -> Quota {
        Quota {
            limit,
            used,
            expire_at: Some(1_798_761_600),
            disabled_pushed: false,
        }
    }

    fn value<'a>(headers: &'a [Header], name: &str) -> &'a str {
        &headers
            .iter()
            .find(|(header, _)| *header == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    #[test]
    fn quota_headers_show_the_remaining_bytes() {
        let headers = quota_headers(&quota(10 * GIB, 3 * GIB));
        assert_eq!(value(&headers, "X-Plan-Limit-Bytes"), "10737418240");
        assert_eq!(value(&headers, "X-Used-Bytes"), "3221225472");
        assert_eq!(value(&headers, "X-Remaining-Bytes"), "7516192768");
        assert_eq!(value(&headers, "X-Disabled-Pushed"), "0");
    }

    #[test]
    fn quota_headers_never_go_below_zero() {
        let headers = quota_headers(&quota(GIB, 2 * GIB));
        assert_eq!(value(&headers, "X-Remaining-Bytes"), "0");
    }

    #[test]
    fn quota_headers_say_unlimited_for_a_zero_limit() {
        let mut unlimited = quota(0, 5 * GIB);
        unlimited.disabled_pushed = true;
        let headers = quota_headers(&unlimited);
        assert_eq!(value(&headers, "X-Plan-Limit-Bytes"), "0");
        assert_eq!(value(&headers, "X-Remaining-Bytes"), "unlimited");
        assert_eq!(value(&headers, "X-Disabled-Pushed"), "1");
    }

    #[test]
    fn blocked_quota_headers_force_nothing_remaining() {
        let headers = blocked_quota_headers(&quota(10 * GIB, GIB));
        assert_eq!(value(&headers, "X-Remaining-Bytes"), "0");
        assert_eq!(value(&headers, "X-Disabled-Pushed"), "1");
        assert_eq!(value(&headers, "X-Used-Bytes"), "1073741824");
    }

    #[test]
    fn userinfo_lists_usage_total_and_expiry() {
        let header = subscription_userinfo(&quota(10 * GIB, 3 * GIB));
        assert_eq!(header.0, "subscription-userinfo");
        assert_eq!(
            header.1,
            "upload=0; download=3221225472; total=10737418240; expire=1798761600"
        );
    }

    #[test]
    fn userinfo_uses_zero_for_unlimited_and_no_expiry() {
        let mut open = quota(0, 42);
        open.expire_at = None;
        assert_eq!(
            subscription_userinfo(&open).1,
            "upload=0; download=42; total=0; expire=0"
        );
        open.expire_at = Some(-5);
        assert_eq!(
            subscription_userinfo(&open).1,
            "upload=0; download=42; total=0; expire=0"
        );
    }

    #[test]
    fn update_interval_is_in_hours() {
        assert_eq!(
            profile_update_interval(12),
            ("profile-update-interval", "12".to_owned())
        );
    }

    #[test]
    fn profile_title_is_plain_when_printable_ascii() {
        assert_eq!(profile_title("ali - VIP").1, "ali - VIP");
    }

    #[test]
    fn profile_title_is_base64_otherwise() {
        assert_eq!(profile_title("علی").1, "base64:2LnZhNuM");
        // A line break must never reach a header value.
        assert_eq!(profile_title("a\r\nb").1, "base64:YQ0KYg==");
    }

    #[test]
    fn web_page_url_escapes_path_segments() {
        let header = profile_web_page_url("https://sub.example.com/", "h#1/x", "k?y%");
        assert_eq!(header.0, "profile-web-page-url");
        assert_eq!(
            header.1,
            "https://sub.example.com/sub/h%231%2Fx/k%3Fy%25/links"
        );
        assert_eq!(
            subscription_url("https://sub.example.com:8443/base", "علی", "Ab-9_x.~"),
            "https://sub.example.com:8443/base/sub/%D8%B9%D9%84%DB%8C/Ab-9_x.~/links"
        );
    }

    #[test]
    fn content_disposition_is_plain_for_ascii_names() {
        assert_eq!(content_disposition("ali").1, "attachment; filename=\"ali\"");
    }

    #[test]
    fn content_disposition_adds_the_utf8_name_otherwise() {
        assert_eq!(
            content_disposition("علی 1").1,
            "attachment; filename=\"___ 1\"; filename*=UTF-8''%D8%B9%D9%84%DB%8C%201"
        );
        assert_eq!(
            content_disposition("a\"b\\c").1,
            "attachment; filename=\"a_b_c\"; filename*=UTF-8''a%22b%5Cc"
        );
    }
}
