//! AES-GCM through the built module, on both slots: round trips (single- and multi-part, 12-
//! and 16-byte IVs, AAD up to 64 KiB), authentication failures, parameter checks, the
//! two-call length convention, and many threads at once.
//!
//! Where slot 0's HSM generates encryption IVs ([`EncryptIv::Generated`]), encryptions there
//! use the zero-IV convention and decrypt under the IV written back; what is specific to caller
//! IVs is checked in its generating-mode form (a caller IV is refused, 16-byte IVs are checked
//! on decryption of SoftHSM2's ciphertext, and "same IV, same bytes" against SoftHSM2 used
//! directly under the generated IV).

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use pkcs11_sys::*;
use std::ptr;
use support::module_fixture::raw::{self, gcm_mechanism, gcm_params};
use support::module_fixture::*;

/// `C_Encrypt`; returns the output and `pIv` afterwards (the IV written back where the slot's
/// HSM generated it).
fn encrypt(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], pt: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut iv = iv.to_vec();
    let ct = s.encrypt(&gcm(&mut iv, aad), key, pt).expect("C_Encrypt");
    (ct, iv)
}

fn decrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    ct: &[u8],
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = iv.to_vec();
    s.decrypt(&gcm(&mut iv, aad), key, ct)
}

/// Multi-part encryption in `chunk`-sized parts; Update returns nothing, Final everything.
/// Returns the output and `pIv` afterwards, as [`encrypt`].
fn encrypt_parts(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    pt: &[u8],
    chunk: usize,
) -> (Vec<u8>, Vec<u8>) {
    let mut iv = iv.to_vec();
    s.encrypt_init(&gcm(&mut iv, aad), key)
        .expect("C_EncryptInit");
    let mut out = Vec::new();
    for part in pt.chunks(chunk.max(1)) {
        out.extend(s.encrypt_update(part).expect("C_EncryptUpdate"));
    }
    out.extend(s.encrypt_final().expect("C_EncryptFinal"));
    (out, iv)
}

/// Multi-part decryption; asserts that no Update returns plaintext.
fn decrypt_parts(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    ct: &[u8],
    chunk: usize,
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = iv.to_vec();
    s.decrypt_init(&gcm(&mut iv, aad), key)?;
    for part in ct.chunks(chunk.max(1)) {
        let out = s.decrypt_update(part)?;
        assert!(
            out.is_empty(),
            "C_DecryptUpdate released {} bytes of unverified plaintext",
            out.len()
        );
    }
    s.decrypt_final()
}

