//! The embedded key-store file format (src/backend/embedded/format.rs, records.rs): the
//! framing before the seal, the GCM unseal with a known key, and the records inside.
//! Mode 0: the input is a whole store file (framing + unseal with the known key + records).
//! Mode 1: the input is the sealed body's plaintext, sealed here with the known key so the
//! record decoder is reached; decoded contents must re-encode to what decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xki_pkcs11::backend::embedded::format::{self, Identity};
use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams, Kek};
use xki_pkcs11::backend::embedded::records::Contents;
use zeroize::Zeroizing;

fn kek() -> Kek {
    Zeroizing::new([0x42; 32])
}

fn check_records(plain: &[u8]) {
    if let Ok(c) = Contents::decode(plain) {
        let again = c.encode();
        let back = Contents::decode(&again).expect("re-encoded contents decode");
        assert_eq!(back, c, "records do not round-trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(parsed) = format::parse(rest) {
            if let Some(plain) = parsed.open(&kek()) {
                check_records(&plain);
            }
        }
    } else {
        let identity = Identity {
            kdf: KdfKind::KeyFile,
            params: KdfParams {
                m_cost_kib: 0,
                t_cost: 0,
                p_cost: 0,
            },
            salt: [0; 16],
            token_id: [7; 16],
        };
        let file = format::seal(&identity, &kek(), rest).expect("seal");
        let parsed = format::parse(&file).expect("a sealed file parses");
        let plain = parsed
            .open(&kek())
            .expect("a sealed file opens with its key");
        assert_eq!(&plain[..], rest);
        // Any single flipped bit in the file fails the seal.
        let mut bad = file.clone();
        let at = usize::from(mode) * 7919 % bad.len();
        bad[at] ^= 1 << (mode % 8);
        if let Ok(p) = format::parse(&bad) {
            assert!(p.open(&kek()).is_none(), "a modified store opened");
        }
        check_records(rest);
    }
});
