//! The byte streams a connection runs over: a may TCP socket with deadline
//! handling, and the same socket wrapped in TLS.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use super::server::Registration;

/// An accepted may socket. Reads wait at most until the deadline when one is
/// set (a pending request head, a TLS handshake), otherwise for the idle
/// timeout.
pub(super) struct Socket {
    // Field order matters: fields drop in declaration order, so the
    // registration is released (under the registry lock) before the stream
    // closes its descriptor. The shutdown path can then never touch a
    // descriptor number that was already closed and reused.
    registration: Registration,
    stream: may::net::TcpStream,
    deadline: Option<Instant>,
    idle_timeout: Duration,
}

impl Socket {
    pub(super) fn new(
        stream: may::net::TcpStream,
        registration: Registration,
        idle_timeout: Duration,
        write_timeout: Duration,
    ) -> io::Result<Socket> {
        stream.set_read_timeout(Some(idle_timeout))?;
        stream.set_write_timeout(Some(write_timeout))?;
        Ok(Socket {
            registration,
            stream,
            deadline: None,
            idle_timeout,
        })
    }

    /// Bounds every following read by `deadline`, or, with `None`, by the
    /// idle timeout again.
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if self.deadline.is_some() && deadline.is_none() {
            self.stream.set_read_timeout(Some(self.idle_timeout))?;
        }
        self.deadline = deadline;
        Ok(())
    }

    /// Sends a FIN: the client sees the end of our answers while we can
    /// still read.
    pub(super) fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    pub(super) fn registration(&self) -> &Registration {
        &self.registration
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(remaining))?;
        }
        self.stream.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// What the connection loop needs from its stream besides reading and
/// writing.
pub(super) trait Transport: Read + Write {
    fn socket(&mut self) -> &mut Socket;

    /// Ends the connection cleanly before it is dropped; errors are ignored,
    /// the peer may be gone already.
    fn finish(&mut self) {}
}

impl Transport for Socket {
    fn socket(&mut self) -> &mut Socket {
        self
    }
}

impl Transport for SslStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut()
    }

    fn finish(&mut self) {
        // A close_notify alert tells the client the answer was complete.
        if self.shutdown().is_err() {
            // OpenSSL's error queue belongs to the thread, and coroutines
            // change threads: drain it here so a stale entry cannot be
            // blamed on another connection later.
            drop(openssl::error::ErrorStack::get());
        }
    }
}
