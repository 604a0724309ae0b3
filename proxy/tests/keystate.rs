//! Key status apart from key usage, both in the HSM (issue 11), through the real proxy over
//! our module on SoftHSM2, on the embedded token, and on a replica group of two embedded
//! tokens. The crash and purge tests need the module's and the proxy's TEST-ONLY switches:
//! `cargo test -p xki-proxy --features fault-injection --test keystate`.

mod common;

use common::*;
use serde_json::{json, Value};

fn setup(tok: &Token) -> Cred {
    let a = Cred::new(tok, 0);
    config(
        tok,
        "",
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    a
}

fn meta(srv: &Server, s: &Signer, key: &str) -> Value {
    post(
        &srv.addr,
        Some(s),
        &key_path("", key, "metadata"),
        &json!({"requestMetadata": md("DescribeKey")}),
    )
    .expect_ok()
}

fn encrypt(srv: &Server, s: &Signer, key: &str, cdiv: bool) -> Resp {
    let mut body = encrypt_body(b"state matters", None);
    if !cdiv {
        body.as_object_mut()
            .unwrap()
            .remove("ciphertextDataIntegrityValueAlgorithm");
    }
    post(&srv.addr, Some(s), &key_path("", key, "encrypt"), &body)
}

fn decrypt(srv: &Server, s: &Signer, key: &str, enc: &Value) -> Resp {
    post(
        &srv.addr,
        Some(s),
        &key_path("", key, "decrypt"),
        &decrypt_body(enc, None),
    )
}

fn names(e: bool, d: bool) -> Value {
    let mut v = Vec::new();
    if e {
        v.push("ENCRYPT");
    }
    if d {
        v.push("DECRYPT");
    }
    json!(v)
}

/// `keys list --json` entry of one key.
fn listed(tok: &Token, key: &str) -> Option<Value> {
    let out = cli_ok(tok, &["keys", "list", "--json"]);
    let all: Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|k| k["externalKeyId"] == key)
        .cloned()
}

/// Every operation on `key`: `enabled` = Some(usage) for an ENABLED key, None for DISABLED.
fn check_operations(
    srv: &Server,
    s: &Signer,
    key: &str,
    good: &Value,
    enabled: Option<(bool, bool)>,
) {
    let enc = encrypt(srv, s, key, false);
    let cdiv = encrypt(srv, s, key, true);
    let dec = decrypt(srv, s, key, good);
    let Some((e, d)) = enabled else {
        for r in [&enc, &cdiv, &dec] {
            r.expect_err(400, "InvalidStateException");
        }
        return;
    };
    let usage_err = |r: &Resp| {
        r.expect_err(400, "InvalidKeyUsageException");
        assert!(!r.body.contains("ciphertext\""), "{}", r.body);
    };
    if e {
        let v = enc.expect_ok();
        assert!(v.get("ciphertextDataIntegrityValue").is_none());
    } else {
        usage_err(&enc);
    }
    // A CDIV promises a later Decrypt succeeds: only on keys that can do both.
    if e && d {
        assert!(cdiv.expect_ok()["ciphertextDataIntegrityValue"].is_string());
    } else {
        usage_err(&cdiv);
    }
    if d {
        assert_eq!(unb64(&dec.expect_ok()["plaintext"]), b"state matters");
    } else {
        usage_err(&dec);
    }
}

