//! PKCS#11 3.0 message-based AES-GCM through the built module, on both slots (SoftHSM2 and
//! the embedded token), through cryptoki as a 3.0 consumer calls it: whole messages and
//! `Begin`/`Next`, every `ivGenerator`, the two-call convention, operation state, the
//! mechanism flags, interop with SoftHSM2 used directly, and audit records. IV uniqueness over
//! a million messages: `module_message_ivs.rs`.

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::{GcmMessageParams, GcmParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MechanismType, MessageParam};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use pkcs11_sys::*;
use support::module_fixture::*;

/// One whole message encrypted with `generator` (`iv` is the caller's IV for
/// `NoGenerate`, and receives the generated one otherwise): (ciphertext, iv, tag).
fn encrypt_message(
    s: &Session,
    key: ObjectHandle,
    generator: GeneratorFunction,
    iv: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> cryptoki::error::Result<(Vec<u8>, Vec<u8>, [u8; 16])> {
    let mut iv = iv.to_vec();
    let mut tag = [0u8; 16];
    let params = GcmMessageParams::new(&mut iv, Ulong::from(0), generator, &mut tag)?;
    s.message_encrypt_init(&Mechanism::AesGcmMessage(params), key)?;
    let ct = s.encrypt_message(&MessageParam::AesGcmMessage(params), aad, pt);
    s.message_encrypt_final()?;
    let ct = ct?;
    Ok((ct, iv, tag))
}

/// One whole message decrypted under `iv` and `tag`.
fn decrypt_message(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    tag: &[u8; 16],
    aad: &[u8],
    ct: &[u8],
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = iv.to_vec();
    let mut tag = *tag;
    let params = GcmMessageParams::new(
        &mut iv,
        Ulong::from(0),
        GeneratorFunction::NoGenerate,
        &mut tag,
    )?;
    s.message_decrypt_init(&Mechanism::AesGcmMessage(params), key)?;
    let pt = s.decrypt_message(&MessageParam::AesGcmMessage(params), aad, ct);
    s.message_decrypt_final()?;
    pt
}

/// Whether slot `index` takes caller IVs for encryption: the embedded slot always; the
/// hardware slot unless `XKI_ITEST_BACKEND` put an IV-generating HSM (emulated Luna FIPS,
/// CloudHSM, nShield) behind it.
fn takes_caller_iv(index: usize) -> bool {
    index != 0 || backend_kind().takes_caller_iv()
}

/// Classic single-part decryption with the caller's IV (every HSM takes one for decryption).
fn classic_decrypt(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, aad, Ulong::from(128)).unwrap();
    s.decrypt(&Mechanism::AesGcm(params), key, ct)
        .expect("C_Decrypt")
}

/// Classic single-part encryption with a caller IV: ciphertext || tag.
fn classic_encrypt(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, aad, Ulong::from(128)).unwrap();
    s.encrypt(&Mechanism::AesGcm(params), key, pt)
        .expect("C_Encrypt")
}

#[test]
fn generated_iv_round_trips_and_is_fresh_each_message() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-gen"), &[]);
        let pt = b"message-based plaintext";
        let aad = b"aad";
        let (ct, iv, tag) = encrypt_message(
            &t.session,
            key,
            GeneratorFunction::GenerateRandom,
            &[0; 12],
            aad,
            pt,
        )
        .expect("C_EncryptMessage");
        assert_eq!(ct.len(), pt.len(), "ciphertext is as long as the plaintext");
        assert_ne!(iv, vec![0u8; 12], "the generated IV is written into pIv");
        assert_ne!(tag, [0u8; 16], "the tag is written into pTag");
        let back = decrypt_message(&t.session, key, &iv, &tag, aad, &ct).expect("decrypt");
        assert_eq!(back, pt);
        // The IV returned is the one used: the classic decryption with it verifies, and where
        // the HSM takes caller IVs the classic encryption under it gives the same output.
        let mut classic = ct.clone();
        classic.extend_from_slice(&tag);
        assert_eq!(classic_decrypt(&t.session, key, &iv, aad, &classic), pt);
        if takes_caller_iv(t.index) {
            assert_eq!(classic_encrypt(&t.session, key, &iv, aad, pt), classic);
        }
        let (_, iv2, _) = encrypt_message(
            &t.session,
            key,
            GeneratorFunction::GenerateRandom,
            &[0; 12],
            aad,
            pt,
        )
        .unwrap();
        assert_ne!(iv, iv2, "every message gets a new IV");
    });
}

