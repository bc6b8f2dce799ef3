//! HTTPS: certificate chains and key formats, TLS 1.3 and 1.2, loading
//! errors that name the files, and the handshake timeout.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVersion};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

use valhalla::http::{Server, TlsAcceptor, TlsError};

use crate::http::{Client, start_with};

/// A fresh directory for one test's files, removed when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> Scratch {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "valhalla-tls-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `subject_key`, signed by `issuer` (self-signed when
/// there is none).
fn certificate(
    common_name: &str,
    subject_key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    is_ca: bool,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_pubkey(subject_key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    if is_ca {
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
    } else {
        let context = builder.x509v3_context(issuer.map(|(certificate, _)| &**certificate), None);
        let names = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&context)
            .unwrap();
        builder.append_extension(names).unwrap();
    }
    match issuer {
        Some((issuer_certificate, issuer_key)) => {
            builder
                .set_issuer_name(issuer_certificate.subject_name())
                .unwrap();
            builder.sign(issuer_key, MessageDigest::sha256()).unwrap();
        }
        None => {
            builder.set_issuer_name(&name).unwrap();
            builder.sign(subject_key, MessageDigest::sha256()).unwrap();
        }
    }
    builder.build()
}

/// A root CA, an intermediate CA and a leaf for localhost. The root is the
/// client's only trust anchor, so the server must send the intermediate.
struct Pki {
    root: X509,
    /// The leaf followed by the intermediate, like certbot's fullchain.pem.
    fullchain_pem: Vec<u8>,
}

fn pki(leaf_key: &PKey<Private>) -> Pki {
    let root_key = rsa_key();
    let root = certificate("valhalla test root", &root_key, None, true);
    let intermediate_key = ec_key();
    let intermediate = certificate(
        "valhalla test intermediate",
        &intermediate_key,
        Some((&root, &root_key)),
        true,
    );
    let leaf = certificate(
        "localhost",
        leaf_key,
        Some((&intermediate, &intermediate_key)),
        false,
    );
    let mut fullchain_pem = leaf.to_pem().unwrap();
    fullchain_pem.extend_from_slice(&intermediate.to_pem().unwrap());
    Pki {
        root,
        fullchain_pem,
    }
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn start_https(acceptor: TlsAcceptor) -> Server {
    start_with(|options| options.tls = Some(acceptor)).0
}

/// Connects with OpenSSL's client, trusting only `root`, limited to the
/// given protocol versions.
fn connect(
    addr: SocketAddr,
    root: &X509,
    min: SslVersion,
    max: SslVersion,
) -> Client<SslStream<TcpStream>> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.cert_store_mut().add_cert(root.clone()).unwrap();
    builder.set_min_proto_version(Some(min)).unwrap();
    builder.set_max_proto_version(Some(max)).unwrap();
    let connector = builder.build();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stream = connector.connect("localhost", tcp).expect("tls handshake");
    Client::new(stream)
}

