//! The bridge adds no format: ciphertext made through the module (slot 0) decrypts with
//! SoftHSM2 used directly, and the other way round. Keys that break the never-export rule,
//! created directly in SoftHSM2 on the same token, are invisible through the module.
//!
//! SoftHSM2 is loaded a second time in this process (a second cryptoki context), so this also
//! exercises the module sharing a library initialisation with its host.
//!
//! Where slot 0's HSM generates encryption IVs ([`EncryptIv::Generated`]), the module encrypts
//! under the zero-IV convention and SoftHSM2 decrypts under the IV written back (and makes the
//! same bytes under it); a caller IV is refused there.

mod support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use support::module_fixture::*;

/// SoftHSM2 2.6 itself fails (CKR_GENERAL_ERROR, or a valid key reported invalid) when one
/// session creates or changes token objects while another session does the same. The module
/// serialises its own writes to SoftHSM2 (src/backend/pkcs11/quirks.rs), but these tests also
/// write to the token DIRECTLY, past the module's lock, so they take turns.
static DIRECT_WRITERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_direct_writer() -> std::sync::MutexGuard<'static, ()> {
    DIRECT_WRITERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn find_id(s: &Session, id: &[u8]) -> ObjectHandle {
    let found = find(s, &[Attribute::Id(id.to_vec())]);
    assert_eq!(found.len(), 1, "keys with CKA_ID {id:?}: {found:?}");
    found[0]
}

#[test]
fn ciphertext_crosses_between_module_and_softhsm2() {
    let _turn = one_direct_writer();
    let fx = fixture();
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let direct = fx.direct_session();
    let id = b"interop-key-1".to_vec();
    let key_m = module
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                secure_template("interop-1"),
                vec![Attribute::Id(id.clone())],
            ]
            .concat(),
        )
        .unwrap();
    let key_d = find_id(&direct, &id);
    let generated = EncryptIv::of_slot(0).generated();

    for (iv_len, aad_len, pt_len) in [(12, 0, 0), (12, 13, 100), (16, 4096, 5000), (16, 0, 1)] {
        let caller_iv = test_bytes(iv_len, 1);
        let aad = test_bytes(aad_len, 2);
        let pt = test_bytes(pt_len, 3);
        let what = format!("iv {iv_len} aad {aad_len} pt {pt_len}");

        // A generating HSM refuses the caller's IV; the 12-byte zero-IV convention gets the
        // IV it generated written back, and everything below runs under that IV.
        let mut iv1 = caller_iv.clone();
        if generated {
            expect_rv(
                module.encrypt(&gcm(&mut iv1, &aad), key_m, &pt),
                cryptoki::error::RvError::MechanismParamInvalid,
            );
            iv1 = vec![0u8; iv_len];
        }
        let ct_m = match module.encrypt(&gcm(&mut iv1, &aad), key_m, &pt) {
            Err(e) if generated && iv_len != 12 => {
                // 16 zero bytes are no zero-IV convention: a caller IV, refused. SoftHSM2's
                // ciphertext under the caller's 16-byte IV still decrypts through the module.
                assert_eq!(
                    rv(e),
                    cryptoki::error::RvError::MechanismParamInvalid,
                    "{what}"
                );
                let mut iv3 = caller_iv.clone();
                let ct_d = direct.encrypt(&gcm(&mut iv3, &aad), key_d, &pt).unwrap();
                let mut iv4 = caller_iv.clone();
                let back = module
                    .decrypt(&gcm(&mut iv4, &aad), key_m, &ct_d)
                    .unwrap_or_else(|e| panic!("{what}: module decrypting SoftHSM2's output: {e}"));
                assert_eq!(back, pt, "{what}");
                continue;
            }
            other => other.unwrap(),
        };
        if generated {
            assert_ne!(iv1, vec![0u8; 12], "{what}: generated IV written back");
        }
        let iv = iv1.clone();
        let mut iv2 = iv.clone();
        let back = direct
            .decrypt(&gcm(&mut iv2, &aad), key_d, &ct_m)
            .unwrap_or_else(|e| panic!("{what}: SoftHSM2 decrypting the module's output: {e}"));
        assert_eq!(back, pt, "{what}");

        let mut iv3 = iv.clone();
        let ct_d = direct.encrypt(&gcm(&mut iv3, &aad), key_d, &pt).unwrap();
        assert_eq!(ct_d, ct_m, "{what}: same bytes either way");
        let mut iv4 = iv.clone();
        let back = module
            .decrypt(&gcm(&mut iv4, &aad), key_m, &ct_d)
            .unwrap_or_else(|e| panic!("{what}: module decrypting SoftHSM2's output: {e}"));
        assert_eq!(back, pt, "{what}");
    }

    // A key SoftHSM2 generated itself with the secure attributes is visible and usable.
    let id2 = b"interop-key-2".to_vec();
    let mut tpl = secure_template("interop-2");
    tpl.push(Attribute::Id(id2.clone()));
    let key_d2 = direct.generate_key(&Mechanism::AesKeyGen, &tpl).unwrap();
    let mut iv = [8u8; 12];
    let ct = direct
        .encrypt(&gcm(&mut iv, b"a"), key_d2, b"direct")
        .unwrap();
    let key_m2 = find_id(&module, &id2);
    assert_eq!(find_label(&module, "interop-2"), key_m2);
    assert_eq!(
        module.decrypt(&gcm(&mut iv, b"a"), key_m2, &ct).unwrap(),
        b"direct"
    );
}

