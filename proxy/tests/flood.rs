//! Hostile clients (issue 13): 2 000 connections that send a request head announcing a
//! 200 000-byte body and then nothing, plus a slowloris dribbling a request head a byte at a
//! time, while a KMS-like client keeps sending signed requests. The signed requests must keep
//! being served within the KMS's 250 ms budget, the unfinished connections must be closed by
//! the read deadline, and the proxy must serve normally once the attacker leaves.
//!
//! Two runs: the embedded token with the descriptor limit of the test (the read deadline does
//! the work), and SoftHSM2 behind the module with the proxy started under a hard limit of
//! 512 descriptors (the connection cap and the descriptor reserve do the work: the issue saw
//! SoftHSM2 lose its keys for good when client connections took every descriptor).
//! Loopback only; each run takes about 10 s and ends by itself.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// `[clients] request_read_timeout_ms` of these runs (short, so the test is too).
const READ_TIMEOUT: Duration = Duration::from_millis(2000);
/// How late after the deadline a connection may still be seen open (the accept queue,
/// scheduling on 2 busy CPUs).
const CLOSE_SLACK: Duration = Duration::from_millis(2000);
/// Connections with an unfinished body.
const UNFINISHED: usize = 2000;
/// Slowloris connections.
const SLOWLORIS: usize = 50;
/// The KMS's budget per call.
const BUDGET: Duration = Duration::from_millis(250);

/// The runs share two CPUs: one at a time, so one's flood is not the other's latency.
static SERIAL: Mutex<()> = Mutex::new(());

/// Raise this process's descriptor limit so it can hold the attacker's connections (as root
/// the hard limit too, if it is lower than needed).
fn raise_own_nofile(want: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_max < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &up);
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        }
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    assert!(
        l.rlim_cur >= want,
        "the flood test needs {want} descriptors; the hard limit is {} (run as root or raise \
         it: ulimit -Hn {want})",
        l.rlim_cur
    );
}

