//! A replica group slot through the BUILT libxki_pkcs11.so (dlopen): two SoftHSM2 tokens with
//! the same key, one member failed through the test-only fault injector (feature
//! `fault-injection`, control file named by `XKI_FAULT_CONTROL_<backend>`), traffic keeps
//! flowing, and the `XKI Status` vendor interface reports it. Own binary: the module is
//! process-global.
//!
//! Run with: `cargo test --features fault-injection --test replica_module`

#![cfg(feature = "fault-injection")]

mod support;
use pkcs11_sys::*;
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};
use support::built_module::built_module;
use support::group_store::embedded_store;

/// Layouts from include/xki_pkcs11.h, written out here independently of the module's own
/// `abi::status` types on purpose: this is a consumer's reading of the header.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemberStatus {
    name: [u8; 64],
    state: CK_ULONG,
    in_flight: CK_ULONG,
    stuck_calls: CK_ULONG,
    key_mismatches: CK_ULONG,
    failures: CK_ULONG,
    last_error: CK_RV,
    last_error_text: [u8; 128],
}

#[repr(C)]
struct StatusList {
    version: CK_VERSION,
    count: unsafe extern "C" fn(CK_SLOT_ID, *mut CK_ULONG) -> CK_RV,
    status: unsafe extern "C" fn(CK_SLOT_ID, CK_ULONG, *mut MemberStatus) -> CK_RV,
}

struct Module {
    f: &'static CK_FUNCTION_LIST_3_0,
    status: &'static StatusList,
}

fn load(so: &Path) -> Module {
    let path = std::ffi::CString::new(so.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: dlopen/dlsym with valid NUL-terminated strings; the symbol has the PKCS#11
    // C_GetInterface signature; the library is never closed, so the tables stay valid.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!lib.is_null());
        let sym = libc::dlsym(lib, c"C_GetInterface".as_ptr());
        assert!(!sym.is_null());
        let get: CK_C_GetInterface = std::mem::transmute(sym);
        let get = get.unwrap();
        let mut iface: CK_INTERFACE_PTR = ptr::null_mut();
        assert_eq!(get(ptr::null_mut(), ptr::null_mut(), &mut iface, 0), CKR_OK);
        let f = &*(*iface).pFunctionList.cast::<CK_FUNCTION_LIST_3_0>();
        let name = c"XKI Status".as_ptr().cast_mut().cast();
        assert_eq!(get(name, ptr::null_mut(), &mut iface, 0), CKR_OK);
        let status = &*(*iface).pFunctionList.cast::<StatusList>();
        assert_eq!((status.version.major, status.version.minor), (1, 1));
        Module { f, status }
    }
}

fn member(m: &Module, index: CK_ULONG) -> MemberStatus {
    // SAFETY: a live out-struct of the documented layout.
    unsafe {
        let mut s: MemberStatus = std::mem::zeroed();
        assert_eq!((m.status.status)(0, index, &mut s), CKR_OK);
        s
    }
}

/// GCM encrypt then decrypt through the module; the CK_RV of the first failing call.
fn round_trip(m: &Module, session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, n: u64) -> CK_RV {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&n.to_le_bytes());
    let mut aad = *b"aad";
    let mut params = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: 3,
        ulTagBits: 128,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    let mut pt = n.to_be_bytes();
    let mut ct = [0u8; 64];
    let mut back = [0u8; 64];
    // SAFETY: live locals of the right types and sizes.
    unsafe {
        let f = m.f;
        let rv = f.C_EncryptInit.unwrap()(session, &mut mech, key);
        if rv != CKR_OK {
            return rv;
        }
        let mut len: CK_ULONG = 64;
        let rv = f.C_Encrypt.unwrap()(session, pt.as_mut_ptr(), 8, ct.as_mut_ptr(), &mut len);
        if rv != CKR_OK {
            return rv;
        }
        let rv = f.C_DecryptInit.unwrap()(session, &mut mech, key);
        if rv != CKR_OK {
            return rv;
        }
        let mut out: CK_ULONG = 64;
        let rv = f.C_Decrypt.unwrap()(session, ct.as_mut_ptr(), len, back.as_mut_ptr(), &mut out);
        if rv != CKR_OK {
            return rv;
        }
        assert_eq!(&back[..out as usize], &pt[..]);
    }
    CKR_OK
}

