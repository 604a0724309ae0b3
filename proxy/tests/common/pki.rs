//! Certificates (rcgen) and a blocking TLS client with keep-alive, for the fleet and
//! observability tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{parse_response, raw_request, Resp, Signer};

/// A loopback port free right now (for processes that must be told their port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One CA for every certificate of the test (KMS client, LB, proxies).
pub struct Pki {
    pub ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "fleet test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// (cert pem, key pem): a server certificate for localhost/127.0.0.1 or a client one.
    pub fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let sans = if server {
            vec!["localhost".to_string()]
        } else {
            vec![]
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let c = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

pub fn tls_client(ca_pem: &str, cert: &str, key: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap(),
    )
}

pub type Tls = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

pub fn tls_connect(addr: &str, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let conn =
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .map_err(std::io::Error::other)?;
    Ok(BufReader::new(rustls::StreamOwned::new(conn, tcp)))
}

/// One signed request on a keep-alive TLS connection; Err on any transport problem.
pub fn tls_request(
    s: &mut Tls,
    addr: &str,
    signer: &Signer,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<Resp> {
    let body = serde_json::to_vec(body).unwrap();
    let headers = signer.headers(addr, path, &body);
    let req = String::from_utf8(raw_request("POST", addr, path, &headers, &body))
        .unwrap()
        .replace("Connection: close\r\n", "");
    s.get_mut().write_all(req.as_bytes())?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut b = vec![0u8; len];
    s.read_exact(&mut b)?;
    let mut raw = head.into_bytes();
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&b);
    Ok(parse_response(&raw))
}

/// One signed request on a fresh connection.
pub fn tls_once(
    addr: &str,
    cfg: &Arc<rustls::ClientConfig>,
    signer: &Signer,
    path: &str,
    body: &serde_json::Value,
) -> Resp {
    let mut s = tls_connect(addr, cfg).unwrap();
    tls_request(&mut s, addr, signer, path, body).unwrap()
}
