//! Benches of the request path around the handlers: routing, the response
//! headers of a subscription answer, building the response, and a request
//! head parsed and answered by our HTTP layer over a loopback connection,
//! against may_minihttp doing the same in the same group.
//!
//! Run: `cargo bench -p valhalla --bench http`
//!
//! The head parser is private to the connection loop, so the layer is
//! measured end to end over loopback: the bench thread writes a batch of
//! pipelined heads on one keep-alive connection and reads the answers. With
//! a batch of 16 the system calls are shared by 16 requests and what is left
//! is mostly parsing, the service call and encoding; a batch of 1 adds a
//! full round trip.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use valhalla::app::{redact, route};
use valhalla::http::{Outcome, Request, Response, Server, ServerOptions, Service};
use valhalla::subscription::headers::{
    Quota, content_disposition, profile_title, profile_update_interval, profile_web_page_url,
    quota_headers, subscription_userinfo,
};

mod fixtures;

use fixtures::{
    APP_KEY, BROWSER_HEAD, HEALTHZ_HEAD, PUBLIC_BASE_URL, USERNAME, VPN_CLIENT_HEAD, links,
};

/// Requests written in one batch: one at a time (a round trip each), and a
/// pipelined batch that leaves mostly the per-request work.
const BATCHES: [usize; 2] = [1, 16];

/// The heads of the loopback group, named after who sends them.
const HEADS: [(&str, &str); 3] = [
    ("healthz", HEALTHZ_HEAD),
    ("vpn_client", VPN_CLIENT_HEAD),
    ("browser", BROWSER_HEAD),
];

/// May workers of the in-process servers: the core count of the reference
/// machine, as the yardstick uses.
const WORKERS: usize = 2;

/// The target our bench service answers with a whole subscription answer
/// (20 links and every header) instead of "ok\n".
const SUBSCRIPTION_TARGET: &str = "/bench/subscription";

/// A user with a 50 GB plan, 12.3 GB used, expiring in 2026.
const QUOTA: Quota = Quota {
    limit: 50 * 1024 * 1024 * 1024,
    used: 13_207_024_435,
    expire_at: Some(1_767_225_600),
    disabled_pushed: false,
};

/// A Persian username, which the title and file name headers encode.
const PERSIAN_USERNAME: &str = "\u{0639}\u{0644}\u{06CC}_\u{06F1}\u{06F4}\u{06F0}\u{06F3}";

/// How often clients should refresh, as the flow's default.
const PROFILE_UPDATE_HOURS: u32 = 12;

fn routing(c: &mut Criterion) {
    let subscription = format!("/sub/{USERNAME}/{APP_KEY}/links");
    let mut group = c.benchmark_group("route");
    for (name, path) in [
        ("healthz", "/healthz"),
        ("subscription", subscription.as_str()),
        ("not_found", "/favicon.ico"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), path, |b, path| {
            b.iter(|| route(black_box(path)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("redact");
    let with_query = format!("{subscription}?format=v2ray");
    for (name, target) in [
        ("healthz", "/healthz"),
        ("subscription_query", with_query.as_str()),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), target, |b, target| {
            b.iter(|| redact(black_box(target)))
        });
    }
    group.finish();
}

fn header_values(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscription_headers");
    group.bench_function("quota_headers", |b| {
        b.iter(|| quota_headers(black_box(&QUOTA)))
    });
    group.bench_function("subscription_userinfo", |b| {
        b.iter(|| subscription_userinfo(black_box(&QUOTA)))
    });
    group.bench_function("profile_update_interval", |b| {
        b.iter(|| profile_update_interval(black_box(PROFILE_UPDATE_HOURS)))
    });
    for (name, username) in [("latin", USERNAME), ("persian", PERSIAN_USERNAME)] {
        group.bench_with_input(
            BenchmarkId::new("profile_title", name),
            username,
            |b, username| b.iter(|| profile_title(black_box(username))),
        );
        group.bench_with_input(
            BenchmarkId::new("content_disposition", name),
            username,
            |b, username| b.iter(|| content_disposition(black_box(username))),
        );
    }
    group.bench_function("profile_web_page_url", |b| {
        b.iter(|| profile_web_page_url(black_box(PUBLIC_BASE_URL), USERNAME, APP_KEY))
    });
    group.finish();
}

/// The text answer of a subscription as the flow builds it: the links
/// joined, then every header set in the flow's order.
fn subscription_answer(links: &[String]) -> Response {
    let mut body = String::with_capacity(links.iter().map(|link| link.len() + 1).sum());
    for link in links {
        body.push_str(link);
        body.push('\n');
    }
    let mut response = Response::text(200, body);
    for (name, value) in quota_headers(&QUOTA) {
        response.set_header(name, value);
    }
    for (name, value) in [
        subscription_userinfo(&QUOTA),
        profile_update_interval(PROFILE_UPDATE_HOURS),
        profile_title(USERNAME),
        profile_web_page_url(PUBLIC_BASE_URL, USERNAME, APP_KEY),
        content_disposition(USERNAME),
    ] {
        response.set_header(name, value);
    }
    response.set_header("Cache-Control", "no-store");
    response
}

fn response_building(c: &mut Criterion) {
    let links = links(20);
    let mut group = c.benchmark_group("response_build");
    group.bench_function("healthz", |b| {
        b.iter(|| Response::text(200, black_box("ok\n")))
    });
    group.bench_function("subscription_20_links", |b| {
        b.iter(|| subscription_answer(black_box(&links)))
    });
    group.finish();
}

/// The service behind our in-process server: "ok\n" for every target (the
/// answer may_minihttp gives too), or the whole subscription answer.
struct BenchService {
    subscription: Response,
}

impl Service for BenchService {
    fn call(&self, request: &Request<'_>) -> Outcome {
        if request.path() == SUBSCRIPTION_TARGET {
            return Outcome::Ready(self.subscription.clone());
        }
        Outcome::Ready(Response::text(200, "ok\n"))
    }
}

#[derive(Clone)]
struct MiniOk;

impl may_minihttp::HttpService for MiniOk {
    fn call(
        &mut self,
        _request: may_minihttp::Request<'_, '_, '_>,
        response: &mut may_minihttp::Response<'_>,
    ) -> std::io::Result<()> {
        response.header("Content-Type: text/plain; charset=utf-8");
        response.body("ok\n");
        Ok(())
    }
}

/// The two servers, started once per process on loopback ports.
struct Servers {
    ours: SocketAddr,
    minihttp: SocketAddr,
    // Kept so that our server runs until the process ends.
    _ours: Server,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        valhalla::configure_runtime(WORKERS);
        let options = ServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            // A bench can leave its connection idle while others run.
            idle_timeout: Duration::from_secs(3600),
            ..ServerOptions::default()
        };
        let service = BenchService {
            subscription: subscription_answer(&links(20)),
        };
        let ours = Server::start(options, Arc::new(service)).expect("start our server");

        // may_minihttp does not report the port it bound: take a free one
        // first (may binds with SO_REUSEPORT, so the brief overlap is fine).
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let minihttp = probe.local_addr().expect("probe address");
        drop(probe);
        may_minihttp::HttpServer(MiniOk)
            .start(minihttp)
            .expect("start may_minihttp");

        Servers {
            ours: ours.local_addr(),
            minihttp,
            _ours: ours,
        }
    })
}

