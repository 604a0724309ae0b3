//! The module's TOML config (src/config.rs): any text becomes a validated config or an error
//! naming the problem; never a panic. Accepted configs are checked for what validation
//! promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xki_pkcs11::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(c) => {
            assert!(!c.slots.is_empty());
            for s in &c.slots {
                assert!(!s.label.is_empty() && s.label.len() <= 32);
                assert!(s.backends.iter().all(|b| c.backends.contains_key(b)));
                let _ = s.pin_state_path();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
