//! Audit entries as they wait in the buffer: the record's fields, not its text.
//!
//! A buffered audit record costs the calling thread a clock read and a few small copies; the
//! flusher thread turns entries into text lines (the same text a synchronous write gives, see
//! `audit::push_message`) just before it writes them. Formatting (escaping the labels, decimal
//! digits, the timestamp) is most of a record's cost, so it stays off the PKCS#11 call that
//! made the record (measured in `benches/README.md`).
//!
//! Layout of one entry, native byte order (the buffer never leaves the process):
//! - text line: `0u8`, `len: u32`, the line's bytes (already formatted by the caller);
//! - record: `1u8`, `secs: u64`, `nanos: u32`, `bytes_in: u64`, `bytes_out: u64`,
//!   `rv: u64` (`CKR_OK` for success), then four length-prefixed strings: op (`u8` length),
//!   slot (`u16`), key (`u16`), mechanism (`u8`). Longer strings are cut at the prefix's
//!   maximum (no real label comes near 64 KiB; the entry stays well-formed whatever it gets).

use crate::audit::names::{self, NameId};
use crate::audit::{self, CompactRecord, Record};
use std::time::{Duration, UNIX_EPOCH};

const TEXT: u8 = 0;
const RECORD: u8 = 1;
const COMPACT: u8 = 2;

/// Bytes of a compact entry after its kind byte.
const COMPACT_LEN: usize = 1 + 4 + 4 + 8 + 4 + 4 + 8;

/// Append an encryption or decryption record whose names are numbers (`audit::names`): 34
/// bytes, the same text once formatted.
pub(super) fn push_compact(buf: &mut Vec<u8>, r: &CompactRecord, since: Duration) {
    let mut e = [0u8; 1 + COMPACT_LEN];
    e[0] = COMPACT;
    e[1] = u8::from(r.encrypt);
    e[2..6].copy_from_slice(&r.slot.0.to_ne_bytes());
    e[6..10].copy_from_slice(&r.key.0.to_ne_bytes());
    e[10..18].copy_from_slice(&(since.as_nanos() as u64).to_ne_bytes());
    e[18..22].copy_from_slice(&r.bytes_in.to_ne_bytes());
    e[22..26].copy_from_slice(&r.bytes_out.to_ne_bytes());
    e[26..34].copy_from_slice(&r.rv.to_ne_bytes());
    buf.extend_from_slice(&e);
}

/// Append a formatted text line.
pub(super) fn push_text(buf: &mut Vec<u8>, line: &[u8]) {
    let line = &line[..line.len().min(u32::MAX as usize)];
    buf.push(TEXT);
    buf.extend_from_slice(&(line.len() as u32).to_ne_bytes());
    buf.extend_from_slice(line);
}

/// Append a record made `since` the Unix epoch with outcome `rv` (`CKR_OK` or the error's
/// code).
pub(super) fn push_record(buf: &mut Vec<u8>, r: &Record<'_>, rv: u64, since: Duration) {
    let op = cut(r.op.as_bytes(), u8::MAX as usize);
    let slot = cut(r.slot.as_bytes(), u16::MAX as usize);
    let key = cut(r.key, u16::MAX as usize);
    let mechanism = cut(r.mechanism.as_bytes(), u8::MAX as usize);
    let mut head = [0u8; 1 + 8 + 4 + 8 + 8 + 8 + 1 + 2 + 2 + 1];
    let fields: [&[u8]; 10] = [
        &[RECORD],
        &since.as_secs().to_ne_bytes(),
        &since.subsec_nanos().to_ne_bytes(),
        &(r.bytes_in as u64).to_ne_bytes(),
        &(r.bytes_out as u64).to_ne_bytes(),
        &rv.to_ne_bytes(),
        &[op.len() as u8],
        &(slot.len() as u16).to_ne_bytes(),
        &(key.len() as u16).to_ne_bytes(),
        &[mechanism.len() as u8],
    ];
    let mut at = 0;
    for f in fields {
        head[at..at + f.len()].copy_from_slice(f);
        at += f.len();
    }
    buf.extend_from_slice(&head);
    for s in [op, slot, key, mechanism] {
        buf.extend_from_slice(s);
    }
}

