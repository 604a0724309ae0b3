//! Process-wide registry of loaded vendor PKCS#11 libraries.
//!
//! A PKCS#11 library has one global state per process, so every backend on the same library
//! (keyed by canonical path) shares one `cryptoki::context::Pkcs11`. Ownership rule:
//! - the first backend calls `C_Initialize` (OS locking). `CKR_OK` means *we* own the
//!   initialisation; `CKR_CRYPTOKI_ALREADY_INITIALIZED` means the host process (or someone
//!   else) does, and we share it without ever finalising it;
//! - `C_Finalize` is called when the last backend sharing our initialisation releases its
//!   [`Lease`], and only if we owned it.
//!
//! Libraries are never unloaded (`dlclose`): many vendor libraries (SoftHSM2 included) register
//! process-exit handlers and crash if unloaded, and a later open reuses the loaded copy.
//!
//! Fork: the registry remembers the pid it belongs to. In a forked child the inherited entries
//! describe the parent's initialisation, so the first acquire in the child forgets those counts
//! (the parent's backends are leaked in the child and never release). A library the parent
//! process had initialised *itself* is finalized once in the child (dropping the copied state:
//! sessions, logins, vendor connections) and initialised again, so the child owns a clean
//! initialisation. SoftHSM2 2.6 does not reset itself in a child: without that finalize it
//! answers `CKR_CRYPTOKI_ALREADY_INITIALIZED` and keeps serving the copied state (which also
//! works; that is the path taken when the host, not we, initialised the library).

