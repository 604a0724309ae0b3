//! The three things measured, each as a consumer sees it through the `cryptoki` crate: a
//! loaded library, a token, a key, and one logged-in session per benchmark thread.
//!
//! The module and the direct context load the same `libsofthsm2.so` into this process, so
//! they share one SoftHSM2 instance (and its login state). The module is initialised first and
//! owns SoftHSM2's initialisation; the direct context gets `CKR_CRYPTOKI_ALREADY_INITIALIZED`
//! and just uses the library, which is what a host that loads both does.

use crate::{group_setup, setup};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::Path;

/// How a target encrypts (every target decrypts with the classic call, or the message API for
/// [`Api::Message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// C_EncryptInit/C_Encrypt with a caller IV (a counter).
    Classic,
    /// PKCS#11 3.0 C_EncryptMessage with CKG_GENERATE_RANDOM (the token generates the IV),
    /// C_DecryptMessage back.
    Message,
    /// What the module's message path does on a caller-IV HSM, done by hand: C_GenerateRandom
    /// for a 12-byte IV, then the classic calls (the direct baseline of the message rows).
    RandomIvClassic,
}

/// One measured path: a key and a logged-in session per thread.
pub struct Target {
    /// Short name used in the table.
    pub name: &'static str,
    /// How it encrypts.
    pub api: Api,
    /// The AES-256 key.
    pub key: ObjectHandle,
    /// One session per benchmark thread (index = thread).
    pub sessions: Vec<Session>,
    /// `Some(label)`: each operation looks the key up by this label first and then encrypts
    /// once (the find-per-operation rows), instead of a round trip with `key`.
    pub find_label: Option<Vec<u8>>,
}

/// The loaded libraries, kept so they can be finalised in the right order.
pub struct Contexts {
    /// `libxki_pkcs11.so`.
    pub module: Pkcs11,
    /// `libsofthsm2.so`, the same instance the module drives.
    pub direct: Pkcs11,
}

type R<T> = Result<T, String>;

fn ctx_err(what: &str) -> impl Fn(Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn slot_by_label(ctx: &Pkcs11, label: &str) -> R<Slot> {
    for slot in ctx
        .get_slots_with_token()
        .map_err(ctx_err("C_GetSlotList"))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(ctx_err("C_GetTokenInfo"))?;
        if info.label().trim_end() == label {
            return Ok(slot);
        }
    }
    Err(format!("no token labelled {label:?}"))
}

/// Open `n` R/W sessions and log the user in (already logged in is fine: PKCS#11 login is
/// per token and application, so the second session finds it done).
fn sessions(ctx: &Pkcs11, slot: Slot, pin: &str, n: usize) -> R<Vec<Session>> {
    (0..n)
        .map(|_| {
            let s = ctx
                .open_rw_session(slot)
                .map_err(ctx_err("C_OpenSession"))?;
            match s.login(UserType::User, Some(&AuthPin::from(pin))) {
                Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
                Err(e) => Err(format!("C_Login: {e}")),
            }
        })
        .collect()
}

/// A token, sensitive, non-extractable AES-256 key generated through the module.
fn generate(session: &Session, id: &[u8], label: &str) -> R<ObjectHandle> {
    session
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
                Attribute::Id(id.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .map_err(ctx_err("C_GenerateKey through the module"))
}

/// Load and initialise the module, then SoftHSM2 directly (sharing its initialisation).
pub fn load(module_path: &Path) -> R<Contexts> {
    let module = Pkcs11::new(module_path).map_err(ctx_err("loading the module"))?;
    module
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(ctx_err("module C_Initialize (see its stderr log)"))?;
    let direct = Pkcs11::new(setup::SOFTHSM).map_err(ctx_err("loading SoftHSM2"))?;
    match direct.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Expected: the module initialised this very library instance already.
        Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => {}
        Err(e) => return Err(format!("SoftHSM2 C_Initialize: {e}")),
    }
    Ok(Contexts { module, direct })
}

/// The three targets, with `threads` sessions each: (module over SoftHSM2, SoftHSM2 direct,
/// module embedded). The SoftHSM2 key is generated through the module and found directly by
/// `CKA_ID`.
pub fn open(ctx: &Contexts, threads: usize) -> R<(Target, Target, Target)> {
    let id = b"xki-bench-key-01".to_vec();

    let slot = slot_by_label(&ctx.module, setup::MODULE_HSM_SLOT)?;
    let module_sessions = sessions(&ctx.module, slot, setup::SOFTHSM_PIN, threads)?;
    let key = generate(&module_sessions[0], &id, HSM_KEY_LABEL)?;
    let module = Target {
        name: "module->SoftHSM2",
        api: Api::Classic,
        key,
        sessions: module_sessions,
        find_label: None,
    };

    let slot = slot_by_label(&ctx.direct, setup::SOFTHSM_TOKEN)?;
    let direct_sessions = sessions(&ctx.direct, slot, setup::SOFTHSM_PIN, threads)?;
    let found = direct_sessions[0]
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(id.clone()),
        ])
        .map_err(ctx_err("C_FindObjects on SoftHSM2"))?;
    let [key] = found[..] else {
        return Err(format!(
            "expected exactly one SoftHSM2 key with the bench CKA_ID, found {}",
            found.len()
        ));
    };
    // The module promised a sensitive, non-extractable key: check the HSM agrees.
    let attrs = direct_sessions[0]
        .get_attributes(key, &[AttributeType::Sensitive, AttributeType::Extractable])
        .map_err(ctx_err("C_GetAttributeValue on SoftHSM2"))?;
    if attrs != [Attribute::Sensitive(true), Attribute::Extractable(false)] {
        return Err(format!("unexpected key attributes on SoftHSM2: {attrs:?}"));
    }
    let direct = Target {
        name: "SoftHSM2 direct",
        api: Api::Classic,
        key,
        sessions: direct_sessions,
        find_label: None,
    };

    let slot = slot_by_label(&ctx.module, setup::MODULE_EMB_SLOT)?;
    let emb_sessions = sessions(&ctx.module, slot, setup::EMBEDDED_PIN, threads)?;
    let key = generate(&emb_sessions[0], &id, "xki-bench-emb")?;
    let embedded = Target {
        name: "module embedded",
        api: Api::Classic,
        key,
        sessions: emb_sessions,
        find_label: None,
    };
    Ok((module, direct, embedded))
}

