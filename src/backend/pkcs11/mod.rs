//! Backend over any vendor PKCS#11 library, through the `cryptoki` crate.
//!
//! - `open.rs`: `Pkcs11Backend::open` (library, token, login).
//! - `calls.rs`: session checkout, login, and the fault handling below.
//! - `library.rs`: process-wide registry of loaded libraries and the C_Initialize/C_Finalize
//!   ownership rule (never finalize what we did not initialise).
//! - `pool.rs`: the bounded pool of R/W sessions each call checks out.
//! - `attributes.rs`: reading `KeyInfo`, the templates we write.
//! - `quirks.rs`: vendor return-code normalisation, in one documented table.
//! - `errors.rs`: cryptoki errors back to raw `CK_RV`s.
//! - `handles.rs`: stable `BackendKey`s when the token renumbers object handles.
//! - `raw.rs`: the library's own single-part GCM calls (one `C_Encrypt`/`C_Decrypt` per
//!   operation instead of cryptoki's length query + call); the backend's only `unsafe`.
//! - `outage.rs`: a token that stops answering: out of service (`CKR_DEVICE_ERROR`, never "no
//!   such key"), and back without a restart.
//!
//! Fault handling: a call failing with a session-level fault (`CKR_SESSION_HANDLE_INVALID`,
//! `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`, `CKR_DEVICE_ERROR`) discards its session
//! (and the idle ones, which are likely dead too), opens a fresh one, logs in again and retries
//! once. A second failure, or a token that is gone, is `CKR_DEVICE_ERROR` at once. A handle
//! error on a session that turns out not to be logged in counts as `CKR_USER_NOT_LOGGED_IN`
//! (SoftHSM2 hides private objects then instead of saying so), and a key whose handle was
//! renumbered by a re-login is found again by `CKA_ID`/`CKA_LABEL` (see `handles.rs`).

mod attributes;
mod calls;
mod companion;
mod errors;
mod find;
mod handles;
mod iv_batch;
mod iv_mode;
mod library;
mod open;
mod outage;
mod pool;
mod quirks;
mod raw;

use crate::backend::{
    Backend, BackendKey, KeyChanges, KeyInfo, MechanismInfo, NewKey, TokenDescription,
};
use crate::config::Secret;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use calls::{token_rv, Retry};
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use parking_lot::Mutex;
use pool::Pool;
use quirks::Quirks;
use zeroize::Zeroizing;

/// GCM tag length the module always uses.
const GCM_TAG_BITS: u64 = 128;

/// One token behind a vendor PKCS#11 library.
pub struct Pkcs11Backend {
    name: String,
    /// The token's slot; found again by `token_label` when the token comes back.
    slot: Mutex<Slot>,
    /// `token_label` from the config, to find the token again (`None`: configured by slot id).
    token_label: Option<String>,
    /// Whether the token is usable, and the recovery schedule when not (`outage.rs`).
    outage: outage::Outage,
    /// The library's re-initialisation count ([`library::Lease::generation`]) ...
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// ... and the count our sessions and handles belong to.
    seen_generation: std::sync::atomic::AtomicU64,
    /// The token's user PIN, kept (zeroized on drop) to log in again after a token reset.
    pin: Option<Secret>,
    pool: Pool,
    quirks: Quirks,
    keys: handles::KeyDirectory,
    /// Our share of the loaded library; `None` once shut down.
    lease: Mutex<Option<library::Lease>>,
    /// The shared cryptoki context (a cheap `Arc` clone of the lease's).
    ctx: Pkcs11,
    /// The library's own GCM entry points: one `C_Encrypt`/`C_Decrypt` per operation instead
    /// of cryptoki's length query + call. `None`: cryptoki's calls are used.
    gcm: Option<raw::GcmCalls>,
    /// The library's own `C_GetAttributeValue`, for one-call key reads in finds (`find.rs`).
    /// `None`: cryptoki's reads are used.
    attribute_calls: Option<find::AttributeCalls>,
    /// How the HSM takes GCM encryption IVs (`gcm_iv`, see `iv_mode.rs`).
    iv_mode: iv_mode::IvModeState,
    /// `caller` mode: generated IVs from the HSM's RNG, in batches.
    iv_batch: iv_batch::IvBatch,
}

