//! Mechanisms as the core sees them, already copied out of C memory by the boundary.

use pkcs11_sys::CK_MECHANISM_TYPE;

/// A mechanism with its parameter, parsed by the C boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `CKM_AES_GCM` with a well-formed `CK_GCM_PARAMS` (pointers already followed).
    AesGcm(GcmParams),
    /// `CKM_AES_KEY_GEN` (no parameter).
    AesKeyGen,
    /// Any other mechanism, or `CKM_AES_GCM` whose parameter could not be read as
    /// `CK_GCM_PARAMS` (`param_len` is what the caller passed). The core answers
    /// `CKR_MECHANISM_INVALID` or `CKR_MECHANISM_PARAM_INVALID` as appropriate.
    Other {
        /// The `CKM_*` value.
        kind: CK_MECHANISM_TYPE,
        /// `ulParameterLen` as given.
        param_len: u64,
    },
}

/// An IV, inline (the accepted lengths are 12 and 16 bytes).
pub type Iv = smallvec::SmallVec<[u8; 16]>;

/// AAD, inline up to 64 bytes (what KMS requests carry), on the heap beyond.
pub type Aad = smallvec::SmallVec<[u8; 64]>;

/// The fields of `CK_GCM_PARAMS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcmParams {
    /// `pIv[0..ulIvLen]`.
    pub iv: Iv,
    /// `ulIvBits` (informational; PKCS#11 3.0 says it should equal `ulIvLen * 8`).
    pub iv_bits: u64,
    /// `pAAD[0..ulAADLen]`.
    pub aad: Aad,
    /// `ulTagBits`.
    pub tag_bits: u64,
}

/// IV lengths the module accepts for GCM (bytes).
pub const GCM_IV_LENS: [usize; 2] = [12, 16];
/// The only tag length the module accepts (bits).
pub const GCM_TAG_BITS: u64 = 128;
/// Tag length in bytes.
pub const GCM_TAG_LEN: usize = 16;
/// Largest AAD the module accepts (bytes).
pub const GCM_MAX_AAD: usize = 64 * 1024;

/// The fields of one `CK_GCM_MESSAGE_PARAMS` (PKCS#11 3.0 message-based AES-GCM), copied out of
/// C memory by the boundary. Where the IV and tag go back to is the boundary's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcmMessageParams {
    /// `ivGenerator` (`CKG_*`) as given.
    pub generator: u64,
    /// `pIv[0..ulIvLen]`: the caller's IV (`CKG_NO_GENERATE`, and every decryption); for a
    /// generated IV only its length counts.
    pub iv: Iv,
    /// `ulIvFixedBits`.
    pub iv_fixed_bits: u64,
    /// `ulTagBits`.
    pub tag_bits: u64,
    /// `pTag[0..16]` for a decryption (the tag to verify); zeros for an encryption.
    pub tag: [u8; GCM_TAG_LEN],
}

/// What one message encryption produced, for the boundary to hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEncryption {
    /// The ciphertext (as long as the plaintext).
    pub ciphertext: Vec<u8>,
    /// The IV used, when it was generated (to be written into `pIv`); `None` for
    /// `CKG_NO_GENERATE`.
    pub generated_iv: Option<Iv>,
    /// The tag (to be written into `pTag`).
    pub tag: [u8; GCM_TAG_LEN],
}
