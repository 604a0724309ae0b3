//! Numbers for the names audit records carry (slot labels, key labels), so that a buffered
//! record of a key use is a fixed 34 bytes instead of ~75 with the names spelled out.
//!
//! Why: the bytes a record adds to the audit buffer are most of what the record costs the
//! calling thread (cache lines written next to SoftHSM2's work, then read by the flusher on the
//! other CPU): a build writing 32-byte records measured within half a point of one writing no
//! records at all, against 2.5 points for the spelled-out ones (`benches/README.md`).
//!
//! A name is given its number once, when the module learns it (a slot at `C_Initialize`, a key
//! label when its handle is made or its label changes), never per operation. Numbers stand for
//! immutable byte strings and are never reused, so a buffered record names what was current
//! when it was made even if the key is renamed before the flusher runs. The table only grows;
//! it holds at most [`MAX_NAMES`] names (a caller renaming keys forever cannot exhaust memory),
//! after which new names get no number and their records are written spelled out (the slower
//! path, same text).

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// The number of a name in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameId(pub(crate) u32);

/// Most names the table holds.
pub const MAX_NAMES: usize = 1 << 16;

#[derive(Default)]
struct Names {
    by_id: Vec<Arc<[u8]>>,
    ids: FxHashMap<Arc<[u8]>, u32>,
}

static NAMES: RwLock<Option<Names>> = RwLock::new(None);

/// Fork: the table is held (exclusively) across `fork()`, so a child never inherits it locked
/// by a thread that does not exist there (the audit flusher reads it while formatting; a
/// child's `C_Initialize` numbers its slot labels).
fn register_fork_hooks() {
    static HOOKS: std::sync::Once = std::sync::Once::new();
    HOOKS.call_once(|| {
        // They never unwind and only lock or unlock the table.
        crate::process::on_fork(Some(before_fork), Some(after_fork), Some(after_fork));
    });
}

extern "C" fn before_fork() {
    std::mem::forget(NAMES.write());
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` left the write lock held by this thread, in the parent and (as the
    // only thread) in the child.
    unsafe { NAMES.force_unlock_write() };
}

/// The number of `name`, given one the first time it is seen; `None` once the table is full.
pub fn intern(name: &[u8]) -> Option<NameId> {
    register_fork_hooks();
    if let Some(id) = NAMES.read().as_ref().and_then(|n| n.ids.get(name)) {
        return Some(NameId(*id));
    }
    let mut guard = NAMES.write();
    let names = guard.get_or_insert_with(Names::default);
    if let Some(id) = names.ids.get(name) {
        return Some(NameId(*id));
    }
    if names.by_id.len() >= MAX_NAMES {
        return None;
    }
    let id = names.by_id.len() as u32;
    let shared: Arc<[u8]> = Arc::from(name);
    names.by_id.push(shared.clone());
    names.ids.insert(shared, id);
    Some(NameId(id))
}

/// Run `f` on the name numbered `id` (`?` for a number the table never gave out).
pub fn with_name<R>(id: NameId, f: impl FnOnce(&[u8]) -> R) -> R {
    let guard = NAMES.read();
    let name = guard
        .as_ref()
        .and_then(|n| n.by_id.get(id.0 as usize))
        .map(|n| &n[..]);
    f(name.unwrap_or(b"?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_number_and_numbers_resolve() {
        let a = intern(b"names-test-a").unwrap();
        let b = intern(b"names-test-b\x00\xff").unwrap();
        assert_ne!(a, b);
        assert_eq!(intern(b"names-test-a"), Some(a));
        with_name(a, |n| assert_eq!(n, b"names-test-a"));
        with_name(b, |n| assert_eq!(n, b"names-test-b\x00\xff"));
        with_name(NameId(u32::MAX), |n| assert_eq!(n, b"?"));
    }
}
