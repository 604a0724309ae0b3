//! C_Initialize / C_Finalize of the built module through its raw function table, and bad
//! configurations (each in a child process whose stderr log is checked).

mod support;

use pkcs11_sys::*;
use std::path::Path;
use std::process::Command;
use std::ptr;
use support::module_fixture::raw::{self, gcm_mechanism, gcm_params};
use support::module_fixture::*;

unsafe extern "C" fn create_mutex(_m: CK_VOID_PTR_PTR) -> CK_RV {
    CKR_OK
}
unsafe extern "C" fn mutex_op(_m: CK_VOID_PTR) -> CK_RV {
    CKR_OK
}

fn init_args(callbacks: usize, flags: CK_FLAGS, reserved: bool) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: (callbacks > 0).then_some(create_mutex as _),
        DestroyMutex: (callbacks > 1).then_some(mutex_op as _),
        LockMutex: (callbacks > 2).then_some(mutex_op as _),
        UnlockMutex: (callbacks > 3).then_some(mutex_op as _),
        flags,
        pReserved: if reserved {
            std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
        } else {
            ptr::null_mut()
        },
    }
}

/// GCM round trip on slot `slot` through the raw table (open, login, generate, encrypt,
/// decrypt, close). The module's slot ids are its slot indexes; where the slot's HSM generates
/// the IV, it is written back into `pIv` and the decryption takes it from there.
fn raw_round_trip(f: &CK_FUNCTION_LIST_3_0, slot: CK_SLOT_ID, label: &str) {
    // SAFETY: every pointer is a live local of the right size.
    unsafe {
        let mut h: CK_SESSION_HANDLE = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let rv = f.C_OpenSession.unwrap()(slot, flags, ptr::null_mut(), None, &mut h);
        assert_eq!(rv, CKR_OK);
        let mut pin = PIN.as_bytes().to_vec();
        let rv = f.C_Login.unwrap()(h, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG);
        assert!(
            rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
            "login {rv:#x}"
        );
        let mut gen = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut len: CK_ULONG = 32;
        let mut token: CK_BBOOL = CK_TRUE;
        let mut label = label.as_bytes().to_vec();
        let mut tpl = [
            raw::ulong_attr(CKA_VALUE_LEN, &mut len),
            raw::bool_attr(CKA_TOKEN, &mut token),
            raw::bytes_attr(CKA_LABEL, &mut label),
        ];
        let mut key: CK_OBJECT_HANDLE = 0;
        let rv = f.C_GenerateKey.unwrap()(h, &mut gen, tpl.as_mut_ptr(), 3, &mut key);
        assert_eq!(rv, CKR_OK, "generate on slot {slot}");
        let mode = EncryptIv::of_slot(slot as usize);
        let (mut iv, mut aad) = (mode.iv(1), [2u8; 3]);
        let mut params = gcm_params(&mut iv, &mut aad, 128);
        let mut mech = gcm_mechanism(&mut params);
        let mut pt = *b"lifecycle";
        let mut ct = [0u8; 64];
        let mut ct_len: CK_ULONG = 64;
        assert_eq!(f.C_EncryptInit.unwrap()(h, &mut mech, key), CKR_OK);
        let rv = f.C_Encrypt.unwrap()(h, pt.as_mut_ptr(), 9, ct.as_mut_ptr(), &mut ct_len);
        assert_eq!((rv, ct_len), (CKR_OK, 25));
        mode.check_after(1, &iv);
        let mut out = [0u8; 64];
        let mut out_len: CK_ULONG = 64;
        assert_eq!(f.C_DecryptInit.unwrap()(h, &mut mech, key), CKR_OK);
        let rv = f.C_Decrypt.unwrap()(h, ct.as_mut_ptr(), ct_len, out.as_mut_ptr(), &mut out_len);
        assert_eq!((rv, &out[..out_len as usize]), (CKR_OK, &b"lifecycle"[..]));
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_OK);
    }
}