#[test]
fn caller_iv_with_no_generate_is_used_as_given() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-caller"), &[]);
        if !takes_caller_iv(t.index) {
            // An HSM that generates its IVs: CKG_NO_GENERATE is refused, nothing encrypted.
            expect_rv(
                encrypt_message(
                    &t.session,
                    key,
                    GeneratorFunction::NoGenerate,
                    &[7; 12],
                    b"",
                    b"abc",
                ),
                RvError::MechanismParamInvalid,
            );
            return;
        }
        for iv in [vec![7u8; 12], vec![9u8; 16]] {
            let (ct, iv_after, tag) = encrypt_message(
                &t.session,
                key,
                GeneratorFunction::NoGenerate,
                &iv,
                b"",
                b"abc",
            )
            .expect("CKG_NO_GENERATE");
            assert_eq!(iv_after, iv, "pIv is not changed");
            let mut classic = ct.clone();
            classic.extend_from_slice(&tag);
            assert_eq!(classic_encrypt(&t.session, key, &iv, b"", b"abc"), classic);
        }
    });
}

#[test]
fn counter_generators_and_bad_parameters_are_refused_and_the_process_stays() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-refused"), &[]);
        let s = &t.session;
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let init =
            GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
                .unwrap();
        s.message_encrypt_init(&Mechanism::AesGcmMessage(init), key)
            .unwrap();
        for generator in [
            GeneratorFunction::Generate,
            GeneratorFunction::GenerateCounter,
            GeneratorFunction::GenerateCounterXor,
        ] {
            let mut iv = [0u8; 12];
            let mut tag = [0u8; 16];
            let p = GcmMessageParams::new(&mut iv, 0.into(), generator, &mut tag).unwrap();
            expect_rv(
                s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
                RvError::MechanismParamInvalid,
            );
        }
        // Fixed IV bits with a random generator, an 8-byte IV, a 96-bit tag.
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(
            &mut iv,
            32.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag,
        )
        .unwrap();
        expect_rv(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
            RvError::MechanismParamInvalid,
        );
        let mut iv8 = [0u8; 8];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(&mut iv8, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
            .unwrap();
        expect_rv(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
            RvError::MechanismParamInvalid,
        );
        let mut iv = [0u8; 12];
        let mut tag12 = [0u8; 12];
        let p = GcmMessageParams::new(
            &mut iv,
            0.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag12,
        )
        .unwrap();
        expect_rv(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
            RvError::MechanismParamInvalid,
        );
        // The process is still active: a good message goes through, then Final ends it.
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(
            &mut iv,
            0.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag,
        )
        .unwrap();
        assert_eq!(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"ok")
                .unwrap()
                .len(),
            2
        );
        s.message_encrypt_final().unwrap();
        expect_rv(s.message_encrypt_final(), RvError::OperationNotInitialized);
    });
}

#[test]
fn operation_state_rules() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-state"), &[]);
        let s = &t.session;
        let mut iv = [1u8; 12];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
            .unwrap();
        expect_rv(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
            RvError::OperationNotInitialized,
        );
        expect_rv(s.message_decrypt_final(), RvError::OperationNotInitialized);
        s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
            .unwrap();
        // One operation per session: classic init and a second message init are refused.
        let mut iv2 = [1u8; 12];
        let classic = GcmParams::new(&mut iv2, b"", 128.into()).unwrap();
        expect_rv(
            s.encrypt_init(&Mechanism::AesGcm(classic), key),
            RvError::OperationActive,
        );
        expect_rv(
            s.message_decrypt_init(&Mechanism::AesGcmMessage(p), key),
            RvError::OperationActive,
        );
        // A decryption call on an encryption process is not initialised.
        expect_rv(
            s.decrypt_message(&MessageParam::AesGcmMessage(p), b"", &[0u8; 4]),
            RvError::OperationNotInitialized,
        );
        s.message_encrypt_final().unwrap();
        // Wrong mechanism and a bad key handle.
        expect_rv(
            s.message_encrypt_init(&Mechanism::AesKeyGen, key),
            RvError::MechanismInvalid,
        );
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let f = support::module_fixture::raw::table();
        // SAFETY: a live CK_MECHANISM without parameter.
        let rv = unsafe { f.C_MessageEncryptInit.unwrap()(s.handle(), &mut mech, 0x7fff_0000) };
        assert_eq!(rv, CKR_KEY_HANDLE_INVALID);
        // A parameter of any other size than CK_GCM_MESSAGE_PARAMS at init.
        let mut junk = [0u8; 8];
        mech.pParameter = junk.as_mut_ptr().cast();
        mech.ulParameterLen = 8;
        // SAFETY: as above; the parameter points at 8 live bytes.
        let rv = unsafe { f.C_MessageEncryptInit.unwrap()(s.handle(), &mut mech, key.handle()) };
        assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
    });
}

