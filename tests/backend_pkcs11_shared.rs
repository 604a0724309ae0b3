//! Shared ownership of the vendor library: when the host process initialised SoftHSM2 itself,
//! the backend shares that initialisation and never finalizes it. Its own binary, because the
//! library state is process-wide.

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::RawAuthPin;
use support::softhsm_tokens::{config, pin, tokens, MODULE, PIN};
use xki_pkcs11::backend::pkcs11::Pkcs11Backend;
use xki_pkcs11::backend::{Backend, NewKey};

#[test]
fn host_initialised_library_is_shared_and_not_finalized() {
    tokens(&["host"]);
    // The host process initialises the library first.
    let host = Pkcs11::new(MODULE).unwrap();
    host.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("host C_Initialize");
    let slot = host
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| host.get_token_info(*s).unwrap().label() == "host")
        .expect("host token");
    let host_session = host.open_rw_session(slot).unwrap();
    host_session
        .login_with_raw(UserType::User, &RawAuthPin::new(Box::new(PIN.to_vec())))
        .unwrap();

    // The backend answers ALREADY_INITIALIZED with shared ownership.
    let b = Pkcs11Backend::open("shared", &config("host"), pin()).expect("open on host's init");
    assert!(!b.owns_library_initialisation());
    let spec = NewKey {
        id: b"k".to_vec(),
        label: b"k".to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    };
    let k = b.generate_aes_key(&spec).unwrap();
    let ct = b.gcm_encrypt(k.handle, &[0u8; 12], b"", b"hi").unwrap();
    b.shutdown();
    drop(b);

    // The library was not finalized: the host's session still works.
    let mut r = [0u8; 16];
    host_session
        .generate_random_slice(&mut r)
        .expect("host session alive");
    host_session.get_session_info().expect("host session alive");
    assert!(!host.get_slots_with_token().unwrap().is_empty());

    // A second backend after the first one left still shares (and still never finalizes).
    let b2 = Pkcs11Backend::open("shared2", &config("host"), pin()).expect("reopen");
    assert!(!b2.owns_library_initialisation());
    let back = b2.gcm_decrypt(k.handle, &[0u8; 12], b"", &ct).unwrap();
    assert_eq!(&back[..], b"hi");

    // Forked child of a host that initialised the library itself: the child's new backend
    // shares the (copied) host initialisation and works.
    // SAFETY: the child only opens a backend, encrypts, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let c = Pkcs11Backend::open("child", &config("host"), pin()).expect("open in child");
            let back = c
                .gcm_decrypt(k.handle, &[0u8; 12], b"", &ct)
                .expect("decrypt in child");
            assert_eq!(&back[..], b"hi");
            if c.owns_library_initialisation() {
                1
            } else {
                0
            }
        })
        .unwrap_or(99);
        // SAFETY: leave the child at once, running no destructors of the parent's objects.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );

    drop(b2);
    host_session.get_session_info().expect("host session alive");

    drop(host_session);
    host.finalize()
        .expect("the host finalizes its own initialisation");
}
