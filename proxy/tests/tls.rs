//! HTTPS, mTLS (CA + required client name) and a `curl --aws-sigv4` client.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;

const KMS_CN: &str = "cks.kms.us-east-1.amazonaws.com";

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let ca = p.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// (cert pem, key pem)
    fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(if server {
            vec!["localhost".to_string()]
        } else {
            vec![]
        })
        .unwrap();
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

fn client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    tls12_only: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

/// Signed POST over TLS; None when the connection/handshake fails.
fn tls_post(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    s: &Signer,
    path: &str,
) -> Option<(Resp, String)> {
    let body = serde_json::to_vec(&json!({"requestMetadata": md("DescribeKey")})).unwrap();
    let hdrs = s.headers(addr, path, &body);
    let req = raw_request("POST", addr, path, &hdrs, &body);
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).ok()?;
    let mut stream = rustls::StreamOwned::new(conn, TcpStream::connect(addr).ok()?);
    use std::io::{Read, Write};
    stream.write_all(&req).ok()?;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    if buf.is_empty() {
        return None;
    }
    let suite = format!(
        "{:?}",
        stream.conn.negotiated_cipher_suite().map(|s| s.suite())
    );
    Some((parse_response(&buf), suite))
}

fn tls_env(mtls: bool) -> (Token, Cred, Pki, Server) {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    let pki = Pki::new("xki test CA");
    let (cert, key) = pki.leaf("localhost", true);
    std::fs::write(tok.path("server.pem"), cert).unwrap();
    std::fs::write(tok.path("server.key"), key).unwrap();
    std::fs::write(tok.path("ca.pem"), &pki.ca_pem).unwrap();
    let mut tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tok.path("server.pem").display(),
        tok.path("server.key").display()
    );
    if mtls {
        tls.push_str(&format!(
            "client_ca_file = \"{}\"\nclient_names = [\"{KMS_CN}\"]\n",
            tok.path("ca.pem").display()
        ));
    }
    config(
        &tok,
        &tls,
        "",
        &format!("[[prefix]]\npath = \"/p\"\nkeys = \"all\"\n{}", a.toml()),
    );
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start(&tok);
    (tok, a, pki, srv)
}

#[test]
fn https_with_required_suites() {
    let (_tok, a, pki, srv) = tls_env(false);
    let s = Signer::new(&a);
    let p = key_path("/p", "k1", "metadata");
    let (r, suite) = tls_post(&srv.addr, client_config(&pki.ca_pem, None, false), &s, &p).unwrap();
    r.expect_ok();
    assert!(suite.contains("TLS13"), "{suite}");
    // TLS 1.2 with ECDHE-ECDSA-AES256-GCM-SHA384 (the server key is ECDSA).
    let provider = rustls::crypto::ring::default_provider();
    let mut p12 = provider.clone();
    p12.cipher_suites
        .retain(|cs| cs.suite() == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p12))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (r, suite) = tls_post(&srv.addr, Arc::new(cfg), &s, &p).unwrap();
    r.expect_ok();
    assert!(
        suite.contains("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
        "{suite}"
    );
    // Plain HTTP to the TLS port gets nothing useful.
    let plain = post(&srv.addr, Some(&s), &p, &json!({}));
    assert_ne!(plain.status, 200);
}

