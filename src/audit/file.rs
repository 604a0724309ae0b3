//! The audit file: records appended in order, either written at once (synchronous) or
//! collected in memory and written by a background thread.
//!
//! Buffered mode (`audit_flush_ms > 0`): a record's fields (not its text, see
//! `entry.rs`) are appended to an in-memory buffer; the flusher thread formats and
//! writes the buffer out every `audit_flush_ms`, and at once when a caller's record takes it
//! past [`FLUSH_AT`] (the caller only wakes the flusher: formatting, the `write(2)` and the
//! kernel's copy into the page cache stay off the thread that made the PKCS#11 call). Only if
//! the flusher falls behind, so that the buffer reaches [`WRITE_SELF_AT`], does a caller
//! write it out itself (backpressure: memory stays bounded). `C_Finalize` and process exit
//! write whatever is left. Durability trade-off: a crash (or `_exit`, or a kill) loses at most
//! the last `audit_flush_ms` of records (or [`WRITE_SELF_AT`] bytes, whichever is less).
//! Synchronous mode (`0`, or when the application forbade threads with
//! `CKF_LIBRARY_CANT_CREATE_OS_THREADS`): every record has reached the kernel (one
//! `write(2)`) before the call that made it returns.
//!
//! Write failures and rotation: `writer.rs` (what happens to unwritten text, the moved-file
//! check) and `health.rs` (the policy: refuse or continue). A failed write's text is retried
//! at the flusher's next round, at the next synchronous record, or by a refused operation
//! ([`retry`]); [`reopen`] opens the path again at once (`XKI_ReopenLogs`, the proxy's
//! SIGHUP).
//!
//! Locks: `pending` guards only the buffer (a `memcpy` long); `writer` serialises every
//! `write(2)` so the file keeps record order (and a failed write's rest is written before
//! anything newer). A flush takes `writer` *before* letting go of `pending` (hand over
//! hand), so buffers are written in the order they were filled; buffered appenders never
//! wait for a `write(2)` unless they are flushing themselves. A synchronous record is one
//! `write(2)` on the `O_APPEND` file, under `writer`.
//!
//! Fork: `pthread_atfork` handlers hold `pending` and `writer` across `fork()` and, in the
//! child, empty the buffer and the unwritten text (those records are the parent's, and the
//! parent writes them) and switch the child to synchronous writes (the flusher thread does
//! not exist there).

use super::entry as audit_entry;
use super::health::{self, OnFailure};
use super::writer::Writer;
use crate::audit::{self, CompactRecord, Record};
use crate::timefmt::wall_clock;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

/// A buffer this large wakes the flusher to write it out now.
pub(crate) const FLUSH_AT: usize = 64 * 1024;

/// A buffer this large (the flusher is behind) is written out by the caller that filled it.
pub(crate) const WRITE_SELF_AT: usize = 4 * FLUSH_AT;

/// Room for a buffer at [`WRITE_SELF_AT`] plus the record that tips it over, so it never
/// grows in practice. The two buffers are allocated once and swapped, never freed.
const BUFFER_CAPACITY: usize = WRITE_SELF_AT + 8 * 1024;

/// One open audit file.
pub(crate) struct AuditFile {
    /// The configured path (reopened on rotation).
    path: PathBuf,
    /// Entries not written yet (buffered mode only; `entry.rs` format).
    pending: Mutex<Vec<u8>>,
    /// Held across each formatting and `write(2)`, to keep records in order. It guards the
    /// file, the spare entry buffer that is swapped with `pending` at each flush (two fixed
    /// buffers, below glibc's mmap threshold, reused for the process life) and the text.
    writer: Mutex<Writer>,
    /// Buffered (records wait for the flusher) or synchronous.
    buffered: AtomicBool,
    /// The flusher's orders, and its wake-up.
    control: Mutex<Control>,
    wake: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// The process that started the flusher (a forked child must not join it: it is not there).
    pid: u32,
}

/// What the flusher thread is asked to do.
#[derive(Default)]
struct Control {
    /// Write what is left and exit.
    stop: bool,
    /// A buffer reached [`FLUSH_AT`]: write it out now, not at the next interval.
    flush_now: bool,
}

