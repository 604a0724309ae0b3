//! `Rv`: a PKCS#11 return value carried as a Rust error.
//!
//! Everything behind the C boundary returns `Result<T, Rv>`; the boundary turns it into the
//! `CK_RV` the caller sees. `Rv` never carries secrets, so it is safe to log.

use pkcs11_sys::*;
use std::fmt;

/// A non-OK PKCS#11 return value (`CK_RV`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rv(pub CK_RV);

/// Result type used throughout the module core.
pub type CkResult<T> = Result<T, Rv>;

impl Rv {
    pub const GENERAL_ERROR: Rv = Rv(CKR_GENERAL_ERROR);
    pub const ARGUMENTS_BAD: Rv = Rv(CKR_ARGUMENTS_BAD);
    pub const BUFFER_TOO_SMALL: Rv = Rv(CKR_BUFFER_TOO_SMALL);
    pub const DEVICE_ERROR: Rv = Rv(CKR_DEVICE_ERROR);
    pub const FUNCTION_FAILED: Rv = Rv(CKR_FUNCTION_FAILED);
    pub const FUNCTION_NOT_SUPPORTED: Rv = Rv(CKR_FUNCTION_NOT_SUPPORTED);
    pub const ENCRYPTED_DATA_INVALID: Rv = Rv(CKR_ENCRYPTED_DATA_INVALID);
    pub const ENCRYPTED_DATA_LEN_RANGE: Rv = Rv(CKR_ENCRYPTED_DATA_LEN_RANGE);
    pub const DATA_LEN_RANGE: Rv = Rv(CKR_DATA_LEN_RANGE);
    pub const KEY_HANDLE_INVALID: Rv = Rv(CKR_KEY_HANDLE_INVALID);
    pub const KEY_FUNCTION_NOT_PERMITTED: Rv = Rv(CKR_KEY_FUNCTION_NOT_PERMITTED);
    pub const KEY_TYPE_INCONSISTENT: Rv = Rv(CKR_KEY_TYPE_INCONSISTENT);
    pub const MECHANISM_INVALID: Rv = Rv(CKR_MECHANISM_INVALID);
    pub const MECHANISM_PARAM_INVALID: Rv = Rv(CKR_MECHANISM_PARAM_INVALID);
    pub const OBJECT_HANDLE_INVALID: Rv = Rv(CKR_OBJECT_HANDLE_INVALID);
    pub const OPERATION_ACTIVE: Rv = Rv(CKR_OPERATION_ACTIVE);
    pub const OPERATION_NOT_INITIALIZED: Rv = Rv(CKR_OPERATION_NOT_INITIALIZED);
    pub const PIN_INCORRECT: Rv = Rv(CKR_PIN_INCORRECT);
    pub const PIN_LEN_RANGE: Rv = Rv(CKR_PIN_LEN_RANGE);
    pub const SESSION_HANDLE_INVALID: Rv = Rv(CKR_SESSION_HANDLE_INVALID);
    pub const SESSION_CLOSED: Rv = Rv(CKR_SESSION_CLOSED);
    pub const SESSION_PARALLEL_NOT_SUPPORTED: Rv = Rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    pub const SESSION_READ_ONLY: Rv = Rv(CKR_SESSION_READ_ONLY);
    pub const SLOT_ID_INVALID: Rv = Rv(CKR_SLOT_ID_INVALID);
    pub const TEMPLATE_INCOMPLETE: Rv = Rv(CKR_TEMPLATE_INCOMPLETE);
    pub const TEMPLATE_INCONSISTENT: Rv = Rv(CKR_TEMPLATE_INCONSISTENT);
    pub const ATTRIBUTE_READ_ONLY: Rv = Rv(CKR_ATTRIBUTE_READ_ONLY);
    pub const ATTRIBUTE_SENSITIVE: Rv = Rv(CKR_ATTRIBUTE_SENSITIVE);
    pub const ATTRIBUTE_TYPE_INVALID: Rv = Rv(CKR_ATTRIBUTE_TYPE_INVALID);
    pub const ATTRIBUTE_VALUE_INVALID: Rv = Rv(CKR_ATTRIBUTE_VALUE_INVALID);
    pub const ACTION_PROHIBITED: Rv = Rv(CKR_ACTION_PROHIBITED);
    pub const USER_NOT_LOGGED_IN: Rv = Rv(CKR_USER_NOT_LOGGED_IN);
    pub const USER_ALREADY_LOGGED_IN: Rv = Rv(CKR_USER_ALREADY_LOGGED_IN);
    pub const USER_TYPE_INVALID: Rv = Rv(CKR_USER_TYPE_INVALID);
    pub const CRYPTOKI_NOT_INITIALIZED: Rv = Rv(CKR_CRYPTOKI_NOT_INITIALIZED);
    pub const CRYPTOKI_ALREADY_INITIALIZED: Rv = Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    pub const CANT_LOCK: Rv = Rv(CKR_CANT_LOCK);
    pub const TOKEN_NOT_PRESENT: Rv = Rv(CKR_TOKEN_NOT_PRESENT);
    pub const TOKEN_WRITE_PROTECTED: Rv = Rv(CKR_TOKEN_WRITE_PROTECTED);
    pub const RANDOM_NO_RNG: Rv = Rv(CKR_RANDOM_NO_RNG);
    pub const HOST_MEMORY: Rv = Rv(CKR_HOST_MEMORY);
    pub const KEY_SIZE_RANGE: Rv = Rv(CKR_KEY_SIZE_RANGE);
    pub const KEY_UNEXTRACTABLE: Rv = Rv(CKR_KEY_UNEXTRACTABLE);
    pub const KEY_NOT_WRAPPABLE: Rv = Rv(CKR_KEY_NOT_WRAPPABLE);
    pub const SAVED_STATE_INVALID: Rv = Rv(CKR_SAVED_STATE_INVALID);
    pub const STATE_UNSAVEABLE: Rv = Rv(CKR_STATE_UNSAVEABLE);
    pub const DEVICE_REMOVED: Rv = Rv(CKR_DEVICE_REMOVED);
    pub const NEED_TO_CREATE_THREADS: Rv = Rv(CKR_NEED_TO_CREATE_THREADS);

