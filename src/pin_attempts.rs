//! The user-PIN attempt counter of a slot, shared by every process that uses the same config.
//!
//! The module checks the caller's PIN itself (the HSM never sees wrong PINs), so it must count
//! them too. The counter lives in a small state file (`failures=N`), replaced atomically
//! (write a temporary file, `fsync`, `rename`, `fsync` the directory) under an exclusive
//! `flock` on a separate lock file, which is never replaced, so that concurrent processes
//! serialise on one inode.
//!
//! A login attempt is counted *before* the PIN is compared and forgiven after a match, so no
//! crash, kill or timing trick between the comparison and the write can give a free guess.
//! Fail closed: when the counter cannot be read, locked or written, no PIN is compared and
//! `C_Login` fails (`CKR_FUNCTION_FAILED`, logged); a state file that does not parse counts
//! as locked. Only the operator lifts a lock ([`PinAttempts::unlock`], used by
//! `xki-proxy pin unlock`).

use crate::rv::{CkResult, Rv};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `CKR_PIN_LOCKED`.
pub const PIN_LOCKED: Rv = Rv(pkcs11_sys::CKR_PIN_LOCKED);

/// A slot's attempt policy and where its counter lives.
#[derive(Debug, Clone)]
pub struct PinAttempts {
    /// The state file.
    path: PathBuf,
    /// Consecutive failures that lock the slot; 0 = unlimited (nothing is stored).
    max: u32,
}

/// What `CK_TOKEN_INFO` reports about the user PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinStatus {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The configured limit (0 = unlimited).
    pub max: u32,
}

impl PinStatus {
    /// Whether logins are refused.
    pub fn locked(&self) -> bool {
        self.max != 0 && self.failures >= self.max
    }

    /// `CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED`, as they apply.
    pub fn token_flags(&self) -> u64 {
        use pkcs11_sys::{CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED};
        if self.max == 0 {
            return 0;
        }
        let mut flags = 0;
        if self.failures > 0 {
            flags |= CKF_USER_PIN_COUNT_LOW;
        }
        if self.locked() {
            flags |= CKF_USER_PIN_LOCKED;
        } else if self.failures + 1 == self.max {
            flags |= CKF_USER_PIN_FINAL_TRY;
        }
        flags
    }
}

/// An attempt in progress: the counter already holds it, and the lock is held until the
/// outcome is recorded.
pub struct Attempt<'a> {
    owner: &'a PinAttempts,
    /// The exclusive lock (released when dropped); `None` when unlimited.
    lock: Option<File>,
    /// Failures including this attempt.
    failures: u32,
}

/// The outcome of a counted attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The PIN matched; the counter is back at 0.
    Accepted,
    /// Wrong PIN; the slot is not locked yet.
    Wrong(PinStatus),
    /// Wrong PIN, and this failure locked the slot.
    LockedNow(PinStatus),
}

impl PinAttempts {
    /// The policy of a slot: at most `max` consecutive failures (0 = unlimited), counted in
    /// `path`.
    pub fn new(path: PathBuf, max: u32) -> PinAttempts {
        PinAttempts { path, max }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Open the lock file (creating it and its directory, owner-only) and lock it.
    fn lock(&self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::config::create_private_dir(dir)?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())?;
        // SAFETY: flock on a descriptor this function owns; it blocks until the lock is ours.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f)
    }

    /// Read the counter: 0 when no file exists; `max` (locked) when it does not parse.
    fn read(&self) -> std::io::Result<u32> {
        let mut text = String::new();
        match File::open(&self.path) {
            Ok(f) => {
                f.take(64).read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        }
        match text
            .trim()
            .strip_prefix("failures=")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => Ok(n),
            None => {
                log::error!(
                    "PIN attempt state {} does not parse: the slot counts as locked until the operator unlocks it",
                    self.path.display()
                );
                Ok(self.max.max(1))
            }
        }
    }

    /// Replace the counter durably (the caller holds the lock).
    fn write(&self, failures: u32) -> std::io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("failures={failures}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn failed(&self, what: &str, e: std::io::Error) -> Rv {
        log::error!(
            "PIN attempt counter {}: cannot {what}: {e}; C_Login is refused until it can be",
            self.path.display()
        );
        Rv::FUNCTION_FAILED
    }

    /// The counter as `CK_TOKEN_INFO` reports it; an unreadable file reads as locked.
    pub fn status(&self) -> PinStatus {
        if self.max == 0 {
            return PinStatus {
                failures: 0,
                max: 0,
            };
        }
        let failures = self.read().unwrap_or_else(|e| {
            log::error!(
                "PIN attempt counter {}: cannot read: {e}",
                self.path.display()
            );
            self.max
        });
        PinStatus {
            failures,
            max: self.max,
        }
    }

    /// Start a login attempt: `CKR_PIN_LOCKED` when locked, else the attempt is counted
    /// (durably) before the caller compares the PIN.
    pub fn begin(&self) -> CkResult<Attempt<'_>> {
        if self.max == 0 {
            return Ok(Attempt {
                owner: self,
                lock: None,
                failures: 0,
            });
        }
        let lock = self.lock().map_err(|e| self.failed("lock", e))?;
        let before = self.read().map_err(|e| self.failed("read", e))?;
        if before >= self.max {
            return Err(PIN_LOCKED);
        }
        let failures = before + 1;
        self.write(failures).map_err(|e| self.failed("write", e))?;
        Ok(Attempt {
            owner: self,
            lock: Some(lock),
            failures,
        })
    }

    /// The operator's unlock: the counter back to 0. Returns the failures it had.
    pub fn unlock(&self) -> std::io::Result<u32> {
        let _lock = self.lock()?;
        let before = self.read()?;
        self.write(0)?;
        Ok(before)
    }
}