/// Every status x usage x operation x CDIV, disable -> enable restoring usage exactly, and
/// atomic creation with the final usage.
fn error_names_matrix(tok: Token) {
    let a = setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "k"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    let good = encrypt(&srv, &s, "k", false).expect_ok();
    for (usage, e, d) in [
        ("encrypt", true, false),
        ("decrypt", false, true),
        ("both", true, true),
    ] {
        cli_ok(&tok, &["keys", "enable", "k", "--usage", usage]);
        let m = meta(&srv, &s, "k");
        assert_eq!(
            (&m["keyStatus"], &m["keyUsage"]),
            (&json!("ENABLED"), &names(e, d))
        );
        check_operations(&srv, &s, "k", &good, Some((e, d)));

        cli_ok(&tok, &["keys", "disable", "k"]);
        let m = meta(&srv, &s, "k");
        // The true usage, whatever the status.
        assert_eq!(
            (&m["keyStatus"], &m["keyUsage"]),
            (&json!("DISABLED"), &names(e, d))
        );
        check_operations(&srv, &s, "k", &good, None);
        let l = listed(&tok, "k").unwrap();
        assert_eq!(
            (&l["keyStatus"], &l["keyUsage"]),
            (&json!("DISABLED"), &names(e, d))
        );
        assert_eq!(l["hsmAllows"], json!([]), "{l}");

        // Enabling restores exactly that usage.
        let out = cli_ok(&tok, &["keys", "enable", "k"]);
        assert!(out.contains("ENABLED"), "{out}");
        let m = meta(&srv, &s, "k");
        assert_eq!(
            (&m["keyStatus"], &m["keyUsage"]),
            (&json!("ENABLED"), &names(e, d))
        );
        check_operations(&srv, &s, "k", &good, Some((e, d)));
    }

    // Created with its final usage: what the console asks for, in text and JSON.
    let out = cli_ok(
        &tok,
        &[
            "keys", "create", "--label", "enc-only", "--usage", "encrypt",
        ],
    );
    for want in [
        "External Key ID: enc-only",
        "Key spec:        AES_256",
        "Key usage:       ENCRYPT",
        "Key status:      ENABLED",
    ] {
        assert!(out.contains(want), "{out}");
    }
    let v: Value = serde_json::from_str(&cli_ok(
        &tok,
        &[
            "keys", "create", "--label", "dec-only", "--usage", "decrypt", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (
            &v["externalKeyId"],
            &v["keySpec"],
            &v["keyUsage"],
            &v["keyStatus"]
        ),
        (
            &json!("dec-only"),
            &json!("AES_256"),
            &json!(["DECRYPT"]),
            &json!("ENABLED")
        )
    );
    assert_eq!(
        listed(&tok, "enc-only").unwrap()["hsmAllows"],
        json!(["ENCRYPT"])
    );
    assert_eq!(
        listed(&tok, "dec-only").unwrap()["hsmAllows"],
        json!(["DECRYPT"])
    );
    check_operations(&srv, &s, "enc-only", &good, Some((true, false)));
}

#[test]
fn error_names_for_every_status_usage_operation_and_cdiv_softhsm2() {
    error_names_matrix(Token::new());
}

#[test]
fn error_names_for_every_status_usage_operation_and_cdiv_embedded() {
    error_names_matrix(Token::embedded());
}

/// Two proxies on one token (and the admin CLI as a third process): a change is visible to
/// both at once, with no cache to wait for.
fn two_proxies(tok: Token) {
    let a = setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "shared"]);
    let (p1, p2) = (Server::start(&tok), Server::start(&tok));
    let s = Signer::new(&a);
    encrypt(&p1, &s, "shared", true).expect_ok();
    encrypt(&p2, &s, "shared", true).expect_ok();
    cli_ok(&tok, &["keys", "disable", "shared"]);
    for p in [&p1, &p2] {
        assert_eq!(meta(p, &s, "shared")["keyStatus"], "DISABLED");
        encrypt(p, &s, "shared", false).expect_err(400, "InvalidStateException");
    }
    cli_ok(&tok, &["keys", "enable", "shared"]);
    for p in [&p1, &p2] {
        let m = meta(p, &s, "shared");
        assert_eq!(
            (&m["keyStatus"], &m["keyUsage"]),
            (&json!("ENABLED"), &json!(["ENCRYPT", "DECRYPT"]))
        );
        encrypt(p, &s, "shared", true).expect_ok();
    }
    cli_ok(&tok, &["keys", "enable", "shared", "--usage", "decrypt"]);
    // Straight to the crypto path, no metadata read first: the HSM itself refuses at once
    // (SoftHSM2 reads its object store on every call; the embedded token compares its store
    // with memory every 20 ms, so wait out that window).
    std::thread::sleep(std::time::Duration::from_millis(25));
    for p in [&p1, &p2] {
        encrypt(p, &s, "shared", false).expect_err(400, "InvalidKeyUsageException");
    }
}

#[test]
fn two_proxies_on_one_token_see_each_others_changes_softhsm2() {
    two_proxies(Token::new());
}

#[test]
fn two_proxies_on_one_token_see_each_others_changes_embedded() {
    two_proxies(Token::embedded());
}

