//! The format of every line the module writes (log and audit): plain text, or one JSON object
//! per line, so that a sink the proxy writes JSON to stays JSON throughout.
//!
//! Chosen by `XKI_LOG_FORMAT` (`text` or `json`; the proxy sets it from its own `log_format`
//! before it loads the module), else the config's `log_format`, else text. JSON lines carry
//! the keys the proxy's JSON lines carry (`timestamp`, `level`, `target`, and `message` for
//! log lines; the record's fields for audit lines).

use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that chooses the line format (overrides the config).
pub const FORMAT_ENV: &str = "XKI_LOG_FORMAT";

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether lines are JSON.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The format `XKI_LOG_FORMAT` asks for: `Some(true)` for JSON, `Some(false)` for text,
/// `None` when unset (or not one of the two: the config decides, and its validation names
/// a bad value).
pub fn from_env() -> Option<bool> {
    parse(&std::env::var(FORMAT_ENV).ok()?)
}

/// `"json"` or `"text"` (case-insensitive) as JSON or not.
pub fn parse(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "json" => Some(true),
        "text" => Some(false),
        _ => None,
    }
}

/// Set the format: the environment's choice, else `config` (`log_format`), else text.
pub fn set(config: Option<&str>) {
    let json = from_env()
        .or_else(|| config.and_then(parse))
        .unwrap_or(false);
    JSON.store(json, Ordering::Relaxed);
}

/// Append `s` as the inside of a JSON string (no quotes): `"` and `\` escaped, control
/// characters as `\u00XX`.
pub fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut out = Vec::new();
        push_json_str(&mut out, b"a\"b\\c\nd\x01\x7f\xc3\xa9");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\"b\\\\c\\nd\\u0001\\u007fé"
        );
        assert_eq!(parse("JSON"), Some(true));
        assert_eq!(parse("text"), Some(false));
        assert_eq!(parse("yaml"), None);
    }
}
