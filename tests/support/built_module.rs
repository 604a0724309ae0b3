//! Where the BUILT `libxki_pkcs11.so` of this test run is. Included with `#[path]` by the test
//! binaries that load or inspect the shared object.
//!
//! Cargo builds the cdylib for integration tests into `target/<profile>/deps/` (with this run's
//! features); the copy in `target/<profile>/` is refreshed only by `cargo build`, so it can be
//! stale or missing after a plain `cargo test`. The `deps/` copy wins when it exists.

use std::path::PathBuf;

/// The `.so` to test; panics with build instructions when there is none.
pub fn built_module() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps layout");
    let fresh = deps.join("libxki_pkcs11.so");
    if fresh.exists() {
        return fresh;
    }
    let uplifted = deps
        .parent()
        .expect("target/<profile>/deps layout")
        .join("libxki_pkcs11.so");
    assert!(
        uplifted.exists(),
        "\n\n*** {} is not built. These tests load the BUILT module; run \
         `cargo build -p xki-pkcs11` (or `cargo test -p xki-pkcs11`, which builds it). ***\n",
        uplifted.display()
    );
    uplifted
}
