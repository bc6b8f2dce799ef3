//! Outbound calls to the VPN panels: the HTTP client and one client per panel kind.
//!
//! [`Panels`] is what the subscription flow uses: fetch a remote account's
//! config links, look the account up, disable it. It hides which API a panel
//! row really speaks. Marzneshin and Marzban rows are often mislabelled, so
//! the row's own API is tried first and the other one only when the first
//! answers 404; a username that is 404 everywhere is retried in lower case.
//!
//! Errors name the panel host for the log; the subscription flow must not put
//! them in bodies sent to end users.

pub mod client;
pub mod marzban;
pub mod marzneshin;
pub mod xui;

use std::time::Instant;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub use client::{
    CallClass, Client, ClientOptions, Method, OutboundRequest, Stage, UpstreamError,
    UpstreamResponse,
};
pub use marzban::decode_v2ray_payload;
pub use marzneshin::parse_link_list;
pub use xui::{XuiError, xui_links};

/// The API a panel row speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PanelKind {
    Marzneshin,
    Marzban,
    /// 3x-ui, called "sanaei" in the database.
    Xui,
}

impl PanelKind {
    /// Reads `panels.panel_type`, ignoring case and surrounding spaces.
    ///
    /// An unknown or empty value counts as Marzneshin, the column's default,
    /// as in the original (which treated every type but "sanaei" as the
    /// Marzneshin/Marzban pair). Since a Marzneshin row falls back to the
    /// Marzban API on 404, such a row still works with either.
    pub fn from_panel_type(panel_type: &str) -> PanelKind {
        let lowered = panel_type.trim().to_ascii_lowercase();
        match lowered.as_str() {
            "marzban" => PanelKind::Marzban,
            "sanaei" | "3x-ui" | "3xui" | "xui" | "x-ui" => PanelKind::Xui,
            _ => PanelKind::Marzneshin,
        }
    }

    /// A constant name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PanelKind::Marzneshin => "marzneshin",
            PanelKind::Marzban => "marzban",
            PanelKind::Xui => "3x-ui",
        }
    }
}

/// A panel row as the clients need it. `token` is a secret: a Bearer token for
/// Marzneshin and Marzban, a `name=value` session cookie for 3x-ui.
#[derive(Clone, Copy)]
pub struct PanelRef<'a> {
    pub id: i64,
    pub name: &'a str,
    pub kind: PanelKind,
    pub base_url: &'a str,
    pub token: &'a str,
}

impl std::fmt::Debug for PanelRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelRef")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A remote account as a panel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUser {
    /// The username the panel knows (it may differ in case from the one asked).
    pub username: String,
    /// False when the panel has the account disabled.
    pub enabled: bool,
    /// Expiry as a Unix time in seconds; None when it never expires.
    pub expire: Option<i64>,
    /// Traffic used so far, when the panel reports it.
    pub used_bytes: Option<u64>,
    /// Traffic limit; None or Some(0) means unlimited.
    pub data_limit: Option<u64>,
}

/// Failures of a panel call.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    /// The account is unknown to every API and name variant tried.
    #[error("user not found on the panel")]
    NotFound,
    /// The panel refused the stored credential.
    #[error("panel refused the credential (status {status})")]
    Unauthorized { status: u16 },
    /// The panel answered, but not with what its API promises.
    #[error("unexpected panel answer: {reason}")]
    Answer { reason: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl PanelError {
    /// A short constant name of the error's kind, for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            PanelError::NotFound => "not_found",
            PanelError::Unauthorized { .. } => "unauthorized",
            PanelError::Answer { .. } => "answer",
            PanelError::Upstream(e) => e.kind(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PanelError::NotFound)
    }

    fn answer(reason: impl Into<String>) -> PanelError {
        PanelError::Answer {
            reason: reason.into(),
        }
    }
}

/// The panel clients, sharing one HTTP client and its connection pool.
#[derive(Debug, Clone)]
pub struct Panels {
    client: Client,
}

