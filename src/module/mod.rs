//! The module core: `C_Initialize`/`C_Finalize` lifecycle, global state, fork detection, and
//! the shared plumbing every call uses. The calls themselves live in the submodules, one
//! concern each; `api.rs` reaches them through the re-exports below.
//!
//! Global state is one `Arc<Module>` behind a read-mostly lock. Calls that reach a backend
//! hold it only long enough to clone the `Arc`; calls that never do (length queries, `C_*Init`)
//! hold the read lock for their short run instead (`with_module`: fewer atomic operations).
//! No lock of this file is ever held across a backend call.

use crate::audit::{self, Record};
use crate::backend::{self, Backend, MechanismInfo, NewKey, TokenDescription};
use crate::config::Config;
use crate::keystate;
use crate::mechanism::{Mechanism, GCM_TAG_LEN};
use crate::object::ObjectTable;
use crate::policy;
use crate::rv::{CkResult, Rv};
use crate::session::{no_plaintext, CryptOp, Operation, SessionTable, MAX_MULTIPART};
use crate::slot::Slot;
use crate::types::{
    Attribute, AttributeAnswer, InitArgs, ModuleInfo, Plaintext, SessionInfo, SinglePart, SlotInfo,
    TokenInfo,
};
use parking_lot::{Mutex, RwLock};
use pkcs11_sys::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

mod assemble;
mod crypt;
mod find;
mod key_state;
mod keygen;
mod message;
mod objects;
mod refusals;
mod sessions;
mod slots;

use assemble::build;
pub use crypt::*;
pub use keygen::*;
pub use message::*;
pub use objects::*;
pub use refusals::*;
pub use sessions::*;
pub use slots::*;

/// Everything that exists between `C_Initialize` and `C_Finalize`.
pub struct Module {
    slots: Vec<SlotState>,
    sessions: SessionTable,
    objects: ObjectTable,
    /// Each opened backend once, for shutdown.
    backends: Vec<Arc<dyn Backend>>,
}

/// A slot plus what was learnt about its token at initialisation.
struct SlotState {
    slot: Slot,
    token: TokenDescription,
    /// Module mechanisms the backend really supports, with the module's info for them.
    mechanisms: Vec<(CK_MECHANISM_TYPE, MechanismInfo)>,
    /// The slot label's number in the audit name table (see `audit::names`).
    audit_name: Option<crate::audit::names::NameId>,
}

static STATE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

/// Serialises `C_Initialize`/`C_Finalize` without blocking other calls.
static LIFECYCLE: Mutex<()> = Mutex::new(());

/// Set in a child after `fork()`: the inherited state belongs to the parent.
static FORKED: AtomicBool = AtomicBool::new(false);

static ATFORK: Once = Once::new();

extern "C" fn mark_forked_child() {
    FORKED.store(true, Ordering::SeqCst);
}

fn module() -> CkResult<Arc<Module>> {
    if FORKED.load(Ordering::Relaxed) {
        // PKCS#11: a child process must call C_Initialize itself.
        return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
    }
    // Recursive read, like `with_module`: a call nested in one never waits for a writer.
    STATE
        .read_recursive()
        .clone()
        .ok_or(Rv::CRYPTOKI_NOT_INITIALIZED)
}

/// Run `f` on the module with the state's read lock held instead of a reference count taken:
/// half the atomic operations of [`module`], for the calls that run on every operation and
/// never reach a backend (length queries, `C_*Init`). `f` must not call a backend: a
/// `C_Finalize` waits for it. Recursive read, so a nested [`module`] never waits for a
/// queued writer.
fn with_module<R>(f: impl FnOnce(&Module) -> CkResult<R>) -> CkResult<R> {
    if FORKED.load(Ordering::Relaxed) {
        return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
    }
    let state = STATE.read_recursive();
    f(state.as_deref().ok_or(Rv::CRYPTOKI_NOT_INITIALIZED)?)
}

/// Version reported in `CK_INFO.libraryVersion`.
fn library_version() -> (u8, u8) {
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    (major, minor)
}

