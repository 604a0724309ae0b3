//! The module's "XKI Status" vendor interface (`include/xki_pkcs11.h`): per-member health of
//! the slot the proxy uses, when the loaded PKCS#11 library offers it (our module does;
//! SoftHSM2 and vendor libraries do not, and then the proxy reports its single token).
//!
//! The library is opened a second time by the same path with libloading: `dlopen` of an
//! already loaded library returns the same handle (and bumps its reference count), so the
//! table we get is the one of the instance cryptoki initialised. All `unsafe` of the proxy's
//! vendor-interface use lives in this file.

use std::ffi::{c_ulong, c_void};
use std::path::Path;

/// `CK_RV` / `CK_ULONG` on this platform (LP64: unsigned long).
type CkUlong = c_ulong;
const CKR_OK: CkUlong = 0;

/// `CK_VERSION`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CkVersion {
    major: u8,
    minor: u8,
}

/// `CK_INTERFACE`.
#[repr(C)]
struct CkInterface {
    name: *mut u8,
    function_list: *mut c_void,
    flags: CkUlong,
}

/// `XKI_MEMBER_STATUS`, layout as in `include/xki_pkcs11.h`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMemberStatus {
    name: [u8; 64],
    state: CkUlong,
    in_flight: CkUlong,
    stuck_calls: CkUlong,
    key_mismatches: CkUlong,
    failures: CkUlong,
    last_error: CkUlong,
    last_error_text: [u8; 128],
}

type GetCount = unsafe extern "C" fn(CkUlong, *mut CkUlong) -> CkUlong;
type GetStatus = unsafe extern "C" fn(CkUlong, CkUlong, *mut RawMemberStatus) -> CkUlong;

/// `XKI_AUDIT_STATUS`, layout as in `include/xki_pkcs11.h` (interface version 1.1).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawAuditStatus {
    flags: CkUlong,
    lost_records: CkUlong,
    refused_operations: CkUlong,
    write_errors: CkUlong,
    retained_records: CkUlong,
}

type GetAudit = unsafe extern "C" fn(*mut RawAuditStatus) -> CkUlong;
type ReopenLogs = unsafe extern "C" fn() -> CkUlong;

/// `XKI_STATUS_FUNCTION_LIST`; the entries are read as `Option` so a NULL slot is caught.
#[repr(C)]
struct RawStatusList {
    version: CkVersion,
    count: Option<GetCount>,
    status: Option<GetStatus>,
}

/// `XKI_STATUS_FUNCTION_LIST` of version 1.1: the 1.0 table, then two more entries.
#[repr(C)]
struct RawStatusList11 {
    base: RawStatusList,
    audit: Option<GetAudit>,
    reopen_logs: Option<ReopenLogs>,
}

/// `XKI_AUDIT_STATUS.flags` bits.
const XKI_AUDIT_FILE: CkUlong = 0x1;
const XKI_AUDIT_FAILING: CkUlong = 0x2;
const XKI_AUDIT_FAIL_OPEN: CkUlong = 0x4;

/// The module's audit trail, as `XKI_GetAuditStatus` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStatus {
    /// An audit file is configured.
    pub file: bool,
    /// Its last write failed (and none has succeeded since).
    pub failing: bool,
    /// `audit_on_failure = "continue"` (else fail-closed).
    pub fail_open: bool,
    /// Records dropped because they could not be written.
    pub lost_records: u64,
    /// Key operations the module refused because records could not be written.
    pub refused_operations: u64,
    /// Failed writes of the audit file.
    pub write_errors: u64,
    /// Records kept in memory until they can be written.
    pub retained_records: u64,
}

impl AuditStatus {
    /// The module refuses key operations for audit reasons now (fail-closed outage).
    pub fn refusing(&self) -> bool {
        self.failing && !self.fail_open
    }
}

type GetInterface =
    unsafe extern "C" fn(*mut u8, *mut CkVersion, *mut *mut CkInterface, CkUlong) -> CkUlong;

/// A member's state as the module reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// `XKI_MEMBER_ACTIVE`.
    Active = 0,
    /// `XKI_MEMBER_DEGRADED`.
    Degraded = 1,
    /// `XKI_MEMBER_UNAVAILABLE` (also any value this proxy does not know).
    Unavailable = 2,
}

impl MemberState {
    /// The GetHealthStatus spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "ACTIVE",
            MemberState::Degraded => "DEGRADED",
            MemberState::Unavailable => "UNAVAILABLE",
        }
    }

    /// Parse the GetHealthStatus spelling (anything else is UNAVAILABLE).
    pub fn parse(s: &str) -> MemberState {
        match s {
            "ACTIVE" => MemberState::Active,
            "DEGRADED" => MemberState::Degraded,
            _ => MemberState::Unavailable,
        }
    }
}

/// One token behind the proxy's slot.
#[derive(Debug, Clone)]
pub struct Member {
    /// Backend name in the module config.
    pub name: String,
    /// Its state.
    pub state: MemberState,
    /// Calls running on it now.
    pub in_flight: u64,
    /// Abandoned (timed-out) calls still inside its library.
    pub stuck_calls: u64,
    /// Times it was taken out of service.
    pub failures: u64,
    /// Last failure or mismatch as text ("" if none).
    pub last_error: String,
}

