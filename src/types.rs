//! The values that cross between the C boundary and the module's core: `CK_*` structures
//! already read out of C memory (`InitArgs`, the info structures, `Attribute`) and the core's
//! answers (`AttributeAnswer`, `SinglePart`, `Plaintext`). A leaf: the core (`module`,
//! `policy`, `session`, `keystate`) and `api` both use it, so neither imports the other's types.

use crate::rv::CkResult;

/// What `C_Initialize` was given, already read out of `CK_C_INITIALIZE_ARGS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InitArgs {
    /// How many of the four mutex callbacks were non-NULL (0..=4).
    pub callbacks_set: u8,
    /// `CKF_OS_LOCKING_OK` was set.
    pub os_locking_ok: bool,
    /// `CKF_LIBRARY_CANT_CREATE_OS_THREADS` was set.
    pub no_os_threads: bool,
    /// `pReserved` was not NULL.
    pub reserved_non_null: bool,
}

/// `CK_INFO` contents (strings unpadded; the boundary pads with blanks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    pub cryptoki_version: (u8, u8),
    pub manufacturer: String,
    pub description: String,
    pub library_version: (u8, u8),
}

/// `CK_SLOT_INFO` contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub description: String,
    pub manufacturer: String,
    pub flags: u64,
    pub hardware_version: (u8, u8),
    pub firmware_version: (u8, u8),
}

/// `CK_TOKEN_INFO` contents. Counts use `CK_UNAVAILABLE_INFORMATION` where unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub flags: u64,
    pub max_session_count: u64,
    pub session_count: u64,
    pub max_rw_session_count: u64,
    pub rw_session_count: u64,
    pub max_pin_len: u64,
    pub min_pin_len: u64,
    pub total_public_memory: u64,
    pub free_public_memory: u64,
    pub total_private_memory: u64,
    pub free_private_memory: u64,
    pub hardware_version: (u8, u8),
    pub firmware_version: (u8, u8),
    /// 16 chars `YYYYMMDDhhmmss00` when `CKF_CLOCK_ON_TOKEN`, else empty.
    pub utc_time: String,
}

/// `CK_SESSION_INFO` contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub slot_id: u64,
    pub state: u64,
    pub flags: u64,
    pub device_error: u64,
}

/// One attribute of a template, copied out of C memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// `CKA_*`.
    pub kind: u64,
    /// The value bytes (`CK_BBOOL` is one byte, `CK_ULONG` is native-endian 8 bytes).
    pub value: Vec<u8>,
}

/// The core's answer for one attribute asked of `C_GetAttributeValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeAnswer {
    /// The value, to be copied following the two-call convention.
    Value(Vec<u8>),
    /// Secret: `ulValueLen = CK_UNAVAILABLE_INFORMATION`, overall `CKR_ATTRIBUTE_SENSITIVE`.
    Sensitive,
    /// Not an attribute of this object: `CK_UNAVAILABLE_INFORMATION`,
    /// overall `CKR_ATTRIBUTE_TYPE_INVALID`.
    Invalid,
}

/// Plaintext on its way out (wiped when dropped).
pub type Plaintext = crate::secret::SecretBytes;

/// What a single-part `C_Encrypt`/`C_Decrypt` given an output buffer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum SinglePart<T> {
    /// The output; the operation has ended.
    Done(T),
    /// The caller's buffer is shorter than this many bytes: `CKR_BUFFER_TOO_SMALL`, and the
    /// operation stays active (nothing was consumed).
    TooSmall(usize),
}

impl<T> SinglePart<T> {
    /// The output of a call that cannot be too small (no caller capacity was involved);
    /// `CKR_GENERAL_ERROR` if the core said otherwise.
    pub fn done(self) -> CkResult<T> {
        match self {
            SinglePart::Done(t) => Ok(t),
            SinglePart::TooSmall(_) => Err(crate::rv::Rv::GENERAL_ERROR),
        }
    }
}
