//! The GCM IV mode of a pkcs11 backend (`[backend.NAME] gcm_iv`): how its HSM takes the IV of
//! an AES-GCM encryption, and the encryption under an IV generated inside the HSM in each mode.
//!
//! | mode | encrypt call | where the IV comes back |
//! |---|---|---|
//! | `caller` | `CK_GCM_PARAMS.pIv` = 12 bytes from the HSM's `C_GenerateRandom` (batched) | the module knows it |
//! | `write-back` | `pIv` = 12 zero bytes | the library overwrites `pIv` |
//! | `append` | `pIv` = NULL, `ulIvLen` = 0, `ulIvBits` = 96 | output = ciphertext ‖ tag ‖ IV |
//! | `message` | `C_EncryptMessage`, `ivGenerator = CKG_GENERATE_RANDOM` | `CK_GCM_MESSAGE_PARAMS.pIv` |
//!
//! `auto` (the default) is decided at open time from the vendor rows of `quirks.rs` and, for
//! libraries not listed there, from whether the library offers the PKCS#11 3.0 message
//! functions with `CKF_MESSAGE_ENCRYPT` for `CKM_AES_GCM`; the choice is logged with the
//! backend's name. The one thing `auto` learns later: on a Luna (whose FIPS mode is not visible
//! through PKCS#11) a caller IV refused with `CKR_MECHANISM_PARAM_INVALID` switches the backend
//! to `append`, logged. A mode set explicitly is never changed: when the library refuses it,
//! the first failure logs an error naming the backend and the key to change.

use super::quirks::VendorIv;
use super::{errors, gcm_op, Pkcs11Backend};
use crate::backend::{BackendKey, GeneratedIvEncryption, GENERATED_IV_LEN};
use crate::config::GcmIvMode;
use crate::mechanism::{Iv, GCM_TAG_LEN};
use crate::rv::{CkResult, Rv};
use cryptoki::context::{Function, Pkcs11};
use cryptoki::mechanism::aead::{GcmMessageParams, GcmParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MechanismType, MessageParam};
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::calls::Retry;

/// The IV mode a backend uses now, and how it was chosen.
#[derive(Debug)]
pub(crate) struct IvModeState {
    /// `gcm_iv` as configured (`Auto` or an explicit mode).
    configured: GcmIvMode,
    /// The mode in use (never `Auto`), as `GcmIvMode as u8`.
    current: AtomicU8,
    /// `auto` on a Luna: a refused caller IV switches to `append`.
    learn_append: bool,
    /// The loud first-failure line has been written.
    refusal_logged: AtomicBool,
}

const MODES: [GcmIvMode; 5] = [
    GcmIvMode::Auto,
    GcmIvMode::Caller,
    GcmIvMode::WriteBack,
    GcmIvMode::Append,
    GcmIvMode::Message,
];

fn to_u8(mode: GcmIvMode) -> u8 {
    MODES.iter().position(|m| *m == mode).unwrap_or(1) as u8
}

/// The mode `auto` picks, and why (for the start-up log line).
pub(crate) fn auto_mode(vendor: VendorIv, message_api: bool) -> (GcmIvMode, &'static str) {
    match vendor {
        VendorIv::WriteBack => (
            GcmIvMode::WriteBack,
            "vendor row (HSM generates the IV and writes it into pIv)",
        ),
        VendorIv::CallerOrAppend => (
            GcmIvMode::Caller,
            "vendor row (Luna: caller IV; switches to append if the HSM, in FIPS mode, refuses one)",
        ),
        VendorIv::Unlisted if message_api => (
            GcmIvMode::Message,
            "the library offers the PKCS#11 3.0 message API for CKM_AES_GCM",
        ),
        VendorIv::Unlisted => (
            GcmIvMode::Caller,
            "no vendor row and no 3.0 message API: caller IVs from the HSM's RNG",
        ),
    }
}

