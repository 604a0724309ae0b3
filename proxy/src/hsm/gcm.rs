//! AES-GCM through PKCS#11 (`CKM_AES_GCM`), IV from the HSM's own RNG.

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::HsmError;

/// GCM tag length in bytes (128-bit tags only).
pub const TAG_LEN: usize = 16;
/// IV length the proxy generates (the GCM-recommended 96 bits).
pub const IV_LEN: usize = 12;

/// Result of one encryption.
pub struct GcmOutput {
    /// Fresh IV from C_GenerateRandom.
    pub iv: Vec<u8>,
    /// Ciphertext, same length as the plaintext.
    pub ciphertext: Vec<u8>,
    /// The 16-byte tag split off the module's output.
    pub tag: Vec<u8>,
}

/// Encrypt with `iv`, a fresh 12-byte IV from the token's RNG ([`super::Hsm::next_iv`]).
pub fn gcm_encrypt(
    s: &Session,
    key: ObjectHandle,
    iv: [u8; IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<GcmOutput, HsmError> {
    let mut iv_param = iv;
    let params = GcmParams::new(&mut iv_param, aad, ((TAG_LEN * 8) as u64).into())
        .map_err(|e| HsmError::pkcs11("GcmParams", e))?;
    let mut out = s
        .encrypt(&Mechanism::AesGcm(params), key, plaintext)
        .map_err(|e| HsmError::pkcs11("C_Encrypt", e))?;
    if out.len() != plaintext.len() + TAG_LEN {
        return Err(HsmError::Other(format!(
            "module returned {} bytes for {} bytes of plaintext",
            out.len(),
            plaintext.len()
        )));
    }
    let tag = out.split_off(plaintext.len());
    Ok(GcmOutput {
        iv: iv.to_vec(),
        ciphertext: out,
        tag,
    })
}

/// Decrypt and verify. An authentication failure is [`HsmError::InvalidCiphertext`]:
/// `CKR_ENCRYPTED_DATA_INVALID` per the standard, and `CKR_GENERAL_ERROR`, which is how
/// SoftHSM2 reports a bad tag (mapped only here, on the decrypt path).
pub fn gcm_decrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let mut iv_param = iv.to_vec();
    let params = GcmParams::new(&mut iv_param, aad, ((TAG_LEN * 8) as u64).into())
        .map_err(|e| HsmError::pkcs11("GcmParams", e))?;
    let mut input = Vec::with_capacity(ciphertext.len() + tag.len());
    input.extend_from_slice(ciphertext);
    input.extend_from_slice(tag);
    match s.decrypt(&Mechanism::AesGcm(params), key, &input) {
        Ok(pt) => Ok(pt),
        Err(e) => {
            let err = HsmError::pkcs11("C_Decrypt", e);
            match err.rv() {
                Some(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError,
                ) => Err(HsmError::InvalidCiphertext),
                _ => Err(err),
            }
        }
    }
}
