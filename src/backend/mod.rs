//! The backend seam: the small set of HSM verbs the module needs.
//!
//! A backend is one real token: a vendor PKCS#11 library (`pkcs11.rs`, SoftHSM2 in tests) or the
//! built-in software token (`embedded.rs`). The module core talks only to this trait, so the
//! never-export rule, handles, sessions and audit are written once, above every backend.
//!
//! Contract for implementers:
//! - Methods are called concurrently from many threads; a backend serialises nothing it does
//!   not have to (each call takes its own backend session from a pool).
//! - The backend logs in to its token itself with its configured credentials and re-logs-in /
//!   re-opens sessions when the token forgets them; callers never see backend sessions.
//! - Errors come back as a *normalised* [`Rv`]: vendor quirks are mapped in the backend
//!   (e.g. a failed GCM tag check is always `CKR_ENCRYPTED_DATA_INVALID`).
//! - No method ever returns key material. There is deliberately no verb that could.

use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;

pub mod embedded;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod pkcs11;
mod query;
pub mod replicas;

pub use query::KeyQuery;

/// A backend's own reference to a key object (a PKCS#11 object handle, or the embedded
/// token's record number). Opaque to the module; it never crosses the C boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey(pub u64);

/// The public attributes of one secret-key object, as the backend reports them.
///
/// `None` means the backend did not report the attribute. The policy layer decides from these
/// whether the key may be visible at all (see `policy.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The backend's reference to the object.
    pub handle: BackendKey,
    /// `CKA_ID` (may be empty).
    pub id: Vec<u8>,
    /// `CKA_LABEL` (may be empty).
    pub label: Vec<u8>,
    /// `CKA_KEY_TYPE` (e.g. `CKK_AES`).
    pub key_type: u64,
    /// `CKA_VALUE_LEN` in bytes.
    pub value_len: u64,
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`, where reported.
    pub always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`, where reported.
    pub never_extractable: Option<bool>,
    /// `CKA_LOCAL`, where reported.
    pub local: Option<bool>,
    /// `CKA_MODIFIABLE`.
    pub modifiable: bool,
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
    /// `CKA_WRAP`.
    pub wrap: bool,
    /// `CKA_UNWRAP`.
    pub unwrap: bool,
    /// `CKA_SIGN`.
    pub sign: bool,
    /// `CKA_VERIFY`.
    pub verify: bool,
    /// `CKA_DERIVE`.
    pub derive: bool,
    /// `CKA_START_DATE` as the 8 ASCII digits `YYYYMMDD`, or empty.
    pub start_date: Vec<u8>,
    /// `CKA_END_DATE` as the 8 ASCII digits `YYYYMMDD`, or empty. The proxy stores a key's
    /// scheduled deletion date here, so that state lives in the HSM.
    pub end_date: Vec<u8>,
}

impl KeyInfo {
    /// The identity of the key within its slot: its `CKA_ID`, or its label when it has no ID
    /// (tagged, so an ID never equals a label). Virtual handles, replica groups' key maps and
    /// duplicate detection all key on it.
    pub fn identity(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.id.len().max(self.label.len()) + 1);
        if self.id.is_empty() {
            out.push(b'l');
            out.extend_from_slice(&self.label);
        } else {
            out.push(b'i');
            out.extend_from_slice(&self.id);
        }
        out
    }

    /// A key as a token generates it for this module: a local AES token key of `value_len`
    /// bytes that is private, sensitive, always sensitive, never extractable, modifiable, and
    /// only encrypts and decrypts, with no dates. Backends and tests adjust fields from here.
    pub fn generated_aes(
        handle: BackendKey,
        id: Vec<u8>,
        label: Vec<u8>,
        value_len: u64,
    ) -> KeyInfo {
        KeyInfo {
            handle,
            id,
            label,
            key_type: pkcs11_sys::CKK_AES,
            value_len,
            token: true,
            private: true,
            sensitive: true,
            extractable: false,
            always_sensitive: Some(true),
            never_extractable: Some(true),
            local: Some(true),
            modifiable: true,
            encrypt: true,
            decrypt: true,
            wrap: false,
            unwrap: false,
            sign: false,
            verify: false,
            derive: false,
            start_date: Vec::new(),
            end_date: Vec::new(),
        }
    }
}

