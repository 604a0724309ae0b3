//! The four operations: request validation, HSM calls, response shaping, error mapping.

pub mod crypto;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;

use crate::api::{ApiError, ErrorKind, KeyMetadataResponse, RequestMetadata};
use crate::hsm::{HsmError, KeyStatus};
use crate::state::App;

/// Largest plaintext/ciphertext we accept (decoded). The spec needs 4300.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest AAD (decoded). The spec needs 8192; the u16 length prefix caps it at 65535.
pub const MAX_AAD: usize = 32 * 1024;
/// Largest ciphertextMetadata (spec).
pub const MAX_METADATA: usize = 20;
/// Largest ARN (spec).
const MAX_ARN: usize = 2048;

/// Which operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GetKeyMetadata.
    Metadata,
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// GetHealthStatus.
    Health,
}

impl Op {
    /// Label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Metadata => "GetKeyMetadata",
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::Health => "GetHealthStatus",
        }
    }
}

/// Check requestMetadata presence and required fields for `op`.
pub fn validate_metadata(
    md: Option<&RequestMetadata>,
    op: Op,
) -> Result<&RequestMetadata, ApiError> {
    let md = md.ok_or_else(|| ApiError::validation("requestMetadata is required"))?;
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !present(&md.kms_request_id) {
        return Err(ApiError::validation(
            "requestMetadata.kmsRequestId is required",
        ));
    }
    if !present(&md.kms_operation) {
        return Err(ApiError::validation(
            "requestMetadata.kmsOperation is required",
        ));
    }
    if op != Op::Health && !present(&md.aws_principal_arn) {
        return Err(ApiError::validation(
            "requestMetadata.awsPrincipalArn is required",
        ));
    }
    if matches!(op, Op::Encrypt | Op::Decrypt) && !present(&md.kms_key_arn) {
        return Err(ApiError::validation(
            "requestMetadata.kmsKeyArn is required",
        ));
    }
    for (name, v) in [
        ("awsPrincipalArn", &md.aws_principal_arn),
        ("kmsKeyArn", &md.kms_key_arn),
        ("kmsRequestId", &md.kms_request_id),
        ("kmsOperation", &md.kms_operation),
        ("awsSourceVpc", &md.aws_source_vpc),
        ("awsSourceVpce", &md.aws_source_vpce),
        ("kmsViaService", &md.kms_via_service),
    ] {
        if v.as_deref().is_some_and(|s| s.len() > MAX_ARN) {
            return Err(ApiError::validation(format!(
                "requestMetadata.{name} is too long"
            )));
        }
    }
    Ok(md)
}

/// Decode a required base64 field.
pub fn b64_required(field: &str, v: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let v = v.ok_or_else(|| ApiError::validation(format!("{field} is required")))?;
    b64(field, v)
}

/// Decode a base64 field.
pub fn b64(field: &str, v: &str) -> Result<Vec<u8>, ApiError> {
    base64_simd::STANDARD
        .decode_to_vec(v)
        .map_err(|_| ApiError::validation(format!("{field} is not valid base64")))
}

/// `encryptionAlgorithm` must be present and AES_GCM.
pub fn check_algorithm(v: Option<&str>) -> Result<(), ApiError> {
    match v {
        None => Err(ApiError::validation("encryptionAlgorithm is required")),
        Some("AES_GCM") => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorKind::UnsupportedOperation,
            "encryptionAlgorithm must be AES_GCM",
        )),
    }
}

