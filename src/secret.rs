//! Byte buffers that may hold plaintext or other secrets, wiped when dropped.
//!
//! Why not `zeroize::Zeroizing<Vec<u8>>`: `zeroize` wipes one byte at a time with volatile
//! writes (its guarantee against the wipe being optimised away), which for a 4 KiB plaintext
//! was most of the module's own CPU per decryption (see `benches/README.md`). glibc's
//! `explicit_bzero` gives the same guarantee (never elided) at `memset` speed. Other targets
//! fall back to `zeroize`.

use std::ops::{Deref, DerefMut};

/// A `Vec<u8>` whose whole allocation (length and spare capacity) is wiped on drop.
///
/// Growing it through `Vec`'s own methods (via `DerefMut`) past its capacity reallocates
/// without wiping the old block, as with `Zeroizing`: size it up front, or append with
/// [`SecretBytes::extend_wiping`], which wipes the block it leaves behind.
#[derive(Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Take ownership of `bytes`; they are wiped when this is dropped.
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> SecretBytes {
        SecretBytes(Vec::with_capacity(capacity))
    }
}

impl SecretBytes {
    /// Append `data`. When the allocation must grow, the contents move to a new block (at
    /// least double the size) and the old one is wiped before it is freed, so no copy of the
    /// secret is left in freed memory.
    pub fn extend_wiping(&mut self, data: &[u8]) {
        let needed = self.0.len() + data.len();
        if needed > self.0.capacity() {
            let mut grown = Vec::with_capacity(needed.max(2 * self.0.capacity()));
            grown.extend_from_slice(&self.0);
            // The old block is dropped (and wiped) as a SecretBytes.
            drop(SecretBytes(std::mem::replace(&mut self.0, grown)));
        }
        self.0.extend_from_slice(data);
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }
}

impl Deref for SecretBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the contents.
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrite every byte of `buf`'s allocation with zeros, then empty it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn wipe(buf: &mut Vec<u8>) {
    let capacity = buf.capacity();
    if capacity == 0 {
        return;
    }
    // SAFETY: `buf` owns an allocation valid for writes of `capacity` bytes, and any byte
    // pattern (here zero) is a valid `u8`. explicit_bzero is glibc's memset that the compiler
    // may not remove as a dead store.
    unsafe { libc::explicit_bzero(buf.as_mut_ptr().cast(), capacity) };
    buf.clear();
}

/// Overwrite every byte of `buf`'s allocation with zeros, then empty it.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn wipe(buf: &mut Vec<u8>) {
    zeroize::Zeroize::zeroize(buf);
}

/// Overwrite `buf` with zeros (a caller's output buffer, a stack scratch buffer), in a way
/// the compiler may not remove.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn wipe_slice(buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; any byte pattern is a valid `u8`.
    unsafe { libc::explicit_bzero(buf.as_mut_ptr().cast(), buf.len()) };
}

/// Overwrite `buf` with zeros, in a way the compiler may not remove.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn wipe_slice(buf: &mut [u8]) {
    zeroize::Zeroize::zeroize(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_length_and_spare_capacity() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0xa5u8; 48]);
        let ptr = v.as_ptr();
        let capacity = v.capacity();
        wipe(&mut v);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), capacity, "wiped in place, not reallocated");
        // SAFETY: the allocation is still owned by `v` (only cleared) and was fully
        // initialised by the wipe, so reading `capacity` bytes is sound.
        let after = unsafe { std::slice::from_raw_parts(ptr, capacity) };
        assert!(after.iter().all(|&b| b == 0));
    }

    #[test]
    fn extend_wiping_grows_and_keeps_order() {
        let mut s = SecretBytes::with_capacity(4);
        s.extend_wiping(b"abc");
        s.extend_wiping(b"defgh");
        s.extend_wiping(b"");
        assert_eq!(s.as_slice(), b"abcdefgh");
        assert!(s.capacity() >= 8);
        let cap = s.capacity();
        s.extend_wiping(b"i");
        assert_eq!(s.as_slice(), b"abcdefghi");
        assert!(s.capacity() >= cap);
    }

    #[test]
    fn wipe_slice_zeroes_exactly_the_slice() {
        let mut buf = [0xa5u8; 32];
        wipe_slice(&mut buf[4..20]);
        assert!(buf[..4].iter().all(|&b| b == 0xa5));
        assert!(buf[4..20].iter().all(|&b| b == 0));
        assert!(buf[20..].iter().all(|&b| b == 0xa5));
        wipe_slice(&mut []);
    }

    #[test]
    fn debug_never_shows_contents() {
        let s = SecretBytes::new(b"top secret".to_vec());
        assert_eq!(format!("{s:?}"), "SecretBytes(10 bytes)");
    }
}
