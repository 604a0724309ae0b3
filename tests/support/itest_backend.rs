//! Which real token the integration suites put behind the module's hardware slot:
//! `XKI_ITEST_BACKEND` = `softhsm` (default) | `emu-luna` | `emu-luna-fips` | `emu-cloudhsm` |
//! `emu-nshield` | `kryoptic`. Included with `#[path]` by the module's and the proxy's test
//! fixtures.
//!
//! - `softhsm`: SoftHSM2 (`softhsm/new-token.sh`).
//! - `emu-<mode>`: the TEST-ONLY vendor emulator (`tests/vendor-emu`) over a throwaway
//!   SoftHSM2 token: the built `libxki_vendor_emu.so` copied as `libxki-emu-<mode>.so`;
//!   SoftHSM2 used directly stays the reference library.
//! - `kryoptic`: a kryoptic token (`tests/scripts/kryoptic.sh`, built and cached on first use;
//!   `XKI_KRYOPTIC_LIB` names a prebuilt library instead); kryoptic itself is the reference.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2 as Debian installs it.
pub const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The environment variable that picks the backend.
pub const BACKEND_ENV: &str = "XKI_ITEST_BACKEND";
/// The user name CloudHSM's `<user>:<password>` PIN carries in the emulated mode.
pub const CLOUDHSM_USER: &str = "xki";

/// The token kind behind the module's hardware slot in this test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    SoftHsm,
    EmuLuna,
    EmuLunaFips,
    EmuCloudHsm,
    EmuNShield,
    Kryoptic,
}

impl BackendKind {
    /// Every kind, with its `XKI_ITEST_BACKEND` value.
    pub const ALL: [BackendKind; 6] = [
        BackendKind::SoftHsm,
        BackendKind::EmuLuna,
        BackendKind::EmuLunaFips,
        BackendKind::EmuCloudHsm,
        BackendKind::EmuNShield,
        BackendKind::Kryoptic,
    ];

    /// The `XKI_ITEST_BACKEND` value.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::SoftHsm => "softhsm",
            BackendKind::EmuLuna => "emu-luna",
            BackendKind::EmuLunaFips => "emu-luna-fips",
            BackendKind::EmuCloudHsm => "emu-cloudhsm",
            BackendKind::EmuNShield => "emu-nshield",
            BackendKind::Kryoptic => "kryoptic",
        }
    }

    /// The emulator mode (`libxki-emu-<mode>.so`), for the emulated kinds.
    pub fn emu_mode(self) -> Option<&'static str> {
        self.name().strip_prefix("emu-")
    }

    /// Whether the token accepts a caller's IV for GCM encryption (SoftHSM2, Luna outside
    /// FIPS mode, kryoptic); the others generate the IV themselves.
    pub fn takes_caller_iv(self) -> bool {
        matches!(
            self,
            BackendKind::SoftHsm | BackendKind::EmuLuna | BackendKind::Kryoptic
        )
    }

    /// Whether the token is a SoftHSM2 token (directly or behind the emulator).
    pub fn is_softhsm_token(self) -> bool {
        self != BackendKind::Kryoptic
    }
}

/// The kind `XKI_ITEST_BACKEND` asks for (unset or empty: SoftHSM2). An unknown value fails
/// loudly: a typo must not quietly test SoftHSM2 again.
pub fn backend_kind() -> BackendKind {
    let value = std::env::var(BACKEND_ENV).unwrap_or_default();
    if value.is_empty() {
        return BackendKind::SoftHsm;
    }
    BackendKind::ALL
        .into_iter()
        .find(|k| k.name() == value)
        .unwrap_or_else(|| {
            panic!(
                "{BACKEND_ENV}={value:?} is not one of {:?}",
                BackendKind::ALL.map(BackendKind::name)
            )
        })
}

/// One throwaway token of the run's kind, ready for a module config.
#[derive(Clone, Debug)]
pub struct BackendToken {
    pub kind: BackendKind,
    /// The library the module's backend loads (`module = ...`).
    pub module: PathBuf,
    /// The library to use directly as the reference (SoftHSM2 or kryoptic).
    pub direct: PathBuf,
    /// The PIN the backend logs in with (CloudHSM: `<user>:<password>`).
    pub backend_pin: String,
    /// The environment variable and file that locate the token store (`SOFTHSM2_CONF` or
    /// `KRYOPTIC_CONF`).
    pub conf_var: &'static str,
    pub conf: PathBuf,
}

