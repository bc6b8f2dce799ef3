//! The HTTP/1.1 layer over raw sockets: keep-alive, pipelining, HEAD, every
//! limit and timeout, deadlines, panics, many idle connections, shutdown.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use valhalla::http::{Exchange, Outcome, Request, Response, Server, ServerOptions, Service};

use crate::support;

/// A small application with one route per behaviour under test.
#[derive(Default)]
pub(crate) struct TestService {
    /// (method, target, status, bytes) of every completed exchange.
    pub(crate) exchanges: Mutex<Vec<(String, String, u16, usize)>>,
    /// Deferred work that ran to its end.
    pub(crate) slow_finished: Arc<AtomicUsize>,
}

impl TestService {
    pub(crate) fn statuses(&self) -> Vec<(String, u16)> {
        let exchanges = self.exchanges.lock().unwrap();
        exchanges
            .iter()
            .map(|(method, _, status, _)| (method.clone(), *status))
            .collect()
    }
}

fn query_number(request: &Request<'_>, name: &str) -> Option<u64> {
    request.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

impl Service for TestService {
    fn call(&self, request: &Request<'_>) -> Outcome {
        let response = match request.path() {
            "/hello" => Response::text(200, "hello\n"),
            "/big" => Response::new(200).with_body("application/octet-stream", vec![b'x'; 100_000]),
            "/echo-headers" => {
                let mut text = format!(
                    "{} {} tls={} peer={}\n",
                    request.method(),
                    request.target(),
                    request.is_tls(),
                    request.peer().ip()
                );
                for (name, value) in request.headers() {
                    text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
                }
                Response::text(200, text)
            }
            "/echo-body" => {
                Response::new(200).with_body("application/octet-stream", request.body().to_vec())
            }
            "/no-body-allowed" => Response::text(413, "this route takes no request body\n"),
            "/evil" => Response::text(200, "evil\n")
                .header(
                    "X-Injected",
                    format!("a\r\nSet-Cookie: {}", request.query().unwrap_or("")),
                )
                .header("X-Fine", "yes"),
            "/quota" => Response::text(200, "quota\n")
                .header("X-Used-Bytes", 1_234_567_u64)
                .header("X-Remaining-Bytes", -5_i64),
            "/panic" => panic!("handler exploded on purpose"),
            "/panic-deferred" => {
                return Outcome::Deferred(Box::new(|_| {
                    panic!("deferred work exploded on purpose")
                }));
            }
            "/slow" => {
                let ms = query_number(request, "ms").unwrap_or(1000);
                let finished = Arc::clone(&self.slow_finished);
                return Outcome::Deferred(Box::new(move |deadline| {
                    assert!(!deadline.expired());
                    may::coroutine::sleep(Duration::from_millis(ms));
                    finished.fetch_add(1, Ordering::SeqCst);
                    Response::text(200, "slow done\n")
                }));
            }
            _ => Response::text(404, "not found\n"),
        };
        Outcome::Ready(response)
    }

    fn completed(&self, exchange: &Exchange<'_>) {
        self.exchanges.lock().unwrap().push((
            exchange.method.to_string(),
            exchange.target.to_string(),
            exchange.status,
            exchange.bytes,
        ));
    }
}

/// Starts a server on a free loopback port with `adjust` applied to the
/// default options.
pub(crate) fn start_with(adjust: impl FnOnce(&mut ServerOptions)) -> (Server, Arc<TestService>) {
    support::init_may();
    let mut options = ServerOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerOptions::default()
    };
    adjust(&mut options);
    let service = Arc::new(TestService::default());
    let server = Server::start(options, service.clone()).expect("start the server");
    (server, service)
}

fn start() -> (Server, Arc<TestService>) {
    start_with(|_| {})
}

/// One parsed answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP client over any stream, keeping bytes that arrived beyond the
/// answer it was asked for (pipelining).
pub(crate) struct Client<S> {
    pub(crate) stream: S,
    buffer: Vec<u8>,
}