/// The find-per-operation pair, with `threads` sessions each: (module over SoftHSM2, SoftHSM2
/// direct), both looking up the SoftHSM2 key of [`open`] by its label before every encrypt.
/// `keys`: that key's handles through the module and directly (checked against every find).
pub fn open_find(ctx: &Contexts, threads: usize, keys: [ObjectHandle; 2]) -> R<(Target, Target)> {
    let label = HSM_KEY_LABEL.as_bytes().to_vec();
    let slot = slot_by_label(&ctx.module, setup::MODULE_HSM_SLOT)?;
    let module = Target {
        name: "find+enc module",
        api: Api::Classic,
        key: keys[0],
        sessions: sessions(&ctx.module, slot, setup::SOFTHSM_PIN, threads)?,
        find_label: Some(label.clone()),
    };
    let slot = slot_by_label(&ctx.direct, setup::SOFTHSM_TOKEN)?;
    let direct = Target {
        name: "find+enc direct",
        api: Api::Classic,
        key: keys[1],
        sessions: sessions(&ctx.direct, slot, setup::SOFTHSM_PIN, threads)?,
        find_label: Some(label),
    };
    Ok((module, direct))
}

/// The message-API pair on the same SoftHSM2 key, with `threads` sessions each: (module
/// message API with token-generated IVs, SoftHSM2 direct with an IV from its RNG).
pub fn open_message(ctx: &Contexts, threads: usize) -> R<(Target, Target)> {
    let id = b"xki-bench-key-01";
    let slot = slot_by_label(&ctx.module, setup::MODULE_HSM_SLOT)?;
    let module_sessions = sessions(&ctx.module, slot, setup::SOFTHSM_PIN, threads)?;
    let module = Target {
        name: "module msg API",
        api: Api::Message,
        key: find_key(&module_sessions[0], id, setup::MODULE_HSM_SLOT)?,
        sessions: module_sessions,
        find_label: None,
    };
    let slot = slot_by_label(&ctx.direct, setup::SOFTHSM_TOKEN)?;
    let direct_sessions = sessions(&ctx.direct, slot, setup::SOFTHSM_PIN, threads)?;
    let direct = Target {
        name: "direct RNG IV",
        api: Api::RandomIvClassic,
        key: find_key(&direct_sessions[0], id, "SoftHSM2")?,
        sessions: direct_sessions,
        find_label: None,
    };
    Ok((module, direct))
}

/// The label of the SoftHSM2 key (generated through the module in [`open`]).
const HSM_KEY_LABEL: &str = "xki-bench-hsm";

/// The key with `CKA_ID` `id`, found through `session`.
fn find_key(session: &Session, id: &[u8], what: &str) -> R<ObjectHandle> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(ctx_err("C_FindObjects through the module"))?;
    match found[..] {
        [key] => Ok(key),
        _ => Err(format!(
            "{what}: expected exactly one key with the bench CKA_ID, found {}",
            found.len()
        )),
    }
}

/// The replica-group pair, with `threads` sessions each: (one-member slot over the first
/// member's store, two-member group slot), both on the key the stores share, and the group
/// slot's ID (for the `XKI Status` interface).
pub fn open_group(ctx: &Contexts, threads: usize) -> R<(Target, Target, u64)> {
    let id = group_setup::GROUP_KEY_ID;
    let slot = slot_by_label(&ctx.module, group_setup::SINGLE_SLOT)?;
    let single_sessions = sessions(&ctx.module, slot, group_setup::GROUP_PIN, threads)?;
    let single = Target {
        name: "one member",
        api: Api::Classic,
        key: find_key(&single_sessions[0], id, group_setup::SINGLE_SLOT)?,
        sessions: single_sessions,
        find_label: None,
    };
    let slot = slot_by_label(&ctx.module, group_setup::GROUP_SLOT)?;
    let group_sessions = sessions(&ctx.module, slot, group_setup::GROUP_PIN, threads)?;
    let group = Target {
        name: "group(2)",
        api: Api::Classic,
        key: find_key(&group_sessions[0], id, group_setup::GROUP_SLOT)?,
        sessions: group_sessions,
        find_label: None,
    };
    Ok((single, group, slot.id()))
}

/// Close every session, then finalise the module (which finalises SoftHSM2, as its owner).
/// The direct context is not finalised: it never owned the initialisation.
pub fn close(ctx: Contexts, targets: Vec<Target>) {
    for t in targets {
        for s in t.sessions {
            let _ = s.close();
        }
    }
    if let Err(e) = ctx.module.finalize() {
        eprintln!("module C_Finalize: {e}");
    }
    drop(ctx.direct);
}