#[test]
fn keys_that_break_the_rule_are_invisible() {
    let _turn = one_direct_writer();
    let fx = fixture();
    let direct = fx.direct_session();
    let aes = |label: &str, len: u64, sensitive: bool, extractable: bool| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(len.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(extractable),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ]
    };
    let gen = |tpl: Vec<Attribute>| {
        direct
            .generate_key(&Mechanism::AesKeyGen, &tpl)
            .expect("SoftHSM2 generates it")
    };
    gen(aes("bad-extractable", 32, true, true));
    gen(aes("bad-non-sensitive", 32, false, false));
    gen(aes("bad-aes128", 16, true, false));
    gen(aes("bad-aes192", 24, true, false));
    // Imported key bytes: sensitive and not extractable now, but never ALWAYS_SENSITIVE /
    // NEVER_EXTRACTABLE.
    let mut imported = aes("bad-imported", 32, true, false);
    imported.retain(|a| !matches!(a, Attribute::ValueLen(_)));
    imported.push(Attribute::Value(vec![0x42; 32]));
    direct
        .create_object(&imported)
        .expect("SoftHSM2 imports it");
    // Once extractable, later made non-extractable: NEVER_EXTRACTABLE stays false.
    let was = gen(aes("bad-was-extractable", 32, true, true));
    direct
        .update_attributes(was, &[Attribute::Extractable(false)])
        .expect("SoftHSM2 lets extractable be cleared");
    // A generic secret.
    direct
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(b"bad-generic".to_vec()),
                Attribute::Id(b"bad-generic".to_vec()),
            ],
        )
        .expect("SoftHSM2 generates a generic secret");
    // Control: a good key made the same way is visible.
    gen(aes("good-direct", 32, true, false));

    for_each_token(|t| {
        let all = find(&t.session, &[]);
        for label in [
            "bad-extractable",
            "bad-non-sensitive",
            "bad-aes128",
            "bad-aes192",
            "bad-imported",
            "bad-was-extractable",
            "bad-generic",
        ] {
            for tpl in [
                vec![Attribute::Label(label.as_bytes().to_vec())],
                vec![Attribute::Id(label.as_bytes().to_vec())],
            ] {
                assert!(find(&t.session, &tpl).is_empty(), "{label} is visible");
            }
            for h in &all {
                let l = attr(&t.session, *h, cryptoki::object::AttributeType::Label);
                assert_ne!(
                    l,
                    Attribute::Label(label.as_bytes().to_vec()),
                    "in find-all"
                );
            }
        }
        let good = find(&t.session, &[Attribute::Label(b"good-direct".to_vec())]);
        let want = if t.index == 0 { 1 } else { 0 };
        assert_eq!(good.len(), want, "control key (SoftHSM2 slot only)");
    });
}

/// Changes made on the HSM behind the module's back show through at once.
#[test]
fn changes_made_directly_on_the_hsm_show_through() {
    let _turn = one_direct_writer();
    let fx = fixture();
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let direct = fx.direct_session();
    let id = b"interop-changes".to_vec();
    let mut tpl = secure_template("interop-changes");
    tpl.push(Attribute::Id(id.clone()));
    let key_m = module.generate_key(&Mechanism::AesKeyGen, &tpl).unwrap();
    let key_d = find_id(&direct, &id);

    // Disabled directly: the module refuses to encrypt, reads the new value, and a
    // template asking for CKA_ENCRYPT=true no longer finds it.
    direct
        .update_attributes(key_d, &[Attribute::Encrypt(false)])
        .unwrap();
    expect_rv(
        encrypt_gcm(&module, EncryptIv::of_slot(0), key_m, 1, b"", b"x"),
        cryptoki::error::RvError::KeyFunctionNotPermitted,
    );
    assert_eq!(
        attr(&module, key_m, cryptoki::object::AttributeType::Encrypt),
        Attribute::Encrypt(false)
    );
    assert!(find(
        &module,
        &[Attribute::Id(id.clone()), Attribute::Encrypt(true)]
    )
    .is_empty());
    assert_eq!(
        find(
            &module,
            &[Attribute::Id(id.clone()), Attribute::Encrypt(false)]
        ),
        [key_m]
    );

    // Renamed directly: found under the new label, same handle.
    direct
        .update_attributes(key_d, &[Attribute::Label(b"interop-renamed".to_vec())])
        .unwrap();
    assert_eq!(find_label(&module, "interop-renamed"), key_m);

    // Deleted directly: gone, and the handle is invalid.
    direct.destroy_object(key_d).unwrap();
    assert!(find(&module, &[Attribute::Id(id)]).is_empty());
    expect_rv(
        module.get_attributes(key_m, &[cryptoki::object::AttributeType::Label]),
        cryptoki::error::RvError::ObjectHandleInvalid,
    );
    let mut iv = [1u8; 12];
    expect_rv(
        module.decrypt(&gcm(&mut iv, b""), key_m, &[0u8; 32]),
        cryptoki::error::RvError::KeyHandleInvalid,
    );
}

