//! Shared fixture of the `module_*` integration tests: the BUILT `libxki_pkcs11.so`, loaded
//! the way a real consumer loads it (the `cryptoki` crate, or `dlopen` + `C_GetInterface` for
//! raw calls), configured with two slots that carry the same user PIN:
//!
//! - slot 0 (`softhsm`): a throwaway token of the run's backend kind ([`backend_kind`],
//!   `XKI_ITEST_BACKEND`: SoftHSM2 by default, the vendor emulator in one of its modes over a
//!   SoftHSM2 token, or kryoptic; see `itest_backend.rs` beside this folder). Its name and label
//!   stay `softhsm` / `xki-softhsm` whatever the kind, so every test runs unchanged;
//! - slot 1 (`embedded`): the module's embedded token, sealed with the same PIN.
//!
//! The module is process-global, so each test binary initialises it once ([`fixture`]).
//! Behavioural tests run against both slots through [`for_each_token`].

#![allow(dead_code)]

use super::{built_module, itest_backend};

#[allow(unused_imports)]
pub use itest_backend::{backend_kind, new_backend_token, BackendKind, BackendToken};

/// The run's reference library (what [`Fixture::direct`] loads), for tests that load it
/// themselves: SoftHSM2 for the SoftHSM2-based kinds (the emulator's token too), kryoptic on
/// kryoptic.
pub fn reference_library() -> PathBuf {
    match backend_kind() {
        BackendKind::Kryoptic => itest_backend::kryoptic_lib(),
        _ => PathBuf::from(SOFTHSM),
    }
}

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use once_cell::sync::OnceCell;
use pkcs11_sys::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2 as installed by Debian (the reference library of the SoftHSM2-based kinds).
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The test-only user PIN of both slots.
pub const PIN: &str = "1234";
/// Label of the throwaway token behind slot 0 (SoftHSM2's, or kryoptic's).
pub const SOFTHSM_TOKEN: &str = "xki-itest";
/// Token labels the module gives its two slots.
pub const SLOT_LABELS: [&str; 2] = ["xki-softhsm", "xki-embedded"];
/// Short names used to label assertion failures.
pub const SLOT_NAMES: [&str; 2] = ["softhsm", "embedded"];

/// The built `.so` under test (see `tests/support/built_module.rs`).
pub fn so_path() -> PathBuf {
    built_module::built_module()
}

/// Fixture options (fixed per test binary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `allow_destroy = true` on both slots.
    pub allow_destroy: bool,
    /// Load and initialise SoftHSM2 directly (a second cryptoki context) BEFORE the module
    /// initialises, so the module shares an initialisation it does not own.
    pub direct_softhsm_first: bool,
    /// `audit_flush_ms`; 0 (the default here) writes every record before the call returns,
    /// because most tests read the audit file right after their calls.
    pub audit_flush_ms: u64,
}

/// Everything one test binary shares.
pub struct Fixture {
    /// Holds the token store, embedded store, PIN file and config.
    pub dir: tempfile::TempDir,
    /// The written module config.
    pub config: PathBuf,
    /// The token store config of slot 0's token (`SOFTHSM2_CONF`; `KRYOPTIC_CONF` on kryoptic).
    pub softhsm_conf: PathBuf,
    /// Slot 0's token: its kind, the library the module loads and the reference library.
    pub backend: BackendToken,
    /// The module, loaded through cryptoki.
    pub ctx: Pkcs11,
    /// The reference library loaded directly, when [`Options::direct_softhsm_first`] asked.
    pub direct: Option<Pkcs11>,
    /// The reference library loaded directly on first use (see [`Fixture::direct`]).
    direct_lazy: OnceCell<Pkcs11>,
    /// One logged-in session per slot that lives as long as the process, so that sessions
    /// closing in parallel tests never log the token out under another test.
    keepers: std::sync::Mutex<Vec<Session>>,
    pub options: Options,
}

static FIXTURE: OnceCell<Fixture> = OnceCell::new();

