//! The HTTPS acceptor: certificate chain and key loading with errors that
//! name the files, and handshakes over may sockets.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod, SslStream};
use openssl::x509::X509;

use super::transport::Socket;

/// Why the certificate or key could not be loaded. Messages name the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {}: {source}", path.display())]
    ReadCertificate { path: PathBuf, source: io::Error },
    #[error("cannot read key {}: {source}", path.display())]
    ReadKey { path: PathBuf, source: io::Error },
    #[error("no certificate found in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("invalid certificate in {}: {source}", path.display())]
    InvalidCertificate { path: PathBuf, source: ErrorStack },
    #[error("no private key found in {}", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("private key in {} is encrypted; an unencrypted key is needed", path.display())]
    EncryptedKey { path: PathBuf },
    #[error("invalid private key in {}: {source}", path.display())]
    InvalidKey { path: PathBuf, source: ErrorStack },
    #[error("key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("cannot set up tls: {0}")]
    Setup(ErrorStack),
}

/// Accepts TLS 1.2 and 1.3 connections with one certificate chain. Cheap to
/// clone (OpenSSL's context is reference counted).
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: SslAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// Loads a PEM certificate chain (the certificate followed by its
    /// intermediates, as certbot's fullchain.pem) and a PEM private key:
    /// PKCS#8 (`BEGIN PRIVATE KEY`), RSA (`BEGIN RSA PRIVATE KEY`) or EC
    /// (`BEGIN EC PRIVATE KEY`). Reads files: call it at startup, not from
    /// a request.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
        let cert_pem = std::fs::read(cert).map_err(|source| TlsError::ReadCertificate {
            path: cert.to_owned(),
            source,
        })?;
        let key_pem = std::fs::read(key).map_err(|source| TlsError::ReadKey {
            path: key.to_owned(),
            source,
        })?;

        let chain =
            X509::stack_from_pem(&cert_pem).map_err(|source| TlsError::InvalidCertificate {
                path: cert.to_owned(),
                source,
            })?;
        let mut chain = chain.into_iter();
        let leaf = chain.next().ok_or_else(|| TlsError::NoCertificate {
            path: cert.to_owned(),
        })?;
        let private_key = load_key(&key_pem, key)?;
        let mismatch = || TlsError::KeyMismatch {
            key: key.to_owned(),
            cert: cert.to_owned(),
        };
        // Compare the public halves first: OpenSSL's own check reports a
        // mismatch as a generic setup failure.
        let public_key = leaf.public_key().map_err(TlsError::Setup)?;
        if !public_key.public_eq(&private_key) {
            return Err(mismatch());
        }

        // Mozilla's intermediate profile, version 5: TLS 1.2 and 1.3 with
        // modern ciphers. native-tls builds its acceptor from the version 4
        // profile, which switches TLS 1.3 off, so the openssl crate (what
        // native-tls wraps on Linux) is used directly.
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(TlsError::Setup)?;
        builder.set_certificate(&leaf).map_err(TlsError::Setup)?;
        for intermediate in chain {
            builder
                .add_extra_chain_cert(intermediate)
                .map_err(TlsError::Setup)?;
        }
        builder
            .set_private_key(&private_key)
            .map_err(TlsError::Setup)?;
        builder.check_private_key().map_err(|_| mismatch())?;
        Ok(TlsAcceptor {
            acceptor: builder.build(),
        })
    }

    /// Runs the server side of the handshake over `socket`, bounded in total
    /// by `timeout`. Failures are the client's business (scanners, old
    /// clients, a silent peer) and are logged at debug only.
    pub(super) fn handshake(
        &self,
        mut socket: Socket,
        timeout: Duration,
        peer: SocketAddr,
    ) -> Option<SslStream<Socket>> {
        if let Err(error) = socket.set_deadline(Some(Instant::now() + timeout)) {
            tracing::debug!(%error, %peer, "cannot set tls handshake deadline");
            return None;
        }
        // OpenSSL's error queue is per thread and coroutines move between
        // threads: start from an empty queue so that an error left by
        // another connection on this thread is not reported as ours.
        drop(ErrorStack::get());
        match self.acceptor.accept(socket) {
            Ok(mut stream) => match stream.get_mut().set_deadline(None) {
                Ok(()) => Some(stream),
                Err(error) => {
                    tracing::debug!(%error, %peer, "cannot clear tls handshake deadline");
                    None
                }
            },
            Err(error) => {
                tracing::debug!(%error, %peer, "tls handshake failed");
                drop(ErrorStack::get());
                None
            }
        }
    }
}

fn load_key(pem: &[u8], path: &Path) -> Result<PKey<Private>, TlsError> {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|window| window == needle);
    if !contains(b"PRIVATE KEY-----") {
        return Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        });
    }
    if contains(b"ENCRYPTED") {
        return Err(TlsError::EncryptedKey {
            path: path.to_owned(),
        });
    }
    // The callback refuses to supply a passphrase; without it OpenSSL would
    // prompt on the terminal for an encrypted key that slipped through.
    PKey::private_key_from_pem_callback(pem, |_| Ok(0)).map_err(|source| TlsError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}
