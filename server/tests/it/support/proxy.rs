//! A TCP proxy in front of MariaDB that a test can cut and restore, to play
//! a database that is down, comes up late, or restarts while in use.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    commands: Arc<AtomicU64>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` while up.
    /// While down, connections are accepted and closed at once, as a server
    /// that is restarting would.
    pub fn start(target: SocketAddr, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            up: Arc::new(AtomicBool::new(up)),
            commands: Arc::new(AtomicU64::new(0)),
            streams: Arc::new(Mutex::new(Vec::new())),
        };
        let up = Arc::clone(&proxy.up);
        let commands = Arc::clone(&proxy.commands);
        let streams = Arc::clone(&proxy.streams);
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    continue;
                };
                let mut registry = streams.lock().unwrap();
                registry.push(client.try_clone().unwrap());
                registry.push(server.try_clone().unwrap());
                drop(registry);
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(Arc::clone(&commands)),
                );
                pipe(server, client, None);
            }
        });
        proxy
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// MySQL commands (queries, statement executions, pings...) clients
    /// sent through the proxy so far: one per database round trip.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Counts the packets of a client-to-server MySQL stream that start a
/// command: every command begins a new exchange with sequence id 0, while
/// the login answers and continuation packets have higher ids.
#[derive(Default)]
struct PacketCounter {
    header: Vec<u8>,
    payload_left: usize,
}

impl PacketCounter {
    fn feed(&mut self, mut bytes: &[u8], commands: &AtomicU64) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let need = 4 - self.header.len();
            let take = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == 4 {
                let length = usize::from(self.header[0])
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]) << 16;
                if self.header[3] == 0 {
                    commands.fetch_add(1, Ordering::SeqCst);
                }
                self.payload_left = length;
                self.header.clear();
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, commands: Option<Arc<AtomicU64>>) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut counter = PacketCounter::default();
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(commands) = &commands {
                        counter.feed(&buffer[..n], commands);
                    }
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
