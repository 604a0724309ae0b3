//! The key file: 32 random bytes that seal a store instead of a PIN.
//!
//! It must be private to its owner (no group/other permission bits), exactly 32 bytes long,
//! and is created only on first run (when neither it nor the store exists).

use super::kdf::{Kek, KEK_LEN};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Read the key file; `Ok(None)` if it does not exist. Errors are ready for the log.
pub fn read(path: &Path) -> Result<Option<Kek>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}; a key file must be private to its owner (chmod 600)",
            path.display()
        ));
    }
    if meta.len() != KEK_LEN as u64 {
        return Err(format!(
            "{} is {} bytes; a key file must be exactly {KEK_LEN} random bytes",
            path.display(),
            meta.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEK_LEN]);
    read_exact(&mut file, key.as_mut())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(key))
}

fn read_exact(file: &mut File, out: &mut [u8]) -> io::Result<()> {
    file.read_exact(out)?;
    // The size was checked, but the file may have grown since: refuse ambiguity.
    let mut extra = [0u8; 1];
    if file.read(&mut extra)? != 0 {
        return Err(io::Error::other("file changed while reading"));
    }
    Ok(())
}

/// Create a new key file (mode 0600, 32 bytes from the OS CSPRNG). Fails if it exists.
pub fn create(path: &Path) -> Result<Kek, String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        super::store::ensure_dir(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let mut key = Zeroizing::new([0u8; KEK_LEN]);
    getrandom::getrandom(key.as_mut()).map_err(|e| format!("OS random generator failed: {e}"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let written = file.write_all(key.as_ref()).and_then(|_| file.sync_all());
    if let Err(e) = written {
        // A partial key file would lock the store forever on the next run: remove it.
        let _ = std::fs::remove_file(path);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_then_read_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k.key");
        assert!(read(&path).unwrap().is_none());
        let k = create(&path).unwrap();
        assert_eq!(*read(&path).unwrap().unwrap(), *k);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert!(
            create(&path).is_err(),
            "an existing key file is never replaced"
        );
    }

    #[test]
    fn loose_mode_and_wrong_length_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&path).unwrap_err().contains("0644"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&path).is_ok());
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(read(&path).unwrap_err().contains("31 bytes"));
    }
}