/// Objects on the SoftHSM2 token (around our module), as pkcs11-tool lists them.
fn softhsm(tok: &Token, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &tok.conf)
        .args(["--module", SOFTHSM, "--login", "--pin", PIN])
        .args(["--token-label", SOFTHSM_SLOT])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The label of the one key-state record on the SoftHSM2 token (listed with SoftHSM2's tool).
fn record_label(tok: &Token) -> String {
    let (ok, objects) = softhsm(tok, &["--list-objects", "--type", "data"]);
    assert!(ok, "{objects}");
    let labels: Vec<String> = objects
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(|l| l.trim().trim_matches('\'').to_string())
        .collect();
    // Keys that were only ever created carry no record; the one disabled key does.
    assert_eq!(labels.len(), 1, "exactly one record: {objects}");
    assert!(labels[0].starts_with("xki-key-state:"), "{objects}");
    labels[0].clone()
}

/// A key an older version disabled (both HSM flags cleared, no key-state record: made here by
/// disabling and then deleting the record with SoftHSM2's tool) is ENABLED with no usage:
/// every operation is `InvalidKeyUsageException` (not "disabled"), GetKeyMetadata says so, and
/// `keys enable --usage both` gives the usage back.
#[test]
fn enabled_key_with_no_usage_is_invalid_key_usage() {
    let tok = Token::new();
    let a = setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "k"]);
    cli_ok(&tok, &["keys", "create", "--label", "legacy"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    let good = encrypt(&srv, &s, "k", false).expect_ok();
    cli_ok(&tok, &["keys", "disable", "legacy"]);
    let label = record_label(&tok);
    let (ok, out) = softhsm(
        &tok,
        &["--delete-object", "--type", "data", "--label", &label],
    );
    assert!(ok, "{out}");

    let m = meta(&srv, &s, "legacy");
    assert_eq!(
        (&m["keyStatus"], &m["keyUsage"]),
        (&json!("ENABLED"), &json!([])),
        "{m}"
    );
    let l = listed(&tok, "legacy").unwrap();
    assert_eq!(
        (&l["keyStatus"], &l["keyUsage"]),
        (&json!("ENABLED"), &json!([]))
    );
    check_operations(&srv, &s, "legacy", &good, Some((false, false)));

    cli_ok(&tok, &["keys", "enable", "legacy", "--usage", "both"]);
    let m = meta(&srv, &s, "legacy");
    assert_eq!(
        (&m["keyStatus"], &m["keyUsage"]),
        (&json!("ENABLED"), &names(true, true))
    );
    encrypt(&srv, &s, "legacy", true).expect_ok();
}

/// A damaged key-state record (here: garbage written in place of the companion object, with
/// SoftHSM2's own tool) is reported, fails safe (DISABLED; the HSM still refuses the key) and
/// loses nothing: the key stays, and enabling with an explicit usage rewrites the record.
#[test]
fn damaged_companion_is_reported_and_fails_safe() {
    let tok = Token::new();
    let a = setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "dmg"]);
    cli_ok(&tok, &["keys", "disable", "dmg"]);
    let label = record_label(&tok);
    let (ok, out) = softhsm(
        &tok,
        &["--delete-object", "--type", "data", "--label", &label],
    );
    assert!(ok, "{out}");
    let junk = tok.path("junk");
    std::fs::write(&junk, b"not a key-state record at all").unwrap();
    let (ok, out) = softhsm(
        &tok,
        &[
            "--write-object",
            junk.to_str().unwrap(),
            "--type",
            "data",
            "--label",
            &label,
            "--application-label",
            "xki-key-state",
            "--private",
        ],
    );
    assert!(ok, "{out}");

    let l = listed(&tok, "dmg").unwrap();
    assert_eq!(l["keyStatus"], "DISABLED", "{l}");
    assert!(l["notes"][0].as_str().unwrap().contains("damaged"), "{l}");
    let text = cli_ok(&tok, &["keys", "list"]);
    assert!(
        text.lines()
            .any(|t| t.starts_with("dmg ") && t.contains("DAMAGED")),
        "{text}"
    );
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    assert_eq!(meta(&srv, &s, "dmg")["keyStatus"], "DISABLED");
    encrypt(&srv, &s, "dmg", false).expect_err(400, "InvalidStateException");
    // The usage to restore is unknown: enabling without one is refused, with one it works.
    let (ok, _, err) = cli(&tok, &["keys", "enable", "dmg"]);
    assert!(!ok && err.contains("--usage"), "{err}");
    cli_ok(&tok, &["keys", "enable", "dmg", "--usage", "both"]);
    let m = meta(&srv, &s, "dmg");
    assert_eq!(
        (&m["keyStatus"], &m["keyUsage"]),
        (&json!("ENABLED"), &json!(["ENCRYPT", "DECRYPT"]))
    );
    encrypt(&srv, &s, "dmg", true).expect_ok();
}

