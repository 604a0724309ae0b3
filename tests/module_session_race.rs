//! Sessions opening and closing concurrently on one token: closing the last session logs the
//! token out (PKCS#11), but a session that is open and logged in must never be logged out by
//! another thread's close that raced with its open. One test, no long-lived sessions.

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use support::module_fixture::*;

#[test]
fn a_racing_close_never_logs_out_an_open_session() {
    let (_dir, ctx) = bare_module();
    let slots = ctx.get_slots_with_token().unwrap();
    for (i, slot) in slots.into_iter().enumerate() {
        let name = SLOT_NAMES[i];
        let key = {
            let s = ctx.open_rw_session(slot).unwrap();
            login(&s);
            s.generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &secure_template(&format!("race-{name}")),
            )
            .unwrap()
        };
        let failures = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        let s = ctx.open_rw_session(slot).unwrap();
                        match s.login(UserType::User, Some(&AuthPin::from(PIN))) {
                            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                            Err(e) => panic!("{name}: login: {e}"),
                        }
                        match encrypt_gcm(&s, EncryptIv::of_slot(i), key, 0, b"", b"x") {
                            Ok(_) => {}
                            Err(Error::Pkcs11(RvError::UserNotLoggedIn, _)) => {
                                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => panic!("{name}: encrypt: {e}"),
                        }
                    }
                });
            }
        });
        assert_eq!(
            failures.into_inner(),
            0,
            "{name}: open, logged-in sessions were logged out by another thread's close"
        );
    }
}
