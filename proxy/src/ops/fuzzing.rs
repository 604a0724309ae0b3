//! Request bodies from bytes to the validated operation, as the router does it before the
//! HSM is asked: for the fuzz harness in `fuzz/` (not an API; no behaviour of its own).

use super::crypto::{validate_decrypt, validate_encrypt};
use super::{validate_metadata, Op, MAX_AAD, MAX_DATA, MAX_METADATA};
use crate::api::{ApiError, DecryptRequest, EncryptRequest, MetadataOnlyRequest};

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::validation(format!("{e}")))
}

/// Validate `body` as the request of `op`, and check the invariants the HSM part relies on
/// (panics if validation let through what it must not).
pub fn validate_body(op: Op, body: &[u8]) -> Result<(), ApiError> {
    match op {
        Op::Metadata | Op::Health => {
            let r: MetadataOnlyRequest = parse(body)?;
            validate_metadata(r.request_metadata.as_ref(), op)?;
        }
        Op::Encrypt => {
            let r: EncryptRequest = parse(body)?;
            validate_metadata(r.request_metadata.as_ref(), op)?;
            let input = validate_encrypt(&r)?;
            assert!(input.plaintext.len() <= MAX_DATA && input.aad.len() <= MAX_AAD);
        }
        Op::Decrypt => {
            let r: DecryptRequest = parse(body)?;
            validate_metadata(r.request_metadata.as_ref(), op)?;
            let input = validate_decrypt(&r)?;
            assert!(input.ciphertext.len() <= MAX_DATA && input.aad.len() <= MAX_AAD);
            assert!(matches!(input.iv.len(), 12 | 16) && input.tag.len() == 16);
            assert!(input.meta.len() <= MAX_METADATA);
        }
    }
    Ok(())
}