impl Attempt<'_> {
    /// Record the comparison's result and release the lock.
    pub fn finish(self, matched: bool) -> Outcome {
        let owner = self.owner;
        if owner.max == 0 {
            return if matched {
                Outcome::Accepted
            } else {
                Outcome::Wrong(PinStatus {
                    failures: 0,
                    max: 0,
                })
            };
        }
        if matched {
            if let Err(e) = owner.write(0) {
                // The login stands; the counter keeps one failure too many (fail closed).
                log::error!(
                    "PIN attempt counter {}: cannot reset after a good PIN: {e}",
                    owner.path.display()
                );
            }
            drop(self.lock);
            return Outcome::Accepted;
        }
        let status = PinStatus {
            failures: self.failures,
            max: owner.max,
        };
        drop(self.lock);
        if status.locked() {
            Outcome::LockedNow(status)
        } else {
            Outcome::Wrong(status)
        }
    }
}

/// The operator's unlock of the slot labelled `label` in `config` (what
/// `xki-proxy pin unlock` runs): its counter back to 0, and a `pin-unlock` record in the
/// config's audit trail. Returns the failures the counter had.
pub fn operator_unlock(config: &crate::config::Config, label: &str) -> Result<u32, String> {
    let slot = config
        .slots
        .iter()
        .find(|s| s.label == label)
        .ok_or_else(|| format!("{}: no [[slot]] labelled {label:?}", config.source))?;
    let attempts = PinAttempts::new(slot.pin_state_path(), slot.max_pin_attempts);
    let before = attempts
        .unlock()
        .map_err(|e| format!("{}: {e}", attempts.path().display()))?;
    // The record goes where the module writes its own (synchronously: this is a CLI).
    crate::logging::install_default();
    let synchronous = crate::config::Config {
        audit_flush_ms: 0,
        ..config.clone()
    };
    crate::logging::configure(&synchronous)?;
    crate::audit::file::configure(&synchronous, false)?;
    let record = crate::audit::Record {
        op: "pin-unlock",
        slot: label,
        key: b"",
        mechanism: "",
        bytes_in: 0,
        bytes_out: 0,
    };
    let _ = crate::audit::record(record, Ok(()));
    crate::audit::file::close();
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_locks_unlocks_and_reports_the_flags() {
        use pkcs11_sys::{CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED};
        let dir = tempfile::tempdir().unwrap();
        let p = PinAttempts::new(dir.path().join("sub/slot.state"), 3);
        assert_eq!(p.status().token_flags(), 0);
        assert_eq!(
            p.begin().unwrap().finish(false),
            Outcome::Wrong(PinStatus {
                failures: 1,
                max: 3
            })
        );
        assert_eq!(p.status().token_flags(), CKF_USER_PIN_COUNT_LOW);
        // A good PIN forgives.
        assert_eq!(p.begin().unwrap().finish(true), Outcome::Accepted);
        assert_eq!(p.status().failures, 0);
        p.begin().unwrap().finish(false);
        p.begin().unwrap().finish(false);
        assert_eq!(
            p.status().token_flags(),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
        );
        assert!(matches!(
            p.begin().unwrap().finish(false),
            Outcome::LockedNow(_)
        ));
        assert_eq!(
            p.status().token_flags(),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED
        );
        // Locked: nothing is compared, the right PIN included.
        assert_eq!(p.begin().err(), Some(PIN_LOCKED));
        // A second policy object on the same file (another process) sees the same counter.
        let other = PinAttempts::new(dir.path().join("sub/slot.state"), 3);
        assert!(other.status().locked());
        assert_eq!(other.unlock().unwrap(), 3);
        assert_eq!(p.begin().unwrap().finish(true), Outcome::Accepted);
    }

    #[test]
    fn an_attempt_is_counted_before_the_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let p = PinAttempts::new(dir.path().join("s.state"), 10);
        let attempt = p.begin().unwrap();
        // A process killed here has spent the attempt.
        std::mem::forget(attempt);
        assert_eq!(p.status().failures, 1);
    }

    #[test]
    fn fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        // A counter that does not parse counts as locked.
        let p = PinAttempts::new(dir.path().join("s.state"), 5);
        std::fs::write(p.path(), "garbage").unwrap();
        assert!(p.status().locked());
        assert_eq!(p.begin().err(), Some(PIN_LOCKED));
        // A counter that cannot be written: no attempt at all.
        let blocked = PinAttempts::new(dir.path().join("s.state/inside"), 5);
        assert_eq!(blocked.begin().err(), Some(Rv::FUNCTION_FAILED));
        // Unlimited: nothing is stored.
        let free = PinAttempts::new(dir.path().join("none/x.state"), 0);
        assert_eq!(free.begin().unwrap().finish(false), {
            Outcome::Wrong(PinStatus {
                failures: 0,
                max: 0,
            })
        });
        assert!(!dir.path().join("none").exists());
    }
}
