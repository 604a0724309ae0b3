//! Encrypt and Decrypt: validate every size first, then one pooled HSM call.

// Wiped with explicit_bzero (memset speed), not zeroize's byte-at-a-time volatile loop, which
// for two 4 KiB plaintexts per W1 request was ~1.2 % of server CPU on the HSM worker.
use xki_pkcs11::secret::SecretBytes;

use super::format::{cdiv, hsm_aad, METADATA_V1};
use super::{b64, b64_required, check_algorithm, map_hsm, MAX_AAD, MAX_DATA, MAX_METADATA};
use crate::api::{
    text, ApiError, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, ErrorKind,
};
use crate::hsm::{gcm_decrypt, HsmError, TAG_LEN};
use crate::state::App;

fn too_big(field: &str, max: usize) -> ApiError {
    ApiError::new(
        ErrorKind::UnsupportedOperation,
        format!("{field} larger than the {max} bytes this proxy supports"),
    )
}

fn optional_aad(v: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let aad = match v {
        Some(s) => b64("additionalAuthenticatedData", s)?,
        None => Vec::new(),
    };
    if aad.len() > MAX_AAD {
        return Err(too_big("additionalAuthenticatedData", MAX_AAD));
    }
    Ok(aad)
}

/// An Encrypt request after validation: what the HSM part needs.
pub struct EncryptInput {
    /// A CDIV (SHA_256) was asked for.
    pub want_cdiv: bool,
    /// The decoded plaintext.
    pub plaintext: SecretBytes,
    /// The decoded AAD (empty when absent).
    pub aad: Vec<u8>,
}

/// Validate an Encrypt body (everything but `requestMetadata`) without touching the HSM.
pub fn validate_encrypt(req: &EncryptRequest) -> Result<EncryptInput, ApiError> {
    check_algorithm(req.encryption_algorithm.as_deref())?;
    let want_cdiv = match req.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some("SHA_256") => true,
        Some(_) => {
            return Err(ApiError::new(
                ErrorKind::UnsupportedOperation,
                "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
            ))
        }
    };
    let plaintext = SecretBytes::new(b64_required("plaintext", text(&req.plaintext))?);
    if plaintext.len() > MAX_DATA {
        return Err(too_big("plaintext", MAX_DATA));
    }
    let aad = optional_aad(text(&req.additional_authenticated_data))?;
    Ok(EncryptInput {
        want_cdiv,
        plaintext,
        aad,
    })
}