/// The vendor interface of the loaded module, if it has one.
pub struct StatusInterface {
    count: GetCount,
    status: GetStatus,
    /// Version 1.1 entries, when the module has them.
    audit: Option<GetAudit>,
    reopen_logs: Option<ReopenLogs>,
    /// Keeps the library (and so the function table) loaded as long as we hold the pointers.
    _lib: libloading::Library,
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).trim_end().to_string()
}

impl StatusInterface {
    /// Look the interface up in the library at `path` (already loaded and initialised by
    /// cryptoki). `None` when the library has no `C_GetInterface`, does not know the name,
    /// or hands out anything unexpected.
    pub fn open(path: &Path) -> Option<StatusInterface> {
        // SAFETY: loading a library runs its initialisers; this one is already loaded in this
        // process (cryptoki opened it by the same path), so dlopen only returns its handle.
        let lib = unsafe { libloading::Library::new(path) }.ok()?;
        // SAFETY: `C_GetInterface` has this signature in PKCS#11 3.0; a library that exports
        // the name with another type is not a PKCS#11 module and would break cryptoki too.
        let get: GetInterface = unsafe { lib.get::<GetInterface>(b"C_GetInterface\0") }
            .map(|s| *s)
            .ok()?;
        let mut name = *b"XKI Status\0";
        let mut version = CkVersion { major: 1, minor: 0 };
        let mut iface: *mut CkInterface = std::ptr::null_mut();
        // SAFETY: every pointer is a live local: a NUL-terminated name, a version and an
        // out-pointer; flags 0 as the header requires.
        let rv = unsafe { get(name.as_mut_ptr(), &mut version, &mut iface, 0) };
        if rv != CKR_OK || iface.is_null() {
            return None;
        }
        // SAFETY: on CKR_OK the module points `iface` at one of its static CK_INTERFACE
        // records (non-NULL, checked above), valid while the library stays loaded (`lib`).
        let list = unsafe { (*iface).function_list }.cast::<RawStatusList>();
        if list.is_null() {
            return None;
        }
        // SAFETY: non-NULL, and for the name "XKI Status" version 1.x the header defines the
        // table as XKI_STATUS_FUNCTION_LIST (its 1.0 part at least); static in the module
        // while `lib` is held.
        let base = unsafe { &*list };
        if base.version.major != 1 {
            return None;
        }
        // Version 1.1 and later begin with the 1.1 table (the header's compatibility rule).
        let (audit, reopen_logs) = if base.version.minor >= 1 {
            // SAFETY: a table of version 1.1 or later is an XKI_STATUS_FUNCTION_LIST with the
            // two 1.1 entries after the 1.0 ones (`include/xki_pkcs11.h`).
            let t = unsafe { &*list.cast::<RawStatusList11>() };
            (t.audit, t.reopen_logs)
        } else {
            (None, None)
        };
        Some(StatusInterface {
            count: base.count?,
            status: base.status?,
            audit,
            reopen_logs,
            _lib: lib,
        })
    }

    /// The module's audit state (`None` before interface version 1.1, or if it refuses).
    pub fn audit(&self) -> Option<AuditStatus> {
        let get = self.audit?;
        let mut raw = RawAuditStatus::default();
        // SAFETY: a function from the module's status table (kept loaded by `_lib`) with a
        // live, writable XKI_AUDIT_STATUS.
        if unsafe { get(&mut raw) } != CKR_OK {
            return None;
        }
        Some(AuditStatus {
            file: raw.flags & XKI_AUDIT_FILE != 0,
            failing: raw.flags & XKI_AUDIT_FAILING != 0,
            fail_open: raw.flags & XKI_AUDIT_FAIL_OPEN != 0,
            lost_records: raw.lost_records,
            refused_operations: raw.refused_operations,
            write_errors: raw.write_errors,
            retained_records: raw.retained_records,
        })
    }

    /// Ask the module to open its log and audit files again (rotation); `false` when the
    /// module has no such function.
    pub fn reopen_logs(&self) -> bool {
        match self.reopen_logs {
            // SAFETY: a function from the module's status table (kept loaded by `_lib`)
            // taking no arguments.
            Some(f) => (unsafe { f() }) == CKR_OK,
            None => false,
        }
    }

    /// Every member of `slot`, in configured order; `None` if the module refuses.
    pub fn members(&self, slot: u64) -> Option<Vec<Member>> {
        let slot = CkUlong::try_from(slot).ok()?;
        let mut n: CkUlong = 0;
        // SAFETY: a function from the module's status table (kept loaded by `_lib`) with a
        // live out-parameter.
        if unsafe { (self.count)(slot, &mut n) } != CKR_OK {
            return None;
        }
        let mut out = Vec::with_capacity(n.min(64) as usize);
        for i in 0..n.min(64) {
            let mut raw = RawMemberStatus {
                name: [b' '; 64],
                state: 0,
                in_flight: 0,
                stuck_calls: 0,
                key_mismatches: 0,
                failures: 0,
                last_error: 0,
                last_error_text: [b' '; 128],
            };
            // SAFETY: as above; `raw` is a live, writable XKI_MEMBER_STATUS.
            if unsafe { (self.status)(slot, i, &mut raw) } != CKR_OK {
                return None;
            }
            out.push(Member {
                name: text(&raw.name),
                state: match raw.state {
                    0 => MemberState::Active,
                    1 => MemberState::Degraded,
                    _ => MemberState::Unavailable,
                },
                in_flight: raw.in_flight,
                stuck_calls: raw.stuck_calls,
                failures: raw.failures,
                last_error: text(&raw.last_error_text),
            });
        }
        Some(out)
    }
}