impl Pkcs11Backend {
    /// Whether this backend's process initialised the library itself (so the last backend on
    /// it finalizes it at shutdown), as opposed to sharing the host's initialisation.
    pub fn owns_library_initialisation(&self) -> bool {
        self.lease
            .lock()
            .as_ref()
            .is_some_and(|l| l.owns_initialisation())
    }

    /// The slot id of the token this backend uses.
    pub fn slot_id(&self) -> u64 {
        self.slot().id()
    }

    /// The token's slot now.
    fn slot(&self) -> Slot {
        *self.slot.lock()
    }

    fn read_key(&self, session: &Session, handle: ObjectHandle) -> CkResult<KeyInfo> {
        attributes::read_key_info(session, handle, &self.quirks).map(|info| self.keys.record(info))
    }

    fn shutdown_inner(&self) {
        self.pool.close_all();
        if let Some(mut lease) = self.lease.lock().take() {
            lease.release();
        }
    }
}

/// GCM needs a non-empty IV (PKCS#11 `CK_GCM_PARAMS`); SoftHSM2 2.6 would accept an empty
/// one, so it is refused here for every library.
fn check_iv(iv: &[u8]) -> CkResult<()> {
    if iv.is_empty() {
        return Err(Rv::MECHANISM_PARAM_INVALID);
    }
    Ok(())
}

impl Pkcs11Backend {
    /// An encryption with a caller's IV: refused at once in a mode where the HSM generates
    /// IVs; a refusal from the HSM may teach `auto` that it does (Luna in FIPS mode).
    fn caller_iv_encryption<T>(&self, run: impl FnOnce() -> CkResult<T>) -> CkResult<T> {
        if !self.iv_mode.accepts_caller_iv() {
            return Err(Rv::MECHANISM_PARAM_INVALID);
        }
        run().inspect_err(|rv| {
            self.iv_mode.learn_from_caller_iv_refusal(&self.name, *rv);
        })
    }
}