/// What to generate: always an AES key of `value_len` bytes that is token, private, sensitive
/// and not extractable. The backend must set exactly these attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    /// `CKA_ID` to give the key (the module always supplies a non-empty one).
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: Vec<u8>,
    /// Key length in bytes (32 for AES-256).
    pub value_len: u64,
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
}

/// A change to the few attributes the module lets callers set. `None` leaves it unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// New `CKA_LABEL`.
    pub label: Option<Vec<u8>>,
    /// New `CKA_ENCRYPT`.
    pub encrypt: Option<bool>,
    /// New `CKA_DECRYPT`.
    pub decrypt: Option<bool>,
    /// New `CKA_START_DATE` (8 ASCII digits or empty).
    pub start_date: Option<Vec<u8>>,
    /// New `CKA_END_DATE` (8 ASCII digits or empty).
    pub end_date: Option<Vec<u8>>,
}

/// Descriptive facts about the token behind a backend, for CK_TOKEN_INFO / health reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenDescription {
    /// Token manufacturer (`manufacturerID`).
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// Token serial number.
    pub serial: String,
    /// Hardware version (major, minor).
    pub hardware_version: (u8, u8),
    /// Firmware version (major, minor).
    pub firmware_version: (u8, u8),
}

/// Key-size range and flags of one mechanism as the backend really supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechanismInfo {
    /// Minimum key size (bytes for AES, as PKCS#11 reports for AES).
    pub min_key_size: u64,
    /// Maximum key size.
    pub max_key_size: u64,
    /// `CKF_*` flags.
    pub flags: u64,
}

/// Why a backend could not be opened. Every backend has
/// `pub fn open(name: &str, cfg: &crate::config::BackendConfig, pin: Option<crate::config::Secret>)
/// -> Result<Self, OpenError>`; the module turns the error into a config error that names the
/// file and `backend.NAME.<key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenError {
    /// The key of `[backend.NAME]` at fault (`module`, `token_label`, `pin_file`, `store`, ...).
    pub key: &'static str,
    /// The closest PKCS#11 code (e.g. `CKR_PIN_INCORRECT` for a wrong PIN).
    pub rv: Rv,
    /// What is wrong, for the log. Never contains a PIN or key bytes.
    pub problem: String,
}

/// The owned form of a `*_into` encryption: `into` writes into a buffer with room for
/// `plaintext_len` bytes and the tag; the result is cut to what it wrote. For backends whose
/// `gcm_encrypt` is their `gcm_encrypt_into`.
pub fn encrypt_owned(
    plaintext_len: usize,
    into: impl FnOnce(&mut [u8]) -> CkResult<usize>,
) -> CkResult<Vec<u8>> {
    let mut out = vec![0; plaintext_len + crate::mechanism::GCM_TAG_LEN];
    let n = into(&mut out)?;
    out.truncate(n);
    Ok(out)
}

