//! Shared fixture for the pkcs11-backend tests: one throwaway SoftHSM2 token store per test
//! binary (SoftHSM2 reads `SOFTHSM2_CONF` once per process), with one token per test so tests
//! running in parallel never share a token.

#![allow(dead_code)]

use once_cell::sync::Lazy;
use std::path::{Path, PathBuf};
use std::process::Command;
use xki_pkcs11::config::{BackendConfig, BackendKind, Secret};
use zeroize::Zeroizing;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Test-only PIN that `softhsm/new-token.sh` gives every token.
pub const PIN: &[u8] = b"1234";

pub struct Store {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

static STORE: Lazy<parking_lot::Mutex<Option<Store>>> = Lazy::new(|| parking_lot::Mutex::new(None));

/// Create the token store with one token per label (all of them before the library is first
/// initialised in this process) and point `SOFTHSM2_CONF` at it. Call it first in every test
/// with the full label list of the binary.
pub fn tokens(labels: &[&str]) -> PathBuf {
    let mut store = STORE.lock();
    if let Some(s) = store.as_ref() {
        return s.path.clone();
    }
    let status = Command::new(script("ensure-installed.sh"))
        .status()
        .expect("run ensure-installed.sh");
    assert!(status.success(), "SoftHSM2 is not installed");
    let dir = tempfile::tempdir().expect("tempdir");
    // Kept in a static (never dropped).
    super::at_exit::remove_at_exit(dir.path());
    let path = dir.path().join("softhsm");
    for label in labels {
        let out = Command::new(script("new-token.sh"))
            .arg(&path)
            .arg(label)
            .output()
            .expect("run new-token.sh");
        assert!(
            out.status.success(),
            "new-token.sh {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::env::set_var("SOFTHSM2_CONF", path.join("softhsm2.conf"));
    *store = Some(Store {
        _dir: dir,
        path: path.clone(),
    });
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("softhsm")
        .join(name)
}

/// A backend config for the token `label` (PIN given separately, as the module does).
pub fn config(label: &str) -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Pkcs11,
        module: Some(MODULE.into()),
        token_label: Some(label.into()),
        pin_file: Some("/nonexistent/user.pin".into()),
        ..Default::default()
    }
}

pub fn pin() -> Option<Secret> {
    Some(Zeroizing::new(PIN.to_vec()))
}