    /// The raw `CK_RV`.
    pub fn code(self) -> CK_RV {
        self.0
    }

    /// A short symbolic name for logs (`CKR_PIN_INCORRECT`), or the hex code when unknown.
    pub fn name(self) -> String {
        rv_name(self.0)
            .map(str::to_string)
            .unwrap_or_else(|| format!("CKR_0x{:08X}", self.0))
    }
}

impl fmt::Debug for Rv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Rv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::error::Error for Rv {}

macro_rules! names {
    ($code:expr, $($c:ident),* $(,)?) => {
        match $code { $( x if x == $c => Some(stringify!($c)), )* _ => None }
    };
}

fn rv_name(code: CK_RV) -> Option<&'static str> {
    names!(
        code,
        CKR_OK,
        CKR_CANCEL,
        CKR_HOST_MEMORY,
        CKR_SLOT_ID_INVALID,
        CKR_GENERAL_ERROR,
        CKR_FUNCTION_FAILED,
        CKR_ARGUMENTS_BAD,
        CKR_NO_EVENT,
        CKR_NEED_TO_CREATE_THREADS,
        CKR_CANT_LOCK,
        CKR_ATTRIBUTE_READ_ONLY,
        CKR_ATTRIBUTE_SENSITIVE,
        CKR_ATTRIBUTE_TYPE_INVALID,
        CKR_ATTRIBUTE_VALUE_INVALID,
        CKR_ACTION_PROHIBITED,
        CKR_DATA_INVALID,
        CKR_DATA_LEN_RANGE,
        CKR_DEVICE_ERROR,
        CKR_DEVICE_MEMORY,
        CKR_DEVICE_REMOVED,
        CKR_ENCRYPTED_DATA_INVALID,
        CKR_ENCRYPTED_DATA_LEN_RANGE,
        CKR_FUNCTION_CANCELED,
        CKR_FUNCTION_NOT_PARALLEL,
        CKR_FUNCTION_NOT_SUPPORTED,
        CKR_KEY_HANDLE_INVALID,
        CKR_KEY_SIZE_RANGE,
        CKR_KEY_TYPE_INCONSISTENT,
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        CKR_KEY_NOT_WRAPPABLE,
        CKR_KEY_UNEXTRACTABLE,
        CKR_MECHANISM_INVALID,
        CKR_MECHANISM_PARAM_INVALID,
        CKR_OBJECT_HANDLE_INVALID,
        CKR_OPERATION_ACTIVE,
        CKR_OPERATION_NOT_INITIALIZED,
        CKR_PIN_INCORRECT,
        CKR_PIN_INVALID,
        CKR_PIN_LEN_RANGE,
        CKR_PIN_EXPIRED,
        CKR_PIN_LOCKED,
        CKR_SESSION_CLOSED,
        CKR_SESSION_COUNT,
        CKR_SESSION_HANDLE_INVALID,
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
        CKR_SESSION_READ_ONLY,
        CKR_SESSION_EXISTS,
        CKR_SESSION_READ_ONLY_EXISTS,
        CKR_SESSION_READ_WRITE_SO_EXISTS,
        CKR_TEMPLATE_INCOMPLETE,
        CKR_TEMPLATE_INCONSISTENT,
        CKR_TOKEN_NOT_PRESENT,
        CKR_TOKEN_NOT_RECOGNIZED,
        CKR_TOKEN_WRITE_PROTECTED,
        CKR_USER_ALREADY_LOGGED_IN,
        CKR_USER_NOT_LOGGED_IN,
        CKR_USER_PIN_NOT_INITIALIZED,
        CKR_USER_TYPE_INVALID,
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        CKR_USER_TOO_MANY_TYPES,
        CKR_BUFFER_TOO_SMALL,
        CKR_SAVED_STATE_INVALID,
        CKR_STATE_UNSAVEABLE,
        CKR_CRYPTOKI_NOT_INITIALIZED,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        CKR_RANDOM_SEED_NOT_SUPPORTED,
        CKR_RANDOM_NO_RNG,
        CKR_OPERATION_CANCEL_FAILED,
    )
}
