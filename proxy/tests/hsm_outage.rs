//! An HSM outage under traffic, end to end: the real proxy over our module over a throwaway
//! SoftHSM2 token whose token directory is moved away while requests flow, then moved back
//! (a real outage of the real token; nothing emulated).
//!
//! During the outage every key operation is an HSM failure (500 InternalException, or 503
//! DependencyTimeoutException), never 404 KeyNotFoundException; `/ready` answers 503 and
//! GetHealthStatus UNAVAILABLE; `/ping` (liveness) stays 200. After it, service comes back
//! without a restart (a ciphertext from before decrypts), `/ready` is 200 again, and the health
//! check neither created nor duplicated canary keys.
//!
//! Over SoftHSM2's own library (no module in front) the errors are just as honest, but the
//! token does not come back by itself (SoftHSM2 needs a library re-initialisation, which only
//! our module does).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CANARY: &str = "xki-proxy-canary";
const KEY: &str = "k-outage";

fn setup(tok: &Token) -> Signer {
    let cred = Cred::new(tok, 0);
    let rest = format!("[[prefix]]\npath = \"/t\"\nkeys = \"all\"\n{}", cred.toml());
    config(tok, "", "", &rest);
    cli_ok(tok, &["keys", "create", "--label", KEY]);
    Signer::new(&cred)
}

fn get(addr: &str, path: &str) -> Resp {
    let req = raw_request("GET", addr, path, &[], b"");
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(s, &req)
}