/// Two different HSM keys that share a CKA_ID (made behind the module's back) must never be
/// confused: the module's stable handles are keyed by CKA_ID, so one handle for both would
/// silently switch keys between finds. The module must not hand out a handle that can mean
/// either key.
#[test]
fn keys_sharing_a_cka_id_are_never_confused() {
    let _turn = one_direct_writer();
    let fx = fixture();
    let direct = fx.direct_session();
    let mut keys = Vec::new();
    for label in ["dup-id-a", "dup-id-b"] {
        let mut tpl = secure_template(label);
        tpl.push(Attribute::Id(b"dup-id".to_vec()));
        keys.push(direct.generate_key(&Mechanism::AesKeyGen, &tpl).unwrap());
    }
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let by_label = |label: &str| find(&module, &[Attribute::Label(label.as_bytes().to_vec())]);
    let (a, b) = (by_label("dup-id-a"), by_label("dup-id-b"));
    match (a.as_slice(), b.as_slice()) {
        // Hidden as ambiguous: acceptable.
        ([], []) => {}
        ([ha], [hb]) => {
            assert_ne!(ha, hb, "two HSM keys, one module handle");
            // Each handle drives its own key, whatever was found last.
            for (h, direct_key) in [(ha, keys[0]), (hb, keys[1]), (ha, keys[0])] {
                let _ = by_label("dup-id-b");
                let (ct, mut iv) =
                    encrypt_gcm(&module, EncryptIv::of_slot(0), *h, 3, b"", b"which key?").unwrap();
                let pt = direct.decrypt(&gcm(&mut iv, b""), direct_key, &ct);
                assert_eq!(pt.ok().as_deref(), Some(&b"which key?"[..]), "handle {h}");
            }
        }
        other => panic!("one key visible, the other not: {other:?}"),
    }
    let all = find(&module, &[Attribute::Id(b"dup-id".to_vec())]);
    let unique: std::collections::HashSet<_> = all.iter().map(|h| h.handle()).collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "duplicate handles in one find: {all:?}"
    );
}

/// Keys without a CKA_ID (made directly on the HSM) are identified by their label. Renaming
/// one through the module must keep its handle bound to it: a new key that later takes the
/// old label must get its own handle, not the renamed key's.
#[test]
fn renamed_id_less_key_keeps_its_handle() {
    let _turn = one_direct_writer();
    let fx = fixture();
    let direct = fx.direct_session();
    let k1_direct = direct
        .generate_key(&Mechanism::AesKeyGen, &secure_template("noid-x"))
        .unwrap();
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let h1 = find_label(&module, "noid-x");
    module
        .update_attributes(h1, &[Attribute::Label(b"noid-y".to_vec())])
        .unwrap();
    assert_eq!(
        find_label(&module, "noid-y"),
        h1,
        "same handle after rename"
    );

    // A second ID-less key takes the old label.
    let k2_direct = direct
        .generate_key(&Mechanism::AesKeyGen, &secure_template("noid-x"))
        .unwrap();
    let h2 = find_label(&module, "noid-x");
    assert_ne!(h2, h1, "the new key got the renamed key's handle");
    assert_eq!(find_label(&module, "noid-y"), h1);
    // Each handle still drives its own key.
    for (h, k) in [(h1, k1_direct), (h2, k2_direct), (h1, k1_direct)] {
        let (ct, mut iv) = encrypt_gcm(&module, EncryptIv::of_slot(0), h, 9, b"", b"mine").unwrap();
        assert_eq!(
            direct.decrypt(&gcm(&mut iv, b""), k, &ct).ok().as_deref(),
            Some(&b"mine"[..]),
            "handle {h} used another key"
        );
    }
}