/// Encrypt under `key` (the response body), with the IV the token generates where the module
/// offers the PKCS#11 3.0 message API ([`crate::hsm::IvPath`]). With a CDIV algorithm, the
/// output is first decrypted once in the HSM to prove it round-trips (retried once with a
/// fresh IV, then InternalException), and the CDIV is computed from that exact output (with the
/// IV the HSM returned) back on the async side, so the HSM worker, the bottleneck under load,
/// does not hash. A CDIV on a key without DECRYPT usage is InvalidKeyUsageException and
/// returns no ciphertext.
pub async fn encrypt(app: &App, key: &str, req: EncryptRequest<'_>) -> Result<Vec<u8>, ApiError> {
    let EncryptInput {
        want_cdiv,
        plaintext,
        aad,
    } = validate_encrypt(&req)?;
    let label = key.to_string();
    let (out, aad) = app
        .hsm
        .run(app.deadline(), move |hsm, s| {
            let full_aad = hsm_aad(&aad, &METADATA_V1);
            // One hop to an HSM worker thread for the whole HSM part: IV (token-generated, or
            // from the bulk pool), encrypt and the verifying decrypt. The token enforces
            // CKA_ENCRYPT/CKA_DECRYPT itself (see `Hsm::with_key_enforced`).
            let out = hsm.with_key_enforced(s, &label, |h| {
                for _attempt in 0..2 {
                    let out = hsm.encrypt(s, h, &full_aad, &plaintext)?;
                    if !want_cdiv {
                        return Ok(out);
                    }
                    let back = gcm_decrypt(s, h, &out.iv, &full_aad, &out.ciphertext, &out.tag)
                        .map(SecretBytes::new);
                    match back {
                        Ok(back) if back.as_slice() == plaintext.as_slice() => return Ok(out),
                        // A CDIV promises that Decrypt of this output succeeds; on a key
                        // without DECRYPT it would not: no ciphertext, and the refusal is
                        // named from the key's state (InvalidKeyUsage, or InvalidState if
                        // the key was disabled meanwhile) by `with_key_enforced`.
                        Err(e) if e.key_use_refused() => {
                            return Err(e)
                        }
                        Ok(_) | Err(HsmError::InvalidCiphertext) => {
                            tracing::error!(key = %label, "encrypt round-trip check failed; retrying");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(HsmError::Other("encrypt output failed its round-trip check twice".into()))
            })?;
            Ok((out, aad))
        })
        .await
        .map_err(map_hsm)?;
    let digest = want_cdiv.then(|| cdiv(&aad, &METADATA_V1, &out.iv, &out.ciphertext, &out.tag));
    Ok(EncryptResponse {
        authentication_tag: &out.tag,
        ciphertext: &out.ciphertext,
        ciphertext_data_integrity_value: digest,
        ciphertext_metadata: &METADATA_V1,
        initialization_vector: &out.iv,
    }
    .to_json())
}

/// A Decrypt request after validation.
pub struct DecryptInput {
    /// The decoded ciphertext.
    pub ciphertext: Vec<u8>,
    /// The decoded IV (12 or 16 bytes).
    pub iv: Vec<u8>,
    /// The decoded tag (16 bytes).
    pub tag: Vec<u8>,
    /// The decoded ciphertextMetadata (at most 20 bytes; empty when absent).
    pub meta: Vec<u8>,
    /// The decoded AAD (empty when absent).
    pub aad: Vec<u8>,
}

/// Validate a Decrypt body (everything but `requestMetadata`) without touching the HSM.
pub fn validate_decrypt(req: &DecryptRequest) -> Result<DecryptInput, ApiError> {
    check_algorithm(req.encryption_algorithm.as_deref())?;
    let ciphertext = b64_required("ciphertext", text(&req.ciphertext))?;
    if ciphertext.len() > MAX_DATA {
        return Err(too_big("ciphertext", MAX_DATA));
    }
    let iv = b64_required("initializationVector", req.initialization_vector.as_deref())?;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(ApiError::validation(
            "initializationVector must be 12 or 16 bytes",
        ));
    }
    let tag = b64_required("authenticationTag", req.authentication_tag.as_deref())?;
    if tag.len() != TAG_LEN {
        return Err(ApiError::validation("authenticationTag must be 16 bytes"));
    }
    let meta = match req.ciphertext_metadata.as_deref() {
        Some(s) => b64("ciphertextMetadata", s)?,
        None => Vec::new(),
    };
    if meta.len() > MAX_METADATA {
        return Err(ApiError::validation(
            "ciphertextMetadata must be at most 20 bytes",
        ));
    }
    let aad = optional_aad(text(&req.additional_authenticated_data))?;
    Ok(DecryptInput {
        ciphertext,
        iv,
        tag,
        meta,
        aad,
    })
}

/// Decrypt under `key` (the response body). All lengths are checked before the HSM is asked.
pub async fn decrypt(app: &App, key: &str, req: DecryptRequest<'_>) -> Result<Vec<u8>, ApiError> {
    let DecryptInput {
        ciphertext,
        iv,
        tag,
        meta,
        aad,
    } = validate_decrypt(&req)?;
    let label = key.to_string();
    let plaintext = app
        .hsm
        .run(app.deadline(), move |hsm, s| {
            let full_aad = hsm_aad(&aad, &meta);
            hsm.with_key_enforced(s, &label, |h| {
                gcm_decrypt(s, h, &iv, &full_aad, &ciphertext, &tag).map(SecretBytes::new)
            })
        })
        .await
        .map_err(map_hsm)?;
    Ok(DecryptResponse {
        plaintext: plaintext.as_slice(),
    }
    .to_json())
}