/// A replica group of two embedded tokens holding the same key: a state change through the
/// group is on every member; each member alone answers the same state.
#[test]
fn replica_group_members_all_hold_the_state() {
    use xki_pkcs11::backend::embedded::format::{self, Identity};
    use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams};
    use xki_pkcs11::backend::embedded::records::{Contents, KeyRecord};
    use zeroize::Zeroizing;

    let tok = Token::embedded();
    let a = setup(&tok);
    let mut stores = Vec::new();
    for m in ["a", "b"] {
        let kek = Zeroizing::new([0x24u8; 32]);
        let key_file = tok.path(&format!("{m}.key"));
        std::fs::write(&key_file, *kek).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let record = |n: u64, label: &str, byte: u8| KeyRecord {
            record: n,
            id: label.as_bytes().to_vec(),
            label: label.as_bytes().to_vec(),
            value: Zeroizing::new(vec![byte; 32]),
            encrypt: true,
            decrypt: true,
            start_date: Vec::new(),
            end_date: Vec::new(),
            state: Vec::new(),
        };
        // The same (test-only) key values on both members, and the proxy's health canary
        // (a group without replication cannot generate it).
        let contents = Contents {
            next_record: 3,
            keys: vec![
                record(1, "grp-key", 0x42),
                record(2, "xki-proxy-canary", 0x17),
            ],
        };
        let identity = Identity::generate(KdfKind::KeyFile, KdfParams::NONE).unwrap();
        let store = tok.path(&format!("{m}.store"));
        std::fs::write(
            &store,
            format::seal(&identity, &kek, &contents.encode()).unwrap(),
        )
        .unwrap();
        stores.push((store, key_file));
    }
    let module_conf = |members: &[usize]| {
        let names: Vec<String> = members.iter().map(|i| format!("\"m{i}\"")).collect();
        let mut t = format!(
            "log_level = \"warn\"\n[[slot]]\nlabel = \"{EMBEDDED_SLOT}\"\nbackends = [{}]\nallow_destroy = true\nuser_pin_file = {:?}\n",
            names.join(", "),
            tok.path("pin")
        );
        for i in members {
            t.push_str(&format!(
                "[backend.m{i}]\ntype = \"embedded\"\ncreate = true\nstore = {:?}\nkey_file = {:?}\n",
                stores[*i].0, stores[*i].1
            ));
        }
        std::fs::write(&tok.module_conf, t).unwrap();
    };
    module_conf(&[0, 1]);
    cli_ok(&tok, &["keys", "enable", "grp-key", "--usage", "encrypt"]);
    cli_ok(&tok, &["keys", "disable", "grp-key"]);
    for member in [0, 1] {
        module_conf(&[member]);
        let l = listed(&tok, "grp-key").unwrap();
        assert_eq!(
            (&l["keyStatus"], &l["keyUsage"], &l["hsmAllows"]),
            (&json!("DISABLED"), &json!(["ENCRYPT"]), &json!([])),
            "member {member}: {l}"
        );
    }
    module_conf(&[0, 1]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    encrypt(&srv, &s, "grp-key", false).expect_err(400, "InvalidStateException");
    cli_ok(&tok, &["keys", "enable", "grp-key"]);
    // The embedded members notice another process's change to their store within their
    // re-read interval (20 ms) each, not at the same moment, and a busy machine may take a
    // little longer: wait until a run of requests (spread over both members) all succeed, not
    // just the first one (CI once saw the second member still answer from before the change).
    wait_until(5, || {
        (0..8).all(|_| encrypt(&srv, &s, "grp-key", false).status == 200)
    });
    // Load is spread over both members: every request must agree.
    for _ in 0..6 {
        encrypt(&srv, &s, "grp-key", false).expect_ok();
        let m = meta(&srv, &s, "grp-key");
        assert_eq!(
            (&m["keyStatus"], &m["keyUsage"]),
            (&json!("ENABLED"), &json!(["ENCRYPT"]))
        );
    }
    drop(srv);
    for member in [0, 1] {
        module_conf(&[member]);
        let l = listed(&tok, "grp-key").unwrap();
        assert_eq!(
            (&l["keyStatus"], &l["hsmAllows"]),
            (&json!("ENABLED"), &json!(["ENCRYPT"]))
        );
    }
}

