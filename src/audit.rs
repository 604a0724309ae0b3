//! Audit records: every key use and lifecycle change, on the dedicated `xki_audit` log target.
//!
//! A record names the time (added by the logger), slot, key label, operation, mechanism, byte
//! counts and result. It never holds data, key bytes or PINs: the only inputs are sizes and
//! public key names.

use crate::rv::{CkResult, Rv};

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

/// Write the record with the outcome of the operation, and pass the outcome through.
pub fn record<T>(r: Record<'_>, result: CkResult<T>) -> CkResult<T> {
    if log::log_enabled!(target: TARGET, log::Level::Info) {
        let outcome = match &result {
            Ok(_) => "CKR_OK".to_string(),
            Err(rv) => rv.name(),
        };
        log::info!(
            target: TARGET,
            "op={} slot=\"{}\" key=\"{}\" mechanism={} in={} out={} result={}",
            r.op,
            printable(r.slot.as_bytes()),
            printable(r.key),
            if r.mechanism.is_empty() { "-" } else { r.mechanism },
            r.bytes_in,
            r.bytes_out,
            outcome
        );
    }
    result
}

/// Record a refused key-material path and return the refusal.
pub fn refusal(function: &str, slot: &str, key: &[u8], rv: Rv) -> CkResult<()> {
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
