//! What can go wrong talking to the HSM, at the granularity the API maps to error names.

use std::fmt;

use cryptoki::error::{Error as CkError, RvError};

/// An HSM-layer failure.
#[derive(Debug)]
pub enum HsmError {
    /// No HYOK key with that label.
    KeyNotFound,
    /// Key has neither CKA_ENCRYPT nor CKA_DECRYPT (our DISABLED state).
    Disabled,
    /// Key is enabled but not for this operation.
    WrongUsage,
    /// GCM authentication failed on decrypt.
    InvalidCiphertext,
    /// All sessions busy and the wait queue is full.
    Busy,
    /// The deadline passed before the HSM answered.
    Timeout,
    /// The pool is shut down.
    ShuttingDown,
    /// The module refused the key operation because its audit file cannot be written
    /// (`audit_on_failure = "refuse"`, the default); clears when records can be written.
    AuditRefused,
    /// The token did not answer (gone, unreadable, out of service): say so, never "not found".
    Unavailable(String),
    /// A PKCS#11 call failed.
    Pkcs11 {
        /// Which call.
        op: &'static str,
        /// What it returned.
        err: CkError,
    },
    /// Anything else (module load, token lookup, checks).
    Other(String),
}

impl HsmError {
    /// Wrap a cryptoki error with the call name.
    pub fn pkcs11(op: &'static str, err: CkError) -> Self {
        HsmError::Pkcs11 { op, err }
    }

    /// The PKCS#11 return value, if this is one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 {
                err: CkError::Pkcs11(rv, _),
                ..
            } => Some(*rv),
            _ => None,
        }
    }

    /// True when the HSM refused the key for this operation (`CKR_KEY_FUNCTION_NOT_PERMITTED`:
    /// its usage or state does not allow it), as opposed to any failure of the HSM itself.
    pub fn key_use_refused(&self) -> bool {
        self.rv() == Some(RvError::KeyFunctionNotPermitted)
    }

    /// True when the session can no longer be used and must be replaced.
    pub fn session_broken(&self) -> bool {
        matches!(self, HsmError::Unavailable(_))
            || matches!(
                self.rv(),
                Some(
                    RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::DeviceRemoved
                        | RvError::DeviceError
                        | RvError::TokenNotPresent
                        | RvError::UserNotLoggedIn
                        | RvError::CryptokiNotInitialized
                )
            )
    }

    /// True when the HSM side could not be reached or reported itself broken: the token is
    /// gone or unreadable, the library lost its state, or our module took the token out of
    /// service. Such an error says nothing about the key.
    pub fn unavailable(&self) -> bool {
        matches!(self, HsmError::Unavailable(_))
            || matches!(
                self.rv(),
                Some(
                    RvError::DeviceError
                        | RvError::DeviceRemoved
                        | RvError::DeviceMemory
                        | RvError::TokenNotPresent
                        | RvError::TokenNotRecognized
                        | RvError::CryptokiNotInitialized
                )
            )
    }

    /// True when a cached object handle is stale.
    pub fn stale_handle(&self) -> bool {
        matches!(
            self.rv(),
            Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
        )
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HsmError::KeyNotFound => f.write_str("key not found"),
            HsmError::Disabled => f.write_str("key is disabled"),
            HsmError::WrongUsage => f.write_str("key usage does not allow this operation"),
            HsmError::InvalidCiphertext => f.write_str("ciphertext authentication failed"),
            HsmError::Busy => f.write_str("all HSM sessions busy and wait queue full"),
            HsmError::Timeout => f.write_str("HSM did not answer within the deadline"),
            HsmError::ShuttingDown => f.write_str("shutting down"),
            HsmError::AuditRefused => f.write_str(
                "the module's audit file cannot be written: key operations refused until it can",
            ),
            HsmError::Unavailable(why) => write!(f, "HSM unavailable: {why}"),
            HsmError::Pkcs11 { op, err } => match err {
                CkError::Pkcs11(rv, _) => write!(f, "{op} failed: {rv:?}"),
                other => write!(f, "{op} failed: {other}"),
            },
            HsmError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for HsmError {}
