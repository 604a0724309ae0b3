//! Writing results into caller memory: blank-padded strings, single out-values, and arrays
//! under the PKCS#11 two-call convention (section 5.2 of the 2.40 base spec).

use crate::rv::{CkResult, Rv};
use pkcs11_sys::CK_ULONG;
use std::ptr;

/// Fill a fixed-size `CK_UTF8CHAR` field with `text`, blank (0x20) padded.
///
/// Text longer than the field is cut at the last UTF-8 character boundary that fits, so the
/// field always holds valid UTF-8. No NUL terminator is written (PKCS#11 fields have none).
pub(crate) fn pad(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let mut end = text.len().min(field.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

/// A fresh blank-padded field of `N` bytes holding `text` (see [`pad`]).
pub(crate) fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut field = [b' '; N];
    pad(&mut field, text);
    field
}

/// A `CK_ULONG` length for a Rust length (cannot fail on the 64-bit targets we build for, but
/// a silent truncation would be a buffer overrun for the caller, so it is checked).
pub(crate) fn ulong(len: usize) -> CkResult<CK_ULONG> {
    CK_ULONG::try_from(len).map_err(|_| Rv::GENERAL_ERROR)
}

/// A single out-parameter (`CK_SESSION_HANDLE_PTR`, `CK_INFO_PTR`, ...), checked non-NULL.
pub(crate) struct Out<T> {
    ptr: *mut T,
}

impl<T> Out<T> {
    /// Wrap an out-pointer; NULL is `CKR_ARGUMENTS_BAD`.
    ///
    /// # Safety
    /// A non-NULL `ptr` must be valid for writing one `T` for as long as the value is used.
    pub(crate) unsafe fn new(ptr: *mut T) -> CkResult<Self> {
        if ptr.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        Ok(Out { ptr })
    }

    /// Store `value`.
    pub(crate) fn write(self, value: T) {
        // SAFETY: `new` checked non-NULL and its caller promised the pointer is writable;
        // unaligned writes because C callers are not obliged to hand us aligned structs.
        unsafe { self.ptr.write_unaligned(value) }
    }
}

/// What the two-call convention says to do, decided before any operation state changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Output pointer NULL: report the needed length, `CKR_OK`, nothing consumed.
    LengthQuery,
    /// Buffer shorter than needed: report the needed length, `CKR_BUFFER_TOO_SMALL`.
    TooSmall,
    /// Buffer large enough: produce the output.
    Fits,
}

/// Decide the two-call outcome; `capacity` is `None` when the output pointer is NULL.
pub(crate) fn fit(capacity: Option<usize>, needed: usize) -> Fit {
    match capacity {
        None => Fit::LengthQuery,
        Some(cap) if cap < needed => Fit::TooSmall,
        Some(_) => Fit::Fits,
    }
}

/// A caller's output array plus its `CK_ULONG_PTR` count (bytes for data, elements for lists).
pub(crate) struct OutList<T> {
    ptr: *mut T,
    count: *mut CK_ULONG,
}

impl<T: Copy> OutList<T> {
    /// Wrap an output array and its count pointer; a NULL count is `CKR_ARGUMENTS_BAD`.
    /// A NULL array means "tell me the length".
    ///
    /// # Safety
    /// `count` (if non-NULL) must be valid for reading and writing a `CK_ULONG`; a non-NULL
    /// `ptr` must be valid for writing `*count` elements of `T`. The array may overlap caller
    /// input buffers (in-place encryption): this type only writes through raw pointers, after
    /// the inputs were consumed.
    pub(crate) unsafe fn new(ptr: *mut T, count: *mut CK_ULONG) -> CkResult<Self> {
        if count.is_null() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        Ok(OutList { ptr, count })
    }

