//! The store file on disk: reading, crash-safe replacement, the cross-process lock, and the
//! cheap change stamp that tells a reader another process rewrote the store.
//!
//! Crash safety: a new store is written to a temp file in the same directory, fsynced, renamed
//! over the store, and the directory is fsynced. `rename` is atomic, so a crash at any point
//! leaves either the old or the new store; a leftover temp file is removed the next time the
//! store is opened.
//!
//! Concurrency: writers hold an exclusive `flock` on `<store>.lock` for the whole
//! read-modify-write, and re-read the store under it. Readers need no lock: they only ever see
//! a complete old or new file, because the store is replaced by rename, never rewritten.

use super::fault::{maybe_crash, FaultPoint};
use std::ffi::OsString;
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The files that make up one store.
#[derive(Clone, Debug)]
pub struct StorePaths {
    /// The sealed store.
    pub store: PathBuf,
    /// The sidecar lock file (`<store>.lock`), never deleted: deleting a lock file races.
    pub lock: PathBuf,
    /// The directory holding both (fsynced after a rename).
    pub dir: PathBuf,
    /// File-name prefix of temp files (`<store file name>.tmp-`).
    tmp_prefix: OsString,
}

impl StorePaths {
    /// Paths for the store at `store`.
    pub fn new(store: PathBuf) -> StorePaths {
        let dir = match store.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut lock = store.clone().into_os_string();
        lock.push(".lock");
        let mut tmp_prefix = store.file_name().unwrap_or_default().to_os_string();
        tmp_prefix.push(".tmp-");
        StorePaths {
            store,
            lock: PathBuf::from(lock),
            dir,
            tmp_prefix,
        }
    }
}

/// Identifies one version of the store file: a rewrite always changes the inode (rename of a
/// new file), and size/mtime guard against inode reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Create `dir` (and missing parents) with mode 0700 if it does not exist.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The stamp of the store now, or `None` if it does not exist. One `stat`, no open.
pub fn stamp(path: &Path) -> io::Result<Option<Stamp>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp::of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read the whole store with the stamp of exactly the file read, or `None` if it is absent.
pub fn read(path: &Path) -> io::Result<Option<(Vec<u8>, Stamp)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Stamp the open file, not the path: the path may be renamed over while we read.
    let meta = file.metadata()?;
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(Some((bytes, Stamp::of(&meta))))
}

/// An exclusive `flock` on the lock file, released when dropped (the descriptor closes).
pub struct Lock {
    _file: File,
}

/// Block until this process holds the store's exclusive lock.
pub fn lock(paths: &StorePaths) -> io::Result<Lock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&paths.lock)?;
    loop {
        // SAFETY: `file` owns a valid open descriptor for the duration of the call; flock
        // takes no pointers.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(Lock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Replace the store with `bytes` crash-safely (see the module docs). Call with the lock held.
/// Returns the stamp of the new store.
pub fn write_atomic(paths: &StorePaths, bytes: &[u8]) -> io::Result<Stamp> {
    let mut suffix = [0u8; 6];
    getrandom::getrandom(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let mut name = paths.tmp_prefix.clone();
    name.push(format!("{}-{}", std::process::id(), hex(&suffix)));
    let tmp = paths.dir.join(name);
    let result = write_then_rename(&tmp, &paths.store, bytes);
    if result.is_err() {
        // Best effort: the temp file is garbage either way, and is also swept on next open.
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&paths.dir)?;
    stamp(&paths.store)?.ok_or_else(|| io::Error::other("store vanished right after rename"))
}

fn write_then_rename(tmp: &Path, store: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    maybe_crash(FaultPoint::AfterWriteBeforeRename);
    std::fs::rename(tmp, store)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Delete temp files a crashed writer left behind. Call with the lock held (so no live writer
/// owns one). Returns how many were removed.
pub fn remove_stale_temps(paths: &StorePaths) -> usize {
    let Ok(entries) = std::fs::read_dir(&paths.dir) else {
        return 0;
    };
    let prefix = paths.tmp_prefix.as_encoded_bytes();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(prefix) && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_stamps_change() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path().join("s.store"));
        assert!(read(&paths.store).unwrap().is_none());
        let _l = lock(&paths).unwrap();
        let s1 = write_atomic(&paths, b"one").unwrap();
        let s2 = write_atomic(&paths, b"two!").unwrap();
        assert_ne!(s1, s2);
        let (bytes, s) = read(&paths.store).unwrap().unwrap();
        assert_eq!(bytes, b"two!");
        assert_eq!(s, s2);
        assert_eq!(stamp(&paths.store).unwrap(), Some(s2));
        let mode = std::fs::metadata(&paths.store).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn stale_temps_are_swept_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path().join("s.store"));
        std::fs::write(dir.path().join("s.store.tmp-1-abc"), b"x").unwrap();
        std::fs::write(dir.path().join("other.tmp-1"), b"x").unwrap();
        std::fs::write(&paths.store, b"keep").unwrap();
        assert_eq!(remove_stale_temps(&paths), 1);
        assert!(paths.store.exists());
        assert!(dir.path().join("other.tmp-1").exists());
    }

    #[test]
    fn relative_store_uses_current_dir() {
        let p = StorePaths::new(PathBuf::from("x.store"));
        assert_eq!(p.dir, PathBuf::from("."));
        assert_eq!(p.lock, PathBuf::from("x.store.lock"));
    }
}
