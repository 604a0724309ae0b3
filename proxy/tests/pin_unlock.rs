//! `xki-proxy pin unlock`: the operator's unlock of a module slot locked by wrong PINs (the
//! lock itself is tested through the module in tests/module_pin_attempts.rs).

use std::process::Command;

#[test]
fn pin_unlock_clears_the_counter_and_writes_an_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pin"), "1234").unwrap();
    let state = d.join("state/vault.state");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, "failures=10\n").unwrap();
    let conf = d.join("pkcs11.toml");
    std::fs::write(
        &conf,
        format!(
            "audit_file = {audit:?}\n\
             [[slot]]\nlabel = \"vault\"\nbackends = [\"emb\"]\nuser_pin_file = {pin:?}\n\
             pin_state_file = {state:?}\n\
             [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {store:?}\nkey_file = {key:?}\n",
            audit = d.join("audit.log").display().to_string(),
            pin = d.join("pin").display().to_string(),
            state = state.display().to_string(),
            store = d.join("emb.store").display().to_string(),
            key = d.join("emb.key").display().to_string(),
        ),
    )
    .unwrap();
    let run = |slot: &str| {
        Command::new(env!("CARGO_BIN_EXE_xki-proxy"))
            .args(["pin", "unlock", "--slot", slot, "--module-config"])
            .arg(&conf)
            .output()
            .unwrap()
    };
    let out = run("vault");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 consecutive failed logins"));
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "failures=0\n");
    let audit = std::fs::read_to_string(d.join("audit.log")).unwrap();
    assert!(
        audit.contains("op=pin-unlock slot=\"vault\"") && audit.contains("result=CKR_OK"),
        "{audit}"
    );
    // An unknown slot is an error that names it.
    let out = run("nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
}