/// Whether the library at `ctx` offers message-based AES-GCM encryption on `slot`.
pub(crate) fn offers_message_api(ctx: &Pkcs11, slot: Slot) -> bool {
    let functions = [
        Function::MessageEncryptInit,
        Function::EncryptMessage,
        Function::MessageEncryptFinal,
    ];
    functions.iter().all(|f| ctx.is_fn_supported(*f))
        && ctx
            .get_mechanism_info(slot, MechanismType::AES_GCM)
            .is_ok_and(|i| i.message_encrypt())
}

impl IvModeState {
    /// Decide the mode of backend `name` and log it.
    pub(crate) fn choose(
        name: &str,
        configured: GcmIvMode,
        vendor: VendorIv,
        message_api: bool,
    ) -> IvModeState {
        let (mode, why, learn) = match configured {
            GcmIvMode::Auto => {
                let (mode, why) = auto_mode(vendor, message_api);
                (mode, why, vendor == VendorIv::CallerOrAppend)
            }
            explicit => (explicit, "set in the config", false),
        };
        log::info!(
            "backend {name}: GCM IV mode {} ({why}; key backend.{name}.gcm_iv, configured {:?})",
            mode.as_str(),
            configured.as_str()
        );
        if mode == GcmIvMode::Message && !message_api {
            log::warn!(
                "backend {name}: gcm_iv = \"message\" but the library does not offer the PKCS#11 3.0 message API for CKM_AES_GCM; encryptions will fail"
            );
        }
        IvModeState {
            configured,
            current: AtomicU8::new(to_u8(mode)),
            learn_append: learn,
            refusal_logged: AtomicBool::new(false),
        }
    }

    /// The mode in use.
    pub(crate) fn current(&self) -> GcmIvMode {
        MODES
            .get(self.current.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(GcmIvMode::Caller)
    }

    /// Whether the HSM takes a caller's IV in the current mode.
    pub(crate) fn accepts_caller_iv(&self) -> bool {
        matches!(self.current(), GcmIvMode::Caller | GcmIvMode::Message)
    }

    /// After `rv` from a caller-IV encryption: whether `auto` has just learnt that this HSM
    /// (a Luna in FIPS mode) appends its own IVs instead. Logged once.
    pub(crate) fn learn_from_caller_iv_refusal(&self, name: &str, rv: Rv) -> bool {
        if !(self.learn_append && rv == Rv::MECHANISM_PARAM_INVALID) {
            return false;
        }
        let was = self
            .current
            .swap(to_u8(GcmIvMode::Append), Ordering::Relaxed);
        if was != to_u8(GcmIvMode::Append) {
            log::warn!(
                "backend {name}: the HSM refused a caller GCM IV ({rv}): Luna in FIPS mode; GCM IV mode is now append (set backend.{name}.gcm_iv = \"append\" to say so in the config). Callers must use the PKCS#11 3.0 message API or the zero-IV convention for encryption"
            );
        }
        true
    }

    /// Report an encryption failure in the current mode: the first one that looks like the
    /// library refusing the mode is logged as an error naming the key to change.
    pub(crate) fn note_failure(&self, name: &str, rv: Rv) -> Rv {
        let refusal = matches!(
            rv,
            Rv::MECHANISM_PARAM_INVALID
                | Rv::MECHANISM_INVALID
                | Rv::FUNCTION_NOT_SUPPORTED
                | Rv::ARGUMENTS_BAD
                | Rv::FUNCTION_FAILED
        );
        if refusal && !self.refusal_logged.swap(true, Ordering::Relaxed) {
            log::error!(
                "backend {name}: GCM encryption in IV mode {} ({}) failed: {rv}. The HSM does not take IVs that way: set backend.{name}.gcm_iv to the mode this HSM uses (caller, write-back, append or message; README \"HSM vendors\")",
                self.current().as_str(),
                if self.configured == GcmIvMode::Auto {
                    "chosen by auto"
                } else {
                    "set in the config"
                }
            );
        }
        rv
    }
}

impl Pkcs11Backend {
    /// [`crate::backend::Backend::gcm_encrypt_generated_iv`] in this backend's IV mode.
    pub(super) fn encrypt_generated_iv(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        let result = match self.iv_mode.current() {
            GcmIvMode::Auto | GcmIvMode::Caller => {
                match self.encrypt_iv_from_rng(key, aad, plaintext) {
                    Err(rv) if self.iv_mode.learn_from_caller_iv_refusal(&self.name, rv) => {
                        self.encrypt_iv_appended(key, aad, plaintext)
                    }
                    result => result,
                }
            }
            GcmIvMode::WriteBack => self.encrypt_iv_written_back(key, aad, plaintext),
            GcmIvMode::Append => self.encrypt_iv_appended(key, aad, plaintext),
            GcmIvMode::Message => self.encrypt_iv_by_message(key, aad, plaintext),
        };
        result.map_err(|rv| self.iv_mode.note_failure(&self.name, rv))
    }