fn cut(s: &[u8], max: usize) -> &[u8] {
    &s[..s.len().min(max)]
}

/// Turn every entry of `entries` into its text line, appended to `text`. A malformed tail
/// (which only a bug could produce) is dropped, never read past.
pub(super) fn format_all(entries: &[u8], text: &mut Vec<u8>) {
    let mut rest = entries;
    while let Some((&kind, body)) = rest.split_first() {
        let next = match kind {
            TEXT => format_text(body, text),
            RECORD => format_record(body, text),
            COMPACT => format_compact(body, text),
            _ => None,
        };
        match next {
            Some(r) => rest = r,
            None => return,
        }
    }
}

fn format_text<'a>(body: &'a [u8], text: &mut Vec<u8>) -> Option<&'a [u8]> {
    let mut r = Reader(body);
    let len = u32::from_ne_bytes(r.array()?) as usize;
    text.extend_from_slice(r.take(len)?);
    Some(r.0)
}

fn format_record<'a>(body: &'a [u8], text: &mut Vec<u8>) -> Option<&'a [u8]> {
    let mut r = Reader(body);
    let secs = u64::from_ne_bytes(r.array()?);
    let nanos = u32::from_ne_bytes(r.array()?);
    let bytes_in = u64::from_ne_bytes(r.array()?);
    let bytes_out = u64::from_ne_bytes(r.array()?);
    let rv = u64::from_ne_bytes(r.array()?);
    let op_len = r.array::<1>()?[0] as usize;
    let slot_len = u16::from_ne_bytes(r.array()?) as usize;
    let key_len = u16::from_ne_bytes(r.array()?) as usize;
    let mechanism_len = r.array::<1>()?[0] as usize;
    let op = r.take(op_len)?;
    let slot = r.take(slot_len)?;
    let key = r.take(key_len)?;
    let mechanism = r.take(mechanism_len)?;
    let str_of = |b| std::str::from_utf8(b).unwrap_or("?");
    let record = Record {
        op: str_of(op),
        slot: str_of(slot),
        key,
        mechanism: str_of(mechanism),
        bytes_in: bytes_in as usize,
        bytes_out: bytes_out as usize,
    };
    let at = UNIX_EPOCH + Duration::new(secs, nanos);
    audit::push_line(text, at, &record, &audit::outcome_name(rv));
    Some(r.0)
}

fn format_compact<'a>(body: &'a [u8], text: &mut Vec<u8>) -> Option<&'a [u8]> {
    let mut r = Reader(body);
    let encrypt = r.array::<1>()?[0] != 0;
    let slot = NameId(u32::from_ne_bytes(r.array()?));
    let key = NameId(u32::from_ne_bytes(r.array()?));
    let nanos = u64::from_ne_bytes(r.array()?);
    let bytes_in = u32::from_ne_bytes(r.array()?);
    let bytes_out = u32::from_ne_bytes(r.array()?);
    let rv = u64::from_ne_bytes(r.array()?);
    let slot_label = names::with_name(slot, |n| String::from_utf8_lossy(n).into_owned());
    names::with_name(key, |key| {
        let record = Record {
            op: audit::crypt_op(encrypt),
            slot: &slot_label,
            key,
            mechanism: audit::CRYPT_MECHANISM,
            bytes_in: bytes_in as usize,
            bytes_out: bytes_out as usize,
        };
        let at = UNIX_EPOCH + Duration::from_nanos(nanos);
        audit::push_line(text, at, &record, &audit::outcome_name(rv));
    });
    Some(r.0)
}

