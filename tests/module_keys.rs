//! Keys through the built module, on both slots: generation-template enforcement, finding,
//! stable handles, enable/disable, and every refusal path of the never-export rule.

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use pkcs11_sys::*;
use std::ptr;
use support::module_fixture::raw::{self, bool_attr, bytes_attr, ulong_attr};
use support::module_fixture::*;

fn bool_of(a: Attribute) -> bool {
    match a {
        Attribute::Sensitive(b)
        | Attribute::Extractable(b)
        | Attribute::AlwaysSensitive(b)
        | Attribute::NeverExtractable(b)
        | Attribute::Token(b)
        | Attribute::Local(b)
        | Attribute::Private(b)
        | Attribute::Encrypt(b)
        | Attribute::Decrypt(b)
        | Attribute::Wrap(b)
        | Attribute::Copyable(b)
        | Attribute::Destroyable(b) => b,
        other => panic!("not a boolean attribute: {other:?}"),
    }
}

fn read_bool(t: &TokenCtx, key: ObjectHandle, kind: AttributeType) -> bool {
    bool_of(attr(&t.session, key, kind))
}

#[test]
fn secure_generation_and_attributes_read_back() {
    for_each_token(|t| {
        let label = t.label("keys-secure");
        let key = t.keygen(&label, &[Attribute::Id(b"keys-secure-id".to_vec())]);
        for (kind, want) in [
            (AttributeType::Sensitive, true),
            (AttributeType::Extractable, false),
            (AttributeType::AlwaysSensitive, true),
            (AttributeType::NeverExtractable, true),
            (AttributeType::Token, true),
            (AttributeType::Local, true),
            (AttributeType::Private, true),
            (AttributeType::Encrypt, true),
            (AttributeType::Decrypt, true),
            (AttributeType::Wrap, false),
            (AttributeType::Copyable, false),
            (AttributeType::Destroyable, false),
        ] {
            assert_eq!(read_bool(t, key, kind), want, "{kind:?}");
        }
        let s = &t.session;
        assert_eq!(
            attr(s, key, AttributeType::Class),
            Attribute::Class(ObjectClass::SECRET_KEY)
        );
        assert_eq!(
            attr(s, key, AttributeType::KeyType),
            Attribute::KeyType(KeyType::AES)
        );
        assert_eq!(
            attr(s, key, AttributeType::ValueLen),
            Attribute::ValueLen(32.into())
        );
        assert_eq!(
            attr(s, key, AttributeType::Label),
            Attribute::Label(label.as_bytes().to_vec())
        );
        assert_eq!(
            attr(s, key, AttributeType::Id),
            Attribute::Id(b"keys-secure-id".to_vec())
        );

        // Minimal template: only VALUE_LEN and TOKEN (+ label); the module fills in the
        // secure values and a 16-byte random CKA_ID (none was asked for).
        let minimal = t.label("keys-minimal");
        let key = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Label(minimal.as_bytes().to_vec()),
                ],
            )
            .expect("minimal template");
        assert!(read_bool(t, key, AttributeType::Sensitive));
        assert!(!read_bool(t, key, AttributeType::Extractable));
        assert!(read_bool(t, key, AttributeType::Token));
        match attr(s, key, AttributeType::Id) {
            Attribute::Id(id) => assert_eq!(id.len(), 16, "generated CKA_ID"),
            other => panic!("{other:?}"),
        }
        // The key works.
        let (ct, mut iv) = t.encrypt(key, 1, b"", b"hi").unwrap();
        assert_eq!(s.decrypt(&gcm(&mut iv, b""), key, &ct).unwrap(), b"hi");
    });
}

