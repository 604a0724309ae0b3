//! Virtual sessions and the operation in progress in each.
//!
//! A virtual session holds no backend session: every backend call checks one out of the
//! backend's pool for just that call, so many sessions on many threads run in parallel and no
//! lock is ever held across a backend call. Multi-part GCM is buffered here and sent to the
//! backend as one operation at `*Final`, which is how a decrypt can promise to release no
//! plaintext before the tag has verified.

use crate::backend::BackendKey;
use crate::mechanism::GcmParams;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use crate::types::Plaintext;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Largest amount of data one multi-part operation may buffer (bytes).
pub const MAX_MULTIPART: usize = 16 * 1024 * 1024;

/// A key label as the audit record of an operation names it: inline up to 32 bytes (a copy
/// of a few bytes is cheaper than a shared reference's two atomic updates per operation).
pub type KeyLabel = smallvec::SmallVec<[u8; 32]>;

/// A GCM operation set up by `C_EncryptInit` / `C_DecryptInit`.
pub struct CryptOp {
    /// The key label's number in the audit name table when the operation began, for the
    /// audit record; without one (table full), the label itself.
    pub key_name: Option<crate::audit::names::NameId>,
    pub label: KeyLabel,
    /// The backend key.
    pub key: BackendKey,
    /// The checked GCM parameters.
    pub params: GcmParams,
    /// Data buffered by `*Update`; `None` until the first update (single-part allowed).
    pub buffered: Option<SecretBytes>,
    /// Set when the backend generates the IV (the zero-IV convention of `C_EncryptInit` on a
    /// backend that refuses caller IVs): hands the IV used back to the caller's `pIv`.
    pub iv_write_back: Option<IvWriteBack>,
}

/// Writes a generated IV into the caller's `CK_GCM_PARAMS.pIv` (made by the C boundary, which
/// alone touches caller memory). Called at most once, after a successful encryption.
pub type IvWriteBack = Box<dyn Fn(&[u8]) -> CkResult<()> + Send + Sync>;

/// A message-based AES-GCM process (`C_MessageEncryptInit` / `C_MessageDecryptInit`, PKCS#11
/// 3.0 §5.13/§5.15): the key, and the message begun with `*MessageBegin`, if any.
pub struct MessageOp {
    /// As in [`CryptOp`].
    pub key_name: Option<crate::audit::names::NameId>,
    pub label: KeyLabel,
    /// The backend key.
    pub key: BackendKey,
    /// The message in progress (`*MessageBegin` .. `*MessageNext` with `CKF_END_OF_MESSAGE`).
    pub pending: Option<PendingMessage>,
}

/// One message of a multi-part message-based operation, buffered until its last part (no
/// output before the tag, as for the classic multi-part operations).
pub struct PendingMessage {
    /// The parameters given to `*MessageBegin`.
    pub params: crate::mechanism::GcmMessageParams,
    /// The associated data given to `*MessageBegin`.
    pub aad: crate::mechanism::Aad,
    /// The parts so far.
    pub data: SecretBytes,
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
    /// A message-based encryption process.
    MessageEncrypt(MessageOp),
    /// A message-based decryption process.
    MessageDecrypt(MessageOp),
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

/// Sessions per chunk of the session table.
const CHUNK: usize = 256;
/// Chunks the table can hold: at most `CHUNK * MAX_CHUNKS` sessions open at once.
const MAX_CHUNKS: usize = 1024;
/// Low bits of a handle: the slot index + 1 (so no handle is 0).
const INDEX_BITS: u32 = 20;

/// The session table: a slab of slots, each behind its own mutex, found by index.
///
/// A handle is `serial << 20 | (index + 1)`: the index finds the slot without any table-wide
/// lock or hashing (this runs three times per operation), and the serial, counted up for every
/// session ever opened, makes a handle unique for the life of the module (a slot freed by
/// `C_CloseSession` is reused, its old handle never: a lookup compares the whole handle).
/// Chunks of slots are allocated as sessions are opened and live as long as the table.
pub struct SessionTable {
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    /// Slot indices free for reuse, and the first never-used index.
    free: Mutex<FreeSlots>,
    serial: AtomicU64,
}

#[derive(Default)]
struct FreeSlots {
    reusable: Vec<usize>,
    next_unused: usize,
}

#[derive(Default)]
struct Slot {
    entry: Mutex<Option<Entry>>,
}

struct Entry {
    handle: u64,
    session: Session,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            free: Mutex::default(),
            serial: AtomicU64::new(0),
        }
    }
}

