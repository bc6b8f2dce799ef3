//! The request as handlers see it: a borrowed view over the connection's
//! read buffer, valid for the duration of one `Service::call`.

use std::net::SocketAddr;

/// One parsed request. Nothing is copied: every string points into the
/// connection buffer, so a handler that needs data after it returns (for
/// `Outcome::Deferred` work) copies what it needs.
pub struct Request<'a> {
    pub(super) method: &'a str,
    pub(super) target: &'a str,
    pub(super) headers: &'a [httparse::Header<'a>],
    pub(super) body: &'a [u8],
    pub(super) peer: SocketAddr,
    pub(super) tls: bool,
}

impl<'a> Request<'a> {
    /// The method as sent, for example `GET` or `HEAD`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The raw request target, for example `/sub/a/b/links?x=1`.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The target without its query.
    pub fn path(&self) -> &'a str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => self.target,
        }
    }

    /// The query: the text after the first `?`, if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The value of the first header called `name` (case-insensitive), or
    /// `None` when there is none or its value is not valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let header = self
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(header.value).ok()
    }

    /// Every header in the order sent, values as raw bytes.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + use<'a> {
        let headers: &'a [httparse::Header<'a>] = self.headers;
        headers.iter().map(|header| (header.name, header.value))
    }

    /// The body, read in full by Content-Length (empty when there is none).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The address of the TCP peer (a reverse proxy, when there is one).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the request came over HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl std::fmt::Debug for Request<'_> {
    // Header values are left out: they can carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path())
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish()
    }
}