#[test]
fn weaker_generation_templates_are_rejected() {
    for_each_token(|t| {
        let s = &t.session;
        let label = t.label("keys-weak");
        let with = |extra: Attribute| {
            let mut tpl: Vec<Attribute> = secure_template(&label)
                .into_iter()
                .filter(|a| a.attribute_type() != extra.attribute_type())
                .collect();
            tpl.push(extra);
            tpl
        };
        let inconsistent = [
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Private(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Derive(true),
            Attribute::Sign(true),
            Attribute::Copyable(true),
            Attribute::Value(vec![0u8; 32]),
            Attribute::KeyType(KeyType::DES3),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ];
        for a in inconsistent {
            let what = format!("{a:?}");
            match s.generate_key(&Mechanism::AesKeyGen, &with(a)) {
                Ok(k) => panic!("{what}: generated {k:?}"),
                Err(e) => assert_eq!(rv(e), RvError::TemplateInconsistent, "{what}"),
            }
        }
        for len in [16u64, 24, 31, 33, 64] {
            expect_rv(
                s.generate_key(
                    &Mechanism::AesKeyGen,
                    &with(Attribute::ValueLen(len.into())),
                ),
                RvError::AttributeValueInvalid,
            );
        }
        let no_len: Vec<Attribute> = secure_template(&label)
            .into_iter()
            .filter(|a| a.attribute_type() != AttributeType::ValueLen)
            .collect();
        expect_rv(
            s.generate_key(&Mechanism::AesKeyGen, &no_len),
            RvError::TemplateIncomplete,
        );
        // Another mechanism.
        expect_rv(
            s.generate_key(&Mechanism::GenericSecretKeyGen, &secure_template(&label)),
            RvError::MechanismInvalid,
        );
        // Nothing of all that was created.
        assert!(find(s, &[Attribute::Label(label.as_bytes().to_vec())]).is_empty());

        // Duplicate label.
        let dup = t.label("keys-dup");
        t.keygen(&dup, &[]);
        expect_rv(
            s.generate_key(&Mechanism::AesKeyGen, &secure_template(&dup)),
            RvError::AttributeValueInvalid,
        );
        assert_eq!(
            find(s, &[Attribute::Label(dup.as_bytes().to_vec())]).len(),
            1
        );

        // Read-only session.
        let ro = t.fx.ctx.open_ro_session(t.slot).unwrap();
        login(&ro);
        expect_rv(
            ro.generate_key(&Mechanism::AesKeyGen, &secure_template(&t.label("keys-ro"))),
            RvError::SessionReadOnly,
        );
    });
}

#[test]
fn find_by_template_and_stable_handles() {
    for_each_token(|t| {
        let s = &t.session;
        let label = t.label("keys-find");
        let id = format!("find-id-{}", t.name).into_bytes();
        let key = t.keygen(&label, &[Attribute::Id(id.clone())]);
        let other = t.keygen(&t.label("keys-find-other"), &[]);

        assert_eq!(
            find(s, &[Attribute::Label(label.as_bytes().to_vec())]),
            [key]
        );
        assert_eq!(find(s, &[Attribute::Id(id.clone())]), [key]);
        assert_eq!(
            find(
                s,
                &[
                    Attribute::Id(id.clone()),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                ]
            ),
            [key]
        );
        for tpl in [
            vec![Attribute::Class(ObjectClass::SECRET_KEY)],
            vec![Attribute::KeyType(KeyType::AES)],
            vec![Attribute::Sensitive(true), Attribute::Token(true)],
            vec![],
        ] {
            let all = find(s, &tpl);
            assert!(all.contains(&key) && all.contains(&other), "{tpl:?}");
        }
        for tpl in [
            vec![Attribute::Class(ObjectClass::PUBLIC_KEY)],
            vec![Attribute::KeyType(KeyType::DES3)],
            vec![Attribute::Extractable(true)],
            vec![Attribute::Label(b"no-such-key".to_vec())],
            vec![Attribute::Id(id.clone()), Attribute::Label(b"x".to_vec())],
            // CKA_VALUE never matches anything.
            vec![Attribute::Value(vec![0; 32])],
        ] {
            assert!(find(s, &tpl).is_empty(), "{tpl:?} matched");
        }

        // The same key found again (another session, too) has the same handle.
        assert_eq!(find(s, &[Attribute::Id(id.clone())]), [key]);
        let s2 = t.open();
        assert_eq!(find(&s2, &[Attribute::Id(id)]), [key]);
    });
}

#[test]
fn disabling_and_enabling_a_key() {
    for_each_token(|t| {
        let s = &t.session;
        let id = format!("toggle-{}", t.name).into_bytes();
        let key = t.keygen(&t.label("keys-toggle"), &[Attribute::Id(id.clone())]);
        let (ct, mut iv) = t.encrypt(key, 5, b"", b"data").unwrap();

        s.update_attributes(key, &[Attribute::Encrypt(false)])
            .unwrap();
        assert!(!read_bool(t, key, AttributeType::Encrypt));
        assert!(read_bool(t, key, AttributeType::Decrypt));
        expect_rv(
            t.encrypt(key, 5, b"", b"data"),
            RvError::KeyFunctionNotPermitted,
        );
        assert_eq!(s.decrypt(&gcm(&mut iv, b""), key, &ct).unwrap(), b"data");

        s.update_attributes(key, &[Attribute::Decrypt(false)])
            .unwrap();
        assert!(!read_bool(t, key, AttributeType::Decrypt));
        expect_rv(
            s.decrypt(&gcm(&mut iv, b""), key, &ct),
            RvError::KeyFunctionNotPermitted,
        );
        if t.index == 0 {
            // The HSM itself holds the change.
            let d = t.fx.direct_session();
            let found = find(&d, &[Attribute::Id(id.clone())]);
            assert_eq!(found.len(), 1);
            assert_eq!(
                d.get_attributes(found[0], &[AttributeType::Encrypt, AttributeType::Decrypt])
                    .unwrap(),
                [Attribute::Encrypt(false), Attribute::Decrypt(false)],
                "SoftHSM2's view"
            );
        }

        s.update_attributes(key, &[Attribute::Encrypt(true), Attribute::Decrypt(true)])
            .unwrap();
        assert!(read_bool(t, key, AttributeType::Encrypt));
        assert!(read_bool(t, key, AttributeType::Decrypt));
        // The same key as before: with the same caller IV, the same ciphertext. Where the HSM
        // generates IVs, a new one: what it encrypts decrypts, and the HSM used directly
        // encrypts under the first IV to the first ciphertext.
        let (ct2, mut iv2) = t.encrypt(key, 5, b"", b"data").unwrap();
        if t.generates_iv() {
            assert_ne!(iv2, iv, "a fresh IV for each encryption");
            assert_eq!(s.decrypt(&gcm(&mut iv2, b""), key, &ct2).unwrap(), b"data");
            let d = t.fx.direct_session();
            let found = find(&d, &[Attribute::Id(id.clone())]);
            let mut first = iv;
            assert_eq!(
                d.encrypt(&gcm(&mut first, b""), found[0], b"data").unwrap(),
                ct,
                "the HSM used directly, under the first IV"
            );
        } else {
            assert_eq!(ct2, ct);
        }
        assert_eq!(s.decrypt(&gcm(&mut iv, b""), key, &ct).unwrap(), b"data");
        if t.index == 0 {
            let d = t.fx.direct_session();
            let found = find(&d, &[Attribute::Id(id.clone())]);
            assert_eq!(
                d.get_attributes(found[0], &[AttributeType::Encrypt, AttributeType::Decrypt])
                    .unwrap(),
                [Attribute::Encrypt(true), Attribute::Decrypt(true)],
                "SoftHSM2's view"
            );
        }
        // Renaming is allowed too, and findable under the new name.
        let renamed = t.label("keys-toggle-renamed");
        s.update_attributes(key, &[Attribute::Label(renamed.as_bytes().to_vec())])
            .unwrap();
        assert_eq!(find_label(s, &renamed), key);
    });
}

#[test]
fn never_export_refusals() {
    let f = raw::table();
    for_each_token(|t| {
        let s = &t.session;
        let label = t.label("keys-refuse");
        let key = t.keygen(&label, &[]);
        let other = t.keygen(&t.label("keys-refuse-2"), &[]);
        let h = t.raw_session();
        let k = key.handle();

        // CKA_VALUE: sensitive, length unavailable, buffer untouched.
        let mut buf = [0u8; 64];
        let mut tpl = [bytes_attr(CKA_VALUE, &mut buf)];
        // SAFETY: the template points at a live local buffer of the stated size.
        let rv = unsafe { f.C_GetAttributeValue.unwrap()(h, k, tpl.as_mut_ptr(), 1) };
        assert_eq!(rv, CKR_ATTRIBUTE_SENSITIVE);
        assert_eq!(tpl[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert!(buf.iter().all(|b| *b == 0), "no key bytes written");
        let mut null_value = [CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        // SAFETY: NULL pValue asks for the length only.
        let rv = unsafe { f.C_GetAttributeValue.unwrap()(h, k, null_value.as_mut_ptr(), 1) };
        assert_eq!(rv, CKR_ATTRIBUTE_SENSITIVE);
        assert_eq!(null_value[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);

        // Wrap / unwrap / derive / copy / create / digest / operation state.
        expect_rv(
            s.wrap_key(&Mechanism::AesKeyWrap, other, key),
            RvError::KeyUnextractable,
        );
        expect_rv(
            s.unwrap_key(
                &Mechanism::AesKeyWrap,
                other,
                &[0u8; 40],
                &secure_template(&t.label("keys-unwrapped")),
            ),
            RvError::KeyFunctionNotPermitted,
        );
        expect_rv(
            s.derive_key(
                &Mechanism::AesKeyWrap,
                key,
                &secure_template(&t.label("keys-derived")),
            ),
            RvError::KeyFunctionNotPermitted,
        );
        expect_rv(
            s.copy_object(key, &[Attribute::Extractable(true)]),
            RvError::ActionProhibited,
        );
        expect_rv(s.copy_object(key, &[]), RvError::ActionProhibited);
        let mut import = secure_template(&t.label("keys-imported"));
        import.push(Attribute::Value(vec![0x11; 32]));
        expect_rv(s.create_object(&import), RvError::TemplateInconsistent);
        // SAFETY: plain handles.
        unsafe {
            assert_eq!(f.C_DigestKey.unwrap()(h, k), CKR_KEY_INDIGESTIBLE);
            let mut len: CK_ULONG = 0;
            let rv = f.C_GetOperationState.unwrap()(h, ptr::null_mut(), &mut len);
            assert_eq!(rv, CKR_STATE_UNSAVEABLE);
            let mut state = [0u8; 16];
            let rv = f.C_SetOperationState.unwrap()(h, state.as_mut_ptr(), 16, k, k);
            assert_eq!(rv, CKR_SAVED_STATE_INVALID);
        }
        for tpl in ["keys-unwrapped", "keys-derived", "keys-imported"] {
            assert!(find(s, &[Attribute::Label(t.label(tpl).into_bytes())]).is_empty());
        }

        // Security attributes are read-only, and the key is unchanged afterwards.
        for a in [
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
            Attribute::Value(vec![0u8; 32]),
            Attribute::Wrap(true),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Id(b"new-id".to_vec()),
        ] {
            let what = format!("{a:?}");
            // Also combined with an allowed change: the whole template is refused.
            for tpl in [vec![a.clone()], vec![Attribute::Encrypt(false), a]] {
                match s.update_attributes(key, &tpl) {
                    Ok(()) => panic!("{what}: accepted"),
                    Err(e) => {
                        assert_eq!(
                            support::module_fixture::rv(e),
                            RvError::AttributeReadOnly,
                            "{what}"
                        )
                    }
                }
            }
        }
        assert!(read_bool(t, key, AttributeType::Sensitive));
        assert!(!read_bool(t, key, AttributeType::Extractable));
        assert!(!read_bool(t, key, AttributeType::Wrap));
        assert!(
            read_bool(t, key, AttributeType::Encrypt),
            "partial update applied"
        );
        assert_eq!(find_label(s, &label), key);

        // Deletion protection (default config).
        expect_rv(s.destroy_object(key), RvError::ActionProhibited);
        assert_eq!(find_label(s, &label), key);
        t.encrypt(key, 0, b"", b"still there").unwrap();
    });
}

#[test]
fn token_info_is_truthful() {
    let f = raw::table();
    let fx = fixture();
    for (i, slot) in fx.slots().into_iter().enumerate() {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: live out-struct.
        let rv = unsafe { f.C_GetTokenInfo.unwrap()(slot.id(), &mut info) };
        assert_eq!(rv, CKR_OK);
        let label = SLOT_LABELS[i].as_bytes();
        assert_eq!(&info.label[..label.len()], label, "slot {i}");
        assert!(
            info.label[label.len()..].iter().all(|b| *b == b' '),
            "label blank padded: {:?}",
            info.label
        );
        for field in [
            &info.manufacturerID[..],
            &info.model[..],
            &info.serialNumber[..],
        ] {
            assert!(!field.contains(&0), "no NUL in {:?}", field);
        }
        assert_eq!(&info.manufacturerID[..10], b"xki-bridge");
        assert_eq!(
            info.flags,
            CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_RNG | CKF_TOKEN_INITIALIZED,
            "slot {i} flags {:#x}",
            info.flags
        );
        // cryptoki reads the same.
        let ti = fx.ctx.get_token_info(slot).unwrap();
        assert_eq!(ti.label(), SLOT_LABELS[i]);
        assert!(ti.login_required() && ti.token_initialized() && ti.rng());
        assert!(!ti.write_protected());
        let si = fx.ctx.get_slot_info(slot).unwrap();
        assert!(si.token_present());
    }
}

#[test]
fn mechanisms_are_exactly_keygen_and_gcm() {
    let f = raw::table();
    let fx = fixture();
    for (i, slot) in fx.slots().into_iter().enumerate() {
        let list = fx.ctx.get_mechanism_list(slot).unwrap();
        let list: Vec<CK_ULONG> = list.into_iter().map(CK_ULONG::from).collect();
        assert_eq!(list, [CKM_AES_KEY_GEN, CKM_AES_GCM], "slot {i}");
        for (mech, flags) in [
            (CKM_AES_KEY_GEN, CKF_GENERATE),
            (
                CKM_AES_GCM,
                CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT,
            ),
        ] {
            // SoftHSM2 ORs flags into the caller's struct: pre-fill it with 0xFF.
            let mut info = CK_MECHANISM_INFO {
                ulMinKeySize: CK_ULONG::MAX,
                ulMaxKeySize: CK_ULONG::MAX,
                flags: CK_FLAGS::MAX,
            };
            // SAFETY: live out-struct.
            let rv = unsafe { f.C_GetMechanismInfo.unwrap()(slot.id(), mech, &mut info) };
            assert_eq!(rv, CKR_OK);
            assert_eq!(
                (info.ulMinKeySize, info.ulMaxKeySize, info.flags),
                (32, 32, flags),
                "slot {i} mechanism {mech:#x}"
            );
        }
        let mut info = CK_MECHANISM_INFO::default();
        for other in [CKM_AES_CBC_PAD, CKM_AES_ECB, CKM_AES_KEY_WRAP, CKM_SHA256] {
            // SAFETY: live out-struct.
            let rv = unsafe { f.C_GetMechanismInfo.unwrap()(slot.id(), other, &mut info) };
            assert_eq!(rv, CKR_MECHANISM_INVALID, "slot {i} mechanism {other:#x}");
        }
    }
}

/// The two-call convention for list and attribute queries.
#[test]
fn two_call_convention_for_lists_and_attributes() {
    let f = raw::table();
    let fx = fixture();
    // SAFETY: every pointer is a live local of the right size.
    unsafe {
        let mut n: CK_ULONG = 0;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut n),
            CKR_OK
        );
        assert_eq!(n, 2);
        let mut slots = [CK_ULONG::MAX; 4];
        let mut short: CK_ULONG = 1;
        let rv = f.C_GetSlotList.unwrap()(CK_FALSE, slots.as_mut_ptr(), &mut short);
        assert_eq!((rv, short), (CKR_BUFFER_TOO_SMALL, 2));
        let mut roomy: CK_ULONG = 4;
        let rv = f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut roomy);
        assert_eq!((rv, roomy), (CKR_OK, 2));
        assert_eq!(&slots[..2], &[0, 1]);

        for slot in [0, 1] {
            let mut n: CK_ULONG = 0;
            let rv = f.C_GetMechanismList.unwrap()(slot, ptr::null_mut(), &mut n);
            assert_eq!((rv, n), (CKR_OK, 2));
            let mut mechs = [CK_ULONG::MAX; 4];
            let mut short: CK_ULONG = 1;
            let rv = f.C_GetMechanismList.unwrap()(slot, mechs.as_mut_ptr(), &mut short);
            assert_eq!((rv, short), (CKR_BUFFER_TOO_SMALL, 2));
            let mut roomy: CK_ULONG = 4;
            let rv = f.C_GetMechanismList.unwrap()(slot, mechs.as_mut_ptr(), &mut roomy);
            assert_eq!((rv, roomy), (CKR_OK, 2));
        }
    }
    let _ = fx;
    for_each_token(|t| {
        let label = t.label("keys-attr-len");
        let key = t.keygen(&label, &[]).handle();
        let h = t.raw_session();
        let label_len = label.len() as CK_ULONG;
        // SAFETY: every pointer is a live local of the right size.
        unsafe {
            // Length query: NULL pValue.
            let mut q = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            }];
            let rv = f.C_GetAttributeValue.unwrap()(h, key, q.as_mut_ptr(), 1);
            assert_eq!((rv, q[0].ulValueLen), (CKR_OK, label_len));
            // Short buffer: CKR_BUFFER_TOO_SMALL, that entry unavailable, others answered.
            let mut small = [0u8; 3];
            let mut value_len: CK_ULONG = 0;
            let mut sensitive: CK_BBOOL = 0xEE;
            let mut tpl = [
                bytes_attr(CKA_LABEL, &mut small),
                ulong_attr(CKA_VALUE_LEN, &mut value_len),
                bool_attr(CKA_SENSITIVE, &mut sensitive),
                CK_ATTRIBUTE {
                    type_: 0x7fff_fff0,
                    pValue: ptr::null_mut(),
                    ulValueLen: 0,
                },
            ];
            let rv = f.C_GetAttributeValue.unwrap()(h, key, tpl.as_mut_ptr(), 4);
            assert!(
                rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_TYPE_INVALID,
                "rv {rv:#x}"
            );
            assert_eq!(tpl[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
            assert_eq!(value_len, 32);
            assert_eq!(sensitive, CK_TRUE);
            assert_eq!(tpl[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
            // Only the short buffer: exactly CKR_BUFFER_TOO_SMALL.
            let mut tpl = [bytes_attr(CKA_LABEL, &mut small)];
            let rv = f.C_GetAttributeValue.unwrap()(h, key, tpl.as_mut_ptr(), 1);
            assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
            assert_eq!(tpl[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
            // Roomy buffer.
            let mut roomy = vec![0u8; 64];
            let mut tpl = [bytes_attr(CKA_LABEL, &mut roomy)];
            let rv = f.C_GetAttributeValue.unwrap()(h, key, tpl.as_mut_ptr(), 1);
            assert_eq!((rv, tpl[0].ulValueLen), (CKR_OK, label_len));
            assert_eq!(&roomy[..label.len()], label.as_bytes());
        }
    });
}

/// Bad arguments through the raw table.
#[test]
fn bad_arguments_and_handles() {
    let f = raw::table();
    for_each_token(|t| {
        let key = t.keygen(&t.label("keys-badargs"), &[]).handle();
        let h = t.raw_session();
        let slot = t.slot.id();
        let (mut iv, mut aad) = ([0u8; 12], [0u8; 0]);
        let mut params = raw::gcm_params(&mut iv, &mut aad, 128);
        let mut mech = raw::gcm_mechanism(&mut params);
        let mut data = [0u8; 32];
        let mut len: CK_ULONG = 64;
        let mut out = [0u8; 64];
        const BAD_SESSION: CK_SESSION_HANDLE = 0xDEAD_BEEF;
        const BAD_OBJECT: CK_OBJECT_HANDLE = 0x0BAD_0BAD;
        // SAFETY: NULL where the test says so; every other pointer is a live local.
        unsafe {
            // NULL pointers.
            assert_eq!(
                f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_GetTokenInfo.unwrap()(slot, ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_GetSlotInfo.unwrap()(slot, ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(f.C_GetInfo.unwrap()(ptr::null_mut()), CKR_ARGUMENTS_BAD);
            assert_eq!(
                f.C_OpenSession.unwrap()(
                    slot,
                    CKF_SERIAL_SESSION,
                    ptr::null_mut(),
                    None,
                    ptr::null_mut()
                ),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_GetSessionInfo.unwrap()(h, ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_GetAttributeValue.unwrap()(h, key, ptr::null_mut(), 1),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(h, ptr::null_mut(), 1),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_EncryptInit.unwrap()(h, ptr::null_mut(), key),
                CKR_ARGUMENTS_BAD
            );
            let mut gen = CK_MECHANISM {
                mechanism: CKM_AES_KEY_GEN,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            let mut value_len: CK_ULONG = 32;
            let mut tpl = [ulong_attr(CKA_VALUE_LEN, &mut value_len)];
            assert_eq!(
                f.C_GenerateKey.unwrap()(h, &mut gen, tpl.as_mut_ptr(), 1, ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            assert_eq!(
                f.C_Encrypt.unwrap()(h, data.as_mut_ptr(), 32, out.as_mut_ptr(), ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                f.C_Encrypt.unwrap()(h, ptr::null_mut(), 32, out.as_mut_ptr(), &mut len),
                CKR_ARGUMENTS_BAD
            );
            // (an argument error ends the operation or leaves it; either way, reset it)
            let _ = f.C_Encrypt.unwrap()(h, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len);

            // Invalid session handle.
            let mut info = CK_SESSION_INFO::default();
            assert_eq!(
                f.C_GetSessionInfo.unwrap()(BAD_SESSION, &mut info),
                CKR_SESSION_HANDLE_INVALID
            );
            assert_eq!(
                f.C_EncryptInit.unwrap()(BAD_SESSION, &mut mech, key),
                CKR_SESSION_HANDLE_INVALID
            );
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(BAD_SESSION, ptr::null_mut(), 0),
                CKR_SESSION_HANDLE_INVALID
            );
            assert_eq!(
                f.C_CloseSession.unwrap()(BAD_SESSION),
                CKR_SESSION_HANDLE_INVALID
            );

            // Invalid object / key handles.
            let mut v: CK_ULONG = 0;
            let mut tpl = [ulong_attr(CKA_VALUE_LEN, &mut v)];
            assert_eq!(
                f.C_GetAttributeValue.unwrap()(h, BAD_OBJECT, tpl.as_mut_ptr(), 1),
                CKR_OBJECT_HANDLE_INVALID
            );
            assert_eq!(
                f.C_DestroyObject.unwrap()(h, BAD_OBJECT),
                CKR_OBJECT_HANDLE_INVALID
            );
            assert_eq!(
                f.C_EncryptInit.unwrap()(h, &mut mech, BAD_OBJECT),
                CKR_KEY_HANDLE_INVALID
            );
            assert_eq!(
                f.C_DecryptInit.unwrap()(h, &mut mech, BAD_OBJECT),
                CKR_KEY_HANDLE_INVALID
            );
            // Another slot's key is not a key of this session.
            let other_slot = 1 - t.index;
            let other = t.fx.ctx.open_rw_session(t.fx.slots()[other_slot]).unwrap();
            let foreign = find(&other, &[]);
            if let Some(k) = foreign.first() {
                assert_eq!(
                    f.C_EncryptInit.unwrap()(h, &mut mech, k.handle()),
                    CKR_KEY_HANDLE_INVALID
                );
            }
            // Invalid slot.
            let mut ti = CK_TOKEN_INFO::default();
            assert_eq!(f.C_GetTokenInfo.unwrap()(99, &mut ti), CKR_SLOT_ID_INVALID);
        }
    });
}

/// The audit trail records key lifecycle, use and refusals, and neither it nor the module log
/// ever contains plaintext, AAD or the PIN.
#[test]
fn audit_records_and_logs_hold_no_secrets() {
    let marker_pt = b"PLAINTEXT-MARKER-Qx7";
    let marker_aad = b"AAD-MARKER-Zr4";
    for_each_token(|t| {
        let label = t.label("keys-audit");
        let key = t.keygen(&label, &[]);
        let (ct, mut iv) = t.encrypt(key, 4, marker_aad, marker_pt).unwrap();
        t.session
            .decrypt(&gcm(&mut iv, marker_aad), key, &ct)
            .unwrap();
        expect_rv(t.session.copy_object(key, &[]), RvError::ActionProhibited);
        // A wrong PIN attempt on a fresh session (the token is logged in: the module answers
        // USER_ALREADY_LOGGED_IN or PIN_INCORRECT; either way the PIN must not be logged).
        let _ = t.session.login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from("WRONG-PIN-MARKER-Kp2")),
        );
    });
    let fx = fixture();
    let audit = std::fs::read_to_string(fx.dir.path().join("audit.log")).expect("audit.log");
    for name in SLOT_NAMES {
        let label = format!("keys-audit-{name}");
        for op in [
            "op=generate",
            "op=encrypt",
            "op=decrypt",
            "op=refused:C_CopyObject",
        ] {
            assert!(
                audit.lines().any(|l| l.contains(op) && l.contains(&label)),
                "no {op} record for {label} in:\n{audit}"
            );
        }
    }
    let log = std::fs::read_to_string(fx.dir.path().join("module.log")).unwrap_or_default();
    for (what, text) in [("audit", &audit), ("module log", &log)] {
        for marker in [
            &marker_pt[..],
            &marker_aad[..],
            b"WRONG-PIN-MARKER-Kp2",
            b"PIN=",
        ] {
            let m = String::from_utf8_lossy(marker);
            assert!(!text.contains(&*m), "{what} contains {m}");
        }
    }
}
