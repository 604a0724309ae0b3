//! `Pkcs11Backend` against a real SoftHSM2 token (one token per test, one store per binary).

mod support;

use pkcs11_sys::*;
use std::sync::Arc;
use support::softhsm_tokens::{config, pin, tokens, MODULE, PIN};
use xki_pkcs11::backend::pkcs11::Pkcs11Backend;
use xki_pkcs11::backend::{Backend, BackendKey, KeyChanges, NewKey};
use xki_pkcs11::rv::Rv;
use zeroize::Zeroizing;

const LABELS: &[&str] = &[
    "t-errors", "t-keys", "t-gcm", "t-tag", "t-attrs", "t-fault", "t-logout", "t-conc", "t-share",
    "t-storm",
];

fn open(label: &str) -> Pkcs11Backend {
    tokens(LABELS);
    Pkcs11Backend::open(label, &config(label), pin()).expect("open backend")
}

fn new_key(b: &Pkcs11Backend, label: &str) -> BackendKey {
    let spec = NewKey {
        id: label.as_bytes().to_vec(),
        label: label.as_bytes().to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    };
    b.generate_aes_key(&spec).expect("generate").handle
}

#[test]
fn open_errors_name_the_key_and_rv() {
    tokens(LABELS);

    let mut cfg = config("t-errors");
    cfg.module = Some("/nonexistent/libvendor.so".into());
    let err = Pkcs11Backend::open("x", &cfg, pin())
        .err()
        .expect("bad module");
    assert_eq!(err.key, "module");
    assert!(
        err.problem.contains("/nonexistent/libvendor.so"),
        "{}",
        err.problem
    );

    let mut cfg = config("t-errors");
    cfg.module = Some("/etc/hostname".into());
    let err = Pkcs11Backend::open("x", &cfg, pin())
        .err()
        .expect("not a library");
    assert_eq!(err.key, "module");

    let err = Pkcs11Backend::open("x", &config("no-such-token"), pin())
        .err()
        .expect("bad label");
    assert_eq!(err.key, "token_label");
    assert_eq!(err.rv, Rv::TOKEN_NOT_PRESENT);
    assert!(
        err.problem.contains("\"t-errors\""),
        "labels listed: {}",
        err.problem
    );

    let mut cfg = config("t-errors");
    cfg.token_label = None;
    cfg.slot_id = Some(987_654_321);
    let err = Pkcs11Backend::open("x", &cfg, pin())
        .err()
        .expect("bad slot");
    assert_eq!(err.key, "slot_id");
    assert_eq!(err.rv, Rv::SLOT_ID_INVALID);

    let wrong = Some(Zeroizing::new(b"987654".to_vec()));
    let err = Pkcs11Backend::open("x", &config("t-errors"), wrong.clone())
        .err()
        .expect("bad pin");
    assert_eq!((err.key, err.rv), ("pin_file", Rv::PIN_INCORRECT));
    assert!(!err.problem.contains("987654"));

    let mut cfg = config("t-errors");
    cfg.pin_file = None;
    cfg.pin_env = Some("XKI_TEST_PIN".into());
    let err = Pkcs11Backend::open("x", &cfg, wrong)
        .err()
        .expect("bad pin");
    assert_eq!((err.key, err.rv), ("pin_env", Rv::PIN_INCORRECT));

    let err = Pkcs11Backend::open("x", &config("t-errors"), None)
        .err()
        .expect("no pin");
    assert_eq!((err.key, err.rv), ("pin_file", Rv::USER_NOT_LOGGED_IN));

    // The right PIN still works after wrong ones, and slot_id works as well as the label.
    let b = Pkcs11Backend::open("x", &config("t-errors"), pin()).expect("open");
    let mut cfg = config("t-errors");
    cfg.token_label = None;
    cfg.slot_id = Some(b.slot_id());
    let by_id = Pkcs11Backend::open("y", &cfg, pin()).expect("open by slot id");
    assert_eq!(by_id.slot_id(), b.slot_id());
    by_id.shutdown();
    b.shutdown();
}

