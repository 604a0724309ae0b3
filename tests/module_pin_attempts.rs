//! The user-PIN attempt limit through the BUILT module, on both slots (SoftHSM2 and embedded),
//! with `max_pin_attempts = 3` and the counters in `pin_state_file`s of the test's directory:
//! failures are counted across processes (a second process run from this binary adds one)
//! and across restarts; `CK_TOKEN_INFO` reports COUNT_LOW, FINAL_TRY and LOCKED truthfully;
//! a locked slot answers `CKR_PIN_LOCKED` even to the right PIN; the operator's unlock (the
//! function `xki-proxy pin unlock` runs) lifts it; every failure, the lock, the refusals and
//! the unlock are audit records. One test: login state is per process.

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pkcs11_sys::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::module_fixture::*;

const MAX: u32 = 3;

/// The fixture's two-slot config with the attempt policy added to each slot.
fn write_pin_config(dir: &Path, backend: &BackendToken) -> PathBuf {
    let conf = write_config(dir, Options::default(), backend);
    let mut text = std::fs::read_to_string(&conf).unwrap();
    for label in SLOT_LABELS {
        let line = format!("label = \"{label}\"\n");
        let state = dir.join(format!("pin-{label}.state"));
        text = text.replace(
            &line,
            &format!(
                "{line}max_pin_attempts = {MAX}\npin_state_file = \"{}\"\n",
                state.display()
            ),
        );
    }
    std::fs::write(&conf, text).unwrap();
    conf
}

/// The PIN flags of `CK_TOKEN_INFO`.
fn pin_flags(slot: Slot) -> CK_FLAGS {
    let mut info = CK_TOKEN_INFO::default();
    let f = raw::table();
    // SAFETY: a live out-struct.
    let rv = unsafe { f.C_GetTokenInfo.unwrap()(slot.id(), &mut info) };
    assert_eq!(rv, CKR_OK);
    info.flags & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)
}

fn login(ctx: &Pkcs11, slot: Slot, pin: &str) -> cryptoki::error::Result<()> {
    let s = ctx.open_ro_session(slot).unwrap();
    let r = s.login(UserType::User, Some(&AuthPin::from(pin)));
    if r.is_ok() {
        s.logout().unwrap();
    }
    r
}

/// The second process: one wrong PIN on slot `XKI_PIN_CHILD_SLOT`, after checking that it
/// sees the parent's failure. Prints `CHILD_OK` when all held.
#[test]
fn child_wrong_pin() {
    let Some(index) = std::env::var_os("XKI_PIN_CHILD_SLOT") else {
        return; // only as the parent's second process
    };
    let index: usize = index.to_str().unwrap().parse().unwrap();
    let ctx = Pkcs11::new(so_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[index];
    assert_eq!(pin_flags(slot), CKF_USER_PIN_COUNT_LOW, "parent's failure");
    expect_rv(login(&ctx, slot, "child-guess"), RvError::PinIncorrect);
    println!("CHILD_OK");
}

#[test]
fn wrong_pins_lock_the_slot_across_processes_and_restarts_until_the_operator_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let backend = new_backend_token(dir.path(), SOFTHSM_TOKEN, PIN);
    let config = write_pin_config(dir.path(), &backend);
    set_env(&backend, &config);
    let mut ctx = Pkcs11::new(so_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    for (index, name) in SLOT_NAMES.iter().enumerate() {
        let slot = ctx.get_slots_with_token().unwrap()[index];
        assert_eq!(pin_flags(slot), 0, "{name}: fresh");
        // A good login resets nothing it should not; a wrong one counts.
        login(&ctx, slot, PIN).unwrap();
        expect_rv(login(&ctx, slot, "wrong-1"), RvError::PinIncorrect);
        assert_eq!(pin_flags(slot), CKF_USER_PIN_COUNT_LOW, "{name}");

        // Another process sees the counter and adds its failure.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_wrong_pin", "--nocapture"])
            .env("XKI_PIN_CHILD_SLOT", index.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD_OK"),
            "{name}: child: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            pin_flags(slot),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY,
            "{name}: one try left"
        );

        // The third consecutive failure locks; then even the right PIN is refused.
        expect_rv(login(&ctx, slot, "wrong-3"), RvError::PinIncorrect);
        assert_eq!(
            pin_flags(slot),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED,
            "{name}: locked"
        );
        expect_rv(login(&ctx, slot, PIN), RvError::PinLocked);
    }

    // A restart of the module (C_Finalize, C_Initialize) keeps the lock.
    ctx.finalize().unwrap();
    ctx = Pkcs11::new(so_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    for (index, name) in SLOT_NAMES.iter().enumerate() {
        let slot = ctx.get_slots_with_token().unwrap()[index];
        assert_ne!(pin_flags(slot) & CKF_USER_PIN_LOCKED, 0, "{name}");
        expect_rv(login(&ctx, slot, PIN), RvError::PinLocked);
    }

    // The operator unlocks (what `xki-proxy pin unlock --slot LABEL` runs).
    let cfg = xki_pkcs11::config::Config::from_file(&config).unwrap();
    for (index, label) in SLOT_LABELS.iter().enumerate() {
        assert_eq!(
            xki_pkcs11::pin_attempts::operator_unlock(&cfg, label),
            Ok(MAX)
        );
        let slot = ctx.get_slots_with_token().unwrap()[index];
        assert_eq!(pin_flags(slot), 0, "{label}: unlocked");
        login(&ctx, slot, PIN).unwrap();
    }
    assert!(xki_pkcs11::pin_attempts::operator_unlock(&cfg, "no-such-slot").is_err());

    // The audit trail: 3 failures and a lock per slot, the refused right PINs, the unlocks;
    // never a PIN.
    ctx.finalize().unwrap();
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for label in SLOT_LABELS {
        let count = |needle: &str| {
            audit
                .lines()
                .filter(|l| l.contains(&format!("slot=\"{label}\"")) && l.contains(needle))
                .count()
        };
        // Three failures (one from the second process), the lock, two refusals of the
        // right PIN (before and after the restart), the unlock.
        assert_eq!(count("op=login slot"), 5, "{label}");
        let login_with = |result: &str| {
            audit
                .lines()
                .filter(|l| {
                    l.contains(&format!("op=login slot=\"{label}\""))
                        && l.ends_with(&format!("result={result}"))
                })
                .count()
        };
        assert_eq!(login_with("CKR_PIN_INCORRECT"), 3, "{label}");
        assert_eq!(login_with("CKR_PIN_LOCKED"), 2, "{label}");
        assert_eq!(count("op=pin-locked"), 1, "{label}");
        assert_eq!(count("op=pin-unlock"), 1, "{label}");
    }
    for secret in ["wrong-1", "child-guess", "wrong-3"] {
        assert!(!audit.contains(secret), "a PIN in the audit trail");
    }
}
