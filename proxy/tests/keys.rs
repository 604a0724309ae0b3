//! Key lifecycle through the admin CLI, observed through the API as well.

mod common;

use common::*;
use serde_json::json;
use xki_proxy::hsm::Date;

#[test]
fn key_lifecycle() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    config(
        &tok,
        "",
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    let out = cli_ok(&tok, &["keys", "create", "--label", "app-key-1"]);
    assert!(out.contains("External Key ID: app-key-1"), "{out}");
    // Same label twice is refused; bad ids are refused.
    assert!(!cli(&tok, &["keys", "create", "--label", "app-key-1"]).0);
    assert!(!cli(&tok, &["keys", "create", "--label", "bad/id"]).0);

    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    let meta = || {
        post(
            &srv.addr,
            Some(&s),
            &key_path("", "app-key-1", "metadata"),
            &json!({"requestMetadata": md("DescribeKey")}),
        )
        .expect_ok()
    };
    assert_eq!(meta()["keyStatus"], "ENABLED");

    let enc = post(
        &srv.addr,
        Some(&s),
        &key_path("", "app-key-1", "encrypt"),
        &encrypt_body(b"keep me", None),
    )
    .expect_ok();

    // Disable/enable are visible to the running server at once (state is read from the HSM).
    cli_ok(&tok, &["keys", "disable", "app-key-1"]);
    assert_eq!(meta()["keyStatus"], "DISABLED");
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "app-key-1", "decrypt"),
        &decrypt_body(&enc, None),
    )
    .expect_err(400, "InvalidStateException");
    cli_ok(&tok, &["keys", "enable", "app-key-1", "--usage", "decrypt"]);
    assert_eq!(meta()["keyUsage"], json!(["DECRYPT"]));
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "app-key-1", "decrypt"),
        &decrypt_body(&enc, None),
    )
    .expect_ok();
    cli_ok(&tok, &["keys", "enable", "app-key-1"]);
    assert_eq!(meta()["keyUsage"], json!(["ENCRYPT", "DECRYPT"]));

    // Scheduled deletion: 7..30 days, disables the key, blocks enable until cancelled.
    assert!(
        !cli(
            &tok,
            &["keys", "schedule-deletion", "app-key-1", "--days", "6"]
        )
        .0
    );
    cli_ok(
        &tok,
        &["keys", "schedule-deletion", "app-key-1", "--days", "7"],
    );
    assert_eq!(meta()["keyStatus"], "DISABLED");
    let due = Date::today().plus_days(7).to_string();
    let list = cli_ok(&tok, &["keys", "list"]);
    let line = list.lines().find(|l| l.starts_with("app-key-1")).unwrap();
    assert!(
        line.contains("PENDING_DELETION") && line.contains(&due),
        "{list}"
    );
    assert!(!cli(&tok, &["keys", "enable", "app-key-1"]).0);
    // Not yet due: purge leaves it alone.
    cli_ok(&tok, &["keys", "purge"]);
    assert!(cli_ok(&tok, &["keys", "list"]).contains("app-key-1"));
    cli_ok(&tok, &["keys", "cancel-deletion", "app-key-1"]);
    let list = cli_ok(&tok, &["keys", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("app-key-1") && l.contains("DISABLED")),
        "{list}"
    );
    cli_ok(&tok, &["keys", "enable", "app-key-1"]);
    assert_eq!(meta()["keyStatus"], "ENABLED");

    // Once due, purge destroys it (and only it).
    cli_ok(&tok, &["keys", "create", "--label", "other"]);
    cli_ok(
        &tok,
        &["keys", "schedule-deletion", "app-key-1", "--days", "30"],
    );
    let later = Date::today().plus_days(31).to_string();
    let out = cli_ok(&tok, &["keys", "purge", "--as-of", &later]);
    assert!(out.contains("app-key-1: destroyed"), "{out}");
    let list = cli_ok(&tok, &["keys", "list"]);
    assert!(
        !list.contains("app-key-1") && list.contains("other"),
        "{list}"
    );
    wait_until(10, || {
        post(
            &srv.addr,
            Some(&s),
            &key_path("", "app-key-1", "metadata"),
            &json!({"requestMetadata": md("DescribeKey")}),
        )
        .status
            == 404
    });

    // One-shot health from the CLI.
    let h = cli_ok(&tok, &["health"]);
    assert!(h.contains("\"healthStatus\": \"ACTIVE\""), "{h}");
}

#[test]
fn credentials_new_writes_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tenant-a.secret");
    let o = std::process::Command::new(BIN)
        .args(["credentials", "new", "--prefix", "/tenant-a", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let secret = std::fs::read_to_string(&out).unwrap().trim().to_string();
    assert!((43..=64).contains(&secret.len()));
    assert!(!stdout.contains(&secret), "secret printed to stdout");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(&secret));
    let json_path = dir.path().join("tenant-a.secret.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["XksProxyUriPath"], "/tenant-a/kms/xks/v1");
    assert_eq!(
        v["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
        secret.as_str()
    );
    let akid = v["XksProxyAuthenticationCredential"]["AccessKeyId"]
        .as_str()
        .unwrap();
    assert!(
        (20..=30).contains(&akid.len())
            && akid
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    );
    for p in [&out, &json_path] {
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Refuses to overwrite.
    let again = std::process::Command::new(BIN)
        .args(["credentials", "new", "--prefix", "/tenant-a", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// A key the module refuses to destroy (CKA_DESTROYABLE=false, i.e. deletion protection):
/// purge must say so clearly and fail, and leave the key in place.
#[test]
fn purge_reports_deletion_protection() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let tok = Token::new();
    config(&tok, "", "", "");
    {
        // Another process-like client: create the protected key with cryptoki directly.
        std::env::set_var("SOFTHSM2_CONF", &tok.conf);
        let ctx = Pkcs11::new(SOFTHSM).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = ctx.get_slots_with_token().unwrap()[0];
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
            .unwrap();
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Destroyable(false),
                Attribute::Label(b"protected".to_vec()),
                Attribute::Id(b"p1".to_vec()),
            ],
        )
        .unwrap();
        drop(s);
        ctx.finalize().unwrap();
    }
    cli_ok(
        &tok,
        &["keys", "schedule-deletion", "protected", "--days", "7"],
    );
    let later = Date::today().plus_days(8).to_string();
    let (ok, out, err) = cli(&tok, &["keys", "purge", "--as-of", &later]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("protected: NOT destroyed") && err.contains("deletion protection"),
        "{err}"
    );
    assert!(cli_ok(&tok, &["keys", "list"]).contains("protected"));
}
