//! The safe Rust API behind the C boundary: one function per `C_*` entry point.
//!
//! `abi/` copies arguments out of C memory, calls these, and copies results back following the
//! PKCS#11 buffer conventions. Nothing here sees a raw pointer.

use crate::mechanism::Mechanism;
use crate::rv::CkResult;

pub use crate::types::{
    Attribute, AttributeAnswer, InitArgs, ModuleInfo, Plaintext, SessionInfo, SinglePart, SlotInfo,
    TokenInfo,
};

macro_rules! core_fn {
    ($($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $( $(#[$m])* pub fn $name($($arg: $ty),*) -> $ret { crate::module::$name($($arg),*) } )*
    };
}

pub use crate::audit::health::AuditStatus;
pub use crate::backend::replicas::health::MemberStatus;
use crate::mechanism::{GcmMessageParams, MessageEncryption};
pub use crate::module::MessageEnd;
use crate::session::IvWriteBack;

/// `XKI_GetAuditStatus` (vendor interface `XKI Status` 1.1).
pub fn audit_status() -> AuditStatus {
    crate::audit::health::status()
}

/// `XKI_ReopenLogs` (vendor interface `XKI Status` 1.1).
pub fn reopen_logs() {
    crate::logging::reopen();
    crate::audit::file::reopen();
}

core_fn! {
    /// `XKI_GetMemberCount` (vendor interface `XKI Status`).
    pub fn member_count(slot: u64) -> CkResult<u64>;
    /// `XKI_GetMemberStatus` (vendor interface `XKI Status`).
    pub fn member_status(slot: u64, index: u64) -> CkResult<MemberStatus>;
    /// `C_Initialize`.
    pub fn initialize(args: Option<InitArgs>) -> CkResult<()>;
    /// `C_Finalize`.
    pub fn finalize() -> CkResult<()>;
    /// `C_GetInfo`.
    pub fn get_info() -> CkResult<ModuleInfo>;
    /// `C_GetSlotList`.
    pub fn get_slot_list(token_present: bool) -> CkResult<Vec<u64>>;
    /// `C_GetSlotInfo`.
    pub fn get_slot_info(slot: u64) -> CkResult<SlotInfo>;
    /// `C_GetTokenInfo`.
    pub fn get_token_info(slot: u64) -> CkResult<TokenInfo>;
    /// `C_GetMechanismList`.
    pub fn get_mechanism_list(slot: u64) -> CkResult<Vec<u64>>;
    /// `C_GetMechanismInfo`.
    pub fn get_mechanism_info(slot: u64, mechanism: u64) -> CkResult<crate::backend::MechanismInfo>;
    /// `C_OpenSession` (`flags` as given; notify callbacks are not used).
    pub fn open_session(slot: u64, flags: u64) -> CkResult<u64>;
    /// `C_CloseSession`.
    pub fn close_session(session: u64) -> CkResult<()>;
    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(slot: u64) -> CkResult<()>;
    /// `C_GetSessionInfo`.
    pub fn get_session_info(session: u64) -> CkResult<SessionInfo>;
    /// `C_Login`.
    pub fn login(session: u64, user_type: u64, pin: &[u8]) -> CkResult<()>;
    /// `C_Logout`.
    pub fn logout(session: u64) -> CkResult<()>;
    /// `C_CreateObject`.
    pub fn create_object(session: u64, template: &[Attribute]) -> CkResult<u64>;
    /// `C_CopyObject`.
    pub fn copy_object(session: u64, object: u64, template: &[Attribute]) -> CkResult<u64>;
    /// `C_DestroyObject`.
    pub fn destroy_object(session: u64, object: u64) -> CkResult<()>;
    /// `C_GetObjectSize`.
    pub fn get_object_size(session: u64, object: u64) -> CkResult<u64>;
    /// `C_GetAttributeValue`: one answer per requested type, in order.
    pub fn get_attribute_value(session: u64, object: u64, types: &[u64]) -> CkResult<Vec<AttributeAnswer>>;
    /// `C_SetAttributeValue`.
    pub fn set_attribute_value(session: u64, object: u64, template: &[Attribute]) -> CkResult<()>;
    /// `C_FindObjectsInit`.
    pub fn find_objects_init(session: u64, template: &[Attribute]) -> CkResult<()>;
    /// `C_FindObjects`: up to `max` handles.
    pub fn find_objects(session: u64, max: usize) -> CkResult<Vec<u64>>;
    /// `C_FindObjectsFinal`.
    pub fn find_objects_final(session: u64) -> CkResult<()>;
    /// `C_EncryptInit` (the mechanism is moved in: its IV and AAD are kept, not copied).
    pub fn encrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()>;
    /// Output length `C_Encrypt` would produce for `data_len` input bytes (operation stays).
    pub fn encrypt_len(session: u64, data_len: usize) -> CkResult<usize>;
    /// `C_Encrypt` into the caller's buffer `out` (its whole capacity, or at least as much as
    /// the output can need): too small leaves the operation active; otherwise it ends,
    /// success or not, and the answer is the length written.
    pub fn encrypt(session: u64, data: &[u8], out: &mut [u8]) -> CkResult<SinglePart<usize>>;
    /// `C_EncryptUpdate`: buffers the part; returns what may be output now.
    pub fn encrypt_update(session: u64, part: &[u8]) -> CkResult<Vec<u8>>;
    /// Output length `C_EncryptUpdate` would produce for `part_len` more bytes.
    pub fn encrypt_update_len(session: u64, part_len: usize) -> CkResult<usize>;
    /// Output length `C_EncryptFinal` would produce.
    pub fn encrypt_final_len(session: u64) -> CkResult<usize>;
    /// `C_EncryptFinal` proper: ends the operation.
    pub fn encrypt_final(session: u64) -> CkResult<Vec<u8>>;
    /// `C_DecryptInit` (the mechanism is moved in, like `encrypt_init`).
    pub fn decrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()>;
    /// `C_EncryptInit` of AES-GCM with a 12-byte all-zero IV: on a backend whose HSM generates
    /// IVs, `iv_write_back` receives the IV used once the encryption has run (the zero-IV
    /// convention); elsewhere the zero IV is used as given.
    pub fn encrypt_init_zero_iv(session: u64, mechanism: Mechanism, key: u64, iv_write_back: IvWriteBack) -> CkResult<()>;
    /// `C_MessageEncryptInit` (`encrypt`) / `C_MessageDecryptInit`: `mechanism` is the
    /// `CKM_*`, `param_len` its `ulParameterLen` (0 or `sizeof(CK_GCM_MESSAGE_PARAMS)`).
    pub fn message_init(session: u64, mechanism: u64, param_len: u64, key: u64, encrypt: bool) -> CkResult<()>;
    /// `C_MessageEncryptFinal` / `C_MessageDecryptFinal`.
    pub fn message_final(session: u64, encrypt: bool) -> CkResult<()>;
    /// Output length of `C_EncryptMessage`/`C_DecryptMessage` for `input_len` bytes.
    pub fn message_len(session: u64, encrypt: bool, input_len: usize) -> CkResult<usize>;
    /// `C_EncryptMessage` proper: ciphertext, the generated IV if any, and the tag.
    pub fn encrypt_message(session: u64, params: &GcmMessageParams, aad: &[u8], plaintext: &[u8]) -> CkResult<MessageEncryption>;
    /// `C_DecryptMessage` proper (tag in `params.tag`): the plaintext, or none on failure.
    pub fn decrypt_message(session: u64, params: &GcmMessageParams, aad: &[u8], ciphertext: &[u8]) -> CkResult<Plaintext>;
    /// `C_EncryptMessageBegin` / `C_DecryptMessageBegin`.
    pub fn message_begin(session: u64, encrypt: bool, params: GcmMessageParams, aad: &[u8]) -> CkResult<()>;
    /// Output length of `C_EncryptMessageNext`/`C_DecryptMessageNext` (`last`: with
    /// `CKF_END_OF_MESSAGE`).
    pub fn message_next_len(session: u64, encrypt: bool, part_len: usize, last: bool) -> CkResult<usize>;
    /// `C_EncryptMessageNext` / `C_DecryptMessageNext` proper; `last_tag` is `Some` at the
    /// last part (the tag of that call's parameters, for a decryption).
    pub fn message_next(session: u64, encrypt: bool, part: &[u8], last_tag: Option<[u8; 16]>) -> CkResult<Option<MessageEnd>>;
    /// Output length (upper bound) `C_Decrypt` would produce for `data_len` bytes.
    pub fn decrypt_len(session: u64, data_len: usize) -> CkResult<usize>;
    /// `C_Decrypt` into the caller's buffer `out` (as `encrypt`). On failure `out` holds no
    /// plaintext.
    pub fn decrypt(session: u64, data: &[u8], out: &mut [u8]) -> CkResult<SinglePart<usize>>;
    /// `C_DecryptUpdate`: buffers; never releases plaintext before the tag verified.
    pub fn decrypt_update(session: u64, part: &[u8]) -> CkResult<Plaintext>;
    /// Output length `C_DecryptUpdate` would produce for `part_len` more bytes.
    pub fn decrypt_update_len(session: u64, part_len: usize) -> CkResult<usize>;
    /// Output length (upper bound) `C_DecryptFinal` would produce.
    pub fn decrypt_final_len(session: u64) -> CkResult<usize>;
    /// `C_DecryptFinal` proper: verifies the tag, then releases all plaintext.
    pub fn decrypt_final(session: u64) -> CkResult<Plaintext>;
    /// `C_GenerateKey`.
    pub fn generate_key(session: u64, mechanism: &Mechanism, template: &[Attribute]) -> CkResult<u64>;
    /// `C_GenerateRandom`.
    pub fn generate_random(session: u64, len: usize) -> CkResult<Vec<u8>>;
    /// `C_SeedRandom`.
    pub fn seed_random(session: u64, seed: &[u8]) -> CkResult<()>;
    /// `C_WrapKey`: always refused (`CKR_KEY_UNEXTRACTABLE` for a valid key), audited.
    pub fn wrap_key(session: u64, mechanism: &Mechanism, wrapping_key: u64, key: u64) -> CkResult<()>;
    /// `C_UnwrapKey`: importing key material is refused, audited.
    pub fn unwrap_key(session: u64, mechanism: &Mechanism, unwrapping_key: u64, template: &[Attribute]) -> CkResult<()>;
    /// `C_DeriveKey`: refused, audited.
    pub fn derive_key(session: u64, mechanism: &Mechanism, base_key: u64, template: &[Attribute]) -> CkResult<()>;
    /// `C_DigestKey`: refused (`CKR_KEY_INDIGESTIBLE` / no digest active), audited.
    pub fn digest_key(session: u64, key: u64) -> CkResult<()>;
    /// `C_GetOperationState`: refused (`CKR_STATE_UNSAVEABLE`).
    pub fn get_operation_state(session: u64) -> CkResult<()>;
    /// `C_SetOperationState`: refused (`CKR_SAVED_STATE_INVALID`).
    pub fn set_operation_state(session: u64) -> CkResult<()>;
    /// Any function this module does not implement (digest, sign, verify, message API, ...):
    /// `CKR_CRYPTOKI_NOT_INITIALIZED` before init, else `CKR_FUNCTION_NOT_SUPPORTED`.
    pub fn not_supported(function: &'static str) -> CkResult<()>;
}