/// The binary's fixture with default options.
pub fn fixture() -> &'static Fixture {
    fixture_with(Options::default())
}

/// The binary's fixture; every call in one binary must pass the same options.
pub fn fixture_with(options: Options) -> &'static Fixture {
    let f = FIXTURE.get_or_init(|| Fixture::new(options));
    assert_eq!(f.options, options, "one binary, one fixture configuration");
    f
}

/// Run a shell script of the repository and fail with its output if it fails.
pub fn run_script(script: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Repository path.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Create a SoftHSM2 token store with one token under `dir/softhsm`; returns SOFTHSM2_CONF.
pub fn new_softhsm_token(dir: &Path, label: &str) -> PathBuf {
    run_script(&repo("softhsm/ensure-installed.sh"), &[]);
    let store = dir.join("softhsm");
    run_script(
        &repo("softhsm/new-token.sh"),
        &[store.as_os_str(), label.as_ref(), PIN.as_ref()],
    );
    store.join("softhsm2.conf")
}

/// Write the two-slot module config into `dir` (PIN files included), slot 0 on `backend`;
/// returns its path.
pub fn write_config(dir: &Path, options: Options, backend: &BackendToken) -> PathBuf {
    let pin_file = dir.join("user.pin");
    std::fs::write(&pin_file, PIN).expect("write pin file");
    // The backend logs in with its own PIN format (CloudHSM: user:password); callers of the
    // module keep the slot PIN.
    let backend_pin_file = dir.join("backend.pin");
    std::fs::write(&backend_pin_file, &backend.backend_pin).expect("write backend pin file");
    let slot0_pin = if backend.backend_pin == PIN {
        String::new()
    } else {
        format!("user_pin_file = \"{}\"\n", pin_file.display())
    };
    let conf = dir.join("pkcs11.toml");
    let text = format!(
        r#"log_level = "warn"
log_file = "{log}"
audit_file = "{audit}"
audit_flush_ms = {flush}

[[slot]]
label = "{s0}"
backends = ["softhsm"]
allow_destroy = {destroy}
{slot0_pin}
[[slot]]
label = "{s1}"
backends = ["emb"]
allow_destroy = {destroy}

[backend.softhsm]
module = "{module}"
token_label = "{SOFTHSM_TOKEN}"
pin_file = "{backend_pin}"

[backend.emb]
type = "embedded"
create = true
store = "{store}"
pin_file = "{pin}"
"#,
        s0 = SLOT_LABELS[0],
        s1 = SLOT_LABELS[1],
        destroy = options.allow_destroy,
        flush = options.audit_flush_ms,
        pin = pin_file.display(),
        module = backend.module.display(),
        backend_pin = backend_pin_file.display(),
        store = dir.join("embedded.store").display(),
        audit = dir.join("audit.log").display(),
        log = dir.join("module.log").display(),
    );
    std::fs::write(&conf, text).expect("write config");
    conf
}

/// Point the process at a config: the token store (`SOFTHSM2_CONF` / `KRYOPTIC_CONF`),
/// `XKI_PKCS11_CONF`, cheap Argon2.
pub fn set_env(backend: &BackendToken, config: &Path) {
    backend.set_env();
    std::env::set_var("XKI_PKCS11_CONF", config);
    std::env::set_var("XKI_EMBEDDED_TEST_KDF", "fast");
    // The slots' PIN attempt counters (pin_attempts.rs) go next to the config, not into the
    // user's data directory.
    if let Some(dir) = config.parent() {
        std::env::set_var("XDG_DATA_HOME", dir.join("data"));
    }
}

/// Initialise a cryptoki context, tolerating an initialisation someone else did.
pub fn init_ctx(ctx: &Pkcs11) {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
}

/// Log a session in, tolerating a login that another session of the token already did.
pub fn login(session: &Session) {
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
}

impl Fixture {
    fn new(options: Options) -> Fixture {
        let so = so_path();
        let (dir, backend, config) = prepare(options);
        let direct = options.direct_softhsm_first.then(|| {
            let d = Pkcs11::new(&backend.direct).expect("load the reference library directly");
            d.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .expect("reference library C_Initialize (direct, first)");
            d
        });
        let ctx = Pkcs11::new(&so).expect("load the built module through cryptoki");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap_or_else(|e| {
                panic!(
                    "module C_Initialize failed: {e}; config:\n{}",
                    std::fs::read_to_string(&config).unwrap_or_default()
                )
            });
        let mut keepers = Vec::new();
        for slot in ctx.get_slots_with_token().expect("slot list") {
            let s = ctx.open_rw_session(slot).expect("keeper session");
            login(&s);
            keepers.push(s);
        }
        assert_eq!(keepers.len(), 2, "the config has two slots");
        Fixture {
            dir,
            config,
            softhsm_conf: backend.conf.clone(),
            backend,
            ctx,
            direct,
            direct_lazy: OnceCell::new(),
            keepers: std::sync::Mutex::new(keepers),
            options,
        }
    }

    /// The module's slots, in order (0 = softhsm, 1 = embedded).
    pub fn slots(&self) -> Vec<Slot> {
        self.ctx.get_slots_with_token().expect("slot list")
    }

    /// A second cryptoki context on the token's own library (same process, same token
    /// store): SoftHSM2 for the SoftHSM2-based kinds (the emulator's token too), kryoptic on
    /// kryoptic.
    pub fn direct(&self) -> Pkcs11 {
        if let Some(d) = &self.direct {
            return d.clone();
        }
        self.direct_lazy
            .get_or_init(|| {
                let d = Pkcs11::new(&self.backend.direct).expect("load the reference library");
                init_ctx(&d);
                d
            })
            .clone()
    }

    /// A logged-in RW session on slot 0's token used directly.
    pub fn direct_session(&self) -> Session {
        let d = self.direct();
        let slot = d
            .get_slots_with_token()
            .expect("SoftHSM2 slots")
            .into_iter()
            .find(|s| {
                d.get_token_info(*s)
                    .map(|t| t.label().trim_end() == SOFTHSM_TOKEN)
                    .unwrap_or(false)
            })
            .expect("the throwaway token in the reference library");
        let s = d.open_rw_session(slot).expect("direct session");
        login(&s);
        s
    }
}

/// How a slot of the module takes the IV of a classic GCM encryption
/// (`C_EncryptInit(CKM_AES_GCM)`; README "Classic C_EncryptInit(CKM_AES_GCM) and IVs").
/// Decryption takes the caller's IV on every slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptIv {
    /// The caller's IV is used as given: SoftHSM2, `emu-luna`, kryoptic, the embedded slot.
    Caller,
    /// The slot's HSM generates the IV (slot 0 over `emu-luna-fips`, `emu-cloudhsm`,
    /// `emu-nshield`): a caller's IV is `CKR_MECHANISM_PARAM_INVALID`; 12 zero bytes in `pIv`
    /// (the zero-IV convention) get the generated IV written back there by
    /// `C_Encrypt`/`C_EncryptFinal`.
    Generated,
}

