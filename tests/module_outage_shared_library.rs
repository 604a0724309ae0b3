//! Recovering one SoftHSM2 token re-initialises the whole library (see
//! `src/backend/pkcs11/quirks.rs`), which kills the sessions and renumbers the object handles
//! of every other token the module serves through the same library. This test serves two
//! SoftHSM2 tokens as two slots, takes only token A's directory away and back, and checks that
//! after A's recovery every key of both slots still is the same key: ciphertexts made before
//! decrypt with the same module handles (GCM would reject a different key), and new ones
//! round-trip. Own binary: the module and SoftHSM2 are process-wide.

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use std::time::{Duration, Instant};
use support::module_fixture::*;

fn encrypt(s: &Session, key: ObjectHandle) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = [7u8; 12];
    s.encrypt(&gcm(&mut iv, b"aad"), key, b"same key?")
}

fn decrypts(s: &Session, key: ObjectHandle, ct: &[u8]) -> bool {
    let mut iv = [7u8; 12];
    s.decrypt(&gcm(&mut iv, b"aad"), key, ct)
        .is_ok_and(|pt| pt == b"same key?")
}

#[test]
fn recovering_one_token_keeps_the_other_tokens_keys_straight() {
    run_script(&repo("softhsm/ensure-installed.sh"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("softhsm");
    for label in ["tok-a", "tok-b"] {
        run_script(
            &repo("softhsm/new-token.sh"),
            &[store.as_os_str(), label.as_ref(), PIN.as_ref()],
        );
    }
    let pin = dir.path().join("user.pin");
    std::fs::write(&pin, PIN).unwrap();
    let conf = dir.path().join("pkcs11.toml");
    std::fs::write(
        &conf,
        format!(
            "log_level = \"info\"\nlog_file = {log:?}\n\
             [[slot]]\nlabel = \"slot-a\"\nbackends = [\"a\"]\n\
             [[slot]]\nlabel = \"slot-b\"\nbackends = [\"b\"]\n\
             [backend.a]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"tok-a\"\npin_file = {pin:?}\n\
             [backend.b]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"tok-b\"\npin_file = {pin:?}\n",
            log = dir.path().join("module.log").display().to_string(),
            pin = pin.display().to_string(),
        ),
    )
    .unwrap();
    // Always SoftHSM2 (two tokens of one library), whatever XKI_ITEST_BACKEND says.
    std::env::set_var("SOFTHSM2_CONF", store.join("softhsm2.conf"));
    std::env::set_var("XKI_PKCS11_CONF", &conf);
    let ctx = Pkcs11::new(so_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slots = ctx.get_slots_with_token().unwrap();
    let (sa, sb) = (
        ctx.open_rw_session(slots[0]).unwrap(),
        ctx.open_rw_session(slots[1]).unwrap(),
    );
    login(&sa);
    login(&sb);
    // Several keys per token, created interleaved, so a renumbering would mix them up.
    let mut keys = Vec::new();
    for i in 0..3 {
        for (s, name) in [(&sa, "a"), (&sb, "b")] {
            let k = s
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &secure_template(&format!("{name}{i}")),
                )
                .unwrap();
            keys.push((s, k, encrypt(s, k).unwrap()));
        }
    }

    // Token A's own directory goes away (token B's stays).
    let token_dirs: Vec<_> = std::fs::read_dir(store.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(token_dirs.len(), 2);
    let a_dir = token_dirs
        .iter()
        .find(|d| {
            std::fs::read_dir(d).unwrap().any(|f| {
                std::fs::read(f.unwrap().path())
                    .map(|b| b.windows(5).any(|w| w == b"tok-a"))
                    .unwrap_or(false)
            })
        })
        .expect("token A's directory")
        .clone();
    let away = dir.path().join("a-away");
    std::fs::rename(&a_dir, &away).unwrap();
    let (_, ka, _) = keys[0];
    expect_rv(encrypt(&sa, ka), RvError::DeviceError);
    std::fs::rename(&away, &a_dir).unwrap();

    let until = Instant::now() + Duration::from_secs(10);
    while encrypt(&sa, ka).is_err() {
        assert!(Instant::now() < until, "token A not back within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.path().join("module.log")).unwrap();
    assert!(
        log.contains("backend a: token back in service"),
        "A recovered through the module: {log}"
    );
    for (s, k, _) in &keys {
        encrypt(s, *k).unwrap();
    }
    let log = std::fs::read_to_string(dir.path().join("module.log")).unwrap();
    assert!(
        log.contains("backend b: the library was re-initialised for another token"),
        "B caught up with A's re-initialisation: {log}"
    );
    for (s, k, ct) in &keys {
        assert!(decrypts(s, *k, ct), "key {k} is not the same key any more");
        assert!(decrypts(s, *k, &encrypt(s, *k).unwrap()));
    }
}
