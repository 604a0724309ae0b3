//! Per-member health end to end: the real proxy over our module, whose slot is a replica group
//! of two embedded tokens holding the same keys; one member, then both, failed through the
//! module's TEST-ONLY fault injector (root crate feature `fault-injection`, control file named
//! by `XKI_FAULT_CONTROL_<backend>`), then recovered.
//!
//! Run with: `cargo test -p xki-proxy --features fault-injection --test replica_health`

#![cfg(feature = "fault-injection")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use xki_pkcs11::backend::embedded::format::{self, Identity};
use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams};
use xki_pkcs11::backend::embedded::records::{Contents, KeyRecord};
use zeroize::Zeroizing;

const KEY: &str = "grp-key";
const CANARY: &str = "xki-proxy-canary";

fn record(record: u64, label: &str, byte: u8) -> KeyRecord {
    KeyRecord {
        record,
        id: label.as_bytes().to_vec(),
        label: label.as_bytes().to_vec(),
        value: Zeroizing::new(vec![byte; 32]),
        encrypt: true,
        decrypt: true,
        start_date: Vec::new(),
        end_date: Vec::new(),
    }
}

/// An embedded store in `dir` holding the customer key and the proxy's canary key, the same
/// (test-only) values on every member, built with the store's own format code and sealed by a
/// key file. The canary is provisioned up front because a group without replication refuses
/// key generation. Returns (store, key file).
fn embedded_store(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let kek = Zeroizing::new([0x24u8; 32]);
    let key_file = dir.join("k.key");
    std::fs::write(&key_file, *kek).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let contents = Contents {
        next_record: 3,
        keys: vec![record(1, KEY, 0x42), record(2, CANARY, 0x17)],
    };
    let identity = Identity::generate(KdfKind::KeyFile, KdfParams::NONE).unwrap();
    let file = format::seal(&identity, &kek, &contents.encode()).unwrap();
    let store = dir.join("t.store");
    std::fs::write(&store, file).unwrap();
    (store, key_file)
}