#[test]
fn gcm_round_trips_single_and_multi_part() {
    for_each_token(|t| {
        let label = t.label("gcm-rt");
        let key = t.keygen(&label, &[]);
        let s = &t.session;
        let generated = t.generates_iv();
        // Where the slot's HSM generates IVs: the same key used directly (SoftHSM2 under the
        // emulated vendors), to check the module's output against.
        let direct = generated.then(|| {
            let d = t.fx.direct_session();
            let k = find_label(&d, &label);
            (d, k)
        });
        for iv_len in [12usize, 16] {
            let iv = test_bytes(iv_len, iv_len as u64);
            if generated {
                // A caller IV is refused for encryption; the zero-IV convention is 12 bytes.
                let mut caller = iv.clone();
                expect_rv(
                    s.encrypt(&gcm(&mut caller, b""), key, b"x"),
                    RvError::MechanismParamInvalid,
                );
                let mut zeros = vec![0u8; iv_len];
                if iv_len != 12 {
                    expect_rv(
                        s.encrypt(&gcm(&mut zeros, b""), key, b"x"),
                        RvError::MechanismParamInvalid,
                    );
                }
            }
            for aad_len in [0usize, 1, 20, 4096, 64 * 1024] {
                let aad = test_bytes(aad_len, 7 + aad_len as u64);
                for pt_len in [0usize, 1, 15, 16, 17, 1000] {
                    let pt = test_bytes(pt_len, pt_len as u64);
                    let what = format!("iv {iv_len}, aad {aad_len}, pt {pt_len}");
                    if let (Some((d, dk)), 16) = (&direct, iv_len) {
                        // Decryption takes a caller's 16-byte IV on every slot: SoftHSM2
                        // encrypts, the slot decrypts, single- and multi-part.
                        let mut div = iv.clone();
                        let ct = d.encrypt(&gcm(&mut div, &aad), *dk, &pt).unwrap();
                        assert_eq!(decrypt(s, key, &iv, &aad, &ct).unwrap(), pt, "{what}");
                        let back = decrypt_parts(s, key, &iv, &aad, &ct, 5).unwrap();
                        assert_eq!(back, pt, "{what}: multi-part decrypt");
                        continue;
                    }
                    let iv_in = if generated { vec![0u8; 12] } else { iv.clone() };
                    let (ct, ct_iv) = encrypt(s, key, &iv_in, &aad, &pt);
                    if generated {
                        assert_ne!(ct_iv, iv_in, "{what}: generated IV written back");
                    } else {
                        assert_eq!(ct_iv, iv, "{what}: the caller's IV is left as given");
                    }
                    assert_eq!(ct.len(), pt_len + 16, "{what}: ciphertext || 16-byte tag");
                    // A short ciphertext equals its plaintext by chance (1 in 256 for one
                    // byte, with a fresh key per run): only a longer one says "not encrypted".
                    if pt_len >= 8 {
                        assert_ne!(&ct[..pt_len], &pt[..], "{what}: not encrypted");
                    }
                    assert_eq!(decrypt(s, key, &ct_iv, &aad, &ct).unwrap(), pt, "{what}");
                    let (ct_parts, parts_iv) = encrypt_parts(s, key, &iv_in, &aad, &pt, 7);
                    match &direct {
                        // GCM is deterministic for one (key, IV, AAD): multi-part gives the
                        // same bytes, and each form decrypts the other.
                        None => assert_eq!(ct_parts, ct, "{what}: multi-part ciphertext"),
                        // A fresh IV per encryption: the multi-part output decrypts under its
                        // own IV, and is the bytes SoftHSM2 used directly makes under that IV.
                        Some((d, dk)) => {
                            assert!(
                                parts_iv != iv_in && parts_iv != ct_iv,
                                "{what}: a fresh generated IV written back: {parts_iv:?}"
                            );
                            let back = decrypt(s, key, &parts_iv, &aad, &ct_parts).unwrap();
                            assert_eq!(back, pt, "{what}: multi-part ciphertext");
                            let mut div = parts_iv.clone();
                            let theirs = d.encrypt(&gcm(&mut div, &aad), *dk, &pt).unwrap();
                            assert_eq!(theirs, ct_parts, "{what}: same bytes as SoftHSM2");
                        }
                    }
                    let back = decrypt_parts(s, key, &ct_iv, &aad, &ct, 5).unwrap();
                    assert_eq!(back, pt, "{what}: multi-part decrypt");
                }
            }
        }
    });
}

#[test]
fn gcm_authentication_failures_are_encrypted_data_invalid() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("gcm-auth"), &[]);
        let s = &t.session;
        let aad = b"header".to_vec();
        let pt = test_bytes(100, 1);
        let (ct, iv) = encrypt(s, key, &t.encrypt_iv(3), &aad, &pt);
        t.iv_mode().check_after(3, &iv);
        let mut wrong_iv = iv.clone();
        wrong_iv[0] ^= 1;

        let mut bad_tag = ct.clone();
        *bad_tag.last_mut().unwrap() ^= 1;
        let mut bad_body = ct.clone();
        bad_body[0] ^= 0x80;
        // (what, IV, AAD, ciphertext || tag)
        type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8]);
        let cases: [Case; 5] = [
            ("wrong AAD", &iv, b"headex", &ct),
            ("missing AAD", &iv, b"", &ct),
            ("wrong IV", &wrong_iv, &aad, &ct),
            ("wrong tag", &iv, &aad, &bad_tag),
            ("modified ciphertext", &iv, &aad, &bad_body),
        ];
        for (what, iv, aad, data) in cases {
            match decrypt(s, key, iv, aad, data) {
                Ok(_) => panic!("{what}: decrypted"),
                Err(e) => assert_eq!(rv(e), RvError::EncryptedDataInvalid, "{what}"),
            }
            // Multi-part: Update hands out nothing, Final fails the same way.
            match decrypt_parts(s, key, iv, aad, data, 16) {
                Ok(_) => panic!("{what} (multi-part): decrypted"),
                Err(e) => assert_eq!(rv(e), RvError::EncryptedDataInvalid, "{what}, multi"),
            }
        }
        // A failure ends the operation; the session stays usable.
        assert_eq!(decrypt(s, key, &iv, &aad, &ct).unwrap(), pt);
        // Shorter than a tag.
        expect_rv(
            decrypt(s, key, &iv, &aad, &ct[..15]),
            RvError::EncryptedDataLenRange,
        );
    });
}