/// The raw-call description of one GCM operation on `session` with key `handle`.
fn gcm_op<'a>(
    session: &Session,
    handle: ObjectHandle,
    iv: &'a [u8],
    aad: &'a [u8],
) -> raw::Gcm<'a> {
    raw::Gcm {
        session: session.handle(),
        key: handle.handle(),
        iv,
        aad,
        tag_bits: GCM_TAG_BITS,
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> CkResult<TokenDescription> {
        let _guard = self.reading()?;
        let info = self
            .ctx
            .get_token_info(self.slot())
            .map_err(|e| token_rv(&e))?;
        let hw = info.hardware_version();
        let fw = info.firmware_version();
        Ok(TokenDescription {
            manufacturer: info.manufacturer_id().trim().to_string(),
            model: info.model().trim().to_string(),
            serial: info.serial_number().trim().to_string(),
            hardware_version: (hw.major(), hw.minor()),
            firmware_version: (fw.major(), fw.minor()),
        })
    }

    fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo> {
        let mech = MechanismType::try_from(mechanism).map_err(|_| Rv::MECHANISM_INVALID)?;
        // cryptoki hands C_GetMechanismInfo a zeroed CK_MECHANISM_INFO, so libraries that OR
        // flags into the caller's buffer (SoftHSM2) report exactly their own flags.
        let _guard = self.reading()?;
        let info = self
            .ctx
            .get_mechanism_info(self.slot(), mech)
            .map_err(|e| token_rv(&e))?;
        Ok(MechanismInfo {
            min_key_size: info.min_key_size() as u64,
            max_key_size: info.max_key_size() as u64,
            flags: mechanism_flags(&info),
        })
    }

    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        let _guard = self.reading()?;
        let keys = self.call(Retry::Always, |s| {
            let handles = s
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .map_err(|e| errors::rv_of(&e))?;
            let mut keys = Vec::with_capacity(handles.len());
            for handle in handles {
                match self.read_key(s, handle) {
                    Ok(info) => keys.push(info),
                    // Destroyed between FindObjects and now: it is simply not there any more.
                    Err(Rv::OBJECT_HANDLE_INVALID | Rv::KEY_HANDLE_INVALID) => {}
                    Err(rv) => return Err(rv),
                }
            }
            Ok(keys)
        })?;
        // An empty listing, or one missing keys we know, counts only if the token itself
        // still answers (SoftHSM2 lists nothing when its token directory is gone).
        if keys.is_empty() || keys.len() < self.keys.known_count() {
            self.confirm_token(&format!("the listing found {} keys", keys.len()))?;
        }
        Ok(keys)
    }

    fn find_secret_keys(&self, query: &crate::backend::KeyQuery) -> CkResult<Vec<KeyInfo>> {
        let keys = self.find_keys(query)?;
        // "No such key" counts only if the token itself still answers, as for the listing
        // (SoftHSM2 finds nothing when its token directory is gone or descriptors ran out).
        if keys.is_empty() {
            self.confirm_token("a find by label or ID found nothing")?;
        }
        Ok(keys)
    }

    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
        let _guard = self.reading()?;
        let info = self.call_key(key, Retry::Always, |s, h| self.read_key(s, h));
        match info {
            // Reported under the key the module asked about, even if the handle changed.
            Ok(info) => Ok(KeyInfo {
                handle: key,
                ..info
            }),
            Err(Rv::OBJECT_HANDLE_INVALID) => Err(Rv::KEY_HANDLE_INVALID),
            Err(rv) => Err(rv),
        }
    }

    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
        let _guard = self.writing()?;
        let template = attributes::generate_template(spec);
        // Generation and the read-back are separate calls so that a fault during the read
        // retries only the read, never the generation (no duplicate keys).
        let handle = self.call(Retry::IfNotRun, |s| {
            s.generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| errors::rv_of(&e))
        })?;
        self.call(Retry::Always, |s| self.read_key(s, handle))
    }

    fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()> {
        let _guard = self.writing()?;
        let template = attributes::change_template(changes, &self.quirks)?;
        if template.is_empty() {
            return Ok(());
        }
        self.call_key(key, Retry::Always, |s, h| {
            s.update_attributes(h, &template)
                .map_err(|e| errors::rv_of(&e))
        })?;
        if let Some(label) = &changes.label {
            self.keys.relabel(key, label);
        }
        Ok(())
    }

    fn key_state(&self, key: BackendKey) -> CkResult<Option<Vec<u8>>> {
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, h| {
            let id = self.read_key(s, h)?.id;
            companion::read(s, &id)
        })
    }

    fn set_key_state(&self, key: BackendKey, record: &[u8]) -> CkResult<()> {
        let _guard = self.writing()?;
        // Find-or-update, then create: repeating it after an unknown outcome is harmless.
        self.call_key(key, Retry::Always, |s, h| {
            let id = self.read_key(s, h)?.id;
            companion::write(s, &id, record)
        })
    }

    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        let _guard = self.writing()?;
        let id = self.call_key(key, Retry::IfNotRun, |s, h| {
            let id = self.read_key(s, h)?.id;
            s.destroy_object(h).map_err(|e| errors::rv_of(&e))?;
            Ok(id)
        })?;
        self.keys.forget(key);
        // The key is gone; its state record goes after it. A crash in between leaves an
        // orphan record no key refers to (harmless: nothing reads it).
        crate::keystate::crash_point(1);
        if let Err(rv) = self.call(Retry::Always, |s| companion::remove(s, &id)) {
            log::warn!(
                "backend {}: key destroyed, its key-state object not ({rv}); it is inert",
                self.name
            );
        }
        Ok(())
    }

    fn gcm_encrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<Vec<u8>> {
        if self.gcm.is_some() {
            return crate::backend::encrypt_owned(plaintext.len(), |out| {
                self.gcm_encrypt_into(key, iv, aad, plaintext, out)
            });
        }
        check_iv(iv)?;
        let _guard = self.reading()?;
        self.caller_iv_encryption(|| {
            self.call_key(key, Retry::Always, |s, handle| {
                // Without the library's raw table: through cryptoki. GcmParams wants a mutable IV (PKCS#11 may write generated IVs back); ours is
                // caller-supplied, so hand it a copy.
                let mut iv = iv.to_vec();
                let params = GcmParams::new(&mut iv, aad, Ulong::from(GCM_TAG_BITS))
                    .map_err(|e| errors::rv_of(&e))?;
                s.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                    .map_err(|e| self.quirks.gcm_encrypt_error(&e))
            })
        })
    }

    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> CkResult<SecretBytes> {
        if self.gcm.is_some() {
            return crate::backend::decrypt_owned(ciphertext_and_tag.len(), |out| {
                self.gcm_decrypt_into(key, iv, aad, ciphertext_and_tag, out)
            });
        }
        check_iv(iv)?;
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, handle| {
            // Without the library's raw table: through cryptoki.
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, Ulong::from(GCM_TAG_BITS))
                .map_err(|e| errors::rv_of(&e))?;
            s.decrypt(&Mechanism::AesGcm(params), handle, ciphertext_and_tag)
                .map(SecretBytes::new)
                .map_err(|e| self.quirks.gcm_decrypt_error(&e))
        })
    }

    fn gcm_encrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let Some(gcm) = &self.gcm else {
            return crate::backend::copy_out(&self.gcm_encrypt(key, iv, aad, plaintext)?, out);
        };
        check_iv(iv)?;
        let _guard = self.reading()?;
        self.caller_iv_encryption(|| {
            self.call_key(key, Retry::Always, |s, handle| {
                gcm.encrypt_into(&gcm_op(s, handle, iv, aad), plaintext, out)
                    .map_err(|e| self.quirks.gcm_encrypt_error(&e))
            })
        })
    }

    fn gcm_decrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let Some(gcm) = &self.gcm else {
            return crate::backend::copy_out(
                &self.gcm_decrypt(key, iv, aad, ciphertext_and_tag)?,
                out,
            );
        };
        check_iv(iv)?;
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, handle| {
            gcm.decrypt_into(&gcm_op(s, handle, iv, aad), ciphertext_and_tag, out)
                .map_err(|e| self.quirks.gcm_decrypt_error(&e))
        })
    }

    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        let _guard = self.reading()?;
        // The closure may run twice, so it fills a scratch buffer copied out on success.
        let filled = self.call(Retry::Always, |s| {
            let mut buf = Zeroizing::new(vec![0u8; out.len()]);
            s.generate_random_slice(&mut buf)
                .map_err(|e| errors::rv_of(&e))?;
            Ok(buf)
        })?;
        out.copy_from_slice(&filled);
        Ok(())
    }

    fn accepts_caller_iv(&self) -> bool {
        self.iv_mode.accepts_caller_iv()
    }

    fn gcm_encrypt_generated_iv(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<crate::backend::GeneratedIvEncryption> {
        self.encrypt_generated_iv(key, aad, plaintext)
    }

    fn shutdown(&self) {
        self.shutdown_inner();
    }

    fn member_status(&self) -> Vec<crate::backend::replicas::health::MemberStatus> {
        vec![self.health()]
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// The `CKF_*` flags of a mechanism, rebuilt from cryptoki's accessors (it keeps the raw
/// value private). Covers every flag PKCS#11 3.0 defines for mechanisms we use.
fn mechanism_flags(info: &cryptoki::mechanism::MechanismInfo) -> u64 {
    use pkcs11_sys::*;
    let pairs = [
        (info.hardware(), CKF_HW),
        (info.encrypt(), CKF_ENCRYPT),
        (info.decrypt(), CKF_DECRYPT),
        (info.digest(), CKF_DIGEST),
        (info.sign(), CKF_SIGN),
        (info.sign_recover(), CKF_SIGN_RECOVER),
        (info.verify(), CKF_VERIFY),
        (info.verify_recover(), CKF_VERIFY_RECOVER),
        (info.generate(), CKF_GENERATE),
        (info.generate_key_pair(), CKF_GENERATE_KEY_PAIR),
        (info.wrap(), CKF_WRAP),
        (info.unwrap(), CKF_UNWRAP),
        (info.derive(), CKF_DERIVE),
        (info.extension(), CKF_EXTENSION),
        (info.ec_f_p(), CKF_EC_F_P),
        (info.ec_f_2m(), CKF_EC_F_2M),
        (info.ec_from_parameters(), CKF_EC_ECPARAMETERS),
        (info.ec_from_oid(), CKF_EC_OID),
        (info.ec_uncompressed(), CKF_EC_UNCOMPRESS),
        (info.ec_compressed(), CKF_EC_COMPRESS),
    ];
    pairs
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |acc, (_, flag)| acc | flag)
}
