//! The proxy's ciphertext format: metadata byte, the AAD handed to the HSM, and the CDIV.

use sha2::{Digest, Sha256};

/// ciphertextMetadata we emit: one format-version byte. It is bound into the GCM tag through
/// [`hsm_aad`], so altering it makes decryption fail.
pub const METADATA_V1: [u8; 1] = [0x01];

/// AAD given to the HSM: `u16_be(len(aad)) || aad || u8(len(meta)) || meta`.
/// Length prefixes make the split unambiguous. Callers keep `aad` <= 65535 and `meta` <= 255.
pub fn hsm_aad(aad: &[u8], meta: &[u8]) -> Vec<u8> {
    debug_assert!(aad.len() <= u16::MAX as usize && meta.len() <= u8::MAX as usize);
    let mut v = Vec::with_capacity(3 + aad.len() + meta.len());
    v.extend_from_slice(&(aad.len() as u16).to_be_bytes());
    v.extend_from_slice(aad);
    v.push(meta.len() as u8);
    v.extend_from_slice(meta);
    v
}

/// Ciphertext data integrity value: SHA-256(aad || meta || iv || ciphertext || tag).
pub fn cdiv(aad: &[u8], meta: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [aad, meta, iv, ciphertext, tag] {
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdiv_test_vector_from_spec() {
        let v = cdiv(
            b"project=nile,department=marketing",
            b"key_version=1",
            &hex::decode("1ccae5470f39700254779031").unwrap(),
            &hex::decode("821c642b5b71783367deaf18").unwrap(),
            &hex::decode("bc1c4dda7707d6812447c5955e99b261").unwrap(),
        );
        assert_eq!(
            base64_simd::STANDARD.encode_to_string(v),
            "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
        );
    }

    #[test]
    fn aad_layout() {
        assert_eq!(hsm_aad(b"", b""), vec![0, 0, 0]);
        assert_eq!(hsm_aad(b"ab", &METADATA_V1), vec![0, 2, b'a', b'b', 1, 1]);
        // Moving bytes between aad and meta changes the encoding.
        assert_ne!(hsm_aad(b"a", b"b"), hsm_aad(b"", b"ab"));
    }
}
