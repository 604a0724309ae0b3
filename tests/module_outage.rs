//! A SoftHSM2 token that goes away while the BUILT module serves it, then comes back.
//!
//! Real outages of the throwaway token, no emulation: its token directory moved away (what an
//! unmounted store looks like to SoftHSM2), made unreadable, and the process running out of
//! file descriptors. SoftHSM2 answers both with an empty `C_FindObjects` and
//! `CKR_OBJECT_HANDLE_INVALID` for known keys (see `src/backend/pkcs11/quirks.rs`); through the
//! module, callers must see `CKR_DEVICE_ERROR` instead of "no such key", the `XKI Status`
//! interface must report the backend UNAVAILABLE, and once the token is back the same
//! sessions and key handles work again without `C_Finalize`. Own binary: the outages are
//! process-wide.

mod support;

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use pkcs11_sys::*;
use std::ptr;
use std::time::{Duration, Instant};
use support::module_fixture::*;

/// `XKI_MEMBER_*` of include/xki_pkcs11.h.
const ACTIVE: CK_ULONG = 0;
const UNAVAILABLE: CK_ULONG = 2;

/// The `XKI Status` member record, as include/xki_pkcs11.h lays it out.
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

/// The state and failure count of the SoftHSM2 slot's backend, from `XKI Status`.
fn softhsm_member() -> (CK_ULONG, CK_ULONG, String) {
    let path = std::ffi::CString::new(so_path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: dlopen/dlsym with valid NUL-terminated strings (the module is already loaded, so
    // this returns the same mapping); the symbol has the C_GetInterface signature; the tables
    // live as long as the never-closed library; the out-struct has the documented layout.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!lib.is_null());
        let sym = libc::dlsym(lib, c"C_GetInterface".as_ptr());
        assert!(!sym.is_null());
        let get: CK_C_GetInterface = std::mem::transmute(sym);
        let mut iface: CK_INTERFACE_PTR = ptr::null_mut();
        let name = c"XKI Status".as_ptr().cast_mut().cast();
        assert_eq!(get.unwrap()(name, ptr::null_mut(), &mut iface, 0), CKR_OK);
        let status = &*(*iface).pFunctionList.cast::<StatusList>();
        let mut s: MemberStatus = std::mem::zeroed();
        assert_eq!((status.status)(0, 0, &mut s), CKR_OK);
        let text = String::from_utf8_lossy(&s.last_error_text)
            .trim_end_matches(['\0', ' '])
            .to_string();
        (s.state, s.failures, text)
    }
}

fn encrypt(session: &Session, key: ObjectHandle, n: u8) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = [n; 12];
    session.encrypt(&gcm(&mut iv, b"aad"), key, b"outage")
}

/// Poll `f` every 50 ms for up to 10 s (recovery backs off to at most 5 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 10 s");
}

/// During an outage: device errors everywhere, never "no such key"; UNAVAILABLE.
fn assert_outage(session: &Session, key: ObjectHandle, label: &str) {
    expect_rv(encrypt(session, key, 1), RvError::DeviceError);
    expect_rv(
        session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]),
        RvError::DeviceError,
    );
    expect_rv(session.find_objects(&[]), RvError::DeviceError);
    let (state, _, text) = softhsm_member();
    assert_eq!(
        state, UNAVAILABLE,
        "member state during the outage ({text})"
    );
}

/// After an outage: the same session and handle work again, and the old ciphertext opens.
fn assert_back(session: &Session, key: ObjectHandle, label: &str, ct: &[u8], failures: u64) {
    eventually(
        "encrypt through the same session after the token came back",
        || encrypt(session, key, 2).is_ok(),
    );
    assert_eq!(find_label(session, label), key, "same object handle");
    let mut iv = [0u8; 12];
    let pt = session
        .decrypt(&gcm(&mut iv, b"aad"), key, ct)
        .expect("decrypt a ciphertext from before the outage");
    assert_eq!(pt, b"outage");
    let (state, seen, _) = softhsm_member();
    assert_eq!(state, ACTIVE);
    assert_eq!(seen, failures, "outages counted");
}