impl Client<TcpStream> {
    pub(crate) fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client::new(stream)
    }
}

impl<S: Read + Write> Client<S> {
    pub(crate) fn new(stream: S) -> Client<S> {
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    pub(crate) fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    pub(crate) fn get(&mut self, target: &str) -> Reply {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n"));
        self.reply()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let received = self.stream.read(&mut chunk).expect("read an answer");
        self.buffer.extend_from_slice(&chunk[..received]);
        received
    }

    /// Reads one answer; its body by Content-Length.
    pub(crate) fn reply(&mut self) -> Reply {
        self.reply_with(false)
    }

    /// Reads one answer to a HEAD request: no body whatever the length.
    pub(crate) fn head_reply(&mut self) -> Reply {
        self.reply_with(true)
    }

    fn reply_with(&mut self, head_only: bool) -> Reply {
        let head_end = loop {
            if let Some(at) = self
                .buffer
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
            {
                break at + 4;
            }
            assert!(
                self.fill() > 0,
                "connection closed before a whole head arrived"
            );
        };
        let head = String::from_utf8(self.buffer[..head_end - 4].to_vec()).expect("ascii head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status");
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = if head_only {
            0
        } else {
            reply
                .header("content-length")
                .map_or(0, |value| value.parse().expect("length"))
        };
        while self.buffer.len() < head_end + length {
            assert!(self.fill() > 0, "connection closed inside a body");
        }
        reply.body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        reply
    }

    /// True when the server closed the connection (end of file or reset)
    /// with nothing more to read.
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => self.buffer.is_empty(),
            Ok(_) => false,
            Err(error) => matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
        }
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let (server, _) = start();
    let mut client = Client::connect(server.local_addr());
    for _ in 0..3 {
        let reply = client.get("/hello");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello\n");
        assert_eq!(reply.header("content-length"), Some("6"));
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.header("connection"), None);
        assert!(
            reply
                .header("date")
                .is_some_and(|date| date.ends_with(" GMT")),
            "{reply:?}"
        );
        assert_eq!(reply.header("server"), None, "the server is not advertised");
    }
    assert_eq!(server.active_connections(), 1);
}

