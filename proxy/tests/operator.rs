//! Operator commands: `check-config`, `credentials list`, the taken-port start-up error, and
//! admin output on stdout with the module's audit records in the audit sink.

mod common;

use common::*;

fn prefix_with(creds: &[&Cred]) -> String {
    let mut s = "[[prefix]]\npath = \"/ops\"\nkeys = \"all\"\n".to_string();
    for c in creds {
        s.push_str(&c.toml());
    }
    s
}

/// A good config: everything is printed (listeners, prefix, credential id, token, keys,
/// canary round trip), no secret or PIN, exit 0.
#[test]
fn check_config_prints_what_would_be_served() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    config(&tok, "", "", &prefix_with(&[&a]));
    cli_ok(&tok, &["keys", "create", "--label", "ops-key"]);
    // Before the first server start there is no canary: reported, not created.
    let (ok, out, err) = cli(&tok, &["check-config"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("missing, the server creates it on start"),
        "{out}"
    );
    assert!(!cli_ok(&tok, &["keys", "list"]).contains("xki-proxy-canary"));

    let srv = Server::start(&tok); // creates the canary
    drop(srv);
    let (ok, out, err) = cli(&tok, &["check-config"]);
    assert!(ok, "{out}\n{err}");
    for want in [
        "listen:   127.0.0.1:0 (http)",
        "admin:    127.0.0.1:0",
        "\"/ops/kms/xks/v1\" -> all keys",
        &a.akid,
        "libxki_pkcs11.so",
        &format!("token \"{SOFTHSM_SLOT}\""),
        "login OK",
        "1 HYOK key(s), 1 enabled",
        "canary encrypt + decrypt OK",
        "result:   OK",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    for secret in [a.secret.as_str(), PIN] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "leaked: {out}{err}"
        );
    }
}

/// Every problem is reported in one run, on stderr, and the exit status is non-zero.
#[test]
fn check_config_reports_every_problem_and_fails() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    let missing = Cred {
        file: tok.path("no-such.secret"),
        ..Cred::new(&tok, 1)
    };
    config(&tok, "", "", &prefix_with(&[&a, &missing]));
    std::fs::write(tok.path("pin"), "9999").unwrap(); // wrong PIN
    let (ok, out, err) = cli(&tok, &["check-config"]);
    assert!(!ok, "must fail: {out}\n{err}");
    assert!(err.contains("no-such.secret"), "{err}");
    assert!(err.contains("hsm:"), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(!out.contains("result:   OK"), "{out}");
    assert!(!err.contains("9999") && !out.contains("9999"), "PIN leaked");

    // A config that does not parse is one problem, named, before anything else runs.
    std::fs::write(tok.path("proxy.toml"), "listen = 1\n").unwrap();
    let (ok, _, err) = cli(&tok, &["check-config"]);
    assert!(!ok);
    assert!(err.contains("config:") && err.contains("listen"), "{err}");
}

/// `credentials list`: ids, prefix, created, secret file; never the secret; fails on a missing
/// secret file after listing everything.
#[test]
fn credentials_list_never_prints_secrets() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    let b = Cred::new(&tok, 1);
    config(&tok, "", "", &prefix_with(&[&a, &b]));
    let (ok, out, err) = cli(&tok, &["credentials", "list"]);
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ACCESS_KEY_ID"), "{out}");
    for (line, c) in lines[1..].iter().zip([&a, &b]) {
        assert!(line.starts_with(&c.akid), "{line}");
        assert!(line.contains("/ops"), "{line}");
        assert!(line.contains(" ok "), "{line}");
        assert!(line.contains(&path_of(&c.file)), "{line}");
        // Created: the secret file's mtime, as YYYY-MM-DD HH:MM:SS.
        let today = xki_proxy::hsm::Date::today().to_string();
        assert!(line.contains(&today), "{line}");
    }
    assert!(
        !out.contains(&a.secret) && !out.contains(&b.secret),
        "{out}"
    );
    assert!(
        !err.contains(&a.secret) && !err.contains(&b.secret),
        "{err}"
    );

    std::fs::remove_file(&b.file).unwrap();
    let (ok, out, err) = cli(&tok, &["credentials", "list"]);
    assert!(!ok, "a missing secret file must fail");
    assert!(out.contains(&a.akid) && out.contains("INVALID"), "{out}");
    assert!(err.contains(&b.akid), "{err}");
}

/// A taken port: the server exits with status 1 (not a crash: HSM calls the start-up had
/// begun are waited for, see `server::serve`), says the address is in use and names --listen
/// (or --admin-listen for the admin listener). Three tries each: the crash it guards against
/// hit about half of the exits.
#[test]
fn port_taken_names_the_flag() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    config(&tok, "", "", &prefix_with(&[&a]));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for &(flag, key) in [("--listen", "listen"), ("--admin-listen", "admin_listen")]
        .iter()
        .cycle()
        .take(6)
    {
        let out = tok
            .env(&mut std::process::Command::new(BIN))
            .arg("--config")
            .arg(tok.path("proxy.toml"))
            .args(["serve", flag, &addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag}: must exit with 1, not start or crash ({:?})",
            out.status
        );
        assert!(
            err.contains(&format!("{key} {addr}: the address is already in use")),
            "{flag}: {err}"
        );
        assert!(err.contains(&format!("{flag} ADDR")), "{flag}: {err}");
    }
}

/// Admin commands print their result on stdout; the module's audit records go to the audit
/// sink (here `audit_file`; by default the module's log sink, stderr), never into stdout.
#[test]
fn admin_output_and_audit_records_are_separate() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    config(&tok, "", "", &prefix_with(&[&a]));

    // Default sink: records on stderr, stdout only the result.
    let (ok, out, err) = cli(&tok, &["keys", "create", "--label", "k-default"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("External Key ID: k-default\n") && !out.contains("xki_audit"),
        "{out}"
    );
    assert!(
        err.contains("xki_audit") && err.contains("k-default"),
        "{err}"
    );

    // With audit_file: records in the file, and neither stream carries them.
    let audit = tok.path("audit.log");
    let conf = std::fs::read_to_string(&tok.module_conf).unwrap();
    std::fs::write(
        &tok.module_conf,
        format!(
            "audit_file = {:?}\naudit_flush_ms = 0\n{conf}",
            path_of(&audit)
        ),
    )
    .unwrap();
    let (ok, out, err) = cli(&tok, &["keys", "create", "--label", "k-file"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("External Key ID: k-file\n") && !out.contains("xki_audit"),
        "{out}"
    );
    assert!(!err.contains("xki_audit"), "{err}");
    let (ok, out, _) = cli(&tok, &["keys", "list"]);
    assert!(ok);
    assert!(
        !out.contains("xki_audit") && out.contains("k-file"),
        "{out}"
    );
    let records = std::fs::read_to_string(&audit).unwrap();
    assert!(
        records.contains("op=generate") && records.contains("key=\"k-file\""),
        "{records}"
    );
}
