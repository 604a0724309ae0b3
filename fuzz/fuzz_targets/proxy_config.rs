//! The proxy's TOML config (proxy/src/config.rs): parse and validate as `Config::load` does
//! (minus reading the file); never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xki_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = toml::from_str::<Config>(text) {
        if let Err(e) = c.validate() {
            let _ = e.to_string();
        }
    }
});