#[test]
fn gcm_parameters_outside_the_profile_are_refused() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("gcm-params"), &[]);
        let s = &t.session;
        let aad = [0u8; 4];
        let too_much_aad = vec![0u8; 64 * 1024 + 1];
        let cases: Vec<(&str, Vec<u8>, &[u8], u64)> = vec![
            ("empty IV", vec![], &aad, 128),
            ("8-byte IV", vec![1; 8], &aad, 128),
            ("13-byte IV", vec![1; 13], &aad, 128),
            ("96-bit tag", vec![1; 12], &aad, 96),
            ("64-bit tag", vec![1; 12], &aad, 64),
            ("AAD over 64 KiB", vec![1; 12], &too_much_aad, 128),
        ];
        for (what, mut iv, aad, tag_bits) in cases {
            let mech =
                Mechanism::AesGcm(GcmParams::new(&mut iv, aad, tag_bits.into()).expect("params"));
            expect_rv_named(
                s.encrypt(&mech, key, b"x"),
                RvError::MechanismParamInvalid,
                what,
            );
            expect_rv_named(
                s.decrypt(&mech, key, &[0u8; 32]),
                RvError::MechanismParamInvalid,
                what,
            );
        }
        // A mechanism other than GCM.
        let cbc = Mechanism::AesCbcPad([0u8; 16]);
        expect_rv(s.encrypt(&cbc, key, b"x"), RvError::MechanismInvalid);
        expect_rv(s.decrypt(&cbc, key, &[0u8; 16]), RvError::MechanismInvalid);
        expect_rv(
            s.encrypt(&Mechanism::AesEcb, key, &[0u8; 16]),
            RvError::MechanismInvalid,
        );

        // Raw: a GCM mechanism whose parameter length is not sizeof(CK_GCM_PARAMS), and
        // one with a NULL parameter.
        let f = raw::table();
        let (mut iv, mut aad) = ([1u8; 12], [0u8; 4]);
        let mut params = gcm_params(&mut iv, &mut aad, 128);
        for (what, len, null) in [
            ("short param", 7, false),
            ("long param", 100, false),
            ("zero param", 0, false),
            ("NULL param", 40, true),
        ] {
            let mut mech = gcm_mechanism(&mut params);
            mech.ulParameterLen = len;
            if null {
                mech.pParameter = ptr::null_mut();
            }
            // SAFETY: `mech` and the buffers it points into are live locals.
            let rv = unsafe { f.C_EncryptInit.unwrap()(t.raw_session(), &mut mech, key.handle()) };
            assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID, "{what}");
        }
        // Field-level problems of a well-sized CK_GCM_PARAMS.
        let h = t.raw_session();
        let k = key.handle();
        type Tweak = fn(&mut CK_GCM_PARAMS);
        let tweaks: [(&str, Tweak, CK_RV); 6] = [
            (
                "ulIvBits 64 for a 12-byte IV",
                |p| p.ulIvBits = 64,
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                "NULL pIv",
                |p| p.pIv = ptr::null_mut(),
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                "NULL pAAD with a length",
                |p| p.pAAD = ptr::null_mut(),
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                "ulTagBits 0",
                |p| p.ulTagBits = 0,
                CKR_MECHANISM_PARAM_INVALID,
            ),
            // Accepted: ulIvBits 0 (cryptoki crates before 0.7 sent it), NULL pAAD of length 0.
            ("ulIvBits 0", |p| p.ulIvBits = 0, CKR_OK),
            (
                "NULL pAAD, length 0",
                |p| {
                    p.pAAD = ptr::null_mut();
                    p.ulAADLen = 0
                },
                CKR_OK,
            ),
        ];
        for (what, tweak, want) in tweaks {
            let (mut iv, mut aad) = (t.encrypt_iv(1), [0u8; 4]);
            let mut params = gcm_params(&mut iv, &mut aad, 128);
            tweak(&mut params);
            let mut mech = gcm_mechanism(&mut params);
            let mut data = [7u8; 5];
            let mut out = [0u8; 64];
            let mut len: CK_ULONG = 64;
            // SAFETY: `mech` and the buffers it points into are live locals.
            unsafe {
                let rv = f.C_EncryptInit.unwrap()(h, &mut mech, k);
                assert_eq!(rv, want, "{what}");
                if rv == CKR_OK {
                    let rv =
                        f.C_Encrypt.unwrap()(h, data.as_mut_ptr(), 5, out.as_mut_ptr(), &mut len);
                    assert_eq!((rv, len), (CKR_OK, 21), "{what}");
                    t.iv_mode().check_after(1, &iv);
                }
            }
        }
    });
}

