//! The four request bodies (proxy/src/api.rs, ops/): bytes -> JSON -> requestMetadata ->
//! base64 fields, lengths, algorithm -> the validated operation, exactly as the router does
//! before the HSM is asked; plus the URI path parser. The harness asserts the invariants the
//! HSM part relies on (lengths of IV, tag, metadata, data, AAD).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xki_proxy::http::router::parse_path;
use xki_proxy::ops::fuzzing::validate_body;
use xki_proxy::ops::Op;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let op = match sel % 5 {
        0 => Op::Metadata,
        1 => Op::Encrypt,
        2 => Op::Decrypt,
        3 => Op::Health,
        _ => {
            if let Ok(path) = std::str::from_utf8(body) {
                if let Some(p) = parse_path(path) {
                    assert!(path.ends_with(match p.op {
                        Op::Health => "health",
                        Op::Metadata => "metadata",
                        Op::Encrypt => "encrypt",
                        Op::Decrypt => "decrypt",
                    }));
                }
            }
            return;
        }
    };
    if let Err(e) = validate_body(op, body) {
        let _ = e.body();
    }
});
