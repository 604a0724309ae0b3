//! Login state through the built module, on both slots: nothing is visible and nothing can be
//! generated or used before C_Login; a wrong PIN is refused; handles survive a re-login.
//! One test: login state is per token, so per process.

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;
use support::module_fixture::*;

#[test]
fn nothing_before_login() {
    let (_dir, ctx) = bare_module();
    for (i, slot) in ctx.get_slots_with_token().unwrap().into_iter().enumerate() {
        let name = SLOT_NAMES[i];
        let s = ctx.open_rw_session(slot).unwrap();
        assert_eq!(
            s.get_session_info().unwrap().session_state(),
            SessionState::RwPublic
        );
        // Not logged in: no key generation, nothing found.
        expect_rv(
            s.generate_key(&Mechanism::AesKeyGen, &secure_template("login-early")),
            RvError::UserNotLoggedIn,
        );
        assert!(find(&s, &[]).is_empty(), "{name}: objects before login");

        // Wrong PIN, then the right one.
        expect_rv(
            s.login(UserType::User, Some(&AuthPin::from("wrong-pin"))),
            RvError::PinIncorrect,
        );
        expect_rv(
            s.login(UserType::So, Some(&AuthPin::from(PIN))),
            RvError::UserTypeInvalid,
        );
        s.login(UserType::User, Some(&AuthPin::from(PIN))).unwrap();
        assert_eq!(
            s.get_session_info().unwrap().session_state(),
            SessionState::RwUser
        );
        let label = format!("login-{name}");
        let key = s
            .generate_key(&Mechanism::AesKeyGen, &secure_template(&label))
            .unwrap();
        assert_eq!(find_label(&s, &label), key);
        let (ct, mut iv) = encrypt_gcm(&s, EncryptIv::of_slot(i), key, 0, b"", b"x").unwrap();

        // Logged out: the key is invisible and its handle unusable.
        s.logout().unwrap();
        assert!(find(&s, &[]).is_empty(), "{name}: objects after logout");
        assert!(
            find(&s, &[Attribute::Label(label.clone().into_bytes())]).is_empty(),
            "{name}"
        );
        expect_rv(
            s.encrypt(&gcm(&mut iv, b""), key, b"x"),
            RvError::UserNotLoggedIn,
        );
        expect_rv(
            s.get_attributes(key, &[cryptoki::object::AttributeType::Label]),
            RvError::UserNotLoggedIn,
        );

        // Logged in again: same handle, same key.
        s.login(UserType::User, Some(&AuthPin::from(PIN))).unwrap();
        assert_eq!(find_label(&s, &label), key, "{name}: handle after re-login");
        assert_eq!(s.decrypt(&gcm(&mut iv, b""), key, &ct).unwrap(), b"x");

        // Session counts in CK_TOKEN_INFO (this test is alone in its process).
        let ro = ctx.open_ro_session(slot).unwrap();
        let counts = || {
            let mut info = pkcs11_sys::CK_TOKEN_INFO::default();
            let f = support::module_fixture::raw::table();
            // SAFETY: live out-struct.
            let rv = unsafe { f.C_GetTokenInfo.unwrap()(slot.id(), &mut info) };
            assert_eq!(rv, pkcs11_sys::CKR_OK);
            (info.ulSessionCount, info.ulRwSessionCount)
        };
        assert_eq!(counts(), (2, 1), "{name}: one RW + one RO session");
        assert_eq!(
            ro.get_session_info().unwrap().session_state(),
            SessionState::RoUser
        );
        drop(ro);
        assert_eq!(counts(), (1, 1), "{name}");
        assert_eq!(
            s.get_session_info().unwrap().session_state(),
            SessionState::RwUser
        );

        // Closing the token's last session logs it out.
        drop(s);
        assert_eq!(counts(), (0, 0), "{name}");
        let s = ctx.open_ro_session(slot).unwrap();
        assert_eq!(
            s.get_session_info().unwrap().session_state(),
            SessionState::RoPublic
        );
        assert!(
            find(&s, &[]).is_empty(),
            "{name}: objects in a fresh session"
        );
    }
}
