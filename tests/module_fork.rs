//! fork(): the child of a process using the module gets CKR_CRYPTOKI_NOT_INITIALIZED until it
//! calls C_Initialize itself, then works on both slots; the parent keeps working.

mod support;

use pkcs11_sys::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use support::module_fixture::raw;
use support::module_fixture::*;

fn round_trip(t: &TokenCtx, key: cryptoki::object::ObjectHandle, what: &str) {
    let (ct, mut iv) = t.encrypt(key, 6, what.as_bytes(), what.as_bytes()).unwrap();
    let pt = t
        .session
        .decrypt(&gcm(&mut iv, what.as_bytes()), key, &ct)
        .unwrap();
    assert_eq!(pt, what.as_bytes());
}

/// What the child checks; any panic becomes a non-zero exit status.
fn child() {
    let fx = fixture();
    let f = raw::table();
    let mut info = CK_INFO::default();
    // SAFETY: live out-struct / NULL args.
    unsafe {
        assert_eq!(
            f.C_GetInfo.unwrap()(&mut info),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        let mut n: CK_ULONG = 0;
        let rv = f.C_GetSlotList.unwrap()(CK_TRUE, ptr::null_mut(), &mut n);
        assert_eq!(rv, CKR_CRYPTOKI_NOT_INITIALIZED);
        let mut h: CK_SESSION_HANDLE = 0;
        let rv = f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut h);
        assert_eq!(rv, CKR_CRYPTOKI_NOT_INITIALIZED);
        // The parent's sessions are not the child's.
        assert_eq!(
            f.C_Finalize.unwrap()(ptr::null_mut()),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        assert_eq!(f.C_Initialize.unwrap()(ptr::null_mut()), CKR_OK);
    }
    for_each_token_of(fx, |t| {
        let key = find_label(&t.session, &t.label("fork"));
        round_trip(t, key, "child");
        let fresh = t.keygen(&t.label("fork-child"), &[]);
        round_trip(t, fresh, "child key");
    });
}

#[test]
fn child_after_fork_must_initialize_and_then_works() {
    let fx = fixture();
    for_each_token(|t| {
        let key = t.keygen(&t.label("fork"), &[]);
        round_trip(t, key, "parent before");
    });
    // SAFETY: the child only runs `child()` and leaves with _exit, never returning into the
    // test harness (whose other threads do not exist in the child).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match catch_unwind(AssertUnwindSafe(child)) {
            Ok(()) => 0,
            Err(_) => 3,
        };
        // SAFETY: terminate the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed (status {status:#x}); its panic message is above"
    );
    // The parent is unaffected.
    for_each_token_of(fx, |t| {
        let key = find_label(&t.session, &t.label("fork"));
        round_trip(t, key, "parent after");
    });
}