fn health_status(addr: &str, s: &Signer) -> String {
    let h = post(
        addr,
        Some(s),
        "/t/kms/xks/v1/health",
        &json!({"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "KmsHealthCheck"}}),
    )
    .expect_ok();
    h["ekmFleetDetails"][0]["healthStatus"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Encrypt, Decrypt of `ct`, GetKeyMetadata: (status, errorName) of each.
fn key_ops(addr: &str, s: &Signer, ct: &serde_json::Value) -> Vec<(u16, String)> {
    let mut enc = encrypt_body(b"during", None);
    enc["requestMetadata"] = md("Encrypt");
    let mut dec = decrypt_body(ct, None);
    dec["requestMetadata"] = md("Decrypt");
    let meta = json!({"requestMetadata": md("DescribeKey")});
    [
        post(addr, Some(s), &key_path("/t", KEY, "encrypt"), &enc),
        post(addr, Some(s), &key_path("/t", KEY, "decrypt"), &dec),
        post(addr, Some(s), &key_path("/t", KEY, "metadata"), &meta),
    ]
    .into_iter()
    .map(|r| {
        let name = if r.status == 200 {
            String::new()
        } else {
            r.error_name()
        };
        (r.status, name)
    })
    .collect()
}

fn encrypt_ok(addr: &str, s: &Signer) -> serde_json::Value {
    let mut enc = encrypt_body(b"before", None);
    enc["requestMetadata"] = md("Encrypt");
    post(addr, Some(s), &key_path("/t", KEY, "encrypt"), &enc).expect_ok()
}

/// Canary keys on the token, counted through SoftHSM2 itself (pkcs11-tool in its own process,
/// not through the proxy or the module).
fn canary_keys(tok: &Token) -> usize {
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &tok.conf)
        .args(["--module", SOFTHSM, "--login", "--pin", PIN])
        .args([
            "--token-label",
            SOFTHSM_SLOT,
            "--list-objects",
            "--type",
            "secrkey",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim().strip_prefix("label:").map(str::trim) == Some(CANARY))
        .count()
}

/// Requests for `for_how_long`; every answer must be an HSM failure, never "not found".
fn traffic_during_outage(addr: &str, s: &Signer, ct: &serde_json::Value, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    let mut answers = 0;
    while Instant::now() < until {
        for (status, name) in key_ops(addr, s, ct) {
            assert!(
                (status, name.as_str()) == (500, "InternalException")
                    || (status, name.as_str()) == (503, "DependencyTimeoutException"),
                "during the outage: {status} {name}"
            );
            answers += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answers >= 30, "only {answers} answers during the outage");
}

#[test]
fn token_directory_removed_and_restored_under_traffic() {
    let tok = Token::new();
    let signer = setup(&tok);
    let srv = Server::start(&tok);
    let addr = srv.addr.clone();
    wait_until(10, || get(&addr, "/ready").status == 200);
    let ct = encrypt_ok(&addr, &signer);
    assert_eq!(health_status(&addr, &signer), "ACTIVE");
    let canaries_before = canary_keys(&tok);
    assert_eq!(
        canaries_before, 1,
        "the first health check created one canary"
    );

    let tokens = tok.path("tokens");
    let away = tok.path("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    traffic_during_outage(&addr, &signer, &ct, Duration::from_secs(2));
    wait_until(5, || get(&addr, "/ready").status == 503);
    let not_ready = get(&addr, "/ready");
    assert!(
        not_ready.body.starts_with("not ready: "),
        "{}",
        not_ready.body
    );
    assert_eq!(get(&addr, "/ping").status, 200, "liveness stays up");
    assert_eq!(health_status(&addr, &signer), "UNAVAILABLE");
    // Several health checks (200 ms apart) ran against the unreachable token meanwhile.
    traffic_during_outage(&addr, &signer, &ct, Duration::from_secs(1));
    std::fs::rename(&away, &tokens).unwrap();

    wait_until(15, || get(&addr, "/ready").status == 200);
    wait_until(5, || health_status(&addr, &signer) == "ACTIVE");
    let mut dec = decrypt_body(&ct, None);
    dec["requestMetadata"] = md("Decrypt");
    let back = post(&addr, Some(&signer), &key_path("/t", KEY, "decrypt"), &dec).expect_ok();
    assert_eq!(unb64(&back["plaintext"]), b"before");
    encrypt_ok(&addr, &signer);
    for (status, name) in key_ops(&addr, &signer, &ct) {
        assert_eq!((status, name.as_str()), (200, ""));
    }
    assert_eq!(canary_keys(&tok), canaries_before, "no canary churn");
    let created = srv
        .log()
        .matches("creating health-check canary key")
        .count();
    assert_eq!(created, 1, "canary creations: {}", srv.log());
}

#[test]
fn raw_softhsm_outage_is_an_hsm_failure_not_key_not_found() {
    let tok = Token::raw();
    let signer = setup(&tok);
    let srv = Server::start(&tok);
    let addr = srv.addr.clone();
    wait_until(10, || get(&addr, "/ready").status == 200);
    let ct = encrypt_ok(&addr, &signer);
    std::fs::rename(tok.path("tokens"), tok.path("tokens.away")).unwrap();
    traffic_during_outage(&addr, &signer, &ct, Duration::from_secs(1));
    wait_until(5, || get(&addr, "/ready").status == 503);
    assert_eq!(
        srv.log()
            .matches("creating health-check canary key")
            .count(),
        1,
        "no canary created while the token is unreadable"
    );
}

#[test]
fn two_canaries_from_racing_proxies_keep_health_active_and_create_nothing() {
    // What two proxies that created a canary at the same moment leave behind.
    let tok = Token::new();
    let signer = setup(&tok);
    pkcs11_dup_key(&tok, CANARY);
    pkcs11_dup_key(&tok, CANARY);
    assert_eq!(canary_keys(&tok), 2);
    let srv = Server::start(&tok);
    let addr = srv.addr.clone();
    wait_until(10, || get(&addr, "/ready").status == 200);
    assert_eq!(health_status(&addr, &signer), "ACTIVE");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(health_status(&addr, &signer), "ACTIVE");
    assert_eq!(
        srv.log()
            .matches("creating health-check canary key")
            .count(),
        0
    );
    // Neither was created by this proxy, so neither is destroyed by it.
    assert_eq!(canary_keys(&tok), 2);
}