fn health(addr: &str, s: &Signer) -> serde_json::Value {
    post(
        addr,
        Some(s),
        "/t/kms/xks/v1/health",
        &json!({"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "KmsHealthCheck"}}),
    )
    .expect_ok()
}

/// (id, healthStatus) of every ekmFleetDetails entry.
fn fleet(addr: &str, s: &Signer) -> Vec<(String, String)> {
    health(addr, s)["ekmFleetDetails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["healthStatus"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> Vec<(String, String)> {
    vec![
        ("mod-a".to_string(), a.to_string()),
        ("mod-b".to_string(), b.to_string()),
    ]
}

/// Wait (up to 5 s) until the fleet reads `want`.
fn wait_fleet(addr: &str, s: &Signer, want: &[(String, String)]) {
    let start = Instant::now();
    loop {
        let got = fleet(addr, s);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "fleet {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Encrypt (with CDIV, so with the verifying decrypt) then Decrypt; both must succeed.
fn round_trip(ka: &mut KeepAlive, s: &Signer, n: u32) {
    let pt = format!("message {n}");
    let enc = ka
        .post(
            s,
            &key_path("/t", KEY, "encrypt"),
            &encrypt_body(pt.as_bytes(), Some(b"aad")),
        )
        .expect_ok();
    let dec = ka
        .post(
            s,
            &key_path("/t", KEY, "decrypt"),
            &decrypt_body(&enc, Some(b"aad")),
        )
        .expect_ok();
    assert_eq!(unb64(&dec["plaintext"]), pt.as_bytes());
}

fn metric(admin: &str, name: &str, member: &str) -> Option<f64> {
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    };
    let prefix = format!("xki_proxy_{name}{{member=\"{member}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn per_member_health_follows_faults_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (store_a, kf_a) = embedded_store(&dir.path().join("a"));
    let (store_b, kf_b) = embedded_store(&dir.path().join("b"));
    let (ctl_a, ctl_b) = (dir.path().join("fault-a"), dir.path().join("fault-b"));
    std::fs::write(&ctl_a, "ok").unwrap();
    std::fs::write(&ctl_b, "ok").unwrap();
    std::fs::write(dir.path().join("pin"), PIN).unwrap();
    let module_conf = dir.path().join("pkcs11.toml");
    std::fs::write(
        &module_conf,
        format!(
            "log_level = \"warn\"\n\
             [[slot]]\nlabel = \"group\"\nbackends = [\"mod-a\", \"mod-b\"]\n\
             probe_interval_ms = 50\nuser_pin_file = {pin:?}\n\
             [backend.mod-a]\ntype = \"embedded\"\ncreate = true\nstore = {sa:?}\nkey_file = {ka:?}\ntimeout_ms = 300\n\
             [backend.mod-b]\ntype = \"embedded\"\ncreate = true\nstore = {sb:?}\nkey_file = {kb:?}\ntimeout_ms = 300\n",
            pin = dir.path().join("pin").display().to_string(),
            sa = store_a.display().to_string(),
            ka = kf_a.display().to_string(),
            sb = store_b.display().to_string(),
            kb = kf_b.display().to_string(),
        ),
    )
    .unwrap();
    // One test per binary: the server child inherits these.
    std::env::set_var("XKI_FAULT_CONTROL_mod-a", &ctl_a);
    std::env::set_var("XKI_FAULT_CONTROL_mod-b", &ctl_b);
    let tok = Token {
        conf: dir.path().join("no-softhsm.conf"),
        conf_var: "SOFTHSM2_CONF",
        direct_module: common::SOFTHSM.into(),
        module_conf,
        slot: "group",
        raw: false,
        dir,
    };
    let cred = Cred::new(&tok, 0);
    config(
        &tok,
        "",
        "",
        &format!("[[prefix]]\npath = \"/t\"\nkeys = \"all\"\n{}", cred.toml()),
    );
    let srv = Server::start(&tok);
    assert!(
        srv.log().contains("fault injection enabled"),
        "the module was not built with its fault injector: {}",
        srv.log()
    );
    let s = Signer::new(&cred);
    let addr = srv.addr.as_str();
    let mut ka = KeepAlive::connect(addr);

    // Healthy: both members listed, ACTIVE; the model is the slot token's.
    let h = health(addr, &s);
    assert_eq!(h["ekmFleetDetails"].as_array().unwrap().len(), 2, "{h}");
    assert!(!h["ekmFleetDetails"][0]["model"]
        .as_str()
        .unwrap()
        .is_empty());
    wait_fleet(addr, &s, &pair("ACTIVE", "ACTIVE"));
    for n in 0..10 {
        round_trip(&mut ka, &s, n);
    }
    assert_eq!(metric(&srv.admin, "member_health", "mod-a"), Some(2.0));
    assert_eq!(metric(&srv.admin, "member_in_flight", "mod-b"), Some(0.0));

    // B fails: requests keep succeeding (on A); health lists B UNAVAILABLE, A ACTIVE.
    std::fs::write(&ctl_b, "fail").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    for n in 10..40 {
        round_trip(&mut ka, &s, n);
    }
    wait_fleet(addr, &s, &pair("ACTIVE", "UNAVAILABLE"));
    assert_eq!(health(addr, &s)["ekmFleetDetails"][0]["id"], "mod-a");
    assert_eq!(metric(&srv.admin, "member_health", "mod-b"), Some(0.0));
    assert!(metric(&srv.admin, "member_failures", "mod-b").unwrap() >= 1.0);
    for n in 40..50 {
        round_trip(&mut ka, &s, n);
    }

    // Both fail: every member UNAVAILABLE and requests fail with InternalException (the
    // module answers CKR_DEVICE_ERROR at once: an HSM failure, not a timeout).
    std::fs::write(&ctl_a, "fail").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let r = post(
        addr,
        Some(&s),
        &key_path("/t", KEY, "encrypt"),
        &encrypt_body(b"x", None),
    );
    r.expect_err(500, "InternalException");
    wait_fleet(addr, &s, &pair("UNAVAILABLE", "UNAVAILABLE"));
    let enc_fail = post(
        addr,
        Some(&s),
        &key_path("/t", KEY, "encrypt"),
        &encrypt_body(b"y", None),
    );
    enc_fail.expect_err(500, "InternalException");
    assert_eq!(metric(&srv.admin, "member_health", "mod-a"), Some(0.0));
    // Transitions are logged by the background health check (every 200 ms here), which may
    // not have run yet: the fleet above is computed per request. Wait for the log line while
    // the members are still down, or a fast run recovers them before any check saw the
    // outage and there is no transition to log.
    wait_until(5, || srv.log().contains("member health changed"));

    // Recovery: both back; health returns to ACTIVE and requests succeed again.
    std::fs::write(&ctl_a, "ok").unwrap();
    std::fs::write(&ctl_b, "ok").unwrap();
    wait_fleet(addr, &s, &pair("ACTIVE", "ACTIVE"));
    let mut ka = KeepAlive::connect(addr);
    for n in 50..60 {
        round_trip(&mut ka, &s, n);
    }
    assert_eq!(metric(&srv.admin, "member_health", "mod-b"), Some(2.0));
}
