//! The audit file's writing end: the open file, the text not written yet, what a failed
//! write leaves behind, and rotation.
//!
//! Write failures (full disk, I/O error, short write): the text that could not be written
//! stays in [`Writer::text`], in order, and is written before anything newer at the next
//! attempt; a line cut by a short write is completed, never repeated (fail-closed, see
//! `health.rs`). Fail-open drops it instead and counts its lines as lost.
//!
//! Rotation: each write checks, at most once per [`ROTATION_CHECK`], whether the configured
//! path still names the open file (device and inode); when the file was moved away or
//! replaced, the path is opened (created) again and writing continues there.
//!
//! Every method runs under the audit file's `writer` lock (`file.rs`).

use super::health::{self, OnFailure};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a write checks whether the path still names the open file.
pub const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The writer's side: the file, the spare entry buffer (swapped with `pending` at each
/// flush) and the text they are formatted into. The buffers are kept for the process life,
/// so flushing never allocates once the text buffer has grown to its working size.
pub(super) struct Writer {
    file: File,
    /// Device and inode of `file`, to notice that the path names another file (rotation).
    identity: (u64, u64),
    /// When the path was last compared with `file`.
    checked: Instant,
    pub(super) entries: Vec<u8>,
    /// Lines not written yet: the batch being written and, after a failed write in
    /// fail-closed mode, what is left of earlier batches (written first).
    pub(super) text: Vec<u8>,
    /// Lines of `text` left by failed writes.
    retained: u64,
    /// Fail-open dropped the rest of a line a short write had begun: the next write starts
    /// with a newline, so the next record is a line of its own.
    cut_line: bool,
}

impl Writer {
    pub(super) fn new(file: File) -> Writer {
        Writer {
            identity: identity_of(&file),
            file,
            checked: Instant::now(),
            entries: Vec::new(),
            text: Vec::new(),
            retained: 0,
            cut_line: false,
        }
    }

    /// Write `self.text` (older unwritten text first, as it is at the front). On success it is
    /// empty; on failure, fail-closed keeps what was not written and fail-open drops and
    /// counts it (see `health.rs`).
    pub(super) fn write_text(&mut self, path: &Path) {
        self.check_rotation(path);
        if self.text.is_empty() {
            return;
        }
        let newline_first = std::mem::take(&mut self.cut_line);
        if newline_first {
            self.text.insert(0, b'\n');
        }
        let mut done = 0;
        let result = loop {
            if done == self.text.len() {
                break Ok(());
            }
            match (&self.file).write(&self.text[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                self.text.clear();
                health::write_succeeded(path, std::mem::take(&mut self.retained));
            }
            Err(e) => {
                let rest = &self.text[done..];
                let mut lines = rest.iter().filter(|b| **b == b'\n').count() as u64;
                if newline_first && done == 0 {
                    // The newline put first is not a record.
                    lines -= 1;
                }
                match health::policy() {
                    OnFailure::Refuse => {
                        self.text.drain(..done);
                        self.retained = lines;
                        health::write_failed(path, &e, lines);
                    }
                    OnFailure::Continue => {
                        let cut = if done == 0 {
                            newline_first
                        } else {
                            self.text[done - 1] != b'\n'
                        };
                        // A line cut just before its newline is whole once the newline
                        // follows (`cut_line`): not lost.
                        if done > 0 && cut && rest.first() == Some(&b'\n') {
                            lines -= 1;
                        }
                        self.cut_line = cut;
                        self.text.clear();
                        self.retained = 0;
                        health::write_failed(path, &e, 0);
                        health::lost(lines);
                    }
                }
            }
        }
    }

    /// At most once per [`ROTATION_CHECK`]: when the path no longer names the open file
    /// (moved away, or replaced), open it again.
    pub(super) fn check_rotation(&mut self, path: &Path) {
        let now = Instant::now();
        if now.duration_since(self.checked) < ROTATION_CHECK {
            return;
        }
        self.checked = now;
        let moved = match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino()) != self.identity,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if moved {
            self.reopen(path, "was moved or replaced");
        }
    }

    /// Open the path again and write there from now on; on failure keep the open file.
    pub(super) fn reopen(&mut self, path: &Path, why: &str) {
        match super::file::open(path) {
            Ok(file) => {
                self.identity = identity_of(&file);
                self.file = file;
                self.checked = Instant::now();
                log::info!("audit: {} {why}: reopened", path.display());
            }
            Err(e) => log::error!(
                "audit: {} {why}, but cannot be opened again: {e}; still writing to the \
                 file that was open",
                path.display()
            ),
        }
    }

    /// Drop the unwritten text; returns how many records it held.
    pub(super) fn discard(&mut self) -> u64 {
        let lines = self.text.iter().filter(|b| **b == b'\n').count() as u64;
        self.text.clear();
        self.retained = 0;
        lines
    }

    /// Forget everything buffered (a forked child: those records are the parent's). No
    /// allocation, no lock.
    pub(super) fn forget(&mut self) {
        self.text.clear();
        self.entries.clear();
        self.retained = 0;
        self.cut_line = false;
    }
}

/// Device and inode of an open file ((0, 0) if it cannot be asked, which makes the next
/// rotation check reopen: harmless).
fn identity_of(file: &File) -> (u64, u64) {
    file.metadata()
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0))
}