fn setup(tok: &Token, hard_nofile: Option<u64>) -> (Cred, Server) {
    let cred = Cred::new(tok, 0);
    let rest = format!(
        "[clients]\nrequest_read_timeout_ms = {}\n[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}",
        READ_TIMEOUT.as_millis(),
        cred.toml()
    );
    config(tok, "", "", &rest);
    cli_ok(tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start_with(tok, |cmd| {
        if let Some(n) = hard_nofile {
            // SAFETY: setrlimit is async-signal-safe; it only lowers the child's own limits.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    });
    (cred, srv)
}

/// One signed Encrypt + Decrypt round trip; returns each call's latency.
fn signed_round_trip(addr: &str, s: &Signer, ka: Option<&mut KeepAlive>) -> Vec<Duration> {
    let enc_body = encrypt_body(b"flood test", None);
    let mut out = Vec::new();
    let t = Instant::now();
    let enc = match ka {
        Some(ka) => {
            let e = ka
                .post(s, &key_path("", "k1", "encrypt"), &enc_body)
                .expect_ok();
            out.push(t.elapsed());
            let t = Instant::now();
            let d = ka
                .post(s, &key_path("", "k1", "decrypt"), &decrypt_body(&e, None))
                .expect_ok();
            out.push(t.elapsed());
            return check_plaintext(&d, out);
        }
        None => post(addr, Some(s), &key_path("", "k1", "encrypt"), &enc_body).expect_ok(),
    };
    out.push(t.elapsed());
    let t = Instant::now();
    let d = post(
        addr,
        Some(s),
        &key_path("", "k1", "decrypt"),
        &decrypt_body(&enc, None),
    )
    .expect_ok();
    out.push(t.elapsed());
    check_plaintext(&d, out)
}

fn check_plaintext(d: &serde_json::Value, lat: Vec<Duration>) -> Vec<Duration> {
    assert_eq!(unb64(&d["plaintext"]), b"flood test");
    lat
}

/// The KMS side: signed requests, half on fresh connections and half on one keep-alive
/// connection, until `stop`; returns every latency.
fn legit_client(addr: String, cred: Cred, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut lat = Vec::new();
    let mut ka = KeepAlive::connect(&addr);
    while !stop.load(Ordering::Relaxed) {
        let s = Signer::new(&cred);
        lat.extend(signed_round_trip(&addr, &s, None));
        lat.extend(signed_round_trip(&addr, &s, Some(&mut ka)));
        thread::sleep(Duration::from_millis(10));
    }
    lat
}

/// How the attacker's connections ended.
#[derive(Default, Debug)]
struct Outcome {
    /// Closed with a 408 response.
    timed_out_408: usize,
    /// Closed without a response (read deadline of the head, or closed to make room).
    closed: usize,
    /// Still open past the deadline (a failure).
    still_open: usize,
}

/// Open the unfinished-body connections, then watch each until it is closed or its deadline
/// (+ slack) has passed.
fn unfinished_flood(addr: SocketAddr) -> Outcome {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 200000\r\n\r\n",
        key_path("", "k1", "encrypt")
    );
    // Four openers, so the flood outgrows the cap before the first deadline even on a busy
    // box. A connection's clock starts once it is connected and its head is sent.
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let head = head.clone();
            thread::spawn(move || {
                let mut conns = Vec::with_capacity(UNFINISHED / 4);
                for _ in 0..UNFINISHED / 4 {
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    else {
                        continue;
                    };
                    // A connection already closed to make room may refuse the write.
                    let _ = s.write_all(head.as_bytes());
                    conns.push((s, Instant::now()));
                }
                conns
            })
        })
        .collect();
    let mut conns: Vec<(TcpStream, Instant)> = openers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    conns.sort_by_key(|c| c.1);
    assert!(conns.len() >= UNFINISHED * 9 / 10, "could not even connect");
    println!(
        "{} unfinished-body connections opened in {:?}",
        conns.len(),
        conns[conns.len() - 1].1 - conns[0].1
    );
    let mut out = Outcome::default();
    for (mut s, opened) in conns {
        let deadline = opened + READ_TIMEOUT + CLOSE_SLACK;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                out.still_open += 1;
                break;
            }
            s.set_read_timeout(Some(left)).unwrap();
            match s.read(&mut chunk) {
                Ok(0) => {
                    if parse_response(&buf).status == 408 {
                        out.timed_out_408 += 1;
                    } else {
                        out.closed += 1;
                    }
                    break;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => {
                    out.closed += 1;
                    break;
                }
            }
        }
    }
    out
}

/// Slowloris: connections that dribble a never-ending request head one byte per 100 ms
/// each; every connection is watched until it is closed or its deadline (+ slack) passed.
fn slowloris(addr: SocketAddr) -> Outcome {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}",
        "a".repeat(4096)
    );
    let head = head.as_bytes();
    let mut conns: Vec<(TcpStream, Instant, usize)> = (0..SLOWLORIS)
        .filter_map(|_| {
            let s = TcpStream::connect(addr).ok()?;
            s.set_nonblocking(true).unwrap();
            Some((s, Instant::now(), 0))
        })
        .collect();
    let mut out = Outcome::default();
    while !conns.is_empty() {
        conns.retain_mut(|(s, opened, sent)| {
            let mut b = [0u8; 512];
            match s.read(&mut b) {
                Ok(0) => {
                    out.closed += 1;
                    return false;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    out.closed += 1;
                    return false;
                }
            }
            if opened.elapsed() > READ_TIMEOUT + CLOSE_SLACK {
                out.still_open += 1;
                return false;
            }
            if *sent < head.len() && s.write(&head[*sent..*sent + 1]).is_ok() {
                *sent += 1;
            }
            true
        });
        thread::sleep(Duration::from_millis(100));
    }
    out
}