/// A cursor over an entry's bytes; `None` when they run out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn since(at: SystemTime) -> Duration {
        at.duration_since(UNIX_EPOCH).unwrap()
    }

    /// What the synchronous path writes for the same record at the same time.
    fn direct_line(r: &Record<'_>, rv: u64, at: SystemTime) -> Vec<u8> {
        let mut out = Vec::new();
        audit::push_line_prefix(&mut out, at);
        audit::push_message(&mut out, r, &audit::outcome_name(rv));
        out.push(b'\n');
        out
    }

    #[test]
    fn entries_format_to_the_synchronous_text() {
        let at = UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789);
        let ok = Record {
            op: "encrypt",
            slot: "slot \"a\"",
            key: b"k\x00\xffz",
            mechanism: "CKM_AES_GCM",
            bytes_in: 32,
            bytes_out: 48,
        };
        let refused = Record {
            op: "refused:C_WrapKey",
            slot: "s",
            key: b"",
            mechanism: "",
            bytes_in: 0,
            bytes_out: 0,
        };
        let failed_rv = pkcs11_sys::CKR_ENCRYPTED_DATA_INVALID;
        let mut buf = Vec::new();
        push_record(&mut buf, &ok, pkcs11_sys::CKR_OK, since(at));
        push_text(&mut buf, b"a text line\n");
        push_record(&mut buf, &refused, failed_rv, since(at));
        let mut text = Vec::new();
        format_all(&buf, &mut text);

        let mut expected = direct_line(&ok, pkcs11_sys::CKR_OK, at);
        expected.extend_from_slice(b"a text line\n");
        expected.extend(direct_line(&refused, failed_rv, at));
        assert_eq!(
            String::from_utf8(text).unwrap(),
            String::from_utf8(expected).unwrap()
        );
        let first = String::from_utf8(direct_line(&ok, 0, at)).unwrap();
        assert!(first.starts_with("2026-11-18T11:06:40.123Z INFO  xki_audit: op=encrypt"));
        assert!(first.contains(r#"key="k\x00\xffz""#), "{first}");
    }

    #[test]
    fn compact_entries_format_to_the_spelled_out_text() {
        let at = UNIX_EPOCH + Duration::new(1_795_000_000, 987_654_321);
        let slot = names::intern(b"compact slot").unwrap();
        let key = names::intern(b"key \"q\"\x01").unwrap();
        for (encrypt, rv) in [(true, 0), (false, pkcs11_sys::CKR_ENCRYPTED_DATA_INVALID)] {
            let compact = CompactRecord {
                encrypt,
                slot,
                key,
                bytes_in: 4096,
                bytes_out: if encrypt { 4112 } else { 0 },
                rv,
            };
            let mut buf = Vec::new();
            push_compact(&mut buf, &compact, since(at));
            assert_eq!(buf.len(), 34, "fixed size");
            let mut text = Vec::new();
            format_all(&buf, &mut text);
            let spelled = Record {
                op: if encrypt { "encrypt" } else { "decrypt" },
                slot: "compact slot",
                key: b"key \"q\"\x01",
                mechanism: "CKM_AES_GCM",
                bytes_in: 4096,
                bytes_out: compact.bytes_out as usize,
            };
            assert_eq!(
                String::from_utf8(text).unwrap(),
                String::from_utf8(direct_line(&spelled, rv, at)).unwrap()
            );
        }
    }

    #[test]
    fn a_truncated_buffer_formats_what_is_whole_and_stops() {
        let at = UNIX_EPOCH;
        let r = Record {
            op: "decrypt",
            slot: "s",
            key: b"key",
            mechanism: "CKM_AES_GCM",
            bytes_in: 1,
            bytes_out: 2,
        };
        let mut buf = Vec::new();
        push_record(&mut buf, &r, 0, since(at));
        let whole = buf.len();
        push_record(&mut buf, &r, 0, since(at));
        for cut_at in whole..buf.len() {
            let mut text = Vec::new();
            format_all(&buf[..cut_at], &mut text);
            assert_eq!(text, direct_line(&r, 0, at), "cut at {cut_at}");
        }
    }

    #[test]
    fn overlong_strings_are_cut_not_misread() {
        let long = vec![b'x'; 70_000];
        let r = Record {
            op: "encrypt",
            slot: "s",
            key: &long,
            mechanism: "CKM_AES_GCM",
            bytes_in: 0,
            bytes_out: 0,
        };
        let mut buf = Vec::new();
        push_record(&mut buf, &r, 0, Duration::ZERO);
        push_text(&mut buf, b"next\n");
        let mut text = Vec::new();
        format_all(&buf, &mut text);
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(&format!("key=\"{}\"", "x".repeat(65_535))));
        assert_eq!(lines[1], "next");
    }
}