#[test]
fn mtls_requires_ca_and_name() {
    let (_tok, a, pki, srv) = tls_env(true);
    let s = Signer::new(&a);
    let p = key_path("/p", "k1", "metadata");
    let (good_c, good_k) = pki.leaf(KMS_CN, false);
    let (r, _) = tls_post(
        &srv.addr,
        client_config(&pki.ca_pem, Some((&good_c, &good_k)), false),
        &s,
        &p,
    )
    .unwrap();
    r.expect_ok();
    // TLS 1.2 too.
    let (r, _) = tls_post(
        &srv.addr,
        client_config(&pki.ca_pem, Some((&good_c, &good_k)), true),
        &s,
        &p,
    )
    .unwrap();
    r.expect_ok();
    // Right CA, wrong name: handshake fails.
    let (bad_c, bad_k) = pki.leaf("someone.else.example", false);
    assert!(tls_post(
        &srv.addr,
        client_config(&pki.ca_pem, Some((&bad_c, &bad_k)), false),
        &s,
        &p
    )
    .is_none());
    // Right name, other CA: handshake fails.
    let other = Pki::new("other CA");
    let (o_c, o_k) = other.leaf(KMS_CN, false);
    assert!(tls_post(
        &srv.addr,
        client_config(&pki.ca_pem, Some((&o_c, &o_k)), false),
        &s,
        &p
    )
    .is_none());
    // No client certificate: handshake fails.
    assert!(tls_post(&srv.addr, client_config(&pki.ca_pem, None, false), &s, &p).is_none());
    wait_until(5, || {
        srv.log().contains("client certificate name not allowed")
    });
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

#[test]
fn curl_aws_sigv4_over_https_and_mtls() {
    let (tok, a, pki, srv) = tls_env(true);
    let (cc, ck) = pki.leaf(KMS_CN, false);
    std::fs::write(tok.path("client.pem"), cc).unwrap();
    std::fs::write(tok.path("client.key"), ck).unwrap();
    let port = srv.addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/p/kms/xks/v1/keys/k1/encrypt");
    let user = format!("{}:{}", a.akid, a.secret);
    let body = serde_json::to_string(&encrypt_body(b"via curl", Some(b"aad"))).unwrap();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = path_of(&tok.path("ca.pem"));
    let cert = path_of(&tok.path("client.pem"));
    let key = path_of(&tok.path("client.key"));
    let base = [
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--aws-sigv4",
        "aws:amz:us-east-1:kms-xks-proxy",
        "--user",
        &user,
        "-H",
        "Content-Type: application/json",
    ];
    let mut args = base.to_vec();
    args.extend(["-d", &body, &url]);
    let (out, code) = curl(&args);
    assert_eq!(code, "200", "{out}\n{}", srv.log());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["ciphertextDataIntegrityValue"].is_string());
    // Wrong secret through curl -> 401.
    let bad_user = format!("{}:{}", a.akid, "B".repeat(44));
    let mut args = base.to_vec();
    let pos = args.iter().position(|x| *x == user.as_str()).unwrap();
    args[pos] = &bad_user;
    args.extend(["-d", &body, &url]);
    let (out, code) = curl(&args);
    assert_eq!(code, "401", "{out}");
    assert!(out.contains("AuthenticationFailedException"));
}

/// The certificate the server presents on a fresh connection (DER), or None when the
/// handshake fails.
fn presented_cert(addr: &str, ca_pem: &str) -> Option<Vec<u8>> {
    let cfg = client_config(ca_pem, None, false);
    let mut conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).ok()?;
    let mut tcp = TcpStream::connect(addr).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

#[test]
fn renewed_certificate_is_served_after_reload_and_a_bad_one_changes_nothing() {
    let (tok, a, pki, srv) = tls_env(false);
    let s = Signer::new(&a);
    let p = key_path("/p", "k1", "metadata");
    let first = std::fs::read_to_string(tok.path("server.pem")).unwrap();
    assert_eq!(presented_cert(&srv.addr, &pki.ca_pem), Some(der_of(&first)));

    // Renewal: new key and certificate at the same paths, then SIGHUP.
    let (renewed, renewed_key) = pki.leaf("localhost", true);
    std::fs::write(tok.path("server.key"), renewed_key).unwrap();
    std::fs::write(tok.path("server.pem"), &renewed).unwrap();
    srv.signal(libc::SIGHUP);
    wait_until(5, || {
        presented_cert(&srv.addr, &pki.ca_pem) == Some(der_of(&renewed))
    });
    let (r, _) = tls_post(&srv.addr, client_config(&pki.ca_pem, None, false), &s, &p).unwrap();
    r.expect_ok();

    // A broken certificate file: the reload fails as a whole and the renewed one stays.
    std::fs::write(tok.path("server.pem"), "not a certificate\n").unwrap();
    srv.signal(libc::SIGHUP);
    wait_until(5, || srv.log().contains("reload failed"));
    assert_eq!(
        presented_cert(&srv.addr, &pki.ca_pem),
        Some(der_of(&renewed))
    );
    let (r, _) = tls_post(&srv.addr, client_config(&pki.ca_pem, None, false), &s, &p).unwrap();
    r.expect_ok();
    assert!(srv.log().contains("tls.cert_file"), "{}", srv.log());
}
