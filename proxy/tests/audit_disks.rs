//! Audit and disks through the real `xki-proxy` over the BUILT module (embedded token): a full
//! audit disk answers 503 and shows in the metrics until space returns, SIGHUP makes the module
//! reopen a rotated audit file, a missing store is an error until `keys init`, and with
//! `log_format = "json"` every line of the shared stderr is JSON.
//!
//! The full disk is a 256 KiB tmpfs the test mounts (root, as tests/run-all.sh runs).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A token on one embedded store behind our module, slot [`EMBEDDED_SLOT`]; `module_top` goes
/// at the top of the module config (audit_file, log_format, ...), `create` is the backend's.
fn token(module_top: &str, create: bool, store: Option<PathBuf>) -> Token {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, PIN).unwrap();
    let store = store.unwrap_or_else(|| dir.path().join("emb.store"));
    let module_conf = dir.path().join("xki-pkcs11.toml");
    std::fs::write(
        &module_conf,
        format!(
            "{module_top}\n[[slot]]\nlabel = \"{EMBEDDED_SLOT}\"\nbackends = [\"emb\"]\n\
             [backend.emb]\ntype = \"embedded\"\ncreate = {create}\nstore = {store:?}\npin_file = {pin:?}\n",
            store = store.display().to_string(),
            pin = pin.display().to_string(),
        ),
    )
    .unwrap();
    Token {
        conf: dir.path().join("no-softhsm.conf"),
        conf_var: "SOFTHSM2_CONF",
        direct_module: SOFTHSM.into(),
        module_conf,
        slot: EMBEDDED_SLOT,
        raw: false,
        dir,
    }
}

