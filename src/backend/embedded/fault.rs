//! Test fault hook: crash the process at a chosen point of a store write.
//!
//! `XKI_EMBEDDED_FAULT=after-write-before-rename` makes the writer call
//! `std::process::abort()` once the new store has been written to its temporary file and
//! fsynced, but before it is renamed over the store. Tests use it to prove that a crash at the
//! worst moment leaves the old store intact. The variable is read on every write (writes are
//! rare and already pay for fsync), never on the encrypt/decrypt path.

/// Environment variable selecting the fault.
pub const FAULT_ENV: &str = "XKI_EMBEDDED_FAULT";

/// Where in a write a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// The temp file is complete and durable; the rename has not happened.
    AfterWriteBeforeRename,
}

impl FaultPoint {
    /// The value of [`FAULT_ENV`] that selects this point.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterWriteBeforeRename => "after-write-before-rename",
        }
    }
}

/// Abort the process if [`FAULT_ENV`] selects `point`.
pub fn maybe_crash(point: FaultPoint) {
    if std::env::var_os(FAULT_ENV).is_some_and(|v| v == point.name()) {
        log::warn!(
            "{FAULT_ENV}={}: aborting the process on purpose",
            point.name()
        );
        std::process::abort();
    }
}