/// Drop (`false`) or restore (`true`) CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in the
/// effective set of the calling thread only (Linux capabilities are per thread), so that, as
/// root, file permissions apply to this thread's calls into SoftHSM2: the "unreadable token
/// directory" outage. They stay in the permitted set, so they can be raised again.
fn dac_override(on: bool) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const DAC: u32 = (1 << 1) | (1 << 2);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as capget(2)
    // documents; pid 0 is the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        if on {
            data[0].effective |= DAC & data[0].permitted;
        } else {
            data[0].effective &= !DAC;
        }
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn token_outages_are_device_errors_and_the_slot_comes_back_without_finalize() {
    // This test is about SoftHSM2's file store going away under the module (its directory
    // moved or unreadable, descriptors exhausted) and the module's SoftHSM2 recovery
    // (re-initialising the library). It runs in the default pass; under XKI_ITEST_BACKEND a
    // vendor emulator hides SoftHSM2's identity and kryoptic has no such directory.
    if backend_kind() != BackendKind::SoftHsm {
        eprintln!(
            "module_outage: SoftHSM2's own outage behaviour; not applicable to {} (runs in the default pass)",
            backend_kind().name()
        );
        return;
    }
    let (dir, ctx) = bare_module();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    login(&session);
    let label = "outage-key";
    let key = session
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &secure_template(label),
        )
        .unwrap();
    let ct = encrypt(&session, key, 0).unwrap();
    assert_eq!(softhsm_member().0, ACTIVE);

    // 1. The token directory moved away, then back.
    let tokens = dir.path().join("softhsm/tokens");
    let away = dir.path().join("softhsm/tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    assert_outage(&session, key, label);
    // Calls keep failing fast (no storm of recovery attempts) while it is gone.
    let start = Instant::now();
    for i in 0..200 {
        expect_rv(encrypt(&session, key, i), RvError::DeviceError);
    }
    assert!(start.elapsed() < Duration::from_secs(5), "fail fast");
    std::fs::rename(&away, &tokens).unwrap();
    assert_back(&session, key, label, &ct, 1);

    // 2. The process out of file descriptors, then not.
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
        assert!(held.len() < 1_100_000, "no descriptor limit?");
    }
    let during = session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]);
    let state = softhsm_member().0;
    drop(held);
    expect_rv(during, RvError::DeviceError);
    assert_eq!(state, UNAVAILABLE, "member state without descriptors");
    assert_back(&session, key, label, &ct, 2);

    // 2b. The token directory unreadable (mode 000), then readable again. As root, file
    // permissions bind only without the DAC override capabilities: this thread drops them.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o000)).unwrap();
    if is_root() {
        dac_override(false);
    }
    let during = session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]);
    let state = softhsm_member().0;
    if is_root() {
        dac_override(true);
    }
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).unwrap();
    expect_rv(during, RvError::DeviceError);
    assert_eq!(state, UNAVAILABLE, "member state while unreadable");
    assert_back(&session, key, label, &ct, 3);

    // 3. The same outage with four threads doing round trips through it and the recovery
    // (which re-initialises SoftHSM2 while they call): each call either works with the right
    // key or fails with CKR_DEVICE_ERROR; nothing else, and no crash.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let (ctx, stop) = (&ctx, &stop);
                scope.spawn(move || {
                    let s = ctx.open_rw_session(slot).unwrap();
                    let (mut ok, mut down) = (0, 0);
                    let mut n = 0u8;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n = n.wrapping_add(1);
                        let mut iv = [t, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        let r = s
                            .encrypt(&gcm(&mut iv, b"aad"), key, b"concurrent")
                            .and_then(|ct| s.decrypt(&gcm(&mut iv, b"aad"), key, &ct));
                        match r {
                            Ok(pt) => {
                                assert_eq!(pt, b"concurrent");
                                ok += 1;
                            }
                            Err(e) => {
                                assert_eq!(rv(e), RvError::DeviceError, "thread {t}");
                                down += 1;
                            }
                        }
                    }
                    (ok, down)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        std::fs::rename(&tokens, &away).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        std::fs::rename(&away, &tokens).unwrap();
        eventually("round trips after the third outage", || {
            encrypt(&session, key, 3).is_ok()
        });
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            let (ok, down) = w.join().unwrap();
            assert!(
                ok > 0 && down > 0,
                "each thread saw both: {ok} ok, {down} down"
            );
        }
    });
    assert_back(&session, key, label, &ct, 4);
}
