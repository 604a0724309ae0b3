//! Virtual slots: what callers see as a slot with a token in it.
//!
//! A slot sits on a backend, admits only the keys its allow-list and the never-export policy
//! admit, and holds the login state that PKCS#11 shares between all sessions of an
//! application on one token.

use crate::backend::{Backend, KeyInfo};
use crate::config::{decode_hex, KeyFilter, Secret, SlotConfig};
use crate::pin_attempts::{Outcome, PinAttempts, PinStatus};
use crate::policy;
use crate::rv::{CkResult, Rv};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// One virtual slot and its token.
pub struct Slot {
    /// Token label (from `[[slot]].label`).
    pub label: String,
    /// The backend (or replica group) behind the slot.
    pub backend: Arc<dyn Backend>,
    /// Names of the configured backends, for descriptions and logs.
    pub backend_names: Vec<String>,
    /// Key allow-list.
    filter: CompiledFilter,
    /// The PIN callers must give to `C_Login`.
    user_pin: Secret,
    /// Whether the user is logged in (shared by all sessions, as PKCS#11 says).
    logged_in: AtomicBool,
    /// Consecutive wrong PINs, counted across processes (`max_pin_attempts`).
    attempts: PinAttempts,
    /// `C_DestroyObject` allowed.
    pub allow_destroy: bool,
}

struct CompiledFilter {
    label_prefix: Option<Vec<u8>>,
    labels: Option<Vec<Vec<u8>>>,
    ids: Option<Vec<Vec<u8>>>,
}

impl CompiledFilter {
    fn new(f: &KeyFilter) -> Self {
        CompiledFilter {
            label_prefix: f.label_prefix.as_ref().map(|p| p.as_bytes().to_vec()),
            labels: f
                .labels
                .as_ref()
                .map(|l| l.iter().map(|s| s.as_bytes().to_vec()).collect()),
            ids: f
                .ids_hex
                .as_ref()
                .map(|l| l.iter().filter_map(|s| decode_hex(s)).collect()),
        }
    }

    fn admits(&self, id: &[u8], label: &[u8]) -> bool {
        self.label_prefix
            .as_ref()
            .is_none_or(|p| label.starts_with(p))
            && self
                .labels
                .as_ref()
                .is_none_or(|l| l.iter().any(|x| x == label))
            && self.ids.as_ref().is_none_or(|l| l.iter().any(|x| x == id))
    }
}

impl Slot {
    /// Build a slot over an opened backend.
    pub fn new(cfg: &SlotConfig, backend: Arc<dyn Backend>, user_pin: Secret) -> Slot {
        Slot {
            label: cfg.label.clone(),
            backend,
            backend_names: cfg.backends.clone(),
            filter: CompiledFilter::new(&cfg.keys),
            user_pin,
            logged_in: AtomicBool::new(false),
            attempts: PinAttempts::new(cfg.pin_state_path(), cfg.max_pin_attempts),
            allow_destroy: cfg.allow_destroy,
        }
    }

    /// Is this key visible through this slot (never-export policy and allow-list)?
    pub fn admits(&self, key: &KeyInfo) -> bool {
        policy::key_is_admissible(key) && self.filter.admits(&key.id, &key.label)
    }

    /// Would a key with this ID and label be visible (for new keys and renames)?
    pub fn admits_names(&self, id: &[u8], label: &[u8]) -> bool {
        self.filter.admits(id, label)
    }

    /// The slot's visible keys, read fresh from the backend.
    ///
    /// Keys whose identity (`CKA_ID`, or the label when the ID is empty) is shared by another
    /// admitted key of the backend are left out: the module's stable handles are keyed by that
    /// identity, so one handle would stand for two different keys and silently switch between
    /// them. Such duplicates can only be made behind the module's back (C_GenerateKey refuses
    /// them), and are logged.
    pub fn visible_keys(&self) -> CkResult<Vec<KeyInfo>> {
        Ok(self.unique_admitted(self.backend.list_secret_keys()?))
    }

    /// The slot's visible keys among those matching `query`, read fresh from the backend
    /// (which matches the label/ID itself). The duplicate rule of [`Self::visible_keys`] only
    /// sees the keys read: the caller (`module/find.rs`) falls back to the full listing
    /// whenever a key it gets here is not already known under the same backend reference.
    pub fn visible_keys_matching(
        &self,
        query: &crate::backend::KeyQuery,
    ) -> CkResult<Vec<KeyInfo>> {
        Ok(self.unique_admitted(self.backend.find_secret_keys(query)?))
    }

    /// The admitted keys of `keys` whose identity no other admitted key of `keys` shares.
    fn unique_admitted(&self, keys: Vec<KeyInfo>) -> Vec<KeyInfo> {
        let keys: Vec<KeyInfo> = keys.into_iter().filter(|k| self.admits(k)).collect();
        let mut seen = std::collections::HashMap::new();
        for k in &keys {
            *seen.entry(k.identity()).or_insert(0usize) += 1;
        }
        keys.into_iter()
            .filter(|k| {
                let unique = seen[&k.identity()] == 1;
                if !unique {
                    log::warn!(
                        "slot {}: key {:?} is hidden: another key of backend {} has the same CKA_ID (or label)",
                        self.label,
                        String::from_utf8_lossy(&k.label),
                        self.backend.name()
                    );
                }
                unique
            })
            .collect()
    }

    /// `C_Login` as the normal user: constant-time PIN check, counted by the slot's attempt
    /// policy (the attempt is recorded before the comparison). `Err` when no PIN was compared
    /// (already logged in, `CKR_PIN_LOCKED`, counter unusable); otherwise the outcome.
    pub fn login(&self, pin: &[u8]) -> CkResult<Outcome> {
        if self.logged_in.load(Ordering::Acquire) {
            return Err(Rv::USER_ALREADY_LOGGED_IN);
        }
        let attempt = self.attempts.begin()?;
        let matched = bool::from(self.user_pin.as_slice().ct_eq(pin));
        let outcome = attempt.finish(matched);
        if outcome == Outcome::Accepted {
            self.logged_in.store(true, Ordering::Release);
        }
        Ok(outcome)
    }

    /// The user PIN's attempt counter, for `CK_TOKEN_INFO`.
    pub fn pin_status(&self) -> PinStatus {
        self.attempts.status()
    }

    /// `C_Logout`.
    pub fn logout(&self) -> CkResult<()> {
        if self.logged_in.swap(false, Ordering::AcqRel) {
            Ok(())
        } else {
            Err(Rv::USER_NOT_LOGGED_IN)
        }
    }

    /// Forget the login (when the last session of the slot closes, as PKCS#11 says).
    pub fn reset_login(&self) {
        self.logged_in.store(false, Ordering::Release);
    }

    /// Whether the user is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in.load(Ordering::Acquire)
    }

    /// Fail with `CKR_USER_NOT_LOGGED_IN` unless logged in.
    pub fn require_login(&self) -> CkResult<()> {
        if self.is_logged_in() {
            Ok(())
        } else {
            Err(Rv::USER_NOT_LOGGED_IN)
        }
    }
}
