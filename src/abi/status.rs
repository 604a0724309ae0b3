//! The `XKI Status` vendor interface (PKCS#11 3.0 `C_GetInterface("XKI Status", ...)`):
//! health of the tokens behind each slot, for the proxy's health checks. The C structs are
//! documented in `include/xki_pkcs11.h`; the layouts here must match it.

use super::buffers::{pad, Out};
use super::guard::guard;
use crate::api;
use pkcs11_sys::{CK_RV, CK_SLOT_ID, CK_ULONG, CK_ULONG_PTR, CK_UTF8CHAR, CK_VERSION};
use std::ffi::CStr;

/// The vendor interface's name.
pub(crate) const STATUS_INTERFACE_NAME: &CStr = c"XKI Status";

/// `XKI_MEMBER_STATUS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XkiMemberStatus {
    /// Backend name, blank padded, no NUL.
    pub name: [CK_UTF8CHAR; 64],
    /// `XKI_MEMBER_ACTIVE` (0), `XKI_MEMBER_DEGRADED` (1) or `XKI_MEMBER_UNAVAILABLE` (2).
    pub state: CK_ULONG,
    /// Calls running on the member now.
    pub inFlight: CK_ULONG,
    /// Abandoned calls still stuck in the member's library.
    pub stuckCalls: CK_ULONG,
    /// Group keys the member is missing or holds more than once.
    pub keyMismatches: CK_ULONG,
    /// Times the member was taken out of service.
    pub failures: CK_ULONG,
    /// Last failure (`CKR_OK` if none).
    pub lastError: CK_RV,
    /// Last failure as text, blank padded, no NUL.
    pub lastErrorText: [CK_UTF8CHAR; 128],
}

/// `XKI_AUDIT_STATUS.flags`: an audit file is configured.
pub const XKI_AUDIT_FILE: CK_ULONG = 0x1;
/// `XKI_AUDIT_STATUS.flags`: its last write failed.
pub const XKI_AUDIT_FAILING: CK_ULONG = 0x2;
/// `XKI_AUDIT_STATUS.flags`: `audit_on_failure = "continue"`.
pub const XKI_AUDIT_FAIL_OPEN: CK_ULONG = 0x4;

/// `XKI_AUDIT_STATUS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XkiAuditStatus {
    /// `XKI_AUDIT_*` bits.
    pub flags: CK_ULONG,
    /// Records dropped because they could not be written.
    pub lostRecords: CK_ULONG,
    /// Key operations refused because the audit file could not be written.
    pub refusedOperations: CK_ULONG,
    /// Failed writes of the audit file.
    pub writeErrors: CK_ULONG,
    /// Records kept in memory until they can be written.
    pub retainedRecords: CK_ULONG,
}

/// `XKI_STATUS_FUNCTION_LIST`.
#[repr(C)]
pub struct XkiStatusFunctionList {
    /// Interface version, 1.1.
    pub version: CK_VERSION,
    /// `XKI_GetMemberCount`.
    pub XKI_GetMemberCount: unsafe extern "C" fn(CK_SLOT_ID, CK_ULONG_PTR) -> CK_RV,
    /// `XKI_GetMemberStatus`.
    pub XKI_GetMemberStatus:
        unsafe extern "C" fn(CK_SLOT_ID, CK_ULONG, *mut XkiMemberStatus) -> CK_RV,
    /// `XKI_GetAuditStatus` (1.1).
    pub XKI_GetAuditStatus: unsafe extern "C" fn(*mut XkiAuditStatus) -> CK_RV,
    /// `XKI_ReopenLogs` (1.1).
    pub XKI_ReopenLogs: unsafe extern "C" fn() -> CK_RV,
}

/// The table `C_GetInterface("XKI Status")` hands out.
pub(crate) static STATUS_FUNCTION_LIST: XkiStatusFunctionList = XkiStatusFunctionList {
    version: CK_VERSION { major: 1, minor: 1 },
    XKI_GetMemberCount,
    XKI_GetMemberStatus,
    XKI_GetAuditStatus,
    XKI_ReopenLogs,
};

