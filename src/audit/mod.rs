//! Audit records: every key use and lifecycle change, on the dedicated `xki_audit` log target.
//!
//! A record names the time (added by the logger), slot, key label, operation, mechanism, byte
//! counts and result. It never holds data, key bytes or PINs: the only inputs are sizes and
//! public key names.

use crate::rv::{CkResult, Rv};
use names::NameId;
use std::time::SystemTime;

mod entry;
pub mod file;
pub mod health;
pub mod names;
mod writer;

/// The log target that `logging.rs` routes to the audit sink.
pub const TARGET: &str = "xki_audit";

/// One audit record.
pub struct Record<'a> {
    /// Operation name (`encrypt`, `decrypt`, `generate`, `set_attributes`, `destroy`,
    /// `refused:C_WrapKey`, ...).
    pub op: &'a str,
    /// Virtual slot label.
    pub slot: &'a str,
    /// Key label (public), empty when not about one key.
    pub key: &'a [u8],
    /// Mechanism name, or empty.
    pub mechanism: &'a str,
    /// Bytes in.
    pub bytes_in: usize,
    /// Bytes out.
    pub bytes_out: usize,
}

/// Escape a label for a single-line record: printable ASCII as is, everything else `\xNN`.
#[cfg(test)]
fn printable(label: &[u8]) -> String {
    let mut s = String::with_capacity(label.len());
    for &b in label {
        if (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// [`printable`], appended to `out`.
fn push_printable(out: &mut Vec<u8>, label: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let plain = |b: &u8| (0x21..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    // The usual label needs no escaping: one copy.
    if label.iter().all(plain) {
        out.extend_from_slice(label);
        return;
    }
    for b in label {
        if plain(b) {
            out.push(*b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

/// The record's message in text (everything after `xki_audit: `), appended to `out`.
pub(crate) fn push_message(out: &mut Vec<u8>, r: &Record<'_>, outcome: &str) {
    use crate::timefmt::push_digits;
    out.extend_from_slice(b"op=");
    out.extend_from_slice(r.op.as_bytes());
    out.extend_from_slice(b" slot=\"");
    push_printable(out, r.slot.as_bytes());
    out.extend_from_slice(b"\" key=\"");
    push_printable(out, r.key);
    out.extend_from_slice(b"\" mechanism=");
    out.extend_from_slice(
        if r.mechanism.is_empty() {
            "-"
        } else {
            r.mechanism
        }
        .as_bytes(),
    );
    out.extend_from_slice(b" in=");
    push_digits(out, r.bytes_in as u64, 1);
    out.extend_from_slice(b" out=");
    push_digits(out, r.bytes_out as u64, 1);
    out.extend_from_slice(b" result=");
    out.extend_from_slice(outcome.as_bytes());
}

/// What the logger writes before an audit message: `<timestamp> INFO  xki_audit: `.
pub(crate) fn push_line_prefix(out: &mut Vec<u8>, at: SystemTime) {
    crate::timefmt::push_timestamp(out, at);
    out.extend_from_slice(b" INFO  ");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b": ");
}

/// One whole audit line for the record, in the configured line format (`lineformat.rs`):
/// text (`<timestamp> INFO  xki_audit: op=... result=...`) or one JSON object with the same
/// fields (`timestamp`, `level`, `target`, `op`, `slot`, `key`, `mechanism`, `in`, `out`,
/// `result`; `slot` and `key` escaped exactly as in text, so `\xNN` stands for a byte that is
/// not printable ASCII).
pub(crate) fn push_line(out: &mut Vec<u8>, at: SystemTime, r: &Record<'_>, outcome: &str) {
    if !crate::lineformat::json() {
        push_line_prefix(out, at);
        push_message(out, r, outcome);
        out.push(b'\n');
        return;
    }
    use crate::lineformat::push_json_str;
    use crate::timefmt::push_digits;
    let escaped = |s: &[u8]| {
        let mut v = Vec::with_capacity(s.len());
        push_printable(&mut v, s);
        v
    };
    out.extend_from_slice(b"{\"timestamp\":\"");
    crate::timefmt::push_timestamp(out, at);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\",\"op\":\"");
    push_json_str(out, r.op.as_bytes());
    out.extend_from_slice(b"\",\"slot\":\"");
    push_json_str(out, &escaped(r.slot.as_bytes()));
    out.extend_from_slice(b"\",\"key\":\"");
    push_json_str(out, &escaped(r.key));
    out.extend_from_slice(b"\",\"mechanism\":\"");
    push_json_str(
        out,
        if r.mechanism.is_empty() {
            b"-"
        } else {
            r.mechanism.as_bytes()
        },
    );
    out.extend_from_slice(b"\",\"in\":");
    push_digits(out, r.bytes_in as u64, 1);
    out.extend_from_slice(b",\"out\":");
    push_digits(out, r.bytes_out as u64, 1);
    out.extend_from_slice(b",\"result\":\"");
    push_json_str(out, outcome.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The `result=` word of a record for the return code `rv` (`CKR_OK` on success).
pub(crate) fn outcome_name(rv: u64) -> std::borrow::Cow<'static, str> {
    match rv {
        pkcs11_sys::CKR_OK => "CKR_OK".into(),
        code => Rv(code).name().into(),
    }
}

/// The return code of an outcome (`CKR_OK` on success).
fn rv_of<T>(result: &CkResult<T>) -> u64 {
    match result {
        Ok(_) => pkcs11_sys::CKR_OK,
        Err(rv) => rv.code(),
    }
}

/// Write the record with the outcome of the operation, and pass the outcome through.
pub fn record<T>(r: Record<'_>, result: CkResult<T>) -> CkResult<T> {
    let rv = rv_of(&result);
    // With an audit file, straight to it: no `log` formatting, no intermediate Strings (and
    // with a buffered file, no formatting at all on this thread).
    if file::record(&r, rv) {
        return result;
    }
    // No audit file: the line goes to the log sink, in the same format.
    let mut line = Vec::with_capacity(256);
    push_line(&mut line, SystemTime::now(), &r, &outcome_name(rv));
    crate::logging::write_line(&line);
    result
}

/// The record of one encryption or decryption, with its slot and key named by number where
/// the name table has them (see [`names`]).
pub struct CryptRecord<'a> {
    /// Encryption (else decryption).
    pub encrypt: bool,
    /// Virtual slot label, and its number.
    pub slot: &'a str,
    pub slot_name: Option<NameId>,
    /// Key label (may be left empty when `key_name` is set), and its number.
    pub key: &'a [u8],
    pub key_name: Option<NameId>,
    /// Bytes in and out.
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// A record whose names are all numbers: what a buffered key use costs the calling thread.
pub(crate) struct CompactRecord {
    pub encrypt: bool,
    pub slot: NameId,
    pub key: NameId,
    pub bytes_in: u32,
    pub bytes_out: u32,
    pub rv: u64,
}

/// The op word of an encryption's or decryption's record.
pub(crate) fn crypt_op(encrypt: bool) -> &'static str {
    if encrypt {
        "encrypt"
    } else {
        "decrypt"
    }
}

/// The mechanism of every encryption and decryption.
pub(crate) const CRYPT_MECHANISM: &str = "CKM_AES_GCM";

/// [`record`] for an encryption or decryption: the same text, but with a buffered audit file
/// and numbered names only a fixed-size entry reaches the buffer.
pub fn record_crypt<T>(c: CryptRecord<'_>, result: CkResult<T>) -> CkResult<T> {
    let rv = rv_of(&result);
    if let (Some(slot), Some(key), Ok(bytes_in), Ok(bytes_out)) = (
        c.slot_name,
        c.key_name,
        u32::try_from(c.bytes_in),
        u32::try_from(c.bytes_out),
    ) {
        let compact = CompactRecord {
            encrypt: c.encrypt,
            slot,
            key,
            bytes_in,
            bytes_out,
            rv,
        };
        if file::compact(&compact) {
            return result;
        }
    }
    // Spelled out. A copy of a numbered key name, so that no lock of the name table is held
    // while the record is written.
    let key_copy;
    let key: &[u8] = match c.key_name {
        Some(id) if c.key.is_empty() => {
            key_copy = names::with_name(id, |k| k.to_vec());
            &key_copy
        }
        _ => c.key,
    };
    record(
        Record {
            op: crypt_op(c.encrypt),
            slot: c.slot,
            key,
            mechanism: CRYPT_MECHANISM,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
        },
        result,
    )
}

/// Record a refused key-material path and return the refusal.
///
/// During a fail-closed outage (`health.rs`) the refusal is answered as always but its record
/// is not kept in memory: counted as lost instead, so that a caller repeating refused calls
/// cannot grow the retained records without bound (a refusal changed nothing).
pub fn refusal(function: &str, slot: &str, key: &[u8], rv: Rv) -> CkResult<()> {
    if health::refusing() {
        health::lost(1);
        return Err(rv);
    }
    let op = format!("refused:{function}");
    record(
        Record {
            op: &op,
            slot,
            key,
            mechanism: "",
            bytes_in: 0,
            bytes_out: 0,
        },
        Err(rv),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_message_matches_the_logged_one() {
        let r = Record {
            op: "encrypt",
            slot: "slot \"a\"",
            key: b"k\x00\xffz",
            mechanism: "CKM_AES_GCM",
            bytes_in: 32,
            bytes_out: 48,
        };
        let mut out = Vec::new();
        push_message(&mut out, &r, "CKR_OK");
        let logged = format!(
            "op={} slot=\"{}\" key=\"{}\" mechanism={} in={} out={} result={}",
            r.op,
            printable(r.slot.as_bytes()),
            printable(r.key),
            r.mechanism,
            r.bytes_in,
            r.bytes_out,
            "CKR_OK"
        );
        assert_eq!(String::from_utf8(out).unwrap(), logged);
    }
}
