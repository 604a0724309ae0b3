//! Each row of tests/vendor-emu/README.md's table, proved through the built library loaded by
//! cryptoki over a throwaway SoftHSM2 token, with SoftHSM2 used directly as the reference.

mod common;

use common::*;
use cryptoki::error::RvError;
use cryptoki::session::Session;
use pkcs11_sys::*;

const AAD: &[u8] = b"emu aad";
const PLAINTEXT: &[u8] = b"forty-two bytes of plaintext for the tests";

fn direct_session() -> Session {
    session(&fixture().direct)
}

fn mode_session(mode: &str) -> Session {
    session(fixture().mode(mode))
}

/// Decrypt `ct` (ciphertext ‖ tag) with SoftHSM2 used directly.
fn direct_decrypt(iv: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    direct_session()
        .decrypt(&gcm(&mut iv, AAD), fixture().key, ct)
        .expect("SoftHSM2 direct decrypt")
}

/// Encrypt with SoftHSM2 used directly and a caller IV.
fn direct_encrypt(iv: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    direct_session()
        .encrypt(&gcm(&mut iv, AAD), fixture().key, PLAINTEXT)
        .expect("SoftHSM2 direct encrypt")
}

#[test]
fn each_mode_reports_its_vendor_manufacturer() {
    let fx = fixture();
    for (mode, manufacturer) in MODES {
        let ctx = fx.mode(mode);
        let info = ctx.get_library_info().expect("C_GetInfo");
        assert_eq!(info.manufacturer_id(), manufacturer, "{mode}: CK_INFO");
        assert!(
            info.library_description().contains(mode),
            "{mode}: description {:?}",
            info.library_description()
        );
        let s = mode_session(mode);
        let token = ctx.get_token_info(s.get_session_info().unwrap().slot_id());
        assert_eq!(
            token.expect("C_GetTokenInfo").manufacturer_id(),
            manufacturer,
            "{mode}: CK_TOKEN_INFO"
        );
    }
    let direct = fx.direct.get_library_info().unwrap();
    assert_eq!(
        direct.manufacturer_id(),
        "SoftHSM",
        "SoftHSM2 itself is unchanged"
    );
}

#[test]
fn luna_takes_the_callers_iv_exactly_like_softhsm2() {
    let iv = [0x5a; 12];
    let mut iv_copy = iv;
    let s = mode_session("luna");
    let ct = s
        .encrypt(&gcm(&mut iv_copy, AAD), fixture().key, PLAINTEXT)
        .expect("luna encrypt with a caller IV");
    assert_eq!(ct, direct_encrypt(&iv), "same key, IV and AAD: same output");
    assert_eq!(direct_decrypt(&iv, &ct), PLAINTEXT);
}

#[test]
fn luna_fips_refuses_any_caller_iv() {
    let s = mode_session("luna-fips");
    for iv in [[7u8; 12], [0u8; 12]] {
        let mut iv = iv;
        let r = s.encrypt(&gcm(&mut iv, AAD), fixture().key, PLAINTEXT);
        assert_eq!(rv_of(r), RvError::MechanismParamInvalid, "IV {iv:?}");
    }
}

#[test]
fn luna_fips_appends_the_generated_iv_after_the_tag() {
    let s = mode_session("luna-fips");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = s
            .encrypt(&gcm(&mut [], AAD), fixture().key, PLAINTEXT)
            .expect("luna-fips encrypt without an IV");
        assert_eq!(
            out.len(),
            PLAINTEXT.len() + 16 + 12,
            "ciphertext ‖ tag ‖ IV"
        );
        let (ct, iv) = out.split_at(out.len() - 12);
        assert_eq!(direct_decrypt(iv, ct), PLAINTEXT, "SoftHSM2 decrypts it");
        // Decryption through the emulator takes the caller's IV.
        let mut iv_copy = iv.to_vec();
        let pt = s
            .decrypt(&gcm(&mut iv_copy, AAD), fixture().key, ct)
            .expect("luna-fips decrypt with the caller's IV");
        assert_eq!(pt, PLAINTEXT);
        seen.push(iv.to_vec());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "a fresh IV per encryption");
}