#[track_caller]
fn expect_rv_named<T: std::fmt::Debug>(
    r: cryptoki::error::Result<T>,
    expected: RvError,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {expected:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(rv(e), expected, "{what}"),
    }
}

/// NULL output = length query, short buffer = CKR_BUFFER_TOO_SMALL with the needed length;
/// both leave the operation active, and a roomy buffer then completes it.
#[test]
fn two_call_length_convention_for_encrypt_and_decrypt() {
    let f = raw::table();
    for_each_token(|t| {
        let key_object = t.keygen(&t.label("gcm-len"), &[]);
        let key = key_object.handle();
        let h = t.raw_session();
        let mode = t.iv_mode();
        let (mut iv, mut aad) = (mode.iv(9), *b"aad");
        let mut params = gcm_params(&mut iv, &mut aad, 128);
        let mut mech = gcm_mechanism(&mut params);
        let mut pt = test_bytes(40, 2);
        let n = pt.len() as CK_ULONG;
        let mut ct = vec![0u8; 128];
        let mut out = vec![0u8; 128];

        // SAFETY: all pointers are live locals; lengths match the buffers.
        unsafe {
            // C_Encrypt
            assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut len: CK_ULONG = 0;
            let rv = f.C_Encrypt.unwrap()(h, pt.as_mut_ptr(), n, ptr::null_mut(), &mut len);
            assert_eq!((rv, len), (CKR_OK, n + 16), "C_Encrypt length query");
            let mut short: CK_ULONG = n + 15;
            let rv = f.C_Encrypt.unwrap()(h, pt.as_mut_ptr(), n, ct.as_mut_ptr(), &mut short);
            assert_eq!(
                (rv, short),
                (CKR_BUFFER_TOO_SMALL, n + 16),
                "C_Encrypt short"
            );
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_Encrypt.unwrap()(h, pt.as_mut_ptr(), n, ct.as_mut_ptr(), &mut roomy);
            assert_eq!((rv, roomy), (CKR_OK, n + 16), "C_Encrypt");
            mode.check_after(9, &iv);
            // The IV to decrypt `ct` with: the caller's, or the one written back.
            let ct_iv = iv;
            let ct_len = roomy;
            let rv = f.C_Encrypt.unwrap()(h, pt.as_mut_ptr(), n, ct.as_mut_ptr(), &mut roomy);
            assert_eq!(rv, CKR_OPERATION_NOT_INITIALIZED, "operation ended");

            // C_Decrypt
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut len: CK_ULONG = 0;
            let rv = f.C_Decrypt.unwrap()(h, ct.as_mut_ptr(), ct_len, ptr::null_mut(), &mut len);
            assert_eq!(rv, CKR_OK, "C_Decrypt length query");
            assert!(len >= n, "C_Decrypt length query {len} < {n}");
            let mut short: CK_ULONG = n - 1;
            let rv = f.C_Decrypt.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut short);
            assert_eq!(rv, CKR_BUFFER_TOO_SMALL, "C_Decrypt short");
            assert!(short >= n, "needed length written: {short}");
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_Decrypt.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut roomy);
            assert_eq!((rv, roomy), (CKR_OK, n), "C_Decrypt");
            assert_eq!(&out[..n as usize], &pt[..]);

            // C_EncryptFinal (a new encryption: the zero-IV convention again where the HSM
            // generates IVs).
            std::slice::from_raw_parts_mut(params.pIv, 12).copy_from_slice(&mode.iv(9));
            assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut upd: CK_ULONG = 128;
            let rv = f.C_EncryptUpdate.unwrap()(h, pt.as_mut_ptr(), n, out.as_mut_ptr(), &mut upd);
            assert_eq!(
                (rv, upd),
                (CKR_OK, 0),
                "C_EncryptUpdate returns nothing yet"
            );
            let mut len: CK_ULONG = 0;
            let rv = f.C_EncryptFinal.unwrap()(h, ptr::null_mut(), &mut len);
            assert_eq!((rv, len), (CKR_OK, n + 16), "C_EncryptFinal length query");
            let mut short: CK_ULONG = 16;
            let rv = f.C_EncryptFinal.unwrap()(h, out.as_mut_ptr(), &mut short);
            assert_eq!(
                (rv, short),
                (CKR_BUFFER_TOO_SMALL, n + 16),
                "C_EncryptFinal short"
            );
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_EncryptFinal.unwrap()(h, out.as_mut_ptr(), &mut roomy);
            assert_eq!((rv, roomy), (CKR_OK, n + 16), "C_EncryptFinal");
            mode.check_after(9, &iv);
            if mode.generated() {
                // A fresh IV: the output decrypts under it.
                assert_ne!(iv, ct_iv, "a fresh generated IV");
                let mut final_iv = iv;
                let back = t
                    .session
                    .decrypt(
                        &gcm(&mut final_iv, b"aad"),
                        key_object,
                        &out[..n as usize + 16],
                    )
                    .unwrap();
                assert_eq!(back, pt);
            } else {
                // Same key, same caller IV: the bytes of C_Encrypt.
                assert_eq!(&out[..roomy as usize], &ct[..ct_len as usize]);
            }
            // Back to the IV of `ct` for the decryptions below.
            std::slice::from_raw_parts_mut(params.pIv, 12).copy_from_slice(&ct_iv);

            // C_DecryptFinal
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            let mut upd: CK_ULONG = 128;
            let rv =
                f.C_DecryptUpdate.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut upd);
            assert_eq!((rv, upd), (CKR_OK, 0), "C_DecryptUpdate returns nothing");
            let mut len: CK_ULONG = 0;
            let rv = f.C_DecryptFinal.unwrap()(h, ptr::null_mut(), &mut len);
            assert_eq!((rv, len), (CKR_OK, n), "C_DecryptFinal length query");
            let mut short: CK_ULONG = 1;
            let rv = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut short);
            assert_eq!(
                (rv, short),
                (CKR_BUFFER_TOO_SMALL, n),
                "C_DecryptFinal short"
            );
            out.fill(0);
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut roomy);
            assert_eq!((rv, roomy), (CKR_OK, n), "C_DecryptFinal");
            assert_eq!(&out[..n as usize], &pt[..]);

            // Multi-part decrypt with a wrong tag: nothing but CKR_ENCRYPTED_DATA_INVALID,
            // and the output buffer untouched.
            ct[ct_len as usize - 1] ^= 1;
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            out.fill(0xAA);
            let mut upd: CK_ULONG = 128;
            let rv =
                f.C_DecryptUpdate.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut upd);
            assert_eq!((rv, upd), (CKR_OK, 0));
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut roomy);
            assert_eq!(rv, CKR_ENCRYPTED_DATA_INVALID, "tampered multi-part");
            assert!(out.iter().all(|b| *b == 0xAA), "no plaintext written");

            // Single-part decrypt with a wrong tag into a buffer with room for the whole input
            // (the module lets the backend write there directly): the failure wipes the room
            // it lent, so nothing the backend may have written survives; past it, untouched.
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
            out.fill(0xAA);
            let mut roomy: CK_ULONG = 128;
            let rv = f.C_Decrypt.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut roomy);
            assert_eq!(rv, CKR_ENCRYPTED_DATA_INVALID, "tampered single-part");
            let lent = ct_len as usize;
            assert!(out[..lent].iter().all(|b| *b == 0), "lent room wiped");
            assert!(
                out[lent..].iter().all(|b| *b == 0xAA),
                "nothing past the room"
            );
        }
    });
}