/// A keep-alive client connection that writes a batch of heads and reads
/// exactly the batch's answers.
struct LoopbackClient {
    stream: TcpStream,
    batch: Vec<u8>,
    answers_len: usize,
    received: Vec<u8>,
}

impl LoopbackClient {
    fn connect(addr: SocketAddr, head: &str, batch: usize) -> LoopbackClient {
        let stream = TcpStream::connect(addr).expect("connect over loopback");
        stream.set_nodelay(true).expect("nodelay");
        // A wrong length below would otherwise hang the bench.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut client = LoopbackClient {
            stream,
            batch: Vec::new(),
            answers_len: 0,
            received: Vec::new(),
        };
        // Every answer has the same length (the Date header has a fixed
        // width), so one probe tells the length of a batch's answers.
        client.batch = head.as_bytes().to_vec();
        let one = client.probe();
        client.batch = head.repeat(batch).into_bytes();
        client.answers_len = one * batch;
        client.received = vec![0; client.answers_len];
        client
    }

    /// Sends one head and returns the length of its whole answer.
    fn probe(&mut self) -> usize {
        self.stream.write_all(&self.batch).expect("write the probe");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = self.stream.read(&mut chunk).expect("read the probe answer");
            assert!(read > 0, "the server closed the connection");
            answer.extend_from_slice(&chunk[..read]);
            let Some(head_end) = answer.windows(4).position(|window| window == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 200"),
                "unexpected answer: {head}"
            );
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .expect("the answer has a content-length");
            let total = head_end + 4 + length;
            if answer.len() >= total {
                assert_eq!(answer.len(), total, "more bytes than one answer");
                return total;
            }
        }
    }

    fn exchange(&mut self) {
        self.stream.write_all(&self.batch).expect("write the batch");
        self.stream
            .read_exact(&mut self.received)
            .expect("read the batch's answers");
    }
}

fn loopback(c: &mut Criterion) {
    let servers = servers();
    let mut group = c.benchmark_group("http_loopback");
    for (head_name, head) in HEADS {
        for batch in BATCHES {
            group.throughput(Throughput::Elements(batch as u64));
            for (server_name, addr) in [
                ("valhalla", servers.ours),
                ("may_minihttp", servers.minihttp),
            ] {
                let mut client = LoopbackClient::connect(addr, head, batch);
                group.bench_function(
                    BenchmarkId::new(format!("{server_name}/{head_name}"), batch),
                    |b| b.iter(|| client.exchange()),
                );
            }
        }
    }

    // Our layer encoding a whole subscription answer (20 links, ten
    // headers) instead of "ok\n"; may_minihttp cannot send these headers.
    let head = VPN_CLIENT_HEAD.replacen(
        &format!("/sub/{USERNAME}/{APP_KEY}/links"),
        SUBSCRIPTION_TARGET,
        1,
    );
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut client = LoopbackClient::connect(servers.ours, &head, batch);
        group.bench_function(
            BenchmarkId::new("valhalla/subscription_answer", batch),
            |b| b.iter(|| client.exchange()),
        );
    }
    group.finish();
}

/// The floor under the loopback figures: httparse alone over the same heads,
/// with the layer's header capacity.
fn head_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("httparse_floor");
    for (name, head) in HEADS {
        group.bench_with_input(BenchmarkId::from_parameter(name), head, |b, head| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; valhalla::http::MAX_HEADERS];
                let mut request = httparse::Request::new(&mut headers);
                request
                    .parse(black_box(head.as_bytes()))
                    .map(|status| status.is_complete())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    routing,
    header_values,
    response_building,
    head_parse,
    loopback
);
criterion_main!(benches);