use super::raw::GcmCalls;
use crate::rv::Rv;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::{hash_map, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One loaded library and who holds it.
struct Entry {
    ctx: Pkcs11,
    /// Backends currently holding a lease.
    users: usize,
    /// Whether our `C_Initialize` returned `CKR_OK` (we must finalize when the last user goes).
    owned: bool,
    /// The library's own GCM entry points (see `raw.rs`), if it exports them.
    gcm: Option<GcmCalls>,
    /// Bumped by every [`Lease::reinitialise`]: sessions and object handles of an older
    /// generation are dead.
    generation: Arc<AtomicU64>,
}

struct Registry {
    /// The process the entries belong to (see the fork note above).
    pid: u32,
    libs: HashMap<PathBuf, Entry>,
}

static REGISTRY: Lazy<Mutex<Registry>> = Lazy::new(|| {
    Mutex::new(Registry {
        pid: std::process::id(),
        libs: HashMap::new(),
    })
});

/// Why a library could not be acquired (always reported under the `module` key).
#[derive(Debug)]
pub(crate) struct LoadError {
    pub rv: Rv,
    pub problem: String,
}

/// A backend's share of an initialised library. Releasing it (explicitly or on drop) may
/// finalize the library, per the ownership rule.
pub(crate) struct Lease {
    path: PathBuf,
    ctx: Pkcs11,
    gcm: Option<GcmCalls>,
    generation: Arc<AtomicU64>,
    pid: u32,
    released: bool,
}

impl Lease {
    /// The shared cryptoki context.
    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.ctx
    }

    /// The library's own single-part GCM entry points, if found.
    pub(crate) fn gcm(&self) -> Option<GcmCalls> {
        self.gcm
    }

    /// Whether this process initialised the library itself (for tests and health reports).
    pub(crate) fn owns_initialisation(&self) -> bool {
        let reg = REGISTRY.lock();
        reg.pid == self.pid && reg.libs.get(&self.path).is_some_and(|e| e.owned)
    }

    /// How many times the library was re-initialised (see [`Lease::reinitialise`]). A
    /// backend that sees this change drops its sessions and finds its keys again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The shared counter behind [`Lease::generation`], for a lock-free check per call.
    pub(crate) fn generation_counter(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    /// `C_Finalize` then `C_Initialize` the library, for a token that only comes back that
    /// way (see `quirks.rs`). Only an initialisation we own is touched (never the host's), and
    /// the caller guarantees that no call into the library is running (the object-write lock
    /// held exclusively). Every session and object handle of every backend on the library dies:
    /// the generation tells them.
    pub(crate) fn reinitialise(&self) -> Result<(), Rv> {
        let mut reg = REGISTRY.lock();
        if reg.pid != self.pid {
            return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
        }
        let Some(entry) = reg.libs.get_mut(&self.path) else {
            return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
        };
        if !entry.owned {
            return Err(Rv::FUNCTION_FAILED);
        }
        if let Err(e) = entry.ctx.clone().finalize() {
            log::warn!(
                "C_Finalize of {} failed: {}",
                self.path.display(),
                super::errors::rv_of(&e)
            );
        }
        entry.generation.fetch_add(1, Ordering::AcqRel);
        let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
        match entry.ctx.initialize(args) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => {
                let rv = super::errors::rv_of(&e);
                log::error!("C_Initialize of {} failed: {rv}", self.path.display());
                Err(rv)
            }
        }
    }

    /// Give up this share; the last user of an initialisation we own finalizes the library.
    /// Idempotent.
    pub(crate) fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut reg = REGISTRY.lock();
        // A lease inherited across fork belongs to the parent's initialisation: never touch it.
        if reg.pid != self.pid {
            return;
        }
        let Some(entry) = reg.libs.get_mut(&self.path) else {
            return;
        };
        entry.users = entry.users.saturating_sub(1);
        if entry.users == 0 && std::mem::replace(&mut entry.owned, false) {
            // The context stays loaded in the registry; finalize only ends the library's state.
            if let Err(e) = entry.ctx.clone().finalize() {
                log::warn!(
                    "C_Finalize of {} failed: {}",
                    self.path.display(),
                    super::errors::rv_of(&e)
                );
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// Load (once per process) and initialise (per the ownership rule) the library at `module`.
pub(crate) fn acquire(module: &Path) -> Result<Lease, LoadError> {
    let path = std::fs::canonicalize(module).map_err(|e| LoadError {
        rv: Rv::GENERAL_ERROR,
        problem: format!("cannot load PKCS#11 library {}: {e}", module.display()),
    })?;
    let pid = std::process::id();
    let mut reg = REGISTRY.lock();
    if reg.pid != pid {
        // Forked child: the parent's counts mean nothing here. Keep the loaded contexts (the
        // mapping was inherited). A library the parent had initialised itself carries the
        // parent's state (sessions, connections) into the child: finalize that copy so the
        // child starts clean. One the host had initialised is left to the host.
        reg.pid = pid;
        for (path, entry) in reg.libs.iter_mut() {
            if entry.owned {
                if let Err(e) = entry.ctx.clone().finalize() {
                    log::info!(
                        "forked child: C_Finalize of the inherited {} state: {}",
                        path.display(),
                        super::errors::rv_of(&e)
                    );
                }
            }
            entry.users = 0;
            entry.owned = false;
        }
    }
    let entry = match reg.libs.entry(path.clone()) {
        hash_map::Entry::Occupied(o) => o.into_mut(),
        hash_map::Entry::Vacant(v) => {
            let ctx = Pkcs11::new(&path).map_err(|e| LoadError {
                rv: Rv::GENERAL_ERROR,
                problem: format!("cannot load PKCS#11 library {}: {e}", path.display()),
            })?;
            let gcm = GcmCalls::of_loaded(&path);
            if gcm.is_none() {
                log::info!(
                    "{}: no direct GCM entry points; using cryptoki's two-call path",
                    path.display()
                );
            }
            v.insert(Entry {
                ctx,
                users: 0,
                owned: false,
                gcm,
                generation: Arc::new(AtomicU64::new(0)),
            })
        }
    };
    if entry.users == 0 {
        let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
        match entry.ctx.initialize(args) {
            Ok(()) => entry.owned = true,
            Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                log::info!(
                    "{} was already initialised by the host process; sharing it (never finalized by us)",
                    path.display()
                );
                entry.owned = false;
            }
            Err(e) => {
                return Err(LoadError {
                    rv: super::errors::rv_of(&e),
                    problem: format!("C_Initialize of {} failed: {e}", path.display()),
                })
            }
        }
    }
    entry.users += 1;
    Ok(Lease {
        path,
        ctx: entry.ctx.clone(),
        gcm: entry.gcm,
        generation: entry.generation.clone(),
        pid,
        released: false,
    })
}
