//! CloudHSM's PIN format `<user>:<password>` (its own binary: a login is per token and
//! process in SoftHSM2, so the refusals must be seen before any login succeeds).

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn cloudhsm_wants_user_colon_password_and_forwards_the_password() {
    let dir = tempfile::tempdir().unwrap();
    new_token(dir.path());
    let ctx = Pkcs11::new(mode_copy(dir.path(), "cloudhsm")).expect("load cloudhsm copy");
    init(&ctx);
    let s = session(&ctx);
    let login = |pin: &str| s.login(UserType::User, Some(&AuthPin::from(pin)));
    // No user name: refused by the emulator.
    assert_eq!(rv_of(login(PIN)), RvError::PinIncorrect, "bare password");
    assert_eq!(
        rv_of(login(":1234")),
        RvError::PinIncorrect,
        "empty user name"
    );
    // A user name and a wrong password: SoftHSM2 refuses the password it was given.
    assert_eq!(
        rv_of(login("xki:9999")),
        RvError::PinIncorrect,
        "wrong password"
    );
    login(&format!("xki:{PIN}")).expect("user:password logs in");
}