#[test]
fn initialize_and_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let backend = new_backend_token(dir.path(), SOFTHSM_TOKEN, PIN);
    let config = write_config(dir.path(), Options::default(), &backend);
    set_env(&backend, &config);
    let f = raw::table();
    // SAFETY: NULL where the test says so; every other pointer is a live local.
    unsafe {
        // Every call before C_Initialize.
        let mut info = CK_INFO::default();
        let mut n: CK_ULONG = 0;
        let mut h: CK_SESSION_HANDLE = 0;
        let mut ti = CK_TOKEN_INFO::default();
        let mut si = CK_SLOT_INFO::default();
        let mut mi = CK_MECHANISM_INFO::default();
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut buf = [0u8; 16];
        let mut len: CK_ULONG = 16;
        let before: Vec<(&str, CK_RV)> = vec![
            ("C_GetInfo", f.C_GetInfo.unwrap()(&mut info)),
            ("C_Finalize", f.C_Finalize.unwrap()(ptr::null_mut())),
            (
                "C_GetSlotList",
                f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut n),
            ),
            ("C_GetSlotInfo", f.C_GetSlotInfo.unwrap()(0, &mut si)),
            ("C_GetTokenInfo", f.C_GetTokenInfo.unwrap()(0, &mut ti)),
            (
                "C_GetMechanismList",
                f.C_GetMechanismList.unwrap()(0, ptr::null_mut(), &mut n),
            ),
            (
                "C_GetMechanismInfo",
                f.C_GetMechanismInfo.unwrap()(0, CKM_AES_GCM, &mut mi),
            ),
            (
                "C_OpenSession",
                f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut h),
            ),
            ("C_CloseSession", f.C_CloseSession.unwrap()(1)),
            ("C_CloseAllSessions", f.C_CloseAllSessions.unwrap()(0)),
            (
                "C_Login",
                f.C_Login.unwrap()(1, CKU_USER, buf.as_mut_ptr(), 4),
            ),
            ("C_Logout", f.C_Logout.unwrap()(1)),
            (
                "C_FindObjectsInit",
                f.C_FindObjectsInit.unwrap()(1, ptr::null_mut(), 0),
            ),
            ("C_EncryptInit", f.C_EncryptInit.unwrap()(1, &mut mech, 1)),
            ("C_DecryptInit", f.C_DecryptInit.unwrap()(1, &mut mech, 1)),
            (
                "C_Encrypt",
                f.C_Encrypt.unwrap()(1, buf.as_mut_ptr(), 1, buf.as_mut_ptr(), &mut len),
            ),
            (
                "C_GenerateKey",
                f.C_GenerateKey.unwrap()(1, &mut mech, ptr::null_mut(), 0, &mut h),
            ),
            (
                "C_GenerateRandom",
                f.C_GenerateRandom.unwrap()(1, buf.as_mut_ptr(), 4),
            ),
            ("C_DestroyObject", f.C_DestroyObject.unwrap()(1, 1)),
            ("C_SignInit", f.C_SignInit.unwrap()(1, &mut mech, 1)),
            (
                "C_WaitForSlotEvent",
                f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut n, ptr::null_mut()),
            ),
        ];
        for (name, rv) in before {
            assert_eq!(
                rv, CKR_CRYPTOKI_NOT_INITIALIZED,
                "{name} before C_Initialize: {rv:#x}"
            );
        }

        // Bad CK_C_INITIALIZE_ARGS.
        let mut a = init_args(4, 0, false);
        let init = f.C_Initialize.unwrap();
        assert_eq!(
            init((&mut a as *mut CK_C_INITIALIZE_ARGS).cast()),
            CKR_CANT_LOCK
        );
        for partial in 1..4 {
            let mut a = init_args(partial, CKF_OS_LOCKING_OK, false);
            let rv = init((&mut a as *mut CK_C_INITIALIZE_ARGS).cast());
            assert_eq!(rv, CKR_ARGUMENTS_BAD, "{partial} of 4 callbacks");
        }
        let mut a = init_args(0, CKF_OS_LOCKING_OK, true);
        assert_eq!(
            init((&mut a as *mut CK_C_INITIALIZE_ARGS).cast()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_GetInfo.unwrap()(&mut info),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );

        // Callbacks with CKF_OS_LOCKING_OK are fine (the module uses OS locking).
        let mut a = init_args(4, CKF_OS_LOCKING_OK, false);
        assert_eq!(init((&mut a as *mut CK_C_INITIALIZE_ARGS).cast()), CKR_OK);
        assert_eq!(init(ptr::null_mut()), CKR_CRYPTOKI_ALREADY_INITIALIZED);
        let mut a = init_args(0, CKF_OS_LOCKING_OK, false);
        assert_eq!(
            init((&mut a as *mut CK_C_INITIALIZE_ARGS).cast()),
            CKR_CRYPTOKI_ALREADY_INITIALIZED
        );
        assert_eq!(f.C_GetInfo.unwrap()(&mut info), CKR_OK);
        assert_eq!(
            (info.cryptokiVersion.major, info.cryptokiVersion.minor),
            (2, 40)
        );
        raw_round_trip(f, 0, "life-1-softhsm");
        raw_round_trip(f, 1, "life-1-embedded");
        // A session left open across finalize.
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        assert_eq!(
            f.C_OpenSession.unwrap()(0, flags, ptr::null_mut(), None, &mut h),
            CKR_OK
        );

        // C_Finalize(non-NULL) is refused; C_Finalize(NULL) works once.
        assert_eq!(
            f.C_Finalize.unwrap()((&mut info as *mut CK_INFO).cast()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
        assert_eq!(
            f.C_Finalize.unwrap()(ptr::null_mut()),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        assert_eq!(
            f.C_GetInfo.unwrap()(&mut info),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );

        // Initialise again: everything works, old sessions are gone, keys are still there.
        assert_eq!(init(ptr::null_mut()), CKR_OK);
        let mut si = CK_SESSION_INFO::default();
        assert_eq!(
            f.C_GetSessionInfo.unwrap()(h, &mut si),
            CKR_SESSION_HANDLE_INVALID
        );
        raw_round_trip(f, 0, "life-2-softhsm");
        raw_round_trip(f, 1, "life-2-embedded");
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
        // And a third time, through cryptoki: keys from both earlier runs are there; disable
        // and rename some; the changes survive another finalize/initialize.
        use cryptoki::object::{Attribute, AttributeType};
        let ctx = cryptoki::context::Pkcs11::new(so_path()).unwrap();
        init_ctx(&ctx);
        let slots = ctx.get_slots_with_token().unwrap();
        for (i, name) in SLOT_NAMES.iter().enumerate() {
            let s = ctx.open_rw_session(slots[i]).unwrap();
            login(&s);
            let k1 = find_label(&s, &format!("life-1-{name}"));
            find_label(&s, &format!("life-2-{name}"));
            s.update_attributes(
                k1,
                &[
                    Attribute::Encrypt(false),
                    Attribute::Label(format!("life-1-{name}-renamed").into_bytes()),
                ],
            )
            .unwrap();
        }
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
        init_ctx(&ctx);
        for (i, name) in SLOT_NAMES.iter().enumerate() {
            let s = ctx.open_rw_session(slots[i]).unwrap();
            login(&s);
            let k1 = find_label(&s, &format!("life-1-{name}-renamed"));
            assert_eq!(
                s.get_attributes(k1, &[AttributeType::Encrypt, AttributeType::Decrypt])
                    .unwrap(),
                [Attribute::Encrypt(false), Attribute::Decrypt(true)],
                "{name}: state after re-initialisation"
            );
        }
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
    }
}

/// Child mode: `C_Initialize` once, print the return value, exit. Does nothing in a normal run.
#[test]
fn child_initialize() {
    if std::env::var_os("XKI_ITEST_CHILD").is_none() {
        return;
    }
    let f = raw::table();
    // SAFETY: NULL args.
    let rv = unsafe { f.C_Initialize.unwrap()(ptr::null_mut()) };
    println!("\nC_INITIALIZE_RV={rv:#x} ");
}

/// A PIN only the bad-config tests use, so its absence from the log means something.
const SECRET_PIN: &str = "Pin-Must-Not-Leak-7731";

/// Run C_Initialize in a child process on `config`; returns (rv line, stderr).
fn initialize_in_child(config: &Path, softhsm_conf: &Path) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_initialize",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("XKI_ITEST_CHILD", "1")
        .env("XKI_PKCS11_CONF", config)
        .env("SOFTHSM2_CONF", softhsm_conf)
        .env("XKI_EMBEDDED_TEST_KDF", "fast")
        .env("XKI_SECRET_PIN", SECRET_PIN)
        .env_remove("RUST_LOG")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rv = stdout
        .lines()
        .find_map(|l| l.split("C_INITIALIZE_RV=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("child did not report: {stdout}\n{stderr}"))
        .to_string();
    (rv, stderr)
}

#[test]
fn bad_configs_fail_initialize_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let softhsm_conf = new_softhsm_token(dir.path(), "xki-lifecycle-bad");
    let pin_file = dir.path().join("secret.pin");
    std::fs::write(&pin_file, SECRET_PIN).unwrap();
    let missing_pin = dir.path().join("no-such-dir/user.pin");
    let slot = "[[slot]]\nlabel = \"bad\"\nbackends = [\"hsm\"]\n";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "unknown key",
            format!(
                "{slot}colour = \"red\"\n[backend.hsm]\nmodule = \"{SOFTHSM}\"\n\
                 token_label = \"xki-lifecycle-bad\"\npin_file = \"{}\"\n",
                pin_file.display()
            ),
            vec!["colour".into(), "unknown field".into()],
        ),
        (
            "missing pin file",
            format!(
                "{slot}[backend.hsm]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"xki-lifecycle-bad\"\n\
                 pin_file = \"{}\"\n",
                missing_pin.display()
            ),
            vec![
                "backend.hsm.pin_file".into(),
                missing_pin.display().to_string(),
            ],
        ),
        (
            "unloadable backend module",
            format!(
                "{slot}[backend.hsm]\nmodule = \"/nonexistent/libno-such-hsm.so\"\n\
                 token_label = \"xki-lifecycle-bad\"\npin_file = \"{}\"\n",
                pin_file.display()
            ),
            vec![
                "backend.hsm.module".into(),
                "/nonexistent/libno-such-hsm.so".into(),
            ],
        ),
        (
            "unknown token label",
            format!(
                "{slot}[backend.hsm]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"no-such-token\"\n\
                 pin_file = \"{}\"\n",
                pin_file.display()
            ),
            vec!["backend.hsm".into(), "no-such-token".into()],
        ),
        (
            "PIN in an environment variable, token refuses it",
            format!(
                "{slot}[backend.hsm]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"xki-lifecycle-bad\"\n\
                 pin_env = \"XKI_SECRET_PIN\"\n"
            ),
            vec!["backend.hsm".into()],
        ),
    ];
    for (i, (what, text, must_name)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let (rv, stderr) = initialize_in_child(&config, &softhsm_conf);
        assert_ne!(rv, "0x0", "{what}: C_Initialize succeeded; log:\n{stderr}");
        let config_name = config.display().to_string();
        assert!(
            stderr.contains(&config_name),
            "{what}: log does not name {config_name}:\n{stderr}"
        );
        for needle in must_name {
            assert!(
                stderr.contains(&needle),
                "{what}: log lacks {needle:?}:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains(SECRET_PIN),
            "{what}: the PIN is in the log:\n{stderr}"
        );
    }
    // A config file that does not exist, named by XKI_PKCS11_CONF.
    let (rv, stderr) = initialize_in_child(&dir.path().join("absent.toml"), &softhsm_conf);
    assert_ne!(rv, "0x0");
    assert!(stderr.contains("absent.toml"), "{stderr}");
}