impl BackendToken {
    /// Point this process at the token store.
    pub fn set_env(&self) {
        std::env::set_var(self.conf_var, &self.conf);
    }
}

/// Repository root: the nearest ancestor of the including crate's directory that holds
/// `softhsm/new-token.sh` (the module's crate is the root, the proxy's is `proxy/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("softhsm/new-token.sh").exists())
        .expect("repository root above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The built `libxki_vendor_emu.so` next to this test binary (`target/<profile>/deps`, where
/// cargo puts it for the crates that depend on it), else the uplifted one.
pub fn built_emulator() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let fresh = deps.join("libxki_vendor_emu.so");
    if fresh.exists() {
        return fresh;
    }
    let uplifted = deps
        .parent()
        .expect("target/<profile>")
        .join("libxki_vendor_emu.so");
    assert!(
        uplifted.exists(),
        "{} is not built: run `cargo build -p xki-vendor-emu`",
        uplifted.display()
    );
    uplifted
}

/// The kryoptic library (`XKI_KRYOPTIC_LIB`, else built or taken from the cache by
/// `tests/scripts/kryoptic.sh build`).
pub fn kryoptic_lib() -> PathBuf {
    if let Some(lib) = std::env::var_os("XKI_KRYOPTIC_LIB") {
        return PathBuf::from(lib);
    }
    let script = repo_root().join("tests/scripts/kryoptic.sh");
    let out = run(
        Command::new("bash").arg(&script).arg("build"),
        "tests/scripts/kryoptic.sh build",
    );
    let lib = out.lines().last().unwrap_or_default().trim();
    assert!(Path::new(lib).exists(), "kryoptic.sh build printed {lib:?}");
    PathBuf::from(lib)
}

/// Make a throwaway token of the run's kind in `dir`, labelled `label`, user PIN `pin`.
pub fn new_backend_token(dir: &Path, label: &str, pin: &str) -> BackendToken {
    let kind = backend_kind();
    match kind {
        BackendKind::Kryoptic => {
            let lib = kryoptic_lib();
            let store = dir.join("kryoptic");
            run(
                Command::new("bash")
                    .arg(repo_root().join("tests/scripts/kryoptic.sh"))
                    .arg("new-token")
                    .arg(&store)
                    .arg(label)
                    .arg(pin)
                    .env("XKI_KRYOPTIC_LIB", &lib),
                "tests/scripts/kryoptic.sh new-token",
            );
            BackendToken {
                kind,
                module: lib.clone(),
                direct: lib,
                backend_pin: pin.to_string(),
                conf_var: "KRYOPTIC_CONF",
                conf: store.join("kryoptic.conf"),
            }
        }
        _ => {
            run(
                Command::new("bash").arg(repo_root().join("softhsm/ensure-installed.sh")),
                "softhsm/ensure-installed.sh",
            );
            let store = dir.join("softhsm");
            run(
                Command::new("bash")
                    .arg(repo_root().join("softhsm/new-token.sh"))
                    .arg(&store)
                    .arg(label)
                    .arg(pin),
                "softhsm/new-token.sh",
            );
            let module = match kind.emu_mode() {
                Some(mode) => {
                    // A copy per mode (not a link: one loaded instance per inode).
                    let copy = dir.join(format!("libxki-emu-{mode}.so"));
                    std::fs::copy(built_emulator(), &copy).expect("copy the vendor emulator");
                    copy
                }
                None => PathBuf::from(SOFTHSM_LIB),
            };
            let backend_pin = match kind {
                BackendKind::EmuCloudHsm => format!("{CLOUDHSM_USER}:{pin}"),
                _ => pin.to_string(),
            };
            BackendToken {
                kind,
                module,
                direct: PathBuf::from(SOFTHSM_LIB),
                backend_pin,
                conf_var: "SOFTHSM2_CONF",
                conf: store.join("softhsm2.conf"),
            }
        }
    }
}
