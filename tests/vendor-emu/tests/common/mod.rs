//! Shared fixture of the emulator's tests: a throwaway SoftHSM2 token, SoftHSM2 loaded
//! directly, and one copy of the BUILT emulator per mode (`libxki-emu-<mode>.so`), each
//! loaded through cryptoki as a consumer would.

#![allow(dead_code)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "1234";
pub const TOKEN: &str = "xki-emu-test";
/// Every mode with the manufacturer ID it must report (the fixed strings the module's quirk
/// table matches on).
pub const MODES: [(&str, &str); 4] = [
    ("luna", "SafeNet, Inc."),
    ("luna-fips", "SafeNet, Inc."),
    ("cloudhsm", "Marvell Semiconductors, Inc."),
    ("nshield", "nCipher Corp. Ltd"),
];

/// The built `libxki_vendor_emu.so` of this test run (`deps/` copy first: it carries this
/// run's build; the uplifted one may be stale).
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
        "build the emulator: cargo build -p xki-vendor-emu"
    );
    uplifted
}

/// Copy the built emulator into `dir` as `libxki-emu-<mode>.so` (a copy, not a link: the
/// loader shares one instance per inode).
pub fn mode_copy(dir: &Path, mode: &str) -> PathBuf {
    let dest = dir.join(format!("libxki-emu-{mode}.so"));
    std::fs::copy(built_emulator(), &dest).expect("copy the emulator");
    dest
}

/// A throwaway SoftHSM2 token in `dir` (via the repository's script); sets SOFTHSM2_CONF.
pub fn new_token(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../softhsm/new-token.sh");
    let store = dir.join("softhsm");
    let out = Command::new(&script)
        .arg(&store)
        .arg(TOKEN)
        .arg(PIN)
        .output()
        .expect("run softhsm/new-token.sh");
    assert!(
        out.status.success(),
        "new-token.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::env::set_var("SOFTHSM2_CONF", store.join("softhsm2.conf"));
}

/// Initialise a context, tolerating one already initialised.
pub fn init(ctx: &Pkcs11) {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
}

/// An RW session on the test token of `ctx`.
pub fn session(ctx: &Pkcs11) -> Session {
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|t| t.label().trim_end() == TOKEN)
                .unwrap_or(false)
        })
        .expect("the test token");
    ctx.open_rw_session(slot).expect("open session")
}

/// The shared fixture: SoftHSM2 direct (logged in, key made) and every mode's copy.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub direct: Pkcs11,
    /// Keeps the login (per token and process in SoftHSM2) for the whole binary.
    pub keeper: Session,
    pub key: ObjectHandle,
    pub modes: Vec<(&'static str, Pkcs11, PathBuf)>,
}

// SAFETY (Sync): cryptoki's Session is Send but not Sync; the keeper is only held, never
// used after construction.
unsafe impl Sync for Fixture {}

/// The fixture's directory, removed at exit (the fixture lives in a static, never dropped).
static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture_dir() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        if FIXTURE_DIR.set(dir.path().to_path_buf()).is_ok() {
            // SAFETY: registers a plain function with no captured state.
            unsafe { libc::atexit(remove_fixture_dir) };
        }
        new_token(dir.path());
        let direct = Pkcs11::new(SOFTHSM).expect("load SoftHSM2");
        init(&direct);
        let keeper = session(&direct);
        keeper
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .expect("login");
        let key = keeper
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Label(b"emu-key".to_vec()),
                ],
            )
            .expect("generate key");
        let modes = MODES
            .iter()
            .map(|(mode, _)| {
                let path = mode_copy(dir.path(), mode);
                let ctx = Pkcs11::new(&path).unwrap_or_else(|e| panic!("load {mode}: {e}"));
                init(&ctx);
                (*mode, ctx, path)
            })
            .collect();
        Fixture {
            dir,
            direct,
            keeper,
            key,
            modes,
        }
    })
}

impl Fixture {
    /// The context of one mode's copy.
    pub fn mode(&self, name: &str) -> &Pkcs11 {
        &self
            .modes
            .iter()
            .find(|(m, _, _)| *m == name)
            .expect("mode")
            .1
    }

    /// Path of one mode's copy.
    pub fn mode_path(&self, name: &str) -> &Path {
        &self
            .modes
            .iter()
            .find(|(m, _, _)| *m == name)
            .expect("mode")
            .2
    }
}

/// AES-GCM, 128-bit tag.
pub fn gcm<'a>(iv: &'a mut [u8], aad: &'a [u8]) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, 128.into()).expect("gcm params"))
}

/// The PKCS#11 code of a failed call.
#[track_caller]
pub fn rv_of<T: std::fmt::Debug>(r: cryptoki::error::Result<T>) -> RvError {
    match r {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}
