//! The connection loop: read into a reusable buffer, parse heads in place,
//! enforce limits and timeouts, call the service, and write the answers of
//! pipelined requests in one batch.

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::date::DateCache;
use super::request::Request;
use super::response::{ConnectionHeader, Response, has_token};
use super::server::{Registration, Shared};
use super::service::{Deadline, Exchange, Outcome};
use super::transport::{Socket, Transport};
use super::{MAX_BODY, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE};

/// First size of a connection's read buffer: a typical head fits.
const INITIAL_READ: usize = 4 * 1024;

/// The read buffer never grows beyond one head and one body at their
/// limits; longer input is refused before it is needed.
const MAX_READ: usize = MAX_HEAD + MAX_BODY;

/// A write buffer larger than this (after a large answer) is given back.
const KEEP_WRITE: usize = 64 * 1024;

/// How long a refused client may go on sending before the socket closes,
/// and how much of it is read at most.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Answered for a method or target the layer could not read.
const UNPARSED: &str = "-";

/// Serves one accepted connection until it closes. Runs on its own
/// coroutine.
pub(super) fn serve(stream: may::net::TcpStream, peer: SocketAddr, registration: Registration) {
    let shared = std::sync::Arc::clone(registration.shared());
    let timeouts = &shared.timeouts;
    // A write that makes no progress for the header timeout means the client
    // stopped reading; the coroutine should not wait on it for longer.
    let socket = match Socket::new(stream, registration, timeouts.idle, timeouts.header) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(%error, %peer, "cannot configure accepted socket");
            return;
        }
    };
    match &shared.tls {
        None => Connection::new(socket, &shared, peer, false).run(),
        Some(acceptor) => {
            if let Some(stream) = acceptor.handshake(socket, timeouts.tls_handshake, peer) {
                Connection::new(stream, &shared, peer, true).run();
            }
        }
    }
}

struct Connection<'s, T> {
    io: T,
    shared: &'s Shared,
    peer: SocketAddr,
    tls: bool,
    /// Received bytes live in `read[start..end]`; the whole vector is
    /// initialised, its length is the buffer's size.
    read: Vec<u8>,
    start: usize,
    end: usize,
    /// When the pending (incomplete) request began to arrive.
    pending_since: Option<Instant>,
    /// A complete head waits for its body: no parse until this many bytes
    /// of the request are in.
    wait_for: usize,
    /// An incomplete head was parsed at this length: parse again only once
    /// a newline arrives after it (a head ends with one).
    parsed_until: usize,
    continue_sent: bool,
    write: Vec<u8>,
    date: DateCache,
}

/// What the parser made of the buffered bytes.
enum Step {
    /// Not a whole request yet.
    NeedMore,
    /// A request was answered; the connection stays open.
    Answered,
    /// An answer was queued after which the connection closes.
    Close,
    /// The request was refused (400, 408, 413, 414, 431): the connection
    /// closes, and what the client still sends is not a request.
    Refused,
}

/// The outcome of one read.
enum Fill {
    Data,
    /// The peer closed, reset or broke the connection, or the server is
    /// shutting down and the connection is idle.
    Closed,
    /// No request in progress and nothing arrived for the idle timeout.
    Idle,
    /// A request in progress did not arrive in time.
    Late,
    /// The buffer is at its limit with the request still incomplete.
    Full,
}

impl<'s, T: Transport> Connection<'s, T> {
    fn new(io: T, shared: &'s Shared, peer: SocketAddr, tls: bool) -> Connection<'s, T> {
        Connection {
            io,
            shared,
            peer,
            tls,
            read: vec![0; INITIAL_READ],
            start: 0,
            end: 0,
            pending_since: None,
            wait_for: 0,
            parsed_until: 0,
            continue_sent: false,
            write: Vec::with_capacity(INITIAL_READ),
            date: DateCache::new(),
        }
    }

    fn run(mut self) {
        loop {
            let mut last = Step::NeedMore;
            while self.start < self.end {
                last = self.next_request();
                if !matches!(last, Step::Answered) {
                    break;
                }
            }
            if self.flush().is_err() {
                return;
            }
            match last {
                Step::NeedMore | Step::Answered => {}
                Step::Close => return self.io.finish(),
                Step::Refused => return self.close_refused(),
            }
            let fill = self.fill();
            match fill {
                Fill::Data => {}
                Fill::Closed | Fill::Idle => return,
                Fill::Late | Fill::Full => {
                    let since = self.pending_since.unwrap_or_else(Instant::now);
                    let status = if matches!(fill, Fill::Late) { 408 } else { 431 };
                    self.reject(status, UNPARSED, UNPARSED, since);
                    if self.flush().is_ok() {
                        self.close_refused();
                    }
                    return;
                }
            }
        }
    }

    /// Closes after a refused request. The client may still be sending it,
    /// and closing a socket with unread input makes the kernel send a reset
    /// that can destroy our answer before the client reads it. So the
    /// connection is half-closed and what still arrives is read and
    /// discarded for a short while (the "lingering close" of web servers).
    fn close_refused(&mut self) {
        self.io.finish();
        let socket = self.io.socket();
        if socket.shutdown_write().is_err()
            || socket.set_deadline(Some(Instant::now() + LINGER)).is_err()
        {
            return;
        }
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match socket.read(&mut self.read) {
                Ok(0) | Err(_) => break,
                Ok(received) => discarded += received,
            }
        }
    }