fn metrics_text(admin: &str) -> String {
    let s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(
        s,
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .body
}

/// The value of one sample line of the admin `/metrics` (0 when absent).
fn metric(admin: &str, series: &str) -> f64 {
    metrics_text(admin)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The flood against a running proxy; returns the signed requests' p99.
fn flood(label: &str, cred: &Cred, srv: &Server) -> (Outcome, Outcome, Duration) {
    let addr: SocketAddr = srv.addr.parse().unwrap();
    // Warm up (first key lookup, connection set-up) outside the measurement.
    signed_round_trip(&srv.addr, &Signer::new(cred), None);

    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let (a, c, s) = (srv.addr.clone(), cred.clone(), stop.clone());
        thread::spawn(move || legit_client(a, c, s))
    };
    thread::sleep(Duration::from_millis(200));
    let loris = thread::spawn(move || slowloris(addr));
    let unfinished = thread::spawn(move || unfinished_flood(addr))
        .join()
        .unwrap();
    let loris = loris.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut lat = legit.join().unwrap();
    lat.sort();
    let (p50, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
    println!(
        "flood [{label}]: {} signed requests served during the flood ({UNFINISHED} unfinished \
         bodies + {SLOWLORIS} slowloris): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         unfinished: {unfinished:?}; slowloris: {loris:?}",
        lat.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
    let conn_metrics = metrics_text(&srv.admin)
        .lines()
        .filter(|l| {
            l.contains("connections_") || l.contains("read_timeouts") || l.contains("accept_errors")
        })
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("; ");
    println!("flood [{label}]: proxy metrics after the flood: {conn_metrics}");
    assert!(lat.len() >= 20, "too few signed requests: {}", lat.len());
    assert!(
        p99 <= BUDGET,
        "[{label}] signed requests' p99 {p99:?} over the KMS budget"
    );
    assert_eq!(
        unfinished.still_open, 0,
        "[{label}] unfinished bodies open past the deadline"
    );
    assert_eq!(
        loris.still_open, 0,
        "[{label}] slowloris connections open past the deadline"
    );

    // The attacker has left: normal service, no connection left behind.
    let s = Signer::new(cred);
    for _ in 0..10 {
        for l in signed_round_trip(&srv.addr, &s, None) {
            assert!(l <= BUDGET, "[{label}] after the flood: {l:?}");
        }
    }
    wait_until(5, || {
        metric(&srv.admin, "xki_proxy_connections_open{listener=\"api\"}") == 0.0
    });
    (unfinished, loris, p99)
}

#[test]
fn flood_embedded_unfinished_requests_are_cut_by_the_read_deadline() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_nofile(8192);
    let tok = Token::embedded();
    let (cred, srv) = setup(&tok, None);
    let (unfinished, loris, _) = flood("embedded", &cred, &srv);
    // Far below the cap here: every unfinished body got its 408 at the deadline, every
    // slowloris was closed by hyper's head deadline; none was closed to make room.
    assert_eq!(unfinished.timed_out_408, UNFINISHED, "{unfinished:?}");
    assert_eq!(loris.closed, SLOWLORIS, "{loris:?}");
    let m = |s: &str| metric(&srv.admin, s);
    assert!(
        m("xki_proxy_request_read_timeouts_total{listener=\"api\",phase=\"body\"}")
            >= UNFINISHED as f64
    );
    assert!(
        m("xki_proxy_request_read_timeouts_total{listener=\"api\",phase=\"head\"}")
            >= SLOWLORIS as f64
    );
    assert_eq!(
        m("xki_proxy_connections_evicted_total{listener=\"api\"}"),
        0.0
    );
    assert_eq!(m("xki_proxy_accept_errors_total{listener=\"api\"}"), 0.0);
    let log = srv.log();
    assert!(log.contains("descriptor limit raised"), "{log}");
}

#[test]
fn flood_softhsm_under_a_low_descriptor_limit_keeps_the_token_working() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_nofile(8192);
    let tok = Token::new();
    // 512 descriptors: 512 - 256 reserved - 32 admin = 224 client connections, far fewer
    // than the flood opens before its first deadline.
    let (cred, srv) = setup(&tok, Some(512));
    let (unfinished, loris, _) = flood("softhsm, nofile 512", &cred, &srv);
    let m = |s: &str| metric(&srv.admin, s);
    let evicted = m("xki_proxy_connections_evicted_total{listener=\"api\"}");
    assert!(
        evicted > 0.0,
        "the cap made room: evicted {evicted}; {unfinished:?} {loris:?}"
    );
    assert_eq!(m("xki_proxy_accept_errors_total{listener=\"api\"}"), 0.0);
    let log = srv.log();
    assert!(log.contains("connection cap reached"), "{log}");
    assert!(
        log.contains("max_connections=224"),
        "cap derived from the limit: {log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
    // The token still answers: keys found, health ACTIVE, a new key can be made and used.
    let s = Signer::new(&cred);
    post(
        &srv.addr,
        Some(&s),
        &key_path("", "k1", "metadata"),
        &serde_json::json!({"requestMetadata": md("DescribeKey")}),
    )
    .expect_ok();
    let h = post(
        &srv.addr,
        Some(&s),
        "/kms/xks/v1/health",
        &serde_json::json!({"requestMetadata": md("CreateCustomKeyStore")}),
    )
    .expect_ok();
    assert_eq!(h["xksProxyFleetSize"], 1, "health answered: {h}");
    assert!(
        !h.to_string().contains("UNAVAILABLE"),
        "health after the flood: {h}"
    );
}

/// `curl` over HTTPS (`-k`: a throwaway self-signed certificate), signing with SigV4;
/// returns (HTTP status, curl's own time_total: connect + handshake + request).
fn curl_signed(url: &str, cred: &Cred, body: &str) -> (String, Duration) {
    let user = format!("{}:{}", cred.akid, cred.secret);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
        ])
        .args([
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
            "--user",
            &user,
        ])
        .args(["-H", "Content-Type: application/json", "-d", body, url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, secs) = text.split_once(' ').unwrap_or((&text, "0"));
    (
        code.to_string(),
        Duration::from_secs_f64(secs.trim().parse().unwrap_or(0.0)),
    )
}

#[test]
fn flood_tls_stalled_handshakes_are_cut_by_the_read_deadline() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_nofile(8192);
    let tok = Token::embedded();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(tok.path("server.pem"), cert.cert.pem()).unwrap();
    std::fs::write(tok.path("server.key"), cert.key_pair.serialize_pem()).unwrap();
    let cred = Cred::new(&tok, 0);
    let rest = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [clients]\nrequest_read_timeout_ms = {}\n[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}",
        tok.path("server.pem").display(),
        tok.path("server.key").display(),
        READ_TIMEOUT.as_millis(),
        cred.toml()
    );
    config(&tok, "", "", &rest);
    cli_ok(&tok, &["keys", "create", "--label", "k1"]);
    let srv = Server::start(&tok);
    let addr: SocketAddr = srv.addr.parse().unwrap();
    let url = format!("https://{}{}", srv.addr, key_path("", "k1", "metadata"));
    let body = serde_json::json!({"requestMetadata": md("DescribeKey")}).to_string();
    assert_eq!(curl_signed(&url, &cred, &body).0, "200");

    // 500 connections that never start the handshake, 100 that stop inside the ClientHello
    // record header.
    let stalled: Vec<(TcpStream, Instant)> = (0..600)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i >= 500 {
                s.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
            }
            (s, Instant::now())
        })
        .collect();
    let mut lat: Vec<Duration> = (0..20)
        .map(|_| {
            let (code, t) = curl_signed(&url, &cred, &body);
            assert_eq!(code, "200", "{}", srv.log());
            t
        })
        .collect();
    let mut still_open = 0;
    for (mut s, opened) in stalled {
        let left = (opened + READ_TIMEOUT + CLOSE_SLACK).saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => {
                still_open += 1;
                eprintln!("stalled TLS connection: {other:?}");
            }
        }
    }
    lat.sort();
    println!(
        "flood [tls]: 600 stalled handshakes; 20 signed HTTPS requests (curl, new connection \
         each): median {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    assert_eq!(still_open, 0, "stalled handshakes open past the deadline");
    assert!(percentile(&lat, 0.99) <= BUDGET, "{lat:?}");
    assert!(
        metric(
            &srv.admin,
            "xki_proxy_request_read_timeouts_total{listener=\"api\",phase=\"head\"}"
        ) >= 600.0
    );
    assert!(srv.log().contains("TLS handshake timed out"));
    assert_eq!(curl_signed(&url, &cred, &body).0, "200");
    wait_until(5, || {
        metric(&srv.admin, "xki_proxy_connections_open{listener=\"api\"}") == 0.0
    });
}
