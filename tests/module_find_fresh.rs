//! Finds by label or ID through the module read the token every time (module/find.rs,
//! backend/pkcs11/find.rs): keys created, renamed, disabled or destroyed behind the module's
//! back (a direct SoftHSM2 session in this process, or a second process) are seen by the next
//! find, and a key whose identity another object takes over is never silently switched to it.

mod support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;
use std::process::Command;
use support::module_fixture::*;

fn by_label(s: &Session, label: &str) -> Vec<cryptoki::object::ObjectHandle> {
    find(
        s,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

/// The tests of this file run one at a time: they write to the token directly and from another
/// process (pkcs11-tool), past the module. SoftHSM2 2.6 fails (`CKR_GENERAL_ERROR`) when one
/// session writes token objects while another does the same (the module serialises its own
/// writes on a SoftHSM2 token, but not on the emulated vendors', whose manufacturer IDs are the
/// vendors'), and kryoptic does not take writes from two processes at once (its SQLite store answers `CKR_GENERAL_ERROR` or
/// `CKR_DEVICE_MEMORY` to the loser, and its own process may keep listing an object the other
/// process deleted meanwhile, seen with kryoptic used directly too).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The SoftHSM2 object with this label, found directly.
fn direct_key(d: &Session, label: &str) -> cryptoki::object::ObjectHandle {
    let found = by_label(d, label);
    assert_eq!(found.len(), 1, "direct keys labelled {label}: {found:?}");
    found[0]
}

#[test]
fn renames_and_disabling_on_the_token_are_seen_by_the_next_find() {
    let _serial = serial();
    let fx = fixture();
    let t_slot = fx.slots()[0];
    let s = fx.ctx.open_rw_session(t_slot).unwrap();
    login(&s);
    let key = s
        .generate_key(&Mechanism::AesKeyGen, &secure_template("ff-rename"))
        .unwrap();
    // Warm: the module knows the key, so later finds take the narrowed path.
    for _ in 0..3 {
        assert_eq!(by_label(&s, "ff-rename"), vec![key]);
    }
    // The one-call attribute read of the narrowed find agrees with the token on every
    // attribute a template may ask for.
    let full = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(b"ff-rename".to_vec()),
        Attribute::KeyType(cryptoki::object::KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Local(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Sign(false),
        Attribute::Derive(false),
    ];
    assert_eq!(find(&s, &full), vec![key]);
    let d = fx.direct_session();
    let dk = direct_key(&d, "ff-rename");

    d.update_attributes(dk, &[Attribute::Label(b"ff-renamed".to_vec())])
        .unwrap();
    assert!(
        by_label(&s, "ff-rename").is_empty(),
        "old label still found"
    );
    assert_eq!(
        by_label(&s, "ff-renamed"),
        vec![key],
        "same handle, new label"
    );

    // Disabled for encryption on the token: a find asking for encrypt-capable keys no longer
    // returns it, the attribute reads false, and the HSM refuses the operation.
    d.update_attributes(dk, &[Attribute::Encrypt(false)])
        .unwrap();
    let enc_template = [
        Attribute::Label(b"ff-renamed".to_vec()),
        Attribute::Encrypt(true),
    ];
    assert!(find(&s, &enc_template).is_empty(), "disabled key found");
    assert_eq!(
        attr(&s, key, AttributeType::Encrypt),
        Attribute::Encrypt(false)
    );
    // (With a generated IV where the slot's HSM makes them: a caller IV would be refused
    // there for that reason alone.)
    assert_eq!(
        encrypt_gcm(&s, EncryptIv::of_slot(0), key, 1, b"aad", b"x").map_err(rv),
        Err(cryptoki::error::RvError::KeyFunctionNotPermitted)
    );
    d.update_attributes(dk, &[Attribute::Encrypt(true)])
        .unwrap();
    assert_eq!(find(&s, &enc_template), vec![key], "re-enabled key found");
    round_trips(&s, EncryptIv::of_slot(0), key, 1, b"back");
}

#[test]
fn keys_created_and_destroyed_elsewhere_are_seen_by_the_next_find() {
    let _serial = serial();
    let fx = fixture();
    let s = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&s);
    assert!(by_label(&s, "ff-born").is_empty());
    // Created directly on the token (sensitive, never extractable: admissible).
    let d = fx.direct_session();
    let mut t = secure_template("ff-born");
    t.push(Attribute::Id(b"ff-born-id".to_vec()));
    d.generate_key(&Mechanism::AesKeyGen, &t).unwrap();
    let found = by_label(&s, "ff-born");
    assert_eq!(found.len(), 1, "a key created on the token is found");
    round_trips(&s, EncryptIv::of_slot(0), found[0], 1, b"new");
    assert_eq!(
        find(&s, &[Attribute::Id(b"ff-born-id".to_vec())]),
        found,
        "found by ID too"
    );

    // Destroyed by ANOTHER PROCESS (pkcs11-tool directly on the token, same token store).
    for _ in 0..2 {
        assert_eq!(by_label(&s, "ff-born"), found);
    }
    let out = Command::new("pkcs11-tool")
        // The run's token through its own library (SoftHSM2, or kryoptic under
        // XKI_ITEST_BACKEND=kryoptic; the emulated vendors sit on a SoftHSM2 token).
        .env(fx.backend.conf_var, &fx.backend.conf)
        .arg("--module")
        .arg(&fx.backend.direct)
        .args(["--token-label", SOFTHSM_TOKEN])
        .args([
            "--login",
            "--pin",
            PIN,
            "--delete-object",
            "--type",
            "secrkey",
        ])
        .args(["--label", "ff-born"])
        .output()
        .expect("run pkcs11-tool (apt-get install opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool --delete-object: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        by_label(&s, "ff-born").is_empty(),
        "a key destroyed by another process is not found any more (the token used directly \
         lists {:?})",
        by_label(&d, "ff-born")
    );
    assert!(find(&s, &[Attribute::Id(b"ff-born-id".to_vec())]).is_empty());
}

#[test]
fn a_new_object_taking_a_known_keys_identity_is_never_switched_to() {
    let _serial = serial();
    let fx = fixture();
    let s = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&s);
    let mut t = secure_template("ff-first");
    t.push(Attribute::Id(b"ff-dup-id".to_vec()));
    let key = s.generate_key(&Mechanism::AesKeyGen, &t).unwrap();
    assert_eq!(by_label(&s, "ff-first"), vec![key]);
    let (ct, iv) = encrypt_gcm(&s, EncryptIv::of_slot(0), key, 7, b"aad", b"mine").unwrap();

    // Another key with the same CKA_ID but another label, made behind the module's back.
    let d = fx.direct_session();
    let mut dup = secure_template("ff-second");
    dup.push(Attribute::Id(b"ff-dup-id".to_vec()));
    d.generate_key(&Mechanism::AesKeyGen, &dup).unwrap();
    assert!(
        by_label(&s, "ff-second").is_empty(),
        "a duplicate identity is hidden, not merged into the known key's handle"
    );
    // The known handle still stands for the first key.
    let mut iv = iv;
    assert_eq!(
        s.decrypt(&gcm(&mut iv, b"aad"), key, &ct).unwrap(),
        b"mine".to_vec()
    );
}