/// The owned form of a `*_into` decryption: room for the whole input (what `gcm_decrypt_into`
/// promises), cut to the plaintext; wiped when dropped, also on failure.
pub fn decrypt_owned(
    input_len: usize,
    into: impl FnOnce(&mut [u8]) -> CkResult<usize>,
) -> CkResult<SecretBytes> {
    let mut out = SecretBytes::new(vec![0; input_len]);
    let n = into(&mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Copy a backend's output into the caller's `out`: the default of the `*_into` calls.
/// Output longer than `out` breaks the sizes those calls promise: `CKR_GENERAL_ERROR`.
pub fn copy_out(data: &[u8], out: &mut [u8]) -> CkResult<usize> {
    out.get_mut(..data.len())
        .ok_or(Rv::GENERAL_ERROR)?
        .copy_from_slice(data);
    Ok(data.len())
}

/// Length of the GCM IVs generated for the module's callers: 96 bits, the length NIST SP
/// 800-38D §8.2.2 recommends for random IVs.
pub const GENERATED_IV_LEN: usize = 12;

/// An AES-GCM encryption under an IV generated inside the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedIvEncryption {
    /// The IV the token used (12 bytes; 16 from a Luna that appends 128-bit IVs).
    pub iv: crate::mechanism::Iv,
    /// `ciphertext || tag`.
    pub ciphertext_and_tag: Vec<u8>,
}

/// The default of [`Backend::gcm_encrypt_generated_iv`]: an IV from the token's own random
/// number generator, then an encryption with it as the caller's IV.
pub fn encrypt_with_random_iv(
    backend: &(impl Backend + ?Sized),
    key: BackendKey,
    aad: &[u8],
    plaintext: &[u8],
) -> CkResult<GeneratedIvEncryption> {
    let mut iv = crate::mechanism::Iv::from_elem(0, GENERATED_IV_LEN);
    backend.generate_random(&mut iv)?;
    let ciphertext_and_tag = backend.gcm_encrypt(key, &iv, aad, plaintext)?;
    Ok(GeneratedIvEncryption {
        iv,
        ciphertext_and_tag,
    })
}

/// One real token. See the module docs for the contract.
pub trait Backend: Send + Sync {
    /// The backend's name from the config (`[backend.NAME]`), for logs and health.
    fn name(&self) -> &str;

    /// Facts about the token (manufacturer, model, serial, versions).
    fn describe(&self) -> CkResult<TokenDescription>;

    /// Mechanism info exactly as this backend supports `mechanism` (a `CKM_*` value);
    /// `CKR_MECHANISM_INVALID` if it does not. Flags are returned outright, never OR-ed.
    fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo>;

    /// Every secret-key object on the token, with its public attributes.
    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>>;

    /// The secret keys matching `query`, read fresh from the token like
    /// [`Self::list_secret_keys`] (existence, label, usage flags are never cached). A backend
    /// that can search by attribute reads only the matching keys; the default filters a full
    /// listing.
    fn find_secret_keys(&self, query: &KeyQuery) -> CkResult<Vec<KeyInfo>> {
        let mut keys = self.list_secret_keys()?;
        keys.retain(|k| query.matches(k));
        Ok(keys)
    }

    /// Fresh public attributes of one key (the key state lives in the token, not in a cache).
    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo>;

    /// Generate an AES key inside the token as `spec` says (token, private, sensitive,
    /// non-extractable) and report the created object.
    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo>;

    /// Change public attributes of a key.
    fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()>;

    /// Destroy a key object. Irreversible; the module decides whether it is allowed.
    fn destroy_key(&self, key: BackendKey) -> CkResult<()>;

    /// The key's state record (`crate::keystate`: bytes the module alone encodes), stored
    /// beside the key on the token; `None` when the key has none. Called by admin paths only
    /// (never on the Encrypt/Decrypt path).
    fn key_state(&self, key: BackendKey) -> CkResult<Option<Vec<u8>>> {
        let _ = key;
        Err(Rv::FUNCTION_NOT_SUPPORTED)
    }

    /// Store (create or replace) the key's state record. `destroy_key` removes it with the key.
    fn set_key_state(&self, key: BackendKey, record: &[u8]) -> CkResult<()> {
        let _ = (key, record);
        Err(Rv::FUNCTION_NOT_SUPPORTED)
    }

    /// AES-GCM encrypt with a 128-bit tag. Returns `ciphertext || tag` (plaintext length + 16).
    fn gcm_encrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<Vec<u8>>;

    /// AES-GCM decrypt of `ciphertext || tag` with a 128-bit tag. A failed authentication is
    /// `CKR_ENCRYPTED_DATA_INVALID`, whatever the vendor says; no plaintext is returned then.
    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> CkResult<SecretBytes>;

    /// [`Backend::gcm_encrypt`] into `out`, which holds at least `plaintext.len() + 16`
    /// bytes; returns how many were written. Backends that can write there directly override
    /// this (no intermediate buffer, no copy); the default encrypts and copies.
    fn gcm_encrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        copy_out(&self.gcm_encrypt(key, iv, aad, plaintext)?, out)
    }

    /// [`Backend::gcm_decrypt`] into `out`, which holds at least `ciphertext_and_tag.len()`
    /// bytes (the room some libraries want before they check the tag); returns the plaintext
    /// length. On error `out` may hold whatever was written before the failure: the caller
    /// wipes it. The default decrypts and copies.
    fn gcm_decrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        copy_out(&self.gcm_decrypt(key, iv, aad, ciphertext_and_tag)?, out)
    }

    /// Fill `out` from the token's random number generator.
    fn generate_random(&self, out: &mut [u8]) -> CkResult<()>;

    /// Whether the token takes a caller's IV for AES-GCM encryption. `false` for HSMs that
    /// generate every encryption IV themselves (FIPS-mode CloudHSM, nShield, Luna): there
    /// only [`Backend::gcm_encrypt_generated_iv`] encrypts. Decryption always takes one.
    fn accepts_caller_iv(&self) -> bool {
        true
    }

    /// AES-GCM encrypt (128-bit tag) under a fresh IV generated inside the token, however that
    /// token does it (its own IV generation, or its random number generator); returns the IV
    /// used with the output. Each call generates a new IV, also when it is retried.
    fn gcm_encrypt_generated_iv(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        encrypt_with_random_iv(self, key, aad, plaintext)
    }

    /// Whether this backend's reads and crypto (`describe`, `mechanism_info`, listing,
    /// `key_info`, `key_state`, the `gcm_*` verbs, `generate_random`) run only this process's
    /// own code and local-file reads: no network peer, no device, no lock another process can
    /// hold. A replica group then runs those calls on the caller's thread instead of handing
    /// them to a worker it could abandon (see `replicas::member`), unless the backend's config
    /// says otherwise (`inline_calls`). Default `false`: vendor libraries can hang.
    fn reads_cannot_hang(&self) -> bool {
        false
    }

    /// Release backend sessions and, if this backend initialised the library itself,
    /// finalize it. Called once from `C_Finalize`; the backend is not used afterwards.
    fn shutdown(&self);

    /// Health of the tokens behind this backend, for the `XKI Status` interface. A single
    /// token reports itself as one member (this default: always active; a vendor token
    /// reports UNAVAILABLE while out of service); a replica group reports each member.
    fn member_status(&self) -> Vec<replicas::health::MemberStatus> {
        vec![replicas::health::MemberStatus {
            name: self.name().to_string(),
            state: replicas::health::MemberState::Active,
            in_flight: 0,
            stuck_calls: 0,
            key_mismatches: 0,
            last_error: 0,
            last_error_text: String::new(),
            failures: 0,
        }]
    }
}

/// Open the backend `name` as configured, as a shareable trait object.
pub fn open(
    name: &str,
    cfg: &crate::config::BackendConfig,
    pin: Option<crate::config::Secret>,
) -> Result<std::sync::Arc<dyn Backend>, OpenError> {
    use crate::config::BackendKind;
    Ok(match cfg.kind {
        BackendKind::Pkcs11 => std::sync::Arc::new(pkcs11::Pkcs11Backend::open(name, cfg, pin)?),
        BackendKind::Embedded => {
            std::sync::Arc::new(embedded::EmbeddedBackend::open(name, cfg, pin)?)
        }
    })
}
