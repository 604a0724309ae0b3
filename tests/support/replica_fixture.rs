//! Fixture for the replica-group tests: SoftHSM2 tokens holding the SAME AES-256 key material,
//! put there directly through a test-only cryptoki context (never through the module), and
//! member backends wrapped in the test-only fault injector.

#![allow(dead_code)]

pub use super::softhsm_tokens::{config, pin, tokens, MODULE};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use once_cell::sync::Lazy;
use std::sync::Arc;
use std::time::Duration;
use xki_pkcs11::backend::fault::{FaultBackend, FaultSwitch};
use xki_pkcs11::backend::pkcs11::Pkcs11Backend;
use xki_pkcs11::backend::replicas::{GroupSettings, MemberSpec, ReplicaGroup};
use xki_pkcs11::backend::Backend;

/// Every token label any test of the binary uses (SoftHSM2 reads its config once).
pub const TOKENS: &[&str] = &[
    "tr-a", "tr-b", "ad-a", "ad-b", "mm-a", "mm-b", "gen-a", "gen-b", "rep-a", "ch-a", "ch-b",
    "tp-a", "tp-b", "mod-a", "mod-b", "late-a", "late-b", "ce-a", "ce-b", "iv-a", "iv-b",
];

/// The test process initialises SoftHSM2 itself (the backends then share that
/// initialisation), so keys can be imported at any time.
static HOST: Lazy<Pkcs11> = Lazy::new(|| {
    tokens(TOKENS);
    let ctx = Pkcs11::new(MODULE).expect("load SoftHSM2");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("host C_Initialize");
    ctx
});

/// One fixed AES-256 value shared by the "replicas" (test-only constant).
pub const KEY_VALUE: [u8; 32] = [0x42; 32];

/// Import `value` as a token, private, sensitive, non-extractable AES key with `id`/`label`
/// on the token `token`.
pub fn import_key(token: &str, id: &[u8], label: &str, value: &[u8; 32]) {
    let ctx = &*HOST;
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap_or_else(|| panic!("token {token}"));
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new("1234".into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(value.to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("import key");
}

/// A real backend on `token`.
pub fn real(token: &str) -> Arc<dyn Backend> {
    Lazy::force(&HOST);
    Arc::new(Pkcs11Backend::open(token, &config(token), pin()).expect("open backend"))
}

/// A real backend on `token` behind a fault injector.
pub fn faulty(token: &str) -> (Arc<dyn Backend>, FaultSwitch) {
    let (b, switch) = FaultBackend::new(token, real(token));
    (Arc::new(b), switch)
}

/// Group settings for tests: quick probes.
pub fn settings() -> GroupSettings {
    GroupSettings {
        probe_interval: Duration::from_millis(50),
        replication_wait: Duration::from_millis(500),
        ..GroupSettings::default()
    }
}

/// A group over `members` with per-call deadline `deadline`.
pub fn group(
    members: Vec<Arc<dyn Backend>>,
    deadline: Duration,
    settings: GroupSettings,
) -> ReplicaGroup {
    let specs = members
        .into_iter()
        .map(|backend| MemberSpec::open(backend, deadline, 16))
        .collect();
    ReplicaGroup::new("test-group", specs, settings).expect("group")
}