/// The audit file in use, if `audit_file` is configured.
static CURRENT: RwLock<Option<Arc<AuditFile>>> = RwLock::new(None);

impl AuditFile {
    /// Wrap `file`; with `flush_ms > 0` (and threads allowed) start the flusher thread.
    /// A thread that cannot be started means synchronous writes, never an error.
    fn new(path: PathBuf, file: File, flush_ms: u64, threads_allowed: bool) -> Arc<AuditFile> {
        let sink = Arc::new(AuditFile {
            path,
            pending: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer::new(file)),
            buffered: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            flusher: Mutex::new(None),
            pid: std::process::id(),
        });
        if flush_ms > 0 && threads_allowed {
            let weak = Arc::downgrade(&sink);
            let interval = Duration::from_millis(flush_ms);
            crate::process::pin_this_library();
            let spawned = std::thread::Builder::new()
                .name("xki-audit-flush".into())
                .spawn(move || flusher(weak, interval));
            match spawned {
                Ok(handle) => {
                    sink.pending.lock().reserve(BUFFER_CAPACITY);
                    sink.writer.lock().entries.reserve(BUFFER_CAPACITY);
                    *sink.flusher.lock() = Some(handle);
                    sink.buffered.store(true, Ordering::Release);
                }
                Err(e) => log::warn!("audit: no flusher thread ({e}); writing synchronously"),
            }
        }
        sink
    }

    /// Append one complete, formatted line.
    pub(crate) fn append(&self, line: &[u8]) {
        if !self.buffered.load(Ordering::Acquire) {
            let mut writer = self.writer.lock();
            writer.text.extend_from_slice(line);
            writer.write_text(&self.path);
            return;
        }
        let mut pending = self.pending.lock();
        let before = pending.len();
        audit_entry::push_text(&mut pending, line);
        self.appended(pending, before);
    }

    /// Buffer a record made at `since_epoch` for the flusher to format. `false` (nothing
    /// done) when writing synchronously: the caller formats and [`AuditFile::append`]s the
    /// line.
    pub(crate) fn append_record(&self, r: &Record<'_>, rv: u64, since_epoch: Duration) -> bool {
        if !self.buffered.load(Ordering::Acquire) {
            return false;
        }
        let mut pending = self.pending.lock();
        let before = pending.len();
        audit_entry::push_record(&mut pending, r, rv, since_epoch);
        self.appended(pending, before);
        true
    }

    /// Buffer a record whose names are numbers. `false` (nothing done) when writing
    /// synchronously.
    pub(crate) fn append_compact(&self, r: &CompactRecord, since_epoch: Duration) -> bool {
        if !self.buffered.load(Ordering::Acquire) {
            return false;
        }
        let mut pending = self.pending.lock();
        let before = pending.len();
        audit_entry::push_compact(&mut pending, r, since_epoch);
        self.appended(pending, before);
        true
    }

    /// After an entry went into `pending` (which held `before` bytes): wake the flusher, or
    /// write out, as the buffer's size says.
    fn appended(&self, pending: MutexGuard<'_, Vec<u8>>, before: usize) {
        let now = pending.len();
        if now >= WRITE_SELF_AT {
            self.write_out(pending);
        } else if before < FLUSH_AT && now >= FLUSH_AT {
            // Once per buffer: the entry that crossed the mark wakes the flusher.
            drop(pending);
            self.control.lock().flush_now = true;
            self.wake.notify_one();
        }
    }

    /// Write out everything buffered so far (and what earlier failed writes left).
    pub(crate) fn flush(&self) {
        let pending = self.pending.lock();
        if !pending.is_empty() {
            self.write_out(pending);
            return;
        }
        drop(pending);
        let mut writer = self.writer.lock();
        if !writer.text.is_empty() {
            writer.write_text(&self.path);
        } else {
            // Nothing to write, but a moved file is still noticed (and recreated).
            writer.check_rotation(&self.path);
        }
    }

    /// Swap the buffer with the spare, format it and write it, holding `writer` (taken
    /// before `pending` is let go, so buffers reach the file in the order they were filled).
    fn write_out(&self, mut pending: MutexGuard<'_, Vec<u8>>) {
        let mut writer = self.writer.lock();
        let w = &mut *writer;
        std::mem::swap(&mut *pending, &mut w.entries);
        drop(pending);
        audit_entry::format_all(&w.entries, &mut w.text);
        w.entries.clear();
        w.write_text(&self.path);
    }

    /// Stop the flusher thread (if any), write what is left, and switch to synchronous.
    fn close(&self) {
        if self.pid == std::process::id() {
            self.control.lock().stop = true;
            self.wake.notify_all();
            if let Some(handle) = self.flusher.lock().take() {
                let _ = handle.join();
            }
        }
        // In a forked child the flusher stayed in the parent, and it may have held `control`
        // at the moment of the fork (a lock nobody here would ever release): leave both alone.
        // The child writes synchronously already (see `after_fork_child`).
        self.flush();
        self.buffered.store(false, Ordering::Release);
        self.flush();
        // Still unwritable at the end (C_Finalize or exit during an outage): counted as lost.
        health::lost(self.writer.lock().discard());
    }
}