    /// `caller`: an IV from the HSM's RNG (batched, `iv_batch.rs`) as the caller IV.
    fn encrypt_iv_from_rng(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        use crate::backend::Backend;
        let iv = self.iv_batch.next(|buf| self.generate_random(buf))?;
        let ciphertext_and_tag = self.gcm_encrypt(key, &iv, aad, plaintext)?;
        Ok(GeneratedIvEncryption {
            iv: Iv::from_slice(&iv),
            ciphertext_and_tag,
        })
    }

    /// `write-back`: 12 zero bytes in, the IV the HSM generated out.
    fn encrypt_iv_written_back(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, handle| {
            let mut iv = Iv::from_elem(0, GENERATED_IV_LEN);
            let mut out = vec![0; plaintext.len() + GCM_TAG_LEN];
            let n = match &self.gcm {
                Some(gcm) => gcm
                    .encrypt_iv_written_back(
                        &gcm_op(s, handle, &[], aad),
                        &mut iv,
                        plaintext,
                        &mut out,
                    )
                    .map_err(|e| self.quirks.gcm_encrypt_error(&e))?,
                None => {
                    let params = GcmParams::new(&mut iv, aad, Ulong::from(128))
                        .map_err(|e| errors::rv_of(&e))?;
                    let ct = s
                        .encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                        .map_err(|e| self.quirks.gcm_encrypt_error(&e))?;
                    crate::backend::copy_out(&ct, &mut out)?
                }
            };
            if n != plaintext.len() + GCM_TAG_LEN {
                log::error!(
                    "backend {}: write-back GCM encryption returned {n} bytes for {} of plaintext",
                    self.name,
                    plaintext.len()
                );
                return Err(Rv::FUNCTION_FAILED);
            }
            if iv.iter().all(|b| *b == 0) {
                // The library did not write an IV back: the data was encrypted under a zero IV,
                // which must never be handed out.
                crate::secret::wipe_slice(&mut out);
                log::error!(
                    "backend {}: gcm_iv = \"write-back\" but the library left the IV zero",
                    self.name
                );
                return Err(Rv::FUNCTION_FAILED);
            }
            Ok(GeneratedIvEncryption {
                iv,
                ciphertext_and_tag: out,
            })
        })
    }

