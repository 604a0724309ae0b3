//! Operation-state rules and the smaller functions of the built module, on both slots:
//! one active operation per session, exact-size and in-place buffers, chunked finds,
//! random numbers, and attribute choices made at generation time.

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType};
use pkcs11_sys::*;
use std::collections::HashSet;
use std::ptr;
use support::module_fixture::raw::{self, gcm_mechanism, gcm_params};
use support::module_fixture::*;

#[test]
fn one_operation_at_a_time_and_buffers_of_exact_size() {
    let f = raw::table();
    for_each_token(|t| {
        let key_object = t.keygen(&t.label("ops-exact"), &[]);
        let key = key_object.handle();
        let h = t.raw_session();
        let pt = test_bytes(33, 9);
        let n = pt.len();
        // A 16-byte caller IV; where the slot's HSM generates IVs it refuses that, and the
        // operations below run under the zero-IV convention (12 zero bytes, the generated IV
        // written back into the same buffer).
        let generated = t.generates_iv();
        let mut iv = if generated {
            let mut caller = [2u8; 16];
            expect_rv(
                t.session
                    .encrypt(&gcm(&mut caller, b"aad"), key_object, &pt),
                RvError::MechanismParamInvalid,
            );
            vec![0u8; 12]
        } else {
            vec![2u8; 16]
        };
        let mut aad = *b"aad";
        let mut params = gcm_params(&mut iv, &mut aad, 128);
        let mut mech = gcm_mechanism(&mut params);
        // SAFETY: every pointer is a live local of the stated size.
        unsafe {
            // Encrypt in place, into a buffer of exactly n + 16 bytes.
            let mut buf = pt.clone();
            buf.resize(n + 16, 0);
            assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            // A second init while one is active.
            assert_eq!(
                f.C_EncryptInit.unwrap()(h, &mut mech, key),
                CKR_OPERATION_ACTIVE
            );
            assert_eq!(
                f.C_DecryptInit.unwrap()(h, &mut mech, key),
                CKR_OPERATION_ACTIVE
            );
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(h, ptr::null_mut(), 0),
                CKR_OPERATION_ACTIVE
            );
            let mut len = (n + 16) as CK_ULONG;
            let p = buf.as_mut_ptr();
            let rv = f.C_Encrypt.unwrap()(h, p, n as CK_ULONG, p, &mut len);
            assert_eq!((rv, len), (CKR_OK, (n + 16) as CK_ULONG), "in place");
            let ct = buf.clone();
            let ct_iv = iv.clone();
            if generated {
                assert_ne!(ct_iv, [0u8; 12], "the generated IV is written back");
            }

            // Decrypt in place into exactly n bytes of room.
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut len = n as CK_ULONG;
            let rv = f.C_Decrypt.unwrap()(h, p, (n + 16) as CK_ULONG, p, &mut len);
            assert_eq!((rv, len), (CKR_OK, n as CK_ULONG), "exact-size decrypt");
            assert_eq!(&buf[..n], &pt[..]);

            // Multi-part: NULL-output length queries on Update answer 0.
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut ct_m = ct.clone();
            let mut q: CK_ULONG = 99;
            let rv = f.C_DecryptUpdate.unwrap()(h, ct_m.as_mut_ptr(), 10, ptr::null_mut(), &mut q);
            assert_eq!(rv, CKR_OK);
            // Single-part C_Decrypt in the middle of a multi-part operation is refused.
            let mut out = vec![0u8; 128];
            let mut q2: CK_ULONG = 128;
            let rv =
                f.C_DecryptUpdate.unwrap()(h, ct_m.as_mut_ptr(), 10, out.as_mut_ptr(), &mut q2);
            assert_eq!((rv, q2), (CKR_OK, 0));
            let rest = ct_m[10..].as_mut_ptr();
            let mut q3: CK_ULONG = 128;
            let rv =
                f.C_DecryptUpdate.unwrap()(h, rest, (n + 6) as CK_ULONG, out.as_mut_ptr(), &mut q3);
            assert_eq!((rv, q3), (CKR_OK, 0));
            let mut fin = n as CK_ULONG;
            let rv = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut fin);
            assert_eq!(
                (rv, fin),
                (CKR_OK, n as CK_ULONG),
                "exact-size DecryptFinal"
            );
            assert_eq!(&out[..n], &pt[..]);

            // Operations without init.
            let mut len: CK_ULONG = 128;
            let rv = f.C_Encrypt.unwrap()(h, out.as_mut_ptr(), 1, out.as_mut_ptr(), &mut len);
            assert_eq!(rv, CKR_OPERATION_NOT_INITIALIZED);
            let rv = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut len);
            assert_eq!(rv, CKR_OPERATION_NOT_INITIALIZED);
            let mut found: CK_OBJECT_HANDLE = 0;
            let mut count: CK_ULONG = 0;
            let rv = f.C_FindObjects.unwrap()(h, &mut found, 1, &mut count);
            assert_eq!(rv, CKR_OPERATION_NOT_INITIALIZED);
            assert_eq!(
                f.C_FindObjectsFinal.unwrap()(h),
                CKR_OPERATION_NOT_INITIALIZED
            );

            // An encrypt operation, then a decrypt one, on one session: independent.
            if generated {
                // A new encryption under the zero-IV convention.
                iv.fill(0);
            }
            assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut part = pt.clone();
            let mut upd: CK_ULONG = 0;
            let rv = f.C_EncryptUpdate.unwrap()(
                h,
                part.as_mut_ptr(),
                n as CK_ULONG,
                out.as_mut_ptr(),
                &mut upd,
            );
            assert_eq!((rv, upd), (CKR_OK, 0));
            let mut fin: CK_ULONG = (n + 16) as CK_ULONG;
            let rv = f.C_EncryptFinal.unwrap()(h, out.as_mut_ptr(), &mut fin);
            assert_eq!(
                (rv, fin),
                (CKR_OK, (n + 16) as CK_ULONG),
                "exact EncryptFinal"
            );
            if generated {
                // A fresh IV, written back; the output decrypts under it.
                assert!(iv != [0u8; 12] && iv != ct_iv, "a fresh IV: {iv:?}");
                let back = t
                    .session
                    .decrypt(&gcm(&mut iv.clone(), b"aad"), key_object, &out[..n + 16])
                    .unwrap();
                assert_eq!(back, pt);
            } else {
                // Same key, same caller IV: the same ciphertext.
                assert_eq!(&out[..n + 16], &ct[..]);
            }
        }
    });
}

