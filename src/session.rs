//! Virtual sessions and the operation in progress in each.
//!
//! A virtual session holds no backend session: every backend call checks one out of the
//! backend's pool for just that call, so many sessions on many threads run in parallel and no
//! lock is ever held across a backend call. Multi-part GCM is buffered here and sent to the
//! backend as one operation at `*Final`, which is how a decrypt can promise to release no
//! plaintext before the tag has verified.

use crate::api::Plaintext;
use crate::backend::BackendKey;
use crate::mechanism::GcmParams;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Largest amount of data one multi-part operation may buffer (bytes).
pub const MAX_MULTIPART: usize = 16 * 1024 * 1024;

/// A key label as the audit record of an operation names it: inline up to 32 bytes (a copy
/// of a few bytes is cheaper than a shared reference's two atomic updates per operation).
pub type KeyLabel = smallvec::SmallVec<[u8; 32]>;

/// A GCM operation set up by `C_EncryptInit` / `C_DecryptInit`.
pub struct CryptOp {
    /// The key's label when the operation began, for the audit record.
    pub label: KeyLabel,
    /// The backend key.
    pub key: BackendKey,
    /// The checked GCM parameters.
    pub params: GcmParams,
    /// Data buffered by `*Update`; `None` until the first update (single-part allowed).
    pub buffered: Option<SecretBytes>,
}

/// The operation a session has in progress.
#[derive(Default)]
pub enum Operation {
    /// Nothing active.
    #[default]
    None,
    /// `C_FindObjects*` with the matching handles still to return.
    Find(std::collections::VecDeque<u64>),
    /// An encryption.
    Encrypt(CryptOp),
    /// A decryption.
    Decrypt(CryptOp),
}

/// One virtual session.
pub struct Session {
    /// Index of the virtual slot.
    pub slot: usize,
    /// Opened with `CKF_RW_SESSION`.
    pub read_write: bool,
    /// The operation in progress, if any.
    pub op: Operation,
}

/// The session table. The table lock is held only to look a session up.
#[derive(Default)]
pub struct SessionTable {
    sessions: RwLock<FxHashMap<u64, Arc<Mutex<Session>>>>,
    next: AtomicU64,
}

impl SessionTable {
    /// Add a session and return its handle (never 0, never reused).
    pub fn open(&self, slot: usize, read_write: bool) -> u64 {
        let handle = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session {
            slot,
            read_write,
            op: Operation::None,
        };
        self.sessions
            .write()
            .insert(handle, Arc::new(Mutex::new(session)));
        handle
    }

    /// Run `f` on a session, locked; `CKR_SESSION_HANDLE_INVALID` when unknown. Cheaper than
    /// [`SessionTable::get`] (no reference count taken); `f` must not call a backend, since the
    /// table's read lock is held while it runs.
    pub fn with<R>(&self, handle: u64, f: impl FnOnce(&mut Session) -> R) -> CkResult<R> {
        let sessions = self.sessions.read();
        let session = sessions.get(&handle).ok_or(Rv::SESSION_HANDLE_INVALID)?;
        let mut session = session.lock();
        Ok(f(&mut session))
    }

    /// Look a session up; `CKR_SESSION_HANDLE_INVALID` when unknown.
    pub fn get(&self, handle: u64) -> CkResult<Arc<Mutex<Session>>> {
        self.sessions
            .read()
            .get(&handle)
            .cloned()
            .ok_or(Rv::SESSION_HANDLE_INVALID)
    }

    /// Close one session.
    pub fn close(&self, handle: u64) -> CkResult<()> {
        self.sessions
            .write()
            .remove(&handle)
            .map(|_| ())
            .ok_or(Rv::SESSION_HANDLE_INVALID)
    }

    /// Close every session of a slot.
    pub fn close_slot(&self, slot: usize) {
        self.sessions.write().retain(|_, s| s.lock().slot != slot);
    }

    /// Sessions open on a slot: (all, read-write).
    pub fn count(&self, slot: usize) -> (u64, u64) {
        let sessions = self.sessions.read();
        let mut all = 0;
        let mut rw = 0;
        for s in sessions.values() {
            let s = s.lock();
            if s.slot == slot {
                all += 1;
                rw += s.read_write as u64;
            }
        }
        (all, rw)
    }

    /// End every crypto and find operation of a slot's sessions (on logout).
    pub fn end_operations(&self, slot: usize) {
        for s in self.sessions.read().values() {
            let mut s = s.lock();
            if s.slot == slot {
                s.op = Operation::None;
            }
        }
    }
}

impl Session {
    /// Take the active encryption out of the session (ending it), or fail as the spec says.
    pub fn take_encrypt(&mut self) -> CkResult<CryptOp> {
        match std::mem::take(&mut self.op) {
            Operation::Encrypt(op) => Ok(op),
            other => {
                self.op = other;
                Err(Rv::OPERATION_NOT_INITIALIZED)
            }
        }
    }

    /// Take the active decryption out of the session (ending it).
    pub fn take_decrypt(&mut self) -> CkResult<CryptOp> {
        match std::mem::take(&mut self.op) {
            Operation::Decrypt(op) => Ok(op),
            other => {
                self.op = other;
                Err(Rv::OPERATION_NOT_INITIALIZED)
            }
        }
    }

    /// The active encryption, left in place.
    pub fn encrypt_op(&mut self) -> CkResult<&mut CryptOp> {
        match &mut self.op {
            Operation::Encrypt(op) => Ok(op),
            _ => Err(Rv::OPERATION_NOT_INITIALIZED),
        }
    }

    /// The active decryption, left in place.
    pub fn decrypt_op(&mut self) -> CkResult<&mut CryptOp> {
        match &mut self.op {
            Operation::Decrypt(op) => Ok(op),
            _ => Err(Rv::OPERATION_NOT_INITIALIZED),
        }
    }
}

impl CryptOp {
    /// Append a multi-part chunk, enforcing [`MAX_MULTIPART`].
    pub fn buffer(&mut self, part: &[u8], too_long: Rv) -> CkResult<()> {
        let buf = self.buffered.get_or_insert_with(SecretBytes::default);
        if buf.len() + part.len() > MAX_MULTIPART {
            return Err(too_long);
        }
        // Plaintext (for an encryption): never leave a copy behind in a freed block.
        buf.extend_wiping(part);
        Ok(())
    }

    /// Bytes buffered so far.
    pub fn buffered_len(&self) -> usize {
        self.buffered.as_ref().map_or(0, |b| b.len())
    }
}

/// Plaintext that is empty: what a buffering `C_DecryptUpdate` releases.
pub fn no_plaintext() -> Plaintext {
    SecretBytes::default()
}