fn check_https(server: &Server, root: &X509) {
    let mut client = connect(
        server.local_addr(),
        root,
        SslVersion::TLS1_3,
        SslVersion::TLS1_3,
    );
    assert_eq!(client.stream.ssl().version_str(), "TLSv1.3");
    for _ in 0..2 {
        let reply = client.get("/echo-headers");
        assert_eq!(reply.status, 200);
        assert!(
            reply.text().starts_with("GET /echo-headers tls=true "),
            "{}",
            reply.text()
        );
    }
    let big = client.get("/big");
    assert_eq!(big.body.len(), 100_000);

    let mut client = connect(
        server.local_addr(),
        root,
        SslVersion::TLS1_2,
        SslVersion::TLS1_2,
    );
    assert_eq!(client.stream.ssl().version_str(), "TLSv1.2");
    assert_eq!(client.get("/hello").text(), "hello\n");
    client.send("GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(client.reply().header("connection"), Some("close"));
    assert!(client.is_closed());
}

#[test]
fn https_serves_a_chain_with_an_rsa_pkcs1_key() {
    let dir = scratch_dir("pkcs1");
    let key = rsa_key();
    let pki = pki(&key);
    let key_pem = key.rsa().unwrap().private_key_to_pem().unwrap();
    assert!(key_pem.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(&dir, "privkey.pem", &key_pem);
    let server = start_https(TlsAcceptor::from_pem_files(&cert, &key).expect("load the pair"));
    check_https(&server, &pki.root);
}

#[test]
fn https_serves_a_chain_with_an_rsa_pkcs8_key() {
    let dir = scratch_dir("pkcs8");
    let key = rsa_key();
    let pki = pki(&key);
    let key_pem = key.private_key_to_pem_pkcs8().unwrap();
    assert!(key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(&dir, "privkey.pem", &key_pem);
    let server = start_https(TlsAcceptor::from_pem_files(&cert, &key).expect("load the pair"));
    check_https(&server, &pki.root);
}

#[test]
fn https_serves_a_chain_with_an_ec_key() {
    let dir = scratch_dir("ec");
    let key = ec_key();
    let pki = pki(&key);
    // `openssl ecparam -genkey` writes the curve parameters before the key.
    let mut key_pem =
        b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n".to_vec();
    key_pem.extend_from_slice(&key.ec_key().unwrap().private_key_to_pem().unwrap());
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(&dir, "privkey.pem", &key_pem);
    let server = start_https(TlsAcceptor::from_pem_files(&cert, &key).expect("load the pair"));
    check_https(&server, &pki.root);
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let dir = scratch_dir("mismatch");
    let pki = pki(&rsa_key());
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(
        &dir,
        "other.pem",
        &rsa_key().private_key_to_pem_pkcs8().unwrap(),
    );
    let error = TlsAcceptor::from_pem_files(&cert, &key).expect_err("a foreign key");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "key {} does not match certificate {}",
            key.display(),
            cert.display()
        )
    );
}

#[test]
fn loading_errors_name_the_file() {
    let dir = scratch_dir("errors");
    let key_pair = rsa_key();
    let pki = pki(&key_pair);
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(
        &dir,
        "privkey.pem",
        &key_pair.private_key_to_pem_pkcs8().unwrap(),
    );
    let missing = dir.join("missing.pem");

    let error = TlsAcceptor::from_pem_files(&missing, &key).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "cannot read certificate {}: No such file or directory",
            missing.display()
        )),
        "{error}"
    );
    let error = TlsAcceptor::from_pem_files(&cert, &missing).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot read key {}: ", missing.display())),
        "{error}"
    );

    // The certificate file given as the key, and the other way round.
    let error = TlsAcceptor::from_pem_files(&cert, &cert).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("no private key found in {}", cert.display())
    );
    let error = TlsAcceptor::from_pem_files(&key, &key).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("no certificate found in {}", key.display())
    );

    let encrypted = write(
        &dir,
        "encrypted.pem",
        &key_pair
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
            .unwrap(),
    );
    let error = TlsAcceptor::from_pem_files(&cert, &encrypted).unwrap_err();
    assert!(matches!(error, TlsError::EncryptedKey { .. }), "{error:?}");
    assert!(error.to_string().contains(&encrypted.display().to_string()));

    let garbled = write(
        &dir,
        "garbled.pem",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let error = TlsAcceptor::from_pem_files(&cert, &garbled).unwrap_err();
    assert!(matches!(error, TlsError::InvalidKey { .. }), "{error:?}");
}

#[test]
fn a_silent_tls_client_is_dropped_after_the_handshake_timeout() {
    let dir = scratch_dir("silent");
    let key = rsa_key();
    let pki = pki(&key);
    let cert = write(&dir, "fullchain.pem", &pki.fullchain_pem);
    let key = write(
        &dir,
        "privkey.pem",
        &key.private_key_to_pem_pkcs8().unwrap(),
    );
    let acceptor = TlsAcceptor::from_pem_files(&cert, &key).unwrap();
    let (server, _) = start_with(|options| {
        options.tls = Some(acceptor);
        options.tls_handshake_timeout = Duration::from_millis(300);
        options.idle_timeout = Duration::from_secs(30);
    });
    let started = Instant::now();
    let mut silent = Client::connect(server.local_addr());
    assert!(silent.is_closed(), "the silent client is dropped");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "dropped after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "dropped after {waited:?}");

    // A client speaking plain HTTP to the TLS port is dropped too, and the
    // server still serves TLS afterwards.
    let mut plain = Client::connect(server.local_addr());
    let _ = std::io::Write::write_all(&mut plain.stream, b"GET /hello HTTP/1.1\r\n\r\n");
    assert!(plain.is_closed());
    let mut client = connect(
        server.local_addr(),
        &pki.root,
        SslVersion::TLS1_2,
        SslVersion::TLS1_3,
    );
    assert_eq!(client.get("/hello").status, 200);
}