/// The flusher thread: write the buffer out every `interval`, or as soon as a caller says it
/// is full, until told to stop.
fn flusher(sink: std::sync::Weak<AuditFile>, interval: Duration) {
    loop {
        let Some(sink) = sink.upgrade() else { return };
        {
            let mut control = sink.control.lock();
            if !control.flush_now && !control.stop {
                sink.wake.wait_for(&mut control, interval);
            }
            if control.stop {
                return;
            }
            control.flush_now = false;
        }
        sink.flush();
    }
}

/// Make the audit file in use `file` (path and open file; or none), closing the previous one
/// (its records are written first), with the policy for write failures.
pub(crate) fn install(
    file: Option<(PathBuf, File)>,
    flush_ms: u64,
    threads_allowed: bool,
    on_failure: OnFailure,
) {
    register_process_hooks();
    let new = file.map(|(p, f)| AuditFile::new(p, f, flush_ms, threads_allowed));
    let old = std::mem::replace(&mut *CURRENT.write(), new);
    if let Some(old) = old {
        // Under the old policy: what it cannot write is counted as lost.
        old.close();
    }
    // A new file starts healthy (the old one's failure, if any, was its own).
    health::set_policy(on_failure);
    health::reset();
}

/// The audit file in use, if any (a read lock: shared, never held across a `write(2)` of
/// buffered data by anyone else).
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&AuditFile>) -> R) -> R {
    let current = CURRENT.read();
    f(current.as_deref())
}

/// Open (or create, mode 0600) the audit file for appending.
pub(crate) fn open(path: &Path) -> std::io::Result<File> {
    crate::config::open_private_append(path)
}

/// Apply the config's audit settings: open its `audit_file` (the error names it) and install
/// it, replacing and closing the previous one. `threads_allowed`: buffered writes need the
/// flusher thread, which `CKF_LIBRARY_CANT_CREATE_OS_THREADS` forbids.
pub fn configure(config: &crate::config::Config, threads_allowed: bool) -> Result<(), String> {
    let file = config
        .audit_file
        .as_deref()
        .map(|p| {
            open(p)
                .map(|f| (p.to_path_buf(), f))
                .map_err(|e| format!("audit_file: cannot open {}: {e}", p.display()))
        })
        .transpose()?;
    install(
        file,
        config.audit_flush_ms,
        threads_allowed,
        config.audit_on_failure,
    );
    Ok(())
}