#[test]
fn find_in_chunks_returns_every_key_once() {
    let f = raw::table();
    for_each_token(|t| {
        let prefix = t.label("ops-chunk");
        let mut made = HashSet::new();
        for i in 0..7 {
            made.insert(t.keygen(&format!("{prefix}-{i}"), &[]).handle());
        }
        let h = t.raw_session();
        let mut seen = Vec::new();
        // SAFETY: live locals.
        unsafe {
            assert_eq!(f.C_FindObjectsInit.unwrap()(h, ptr::null_mut(), 0), CKR_OK);
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(h, ptr::null_mut(), 0),
                CKR_OPERATION_ACTIVE
            );
            loop {
                let mut batch = [0 as CK_OBJECT_HANDLE; 3];
                let mut count: CK_ULONG = 99;
                let rv = f.C_FindObjects.unwrap()(h, batch.as_mut_ptr(), 3, &mut count);
                assert_eq!(rv, CKR_OK);
                assert!(count <= 3);
                if count == 0 {
                    break;
                }
                seen.extend_from_slice(&batch[..count as usize]);
            }
            assert_eq!(f.C_FindObjectsFinal.unwrap()(h), CKR_OK);
        }
        let unique: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a handle came twice: {seen:?}");
        assert!(
            made.is_subset(&unique),
            "missing keys: {made:?} vs {seen:?}"
        );
    });
}

