//! Member health: the three states, the error classes that take a member out of service, and
//! the snapshot the status interface reports.

use crate::rv::Rv;
use pkcs11_sys::*;

/// A member's state as the status interface reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// In service, nothing wrong known.
    Active,
    /// In service, but something needs an operator: key mismatches with the other members, or
    /// abandoned calls still stuck inside the vendor library.
    Degraded,
    /// Out of service (failed or timed out); the probe thread returns it when it answers.
    Unavailable,
}

impl MemberState {
    /// The `XKI_MEMBER_*` code of `include/xki_pkcs11.h`.
    pub fn code(self) -> u64 {
        match self {
            MemberState::Active => 0,
            MemberState::Degraded => 1,
            MemberState::Unavailable => 2,
        }
    }
}

/// What the status interface reports about one member of a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The backend's name (`[backend.NAME]`).
    pub name: String,
    /// Current state.
    pub state: MemberState,
    /// Calls running on the member now.
    pub in_flight: u64,
    /// Calls the group gave up waiting for that are still inside the member's library.
    pub stuck_calls: u64,
    /// Keys of the group this member is missing or holds more than once.
    pub key_mismatches: u64,
    /// The last failure's code (`CKR_OK` when none); a timeout is `CKR_DEVICE_ERROR`.
    pub last_error: u64,
    /// The last failure or mismatch, for an operator (no secrets).
    pub last_error_text: String,
    /// Times the member was taken out of service.
    pub failures: u64,
}

/// Whether a member's answer means the member itself is broken, so the call is retried
/// elsewhere and the member leaves service until the probe finds it working again.
///
/// The set is the device and transport class: the token or its connection failed
/// (`CKR_DEVICE_ERROR`, `CKR_DEVICE_MEMORY`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`,
/// `CKR_TOKEN_NOT_RECOGNIZED`), the library lost its state (`CKR_CRYPTOKI_NOT_INITIALIZED`,
/// `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_SESSION_COUNT` and
/// `CKR_USER_NOT_LOGGED_IN`, which the backend already tried to repair by re-opening and
/// re-logging-in), or the library failed without saying why (`CKR_GENERAL_ERROR`,
/// `CKR_FUNCTION_FAILED`). Every other code is an answer about the request (a bad tag is
/// `CKR_ENCRYPTED_DATA_INVALID`, a key without CKA_ENCRYPT is `CKR_KEY_FUNCTION_NOT_PERMITTED`,
/// bad lengths, bad handles, ...): the member is healthy and the caller gets the code as is.
///
/// `CKR_GENERAL_ERROR`/`CKR_FUNCTION_FAILED` are in the set because HSM client libraries use
/// them for lost network links; the cost of a false positive is one retry on another member
/// and one probe, while a false negative would keep a broken member in rotation.
pub fn is_member_failure(rv: Rv) -> bool {
    matches!(
        rv.code(),
        CKR_DEVICE_ERROR
            | CKR_DEVICE_MEMORY
            | CKR_DEVICE_REMOVED
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_CRYPTOKI_NOT_INITIALIZED
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
            | CKR_SESSION_COUNT
            | CKR_USER_NOT_LOGGED_IN
            | CKR_GENERAL_ERROR
            | CKR_FUNCTION_FAILED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_errors_are_not_member_failures() {
        for rv in [
            Rv::ENCRYPTED_DATA_INVALID,
            Rv::KEY_FUNCTION_NOT_PERMITTED,
            Rv::DATA_LEN_RANGE,
            Rv::KEY_HANDLE_INVALID,
            Rv::MECHANISM_PARAM_INVALID,
            Rv::ARGUMENTS_BAD,
            Rv::ATTRIBUTE_READ_ONLY,
        ] {
            assert!(!is_member_failure(rv), "{rv}");
        }
        for rv in [
            Rv::DEVICE_ERROR,
            Rv::DEVICE_REMOVED,
            Rv::TOKEN_NOT_PRESENT,
            Rv::GENERAL_ERROR,
        ] {
            assert!(is_member_failure(rv), "{rv}");
        }
    }
}