#[test]
fn generate_list_and_key_info() {
    let b = open("t-keys");
    let d = b.describe().expect("describe");
    assert_eq!(d.manufacturer, "SoftHSM project");
    assert_eq!(d.model, "SoftHSM v2");
    assert!(!d.serial.is_empty());

    let gcm = b.mechanism_info(CKM_AES_GCM).expect("gcm info");
    assert_eq!(
        gcm.flags & (CKF_ENCRYPT | CKF_DECRYPT),
        CKF_ENCRYPT | CKF_DECRYPT
    );
    assert_eq!(gcm.flags & CKF_SIGN, 0);
    assert_eq!(gcm.max_key_size, 32);
    let keygen = b.mechanism_info(CKM_AES_KEY_GEN).expect("keygen info");
    assert_eq!(keygen.flags & CKF_GENERATE, CKF_GENERATE);
    assert_eq!(
        b.mechanism_info(CKM_SHA3_256).unwrap_err(),
        Rv::MECHANISM_INVALID
    );
    assert_eq!(
        b.mechanism_info(0x0fff_fff0).unwrap_err(),
        Rv::MECHANISM_INVALID
    );

    let spec = NewKey {
        id: b"id-1".to_vec(),
        label: b"xki-key-1".to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: false,
    };
    let k = b.generate_aes_key(&spec).expect("generate");
    assert_eq!(k.id, b"id-1");
    assert_eq!(k.label, b"xki-key-1");
    assert_eq!(k.key_type, CKK_AES);
    assert_eq!(k.value_len, 32);
    assert!(k.token && k.private && k.sensitive && !k.extractable && k.modifiable);
    assert_eq!(k.always_sensitive, Some(true));
    assert_eq!(k.never_extractable, Some(true));
    assert_eq!(k.local, Some(true));
    assert!(k.encrypt && !k.decrypt);
    assert!(!k.wrap && !k.unwrap && !k.sign && !k.verify && !k.derive);
    assert!(k.start_date.is_empty() && k.end_date.is_empty());

    let k2 = new_key(&b, "xki-key-2");
    let all = b.list_secret_keys().expect("list");
    assert_eq!(all.len(), 2);
    assert!(all.contains(&k));
    assert_eq!(b.key_info(k2).expect("info").label, b"xki-key-2");

    b.destroy_key(k.handle).expect("destroy");
    assert_eq!(b.key_info(k.handle).unwrap_err(), Rv::KEY_HANDLE_INVALID);
    assert_eq!(b.list_secret_keys().expect("list").len(), 1);

    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    b.generate_random(&mut r1).expect("random");
    b.generate_random(&mut r2).expect("random");
    assert_ne!(r1, r2);
    assert_ne!(r1, [0u8; 32]);
    b.shutdown();
}

#[test]
fn gcm_round_trips() {
    let b = open("t-gcm");
    let k = new_key(&b, "gcm");
    let iv = [7u8; 12];
    for (aad, pt) in [
        (&b""[..], &b"hello world"[..]),
        (&b"header"[..], &b"hello world"[..]),
        (&b"aad only"[..], &b""[..]),
        (&b""[..], &[0xA5u8; 4096][..]),
    ] {
        let ct = b.gcm_encrypt(k, &iv, aad, pt).expect("encrypt");
        assert_eq!(ct.len(), pt.len() + 16);
        if !pt.is_empty() {
            assert_ne!(&ct[..pt.len()], pt);
        }
        let back = b.gcm_decrypt(k, &iv, aad, &ct).expect("decrypt");
        assert_eq!(&back[..], pt);
    }
    // Same key, IV and input: deterministic (it really is GCM under one key).
    let a = b.gcm_encrypt(k, &iv, b"x", b"data").unwrap();
    assert_eq!(a, b.gcm_encrypt(k, &iv, b"x", b"data").unwrap());
    b.shutdown();
}