#[test]
fn random_numbers_and_other_small_functions() {
    let f = raw::table();
    for_each_token(|t| {
        let s = &t.session;
        let a = s.generate_random_vec(64).unwrap();
        let b = s.generate_random_vec(64).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, vec![0u8; 64]);
        let h = t.raw_session();
        // SAFETY: live locals; NULL where the test says so.
        unsafe {
            let mut seed = [1u8; 8];
            assert_eq!(
                f.C_SeedRandom.unwrap()(h, seed.as_mut_ptr(), 8),
                CKR_RANDOM_SEED_NOT_SUPPORTED
            );
            let mut out = [0u8; 1];
            assert_eq!(f.C_GenerateRandom.unwrap()(h, out.as_mut_ptr(), 0), CKR_OK);
            let mut session: CK_SESSION_HANDLE = 0;
            let rv = f.C_OpenSession.unwrap()(
                t.slot.id(),
                CKF_RW_SESSION,
                ptr::null_mut(),
                None,
                &mut session,
            );
            assert_eq!(rv, CKR_SESSION_PARALLEL_NOT_SUPPORTED);
            let mut pin = PIN.as_bytes().to_vec();
            let rv = f.C_Login.unwrap()(h, CKU_CONTEXT_SPECIFIC, pin.as_mut_ptr(), 4);
            assert_ne!(rv, CKR_OK, "context-specific login");
            let mut info = CK_SESSION_INFO::default();
            assert_eq!(f.C_GetSessionInfo.unwrap()(h, &mut info), CKR_OK);
            assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
            assert_eq!(info.slotID, t.slot.id());
            assert_eq!(info.flags, CKF_SERIAL_SESSION | CKF_RW_SESSION);
        }
        let ro = t.fx.ctx.open_ro_session(t.slot).unwrap();
        assert_eq!(
            ro.get_session_info().unwrap().session_state(),
            cryptoki::session::SessionState::RoUser
        );
    });
}

#[test]
fn generation_choices_are_kept() {
    for_each_token(|t| {
        let s = &t.session;
        // Encrypt-only key.
        let enc_only = t.keygen(&t.label("ops-enc-only"), &[]);
        s.update_attributes(enc_only, &[Attribute::Decrypt(false)])
            .unwrap();
        let label = t.label("ops-dec-off");
        let mut tpl = secure_template(&label);
        tpl.retain(|a| a.attribute_type() != AttributeType::Decrypt);
        tpl.push(Attribute::Decrypt(false));
        let key = s.generate_key(&Mechanism::AesKeyGen, &tpl).unwrap();
        assert_eq!(
            attr(s, key, AttributeType::Decrypt),
            Attribute::Decrypt(false)
        );
        let (ct, mut iv) = t.encrypt(key, 0, b"", b"one way").unwrap();
        expect_rv(
            s.decrypt(&gcm(&mut iv, b""), key, &ct),
            RvError::KeyFunctionNotPermitted,
        );

        // Dates: kept where the token can hold them; where it cannot (SoftHSM2 cannot read
        // back dates of private objects) the generation fails WITHOUT leaving a key behind.
        let dated = t.label("ops-dated");
        let mut tpl = secure_template(&dated);
        let start = cryptoki::types::Date::new_from_str_slice("2020", "01", "02").unwrap();
        tpl.push(Attribute::StartDate(start));
        match s.generate_key(&Mechanism::AesKeyGen, &tpl) {
            Ok(key) => match attr(s, key, AttributeType::StartDate) {
                Attribute::StartDate(d) => assert_eq!(d, start),
                other => panic!("{other:?}"),
            },
            Err(e) => {
                assert_eq!(t.index, 0, "only SoftHSM2 has the dates quirk: {e}");
                assert_eq!(
                    support::module_fixture::rv(e),
                    RvError::AttributeTypeInvalid
                );
                assert!(
                    find(s, &[Attribute::Label(dated.clone().into_bytes())]).is_empty(),
                    "a failed C_GenerateKey left its key on the token"
                );
                // So the label is still free.
                t.keygen(&dated, &[]);
            }
        }

        // Duplicate CKA_ID.
        let id = format!("ops-dup-id-{}", t.name).into_bytes();
        t.keygen(&t.label("ops-id-1"), &[Attribute::Id(id.clone())]);
        let mut tpl = secure_template(&t.label("ops-id-2"));
        tpl.push(Attribute::Id(id.clone()));
        expect_rv(
            s.generate_key(&Mechanism::AesKeyGen, &tpl),
            RvError::AttributeValueInvalid,
        );
        assert_eq!(find(s, &[Attribute::Id(id)]).len(), 1);

        // Renaming onto a label in use.
        let a = t.keygen(&t.label("ops-name-a"), &[]);
        t.keygen(&t.label("ops-name-b"), &[]);
        expect_rv(
            s.update_attributes(a, &[Attribute::Label(t.label("ops-name-b").into_bytes())]),
            RvError::AttributeValueInvalid,
        );
        assert_eq!(find_label(s, &t.label("ops-name-a")), a);
    });
}
