//! Thread and session counts chosen at start-up (`proxy/src/tuning.rs`): the real server over
//! SoftHSM2 through the module (an in-process token) splits the CPUs; explicit settings are
//! kept; and, with the module's test-only fault injector delaying every backend call the way a
//! network HSM's round trip does (`delay MICROS`, no CPU), many sessions are kept.

mod common;

use std::io::{Read, Write};

use common::*;

/// The server's `hsm_sessions` gauge (the pool size actually in use).
fn pool_size(admin: &str) -> usize {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("xki_proxy_hsm_sessions "))
        .unwrap_or_else(|| panic!("no xki_proxy_hsm_sessions in /metrics: {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// The log line that states the choice (written by the logging thread: wait for it).
fn tuning_line(srv: &Server) -> String {
    let mut line = None;
    wait_until(10, || {
        line = srv
            .log()
            .lines()
            .find(|l| l.contains("threads:"))
            .map(str::to_string);
        line.is_some()
    });
    line.unwrap_or_else(|| panic!("no `threads:` line: {}", srv.log()))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn serve_one_round_trip(tok: &Token, srv: &Server, cred: &Cred) {
    let s = Signer::new(cred);
    cli_ok(tok, &["keys", "create", "--label", "k1"]);
    let enc = post(
        &srv.addr,
        Some(&s),
        &key_path("/t", "k1", "encrypt"),
        &encrypt_body(b"tuned", None),
    )
    .expect_ok();
    let dec = post(
        &srv.addr,
        Some(&s),
        &key_path("/t", "k1", "decrypt"),
        &decrypt_body(&enc, None),
    )
    .expect_ok();
    assert_eq!(unb64(&dec["plaintext"]), b"tuned");
}

/// A SoftHSM2 token through the module, a proxy config with `extra_top` / `extra_hsm`, the
/// server started (with `adjust` applied to its command) and its tuning log line.
fn serve(
    extra_top: &str,
    extra_hsm: &str,
    adjust: impl FnOnce(&Token, &mut std::process::Command),
) -> (Token, Cred, Server, String) {
    let tok = Token::new();
    let cred = Cred::new(&tok, 0);
    let prefix = format!("[[prefix]]\npath = \"/t\"\nkeys = \"all\"\n{}", cred.toml());
    config(&tok, extra_top, extra_hsm, &prefix);
    let srv = Server::start_with(&tok, |cmd| adjust(&tok, cmd));
    let line = tuning_line(&srv);
    (tok, cred, srv, line)
}

#[test]
fn defaults_over_an_in_process_token_split_the_cpus() {
    let (tok, cred, srv, line) = serve("", "", |_, _| {});
    let sessions = (cpus() / 2).max(1);
    let workers = (cpus() - sessions).max(1);
    assert!(line.contains("HSM calls run in this process"), "{line}");
    assert!(
        line.contains(&format!(
            "sessions = {sessions} (chosen), async_workers = {workers} (chosen)"
        )),
        "{line}"
    );
    assert_eq!(pool_size(&srv.admin), sessions);
    serve_one_round_trip(&tok, &srv, &cred);
}

#[test]
fn explicit_settings_are_kept() {
    let (tok, cred, srv, line) = serve("async_workers = 3", "sessions = 5", |_, _| {});
    assert!(
        line.contains("sessions = 5 (set in [hsm]), async_workers = 3 (set in the config)"),
        "{line}"
    );
    assert!(line.contains("nothing measured"), "{line}");
    assert_eq!(pool_size(&srv.admin), 5);
    serve_one_round_trip(&tok, &srv, &cred);
}

#[test]
fn one_explicit_setting_leaves_the_other_to_the_probe() {
    let (_tok, _cred, srv, line) = serve("", "sessions = 2", |_, _| {});
    let workers = (cpus() - (cpus() / 2).max(1)).max(1);
    assert!(line.contains("HSM calls run in this process"), "{line}");
    assert!(
        line.contains(&format!(
            "sessions = 2 (set in [hsm]), async_workers = {workers} (chosen)"
        )),
        "{line}"
    );
    assert_eq!(pool_size(&srv.admin), 2);
}

/// Every backend call sleeps 1 ms (the fault injector's `delay`, compiled only with the
/// `fault-injection` feature): the probe sees calls that wait outside the process.
#[cfg(feature = "fault-injection")]
#[test]
fn a_network_hsm_keeps_many_sessions() {
    let (tok, cred, srv, line) = serve("", "", |tok, cmd| {
        let ctl = tok.path("fault-softhsm");
        std::fs::write(&ctl, "delay 1000").unwrap();
        cmd.env("XKI_FAULT_CONTROL_softhsm", ctl);
    });
    assert!(
        srv.log().contains("fault injection enabled"),
        "the module was not built with its fault injector: {}",
        srv.log()
    );
    let sessions = (2 * cpus()).max(8);
    assert!(
        line.contains("HSM calls wait outside this process"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "sessions = {sessions} (chosen), async_workers = {} (chosen)",
            cpus()
        )),
        "{line}"
    );
    assert_eq!(pool_size(&srv.admin), sessions);
    serve_one_round_trip(&tok, &srv, &cred);
}