impl EncryptIv {
    /// Slot `index` of the module in this run (0 = the run's backend, 1 = embedded).
    pub fn of_slot(index: usize) -> EncryptIv {
        if index == 0 && !backend_kind().takes_caller_iv() {
            EncryptIv::Generated
        } else {
            EncryptIv::Caller
        }
    }

    /// Whether the HSM generates the IV.
    pub fn generated(self) -> bool {
        self == EncryptIv::Generated
    }

    /// The `pIv` to encrypt with: the caller IV `[seed; 12]` where the slot takes one, 12 zero
    /// bytes (the zero-IV convention) where its HSM generates the IV.
    pub fn iv(self, seed: u8) -> [u8; 12] {
        match self {
            EncryptIv::Caller => [seed; 12],
            EncryptIv::Generated => [0; 12],
        }
    }

    /// Check `iv`, the `pIv` of an encryption that started as [`EncryptIv::iv`]`(seed)`, after
    /// the encryption ran: a caller IV is left as given; a generated one was written back and
    /// is not zero (a zero IV must never come back).
    #[track_caller]
    pub fn check_after(self, seed: u8, iv: &[u8]) {
        match self {
            EncryptIv::Caller => assert_eq!(iv, [seed; 12], "the caller's IV is left as given"),
            EncryptIv::Generated => assert_ne!(
                iv, [0u8; 12],
                "the IV the HSM generated is written back into pIv"
            ),
        }
    }
}