#[test]
fn begin_next_buffers_until_the_last_part() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-parts"), &[]);
        let s = &t.session;
        let pt: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let aad = b"multi-part aad";
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(
            &mut iv,
            0.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag,
        )
        .unwrap();
        s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
            .unwrap();
        s.encrypt_message_begin(MessageParam::AesGcmMessage(p), aad)
            .unwrap();
        // A whole message while one is begun: refused.
        expect_rv(
            s.encrypt_message(&MessageParam::AesGcmMessage(p), b"", b"x"),
            RvError::OperationActive,
        );
        let mut ct = Vec::new();
        let parts: Vec<&[u8]> = pt.chunks(300).collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let out = s
                .encrypt_message_next(MessageParam::AesGcmMessage(p), part, last)
                .unwrap();
            if !last {
                assert!(out.is_empty(), "nothing before the last part");
            }
            ct.extend(out);
        }
        s.message_encrypt_final().unwrap();
        assert_eq!(ct.len(), pt.len());
        assert_ne!(iv, [0u8; 12], "IV written at the last part");
        assert_ne!(tag, [0u8; 16]);
        assert_eq!(decrypt_message(s, key, &iv, &tag, aad, &ct).unwrap(), pt);

        // Multi-part decryption: no plaintext before the tag verified.
        let mut div = iv;
        let mut dtag = tag;
        let dp =
            GcmMessageParams::new(&mut div, 0.into(), GeneratorFunction::NoGenerate, &mut dtag)
                .unwrap();
        s.message_decrypt_init(&Mechanism::AesGcmMessage(dp), key)
            .unwrap();
        s.decrypt_message_begin(MessageParam::AesGcmMessage(dp), aad)
            .unwrap();
        let mut back = Vec::new();
        let cparts: Vec<&[u8]> = ct.chunks(256).collect();
        for (i, part) in cparts.iter().enumerate() {
            let last = i + 1 == cparts.len();
            let out = s
                .decrypt_message_next(MessageParam::AesGcmMessage(dp), part, last)
                .unwrap();
            if !last {
                assert!(out.is_empty(), "no plaintext before the tag");
            }
            back.extend(out);
        }
        assert_eq!(back, pt);
        // A wrong tag at the last part: CKR_ENCRYPTED_DATA_INVALID and no plaintext; the
        // message is over (Next needs a new Begin), the process is not.
        let mut bad_iv = iv;
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        let bp = GcmMessageParams::new(
            &mut bad_iv,
            0.into(),
            GeneratorFunction::NoGenerate,
            &mut bad_tag,
        )
        .unwrap();
        s.decrypt_message_begin(MessageParam::AesGcmMessage(bp), aad)
            .unwrap();
        assert!(s
            .decrypt_message_next(MessageParam::AesGcmMessage(bp), &ct[..500], false)
            .unwrap()
            .is_empty());
        expect_rv(
            s.decrypt_message_next(MessageParam::AesGcmMessage(bp), &ct[500..], true),
            RvError::EncryptedDataInvalid,
        );
        expect_rv(
            s.decrypt_message_next(MessageParam::AesGcmMessage(bp), &ct[500..], true),
            RvError::OperationNotInitialized,
        );
        s.message_decrypt_final().unwrap();
    });
}

#[test]
fn two_call_convention_on_the_message_output() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("msg-buffers"), &[]);
        let f = support::module_fixture::raw::table();
        let h = t.raw_session();
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let mut params = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_GENERATE_RANDOM,
            pTag: tag.as_mut_ptr(),
            ulTagBits: 128,
        };
        let plen = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
        let pparams = (&mut params as *mut CK_GCM_MESSAGE_PARAMS).cast();
        let mut pt = *b"two-call plaintext";
        // SAFETY (all calls below): every pointer is to a live local of the stated length.
        unsafe {
            assert_eq!(
                f.C_MessageEncryptInit.unwrap()(h, &mut mech, key.handle()),
                CKR_OK
            );
            let mut len: CK_ULONG = 0;
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                pparams,
                plen,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                std::ptr::null_mut(),
                &mut len,
            );
            assert_eq!((rv, len), (CKR_OK, pt.len() as CK_ULONG), "length query");
            assert_eq!(iv, [0; 12], "a length query generates nothing");
            let mut small = [0u8; 4];
            let mut len: CK_ULONG = small.len() as _;
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                pparams,
                plen,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                small.as_mut_ptr(),
                &mut len,
            );
            assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, pt.len() as CK_ULONG));
            let mut out = vec![0u8; pt.len()];
            let mut len: CK_ULONG = out.len() as _;
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                pparams,
                plen,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                out.as_mut_ptr(),
                &mut len,
            );
            assert_eq!((rv, len), (CKR_OK, pt.len() as CK_ULONG));
            assert_ne!(iv, [0; 12]);
            // Bad parameter blocks: wrong length, NULL.
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                pparams,
                plen - 8,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                out.as_mut_ptr(),
                &mut len,
            );
            assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                std::ptr::null_mut(),
                plen,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                out.as_mut_ptr(),
                &mut len,
            );
            assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
            // NULL length pointer.
            let rv = f.C_EncryptMessage.unwrap()(
                h,
                pparams,
                plen,
                std::ptr::null_mut(),
                0,
                pt.as_mut_ptr(),
                pt.len() as _,
                out.as_mut_ptr(),
                std::ptr::null_mut(),
            );
            assert_eq!(rv, CKR_ARGUMENTS_BAD);
            assert_eq!(f.C_MessageEncryptFinal.unwrap()(h), CKR_OK);
        }
    });
}