impl SessionTable {
    /// Add a session and return its handle (never 0, never reused); `CKR_SESSION_COUNT` when
    /// the table is full.
    pub fn open(&self, slot: usize, read_write: bool) -> CkResult<u64> {
        let index = {
            let mut free = self.free.lock();
            match free.reusable.pop() {
                Some(i) => i,
                None if free.next_unused < CHUNK * MAX_CHUNKS => {
                    free.next_unused += 1;
                    free.next_unused - 1
                }
                None => return Err(Rv(pkcs11_sys::CKR_SESSION_COUNT)),
            }
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = (serial << INDEX_BITS) | (index as u64 + 1);
        let chunk = self.chunks[index / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        *chunk[index % CHUNK].entry.lock() = Some(Entry {
            handle,
            session: Session {
                slot,
                read_write,
                op: Operation::None,
            },
        });
        Ok(handle)
    }

    /// The slot a handle points into, if that part of the table exists.
    fn slot_of(&self, handle: u64) -> Option<(&Slot, usize)> {
        let index = usize::try_from(handle & ((1 << INDEX_BITS) - 1))
            .ok()?
            .checked_sub(1)?;
        let chunk = self.chunks.get(index / CHUNK)?.get()?;
        Some((&chunk[index % CHUNK], index))
    }

    /// Run `f` on a session, locked; `CKR_SESSION_HANDLE_INVALID` when unknown. Only that
    /// session's lock is held while `f` runs, and `f` must not call a backend.
    pub fn with<R>(&self, handle: u64, f: impl FnOnce(&mut Session) -> R) -> CkResult<R> {
        let (slot, _) = self.slot_of(handle).ok_or(Rv::SESSION_HANDLE_INVALID)?;
        let mut entry = slot.entry.lock();
        match &mut *entry {
            Some(e) if e.handle == handle => Ok(f(&mut e.session)),
            _ => Err(Rv::SESSION_HANDLE_INVALID),
        }
    }

    /// Close one session.
    pub fn close(&self, handle: u64) -> CkResult<()> {
        let (slot, index) = self.slot_of(handle).ok_or(Rv::SESSION_HANDLE_INVALID)?;
        let closed = {
            let mut entry = slot.entry.lock();
            match &*entry {
                Some(e) if e.handle == handle => entry.take(),
                _ => None,
            }
        };
        // Dropped outside the slot's lock (it may hold a buffered multi-part operation).
        closed.ok_or(Rv::SESSION_HANDLE_INVALID)?;
        self.free.lock().reusable.push(index);
        Ok(())
    }

    /// Every slot in use so far (for the table-wide calls below, none of them hot).
    fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        let used = self.free.lock().next_unused;
        self.chunks
            .iter()
            .map_while(|c| c.get())
            .flat_map(|c| c.iter())
            .take(used)
            .enumerate()
    }

    /// Close every session of a slot.
    pub fn close_slot(&self, slot: usize) {
        for (index, s) in self.slots() {
            let closed = {
                let mut entry = s.entry.lock();
                match &*entry {
                    Some(e) if e.session.slot == slot => entry.take(),
                    _ => None,
                }
            };
            if closed.is_some() {
                self.free.lock().reusable.push(index);
            }
        }
    }

    /// Sessions open on a slot: (all, read-write).
    pub fn count(&self, slot: usize) -> (u64, u64) {
        let mut all = 0;
        let mut rw = 0;
        for (_, s) in self.slots() {
            if let Some(e) = &*s.entry.lock() {
                if e.session.slot == slot {
                    all += 1;
                    rw += e.session.read_write as u64;
                }
            }
        }
        (all, rw)
    }

    /// End every crypto and find operation of a slot's sessions (on logout).
    pub fn end_operations(&self, slot: usize) {
        for (_, s) in self.slots() {
            if let Some(e) = &mut *s.entry.lock() {
                if e.session.slot == slot {
                    e.session.op = Operation::None;
                }
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

impl Session {
    /// The active message-based process (`encrypt` or decrypt), left in place.
    pub fn message_op(&mut self, encrypt: bool) -> CkResult<&mut MessageOp> {
        match (&mut self.op, encrypt) {
            (Operation::MessageEncrypt(op), true) | (Operation::MessageDecrypt(op), false) => {
                Ok(op)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_unique_and_a_closed_one_stays_invalid_when_its_slot_is_reused() {
        let t = SessionTable::default();
        let a = t.open(0, false).unwrap();
        let b = t.open(1, true).unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(t.with(b, |s| (s.slot, s.read_write)), Ok((1, true)));
        t.close(a).unwrap();
        assert_eq!(t.close(a), Err(Rv::SESSION_HANDLE_INVALID));
        // The freed slot is reused, under a new handle; the old one does not reach it.
        let c = t.open(2, false).unwrap();
        assert_eq!(c & ((1 << INDEX_BITS) - 1), a & ((1 << INDEX_BITS) - 1));
        assert_ne!(c, a);
        assert_eq!(t.with(a, |_| ()), Err(Rv::SESSION_HANDLE_INVALID));
        assert_eq!(t.with(c, |s| s.slot), Ok(2));
        // Handles that point nowhere: 0, an index never used, an index past the table.
        for h in [0, 77, u64::MAX, (1 << INDEX_BITS) - 1] {
            assert_eq!(t.with(h, |_| ()), Err(Rv::SESSION_HANDLE_INVALID), "{h:#x}");
            assert_eq!(t.close(h), Err(Rv::SESSION_HANDLE_INVALID), "{h:#x}");
        }
    }

    #[test]
    fn slot_wide_calls_see_every_chunk() {
        let t = SessionTable::default();
        // More than one chunk, on two slots.
        let handles: Vec<u64> = (0..CHUNK + 10)
            .map(|i| t.open(i % 2, i % 3 == 0).unwrap())
            .collect();
        let rw_on_0 = (0..CHUNK + 10).filter(|i| i % 2 == 0 && i % 3 == 0).count() as u64;
        assert_eq!(t.count(0), ((CHUNK as u64 + 10) / 2, rw_on_0));
        t.with(handles[CHUNK + 1], |s| {
            s.op = Operation::Find(Default::default())
        })
        .unwrap();
        t.end_operations(1);
        assert!(t
            .with(handles[CHUNK + 1], |s| matches!(s.op, Operation::None))
            .unwrap());
        t.close_slot(0);
        assert_eq!(t.count(0), (0, 0));
        assert_eq!(t.count(1).0, (CHUNK as u64 + 10) / 2);
        assert_eq!(t.with(handles[0], |_| ()), Err(Rv::SESSION_HANDLE_INVALID));
        // Closed slots are reused before the table grows.
        let before = t.free.lock().next_unused;
        t.open(0, false).unwrap();
        assert_eq!(t.free.lock().next_unused, before);
    }

    #[test]
    fn a_full_table_says_session_count() {
        let t = SessionTable::default();
        t.free.lock().next_unused = CHUNK * MAX_CHUNKS;
        assert_eq!(t.open(0, false), Err(Rv(pkcs11_sys::CKR_SESSION_COUNT)));
    }
}