/// 8 threads x 500 encrypt+decrypt round trips of random sizes, each on its own session.
#[test]
fn eight_threads_of_round_trips() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("gcm-threads"), &[]);
        let generated = t.generates_iv();
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let session = t.open();
                scope.spawn(move || {
                    for i in 0..500u64 {
                        let seed = thread * 1000 + i;
                        let len = (test_bytes(2, seed)[0] as usize) * 8 + (i as usize % 7);
                        let pt = test_bytes(len, seed);
                        // A caller IV, or the zero-IV convention where the HSM generates it.
                        let iv_in = if generated {
                            vec![0u8; 12]
                        } else {
                            test_bytes(12, seed ^ 0xFFFF)
                        };
                        let aad = seed.to_be_bytes();
                        let (ct, mut iv) = encrypt(&session, key, &iv_in, &aad, &pt);
                        if generated {
                            assert_ne!(iv, iv_in, "thread {thread} op {i}: IV written back");
                        }
                        assert_eq!(ct.len(), len + 16);
                        let back = decrypt(&session, key, &iv, &aad, &ct)
                            .unwrap_or_else(|e| panic!("thread {thread} op {i}: {e}"));
                        assert_eq!(back, pt, "thread {thread} op {i}");
                        iv[0] ^= 1;
                        expect_rv(
                            decrypt(&session, key, &iv, &aad, &ct),
                            RvError::EncryptedDataInvalid,
                        );
                    }
                });
            }
        });
    });
}