    /// Writes the queued answers. Errors end the connection.
    fn flush(&mut self) -> io::Result<()> {
        if self.write.is_empty() {
            return Ok(());
        }
        let result = self
            .io
            .write_all(&self.write)
            .and_then(|()| self.io.flush());
        self.write.clear();
        if self.write.capacity() > KEEP_WRITE {
            self.write.shrink_to(INITIAL_READ);
        }
        if let Err(error) = &result {
            io_failed(error, self.peer);
        }
        result
    }

    /// Reads more bytes, bounded by the idle timeout when no request is in
    /// progress and by the request's arrival deadline otherwise.
    fn fill(&mut self) -> Fill {
        let idle = self.start == self.end;
        if idle {
            self.start = 0;
            self.end = 0;
            if !self.io.socket().registration().set_busy(false) {
                return Fill::Closed;
            }
            if self.read.len() > 4 * INITIAL_READ {
                self.read.truncate(INITIAL_READ);
                self.read.shrink_to_fit();
            }
        }
        let deadline = match self.pending_since {
            Some(since) if !idle => Some(since + self.shared.timeouts.header),
            _ => None,
        };
        if let Err(error) = self.io.socket().set_deadline(deadline) {
            io_failed(&error, self.peer);
            return Fill::Closed;
        }
        if !self.make_room() {
            // Unreachable with the limits checked before each read (a head
            // and a body at their limits fit).
            return Fill::Full;
        }

        loop {
            match self.io.read(&mut self.read[self.end..]) {
                Ok(0) => return Fill::Closed,
                Ok(received) => {
                    self.end += received;
                    if idle {
                        self.io.socket().registration().set_busy(true);
                        self.pending_since = Some(Instant::now());
                    }
                    return Fill::Data;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    return if idle { Fill::Idle } else { Fill::Late };
                }
                Err(error) => {
                    io_failed(&error, self.peer);
                    return Fill::Closed;
                }
            }
        }
    }

