//! TLS (rustls, ring provider): TLS 1.2 + 1.3 with ring's default suites, which include the
//! four the spec requires (TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
//! ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES256-GCM-SHA384). Optional mTLS: the client
//! chain must verify against the configured CA *and* its subject CN or a DNS SAN must be one
//! of `client_names` — otherwise the handshake fails.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::config::TlsConfig;

/// Build the server TLS configuration.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls.cert_file {}: {e}", tls.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate",
            tls.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", tls.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            }
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(Arc::new(NameCheck {
                inner,
                names: tls.client_names.clone(),
            }))
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate/key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Subject CN and DNS SANs of a DER certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = g {
                    names.push(d.to_string());
                }
            }
        }
    }
    names
}

/// WebPKI chain verification plus a required-name check.
#[derive(Debug)]
struct NameCheck {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for NameCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = cert_names(end_entity.as_ref());
        if presented
            .iter()
            .any(|n| self.names.iter().any(|w| w.eq_ignore_ascii_case(n)))
        {
            Ok(ok)
        } else {
            tracing::warn!(names = ?presented, "mTLS: client certificate name not allowed");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `notAfter` (Unix seconds) of the first certificate in a PEM file: the served (leaf)
/// certificate. Exported as `xki_proxy_tls_certificate_expiry_seconds` and checked by
/// `check-config`.
pub fn cert_not_after(path: &std::path::Path) -> Result<i64, String> {
    let first = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp())
}