impl Panels {
    pub fn new(client: Client) -> Panels {
        Panels { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The config links of a remote account (for 3x-ui, of every client the
    /// comma-separated `remote_username` lists).
    pub fn fetch_links(
        &self,
        panel: &PanelRef<'_>,
        remote_username: &str,
        deadline: Instant,
    ) -> Result<Vec<String>, PanelError> {
        let started = Instant::now();
        let result = match panel.kind {
            PanelKind::Xui => xui::fetch_links(&self.client, panel, remote_username, deadline),
            PanelKind::Marzneshin | PanelKind::Marzban => {
                with_fallback(panel, remote_username, |api, name| match api {
                    PanelKind::Marzban => marzban::fetch_links(&self.client, panel, name, deadline),
                    _ => marzneshin::fetch_links(&self.client, panel, name, deadline),
                })
            }
        };
        log_outcome(panel, "fetch_links", started, &result);
        result
    }

    /// The remote account, or None when every API tried answered 404.
    pub fn fetch_user(
        &self,
        panel: &PanelRef<'_>,
        remote_username: &str,
        deadline: Instant,
    ) -> Result<Option<RemoteUser>, PanelError> {
        let started = Instant::now();
        let result = match panel.kind {
            PanelKind::Xui => xui::fetch_user(&self.client, panel, remote_username, deadline),
            PanelKind::Marzneshin | PanelKind::Marzban => {
                with_fallback(panel, remote_username, |api, name| match api {
                    PanelKind::Marzban => marzban::fetch_user(&self.client, panel, name, deadline),
                    _ => marzneshin::fetch_user(&self.client, panel, name, deadline),
                })
            }
        };
        log_outcome(panel, "fetch_user", started, &result);
        match result {
            Ok(user) => Ok(Some(user)),
            Err(PanelError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Disables the remote account. `Err(PanelError::NotFound)` when no API
    /// knows it; the caller decides whether that counts as done.
    pub fn disable_user(
        &self,
        panel: &PanelRef<'_>,
        remote_username: &str,
        deadline: Instant,
    ) -> Result<(), PanelError> {
        let started = Instant::now();
        let result = match panel.kind {
            PanelKind::Xui => xui::disable_user(&self.client, panel, remote_username, deadline),
            PanelKind::Marzneshin | PanelKind::Marzban => {
                with_fallback(panel, remote_username, |api, name| match api {
                    PanelKind::Marzban => {
                        marzban::disable_user(&self.client, panel, name, deadline)
                    }
                    _ => marzneshin::disable_user(&self.client, panel, name, deadline),
                })
            }
        };
        log_outcome(panel, "disable_user", started, &result);
        result
    }
}

fn log_outcome<T>(
    panel: &PanelRef<'_>,
    call: &'static str,
    started: Instant,
    result: &Result<T, PanelError>,
) {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(_) => tracing::debug!(
            panel_id = panel.id,
            panel = panel.name,
            call,
            elapsed_ms,
            "panel call done"
        ),
        Err(e) => tracing::debug!(
            panel_id = panel.id,
            panel = panel.name,
            call,
            elapsed_ms,
            error = %e,
            "panel call failed"
        ),
    }
}

/// Runs `call` with the row's own API first and the other one on 404, then
/// the same with the username in lower case when it differs.
fn with_fallback<T>(
    panel: &PanelRef<'_>,
    remote_username: &str,
    mut call: impl FnMut(PanelKind, &str) -> Result<T, PanelError>,
) -> Result<T, PanelError> {
    let order = match panel.kind {
        PanelKind::Marzban => [PanelKind::Marzban, PanelKind::Marzneshin],
        _ => [PanelKind::Marzneshin, PanelKind::Marzban],
    };
    let lowered = remote_username.to_lowercase();
    let mut names = vec![remote_username];
    if lowered != remote_username {
        names.push(lowered.as_str());
    }
    for name in names {
        for api in order {
            match call(api, name) {
                Err(PanelError::NotFound) => {
                    tracing::debug!(
                        panel_id = panel.id,
                        api = api.as_str(),
                        "panel api answered 404, trying the next"
                    );
                }
                other => return other,
            }
        }
    }
    Err(PanelError::NotFound)
}

/// Characters left as they are in a path segment: RFC 3986 unreserved only,
/// so `#`, `?`, `/` and `%` in a username cannot change the request.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment.
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Joins the panel base URL (with or without a trailing slash) and a relative
/// path whose segments are already encoded.
pub fn join_url(base_url: &str, path: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    let path = path.trim_start_matches('/');
    format!("{base}/{path}")
}

/// Maps a panel answer's status: 2xx passes, 404 is [`PanelError::NotFound`],
/// 401 and 403 are [`PanelError::Unauthorized`], anything else an error.
fn check_status(
    response: UpstreamResponse,
    base_url: &str,
) -> Result<UpstreamResponse, PanelError> {
    match response.status {
        200..=299 => Ok(response),
        404 => Err(PanelError::NotFound),
        status @ (401 | 403) => Err(PanelError::Unauthorized { status }),
        status => Err(PanelError::Upstream(UpstreamError::Status {
            host: host_of(base_url),
            status,
        })),
    }
}

/// The host part of a URL for error messages and link building.
fn host_of(url: &str) -> String {
    client::Target::parse(url)
        .map(|t| t.host)
        .unwrap_or_else(|_| "invalid-url".to_owned())
}

fn decode_error(base_url: &str, reason: impl std::fmt::Display) -> PanelError {
    PanelError::Upstream(UpstreamError::Decode {
        host: host_of(base_url),
        reason: reason.to_string(),
    })
}

/// Parses an ISO 8601 date-time as UTC seconds: `2024-05-01T12:00:00`, with
/// optional fraction and `Z` or `+hh:mm` offset. Marzneshin sends naive UTC
/// times.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;

    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else if let Some(at) = time.rfind(['+', '-']) {
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let offset = &offset[1..];
        let (hours, minutes) = offset
            .split_once(':')
            .unwrap_or((offset.get(..2)?, offset.get(2..).unwrap_or("0")));
        let hours: i64 = hours.parse().ok()?;
        let minutes: i64 = if minutes.is_empty() {
            0
        } else {
            minutes.parse().ok()?
        };
        (clock, sign * (hours * 3600 + minutes * 60))
    } else {
        (time, 0)
    };
    let clock = clock.split('.').next()?;
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// well-known algorithm, written out here).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn panel_type_maps_to_kind() {
        assert_eq!(
            PanelKind::from_panel_type("marzneshin"),
            PanelKind::Marzneshin
        );
        assert_eq!(PanelKind::from_panel_type(" Marzban "), PanelKind::Marzban);
        assert_eq!(PanelKind::from_panel_type("sanaei"), PanelKind::Xui);
        assert_eq!(PanelKind::from_panel_type("3X-UI"), PanelKind::Xui);
        assert_eq!(PanelKind::from_panel_type("xui"), PanelKind::Xui);
        assert_eq!(PanelKind::from_panel_type(""), PanelKind::Marzneshin);
        assert_eq!(PanelKind::from_panel_type("hiddify"), PanelKind::Marzneshin);
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(encode_segment("h#1"), "h%231");
        assert_eq!(encode_segment("a/b?c%d"), "a%2Fb%3Fc%25d");
        assert_eq!(encode_segment("user.name_1-x~"), "user.name_1-x~");
        assert_eq!(encode_segment("علی"), "%D8%B9%D9%84%DB%8C");
    }

    #[test]
    fn join_handles_trailing_slashes() {
        assert_eq!(join_url("http://p:1/", "api/x"), "http://p:1/api/x");
        assert_eq!(join_url("http://p:1", "/api/x"), "http://p:1/api/x");
        assert_eq!(join_url("https://p/base//", "api"), "https://p/base/api");
    }

    #[test]
    fn iso8601_parses_to_unix_seconds() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_iso8601("2024-05-01T12:00:00"), Some(1_714_564_800));
        assert_eq!(
            parse_iso8601("2024-05-01T12:00:00.123456Z"),
            Some(1_714_564_800)
        );
        assert_eq!(
            parse_iso8601("2024-05-01T14:30:00+02:30"),
            Some(1_714_564_800)
        );
        assert_eq!(
            parse_iso8601("2024-05-01 11:00:00-01:00"),
            Some(1_714_564_800)
        );
        assert_eq!(parse_iso8601("2000-02-29T00:00:00"), Some(951_782_400));
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_iso8601("2024-13-01T00:00:00"), None);
    }