/// Write one audit record (outcome `rv`: `CKR_OK` or the error's code) to the audit file, if
/// one is configured. Buffered, the record's fields go to the buffer and the flusher thread
/// formats them (`entry.rs`); synchronous, the line is formatted here into a reused
/// per-thread buffer, without the `log` crate's machinery, and written at once. Either way the
/// text is `audit::push_line`'s. Returns `false` (and
/// writes nothing) when there is no audit file: the caller logs instead.
pub(crate) fn record(r: &Record<'_>, rv: u64) -> bool {
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    with_current(|sink| {
        let Some(sink) = sink else { return false };
        let since_epoch = wall_clock();
        if sink.append_record(r, rv, since_epoch) {
            return true;
        }
        let at = UNIX_EPOCH + since_epoch;
        let wrote = LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            audit::push_line(&mut line, at, r, &audit::outcome_name(rv));
            sink.append(&line);
            true
        });
        wrote.unwrap_or(false)
    })
}

/// Buffer a record whose names are numbers (see `audit::names`). `false` (nothing written)
/// without a buffered audit file: the caller spells the record out and uses [`record`].
pub(crate) fn compact(r: &CompactRecord) -> bool {
    with_current(|sink| sink.is_some_and(|s| s.append_compact(r, wall_clock())))
}

/// An audit file is configured.
pub(crate) fn configured() -> bool {
    CURRENT.read().is_some()
}

/// Fail-closed outage: try to write the retained records now (one caller at a time; the
/// others go on to be refused without waiting).
pub(crate) fn retry() {
    with_current(|sink| {
        if let Some(s) = sink {
            if let Some(mut writer) = s.writer.try_lock() {
                writer.write_text(&s.path);
            }
        }
    });
}

/// Open the audit file's path again now (log rotation: `XKI_ReopenLogs`, the proxy's SIGHUP).
pub fn reopen() {
    with_current(|sink| {
        if let Some(s) = sink {
            let mut writer = s.writer.lock();
            writer.reopen(&s.path, "reopen requested");
        }
    });
}

/// Write out every buffered record now (`C_Finalize`, process exit).
pub fn flush() {
    with_current(|sink| {
        if let Some(s) = sink {
            s.flush();
        }
    });
}

/// Stop the flusher and write everything (`C_Finalize`): later records, if any, are written
/// synchronously until the next configuration.
pub fn close() {
    if let Some(s) = CURRENT.read().as_deref() {
        s.close();
    }
}

static HOOKS: Once = Once::new();

fn register_process_hooks() {
    HOOKS.call_once(|| {
        // All four never unwind (see each).
        crate::process::on_fork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        );
        crate::process::on_exit(at_exit);
    });
}

/// Process exit: write the buffered records (never unwinds into the C runtime).
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(flush);
}

/// Before `fork()`: hold the buffer (and the choice of file) so that the child gets a
/// consistent copy, never one locked by a thread that does not exist there.
extern "C" fn before_fork() {
    let current = CURRENT.read();
    if let Some(s) = current.as_deref() {
        // The order every writer takes them in: `pending`, then `writer`.
        std::mem::forget(s.pending.lock());
        std::mem::forget(s.writer.lock());
    }
    std::mem::forget(current);
}

/// In the parent after `fork()`: let go of what `before_fork` held.
extern "C" fn after_fork_parent() {
    // SAFETY: `before_fork` left exactly one read lock of CURRENT and (if a file was
    // installed) the locks of its `pending` and `writer` held by this thread, and nothing
    // changed CURRENT since (its write lock cannot be taken while that read lock is held).
    unsafe {
        if let Some(s) = (*CURRENT.data_ptr()).as_deref() {
            s.writer.force_unlock();
            s.pending.force_unlock();
        }
        CURRENT.force_unlock_read();
    }
}

/// In the child after `fork()`: drop the parent's buffered records (the parent writes them)
/// and write synchronously (the flusher thread was not copied). No allocation happens here.
extern "C" fn after_fork_child() {
    // SAFETY: as in `after_fork_parent`; the child is single-threaded now, and this thread
    // holds `pending` and `writer`, so clearing through their data pointers races with
    // nothing.
    unsafe {
        if let Some(s) = (*CURRENT.data_ptr()).as_deref() {
            (*s.pending.data_ptr()).clear();
            (*s.writer.data_ptr()).forget();
            health::reset();
            s.buffered.store(false, Ordering::Release);
            s.writer.force_unlock();
            s.pending.force_unlock();
        }
        CURRENT.force_unlock_read();
    }
}
