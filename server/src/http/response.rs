//! The response builder: status, owned header values, the body, and their
//! encoding on the wire.

use std::borrow::Cow;

/// A response body: a constant or bytes built for this answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(bytes) => bytes,
            Body::Owned(bytes) => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::Static(b"")
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Body {
        Body::Static(text.as_bytes())
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Body {
        Body::Static(bytes)
    }
}

impl<const N: usize> From<&'static [u8; N]> for Body {
    fn from(bytes: &'static [u8; N]) -> Body {
        Body::Static(bytes)
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body::Owned(text.into_bytes())
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Owned(bytes)
    }
}

impl From<Cow<'static, str>> for Body {
    fn from(text: Cow<'static, str>) -> Body {
        match text {
            Cow::Borrowed(text) => Body::from(text),
            Cow::Owned(text) => Body::from(text),
        }
    }
}

/// A header value: a constant, an owned string, or a number kept inline so
/// that quota figures cost no allocation. Values holding CR, LF or NUL are
/// never written (see [`Response`]).
#[derive(Clone, Debug)]
pub struct HeaderValue(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Static(&'static str),
    Owned(String),
    // The decimal digits of an integer: 20 bytes hold u64::MAX and i64::MIN.
    Number { digits: [u8; 20], len: u8 },
}

impl HeaderValue {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(text) => text,
            Repr::Owned(text) => text,
            // Only ASCII digits and a sign are ever stored here.
            Repr::Number { digits, len } => {
                std::str::from_utf8(&digits[..usize::from(*len)]).unwrap_or_default()
            }
        }
    }

    fn number(negative: bool, magnitude: u64) -> HeaderValue {
        let mut scratch = [0u8; 20];
        let text = decimal(magnitude, &mut scratch);
        let mut digits = [0u8; 20];
        let mut len = 0;
        if negative {
            digits[0] = b'-';
            len = 1;
        }
        digits[len..len + text.len()].copy_from_slice(text);
        len += text.len();
        HeaderValue(Repr::Number {
            digits,
            len: len as u8,
        })
    }

    /// Whether the value can be written without breaking the message
    /// framing: no CR, LF or NUL.
    fn is_safe(&self) -> bool {
        match &self.0 {
            Repr::Number { .. } => true,
            Repr::Static(text) => is_safe_value(text),
            Repr::Owned(text) => is_safe_value(text),
        }
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderValue {}

impl std::fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for HeaderValue {
    fn from(text: &'static str) -> HeaderValue {
        HeaderValue(Repr::Static(text))
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> HeaderValue {
        HeaderValue(Repr::Owned(text))
    }
}

impl From<Cow<'static, str>> for HeaderValue {
    fn from(text: Cow<'static, str>) -> HeaderValue {
        match text {
            Cow::Borrowed(text) => HeaderValue::from(text),
            Cow::Owned(text) => HeaderValue::from(text),
        }
    }
}

macro_rules! header_value_from_unsigned {
    ($($kind:ty),*) => {$(
        impl From<$kind> for HeaderValue {
            fn from(number: $kind) -> HeaderValue {
                HeaderValue::number(false, number as u64)
            }
        }
    )*};
}

macro_rules! header_value_from_signed {
    ($($kind:ty),*) => {$(
        impl From<$kind> for HeaderValue {
            fn from(number: $kind) -> HeaderValue {
                HeaderValue::number(number < 0, (number as i64).unsigned_abs())
            }
        }
    )*};
}

header_value_from_unsigned!(u8, u16, u32, u64, usize);
header_value_from_signed!(i8, i16, i32, i64, isize);

fn is_safe_value(text: &str) -> bool {
    !text
        .bytes()
        .any(|byte| matches!(byte, b'\r' | b'\n' | b'\0'))
}

/// A header name is a token (RFC 9110): anything else would corrupt the head.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// An HTTP answer. The layer adds `Content-Length`, `Date` and, when the
/// connection closes, `Connection: close`; handlers set everything else.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    // Kept apart from the other headers so that the common response (a
    // content type and a body) needs no header vector at all.
    content_type: Option<HeaderValue>,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Body::default(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<Body>) -> Response {
        Response::new(status).with_body("text/plain; charset=utf-8", body)
    }

    /// Adds a header. A second header of the same name is added beside the
    /// first (as `Set-Cookie` needs), except `Content-Type`, which replaces.
    pub fn header(mut self, name: &'static str, value: impl Into<HeaderValue>) -> Response {
        if name.eq_ignore_ascii_case("content-type") {
            self.content_type = Some(value.into());
        } else {
            self.headers.push((name, value.into()));
        }
        self
    }

    /// Sets a header, replacing every header of the same name.
    pub fn set_header(&mut self, name: &'static str, value: impl Into<HeaderValue>) {
        if name.eq_ignore_ascii_case("content-type") {
            self.content_type = Some(value.into());
            return;
        }
        self.headers
            .retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
        self.headers.push((name, value.into()));
    }

    /// Sets the body and its content type.
    pub fn with_body(mut self, content_type: &'static str, body: impl Into<Body>) -> Response {
        self.content_type = Some(HeaderValue::from(content_type));
        self.body = body.into();
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn body(&self) -> &[u8] {
        self.body.as_bytes()
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The value of the first header called `name` (case-insensitive), for
    /// tests and the access log.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        if name.eq_ignore_ascii_case("content-type") {
            return self.content_type.as_ref().map(HeaderValue::as_str);
        }
        self.headers
            .iter()
            .find(|(existing, _)| existing.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether the handler asked for the connection to close after this
    /// answer, with a `Connection: close` header of its own.
    pub(super) fn asks_to_close(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("connection") && has_token(value.as_str(), "close")
        })
    }

    /// Appends the encoded response to `out` and returns the number of body
    /// bytes written. `head_only` leaves the body out (HEAD) but keeps the
    /// Content-Length it would have.
    pub(super) fn encode(
        &self,
        out: &mut Vec<u8>,
        head_only: bool,
        connection: ConnectionHeader,
        date: &[u8],
    ) -> usize {
        let status = if (100..=999).contains(&self.status) {
            self.status
        } else {
            tracing::debug!(
                status = self.status,
                "invalid response status replaced by 500"
            );
            500
        };
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");

        if let Some(content_type) = &self.content_type {
            push_header(out, "Content-Type", content_type);
        }
        for (name, value) in &self.headers {
            // The layer owns the framing headers: a handler's copy of them
            // could contradict the real length or connection state.
            if is_framing_header(name) {
                continue;
            }
            push_header(out, name, value);
        }

        // RFC 9110 forbids Content-Length on 1xx and 204 answers.
        let body = self.body.as_bytes();
        let may_have_body = status >= 200 && status != 204 && status != 304;
        if may_have_body {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        match connection {
            ConnectionHeader::None => {}
            ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        if !date.is_empty() {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(date);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");

        if head_only || !may_have_body {
            0
        } else {
            out.extend_from_slice(body);
            body.len()
        }
    }
}

/// The `Connection` header the layer adds to an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnectionHeader {
    /// HTTP/1.1 keep-alive, the default: nothing to say.
    None,
    /// An HTTP/1.0 client asked to keep the connection.
    KeepAlive,
    Close,
}

fn is_framing_header(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection", "date"]
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    if !is_token(name) || !value.is_safe() {
        // The value is left out of the log: it may carry a credential.
        tracing::debug!(header = name, "unsafe response header dropped");
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub(super) fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Writes the decimal digits of `number` into the end of `scratch` and
/// returns them.
fn decimal(mut number: u64, scratch: &mut [u8; 20]) -> &[u8] {
    let mut start = scratch.len();
    loop {
        start -= 1;
        scratch[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    &scratch[start..]
}

pub(super) fn push_decimal(out: &mut Vec<u8>, number: u64) {
    let mut scratch = [0u8; 20];
    out.extend_from_slice(decimal(number, &mut scratch));
}

/// The reason phrase of a status; clients ignore it, so unknown codes get an
/// empty one.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(response: &Response, head_only: bool, connection: ConnectionHeader) -> String {
        let mut out = Vec::new();
        response.encode(&mut out, head_only, connection, b"");
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn text_response_is_framed_with_its_length() {
        let wire = encoded(&Response::text(200, "hi\n"), false, ConnectionHeader::None);
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\n\r\nhi\n"
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let wire = encoded(&Response::text(200, "hello"), true, ConnectionHeader::Close);
        assert!(
            wire.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn numbers_become_decimal_header_values() {
        let response = Response::new(200)
            .header("X-Zero", 0u64)
            .header("X-Max", u64::MAX)
            .header("X-Min", i64::MIN)
            .header("X-Negative", -42i32);
        assert_eq!(response.header_value("x-zero"), Some("0"));
        assert_eq!(response.header_value("X-Max"), Some("18446744073709551615"));
        assert_eq!(response.header_value("X-Min"), Some("-9223372036854775808"));
        assert_eq!(response.header_value("X-Negative"), Some("-42"));
    }

    #[test]
    fn values_that_would_split_the_response_are_dropped() {
        let response = Response::text(200, "x")
            .header("X-Evil", String::from("a\r\nSet-Cookie: b=c"))
            .header("X-Nul", String::from("a\0b"))
            .header("Bad Name", "v")
            .header("X-Good", "fine");
        let wire = encoded(&response, false, ConnectionHeader::None);
        assert!(!wire.contains("Set-Cookie"), "{wire}");
        assert!(!wire.contains("X-Nul"), "{wire}");
        assert!(!wire.contains("Bad Name"), "{wire}");
        assert!(wire.contains("X-Good: fine\r\n"), "{wire}");
    }

    #[test]
    fn framing_headers_of_handlers_are_ignored() {
        let response = Response::text(200, "abc")
            .header("Content-Length", "99")
            .header("Transfer-Encoding", "chunked");
        let wire = encoded(&response, false, ConnectionHeader::None);
        assert!(wire.contains("Content-Length: 3\r\n"), "{wire}");
        assert!(!wire.contains("99") && !wire.contains("chunked"), "{wire}");
    }

    #[test]
    fn set_header_replaces_and_header_appends() {
        let mut response = Response::new(200).header("X-A", "1").header("X-A", "2");
        assert_eq!(response.header_value("x-a"), Some("1"));
        response.set_header("x-a", "3");
        assert_eq!(response.header_value("X-A"), Some("3"));
        let wire = encoded(&response, false, ConnectionHeader::None);
        assert_eq!(wire.matches("3\r\n").count(), 1, "{wire}");
        response.set_header("Content-Type", "text/html");
        assert_eq!(response.header_value("content-type"), Some("text/html"));
    }

    #[test]
    fn no_content_has_no_length() {
        let wire = encoded(&Response::new(204), false, ConnectionHeader::None);
        assert_eq!(wire, "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn connection_tokens_are_matched_in_lists() {
        assert!(has_token("keep-alive, Close", "close"));
        assert!(!has_token("closed", "close"));
        assert!(
            Response::new(200)
                .header("Connection", "close")
                .asks_to_close()
        );
    }
}