    /// The caller's capacity, or `None` for a length query.
    pub(crate) fn capacity(&self) -> Option<usize> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: `count` is non-NULL and readable (contract of `new`).
        let cap = unsafe { self.count.read_unaligned() };
        // A capacity beyond the address space is "large enough" for anything we produce.
        Some(usize::try_from(cap).unwrap_or(usize::MAX))
    }

    fn set_count(&self, n: usize) -> CkResult<()> {
        let n = ulong(n)?;
        // SAFETY: `count` is non-NULL and writable (contract of `new`).
        unsafe { self.count.write_unaligned(n) };
        Ok(())
    }

    /// Apply the convention for `needed` elements. `Ok(true)`: go on, produce and [`fill`].
    /// `Ok(false)`: length query answered, return `CKR_OK`. `Err(BUFFER_TOO_SMALL)`: the needed
    /// length was written. Nothing is consumed in the last two cases.
    ///
    /// [`fill`]: OutList::fill
    pub(crate) fn prepare(&self, needed: usize) -> CkResult<bool> {
        match fit(self.capacity(), needed) {
            Fit::LengthQuery => self.set_count(needed).map(|()| false),
            Fit::TooSmall => {
                self.set_count(needed)?;
                Err(Rv::BUFFER_TOO_SMALL)
            }
            Fit::Fits => Ok(true),
        }
    }

    /// Copy `data` out and write its length. Called only after [`prepare`] said `true`.
    /// Output longer than the caller's buffer means the core broke its own `*_len` promise:
    /// `CKR_GENERAL_ERROR`, and nothing is written.
    ///
    /// [`prepare`]: OutList::prepare
    pub(crate) fn fill(&self, data: &[T]) -> CkResult<()> {
        match self.capacity() {
            Some(cap) if data.len() <= cap => {}
            _ => return Err(Rv::GENERAL_ERROR),
        }
        let bytes = std::mem::size_of_val(data);
        // SAFETY: `ptr` is non-NULL (capacity is Some) and writable for `cap >= data.len()`
        // elements (contract of `new`); `data` is Rust-owned so the ranges cannot overlap.
        // Copied as bytes so the caller's array needs no particular alignment.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), self.ptr.cast::<u8>(), bytes)
        };
        self.set_count(data.len())
    }

    /// Record that `n` elements were written straight into the caller's array (through
    /// [`OutList::room`]). More than the capacity means the core broke its promise:
    /// `CKR_GENERAL_ERROR`, and the count is left alone.
    pub(crate) fn written(&self, n: usize) -> CkResult<()> {
        match self.capacity() {
            Some(cap) if n <= cap => self.set_count(n),
            _ => Err(Rv::GENERAL_ERROR),
        }
    }

    /// The first `len` elements of the caller's array as a slice the core writes into
    /// directly (no copy). `None` for a length query (NULL array).
    ///
    /// # Safety
    /// `len` must not exceed [`OutList::capacity`], and no other reference to that memory
    /// (a caller input slice over the same bytes, for an in-place call) may be used while the
    /// returned slice is alive.
    pub(crate) unsafe fn room(&mut self, len: usize) -> Option<&mut [T]> {
        let cap = self.capacity()?;
        if len > cap {
            return None;
        }
        // SAFETY: non-NULL (capacity is Some), writable for `cap >= len` elements (contract of
        // `new`), and unaliased while the slice lives (this function's contract). `T` is a
        // plain `Copy` C type for which the caller's bytes are valid values.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr, len) })
    }

    /// The whole convention for output that is already known (lists): prepare, then fill.
    pub(crate) fn answer(&self, data: &[T]) -> CkResult<()> {
        if self.prepare(data.len())? {
            self.fill(data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs11_sys::CKR_BUFFER_TOO_SMALL;

    #[test]
    fn pad_blank_fills_and_never_terminates() {
        let f: [u8; 8] = padded("abc");
        assert_eq!(&f, b"abc     ");
        let f: [u8; 4] = padded("");
        assert_eq!(&f, b"    ");
        let f: [u8; 3] = padded("abcdef");
        assert_eq!(&f, b"abc");
    }

    #[test]
    fn pad_cuts_at_char_boundary() {
        // "é" is two bytes; a 4-byte field holds "ab" + "é" but not "abcé" + part of it.
        let f: [u8; 4] = padded("abé");
        assert_eq!(&f, "abé".as_bytes());
        let f: [u8; 3] = padded("abé");
        assert_eq!(&f, b"ab ");
        assert!(std::str::from_utf8(&f).is_ok());
        let f: [u8; 5] = padded("€€");
        assert_eq!(&f, "€  ".as_bytes());
    }

    #[test]
    fn fit_decisions() {
        assert_eq!(fit(None, 5), Fit::LengthQuery);
        assert_eq!(fit(Some(4), 5), Fit::TooSmall);
        assert_eq!(fit(Some(5), 5), Fit::Fits);
        assert_eq!(fit(Some(0), 0), Fit::Fits);
    }

    #[test]
    fn out_null_is_arguments_bad() {
        // SAFETY: NULL is the case under test; nothing is written.
        let r = unsafe { Out::<CK_ULONG>::new(ptr::null_mut()) };
        assert_eq!(r.err(), Some(Rv::ARGUMENTS_BAD));
    }

    #[test]
    fn two_call_on_rust_buffers() {
        let data = [1u8, 2, 3, 4];
        // count pointer NULL
        // SAFETY: NULL count is the case under test.
        let r = unsafe { OutList::<u8>::new(ptr::null_mut(), ptr::null_mut()) };
        assert_eq!(r.err(), Some(Rv::ARGUMENTS_BAD));

        // length query
        let mut count: CK_ULONG = 0;
        // SAFETY: `count` lives for the whole block; the array is NULL.
        let out = unsafe { OutList::<u8>::new(ptr::null_mut(), &mut count) }.unwrap();
        out.answer(&data).unwrap();
        assert_eq!(count, 4);

        // too small: needed length written, nothing copied
        let mut buf = [0u8; 3];
        let mut count: CK_ULONG = 3;
        // SAFETY: `buf` holds `count` bytes.
        let out = unsafe { OutList::new(buf.as_mut_ptr(), &mut count) }.unwrap();
        assert_eq!(out.answer(&data).err(), Some(Rv(CKR_BUFFER_TOO_SMALL)));
        assert_eq!(count, 4);
        assert_eq!(buf, [0, 0, 0]);

        // large enough: copied, actual length written
        let mut buf = [0u8; 10];
        let mut count: CK_ULONG = 10;
        // SAFETY: `buf` holds `count` bytes.
        let out = unsafe { OutList::new(buf.as_mut_ptr(), &mut count) }.unwrap();
        out.answer(&data).unwrap();
        assert_eq!(count, 4);
        assert_eq!(&buf[..4], &data);

        // core producing more than it promised is a general error, nothing written
        let mut buf = [0u8; 2];
        let mut count: CK_ULONG = 2;
        // SAFETY: `buf` holds `count` bytes.
        let out = unsafe { OutList::new(buf.as_mut_ptr(), &mut count) }.unwrap();
        assert!(out.prepare(1).unwrap());
        assert_eq!(out.fill(&data).err(), Some(Rv::GENERAL_ERROR));
        assert_eq!(count, 2);
    }

    #[test]
    fn two_call_with_ulong_elements() {
        let slots: [CK_ULONG; 3] = [7, 8, 9];
        let mut buf: [CK_ULONG; 3] = [0; 3];
        let mut count: CK_ULONG = 3;
        // SAFETY: `buf` holds `count` elements.
        let out = unsafe { OutList::new(buf.as_mut_ptr(), &mut count) }.unwrap();
        out.answer(&slots).unwrap();
        assert_eq!(buf, slots);
        assert_eq!(count, 3);
    }
}