/// Log an "HSM unavailable" answer at most once a second (with how many were not logged): an
/// outage under full traffic would otherwise write a line per request. Each request's own
/// log line still carries its outcome.
fn log_unavailable(e: &HsmError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if now != last
        && LAST_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(error = %e, suppressed, "HSM unavailable");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Map an HSM-layer error to the API error the spec prescribes.
pub fn map_hsm(e: HsmError) -> ApiError {
    match e {
        HsmError::KeyNotFound => ApiError::new(ErrorKind::KeyNotFound, "external key not found"),
        HsmError::Disabled => ApiError::new(ErrorKind::InvalidState, "key is disabled"),
        HsmError::WrongUsage => ApiError::new(
            ErrorKind::InvalidKeyUsage,
            "key usage does not permit this operation",
        ),
        HsmError::InvalidCiphertext => ApiError::new(
            ErrorKind::InvalidCiphertext,
            "ciphertext, tag, IV, AAD or metadata failed authentication",
        ),
        HsmError::Busy => ApiError::new(ErrorKind::Throttling, "HSM sessions busy; retry"),
        HsmError::Timeout => {
            ApiError::new(ErrorKind::DependencyTimeout, "HSM did not answer in time")
        }
        // 503, the contract's only retryable server error: the outage is transient and the
        // HSM is fine, so not 500 InternalException ("HSM failure"); the KMS retries.
        HsmError::AuditRefused => {
            tracing::error!("key operation refused: the module's audit file cannot be written");
            ApiError::new(
                ErrorKind::DependencyTimeout,
                "audit trail cannot be written; key operations refused until it can",
            )
        }
        // The HSM side is down: an HSM failure (500), never "key not found".
        e if e.unavailable() => {
            log_unavailable(&e);
            ApiError::new(ErrorKind::Internal, "HSM unavailable")
        }
        e if e.key_use_refused() => ApiError::new(
            ErrorKind::InvalidKeyUsage,
            "key usage does not permit this operation",
        ),
        e => {
            tracing::error!(error = %e, "HSM failure");
            ApiError::new(ErrorKind::Internal, "HSM failure")
        }
    }
}

/// GetKeyMetadata: the key's true status and true usage, both read from the HSM.
///
/// Status and usage are independent: a DISABLED key reports the usage `keys enable`
/// restores. A key whose stored state is damaged reports DISABLED (fail safe; the module
/// logs the damage and `keys list` shows it); an interrupted admin change (DISABLED while
/// the HSM still allows the key) reports DISABLED and is logged.
pub async fn key_metadata(app: &App, key: &str) -> Result<KeyMetadataResponse, ApiError> {
    let label = key.to_string();
    let st = app
        .hsm
        .run(app.deadline(), move |hsm, s| hsm.key_state(s, &label))
        .await
        .map_err(map_hsm)?;
    if st.status == KeyStatus::Damaged {
        tracing::error!(key, "stored key state is damaged: reporting DISABLED");
    } else if st.incomplete() {
        tracing::warn!(
            key,
            "key is DISABLED but the HSM still allows it (interrupted admin change)"
        );
    }
    Ok(KeyMetadataResponse {
        key_spec: "AES_256",
        key_usage: st.usage.names(),
        key_status: if st.disabled() { "DISABLED" } else { "ENABLED" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// `b64` accepts and refuses exactly what the scalar `base64` crate (STANDARD: padding
    /// required, canonical trailing bits) does, and decodes to the same bytes: random strings
    /// over the alphabet plus the characters near it, and random valid encodings with one
    /// character changed.
    #[test]
    fn b64_agrees_with_the_reference_decoder() {
        let reference = base64::engine::general_purpose::STANDARD;
        let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n.";
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let s: String = if round % 2 == 0 {
                let len = (next() % 40) as usize;
                (0..len)
                    .map(|_| chars[(next() % chars.len() as u64) as usize] as char)
                    .collect()
            } else {
                let raw: Vec<u8> = (0..next() % 100).map(|_| next() as u8).collect();
                let mut s = reference.encode(&raw).into_bytes();
                if !s.is_empty() && round % 4 == 1 {
                    let at = (next() % s.len() as u64) as usize;
                    s[at] = chars[(next() % chars.len() as u64) as usize];
                }
                String::from_utf8(s).unwrap()
            };
            let ours = b64("f", &s).ok();
            assert_eq!(ours, reference.decode(&s).ok(), "{s:?}");
        }
    }
}
