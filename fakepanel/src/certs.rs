//! A throwaway certificate authority and server certificate, made at test time.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use crate::TlsIdentity;

/// A CA certificate and a server certificate it signed, all PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate, to trust in the client under test.
    pub ca_pem: Vec<u8>,
    /// The server certificate followed by nothing else (the CA is the root).
    pub cert_pem: Vec<u8>,
    /// The server's PKCS#8 private key.
    pub key_pem: Vec<u8>,
}

impl TestPki {
    /// Makes a fresh CA and a server certificate valid for `names` (DNS names,
    /// or IP addresses when they parse as one), valid from an hour ago for a day.
    ///
    /// # Panics
    /// When OpenSSL fails, which is a broken test environment.
    pub fn generate(names: &[&str]) -> TestPki {
        let ca_key = new_key();
        let ca_name = {
            let mut name = X509NameBuilder::new().expect("x509 name");
            name.append_entry_by_nid(Nid::COMMONNAME, "fakepanel test ca")
                .expect("ca common name");
            name.build()
        };
        let mut ca = X509::builder().expect("x509 builder");
        ca.set_version(2).expect("version");
        ca.set_serial_number(&serial()).expect("serial");
        ca.set_subject_name(&ca_name).expect("subject");
        ca.set_issuer_name(&ca_name).expect("issuer");
        ca.set_pubkey(&ca_key).expect("pubkey");
        set_validity(&mut ca);
        ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("ca basic constraints");
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ca key usage");
        ca.sign(&ca_key, MessageDigest::sha256()).expect("sign ca");
        let ca = ca.build();

        let key = new_key();
        let subject = {
            let mut name = X509NameBuilder::new().expect("x509 name");
            name.append_entry_by_nid(
                Nid::COMMONNAME,
                names.first().copied().unwrap_or("localhost"),
            )
            .expect("common name");
            name.build()
        };
        let mut cert = X509::builder().expect("x509 builder");
        cert.set_version(2).expect("version");
        cert.set_serial_number(&serial()).expect("serial");
        cert.set_subject_name(&subject).expect("subject");
        cert.set_issuer_name(ca.subject_name()).expect("issuer");
        cert.set_pubkey(&key).expect("pubkey");
        set_validity(&mut cert);
        let mut san = SubjectAlternativeName::new();
        for name in names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                san.ip(name);
            } else {
                san.dns(name);
            }
        }
        let san = san
            .build(&cert.x509v3_context(Some(&ca), None))
            .expect("subject alternative names");
        cert.append_extension(san).expect("san");
        cert.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("basic constraints");
        cert.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .expect("ku"),
        )
        .expect("key usage");
        cert.append_extension(ExtendedKeyUsage::new().server_auth().build().expect("eku"))
            .expect("extended key usage");
        cert.sign(&ca_key, MessageDigest::sha256())
            .expect("sign server");
        let cert = cert.build();

        TestPki {
            ca_pem: ca.to_pem().expect("ca pem"),
            cert_pem: cert.to_pem().expect("cert pem"),
            key_pem: key.private_key_to_pem_pkcs8().expect("key pem"),
        }
    }

    /// The server side, for [`crate::PanelConfig::tls`].
    pub fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("p-256");
    let key = EcKey::generate(&group).expect("ec key");
    PKey::from_ec_key(key).expect("pkey")
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut serial = BigNum::new().expect("bignum");
    serial
        .rand(63, MsbOption::MAYBE_ZERO, false)
        .expect("random serial");
    serial.to_asn1_integer().expect("asn1 serial")
}

fn set_validity(builder: &mut openssl::x509::X509Builder) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_before = Asn1Time::from_unix(now - 3600).expect("not before");
    let not_after = Asn1Time::from_unix(now + 86_400).expect("not after");
    builder.set_not_before(&not_before).expect("set not before");
    builder.set_not_after(&not_after).expect("set not after");
}