/// `XKI_GetMemberCount`: how many tokens serve `slotID` (1 unless it is a replica group).
///
/// # Safety
/// `pulCount` must be NULL (`CKR_ARGUMENTS_BAD`) or writable for one `CK_ULONG`.
unsafe extern "C" fn XKI_GetMemberCount(slotID: CK_SLOT_ID, pulCount: CK_ULONG_PTR) -> CK_RV {
    guard("XKI_GetMemberCount", || {
        // SAFETY: a non-NULL pulCount is writable (contract above).
        let out = unsafe { Out::new(pulCount) }?;
        out.write(api::member_count(slotID)?);
        Ok(())
    })
}

/// `XKI_GetMemberStatus`: health of member `ulIndex` (0-based, configured order) of `slotID`;
/// an index past the last member is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// `pStatus` must be NULL (`CKR_ARGUMENTS_BAD`) or writable for one `XKI_MEMBER_STATUS`.
unsafe extern "C" fn XKI_GetMemberStatus(
    slotID: CK_SLOT_ID,
    ulIndex: CK_ULONG,
    pStatus: *mut XkiMemberStatus,
) -> CK_RV {
    guard("XKI_GetMemberStatus", || {
        // SAFETY: a non-NULL pStatus is writable (contract above).
        let out = unsafe { Out::new(pStatus) }?;
        let s = api::member_status(slotID, ulIndex)?;
        let mut c = XkiMemberStatus {
            name: [b' '; 64],
            state: s.state.code(),
            inFlight: s.in_flight,
            stuckCalls: s.stuck_calls,
            keyMismatches: s.key_mismatches,
            failures: s.failures,
            lastError: s.last_error,
            lastErrorText: [b' '; 128],
        };
        pad(&mut c.name, &s.name);
        pad(&mut c.lastErrorText, &s.last_error_text);
        out.write(c);
        Ok(())
    })
}

/// `XKI_GetAuditStatus`: the audit trail's state and counters (process-wide).
///
/// # Safety
/// `pStatus` must be NULL (`CKR_ARGUMENTS_BAD`) or writable for one `XKI_AUDIT_STATUS`.
unsafe extern "C" fn XKI_GetAuditStatus(pStatus: *mut XkiAuditStatus) -> CK_RV {
    guard("XKI_GetAuditStatus", || {
        // SAFETY: a non-NULL pStatus is writable (contract above).
        let out = unsafe { Out::new(pStatus) }?;
        let s = api::audit_status();
        let bit = |set: bool, b: CK_ULONG| if set { b } else { 0 };
        out.write(XkiAuditStatus {
            flags: bit(s.file, XKI_AUDIT_FILE)
                | bit(s.failing, XKI_AUDIT_FAILING)
                | bit(
                    s.on_failure == crate::audit::health::OnFailure::Continue,
                    XKI_AUDIT_FAIL_OPEN,
                ),
            lostRecords: s.lost,
            refusedOperations: s.refused,
            writeErrors: s.write_errors,
            retainedRecords: s.retained,
        });
        Ok(())
    })
}

/// `XKI_ReopenLogs`: open the log and audit files again by their paths (log rotation).
unsafe extern "C" fn XKI_ReopenLogs() -> CK_RV {
    guard("XKI_ReopenLogs", || {
        api::reopen_logs();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs11_sys::{CKR_ARGUMENTS_BAD, CKR_CRYPTOKI_NOT_INITIALIZED};
    use std::ptr;

    #[test]
    fn checks_pointers_and_needs_initialize() {
        let mut n: CK_ULONG = 0;
        // SAFETY: NULL and a live local under test.
        unsafe {
            assert_eq!(XKI_GetMemberCount(0, ptr::null_mut()), CKR_ARGUMENTS_BAD);
            assert_eq!(
                XKI_GetMemberStatus(0, 0, ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(XKI_GetMemberCount(0, &mut n), CKR_CRYPTOKI_NOT_INITIALIZED);
            assert_eq!(XKI_GetAuditStatus(ptr::null_mut()), CKR_ARGUMENTS_BAD);
        }
    }
}
