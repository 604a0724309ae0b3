//! Backend over any vendor PKCS#11 library, through the `cryptoki` crate.
//!
//! - `library.rs`: process-wide registry of loaded libraries and the C_Initialize/C_Finalize
//!   ownership rule (never finalize what we did not initialise).
//! - `pool.rs`: the bounded pool of R/W sessions each call checks out.
//! - `attributes.rs`: reading `KeyInfo`, the templates we write.
//! - `quirks.rs`: vendor return-code normalisation, in one documented table.
//! - `errors.rs`: cryptoki errors back to raw `CK_RV`s.
//! - `handles.rs`: stable `BackendKey`s when the token renumbers object handles.
//!
//! Fault handling: a call failing with a session-level fault (`CKR_SESSION_HANDLE_INVALID`,
//! `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`, `CKR_DEVICE_ERROR`) discards its session
//! (and the idle ones, which are likely dead too), opens a fresh one, logs in again and retries
//! once. A second failure, or a token that is gone, is `CKR_DEVICE_ERROR` at once. A handle
//! error on a session that turns out not to be logged in counts as `CKR_USER_NOT_LOGGED_IN`
//! (SoftHSM2 hides private objects then instead of saying so), and a key whose handle was
//! renumbered by a re-login is found again by `CKA_ID`/`CKA_LABEL` (see `handles.rs`).

mod attributes;
mod errors;
mod handles;
mod library;
mod pool;
mod quirks;

use crate::backend::{
    Backend, BackendKey, KeyChanges, KeyInfo, MechanismInfo, NewKey, OpenError, TokenDescription,
};
use crate::config::{BackendConfig, Secret};
use crate::rv::{CkResult, Rv};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{RawAuthPin, Ulong};
use parking_lot::Mutex;
use pool::{Pool, Pooled, Take, Unavailable};
use quirks::Quirks;
use std::time::Duration;
use zeroize::Zeroizing;

/// GCM tag length the module always uses.
const GCM_TAG_BITS: u64 = 128;

/// One token behind a vendor PKCS#11 library.
pub struct Pkcs11Backend {
    name: String,
    slot: Slot,
    /// The token's user PIN, kept (zeroized on drop) to log in again after a token reset.
    pin: Option<Secret>,
    pool: Pool,
    quirks: Quirks,
    keys: handles::KeyDirectory,
    /// Our share of the loaded library; `None` once shut down.
    lease: Mutex<Option<library::Lease>>,
    /// The shared cryptoki context (a cheap `Arc` clone of the lease's).
    ctx: Pkcs11,
}

/// Whether a retry may follow a fault: `Always` for idempotent operations, `IfNotRun` for
/// those (key generation) that may only be retried when the fault proves nothing happened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Always,
    IfNotRun,
}

/// Faults that mean "this session (or its login) is gone": reopen, re-login, retry once.
fn is_session_fault(rv: Rv) -> bool {
    matches!(
        rv,
        Rv::SESSION_HANDLE_INVALID | Rv::SESSION_CLOSED | Rv::USER_NOT_LOGGED_IN | Rv::DEVICE_ERROR
    )
}

/// Faults that prove the operation did not run (the session or login was missing).
fn proves_not_run(rv: Rv) -> bool {
    matches!(
        rv,
        Rv::SESSION_HANDLE_INVALID | Rv::SESSION_CLOSED | Rv::USER_NOT_LOGGED_IN
    )
}

/// The token is gone: no retry helps.
fn is_token_gone(rv: Rv) -> bool {
    matches!(rv, Rv::TOKEN_NOT_PRESENT | Rv::DEVICE_REMOVED)
}

