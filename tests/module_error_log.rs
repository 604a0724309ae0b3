//! A failed call leaves one log line, written at the C boundary: `C_Login: CKR_PIN_INCORRECT`
//! at debug (src/abi/guard.rs), through the built module as a consumer loads it. At the
//! default level (warn) the same failure writes nothing; a PIN is never in the line.

mod support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::path::Path;

const PIN: &str = "1234";
const WRONG_PIN: &str = "wrong-pin-9876";

/// A config over a fresh embedded token, logging to `log` at `level` (none: the default).
fn write_config(dir: &Path, log: &Path, level: Option<&str>) -> std::path::PathBuf {
    let pin = dir.join("user.pin");
    std::fs::write(&pin, PIN).unwrap();
    let conf = dir.join("pkcs11.toml");
    let level = level
        .map(|l| format!("log_level = {l:?}\n"))
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "{level}log_file = {log:?}\n\
             [[slot]]\nlabel = \"s\"\nbackends = [\"emb\"]\npin_state_file = {state:?}\n\
             [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {store:?}\npin_file = {pin:?}\n",
            log = log.display().to_string(),
            store = dir.join("emb.store").display().to_string(),
            // The wrong-PIN counter of this throwaway slot, not the user's (which would lock
            // after a few runs of this test).
            state = dir.join("pin-attempts.state").display().to_string(),
            pin = pin.display().to_string(),
        ),
    )
    .unwrap();
    conf
}

/// Load and initialise the module from `conf`, log in with a wrong PIN, finalise; what was
/// logged.
fn wrong_login_logs(conf: &Path, log: &Path) -> String {
    std::env::set_var("XKI_PKCS11_CONF", conf);
    let ctx = Pkcs11::new(support::built_module::built_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    let e = session
        .login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())))
        .unwrap_err();
    assert!(
        matches!(e, Error::Pkcs11(RvError::PinIncorrect, _)),
        "wrong PIN: {e}"
    );
    drop(session);
    ctx.finalize().unwrap();
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn a_failed_call_is_logged_once_at_the_boundary_at_debug() {
    // RUST_LOG would override the config's level.
    std::env::remove_var("RUST_LOG");
    std::env::set_var("XKI_EMBEDDED_TEST_KDF", "fast");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("debug.log");
    let logged = wrong_login_logs(&write_config(dir.path(), &log, Some("debug")), &log);
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("C_Login: CKR_PIN_INCORRECT"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the failed C_Login:\n{logged}");
    assert!(lines[0].contains("DEBUG"), "at debug: {}", lines[0]);
    assert!(
        !logged.contains(WRONG_PIN),
        "the PIN is never logged:\n{logged}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("default.log");
    let logged = wrong_login_logs(&write_config(dir.path(), &log, None), &log);
    assert!(
        !logged.contains("C_Login: CKR_PIN_INCORRECT"),
        "not at the default level (warn):\n{logged}"
    );
}