/// The emulator's function table, through the same loaded copy cryptoki uses.
fn raw_table(mode: &str) -> &'static CK_FUNCTION_LIST {
    let path = std::ffi::CString::new(fixture().mode_path(mode).to_str().unwrap()).unwrap();
    // SAFETY: a valid path string; the copy is already loaded, so this returns its handle.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!h.is_null());
    // SAFETY: live handle, NUL-terminated name.
    let sym = unsafe { libc::dlsym(h, c"C_GetFunctionList".as_ptr()) };
    assert!(!sym.is_null());
    type Get = unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV;
    // SAFETY: the symbol is C_GetFunctionList, whose signature PKCS#11 fixes.
    let get: Get = unsafe { std::mem::transmute::<*mut libc::c_void, Get>(sym) };
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { get(&mut list) }, CKR_OK);
    // SAFETY: the library stays loaded (the fixture holds it) and the table is static.
    unsafe { &*list }
}

/// `C_EncryptInit(CKM_AES_GCM)` with no IV on a raw session.
fn raw_gcm_init(f: &CK_FUNCTION_LIST, session: CK_SESSION_HANDLE) {
    let mut params = CK_GCM_PARAMS {
        pIv: std::ptr::null_mut(),
        ulIvLen: 0,
        ulIvBits: 96,
        pAAD: AAD.as_ptr() as *mut _,
        ulAADLen: AAD.len() as _,
        ulTagBits: 128,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: &mut params as *mut _ as *mut _,
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as _,
    };
    // SAFETY: the mechanism and its buffers outlive the call.
    let rv = unsafe { f.C_EncryptInit.unwrap()(session, &mut mech, fixture().key.handle()) };
    assert_eq!(rv, CKR_OK);
}

#[test]
fn luna_fips_keeps_the_two_call_length_convention() {
    let f = raw_table("luna-fips");
    let s = mode_session("luna-fips");
    let h = s.handle();
    raw_gcm_init(f, h);
    let data = PLAINTEXT.as_ptr() as *mut u8;
    let data_len = PLAINTEXT.len() as CK_ULONG;
    let needed = (PLAINTEXT.len() + 16 + 12) as CK_ULONG;
    let mut len: CK_ULONG = 0;
    // SAFETY: NULL output asks for the length; `len` is a valid out-pointer.
    let rv = unsafe { f.C_Encrypt.unwrap()(h, data, data_len, std::ptr::null_mut(), &mut len) };
    assert_eq!((rv, len), (CKR_OK, needed), "length query counts the IV");
    let mut out = vec![0u8; needed as usize];
    len = needed - 1;
    // SAFETY: `out` has `len` (< needed) writable bytes.
    let rv = unsafe { f.C_Encrypt.unwrap()(h, data, data_len, out.as_mut_ptr(), &mut len) };
    assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, needed));
    len = needed;
    // SAFETY: `out` has `len` writable bytes; the operation is still active.
    let rv = unsafe { f.C_Encrypt.unwrap()(h, data, data_len, out.as_mut_ptr(), &mut len) };
    assert_eq!((rv, len), (CKR_OK, needed));
    let (ct, iv) = out.split_at(out.len() - 12);
    assert_eq!(direct_decrypt(iv, ct), PLAINTEXT);

    // Multi-part: the IV comes after the final part.
    raw_gcm_init(f, h);
    let mut part1 = vec![0u8; PLAINTEXT.len() + 16];
    let mut len1 = part1.len() as CK_ULONG;
    // SAFETY: `part1` has `len1` writable bytes.
    let rv =
        unsafe { f.C_EncryptUpdate.unwrap()(h, data, data_len, part1.as_mut_ptr(), &mut len1) };
    assert_eq!(rv, CKR_OK);
    part1.truncate(len1 as usize);
    let mut final_len: CK_ULONG = 0;
    // SAFETY: NULL output asks for the length.
    let rv = unsafe { f.C_EncryptFinal.unwrap()(h, std::ptr::null_mut(), &mut final_len) };
    assert_eq!(rv, CKR_OK);
    let mut part2 = vec![0u8; final_len as usize];
    // SAFETY: `part2` has `final_len` writable bytes.
    let rv = unsafe { f.C_EncryptFinal.unwrap()(h, part2.as_mut_ptr(), &mut final_len) };
    assert_eq!(rv, CKR_OK);
    part2.truncate(final_len as usize);
    let whole = [part1, part2].concat();
    assert_eq!(whole.len(), PLAINTEXT.len() + 16 + 12);
    let (ct, iv) = whole.split_at(whole.len() - 12);
    assert_eq!(direct_decrypt(iv, ct), PLAINTEXT);
}