#[test]
fn gcm_bad_tag_aad_iv_is_encrypted_data_invalid() {
    let b = open("t-tag");
    let k = new_key(&b, "tag");
    let iv = [1u8; 12];
    let ct = b.gcm_encrypt(k, &iv, b"aad", b"secret message").unwrap();

    let mut bad_tag = ct.clone();
    *bad_tag.last_mut().unwrap() ^= 1;
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"aad", &bad_tag).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    let mut bad_ct = ct.clone();
    bad_ct[0] ^= 1;
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"aad", &bad_ct).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"AAD", &ct).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"", &ct).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &[2u8; 12], b"aad", &ct).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    let other = new_key(&b, "tag-other");
    assert_eq!(
        b.gcm_decrypt(other, &iv, b"aad", &ct).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    // Truncated input (shorter than the tag, or empty) fails the same way.
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"aad", &ct[..10]).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"aad", &[]).unwrap_err(),
        Rv::ENCRYPTED_DATA_INVALID
    );
    // SoftHSM2 accepts an empty IV; the backend does not.
    assert_eq!(
        b.gcm_encrypt(k, &[], b"", b"x").unwrap_err(),
        Rv::MECHANISM_PARAM_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &[], b"", &ct).unwrap_err(),
        Rv::MECHANISM_PARAM_INVALID
    );
    // A handle that names no key (SoftHSM2 says CKR_OBJECT_HANDLE_INVALID; see quirks.rs).
    let nokey = BackendKey(999_999);
    assert_eq!(
        b.gcm_encrypt(nokey, &iv, b"", b"x").unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(nokey, &iv, b"aad", &ct).unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
    assert_eq!(b.key_info(nokey).unwrap_err(), Rv::KEY_HANDLE_INVALID);
    // What SoftHSM2 itself answers (what quirks.rs normalises): CKR_GENERAL_ERROR from the
    // C_Decrypt step.
    let other = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = cryptoki::slot::Slot::try_from(b.slot_id()).unwrap();
    let s = other.open_rw_session(slot).unwrap();
    let mut iv2 = iv;
    let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv2, b"aad", 128.into()).unwrap();
    // SAFETY: a handle the backend reported for this token; the library validates it.
    let h = unsafe { cryptoki::object::ObjectHandle::new_from_raw(k.0) };
    let raw = s.decrypt(&cryptoki::mechanism::Mechanism::AesGcm(params), h, &bad_tag);
    assert!(
        matches!(
            raw,
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::GeneralError,
                cryptoki::context::Function::Decrypt
            ))
        ),
        "{raw:?}"
    );
    drop(s);
    // After all those failures the pool's sessions still work.
    assert_eq!(
        &b.gcm_decrypt(k, &iv, b"aad", &ct).unwrap()[..],
        b"secret message"
    );
    b.shutdown();
}