#[test]
fn mechanism_info_advertises_the_message_functions() {
    let fx = fixture();
    for slot in fx.slots() {
        let info = fx
            .ctx
            .get_mechanism_info(slot, MechanismType::AES_GCM)
            .unwrap();
        assert!(info.message_encrypt() && info.message_decrypt());
        assert!(info.encrypt() && info.decrypt());
    }
}

#[test]
fn generated_iv_ciphertext_decrypts_with_softhsm2_directly_and_back() {
    let fx = fixture();
    let slot = fx.slots()[0];
    let s = fx.ctx.open_rw_session(slot).unwrap();
    login(&s);
    let label = "msg-interop-softhsm";
    let key = s
        .generate_key(&Mechanism::AesKeyGen, &secure_template(label))
        .unwrap();
    let pt = b"interop through SoftHSM2";
    let (ct, iv, tag) = encrypt_message(
        &s,
        key,
        GeneratorFunction::GenerateRandom,
        &[0; 12],
        b"a",
        pt,
    )
    .unwrap();
    let direct = fx.direct_session();
    let dkey = direct
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()[0];
    let mut input = ct.clone();
    input.extend_from_slice(&tag);
    let mut div = iv.clone();
    let params = GcmParams::new(&mut div, b"a", 128.into()).unwrap();
    assert_eq!(
        direct
            .decrypt(&Mechanism::AesGcm(params), dkey, &input)
            .unwrap(),
        pt
    );
    // And the other way: SoftHSM2 encrypts, the module's message API decrypts.
    let theirs = classic_encrypt(&direct, dkey, &[5u8; 12], b"b", pt);
    let (body, t) = theirs.split_at(pt.len());
    let tag: [u8; 16] = t.try_into().unwrap();
    assert_eq!(
        decrypt_message(&s, key, &[5u8; 12], &tag, b"b", body).unwrap(),
        pt
    );
}

/// Every message is an audit record (op=encrypt / op=decrypt with the key's label), failed
/// ones too, and neither the audit trail nor the log holds the plaintext or the AAD.
#[test]
fn every_message_is_audited_and_nothing_secret_is_logged() {
    let marker_pt = b"MSG-PLAINTEXT-MARKER-k3";
    let marker_aad = b"MSG-AAD-MARKER-p9";
    for_each_token(|t| {
        let label = t.label("msg-audit");
        let key = t.keygen(&label, &[]);
        let (ct, iv, tag) = encrypt_message(
            &t.session,
            key,
            GeneratorFunction::GenerateRandom,
            &[0; 12],
            marker_aad,
            marker_pt,
        )
        .unwrap();
        assert_eq!(
            decrypt_message(&t.session, key, &iv, &tag, marker_aad, &ct).unwrap(),
            marker_pt
        );
        let mut bad = tag;
        bad[3] ^= 0x40;
        expect_rv(
            decrypt_message(&t.session, key, &iv, &bad, marker_aad, &ct),
            RvError::EncryptedDataInvalid,
        );
    });
    let fx = fixture();
    let audit = std::fs::read_to_string(fx.dir.path().join("audit.log")).expect("audit.log");
    for name in SLOT_NAMES {
        let label = format!("msg-audit-{name}");
        let count = |op: &str| {
            audit
                .lines()
                .filter(|l| l.contains(op) && l.contains(&label))
                .count()
        };
        assert_eq!(count("op=encrypt"), 1, "{label}:\n{audit}");
        assert_eq!(
            count("op=decrypt"),
            2,
            "{label}: the failed one too:\n{audit}"
        );
    }
    let log = std::fs::read_to_string(fx.dir.path().join("module.log")).unwrap_or_default();
    for text in [&audit, &log] {
        for marker in [&marker_pt[..], &marker_aad[..]] {
            assert!(!text.contains(std::str::from_utf8(marker).unwrap()));
        }
    }
}