/// Let the SoftHSM2 slot destroy keys (the common fixture keeps deletion protection on it).
#[cfg(feature = "fault-injection")]
fn allow_destroy_on_softhsm(tok: &Token) {
    let conf = std::fs::read_to_string(&tok.module_conf).unwrap();
    let conf = conf.replacen(
        "backends = [\"softhsm\"]\n",
        "backends = [\"softhsm\"]\nallow_destroy = true\n",
        1,
    );
    std::fs::write(&tok.module_conf, conf).unwrap();
}

/// schedule -> cancel -> schedule -> date passes -> purge, on every backend.
#[cfg(feature = "fault-injection")]
fn deletion_lifecycle(tok: Token) {
    use xki_proxy::hsm::Date;
    let a = setup(&tok);
    cli_ok(
        &tok,
        &["keys", "create", "--label", "doomed", "--usage", "encrypt"],
    );
    cli_ok(&tok, &["keys", "create", "--label", "keeper"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    cli_ok(
        &tok,
        &["keys", "schedule-deletion", "doomed", "--days", "7"],
    );
    let l = listed(&tok, "doomed").unwrap();
    let due7 = Date::today().plus_days(7).to_string();
    assert_eq!(
        (&l["keyStatus"], &l["deletionDate"]),
        (&json!("DISABLED"), &json!(due7))
    );
    encrypt(&srv, &s, "doomed", false).expect_err(400, "InvalidStateException");
    assert!(
        !cli(&tok, &["keys", "enable", "doomed"]).0,
        "enable while pending"
    );
    cli_ok(&tok, &["keys", "cancel-deletion", "doomed"]);
    let l = listed(&tok, "doomed").unwrap();
    assert_eq!(
        (&l["keyStatus"], &l["deletionDate"]),
        (&json!("DISABLED"), &Value::Null)
    );
    cli_ok(
        &tok,
        &["keys", "schedule-deletion", "doomed", "--days", "30"],
    );
    // Not due: nothing happens.
    let out = cli_ok(&tok, &["keys", "purge"]);
    assert!(out.contains("0 destroyed"), "{out}");
    let soon = Date::today().plus_days(29).to_string();
    cli_ok(&tok, &["keys", "purge", "--as-of", &soon]);
    assert!(listed(&tok, "doomed").is_some());
    // Due: only that key goes.
    let later = Date::today().plus_days(30).to_string();
    let out = cli_ok(&tok, &["keys", "purge", "--as-of", &later]);
    assert!(
        out.contains("doomed: destroyed") && out.contains("1 destroyed"),
        "{out}"
    );
    assert!(listed(&tok, "doomed").is_none());
    assert!(listed(&tok, "keeper").is_some());
    wait_until(10, || {
        post(
            &srv.addr,
            Some(&s),
            &key_path("", "doomed", "metadata"),
            &json!({"requestMetadata": md("DescribeKey")}),
        )
        .status
            == 404
    });
    encrypt(&srv, &s, "keeper", true).expect_ok();
}

#[cfg(feature = "fault-injection")]
#[test]
fn schedule_cancel_schedule_purge_softhsm2() {
    let tok = Token::new();
    allow_destroy_on_softhsm(&tok);
    deletion_lifecycle(tok);
}

#[cfg(feature = "fault-injection")]
#[test]
fn schedule_cancel_schedule_purge_embedded() {
    deletion_lifecycle(Token::embedded());
}

/// Purge only with the slot's destroy permission: refused, key kept.
#[cfg(feature = "fault-injection")]
#[test]
fn purge_needs_the_slots_destroy_permission() {
    use xki_proxy::hsm::Date;
    let tok = Token::new();
    setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "kept"]);
    cli_ok(&tok, &["keys", "schedule-deletion", "kept", "--days", "7"]);
    let later = Date::today().plus_days(8).to_string();
    let (ok, _, err) = cli(&tok, &["keys", "purge", "--as-of", &later]);
    assert!(!ok && err.contains("deletion protection"), "{err}");
    assert!(listed(&tok, "kept").is_some());
}

/// Run an admin command that aborts (as abruptly as kill -9) right after key-state write
/// `step`; returns whether it completed anyway (the step was never reached).
#[cfg(feature = "fault-injection")]
fn crash_after(tok: &Token, step: u32, args: &[&str]) -> bool {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(BIN);
    tok.env(&mut cmd)
        .env("XKI_FAULT_ABORT_AFTER_STATE_STEP", step.to_string())
        .arg("--config")
        .arg(tok.path("proxy.toml"))
        .args(args);
    // SAFETY: setrlimit in the forked child before exec; no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    out.status.success()
}