/// Encrypt `pt` on `session` (a slot taking IVs as `mode` says) with the `pIv` of
/// [`EncryptIv::iv`]`(seed)`, check the IV afterwards ([`EncryptIv::check_after`]) and return
/// the ciphertext with the IV to decrypt it with. Errors of the encryption are returned as they
/// are.
pub fn encrypt_gcm(
    session: &Session,
    mode: EncryptIv,
    key: ObjectHandle,
    seed: u8,
    aad: &[u8],
    pt: &[u8],
) -> cryptoki::error::Result<(Vec<u8>, [u8; 12])> {
    let mut iv = mode.iv(seed);
    let ct = session.encrypt(&gcm(&mut iv, aad), key, pt)?;
    mode.check_after(seed, &iv);
    Ok((ct, iv))
}

/// One slot of the module with an open, logged-in RW session.
pub struct TokenCtx {
    /// `softhsm` or `embedded`.
    pub name: &'static str,
    /// Index in the module's slot list.
    pub index: usize,
    pub slot: Slot,
    pub session: Session,
    pub fx: &'static Fixture,
}

impl TokenCtx {
    /// A label unique to this test and slot.
    pub fn label(&self, base: &str) -> String {
        format!("{base}-{}", self.name)
    }

    /// Generate an AES-256 key with the secure template (and `extra` attributes).
    pub fn keygen(&self, label: &str, extra: &[Attribute]) -> ObjectHandle {
        let mut t = secure_template(label);
        t.extend_from_slice(extra);
        self.session
            .generate_key(&Mechanism::AesKeyGen, &t)
            .unwrap_or_else(|e| panic!("generate {label}: {e}"))
    }

    /// How this slot takes GCM encryption IVs.
    pub fn iv_mode(&self) -> EncryptIv {
        EncryptIv::of_slot(self.index)
    }

    /// Whether this slot's HSM generates GCM encryption IVs itself.
    pub fn generates_iv(&self) -> bool {
        self.iv_mode().generated()
    }

    /// The `pIv` of an encryption on this slot ([`EncryptIv::iv`]): `[seed; 12]`, or 12 zero
    /// bytes where the HSM generates the IV. Works for raw function-table calls too: check the
    /// buffer afterwards with [`EncryptIv::check_after`].
    pub fn encrypt_iv(&self, seed: u8) -> [u8; 12] {
        self.iv_mode().iv(seed)
    }

    /// [`encrypt_gcm`] on this slot's session.
    pub fn encrypt(
        &self,
        key: ObjectHandle,
        seed: u8,
        aad: &[u8],
        pt: &[u8],
    ) -> cryptoki::error::Result<(Vec<u8>, [u8; 12])> {
        encrypt_gcm(&self.session, self.iv_mode(), key, seed, aad, pt)
    }

    /// A raw session handle for calls through the function table.
    pub fn raw_session(&self) -> CK_SESSION_HANDLE {
        self.session.handle()
    }

    /// Open another session on this slot (logged in, since login is per token).
    pub fn open(&self) -> Session {
        let s = self
            .fx
            .ctx
            .open_rw_session(self.slot)
            .expect("open session");
        login(&s);
        s
    }
}

/// The secure generation template (what the module requires).
pub fn secure_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Run `f` against both slots of the default fixture; failures name the slot.
pub fn for_each_token(f: impl Fn(&TokenCtx)) {
    for_each_token_of(fixture(), f)
}