    #[test]
    fn panel_ref_debug_hides_the_token() {
        let panel = PanelRef {
            id: 1,
            name: "p",
            kind: PanelKind::Marzban,
            base_url: "http://p/",
            token: "secret-token",
        };
        assert!(!format!("{panel:?}").contains("secret-token"));
    }

    #[test]
    fn fallback_tries_own_api_then_other_then_lower_case() {
        let panel = PanelRef {
            id: 1,
            name: "p",
            kind: PanelKind::Marzban,
            base_url: "http://p/",
            token: "t",
        };
        let mut tried = Vec::new();
        let result: Result<(), PanelError> = with_fallback(&panel, "Ali", |api, name| {
            tried.push((api, name.to_owned()));
            Err(PanelError::NotFound)
        });
        assert!(result.unwrap_err().is_not_found());
        assert_eq!(
            tried,
            vec![
                (PanelKind::Marzban, "Ali".to_owned()),
                (PanelKind::Marzneshin, "Ali".to_owned()),
                (PanelKind::Marzban, "ali".to_owned()),
                (PanelKind::Marzneshin, "ali".to_owned()),
            ]
        );

        let mut calls = 0;
        let result = with_fallback(&panel, "ali", |_, _| {
            calls += 1;
            Err::<(), _>(PanelError::Unauthorized { status: 401 })
        });
        assert_eq!(result.unwrap_err().kind(), "unauthorized");
        assert_eq!(calls, 1, "only a 404 moves on to the other api");
    }
}