#[test]
fn a_group_slot_fails_over_and_reports_health_through_the_built_module() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("user.pin");
    std::fs::write(&pin, "1234").unwrap();
    let (store_a, kf_a) = embedded_store(&dir.path().join("a"));
    let (store_b, kf_b) = embedded_store(&dir.path().join("b"));
    let control = dir.path().join("fault-a");
    std::fs::write(&control, "ok").unwrap();
    let conf = dir.path().join("pkcs11.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[slot]]
label = "group"
backends = ["mod-a", "mod-b"]
probe_interval_ms = 50
user_pin_file = "{pin}"

[backend.mod-a]
type = "embedded"
create = true
store = "{store_a}"
key_file = "{kf_a}"
timeout_ms = 300

[backend.mod-b]
type = "embedded"
create = true
store = "{store_b}"
key_file = "{kf_b}"
timeout_ms = 300
"#,
            pin = pin.display(),
            store_a = store_a.display(),
            kf_a = kf_a.display(),
            store_b = store_b.display(),
            kf_b = kf_b.display(),
        ),
    )
    .unwrap();
    std::env::set_var("XKI_PKCS11_CONF", &conf);
    // PIN attempt counters next to the config, not in the user's data directory.
    std::env::set_var("XDG_DATA_HOME", dir.path().join("data"));
    std::env::set_var("XKI_FAULT_CONTROL_mod-a", &control);
    let m = load(&built_module());
    let f = m.f;

    // SAFETY: every pointer passed is a live local of the right type and size.
    unsafe {
        // An application that forbids thread creation cannot have a replica group.
        let mut args = CK_C_INITIALIZE_ARGS {
            flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK,
            ..std::mem::zeroed()
        };
        assert_eq!(
            f.C_Initialize.unwrap()((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()),
            CKR_NEED_TO_CREATE_THREADS
        );
        assert_eq!(f.C_Initialize.unwrap()(ptr::null_mut()), CKR_OK);

        let mut n: CK_ULONG = 0;
        assert_eq!((m.status.count)(0, &mut n), CKR_OK);
        assert_eq!(n, 2);
        let mut s: MemberStatus = std::mem::zeroed();
        assert_eq!((m.status.status)(0, 2, &mut s), CKR_ARGUMENTS_BAD);
        assert_eq!((m.status.status)(7, 0, &mut s), CKR_SLOT_ID_INVALID);
        let a = member(&m, 0);
        assert_eq!(&a.name[..6], b"mod-a ");
        assert_eq!(a.state, 0);

        let mut session: CK_SESSION_HANDLE = 0;
        assert_eq!(
            f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut session),
            CKR_OK
        );
        let mut pin = *b"1234";
        assert_eq!(
            f.C_Login.unwrap()(session, CKU_USER, pin.as_mut_ptr(), 4),
            CKR_OK
        );
        let mut id = *b"grp";
        let mut tmpl = [CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr().cast(),
            ulValueLen: 3,
        }];
        assert_eq!(
            f.C_FindObjectsInit.unwrap()(session, ptr::null_mut(), 0),
            CKR_OK
        );
        let mut all = [0 as CK_OBJECT_HANDLE; 8];
        let mut nall: CK_ULONG = 0;
        assert_eq!(
            f.C_FindObjects.unwrap()(session, all.as_mut_ptr(), 8, &mut nall),
            CKR_OK
        );
        assert_eq!(nall, 1, "one key, the same on both members");
        assert_eq!(f.C_FindObjectsFinal.unwrap()(session), CKR_OK);
        assert_eq!(
            f.C_FindObjectsInit.unwrap()(session, tmpl.as_mut_ptr(), 1),
            CKR_OK
        );
        let mut key: CK_OBJECT_HANDLE = 0;
        let mut found: CK_ULONG = 0;
        assert_eq!(
            f.C_FindObjects.unwrap()(session, &mut key, 1, &mut found),
            CKR_OK
        );
        assert_eq!(found, 1);
        assert_eq!(f.C_FindObjectsFinal.unwrap()(session), CKR_OK);

        for i in 0..20 {
            assert_eq!(round_trip(&m, session, key, i), CKR_OK);
        }
        // Member a fails: every operation still succeeds (on b), and health says so.
        std::fs::write(&control, "fail").unwrap();
        // The injector re-reads its control file at most every 10 ms.
        std::thread::sleep(Duration::from_millis(30));
        for i in 20..60 {
            assert_eq!(round_trip(&m, session, key, i), CKR_OK);
        }
        let a = member(&m, 0);
        assert_eq!(a.state, 2, "a UNAVAILABLE");
        assert_eq!(a.last_error, CKR_DEVICE_ERROR);
        assert!(a.failures >= 1);
        assert_eq!(member(&m, 1).state, 0);

        // Recovery: the probe puts a back.
        std::fs::write(&control, "ok").unwrap();
        let start = Instant::now();
        while member(&m, 0).state != 0 {
            assert!(start.elapsed() < Duration::from_secs(3), "a not back");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(round_trip(&m, session, key, 99), CKR_OK);

        // Member a hangs: the call that meets it waits one deadline (300 ms), then goes to b.
        std::fs::write(&control, "hang").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let mut worst = Duration::ZERO;
        for i in 100..110 {
            let t = Instant::now();
            assert_eq!(round_trip(&m, session, key, i), CKR_OK);
            worst = worst.max(t.elapsed());
        }
        println!("hung member through the module: worst round trip {worst:?} (deadline 300 ms)");
        assert!(worst >= Duration::from_millis(300), "{worst:?}");
        assert!(worst < Duration::from_millis(450), "{worst:?}");
        let a = member(&m, 0);
        assert_eq!(a.state, 2);
        assert!(a.stuck_calls >= 1);
        assert!(String::from_utf8_lossy(&a.last_error_text).contains("no answer within 300 ms"));
        std::fs::write(&control, "ok").unwrap();
        let start = Instant::now();
        while member(&m, 0).state != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "a not back after the hang"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        // Generation on a group without replication = "hsm" is refused.
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut len: CK_ULONG = 32;
        let mut yes: CK_BBOOL = CK_TRUE;
        let mut label = *b"new-key";
        let mut gen = [
            CK_ATTRIBUTE {
                type_: CKA_VALUE_LEN,
                pValue: (&mut len as *mut CK_ULONG).cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: (&mut yes as *mut CK_BBOOL).cast(),
                ulValueLen: 1,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: 7,
            },
        ];
        let mut rw: CK_SESSION_HANDLE = 0;
        assert_eq!(
            f.C_OpenSession.unwrap()(
                0,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                ptr::null_mut(),
                None,
                &mut rw
            ),
            CKR_OK
        );
        let mut new_key: CK_OBJECT_HANDLE = 0;
        assert_eq!(
            f.C_GenerateKey.unwrap()(rw, &mut mech, gen.as_mut_ptr(), 3, &mut new_key),
            CKR_FUNCTION_FAILED
        );
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
    }
}