    /// `append`: no IV in, ciphertext ‖ tag ‖ IV out (12 bytes, or 16 from older Luna firmware).
    fn encrypt_iv_appended(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        let Some(gcm) = &self.gcm else {
            log::error!(
                "backend {}: gcm_iv = \"append\" needs the library's own C_EncryptInit (not found)",
                self.name
            );
            return Err(Rv::FUNCTION_NOT_SUPPORTED);
        };
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, handle| {
            let body = plaintext.len() + GCM_TAG_LEN;
            let mut out = vec![0; body + 16];
            let n = gcm
                .encrypt_iv_appended(&gcm_op(s, handle, &[], aad), plaintext, &mut out)
                .map_err(|e| self.quirks.gcm_encrypt_error(&e))?;
            let iv_len = n.saturating_sub(body);
            if n < body || !crate::mechanism::GCM_IV_LENS.contains(&iv_len) {
                crate::secret::wipe_slice(&mut out);
                log::error!(
                    "backend {}: gcm_iv = \"append\" but the library returned {n} bytes for {} of plaintext (no 12- or 16-byte IV after the tag)",
                    self.name,
                    plaintext.len()
                );
                return Err(Rv::FUNCTION_FAILED);
            }
            let iv = Iv::from_slice(&out[body..n]);
            out.truncate(body);
            Ok(GeneratedIvEncryption {
                iv,
                ciphertext_and_tag: out,
            })
        })
    }

    /// `message`: one PKCS#11 3.0 message-based encryption with `CKG_GENERATE_RANDOM`.
    fn encrypt_iv_by_message(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<GeneratedIvEncryption> {
        let _guard = self.reading()?;
        self.call_key(key, Retry::Always, |s, handle| {
            let mut iv = Iv::from_elem(0, GENERATED_IV_LEN);
            let mut tag = [0u8; GCM_TAG_LEN];
            let params = GcmMessageParams::new(
                &mut iv,
                Ulong::from(0),
                GeneratorFunction::GenerateRandom,
                &mut tag,
            )
            .map_err(|e| errors::rv_of(&e))?;
            s.message_encrypt_init(&Mechanism::AesGcmMessage(params), handle)
                .map_err(|e| self.quirks.gcm_encrypt_error(&e))?;
            let encrypted = s.encrypt_message(&MessageParam::AesGcmMessage(params), aad, plaintext);
            // Always end the process, so the pooled session carries no operation on.
            let finished = s.message_encrypt_final();
            let mut ciphertext = encrypted.map_err(|e| errors::rv_of(&e))?;
            finished.map_err(|e| errors::rv_of(&e))?;
            if ciphertext.len() != plaintext.len() {
                return Err(Rv::FUNCTION_FAILED);
            }
            ciphertext.extend_from_slice(&tag);
            Ok(GeneratedIvEncryption {
                iv,
                ciphertext_and_tag: ciphertext,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_vendor_rows_then_the_library() {
        assert_eq!(auto_mode(VendorIv::WriteBack, true).0, GcmIvMode::WriteBack);
        assert_eq!(
            auto_mode(VendorIv::CallerOrAppend, false).0,
            GcmIvMode::Caller
        );
        assert_eq!(auto_mode(VendorIv::Unlisted, true).0, GcmIvMode::Message);
        assert_eq!(auto_mode(VendorIv::Unlisted, false).0, GcmIvMode::Caller);
    }

    #[test]
    fn only_auto_on_luna_learns_append_and_only_from_a_param_refusal() {
        let luna = IvModeState::choose("l", GcmIvMode::Auto, VendorIv::CallerOrAppend, false);
        assert!(luna.accepts_caller_iv());
        assert!(!luna.learn_from_caller_iv_refusal("l", Rv::DEVICE_ERROR));
        assert_eq!(luna.current(), GcmIvMode::Caller);
        assert!(luna.learn_from_caller_iv_refusal("l", Rv::MECHANISM_PARAM_INVALID));
        assert_eq!(luna.current(), GcmIvMode::Append);
        assert!(!luna.accepts_caller_iv());
        let set = IvModeState::choose("s", GcmIvMode::Caller, VendorIv::CallerOrAppend, false);
        assert!(!set.learn_from_caller_iv_refusal("s", Rv::MECHANISM_PARAM_INVALID));
        assert_eq!(set.current(), GcmIvMode::Caller);
        let other = IvModeState::choose("o", GcmIvMode::Auto, VendorIv::Unlisted, false);
        assert!(!other.learn_from_caller_iv_refusal("o", Rv::MECHANISM_PARAM_INVALID));
    }

    #[test]
    fn explicit_modes_are_kept() {
        for mode in [GcmIvMode::WriteBack, GcmIvMode::Append, GcmIvMode::Message] {
            let s = IvModeState::choose("x", mode, VendorIv::Unlisted, false);
            assert_eq!(s.current(), mode);
            assert!(!s.accepts_caller_iv() || mode == GcmIvMode::Message);
            assert_eq!(
                s.note_failure("x", Rv::MECHANISM_PARAM_INVALID),
                Rv::MECHANISM_PARAM_INVALID
            );
            assert_eq!(s.current(), mode);
        }
    }
}
