//! AES-GCM with initialised ciphers cached per key, for 12- and 16-byte IVs.
//!
//! A 12-byte IV is used as GCM's fast path (J0 = IV || 0^31 || 1). Any other length — here
//! 16 bytes — is GHASHed into J0 exactly as NIST SP 800-38D and PKCS#11 `CKM_AES_GCM`
//! specify; `aes_gcm::AesGcm<_, U16>` does that, and a test checks it against SoftHSM2.
//! Tags are always 128 bits. The round keys and GHASH key are wiped on drop (the `zeroize`
//! features of `aes`/`polyval` are enabled in Cargo.toml).

use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit};
use aes_gcm::aes::{Aes128, Aes192, Aes256};
use aes_gcm::AesGcm;
use zeroize::Zeroize;

const TAG_LEN: usize = 16;

/// Both IV variants of one key, initialised once.
struct Pair<A> {
    n12: AesGcm<A, U12>,
    n16: AesGcm<A, U16>,
}

// Variant sizes differ (AES-128 vs AES-256 key schedules), but `GcmKey` boxes the whole enum.
#[allow(clippy::large_enum_variant)]
enum Inner {
    A128(Pair<Aes128>),
    A192(Pair<Aes192>),
    A256(Pair<Aes256>),
}

/// Call `$f(cipher, args...)` with the cipher of `$key` for the IV's length (12 or 16 bytes;
/// any other is `CKR_MECHANISM_PARAM_INVALID`). A macro because each key size and IV length
/// is its own cipher type.
macro_rules! with_cipher {
    ($key:expr, $iv:expr, $f:ident($($arg:expr),*)) => {{
        macro_rules! by_iv {
            ($p:expr) => {
                match $iv.len() {
                    12 => $f(&$p.n12, $($arg),*),
                    16 => $f(&$p.n16, $($arg),*),
                    _ => Err(Rv::MECHANISM_PARAM_INVALID),
                }
            };
        }
        match &*$key.inner {
            Inner::A128(p) => by_iv!(p),
            Inner::A192(p) => by_iv!(p),
            Inner::A256(p) => by_iv!(p),
        }
    }};
}

/// The ready-to-use ciphers for one AES key.
pub struct GcmKey {
    inner: Box<Inner>,
}

impl GcmKey {
    /// Key lengths (bytes) this token supports.
    pub const KEY_LENS: [usize; 3] = [16, 24, 32];

    /// Initialise ciphers for `value`; `None` if it is not 16, 24 or 32 bytes.
    pub fn new(value: &[u8]) -> Option<GcmKey> {
        fn pair<A>(value: &[u8]) -> Option<Pair<A>>
        where
            AesGcm<A, U12>: KeyInit,
            AesGcm<A, U16>: KeyInit,
        {
            Some(Pair {
                n12: AesGcm::<A, U12>::new_from_slice(value).ok()?,
                n16: AesGcm::<A, U16>::new_from_slice(value).ok()?,
            })
        }
        let inner = match value.len() {
            16 => Inner::A128(pair(value)?),
            24 => Inner::A192(pair(value)?),
            32 => Inner::A256(pair(value)?),
            _ => return None,
        };
        Some(GcmKey {
            inner: Box::new(inner),
        })
    }