/// Run `f` against both slots of `fx`; failures name the slot.
pub fn for_each_token_of(fx: &'static Fixture, f: impl Fn(&TokenCtx)) {
    for (index, slot) in fx.slots().into_iter().enumerate() {
        let name = SLOT_NAMES[index];
        let session = fx.ctx.open_rw_session(slot).expect("open session");
        login(&session);
        let t = TokenCtx {
            name,
            index,
            slot,
            session,
            fx,
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(&t))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            panic!("[slot {index} = {name}] {msg}");
        }
    }
}

/// The PKCS#11 error code of a cryptoki error.
pub fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other:?}"),
    }
}

/// Assert that `result` failed with exactly `expected`.
#[track_caller]
pub fn expect_rv<T: std::fmt::Debug>(result: cryptoki::error::Result<T>, expected: RvError) {
    match result {
        Ok(v) => panic!("expected {expected:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(rv(e), expected),
    }
}

/// AES-GCM with a 128-bit tag. `iv` is copied (cryptoki wants it mutable).
pub fn gcm<'a>(iv: &'a mut [u8], aad: &'a [u8]) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, 128.into()).expect("gcm params"))
}

/// `n` encrypt + decrypt round trips of `plaintext` (AAD `aad`, a different IV each: caller
/// IVs `[i; 12]`, or generated ones where the slot's HSM makes them, see [`EncryptIv`]), each
/// checked to give the plaintext back.
pub fn round_trips(
    session: &Session,
    mode: EncryptIv,
    key: ObjectHandle,
    n: usize,
    plaintext: &[u8],
) {
    for i in 0..n {
        let (ct, mut iv) = encrypt_gcm(session, mode, key, i as u8, b"aad", plaintext).unwrap();
        let pt = session.decrypt(&gcm(&mut iv, b"aad"), key, &ct).unwrap();
        assert_eq!(pt, plaintext);
    }
}

/// Find keys by template on a session.
pub fn find(session: &Session, template: &[Attribute]) -> Vec<ObjectHandle> {
    session.find_objects(template).expect("find objects")
}

/// Find exactly one key by label.
pub fn find_label(session: &Session, label: &str) -> ObjectHandle {
    let found = find(session, &[Attribute::Label(label.as_bytes().to_vec())]);
    assert_eq!(found.len(), 1, "keys labelled {label}: {found:?}");
    found[0]
}

/// Read one attribute.
pub fn attr(session: &Session, key: ObjectHandle, kind: AttributeType) -> Attribute {
    let mut v = session
        .get_attributes(key, &[kind])
        .unwrap_or_else(|e| panic!("read {kind:?}: {e}"));
    assert_eq!(v.len(), 1, "{kind:?} not answered");
    v.remove(0)
}

/// Random bytes for test data (not cryptographic).
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub mod raw;

/// A fresh directory with slot 0's token and the two-slot config in it, and the environment
/// pointing at both. The directory goes at exit even when its holder is a static (the
/// fixture's is, and statics are never dropped).
fn prepare(options: Options) -> (tempfile::TempDir, BackendToken, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    super::at_exit::remove_at_exit(dir.path());
    let backend = new_backend_token(dir.path(), SOFTHSM_TOKEN, PIN);
    let config = write_config(dir.path(), options, &backend);
    set_env(&backend, &config);
    (dir, backend, config)
}

/// The module initialised on a fresh two-slot config with NO session open and nobody logged
/// in (for tests of the login state, which is per token and so per process).
pub fn bare_module() -> (tempfile::TempDir, Pkcs11) {
    bare_module_with(Options::default())
}

/// [`bare_module`] with other config options (e.g. a buffered audit file).
pub fn bare_module_with(options: Options) -> (tempfile::TempDir, Pkcs11) {
    let so = so_path();
    let (dir, _backend, _config) = prepare(options);
    let ctx = Pkcs11::new(&so).expect("load the built module through cryptoki");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("module C_Initialize");
    (dir, ctx)
}