#[test]
fn connection_close_is_honoured() {
    let (server, _) = start();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(client.is_closed());
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let (server, _) = start();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /hello HTTP/1.0\r\n\r\n");
    let reply = client.reply();
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello\n"));
    assert!(reply.head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(client.is_closed());

    let mut client = Client::connect(server.local_addr());
    for _ in 0..2 {
        client.send("GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (server, service) = start();
    let mut client = Client::connect(server.local_addr());
    client.send(
        "GET /hello HTTP/1.1\r\nHost: test\r\n\r\n\
         GET /echo-headers?n=2 HTTP/1.1\r\nHost: test\r\nX-Probe: two\r\n\r\n\
         HEAD /big HTTP/1.1\r\nHost: test\r\n\r\n\
         GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\n\
         POST /echo-body HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nabcde\
         GET /hello?last HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(client.reply().text(), "hello\n");
    let echo = client.reply().text();
    assert!(
        echo.starts_with("GET /echo-headers?n=2 tls=false peer=127.0.0.1\n"),
        "{echo}"
    );
    assert!(echo.contains("X-Probe: two\n"), "{echo}");
    let head = client.head_reply();
    assert_eq!(head.header("content-length"), Some("100000"));
    assert_eq!(client.reply().status, 404);
    assert_eq!(client.reply().body, b"abcde");
    let last = client.reply();
    assert_eq!(
        (last.status, last.header("connection")),
        (200, Some("close"))
    );
    assert!(client.is_closed());
    let targets: Vec<String> = service
        .exchanges
        .lock()
        .unwrap()
        .iter()
        .map(|exchange| exchange.1.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/hello",
            "/echo-headers?n=2",
            "/big",
            "/nowhere",
            "/echo-body",
            "/hello?last"
        ]
    );
}

#[test]
fn pipelined_answers_arrive_in_one_write() {
    // Three requests in one packet: the three answers leave in one batch, so
    // a single read after they had time to arrive sees all of them.
    let (server, _) = start();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut chunk = [0u8; 8192];
    let received = stream.read(&mut chunk).unwrap();
    let text = String::from_utf8_lossy(&chunk[..received]);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
}

#[test]
fn head_answers_the_get_length_without_a_body() {
    let (server, service) = start();
    let mut client = Client::connect(server.local_addr());
    client.send("HEAD /big HTTP/1.1\r\nHost: test\r\n\r\n");
    let reply = client.head_reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("100000"));
    // Had a body followed, this answer would be read from its bytes.
    let next = client.get("/hello");
    assert_eq!(next.text(), "hello\n");
    assert_eq!(
        service.exchanges.lock().unwrap()[0],
        ("HEAD".into(), "/big".into(), 200, 0)
    );
}

#[test]
fn numeric_header_values_are_written() {
    let (server, _) = start();
    let reply = Client::connect(server.local_addr()).get("/quota");
    assert_eq!(reply.header("x-used-bytes"), Some("1234567"));
    assert_eq!(reply.header("x-remaining-bytes"), Some("-5"));
}

#[test]
fn header_values_cannot_split_the_response() {
    let (server, _) = start();
    let mut client = Client::connect(server.local_addr());
    let reply = client.get("/evil?session=stolen");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("set-cookie"), None, "{}", reply.head);
    assert_eq!(reply.header("x-injected"), None, "{}", reply.head);
    assert_eq!(reply.header("x-fine"), Some("yes"));
    assert_eq!(client.get("/hello").text(), "hello\n");
}

/// Sends `request` on a fresh connection and expects `status` with
/// `Connection: close`, then the end of the connection.
fn expect_refusal(addr: SocketAddr, request: &[u8], status: u16) -> Reply {
    let mut client = Client::connect(addr);
    // The server may answer and close before the whole request is written.
    let _ = client.stream.write_all(request);
    let reply = client.reply();
    assert_eq!(reply.status, status, "{}", reply.head);
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    assert!(
        client.is_closed(),
        "the connection stays open after {status}"
    );
    reply
}

#[test]
fn a_request_line_over_8_kib_gets_414() {
    let (server, service) = start();
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: test\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let reply = expect_refusal(server.local_addr(), long.as_bytes(), 414);
    assert_eq!(reply.text(), "request target too long\n");
    // Also when the line never ends.
    let endless = format!("GET /{}", "a".repeat(20 * 1024));
    expect_refusal(server.local_addr(), endless.as_bytes(), 414);
    // 8 KiB minus a little is still fine.
    let fits = format!(
        "GET /hello?{} HTTP/1.1\r\nHost: test\r\n\r\n",
        "a".repeat(8000)
    );
    let mut client = Client::connect(server.local_addr());
    client.send(fits);
    assert_eq!(client.reply().status, 200);
    assert!(service.statuses().contains(&("-".into(), 414)));
}

#[test]
fn more_than_100_headers_get_431() {
    let (server, _) = start();
    let headers = |count: usize| {
        let mut request = String::from("GET /hello HTTP/1.1\r\n");
        for index in 0..count {
            request.push_str(&format!("X-Header-{index}: {index}\r\n"));
        }
        request.push_str("\r\n");
        request
    };
    expect_refusal(server.local_addr(), headers(101).as_bytes(), 431);
    let mut client = Client::connect(server.local_addr());
    client.send(headers(100));
    assert_eq!(client.reply().status, 200);
}

#[test]
fn a_head_over_32_kib_gets_431() {
    let (server, _) = start();
    let mut request = String::from("GET /hello HTTP/1.1\r\n");
    for index in 0..5 {
        request.push_str(&format!("X-Big-{index}: {}\r\n", "v".repeat(7 * 1024)));
    }
    request.push_str("\r\n");
    expect_refusal(server.local_addr(), request.as_bytes(), 431);
    // A head that never ends is cut off at the same size.
    let endless = format!(
        "GET /hello HTTP/1.1\r\nX-Endless: {}",
        "v".repeat(40 * 1024)
    );
    expect_refusal(server.local_addr(), endless.as_bytes(), 431);
}

#[test]
fn bodies_up_to_64_kib_are_read_and_larger_ones_get_413() {
    let (server, _) = start();
    let body = vec![b'b'; 64 * 1024];
    let mut client = Client::connect(server.local_addr());
    client.send(format!(
        "POST /echo-body HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    client.send(&body);
    let reply = client.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, body);
    assert_eq!(client.get("/hello").status, 200, "the connection goes on");

    let too_big = format!(
        "POST /echo-body HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        64 * 1024 + 1
    );
    expect_refusal(server.local_addr(), too_big.as_bytes(), 413);

    // The client sends the whole body anyway: the server reads and drops
    // it instead of closing on unread input, which would reset the
    // connection and could destroy the 413 before the client reads it.
    let mut upload = too_big.into_bytes();
    upload.extend_from_slice(&vec![b'u'; 64 * 1024 + 1]);
    for _ in 0..5 {
        expect_refusal(server.local_addr(), &upload, 413);
    }
}

#[test]
fn bad_framing_gets_400() {
    let (server, service) = start();
    let addr = server.local_addr();
    let cases: [&[u8]; 7] = [
        b"POST /echo-body HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
        b"POST /echo-body HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /echo-body HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo-body HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo-body HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GARBAGE\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ];
    for request in cases {
        let reply = expect_refusal(addr, request, 400);
        assert_eq!(reply.text(), "bad request\n");
    }
    assert_eq!(
        service
            .statuses()
            .iter()
            .filter(|(_, status)| *status == 400)
            .count(),
        cases.len()
    );
}

#[test]
fn a_413_from_the_service_closes_the_connection() {
    let (server, _) = start();
    let request = b"POST /no-body-allowed HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let reply = expect_refusal(server.local_addr(), request, 413);
    assert_eq!(reply.text(), "this route takes no request body\n");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (server, _) = start();
    let mut client = Client::connect(server.local_addr());
    client.send("POST /echo-body HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = client.reply();
    assert_eq!(interim.status, 100);
    client.send("data");
    let reply = client.reply();
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"data"[..]));
}

#[test]
fn a_stalled_head_gets_408_after_the_header_timeout() {
    let (server, service) = start_with(|options| {
        options.header_timeout = Duration::from_millis(300);
        options.idle_timeout = Duration::from_secs(30);
    });
    let started = Instant::now();
    let mut client = Client::connect(server.local_addr());
    client.send("GET /hello HTTP/1.1\r\nHost: te");
    let reply = client.reply();
    let waited = started.elapsed();
    assert_eq!(reply.status, 408);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(client.is_closed());
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    // A body that stops arriving is a stalled request too.
    let mut client = Client::connect(server.local_addr());
    client.send("POST /echo-body HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(client.reply().status, 408);
    assert!(client.is_closed());
    assert_eq!(service.statuses(), [("-".into(), 408), ("-".into(), 408)]);
}

#[test]
fn a_trickling_head_still_gets_408_at_its_deadline() {
    // The deadline counts from the first byte of the request: a header line
    // every 100 ms (each well within the timeout) does not keep the request
    // open past it.
    let (server, _) = start_with(|options| options.header_timeout = Duration::from_millis(400));
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(5) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(received) => answer.extend_from_slice(&chunk[..received]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if answer.is_empty() {
                    stream.write_all(b"X-Slow: 1\r\n").unwrap();
                }
            }
            Err(error) => panic!("read failed: {error}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn an_idle_connection_closes_silently() {
    let (server, service) = start_with(|options| {
        options.idle_timeout = Duration::from_millis(300);
        options.header_timeout = Duration::from_secs(30);
    });
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.get("/hello").status, 200);
    let started = Instant::now();
    assert!(client.is_closed(), "closed without a byte");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A connection that never sent anything is idle too.
    let mut silent = Client::connect(server.local_addr());
    assert!(silent.is_closed());
    assert_eq!(service.statuses(), [("GET".into(), 200)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.active_connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.active_connections(), 0);
}

#[test]
fn deferred_work_past_the_deadline_gets_504_and_is_cancelled() {
    let (server, service) = start_with(|options| {
        options.request_timeout = Duration::from_millis(300);
    });
    let mut client = Client::connect(server.local_addr());
    let started = Instant::now();
    let reply = client.get("/slow?ms=1500");
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "gateway timeout\n");
    assert!(
        waited < Duration::from_millis(1200),
        "answered after {waited:?}"
    );
    // The connection goes on, and work within its deadline completes.
    let reply = client.get("/slow?ms=10");
    assert_eq!((reply.status, reply.text().as_str()), (200, "slow done\n"));
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(
        service.slow_finished.load(Ordering::SeqCst),
        1,
        "the late work was cancelled"
    );
}

#[test]
fn a_panicking_handler_gets_500_and_the_server_goes_on() {
    let (server, service) = start();
    let mut client = Client::connect(server.local_addr());
    for path in ["/panic", "/panic-deferred"] {
        let reply = client.get(path);
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(reply.text(), "internal server error\n", "{path}");
    }
    assert_eq!(client.get("/hello").status, 200);
    assert_eq!(
        Client::connect(server.local_addr()).get("/hello").status,
        200
    );
    assert_eq!(
        service.statuses(),
        [
            ("GET".into(), 500),
            ("GET".into(), 500),
            ("GET".into(), 200),
            ("GET".into(), 200)
        ]
    );
}

#[test]
fn two_thousand_idle_connections_do_not_stop_a_new_client() {
    valhalla::http::raise_open_files_limit().expect("raise the open files limit");
    let (server, _) = start();
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(server.local_addr()).expect("open an idle connection"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.active_connections() < idle.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.active_connections(), idle.len());

    let started = Instant::now();
    let reply = Client::connect(server.local_addr()).get("/hello");
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let (server, _) = start_with(|options| options.max_connections = 2);
    let mut first = Client::connect(server.local_addr());
    let mut second = Client::connect(server.local_addr());
    assert_eq!(first.get("/hello").status, 200);
    assert_eq!(second.get("/hello").status, 200);
    let mut third = Client::connect(server.local_addr());
    let _ = third.stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n");
    assert!(third.is_closed());
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.active_connections() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        Client::connect(server.local_addr()).get("/hello").status,
        200
    );
}

#[test]
fn shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let (server, service) = start();
    let addr = server.local_addr();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/hello").status, 200);
    let mut busy = Client::connect(addr);
    busy.send("GET /slow?ms=1000 HTTP/1.1\r\nHost: test\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let shutdown = std::thread::spawn(move || server.shutdown(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(100));
    let refused = TcpStream::connect(addr).expect_err("connects are refused during shutdown");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(idle.is_closed(), "the idle connection is closed");

    let reply = busy.reply();
    assert_eq!((reply.status, reply.text().as_str()), (200, "slow done\n"));
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(busy.is_closed());
    assert_eq!(shutdown.join().unwrap(), 0, "nothing was left busy");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(service.slow_finished.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_reports_requests_still_busy_after_the_grace() {
    let (server, _) = start();
    let mut busy = Client::connect(server.local_addr());
    busy.send("GET /slow?ms=3000 HTTP/1.1\r\nHost: test\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(server.shutdown(Duration::from_millis(200)), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = busy.stream.shutdown(Shutdown::Both);
}
