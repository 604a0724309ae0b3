//! After fork() the module builds a brand-new backend in the child (the parent's is leaked).
//! This checks that `open` works there: SoftHSM2 2.6 resets itself in a child, so our
//! C_Initialize answers CKR_OK (or CKR_CRYPTOKI_ALREADY_INITIALIZED on libraries that do not),
//! and the child sees the parent's token keys.

mod support;

use support::softhsm_tokens::{config, pin, tokens};
use xki_pkcs11::backend::pkcs11::Pkcs11Backend;
use xki_pkcs11::backend::{Backend, NewKey};

/// Child exit codes.
const OWNED: i32 = 0;
const SHARED: i32 = 10;

fn child(ct: &[u8]) -> i32 {
    let b = match Pkcs11Backend::open("child", &config("forked"), pin()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("child: open failed: {} {}: {}", e.key, e.rv, e.problem);
            return 2;
        }
    };
    let keys = match b.list_secret_keys() {
        Ok(k) => k,
        Err(rv) => {
            eprintln!("child: list failed: {rv}");
            return 3;
        }
    };
    let Some(key) = keys.iter().find(|k| k.label == b"fork") else {
        return 4;
    };
    match b.gcm_decrypt(key.handle, &[1u8; 12], b"", ct) {
        Ok(pt) if &pt[..] == b"from parent" => {}
        other => {
            eprintln!("child: decrypt: {other:?}");
            return 5;
        }
    }
    let Ok(ct2) = b.gcm_encrypt(key.handle, &[2u8; 12], b"", b"from child") else {
        return 6;
    };
    if ct2.len() != 10 + 16 {
        return 7;
    }
    let code = if b.owns_library_initialisation() {
        OWNED
    } else {
        SHARED
    };
    b.shutdown();
    code
}

#[test]
fn open_works_in_a_forked_child() {
    tokens(&["forked"]);
    let parent = Pkcs11Backend::open("parent", &config("forked"), pin()).unwrap();
    let spec = NewKey {
        id: b"fork".to_vec(),
        label: b"fork".to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    };
    let k = parent.generate_aes_key(&spec).unwrap().handle;
    let ct = parent
        .gcm_encrypt(k, &[1u8; 12], b"", b"from parent")
        .unwrap();

    // SAFETY: fork in a test: the child only runs `child` (which opens its own backend, as the
    // module does after fork) and leaves with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(|| child(&ct)).unwrap_or(99);
        // SAFETY: terminate the child immediately, without running the parent's atexit
        // handlers or destructors (the parent's backend is leaked, as in the module).
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert!(
        code == OWNED || code == SHARED,
        "child failed with code {code}"
    );
    eprintln!(
        "forked child: C_Initialize {}",
        if code == OWNED {
            "answered CKR_OK (child owns its initialisation)"
        } else {
            "answered CKR_CRYPTOKI_ALREADY_INITIALIZED (shared)"
        }
    );

    // The parent is unaffected by the child's life and exit.
    let pt = parent.gcm_decrypt(k, &[1u8; 12], b"", &ct).unwrap();
    assert_eq!(&pt[..], b"from parent");
    assert!(parent.owns_library_initialisation());
    parent.shutdown();
}
