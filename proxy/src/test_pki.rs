//! `xki-proxy tls self-signed`: a throwaway certificate authority, server certificate and
//! client certificate for trying HTTPS with mTLS on one machine. NOT FOR PRODUCTION: the CA
//! key sits next to the certificates it signed, and nothing revokes or renews them.
//!
//! Files written into the target directory (never overwritten; keys mode 0600):
//! `ca.pem` (the test CA: the proxy's `tls.client_ca_file`, and the CA a client trusts),
//! `ca.key`, `server.pem` + `server.key` (the proxy's `tls.cert_file`/`key_file`, valid for the
//! names given plus `localhost`/`127.0.0.1`), `client.pem` + `client.key` (a client certificate
//! whose subject CN is the KMS's name, for `curl --cert`).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use sha2::{Digest, Sha256};
use xki_pkcs11::config::{create_private_dir, write_private_file};

/// The client name the AWS KMS presents (`cks.kms.<region>.amazonaws.com`), used as the test
/// client certificate's CN unless another is given.
pub const DEFAULT_CLIENT_NAME: &str = "cks.kms.us-east-1.amazonaws.com";

/// Validity of the test certificates, in days.
const VALID_DAYS: i64 = 90;

/// What `tls self-signed` made.
#[derive(Debug)]
pub struct TestPki {
    /// SHA-256 fingerprint of `server.pem` (DER), colon-separated upper-case hex, as KMS
    /// consoles and `openssl x509 -fingerprint -sha256` show it.
    pub server_fingerprint: String,
}

fn params(names: Vec<String>, cn: &str) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(names).map_err(|e| format!("certificate names: {e}"))?;
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let at = |secs: i64| {
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs.max(0) as u64)
    };
    // A minute of slack for clocks that disagree slightly.
    p.not_before = at(now - 60);
    p.not_after = at(now + VALID_DAYS * 86_400);
    Ok(p)
}

/// `AA:BB:...` of SHA-256 over `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Write the six files into `dir` (created 0700 if missing). `server_names` are extra DNS
/// names or IP addresses for the server certificate. Refuses to overwrite any existing file.
pub fn create(dir: &Path, server_names: &[String], client_name: &str) -> Result<TestPki, String> {
    let files = [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ];
    for f in files {
        let p = dir.join(f);
        if p.exists() {
            return Err(format!(
                "{} exists; tls self-signed never overwrites (remove the files or pick another --dir)",
                p.display()
            ));
        }
    }
    create_private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let err = |what: &str, e: rcgen::Error| format!("{what}: {e}");

    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut ca_params = params(Vec::new(), "xki-proxy TEST CA (not for production)")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", e))?;

    let mut names: Vec<String> = vec!["localhost".into()];
    names.extend(
        server_names
            .iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_err())
            .cloned(),
    );
    let server_key = KeyPair::generate().map_err(|e| err("server key", e))?;
    let mut sp = params(names, server_names.first().map_or("localhost", |s| s))?;
    let mut ips: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse().expect("literal IP")];
    ips.extend(
        server_names
            .iter()
            .filter_map(|n| n.parse::<std::net::IpAddr>().ok()),
    );
    for ip in ips {
        sp.subject_alt_names.push(SanType::IpAddress(ip));
    }
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(|e| err("server certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| err("client key", e))?;
    let mut cp = params(Vec::new(), client_name)?;
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp
        .signed_by(&client_key, &ca, &ca_key)
        .map_err(|e| err("client certificate", e))?;

    let contents: [(&str, String); 6] = [
        ("ca.pem", ca.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    for (name, text) in contents {
        let p = dir.join(name);
        let text = zeroize::Zeroizing::new(text);
        write_private_file(&p, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(TestPki {
        server_fingerprint: fingerprint(server.der()),
    })
}

/// The command: create, then say what was made and how to use it (stdout).
pub fn run(dir: &Path, server_names: &[String], client_name: &str) -> Result<(), String> {
    let pki = create(dir, server_names, client_name)?;
    let d = dir.display();
    println!(
        "TEST CERTIFICATES, NOT FOR PRODUCTION (the CA key is in {d}/ca.key)\n\
         server certificate : {d}/server.pem (+ server.key), valid {VALID_DAYS} days\n\
         server SHA-256     : {fp}\n\
         client certificate : {d}/client.pem (+ client.key), CN {client_name}\n\
         test CA            : {d}/ca.pem\n\
         \n\
         In proxy.toml:\n\
         [tls]\n\
         cert_file = \"{d}/server.pem\"\n\
         key_file = \"{d}/server.key\"\n\
         client_ca_file = \"{d}/ca.pem\"\n\
         client_names = [\"{client_name}\"]",
        fp = pki.server_fingerprint,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_six_files_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let pki = create(
            &out,
            &["proxy.example".into(), "10.1.2.3".into()],
            "client-x",
        )
        .unwrap();
        assert_eq!(pki.server_fingerprint.len(), 32 * 3 - 1);
        for f in ["ca.pem", "server.pem", "client.pem"] {
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
        let again = create(&out, &[], "client-x").unwrap_err();
        assert!(again.contains("never overwrites"), "{again}");
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(fingerprint(b"").len(), 95);
        assert!(fingerprint(b"").starts_with("E3:B0:C4:42"));
    }
}