#[test]
fn set_attributes_disable_encrypt_and_dates() {
    let b = open("t-attrs");
    let k = new_key(&b, "attrs");
    let iv = [3u8; 12];
    let ct = b.gcm_encrypt(k, &iv, b"", b"pt").unwrap();

    let off = KeyChanges {
        encrypt: Some(false),
        ..Default::default()
    };
    b.set_key_attributes(k, &off).expect("disable encrypt");
    assert!(!b.key_info(k).unwrap().encrypt);
    assert_eq!(
        b.gcm_encrypt(k, &iv, b"", b"pt").unwrap_err(),
        Rv::KEY_FUNCTION_NOT_PERMITTED
    );
    assert_eq!(&b.gcm_decrypt(k, &iv, b"", &ct).unwrap()[..], b"pt");

    let change = KeyChanges {
        label: Some(b"renamed".to_vec()),
        encrypt: Some(true),
        decrypt: Some(false),
        start_date: Some(Vec::new()),
        end_date: Some(Vec::new()),
    };
    b.set_key_attributes(k, &change).expect("change");
    let info = b.key_info(k).unwrap();
    assert_eq!(info.label, b"renamed");
    assert!(info.encrypt && !info.decrypt);
    assert!(info.start_date.is_empty() && info.end_date.is_empty());
    assert_eq!(
        b.gcm_decrypt(k, &iv, b"", &ct).unwrap_err(),
        Rv::KEY_FUNCTION_NOT_PERMITTED
    );

    // Malformed dates are refused everywhere.
    let bad = KeyChanges {
        end_date: Some(b"2027".to_vec()),
        ..Default::default()
    };
    assert_eq!(
        b.set_key_attributes(k, &bad).unwrap_err(),
        Rv::ATTRIBUTE_VALUE_INVALID
    );

    // SoftHSM2 2.6 cannot read back a date on a private object (quirks.rs): writing one is
    // refused rather than breaking every later read of the key...
    let date = KeyChanges {
        end_date: Some(b"20270131".to_vec()),
        ..Default::default()
    };
    assert_eq!(
        b.set_key_attributes(k, &date).unwrap_err(),
        Rv::ATTRIBUTE_TYPE_INVALID
    );
    // ...and a key another tool gave a date still reads (without its dates).
    let other = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = cryptoki::slot::Slot::try_from(b.slot_id()).unwrap();
    let s = other.open_rw_session(slot).unwrap();
    // SAFETY: a handle the backend reported for this token; the library validates it.
    let h = unsafe { cryptoki::object::ObjectHandle::new_from_raw(k.0) };
    let date = cryptoki::types::Date::new(*b"2027", *b"01", *b"31");
    s.update_attributes(h, &[cryptoki::object::Attribute::EndDate(date)])
        .expect("another tool sets a date");
    let raw = s.get_attributes(h, &[cryptoki::object::AttributeType::EndDate]);
    assert!(
        matches!(
            raw,
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::GeneralError,
                _
            ))
        ),
        "SoftHSM2 date read-back bug fixed? {raw:?}"
    );
    drop(s);
    let info = b
        .key_info(k)
        .expect("key with an unreadable date still reads");
    assert_eq!(info.label, b"renamed");
    assert!(info.end_date.is_empty());
    assert_eq!(b.list_secret_keys().unwrap().len(), 1);
    b.shutdown();
}

/// A second, independent cryptoki view of the same SoftHSM2 library (same process, so the
/// same token state), used to pull the rug from under the backend.
mod rug {
    use super::*;
    use std::ffi::CString;

    /// `C_CloseAllSessions(slot)` through the raw function list (cryptoki does not expose it).
    pub fn close_all_sessions(slot: u64) {
        let path = CString::new(MODULE).unwrap();
        // SAFETY: dlopen of a library that is already loaded in this process (the backend
        // loaded it); RTLD_NOLOAD only returns the existing handle.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        assert!(!handle.is_null(), "library not loaded");
        let sym = CString::new("C_GetFunctionList").unwrap();
        // SAFETY: looking up a symbol in a valid handle.
        let f = unsafe { libc::dlsym(handle, sym.as_ptr()) };
        assert!(!f.is_null());
        // SAFETY: C_GetFunctionList has exactly this signature in every PKCS#11 library.
        let get: unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV =
            unsafe { std::mem::transmute(f) };
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer.
        assert_eq!(unsafe { get(&mut list) }, CKR_OK);
        // SAFETY: the library returned a valid, static function list.
        let close_all = unsafe { (*list).C_CloseAllSessions }.expect("C_CloseAllSessions");
        // SAFETY: plain call with a slot id; the library validates it.
        assert_eq!(unsafe { close_all(slot) }, CKR_OK);
        // SAFETY: balances the dlopen above; the backend's own reference keeps it loaded.
        unsafe { libc::dlclose(handle) };
    }
}

#[test]
fn recovers_when_sessions_are_closed_behind_its_back() {
    let b = open("t-fault");
    let k = new_key(&b, "fault");
    let iv = [9u8; 12];
    let ct = b.gcm_encrypt(k, &iv, b"", b"before").unwrap();
    for round in 0..3 {
        rug::close_all_sessions(b.slot_id());
        // Closing the last session also logged the token out: both faults are healed.
        let again = b
            .gcm_encrypt(k, &iv, b"", b"before")
            .expect("encrypt after reset");
        assert_eq!(again, ct, "round {round}");
        assert_eq!(&b.gcm_decrypt(k, &iv, b"", &ct).unwrap()[..], b"before");
        // The key keeps the BackendKey the module knows, though SoftHSM2 renumbered it.
        let listed = b.list_secret_keys().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].handle, k);
        assert_eq!(b.key_info(k).unwrap().handle, k);
    }
    b.shutdown();
}