pub fn initialize(args: Option<InitArgs>) -> CkResult<()> {
    if let Some(a) = args {
        if a.reserved_non_null {
            return Err(Rv::ARGUMENTS_BAD);
        }
        match a.callbacks_set {
            0 => {}
            // Callbacks given: we can only lock with the OS primitives, so they must allow it.
            4 if a.os_locking_ok => {}
            4 => return Err(Rv::CANT_LOCK),
            _ => return Err(Rv::ARGUMENTS_BAD),
        }
    }
    crate::logging::install_default();
    let _lifecycle = LIFECYCLE.lock();
    if FORKED.swap(false, Ordering::SeqCst) {
        // Inherited from the parent: its backend sessions belong to the parent process.
        // Dropping them would close the parent's sessions in the child's copy of the HSM
        // library, so leak them deliberately.
        if let Some(old) = STATE.write().take() {
            std::mem::forget(old);
        }
    }
    if STATE.read().is_some() {
        return Err(Rv::CRYPTOKI_ALREADY_INITIALIZED);
    }
    ATFORK.call_once(|| {
        // The child handler only stores to an atomic: async-signal-safe, as fork requires.
        crate::process::on_fork(None, None, Some(mark_forked_child));
    });
    let config = match Config::discover() {
        Ok(Some(c)) => c,
        Ok(None) => Config::embedded_default().map_err(config_failed)?,
        Err(e) => return Err(config_failed(e)),
    };
    let threads_allowed = !args.is_some_and(|a| a.no_os_threads);
    if let Err(e) = crate::logging::configure(&config)
        .and_then(|()| crate::audit::file::configure(&config, threads_allowed))
    {
        log::error!("{}: {e}", config.source);
        return Err(Rv::FUNCTION_FAILED);
    }
    let module = build(&config, args.is_some_and(|a| a.no_os_threads))?;
    log::info!(
        "initialised from {} with {} slot(s)",
        config.source,
        module.slots.len()
    );
    *STATE.write() = Some(Arc::new(module));
    Ok(())
}

fn config_failed(e: crate::config::ConfigError) -> Rv {
    log::error!("configuration error: {e}");
    Rv::FUNCTION_FAILED
}

pub fn finalize() -> CkResult<()> {
    let _lifecycle = LIFECYCLE.lock();
    if FORKED.load(Ordering::SeqCst) {
        return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
    }
    let module = STATE.write().take().ok_or(Rv::CRYPTOKI_NOT_INITIALIZED)?;
    for b in &module.backends {
        b.shutdown();
    }
    log::info!("finalised");
    // Every audit record of this initialisation is in the file when C_Finalize returns.
    crate::audit::file::close();
    Ok(())
}

pub fn get_info() -> CkResult<ModuleInfo> {
    module()?;
    Ok(ModuleInfo {
        cryptoki_version: (2, 40),
        manufacturer: "xki-bridge".into(),
        description: "xki-bridge HYOK PKCS#11 module".into(),
        library_version: library_version(),
    })
}

impl Module {
    fn slot(&self, id: u64) -> CkResult<&SlotState> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(Rv::SLOT_ID_INVALID)
    }

    /// A session's slot, the slot's index, and whether the session is read-write.
    fn session(&self, handle: u64) -> CkResult<(&SlotState, usize, bool)> {
        let (index, read_write) = self.sessions.with(handle, |s| (s.slot, s.read_write))?;
        Ok((&self.slots[index], index, read_write))
    }

    /// [`Module::key`] without a copy of the entry: `f` runs on it under the object table's
    /// read lock (so `f` must not call a backend).
    fn with_key<R>(
        &self,
        slot: &SlotState,
        slot_index: usize,
        handle: u64,
        invalid: Rv,
        f: impl FnOnce(&crate::object::ObjectEntry) -> R,
    ) -> CkResult<R> {
        slot.slot.require_login()?;
        self.objects
            .with(handle, |e| (e.slot == slot_index).then(|| f(e)))
            .ok()
            .flatten()
            .ok_or(invalid)
    }

    /// A key handle of the session's slot, for a logged-in user.
    fn key(
        &self,
        slot: &SlotState,
        slot_index: usize,
        handle: u64,
        invalid: Rv,
    ) -> CkResult<crate::object::ObjectEntry> {
        self.with_key(slot, slot_index, handle, invalid, Clone::clone)
    }
}