    /// Makes space after `end`: moves the pending bytes to the front, or
    /// grows the buffer up to its limit. Returns false when it is full.
    fn make_room(&mut self) -> bool {
        if self.end < self.read.len() {
            return true;
        }
        if self.start > 0 {
            self.read.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        let size = (self.read.len() * 2).min(MAX_READ);
        if size == self.read.len() {
            return false;
        }
        self.read.resize(size, 0);
        true
    }

    /// Parses the request at the front of the buffer and answers it if it
    /// is complete.
    fn next_request(&mut self) -> Step {
        let pending = self.end - self.start;
        if pending < self.wait_for {
            return Step::NeedMore;
        }
        if self.wait_for == 0
            && self.parsed_until > 0
            && !self.read[self.start + self.parsed_until..self.end].contains(&b'\n')
        {
            return self.incomplete_head();
        }

        let Connection {
            read,
            write,
            date,
            shared,
            io,
            start,
            end,
            ..
        } = self;
        let buffer = &read[*start..*end];
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(buffer, &mut headers) {
            Ok(httparse::Status::Complete(head_len)) => head_len,
            Ok(httparse::Status::Partial) => {
                self.parsed_until = pending;
                return self.incomplete_head();
            }
            Err(httparse::Error::TooManyHeaders) => return self.refuse(431),
            Err(_) => return self.refuse(400),
        };
        let (Some(method), Some(target), Some(version)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return self.refuse(400);
        };
        let headers: &[httparse::Header<'_>] = parsed.headers;
        let line_len = buffer
            .iter()
            .position(|&byte| byte == b'\n')
            .unwrap_or(head_len);
        let received = self.pending_since.unwrap_or_else(Instant::now);
        if line_len > MAX_REQUEST_LINE {
            return self.refuse(414);
        }
        if head_len > MAX_HEAD {
            return self.refuse(431);
        }

        let framing = match Framing::of(headers) {
            Ok(framing) => framing,
            Err(status) => return self.refuse(status),
        };
        if framing.content_length > MAX_BODY {
            reject(
                write, date, shared, self.peer, 413, method, target, received,
            );
            return Step::Refused;
        }
        let total = head_len + framing.content_length;
        if pending < total {
            self.wait_for = total;
            if framing.expect_continue && version == 1 && !self.continue_sent {
                self.continue_sent = true;
                write.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            return Step::NeedMore;
        }

        let request = Request {
            method,
            target,
            headers,
            body: &buffer[head_len..total],
            peer: self.peer,
            tls: self.tls,
        };
        let started = Instant::now();
        let deadline = Deadline::at(started + shared.timeouts.request);
        let response = match catch_unwind(AssertUnwindSafe(|| shared.service.call(&request))) {
            Ok(Outcome::Ready(response)) => response,
            Ok(Outcome::Deferred(work)) => {
                // Answers to earlier pipelined requests go out before the
                // wait, not after it.
                if !write.is_empty() {
                    let sent = io.write_all(write).and_then(|()| io.flush());
                    write.clear();
                    if let Err(error) = sent {
                        io_failed(&error, self.peer);
                        return Step::Close;
                    }
                }
                run_deferred(work, deadline, shared.timeouts.request)
            }
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "request handler panicked"
                );
                internal_error()
            }
        };

        let close = framing.wants_close(version)
            || matches!(response.status(), 400 | 413)
            || response.asks_to_close()
            || shared.shutting_down();
        let connection = if close {
            ConnectionHeader::Close
        } else if version == 0 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        };
        let bytes = response.encode(write, request.is_head(), connection, date.now());
        let status = if (100..=999).contains(&response.status()) {
            response.status()
        } else {
            500
        };
        let exchange = Exchange {
            method,
            target,
            status,
            bytes,
            elapsed: started.elapsed(),
            peer: self.peer,
        };
        completed(shared, &exchange);

        self.start += total;
        self.wait_for = 0;
        self.parsed_until = 0;
        self.continue_sent = false;
        self.pending_since = (self.start < self.end).then(Instant::now);
        if matches!(status, 400 | 413) {
            Step::Refused
        } else if close {
            Step::Close
        } else {
            Step::Answered
        }
    }

    /// Checks the limits of a head that is still arriving.
    fn incomplete_head(&mut self) -> Step {
        let pending = &self.read[self.start..self.end];
        let line_len = pending
            .iter()
            .position(|&byte| byte == b'\n')
            .unwrap_or(pending.len());
        if line_len > MAX_REQUEST_LINE {
            return self.refuse(414);
        }
        if pending.len() > MAX_HEAD {
            return self.refuse(431);
        }
        Step::NeedMore
    }

    /// Answers a request the layer refuses, then closes: what follows it in
    /// the stream cannot be trusted to start a new request.
    fn refuse(&mut self, status: u16) -> Step {
        let since = self.pending_since.unwrap_or_else(Instant::now);
        self.reject(status, UNPARSED, UNPARSED, since);
        Step::Refused
    }

    fn reject(&mut self, status: u16, method: &str, target: &str, since: Instant) {
        let peer = self.peer;
        reject(
            &mut self.write,
            &mut self.date,
            self.shared,
            peer,
            status,
            method,
            target,
            since,
        );
    }
}

/// Queues the layer's own answer with `Connection: close` and reports it to
/// the service.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of a connection, borrowed apart"
)]
fn reject(
    write: &mut Vec<u8>,
    date: &mut DateCache,
    shared: &Shared,
    peer: SocketAddr,
    status: u16,
    method: &str,
    target: &str,
    since: Instant,
) {
    let response = Response::text(status, fixed_body(status));
    let bytes = response.encode(write, false, ConnectionHeader::Close, date.now());
    let exchange = Exchange {
        method,
        target,
        status,
        bytes,
        elapsed: since.elapsed(),
        peer,
    };
    completed(shared, &exchange);
}

