//! Key lifecycle through the admin CLI, observed through the API as well.

mod common;

use common::*;
use serde_json::json;
use xki_proxy::hsm::Date;

/// The whole lifecycle on a slot that keeps CKA_END_DATE and allows destroying (the embedded
/// token behind our module, `allow_destroy = true`).
#[test]
fn key_lifecycle() {
    let tok = Token::embedded();
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

/// A slot with the module's default deletion protection (`allow_destroy = false`): purge must
/// say so clearly and fail, and leave the key in place.
#[test]
fn purge_reports_deletion_protection() {
    let tok = Token::protected();
    config(&tok, "", "", "");
    cli_ok(&tok, &["keys", "create", "--label", "protected"]);
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

/// Objects on the SoftHSM2 token as pkcs11-tool lists them (labels, IDs, flags), read around
/// our module, to prove a refused command changed nothing.
fn softhsm_objects(tok: &Token) -> String {
    let out = std::process::Command::new("pkcs11-tool")
        .env(tok.conf_var, &tok.conf)
        .args([
            "--module",
            tok.direct_module.to_str().unwrap(),
            "--login",
            "--pin",
            PIN,
        ])
        .args([
            "--token-label",
            SOFTHSM_SLOT,
            "--list-objects",
            "--type",
            "secrkey",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SoftHSM2 2.6 cannot keep CKA_END_DATE on private keys, and our module answers
/// CKR_ATTRIBUTE_TYPE_INVALID for it: schedule-deletion must fail saying so, and leave the key
/// exactly as it was (still enabled, same CKA_ID, no date).
#[test]
fn schedule_deletion_refused_cleanly_when_the_token_cannot_keep_dates() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    config(
        &tok,
        "",
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    cli_ok(&tok, &["keys", "create", "--label", "k"]);
    let before = softhsm_objects(&tok);
    assert!(before.contains("label:      k"), "{before}");
    let (ok, out, err) = cli(&tok, &["keys", "schedule-deletion", "k", "--days", "7"]);
    if !backend_kind().is_softhsm_token() {
        // XKI_ITEST_BACKEND=kryoptic: that token keeps dates on private keys, so the same
        // command succeeds there.
        assert!(ok, "{out}{err}");
        return;
    }
    assert!(!ok, "{out}");
    assert!(
        err.contains("cannot store a deletion date")
            && err.contains("CKA_END_DATE")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(softhsm_objects(&tok), before);
    let list = cli_ok(&tok, &["keys", "list"]);
    let line = list.lines().find(|l| l.starts_with("k ")).unwrap();
    assert!(line.contains("ENABLED") && line.ends_with('-'), "{list}");
    let srv = Server::start(&tok);
    post(
        &srv.addr,
        Some(&Signer::new(&a)),
        &key_path("", "k", "encrypt"),
        &encrypt_body(b"still usable", None),
    )
    .expect_ok();
}

/// The proxy drives any PKCS#11 library: here SoftHSM2's own, with no module in between.
#[test]
fn any_pkcs11_module_softhsm_directly() {
    let tok = Token::raw();
    let a = Cred::new(&tok, 0);
    config(
        &tok,
        "",
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    cli_ok(&tok, &["keys", "create", "--label", "direct"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    let enc = post(
        &srv.addr,
        Some(&s),
        &key_path("", "direct", "encrypt"),
        &encrypt_body(b"any module", Some(b"ctx")),
    )
    .expect_ok();
    let dec = post(
        &srv.addr,
        Some(&s),
        &key_path("", "direct", "decrypt"),
        &decrypt_body(&enc, Some(b"ctx")),
    )
    .expect_ok();
    assert_eq!(unb64(&dec["plaintext"]), b"any module");
    cli_ok(&tok, &["keys", "disable", "direct"]);
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "direct", "encrypt"),
        &encrypt_body(b"x", None),
    )
    .expect_err(400, "InvalidStateException");
    cli_ok(&tok, &["keys", "enable", "direct"]);
    // SoftHSM2 2.6 accepts CKA_END_DATE on a private key but cannot read it back: the command
    // must fail and leave the key enabled and usable.
    let (ok, _, err) = cli(
        &tok,
        &["keys", "schedule-deletion", "direct", "--days", "7"],
    );
    assert!(!ok && err.contains("cannot store a deletion date"), "{err}");
    let list = cli_ok(&tok, &["keys", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("direct ") && l.contains("ENABLED") && l.ends_with('-')),
        "{list}"
    );
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "direct", "encrypt"),
        &encrypt_body(b"x", None),
    )
    .expect_ok();
    assert!(cli_ok(&tok, &["health"]).contains("\"healthStatus\": \"ACTIVE\""));
}