    /// Encrypt; returns `ciphertext || tag`. An IV other than 12 or 16 bytes is
    /// `CKR_MECHANISM_PARAM_INVALID`.
    pub fn encrypt(&self, iv: &[u8], aad: &[u8], plaintext: &[u8]) -> CkResult<Vec<u8>> {
        let mut out = vec![0; plaintext.len() + TAG_LEN];
        self.encrypt_into(iv, aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypt `ciphertext || tag`. A failed tag check is `CKR_ENCRYPTED_DATA_INVALID`; input
    /// shorter than a tag is `CKR_ENCRYPTED_DATA_LEN_RANGE`.
    pub fn decrypt(&self, iv: &[u8], aad: &[u8], data: &[u8]) -> CkResult<SecretBytes> {
        let mut out = SecretBytes::new(vec![0; data.len()]);
        let n = self.decrypt_into(iv, aad, data, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// [`GcmKey::encrypt`] into `out` (at least `plaintext.len() + 16` bytes, else
    /// `CKR_GENERAL_ERROR`); returns the bytes written. Encrypts in place there: no other
    /// buffer holds the plaintext.
    pub fn encrypt_into(
        &self,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        with_cipher!(self, iv, seal(iv, aad, plaintext, out))
    }

    /// [`GcmKey::decrypt`] into `out` (at least `data.len() - 16` bytes, else
    /// `CKR_GENERAL_ERROR`); returns the plaintext length. On a failed tag check `out` holds
    /// ciphertext only (the tag is checked before anything is decrypted).
    pub fn decrypt_into(
        &self,
        iv: &[u8],
        aad: &[u8],
        data: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        with_cipher!(self, iv, open(iv, aad, data, out))
    }
}

fn seal<C: AeadInPlace>(
    c: &C,
    iv: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut [u8],
) -> CkResult<usize> {
    let nonce = GenericArray::<u8, <C as AeadCore>::NonceSize>::from_slice(iv);
    let n = plaintext.len();
    let out = out.get_mut(..n + TAG_LEN).ok_or(Rv::GENERAL_ERROR)?;
    let (body, tag_out) = out.split_at_mut(n);
    body.copy_from_slice(plaintext);
    match c.encrypt_in_place_detached(nonce, aad, body) {
        Ok(tag) => {
            tag_out.copy_from_slice(&tag);
            Ok(n + TAG_LEN)
        }
        Err(_) => {
            // `body` still holds plaintext: never leave it behind in the caller's buffer.
            Zeroize::zeroize(body);
            Err(Rv::DATA_LEN_RANGE)
        }
    }
}

fn open<C: AeadInPlace>(
    c: &C,
    iv: &[u8],
    aad: &[u8],
    data: &[u8],
    out: &mut [u8],
) -> CkResult<usize> {
    if data.len() < TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    let nonce = GenericArray::<u8, <C as AeadCore>::NonceSize>::from_slice(iv);
    let (ct, tag) = data.split_at(data.len() - TAG_LEN);
    let body = out.get_mut(..ct.len()).ok_or(Rv::GENERAL_ERROR)?;
    body.copy_from_slice(ct);
    // aes-gcm checks the tag before decrypting, so on failure `body` is still ciphertext.
    c.decrypt_in_place_detached(nonce, aad, body, GenericArray::from_slice(tag))
        .map_err(|_| Rv::ENCRYPTED_DATA_INVALID)?;
    Ok(ct.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::config::decode_hex(s).unwrap()
    }

    /// NIST GCM test vector (McGrew & Viega, test case 15: AES-256, 12-byte IV, no AAD) and
    /// test case 18 (AES-256, 60-byte IV, with AAD) checked on the 12-byte path.
    #[test]
    fn nist_vector_12_byte_iv() {
        let key = unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let iv = unhex("cafebabefacedbaddecaf888");
        let pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        );
        let expect = unhex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad\
             b094dac5d93471bdec1a502270e3cc6c",
        );
        let k = GcmKey::new(&key).unwrap();
        assert_eq!(k.encrypt(&iv, &[], &pt).unwrap(), expect);
        assert_eq!(&k.decrypt(&iv, &[], &expect).unwrap()[..], &pt[..]);
    }

    #[test]
    fn round_trips_and_failures() {
        for len in GcmKey::KEY_LENS {
            let k = GcmKey::new(&vec![3u8; len]).unwrap();
            for iv_len in [12, 16] {
                let iv = vec![9u8; iv_len];
                for aad in [&b""[..], b"context"] {
                    let ct = k.encrypt(&iv, aad, b"hello").unwrap();
                    assert_eq!(ct.len(), 5 + 16);
                    assert_eq!(&k.decrypt(&iv, aad, &ct).unwrap()[..], b"hello");
                    let mut bad = ct.clone();
                    *bad.last_mut().unwrap() ^= 1;
                    assert_eq!(
                        k.decrypt(&iv, aad, &bad).unwrap_err(),
                        Rv::ENCRYPTED_DATA_INVALID
                    );
                    assert_eq!(
                        k.decrypt(&iv, b"other", &ct).unwrap_err(),
                        Rv::ENCRYPTED_DATA_INVALID
                    );
                }
            }
            assert_eq!(
                k.encrypt(&[0; 8], b"", b"x").unwrap_err(),
                Rv::MECHANISM_PARAM_INVALID
            );
            assert_eq!(
                k.decrypt(&[0; 12], b"", &[0; 15]).unwrap_err(),
                Rv::ENCRYPTED_DATA_LEN_RANGE
            );
            // Empty plaintext: the output is just the tag.
            let tag_only = k.encrypt(&[1; 12], b"a", b"").unwrap();
            assert_eq!(tag_only.len(), 16);
            assert!(k.decrypt(&[1; 12], b"a", &tag_only).unwrap().is_empty());
        }
        assert!(GcmKey::new(&[0; 31]).is_none());
    }
}