/// Put key "c" into the state `command` starts from.
#[cfg(feature = "fault-injection")]
fn start_state(tok: &Token, command: &str) {
    let _ = cli(tok, &["keys", "cancel-deletion", "c"]);
    match command {
        "disable" | "schedule-deletion" => {
            cli_ok(tok, &["keys", "enable", "c"]);
        }
        "enable" => {
            cli_ok(tok, &["keys", "disable", "c"]);
        }
        _ => {
            cli_ok(tok, &["keys", "schedule-deletion", "c", "--days", "7"]);
        }
    }
}

/// A crash at every step of every state change never leaves the key more usable than
/// intended, never loses it, and never loses the usage to restore. Step 100 is the moment a
/// replaced companion object exists twice (SoftHSM2 only; elsewhere the command completes).
#[cfg(feature = "fault-injection")]
fn crash_matrix(tok: Token) {
    setup(&tok);
    // The key's usage is ENCRYPT only, so a restore that invented usage would show.
    cli_ok(
        &tok,
        &["keys", "create", "--label", "c", "--usage", "encrypt"],
    );
    let enc = json!(["ENCRYPT"]);
    let none = json!([]);
    let commands: [(&[&str], u32); 4] = [
        (&["keys", "disable", "c"], 2),
        (&["keys", "enable", "c"], 2),
        (&["keys", "schedule-deletion", "c", "--days", "7"], 2),
        (&["keys", "cancel-deletion", "c"], 1),
    ];
    for (args, steps) in commands {
        for step in (1..=steps).chain([100]) {
            start_state(&tok, args[1]);
            let before = listed(&tok, "c").unwrap()["hsmAllows"].clone();
            let completed = crash_after(&tok, step, args);
            // Every numbered step is reached (the switch really fires); step 100 exists only
            // where a companion object is replaced (SoftHSM2).
            assert!(
                !completed || step == 100,
                "{args:?} step {step} did not crash"
            );
            let l = listed(&tok, "c").expect("key lost");
            let now = &l["hsmAllows"];
            // Never more usable than intended (at most ENCRYPT), and a change that takes
            // usage away never leaves more than there was before.
            assert!(now == &none || now == &enc, "{args:?} step {step}: {l}");
            if args[1] != "enable" {
                assert!(now == &none || now == &before, "{args:?} step {step}: {l}");
            }
            // The status never reads ENABLED while the change meant to disable.
            if args[1] != "enable" {
                assert_eq!(l["keyStatus"], "DISABLED", "{args:?} step {step}: {l}");
            }
            // Re-running the command completes it (it may already be complete).
            if !completed {
                let _ = cli(&tok, args);
            }
            let l = listed(&tok, "c").unwrap();
            let want = if args[1] == "enable" { &enc } else { &none };
            assert_eq!(&l["hsmAllows"], want, "{args:?} step {step} rerun: {l}");
            assert_eq!(l["keyUsage"], enc, "{args:?} step {step}: usage lost: {l}");
            assert!(l["notes"].as_array().unwrap().is_empty(), "{l}");
        }
    }
    // Finally the usage survives it all: enable restores ENCRYPT only.
    start_state(&tok, "disable");
    let l = listed(&tok, "c").unwrap();
    assert_eq!(
        (&l["keyStatus"], &l["keyUsage"], &l["hsmAllows"]),
        (&json!("ENABLED"), &enc, &enc)
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn crash_at_every_step_softhsm2() {
    crash_matrix(Token::new());
}

#[cfg(feature = "fault-injection")]
#[test]
fn crash_at_every_step_embedded() {
    crash_matrix(Token::embedded());
}

/// Purge crashing between destroying the key and removing its record: the key is gone (as
/// asked), the other keys and the listing are fine.
#[cfg(feature = "fault-injection")]
#[test]
fn crash_during_purge_softhsm2() {
    use xki_proxy::hsm::Date;
    let tok = Token::new();
    allow_destroy_on_softhsm(&tok);
    setup(&tok);
    cli_ok(&tok, &["keys", "create", "--label", "p"]);
    cli_ok(&tok, &["keys", "create", "--label", "q"]);
    cli_ok(&tok, &["keys", "schedule-deletion", "p", "--days", "7"]);
    let later = Date::today().plus_days(8).to_string();
    assert!(!crash_after(&tok, 1, &["keys", "purge", "--as-of", &later]));
    assert!(listed(&tok, "p").is_none());
    assert_eq!(listed(&tok, "q").unwrap()["keyStatus"], "ENABLED");
    cli_ok(&tok, &["keys", "purge", "--as-of", &later]);
}