impl Pkcs11Backend {
    /// Load `cfg.module`, initialise it (sharing an initialisation the host already made),
    /// find the token by `token_label` or `slot_id`, and log in as CKU_USER with `pin`.
    /// Errors name the config key at fault and never contain the PIN.
    pub fn open(
        name: &str,
        cfg: &BackendConfig,
        pin: Option<Secret>,
    ) -> Result<Pkcs11Backend, OpenError> {
        let module = cfg.module.as_deref().ok_or_else(|| OpenError {
            key: "module",
            rv: Rv::ARGUMENTS_BAD,
            problem: "missing: path of the vendor PKCS#11 library".into(),
        })?;
        let lease = library::acquire(module).map_err(|e| OpenError {
            key: "module",
            rv: e.rv,
            problem: e.problem,
        })?;
        let ctx = lease.ctx().clone();
        let quirks = match ctx.get_library_info() {
            Ok(info) => Quirks::for_library(info.manufacturer_id()),
            Err(_) => Quirks::default(),
        };
        let slot = find_slot(&ctx, cfg)?;
        let pin_key = if cfg.pin_file.is_none() && cfg.pin_env.is_some() {
            "pin_env"
        } else {
            "pin_file"
        };
        if pin.is_none() {
            // Without a PIN we can only serve a token that needs no login.
            let needs_login = ctx
                .get_token_info(slot)
                .map(|i| i.login_required() && !i.protected_authentication_path())
                .unwrap_or(true);
            if needs_login {
                return Err(OpenError {
                    key: pin_key,
                    rv: Rv::USER_NOT_LOGGED_IN,
                    problem: "the token requires a user PIN: set pin_file or pin_env".into(),
                });
            }
        }
        let wait =
            Duration::from_millis(cfg.timeout_ms.unwrap_or(BackendConfig::DEFAULT_TIMEOUT_MS));
        let max = cfg
            .max_sessions
            .unwrap_or(BackendConfig::DEFAULT_MAX_SESSIONS);
        let backend = Pkcs11Backend {
            name: name.to_string(),
            slot,
            pin,
            pool: Pool::new(max, wait),
            quirks,
            keys: handles::KeyDirectory::default(),
            lease: Mutex::new(Some(lease)),
            ctx,
        };
        // Open the first session now: it proves the token answers and the PIN is right.
        let token_key = if cfg.token_label.is_some() {
            "token_label"
        } else {
            "slot_id"
        };
        let session = match backend.pool.take(true) {
            Ok(Take::Open(reservation)) => {
                let session = backend
                    .ctx
                    .open_rw_session_no_drop(slot)
                    .map_err(|e| OpenError {
                        key: token_key,
                        rv: errors::rv_of(&e),
                        problem: format!("cannot open a session on the token: {e}"),
                    })?;
                reservation.fill(session)
            }
            _ => {
                return Err(OpenError {
                    key: "max_sessions",
                    rv: Rv::GENERAL_ERROR,
                    problem: "no session available".into(),
                })
            }
        };
        if let Err(rv) = backend.login(&session) {
            session.discard();
            let problem = if rv == Rv::PIN_INCORRECT {
                "the token rejected the PIN".to_string()
            } else {
                format!("login failed: {rv}")
            };
            return Err(OpenError {
                key: pin_key,
                rv,
                problem,
            });
        }
        drop(session);
        log::info!(
            "backend {name}: opened {} slot {}",
            module.display(),
            slot.id()
        );
        Ok(backend)
    }

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
        self.slot.id()
    }

    /// Log `session` in as CKU_USER (already logged in is fine: login is per token).
    fn login(&self, session: &Session) -> CkResult<()> {
        let Some(pin) = &self.pin else {
            return Ok(());
        };
        let raw = RawAuthPin::new(Box::new(pin.to_vec()));
        match session.login_with_raw(UserType::User, &raw) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(errors::rv_of(&e)),
        }
    }

    /// A session from the pool: an idle one, or a newly opened and logged-in one. With
    /// `fresh`, never an idle one. Any failure here is `CKR_DEVICE_ERROR` (token unusable).
    fn checkout(&self, fresh: bool) -> CkResult<Pooled<'_>> {
        match self.pool.take(fresh) {
            Ok(Take::Idle(s)) => Ok(s),
            Ok(Take::Open(reservation)) => {
                let session = self.ctx.open_rw_session_no_drop(self.slot).map_err(|e| {
                    log::warn!("backend {}: cannot open a session: {e}", self.name);
                    Rv::DEVICE_ERROR
                })?;
                let session = reservation.fill(session);
                if let Err(rv) = self.login(&session) {
                    log::warn!("backend {}: login failed: {rv}", self.name);
                    session.discard();
                    return Err(Rv::DEVICE_ERROR);
                }
                Ok(session)
            }
            Err(Unavailable::TimedOut) => {
                log::warn!("backend {}: no session became free in time", self.name);
                Err(Rv::DEVICE_ERROR)
            }
            Err(Unavailable::Closed) => Err(Rv::CRYPTOKI_NOT_INITIALIZED),
        }
    }

    /// Run `op` on a checked-out session, with the fault handling described in the module
    /// docs. `op` may run twice, so it must be repeatable.
    fn call<T>(&self, retry: Retry, op: impl Fn(&Session) -> CkResult<T>) -> CkResult<T> {
        let session = self.checkout(false)?;
        let rv = match op(&session) {
            Ok(v) => return Ok(v),
            Err(rv) if handles::is_handle_error(rv) => {
                self.hidden_session_fault(&session).unwrap_or(rv)
            }
            Err(rv) => rv,
        };
        if is_token_gone(rv) {
            session.discard();
            self.pool.drain_idle();
            return Err(Rv::DEVICE_ERROR);
        }
        let retryable = match retry {
            Retry::Always => is_session_fault(rv),
            Retry::IfNotRun => proves_not_run(rv),
        };
        if !retryable {
            // DEVICE_ERROR that we may not retry: the session is still suspect.
            if is_session_fault(rv) {
                session.discard();
            }
            return Err(rv);
        }
        log::info!(
            "backend {}: {rv} on a pooled session; reopening and retrying once",
            self.name
        );
        session.discard();
        self.pool.drain_idle();
        let fresh = self.checkout(true)?;
        match op(&fresh) {
            Err(rv) if is_session_fault(rv) || is_token_gone(rv) => {
                log::warn!("backend {}: {rv} again after reopening", self.name);
                fresh.discard();
                Err(Rv::DEVICE_ERROR)
            }
            result => result,
        }
    }

    /// After a handle error: is the real problem the session (gone, or not logged in)?
    /// Costs one C_GetSessionInfo, on error paths only.
    fn hidden_session_fault(&self, session: &Session) -> Option<Rv> {
        match session.get_session_info() {
            Err(e) => Some(errors::rv_of(&e)).filter(|rv| is_session_fault(*rv)),
            // A recycled handle now naming someone else's session.
            Ok(info) if info.slot_id() != self.slot => Some(Rv::SESSION_HANDLE_INVALID),
            Ok(info) if self.pin.is_some() && info.session_state() != SessionState::RwUser => {
                Some(Rv::USER_NOT_LOGGED_IN)
            }
            Ok(_) => None,
        }
    }

    /// [`Self::call`] for an operation on one key: if its handle no longer names the object
    /// (renumbered by a re-login), find the object again and retry once more.
    fn call_key<T>(
        &self,
        key: BackendKey,
        retry: Retry,
        op: impl Fn(&Session, ObjectHandle) -> CkResult<T>,
    ) -> CkResult<T> {
        match self.call(retry, |s| op(s, self.keys.resolve(key))) {
            Err(rv) if handles::is_handle_error(rv) && self.keys.knows(key) => {
                self.call(retry, |s| op(s, self.keys.refind(s, key)?))
            }
            result => result,
        }
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

/// The rv of a slot-level (sessionless) call: a token that is gone is `CKR_DEVICE_ERROR`.
fn token_rv(err: &Error) -> Rv {
    let rv = errors::rv_of(err);
    if is_token_gone(rv) {
        Rv::DEVICE_ERROR
    } else {
        rv
    }
}

/// Find the configured token's slot by label or id.
fn find_slot(ctx: &Pkcs11, cfg: &BackendConfig) -> Result<Slot, OpenError> {
    let key = if cfg.token_label.is_some() {
        "token_label"
    } else {
        "slot_id"
    };
    let slots = ctx.get_slots_with_token().map_err(|e| OpenError {
        key,
        rv: errors::rv_of(&e),
        problem: format!("cannot list slots: {e}"),
    })?;
    if let Some(label) = &cfg.token_label {
        let mut seen = Vec::new();
        for slot in slots {
            // A slot whose token cannot be read right now is simply not a match.
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if info.label().trim_end() == label.as_str() {
                return Ok(slot);
            }
            seen.push(format!("{:?}", info.label().trim_end()));
        }
        return Err(OpenError {
            key: "token_label",
            rv: Rv::TOKEN_NOT_PRESENT,
            problem: format!(
                "no token labelled {label:?}; tokens present: [{}]",
                seen.join(", ")
            ),
        });
    }
    let Some(id) = cfg.slot_id else {
        return Err(OpenError {
            key: "token_label",
            rv: Rv::ARGUMENTS_BAD,
            problem: "set one of token_label or slot_id".into(),
        });
    };
    if let Some(slot) = slots.iter().find(|s| s.id() == id) {
        return Ok(*slot);
    }
    let ids: Vec<String> = slots.iter().map(|s| s.id().to_string()).collect();
    Err(OpenError {
        key: "slot_id",
        rv: Rv::SLOT_ID_INVALID,
        problem: format!(
            "no slot {id} with a token; slots with tokens: [{}]",
            ids.join(", ")
        ),
    })
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> CkResult<TokenDescription> {
        let info = self
            .ctx
            .get_token_info(self.slot)
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
        let info = self
            .ctx
            .get_mechanism_info(self.slot, mech)
            .map_err(|e| token_rv(&e))?;
        Ok(MechanismInfo {
            min_key_size: info.min_key_size() as u64,
            max_key_size: info.max_key_size() as u64,
            flags: mechanism_flags(&info),
        })
    }

    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        self.call(Retry::Always, |s| {
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
        })
    }

    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
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

    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        self.call_key(key, Retry::IfNotRun, |s, h| {
            s.destroy_object(h).map_err(|e| errors::rv_of(&e))
        })?;
        self.keys.forget(key);
        Ok(())
    }

    fn gcm_encrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<Vec<u8>> {
        check_iv(iv)?;
        self.call_key(key, Retry::Always, |s, handle| {
            // GcmParams wants a mutable IV (PKCS#11 may write generated IVs back); ours is
            // caller-supplied, so hand it a copy.
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, Ulong::from(GCM_TAG_BITS))
                .map_err(|e| errors::rv_of(&e))?;
            s.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                .map_err(|e| self.quirks.gcm_encrypt_error(&e))
        })
    }

    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> CkResult<Zeroizing<Vec<u8>>> {
        check_iv(iv)?;
        self.call_key(key, Retry::Always, |s, handle| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, Ulong::from(GCM_TAG_BITS))
                .map_err(|e| errors::rv_of(&e))?;
            s.decrypt(&Mechanism::AesGcm(params), handle, ciphertext_and_tag)
                .map(Zeroizing::new)
                .map_err(|e| self.quirks.gcm_decrypt_error(&e))
        })
    }

    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        // The closure must be `Fn`, so it fills a scratch buffer copied out on success.
        let filled = self.call(Retry::Always, |s| {
            let mut buf = Zeroizing::new(vec![0u8; out.len()]);
            s.generate_random_slice(&mut buf)
                .map_err(|e| errors::rv_of(&e))?;
            Ok(buf)
        })?;
        out.copy_from_slice(&filled);
        Ok(())
    }

    fn shutdown(&self) {
        self.shutdown_inner();
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