/// What the head says about the body and the connection.
struct Framing {
    content_length: usize,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Framing {
    /// Reads the framing headers; an error is the status to answer with.
    fn of(headers: &[httparse::Header<'_>]) -> Result<Framing, u16> {
        let mut framing = Framing {
            content_length: 0,
            close: false,
            keep_alive: false,
            expect_continue: false,
        };
        let mut content_length: Option<usize> = None;
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let length = parse_content_length(header.value).ok_or(400u16)?;
                // Two different lengths would make the framing ambiguous: a
                // request smuggling vector behind a proxy.
                if content_length.is_some_and(|previous| previous != length) {
                    return Err(400);
                }
                content_length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked request bodies are not supported: no route needs
                // them, and refusing them removes a whole class of framing
                // disagreements with proxies.
                return Err(400);
            } else if name.eq_ignore_ascii_case("connection") {
                let value = std::str::from_utf8(header.value).unwrap_or_default();
                framing.close |= has_token(value, "close");
                framing.keep_alive |= has_token(value, "keep-alive");
            } else if name.eq_ignore_ascii_case("expect") {
                let value = std::str::from_utf8(header.value).unwrap_or_default();
                framing.expect_continue |= value.trim().eq_ignore_ascii_case("100-continue");
            }
        }
        framing.content_length = content_length.unwrap_or(0);
        Ok(framing)
    }

    /// HTTP/1.1 keeps the connection unless asked not to; HTTP/1.0 closes
    /// it unless asked to keep it.
    fn wants_close(&self, version: u8) -> bool {
        if version == 0 {
            !self.keep_alive || self.close
        } else {
            self.close
        }
    }
}

/// A Content-Length value: decimal digits only, no sign, no spaces inside.
/// Values beyond `usize` are treated as invalid (they are over any limit).
fn parse_content_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0usize, |total, &digit| {
        total * 10 + usize::from(digit - b'0')
    }))
}

/// Runs deferred work in its own coroutine and waits for it until the
/// deadline.
fn run_deferred(
    work: Box<dyn FnOnce(Deadline) -> Response + Send + 'static>,
    deadline: Deadline,
    timeout: std::time::Duration,
) -> Response {
    let (sender, receiver) = may::sync::mpsc::channel();
    let worker = may::go!(move || {
        let result = catch_unwind(AssertUnwindSafe(move || work(deadline)));
        // The receiver is gone when the deadline passed first.
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(deadline.remaining()) {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
            tracing::error!(
                panic = panic_message(panic.as_ref()),
                "deferred handler panicked"
            );
            internal_error()
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // SAFETY: cancelling makes the work coroutine unwind at its next
            // wait, which panic = "unwind" (the release profile) allows. The
            // work is a 'static closure that owns all it uses, so unwinding
            // drops only its own values, and our catch_unwind above keeps the
            // unwinding inside that coroutine. Work blocked on another
            // thread's answer (a query on the database threads) sees its
            // channel closed there and drops the result.
            unsafe { worker.coroutine().cancel() };
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "request deadline passed, work abandoned"
            );
            Response::text(504, fixed_body(504))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            tracing::error!("deferred handler ended without an answer");
            internal_error()
        }
    }
}

fn completed(shared: &Shared, exchange: &Exchange<'_>) {
    if catch_unwind(AssertUnwindSafe(|| shared.service.completed(exchange))).is_err() {
        tracing::error!("request completion hook panicked");
    }
}

fn internal_error() -> Response {
    Response::text(500, fixed_body(500))
}

/// The bodies of the layer's own answers: fixed texts, never error details.
fn fixed_body(status: u16) -> &'static str {
    match status {
        400 => "bad request\n",
        408 => "request timeout\n",
        413 => "request body too large\n",
        414 => "request target too long\n",
        431 => "request header fields too large\n",
        504 => "gateway timeout\n",
        _ => "internal server error\n",
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "non-text panic"
    }
}

/// A failed read or write: the peer went away or misbehaved. Never worth
/// more than debug.
fn io_failed(error: &io::Error, peer: SocketAddr) {
    tracing::debug!(%error, kind = ?error.kind(), %peer, "connection ended by an i/o error");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_accepts_only_plain_digits() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b"abc",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version() {
        let framing = |close, keep_alive| Framing {
            content_length: 0,
            close,
            keep_alive,
            expect_continue: false,
        };
        assert!(!framing(false, false).wants_close(1));
        assert!(framing(true, false).wants_close(1));
        assert!(framing(false, false).wants_close(0));
        assert!(!framing(false, true).wants_close(0));
    }
}