fn prefix_config(tok: &Token, top: &str) -> Cred {
    let a = Cred::new(tok, 0);
    config(
        tok,
        top,
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    a
}

fn metrics(srv: &Server) -> String {
    let s = TcpStream::connect(&srv.admin).unwrap();
    exchange(
        s,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// `xki_proxy_backend_health` (one backend here): 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE.
fn backend_health(srv: &Server) -> Option<f64> {
    metrics(srv)
        .lines()
        .find(|l| l.starts_with("xki_proxy_backend_health{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn encrypt(srv: &Server, s: &Signer, key: &str) -> Resp {
    post(
        &srv.addr,
        Some(s),
        &key_path("", key, "encrypt"),
        &encrypt_body(b"audited", None),
    )
}

/// Records of `op` on key `key` (the health check's canary has records of its own).
fn audit_lines(path: &Path, op: &str, key: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("xki_audit: op={op} ")))
        .filter(|l| l.contains(&format!(" key=\"{key}\" ")))
        .count()
}

/// A tmpfs of `kib` KiB on `dir` until dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, kib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a small tmpfs (needs root, as tests/run-all.sh runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }

    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        while f.write(&[0x55; 4096]).is_ok_and(|n| n > 0) {}
        while f.write(&[0x55; 1]).is_ok_and(|n| n == 1) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_audit_disk_answers_503_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 256);
    let audit = disk.0.join("audit.log");
    let tok = token(
        &format!(
            "audit_file = {:?}\naudit_flush_ms = 20",
            audit.display().to_string()
        ),
        true,
        None,
    );
    let a = prefix_config(&tok, "");
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    encrypt(&srv, &s, "k1").expect_ok();
    let m = metrics(&srv);
    assert_eq!(metric(&m, "xki_proxy_audit_failing"), 0.0);

    disk.fill();
    let start = Instant::now();
    let mut served = 0;
    loop {
        let r = encrypt(&srv, &s, "k1");
        if r.status == 503 {
            r.expect_err(503, "DependencyTimeoutException");
            assert!(r.body.contains("audit"), "{}", r.body);
            break;
        }
        r.expect_ok();
        served += 1;
        assert!(start.elapsed() < Duration::from_secs(10), "never refused");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("{served} requests served between the disk filling and the first 503");
    // The health check does not hide it: metrics say why.
    let m = metrics(&srv);
    assert_eq!(metric(&m, "xki_proxy_audit_failing"), 1.0, "{m}");
    assert!(metric(&m, "xki_proxy_audit_refused_operations_total") >= 1.0);
    assert!(metric(&m, "xki_proxy_audit_write_errors_total") >= 1.0);
    assert_eq!(metric(&m, "xki_proxy_audit_records_lost_total"), 0.0);
    // The deep health check's canary round trip is refused too: UNAVAILABLE, with the reason
    // logged.
    wait_until(5, || backend_health(&srv) == Some(0.0));

    disk.free();
    wait_until(5, || encrypt(&srv, &s, "k1").status == 200);
    let m = metrics(&srv);
    assert_eq!(metric(&m, "xki_proxy_audit_failing"), 0.0, "{m}");
    assert_eq!(metric(&m, "xki_proxy_audit_records_retained"), 0.0, "{m}");
    wait_until(5, || backend_health(&srv) == Some(2.0));
    assert!(
        srv.log().contains("audit file cannot be written"),
        "{}",
        srv.log()
    );
}

#[test]
fn sighup_makes_the_module_reopen_its_audit_file() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let tok = token(
        &format!(
            "audit_file = {:?}\naudit_flush_ms = 0",
            audit.display().to_string()
        ),
        true,
        None,
    );
    let a = prefix_config(&tok, "");
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    encrypt(&srv, &s, "k1").expect_ok();
    let rotated = dir.path().join("audit.log.1");
    // Right after a write: the module's own once-a-second check would not look again for
    // almost a second, so a record landing in the new file within that time is SIGHUP's doing.
    let moved = Instant::now();
    std::fs::rename(&audit, &rotated).unwrap();
    srv.signal(libc::SIGHUP);
    wait_until(2, || {
        srv.log().contains("module log and audit files reopened")
    });
    encrypt(&srv, &s, "k1").expect_ok();
    let took = moved.elapsed();
    assert_eq!(
        audit_lines(&audit, "encrypt", "k1"),
        1,
        "the new file gets the record"
    );
    assert_eq!(audit_lines(&rotated, "encrypt", "k1"), 1);
    eprintln!("rename to the next record: {took:?}");
}

#[test]
fn missing_store_is_an_error_until_keys_init() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("not-mounted/xki/typo.store");
    let tok = token("", false, Some(store.clone()));
    prefix_config(&tok, "");
    let (ok, out, err) = cli(&tok, &["keys", "list"]);
    assert!(!ok, "keys list on a missing store must fail: {out}");
    assert!(
        err.contains(&store.display().to_string()),
        "the error names the path: {err}"
    );
    assert!(!store.parent().unwrap().exists(), "nothing created");
    let out = cli_ok(&tok, &["keys", "init"]);
    assert!(out.contains("ready (0 key(s))"), "{out}");
    assert!(store.exists());
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    // `keys init` on an existing store opens it as it is.
    let out = cli_ok(&tok, &["keys", "init"]);
    assert!(out.contains("ready (1 key(s))"), "{out}");
    assert!(cli_ok(&tok, &["keys", "list"]).contains("k1"));
}

#[test]
fn json_log_format_makes_every_stderr_line_json() {
    // No audit_file: the module's audit records share the proxy's stderr.
    let tok = token("log_level = \"info\"", true, None);
    let a = prefix_config(&tok, "log_format = \"json\"\nlog_level = \"info\"");
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start(&tok);
    let s = Signer::new(&a);
    encrypt(&srv, &s, "k1").expect_ok();
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "nope", "encrypt"),
        &encrypt_body(b"x", None),
    )
    .expect_err(404, "KeyNotFoundException");
    wait_until(5, || srv.log().contains("\"op\":\"encrypt\""));
    let log = srv.log();
    let (mut proxy_lines, mut module_lines, mut audit) = (0, 0, 0);
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{log}"));
        let target = v["target"].as_str().unwrap_or_default();
        if target == "xki_audit" {
            audit += 1;
        } else if target.starts_with("xki_pkcs11") {
            module_lines += 1;
        } else {
            proxy_lines += 1;
        }
    }
    assert!(proxy_lines > 0 && module_lines > 0 && audit > 0, "{log}");
}