#[test]
fn cloudhsm_and_nshield_write_the_generated_iv_into_piv() {
    for mode in ["cloudhsm", "nshield"] {
        let s = mode_session(mode);
        let mut ivs = Vec::new();
        for _ in 0..3 {
            let mut iv = [0u8; 12];
            let mut mech = gcm(&mut iv, AAD);
            let ct = s
                .encrypt(&mech, fixture().key, PLAINTEXT)
                .unwrap_or_else(|e| panic!("{mode}: encrypt with a zero IV: {e}"));
            let Mechanism::AesGcm(params) = &mut mech else {
                unreachable!()
            };
            let written = params.iv().to_vec();
            drop(mech);
            assert_eq!(written, iv, "{mode}: pIv is the caller's buffer");
            assert_ne!(iv, [0u8; 12], "{mode}: the IV used was written back");
            assert_eq!(
                ct.len(),
                PLAINTEXT.len() + 16,
                "{mode}: ciphertext ‖ tag only"
            );
            assert_eq!(
                direct_decrypt(&iv, &ct),
                PLAINTEXT,
                "{mode}: SoftHSM2 decrypts"
            );
            let mut iv_copy = iv;
            let pt = s
                .decrypt(&gcm(&mut iv_copy, AAD), fixture().key, &ct)
                .expect("decrypt with the caller's IV");
            assert_eq!(pt, PLAINTEXT);
            ivs.push(iv);
        }
        ivs.sort();
        ivs.dedup();
        assert_eq!(ivs.len(), 3, "{mode}: a fresh IV per encryption");
    }
}

use cryptoki::mechanism::Mechanism;

#[test]
fn cloudhsm_and_nshield_refuse_any_other_iv() {
    for mode in ["cloudhsm", "nshield"] {
        let s = mode_session(mode);
        let mut nonzero = [0u8; 12];
        nonzero[0] = 1;
        let cases: [Vec<u8>; 4] = [nonzero.to_vec(), vec![0; 16], vec![0; 8], vec![]];
        for iv in cases {
            let mut iv_buf = iv.clone();
            let r = s.encrypt(&gcm(&mut iv_buf, AAD), fixture().key, PLAINTEXT);
            assert_eq!(
                rv_of(r),
                RvError::MechanismParamInvalid,
                "{mode}: IV {iv:?}"
            );
            assert_eq!(iv_buf, iv, "{mode}: a refused IV is left alone");
        }
    }
}

#[test]
fn every_mode_decrypts_with_the_callers_iv() {
    let iv = [0x3c; 12];
    let ct = direct_encrypt(&iv);
    for (mode, _) in MODES {
        let mut iv_copy = iv;
        let pt = mode_session(mode)
            .decrypt(&gcm(&mut iv_copy, AAD), fixture().key, &ct)
            .unwrap_or_else(|e| panic!("{mode}: decrypt with the caller's IV: {e}"));
        assert_eq!(pt, PLAINTEXT, "{mode}");
    }
}

#[test]
fn a_failed_gcm_tag_check_is_encrypted_data_invalid_in_every_mode() {
    let iv = [0x11; 12];
    let mut ct = direct_encrypt(&iv);
    *ct.last_mut().unwrap() ^= 1;
    // SoftHSM2 itself answers CKR_GENERAL_ERROR (its own deviation, hidden by the emulator).
    let mut iv_copy = iv;
    let direct = direct_session().decrypt(&gcm(&mut iv_copy, AAD), fixture().key, &ct);
    assert_eq!(rv_of(direct), RvError::GeneralError);
    for (mode, _) in MODES {
        let mut iv_copy = iv;
        let r = mode_session(mode).decrypt(&gcm(&mut iv_copy, AAD), fixture().key, &ct);
        assert_eq!(rv_of(r), RvError::EncryptedDataInvalid, "{mode}");
    }
}

#[test]
fn dates_on_private_keys_are_refused_and_nothing_is_created() {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let start = cryptoki::types::Date::new_from_str_slice("2020", "01", "02").unwrap();
    for (mode, _) in MODES {
        let s = mode_session(mode);
        let label = format!("dated-{mode}");
        let r = s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.clone().into_bytes()),
                Attribute::StartDate(start),
            ],
        );
        assert_eq!(rv_of(r), RvError::AttributeTypeInvalid, "{mode}");
        let found = s
            .find_objects(&[Attribute::Label(label.into_bytes())])
            .unwrap();
        assert!(found.is_empty(), "{mode}: nothing created");
        let r = s.update_attributes(fixture().key, &[Attribute::EndDate(start)]);
        assert_eq!(
            rv_of(r),
            RvError::AttributeTypeInvalid,
            "{mode}: set on a private key"
        );
    }
}
