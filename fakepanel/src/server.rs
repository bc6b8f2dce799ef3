//! The fake panels' HTTP/1.1 server: accept loop, one thread per connection, fault modes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslStream};
use openssl::x509::X509;

use crate::routes::{self, Request, Response};
use crate::{Call, Mode, Shared};

/// How often blocked reads wake up to check whether the panel was stopped.
const POLL: Duration = Duration::from_millis(50);

/// Largest request accepted; panels' requests are small.
const MAX_REQUEST: usize = 1024 * 1024;

pub(crate) fn spawn(shared: Arc<Shared>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("fake panel: bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("fake panel: local address");
    let acceptor = shared.config.tls.as_ref().map(|identity| {
        let mut chain = X509::stack_from_pem(&identity.cert_pem)
            .expect("fake panel: certificate pem")
            .into_iter();
        let key = PKey::private_key_from_pem(&identity.key_pem).expect("fake panel: key pem");
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .expect("fake panel: tls acceptor");
        builder
            .set_certificate(&chain.next().expect("fake panel: no certificate in pem"))
            .expect("fake panel: certificate");
        for extra in chain {
            builder
                .add_extra_chain_cert(extra)
                .expect("fake panel: chain certificate");
        }
        builder.set_private_key(&key).expect("fake panel: key");
        builder
            .check_private_key()
            .expect("fake panel: key matches");
        builder.build()
    });
    let handle = std::thread::Builder::new()
        .name(format!("fakepanel-{}", addr.port()))
        .spawn(move || accept_loop(&listener, &shared, acceptor.as_ref()))
        .expect("fake panel: spawn accept thread");
    (addr, handle)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, acceptor: Option<&SslAcceptor>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let connection = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = Arc::clone(shared);
        let acceptor = acceptor.cloned();
        let _ = std::thread::Builder::new()
            .name(format!("fakepanel-conn-{connection}"))
            .spawn(move || serve(stream, &shared, connection, acceptor.as_ref()));
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }

    fn pending(&self) -> usize {
        match self {
            Stream::Plain(_) => 0,
            Stream::Tls(tls) => tls.ssl().pending(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve(tcp: TcpStream, shared: &Shared, connection: u64, acceptor: Option<&SslAcceptor>) {
    let _ = tcp.set_nodelay(true);
    let stream = match acceptor {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            match acceptor.accept(tcp) {
                Ok(tls) => Stream::Tls(Box::new(tls)),
                // A client that rejects the certificate ends here; that is
                // what the TLS tests expect to see.
                Err(_) => return,
            }
        }
    };
    if stream.tcp().set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() && stream.pending() == 0 && !wait_readable(&stream, shared) {
            return;
        }
        let mode = {
            let mut state = shared.state();
            if state.reset_next > 0 {
                state.reset_next -= 1;
                Mode::Reset
            } else {
                state.mode
            }
        };
        if mode == Mode::Reset {
            reset(stream, shared, connection);
            return;
        }
        let Some(request) = read_request(&mut stream, &mut buf, shared) else {
            return;
        };
        let authorized = routes::authorized(shared, &request);
        record(shared, &request, connection, authorized);

        let response = match mode {
            Mode::Hang => {
                hang(&stream, shared);
                return;
            }
            Mode::Garbage => {
                let _ = stream.write_all(b"\x16\x03garbage that is not http \xff\xfe\r\n\r\n");
                return;
            }
            Mode::Status500 => Response::text(500, "internal server error"),
            Mode::Latency(latency) => {
                let delay = {
                    let mut state = shared.state();
                    match latency {
                        crate::Latency::Fixed(d) => d,
                        crate::Latency::Uniform { min, max } => {
                            let spread = max.saturating_sub(min);
                            min + spread.mul_f64(state.random())
                        }
                    }
                };
                if !sleep(delay, shared) {
                    return;
                }
                answer(shared, &request, authorized)
            }
            Mode::Normal | Mode::Reset => answer(shared, &request, authorized),
        };
        let keep_alive = !request.wants_close();
        if write_response(&mut stream, &response, shared.config.chunked, keep_alive).is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Applies the random failure rate, then routes the request.
fn answer(shared: &Shared, request: &Request, authorized: bool) -> Response {
    let fail = {
        let mut state = shared.state();
        state.failure_rate > 0.0 && state.random() < state.failure_rate
    };
    if fail {
        return Response::text(500, "internal server error (injected)");
    }
    if !authorized {
        return Response::json(401, r#"{"detail":"Not authenticated"}"#.into());
    }
    routes::handle(shared, request)
}

/// Waits until the client sends something; false when it closed or the
/// panel stops.
fn wait_readable(stream: &Stream, shared: &Shared) -> bool {
    let mut probe = [0u8; 1];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.tcp().peek(&mut probe) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
}

/// Closes the connection while the request is still unread: the kernel then
/// answers with a TCP reset instead of an orderly close.
fn reset(stream: Stream, shared: &Shared, connection: u64) {
    let mut peeked = vec![0u8; 8192];
    let n = stream.tcp().peek(&mut peeked).unwrap_or(0);
    let (method, path) = match &stream {
        Stream::Plain(_) => {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            let _ = request.parse(&peeked[..n]);
            (
                request.method.unwrap_or("?").to_owned(),
                request.path.unwrap_or("?").to_owned(),
            )
        }
        Stream::Tls(_) => ("?".to_owned(), "<encrypted>".to_owned()),
    };
    let request = Request {
        method,
        path,
        headers: Vec::new(),
        body: Vec::new(),
    };
    record(shared, &request, connection, false);
    drop(stream);
}

/// Holds the connection without answering until the client gives up or the
/// panel stops.
fn hang(stream: &Stream, shared: &Shared) {
    let mut probe = [0u8; 1];
    while !shared.stop.load(Ordering::SeqCst) {
        match stream.tcp().peek(&mut probe) {
            Ok(0) => return,
            Ok(_) => std::thread::sleep(POLL),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Sleeps in short steps; false when the panel stopped meanwhile.
fn sleep(total: Duration, shared: &Shared) -> bool {
    let mut left = total;
    while !left.is_zero() {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        let step = left.min(POLL);
        std::thread::sleep(step);
        left -= step;
    }
    true
}

fn record(shared: &Shared, request: &Request, connection: u64, authorized: bool) {
    shared.total_calls.fetch_add(1, Ordering::Relaxed);
    let call = Call {
        method: request.method.clone(),
        path: request.path.clone(),
        at_ms: shared.started.elapsed().as_millis() as u64,
        connection,
        authorized,
        body: request.body.clone(),
    };
    let limit = shared.config.max_logged_calls.unwrap_or(100_000);
    let mut state = shared.state();
    if limit == 0 {
        return;
    }
    if state.calls.len() >= limit {
        let excess = state.calls.len() + 1 - limit;
        state.calls.drain(..excess);
    }
    state.calls.push(call);
}

/// Reads one request (head and Content-Length body); None when the client
/// closed, sent something unparsable, or the panel stops.
fn read_request(stream: &mut Stream, buf: &mut Vec<u8>, shared: &Shared) -> Option<Request> {
    let mut chunk = vec![0u8; 16 * 1024];
    let (head_len, mut request, content_length) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let content_length = headers
                        .iter()
                        .find(|(name, _)| name == "content-length")
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let request = Request {
                        method: parsed.method.unwrap_or("").to_owned(),
                        path: parsed.path.unwrap_or("").to_owned(),
                        headers,
                        body: Vec::new(),
                    };
                    break (len, request, content_length);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
                _ => return None,
            }
        }
        if !fill(stream, buf, &mut chunk, shared) {
            return None;
        }
    };
    buf.drain(..head_len);
    if content_length > MAX_REQUEST {
        return None;
    }
    while buf.len() < content_length {
        if !fill(stream, buf, &mut chunk, shared) {
            return None;
        }
    }
    request.body = buf.drain(..content_length).collect();
    Some(request)
}

fn fill(stream: &mut Stream, buf: &mut Vec<u8>, chunk: &mut [u8], shared: &Shared) -> bool {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.read(chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn write_response(
    stream: &mut Stream,
    response: &Response,
    chunked: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(response.body.len() + 256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nServer: fakepanel\r\n",
            response.status,
            reason(response.status),
            response.content_type
        )
        .as_bytes(),
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        // Small chunks, so a client's chunk parser sees several of them.
        for piece in response.body.chunks(7) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    } else {
        out.extend_from_slice(
            format!("Content-Length: {}\r\n\r\n", response.body.len()).as_bytes(),
        );
        out.extend_from_slice(&response.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}