/// Sessions closed behind the backend's back between bursts of concurrent work: every pooled
/// session is stale at the start of each burst, and every operation still succeeds. (Closing
/// sessions *while* SoftHSM2 2.6 runs operations on them crashes SoftHSM2 itself, inside
/// C_EncryptInit: a use-after-free in the library, so the rug is only pulled between bursts.)
#[test]
fn concurrent_work_after_repeated_session_resets() {
    use std::time::{Duration, Instant};
    let b = Arc::new(open("t-storm"));
    let k = new_key(&b, "storm");
    for round in 0..10u8 {
        rug::close_all_sessions(b.slot_id());
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for i in 0..25u32 {
                        let started = Instant::now();
                        let iv = [t, round, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        let ct = b.gcm_encrypt(k, &iv, b"", &i.to_be_bytes()).unwrap();
                        let pt = b.gcm_decrypt(k, &iv, b"", &ct).unwrap();
                        assert_eq!(&pt[..], &i.to_be_bytes());
                        assert!(started.elapsed() < Duration::from_secs(2), "slow op");
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
    }
    b.shutdown();
}

#[test]
fn recovers_from_logout_behind_its_back() {
    use cryptoki::session::UserType;
    let b = open("t-logout");
    let k = new_key(&b, "logout");
    let iv = [4u8; 12];
    // Another context on the same (already initialised) library, logging the token out.
    let other = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = cryptoki::slot::Slot::try_from(b.slot_id()).unwrap();
    let s = other.open_rw_session(slot).unwrap();
    s.logout().expect("logout");
    let ct = b
        .gcm_encrypt(k, &iv, b"", b"x")
        .expect("encrypt after logout");
    // And the other way round: after our re-login the other context sees the user logged in.
    let raw = cryptoki::types::RawAuthPin::new(Box::new(PIN.to_vec()));
    let already = s.login_with_raw(UserType::User, &raw).unwrap_err();
    assert!(
        matches!(
            already,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)
        ),
        "{already}"
    );
    drop(s);
    assert_eq!(&b.gcm_decrypt(k, &iv, b"", &ct).unwrap()[..], b"x");
    b.shutdown();
}

#[test]
fn eight_threads_two_hundred_round_trips() {
    tokens(LABELS);
    let mut cfg = config("t-conc");
    cfg.max_sessions = Some(4); // fewer sessions than threads: checkouts must wait and share
    let b = Arc::new(Pkcs11Backend::open("conc", &cfg, pin()).unwrap());
    let k = new_key(&b, "conc");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let mut iv = [t; 12];
                    iv[..4].copy_from_slice(&i.to_be_bytes());
                    let pt = format!("thread {t} message {i}");
                    let aad = [t, (i % 251) as u8];
                    let ct = b.gcm_encrypt(k, &iv, &aad, pt.as_bytes()).unwrap();
                    let back = b.gcm_decrypt(k, &iv, &aad, &ct).unwrap();
                    assert_eq!(&back[..], pt.as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    b.shutdown();
}

#[test]
fn two_backends_share_one_library() {
    let a = open("t-share");
    let b = open("t-share");
    let k = new_key(&a, "share");
    let iv = [5u8; 12];
    let ct = a.gcm_encrypt(k, &iv, b"", b"shared").unwrap();
    a.shutdown();
    // The library is still initialised for the other backend.
    assert_eq!(&b.gcm_decrypt(k, &iv, b"", &ct).unwrap()[..], b"shared");
    // A shut-down backend refuses calls instead of touching the library.
    assert_eq!(
        a.gcm_encrypt(k, &iv, b"", b"x").unwrap_err(),
        Rv::CRYPTOKI_NOT_INITIALIZED
    );
    b.shutdown();
}
