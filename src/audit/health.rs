//! Whether the audit trail can be written, and what the module does when it cannot.
//!
//! `audit_on_failure = "refuse"` (the default: fail closed): after a write of the audit file
//! fails (full disk, I/O error, short write), every key operation (encrypt, decrypt,
//! generate, set attributes, destroy) answers `CKR_DEVICE_ERROR` before it runs, until a
//! write succeeds again. The records that could not be written are kept in memory, in order,
//! and written first when space returns: none is dropped (`file.rs`).
//! `"continue"` (fail open): operations go on; every record that cannot be written is
//! dropped and counted ([`AuditStatus::lost`]), with a log line at most every
//! [`LOST_LOG_INTERVAL`].
//!
//! The counters are process-wide and readable through the `XKI Status` vendor interface
//! (`XKI_GetAuditStatus`), which the proxy exports as metrics.

use crate::rv::{CkResult, Rv};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the module does when an audit record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail closed: key operations are refused until records can be written again.
    #[default]
    Refuse,
    /// Fail open: operations go on; lost records are counted and logged (rate-limited).
    Continue,
}

/// The audit trail's state, as `XKI_GetAuditStatus` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStatus {
    /// An audit file is configured.
    pub file: bool,
    /// The configured policy.
    pub on_failure: OnFailure,
    /// The last write of the audit file failed and no write has succeeded since.
    pub failing: bool,
    /// Records dropped because they could not be written (fail-open only, plus the
    /// policy-refusal records of a fail-closed outage, see `audit::refusal`).
    pub lost: u64,
    /// Key operations refused because the audit file could not be written.
    pub refused: u64,
    /// Failed writes of the audit file (each failed `write(2)` of a batch counts once).
    pub write_errors: u64,
    /// Records waiting in memory to be written again (fail-closed outage).
    pub retained: u64,
}

/// Lost-record log lines are at most this frequent.
pub const LOST_LOG_INTERVAL: Duration = Duration::from_secs(10);

static REFUSE: AtomicBool = AtomicBool::new(true);
static FAILING: AtomicBool = AtomicBool::new(false);
static LOST: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
static RETAINED: AtomicU64 = AtomicU64::new(0);
/// Lost records not yet reported in a log line, and when the last line was written.
static LOST_LOG: Mutex<(u64, Option<Instant>)> = Mutex::new((0, None));

/// Set the policy (`C_Initialize`).
pub(crate) fn set_policy(on_failure: OnFailure) {
    REFUSE.store(on_failure == OnFailure::Refuse, Ordering::Relaxed);
}

/// The policy in force.
pub fn policy() -> OnFailure {
    if REFUSE.load(Ordering::Relaxed) {
        OnFailure::Refuse
    } else {
        OnFailure::Continue
    }
}

/// Fail-closed and the audit file is failing: key operations must not start.
pub(crate) fn refusing() -> bool {
    FAILING.load(Ordering::Acquire) && REFUSE.load(Ordering::Relaxed)
}

/// The check every key operation makes before it runs: `CKR_DEVICE_ERROR` while records
/// cannot be written in fail-closed mode. It first retries the retained records (at most one
/// caller at a time), so a module without a flusher thread recovers as soon as space returns.
pub(crate) fn gate() -> CkResult<()> {
    if !refusing() {
        return Ok(());
    }
    super::file::retry();
    if refusing() {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        return Err(Rv::DEVICE_ERROR);
    }
    Ok(())
}

/// A write failed (`retained`: records now waiting in memory).
pub(crate) fn write_failed(path: &std::path::Path, e: &std::io::Error, retained: u64) {
    WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
    RETAINED.store(retained, Ordering::Relaxed);
    let was = FAILING.swap(true, Ordering::AcqRel);
    if !was {
        match policy() {
            OnFailure::Refuse => log::error!(
                "audit: cannot write {}: {e}; key operations are refused (CKR_DEVICE_ERROR) \
                 until records can be written again (audit_on_failure = \"refuse\"); \
                 {retained} record(s) kept in memory",
                path.display()
            ),
            OnFailure::Continue => log::error!(
                "audit: cannot write {}: {e}; operations continue and unwritten records are \
                 dropped and counted (audit_on_failure = \"continue\")",
                path.display()
            ),
        }
    }
}

/// A write succeeded (after `written_retained` records that had waited in memory).
pub(crate) fn write_succeeded(path: &std::path::Path, written_retained: u64) {
    RETAINED.store(0, Ordering::Relaxed);
    if FAILING.swap(false, Ordering::AcqRel) {
        log::warn!(
            "audit: {} is writable again; {written_retained} record(s) kept in memory were \
             written",
            path.display()
        );
    }
}

/// `n` records were dropped: count them, and log (at most every [`LOST_LOG_INTERVAL`]).
pub(crate) fn lost(n: u64) {
    if n == 0 {
        return;
    }
    LOST.fetch_add(n, Ordering::Relaxed);
    // try_lock: a child forked while another thread held it must not hang here; the
    // count above is kept either way.
    let Some(mut log) = LOST_LOG.try_lock() else {
        return;
    };
    log.0 += n;
    let due = log.1.is_none_or(|at| at.elapsed() >= LOST_LOG_INTERVAL);
    if due {
        let unreported = std::mem::take(&mut log.0);
        log.1 = Some(Instant::now());
        drop(log);
        log::error!(
            "audit: {unreported} record(s) lost (could not be written; {} lost in total)",
            LOST.load(Ordering::Relaxed)
        );
    }
}

/// Forget a failure: a new audit file is installed, or a child forked (its copy has no
/// retained records). No lock, no allocation (it runs in the child's fork handler).
pub(crate) fn reset() {
    FAILING.store(false, Ordering::Relaxed);
    RETAINED.store(0, Ordering::Relaxed);
}

/// The counters and state now.
pub fn status() -> AuditStatus {
    AuditStatus {
        file: super::file::configured(),
        on_failure: policy(),
        failing: FAILING.load(Ordering::Acquire),
        lost: LOST.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
        write_errors: WRITE_ERRORS.load(Ordering::Relaxed),
        retained: RETAINED.load(Ordering::Relaxed),
    }
}
