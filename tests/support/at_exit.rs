//! Temp directories held in statics, which Rust never drops: removed when the test process
//! exits instead, so a test binary leaves nothing behind in `$TMPDIR` (each fixture copies
//! the vendor emulator four times: about 21 MB a directory, 2.4 GB a day of runs when they
//! were left). `XKI_ITEST_KEEP=1` keeps them and prints where, for debugging.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// The directories to remove, each with the process that created it.
static DIRS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn remove_dirs() {
    // `try_lock`: never wait at exit on a thread that died holding the lock.
    let Ok(dirs) = DIRS.try_lock() else { return };
    for (owner, dir) in dirs.iter() {
        // A forked child that exits normally runs this too: the directories are the parent's.
        if *owner == std::process::id() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Remove `dir` (and everything in it) when this process exits normally.
pub fn remove_at_exit(dir: &Path) {
    if std::env::var_os("XKI_ITEST_KEEP").is_some() {
        eprintln!("XKI_ITEST_KEEP: test files kept in {}", dir.display());
        return;
    }
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function of this test binary with no captured state; it
        // never unwinds (it ignores every error).
        unsafe { libc::atexit(remove_dirs) };
    });
    DIRS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((std::process::id(), dir.to_path_buf()));
}
