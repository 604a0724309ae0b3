//! A fleet behind a real load balancer: the reference HAProxy config
//! (deploy/haproxy/haproxy.cfg, Debian's haproxy) in front of three `xki-proxy` processes on one
//! SoftHSM2 slot through libxki_pkcs11.so, TLS re-encrypted, all on loopback with ports picked
//! at run time. Steady signed traffic through HAProxy while one proxy gets `kill -9` and
//! another SIGTERM (both restarted); a key made through one proxy's admin CLI is used at once
//! through all; credentials rotated on all proxies with reload. Prints requests, failures and
//! p99 per event and asserts: zero failures for the SIGTERM drain, at most the requests in
//! flight (one per client connection) for kill -9.
//!
//! Needs `haproxy` (tests/run-all.sh installs it). Run it with `--nocapture` to see the table.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;

const KMS_CN: &str = "cks.kms.us-east-1.amazonaws.com";
const LB_CN: &str = "xki-lb";
/// Client connections of the steady traffic (each has at most one request in flight).
const CLIENTS: usize = 4;
/// Requests per second per client connection.
const RATE_PER_CLIENT: u64 = 40;
/// How long after an event its requests are attributed to it.
const WINDOW: Duration = Duration::from_secs(3);

/// One proxy of the fleet: fixed ports for its whole life (HAProxy's server lines name them).
struct Member {
    api: u16,
    admin: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn start_member(tok: &Token, cfg: &Path, m: &mut Member, n: usize) {
    let mut child = tok
        .env(&mut Command::new(BIN))
        .arg("--config")
        .arg(cfg)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", m.api),
            "--admin-listen",
            &format!("127.0.0.1:{}", m.admin),
        ])
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("xki-proxy listening on ") => break,
            Some(Ok(_)) => {}
            _ => panic!(
                "proxy {n} did not start: {}",
                std::fs::read_to_string(&m.log).unwrap_or_default()
            ),
        }
    }
    m.child = Some(child);
}

/// HAProxy's view of server `name` (`UP`, `DOWN`, ...), from its CSV stats.
fn lb_status(stats: &str, name: &str) -> String {
    lb_field(stats, name, 17)
}

/// Field `i` of HAProxy's CSV stats row for `name` in the backend (see HAProxy's management
/// guide: 15 wretr, 16 wredis, 17 status).
fn lb_field(stats: &str, name: &str, i: usize) -> String {
    let Ok(mut s) = TcpStream::connect(stats) else {
        return String::new();
    };
    let _ = write!(s, "GET /stats;csv HTTP/1.0\r\nHost: {stats}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > 17 && f[0] == "xki_proxies" && f[1] == name)
        .map(|f| f[i].to_string())
        .unwrap_or_default()
}

fn wait_lb(stats: &str, name: &str, want: &str) {
    let t = Instant::now();
    while !lb_status(stats, name).starts_with(want) {
        if t.elapsed() > Duration::from_secs(20) {
            let log = std::env::var("XKI_FLEET_HAPROXY_LOG")
                .ok()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!(
                "HAProxy never saw {name} {want} (now {:?}); its log:\n{log}",
                lb_status(stats, name)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    latency: Duration,
    error: Option<String>,
}

/// Steady signed Encrypt traffic through the load balancer.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(lb: &str, cfg: Arc<rustls::ClientConfig>, signer: Signer, key: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CLIENTS)
            .map(|i| {
                let (stop, samples, cfg, signer) =
                    (stop.clone(), samples.clone(), cfg.clone(), signer.clone());
                let (lb, path) = (lb.to_string(), key_path("/fleet", key, "encrypt"));
                thread::spawn(move || {
                    let every = Duration::from_micros(1_000_000 / RATE_PER_CLIENT);
                    let mut next = Instant::now() + every.mul_f64(i as f64 / CLIENTS as f64);
                    let mut conn: Option<Tls> = None;
                    let body = encrypt_body(b"fleet traffic", Some(b"aad"));
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += every;
                        let at = Instant::now();
                        let r = match conn.as_mut() {
                            Some(c) => tls_request(c, &lb, &signer, &path, &body),
                            None => tls_connect(&lb, &cfg).and_then(|mut c| {
                                let r = tls_request(&mut c, &lb, &signer, &path, &body);
                                conn = Some(c);
                                r
                            }),
                        };
                        let error = match r {
                            Ok(resp) if resp.status == 200 => None,
                            Ok(resp) => Some(format!("HTTP {} {}", resp.status, resp.body)),
                            Err(e) => {
                                conn = None;
                                Some(format!("transport: {e}"))
                            }
                        };
                        samples.lock().unwrap().push(Sample {
                            at,
                            latency: at.elapsed(),
                            error,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            threads,
        }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let v = self.samples.lock().unwrap().clone();
        v
    }
}

struct Stats {
    requests: usize,
    failed: usize,
    p99_ms: f64,
    max_ms: f64,
    errors: Vec<String>,
}

fn stats(samples: &[Sample], from: Instant, to: Instant) -> Stats {
    let w: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let mut lat: Vec<f64> = w.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
        }
    };
    Stats {
        requests: w.len(),
        failed: w.iter().filter(|s| s.error.is_some()).count(),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        errors: w.iter().filter_map(|s| s.error.clone()).collect(),
    }
}

fn fleet_config(tok: &Token, pki_files: &(PathBuf, PathBuf, PathBuf), creds: &[&Cred]) -> PathBuf {
    let (cert, key, ca) = pki_files;
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_names = [\"{LB_CN}\"]\n",
        path_of(cert),
        path_of(key),
        path_of(ca)
    );
    let mut prefix = "[[prefix]]\npath = \"/fleet\"\nkeys = \"all\"\n".to_string();
    for c in creds {
        prefix.push_str(&c.toml());
    }
    // fleet_size = 3; no pid_file: three processes share this file, signals go by pid.
    // deadline_ms: generous, so CPU starvation of a shared CI box (three debug proxies,
    // HAProxy and the client on 2 CPUs) is not mistaken for a fleet failure.
    let p = config(
        tok,
        "fleet_size = 3\n",
        "deadline_ms = 3000\n",
        &format!("{tls}{prefix}"),
    );
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("pid_file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&p, text + "\n").unwrap();
    p
}

#[test]
#[ignore = "needs haproxy; run by tests/run-all.sh: cargo test -p xki-proxy --test fleet -- --ignored"]
fn fleet_behind_haproxy_survives_kill_and_drain() {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    let pki = Pki::new();
    let write = |name: &str, text: &str| {
        let p = tok.path(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = pki.ca.pem();
    let ca = write("ca.pem", &ca_pem);
    let (pc, pk) = pki.leaf("localhost", true);
    let proxy_files = (write("proxy.pem", &pc), write("proxy.key", &pk), ca.clone());
    let (lc, lk) = pki.leaf("localhost", true);
    let lb_cert = write("lb.pem", &format!("{lc}{lk}"));
    let (cc, ck) = pki.leaf(LB_CN, false);
    let lb_client = write("lb-client.pem", &format!("{cc}{ck}"));
    let (kc, kk) = pki.leaf(KMS_CN, false);
    let kms_tls = tls_client(&ca_pem, &kc, &kk);
    let lb_tls = tls_client(&ca_pem, &cc, &ck); // to talk to a proxy directly, as HAProxy does

    let cfg = fleet_config(&tok, &proxy_files, &[&a]);
    cli_ok(&tok, &["keys", "create", "--label", "fleet-key"]);

    let mut members: Vec<Member> = (0..3)
        .map(|i| Member {
            api: free_port(),
            admin: free_port(),
            child: None,
            log: tok.path(&format!("proxy{i}.log")),
        })
        .collect();
    for (i, m) in members.iter_mut().enumerate() {
        start_member(&tok, &cfg, m, i);
    }

    let (lb_port, stats_port) = (free_port(), free_port());
    let lb = format!("127.0.0.1:{lb_port}");
    let stats_addr = format!("127.0.0.1:{stats_port}");
    let haproxy_cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
    let mut haproxy = Command::new("haproxy");
    haproxy
        .args(["-db", "-f", haproxy_cfg])
        .env("XKI_LB_BIND", &lb)
        .env("XKI_LB_CERT", &lb_cert)
        .env("XKI_KMS_CA", &ca)
        .env("XKI_KMS_CN", KMS_CN)
        .env("XKI_PROXY_CA", &ca)
        .env("XKI_LB_CLIENT", &lb_client)
        .env("XKI_PROXY_NAME", "localhost")
        .env("XKI_LB_STATS", &stats_addr)
        .stdout(std::fs::File::create(tok.path("haproxy.log")).unwrap())
        .stderr(std::fs::File::create(tok.path("haproxy.err")).unwrap());
    std::env::set_var("XKI_FLEET_HAPROXY_LOG", tok.path("haproxy.err"));
    for (i, m) in members.iter().enumerate() {
        haproxy
            .env(
                format!("XKI_PROXY{}", i + 1),
                format!("127.0.0.1:{}", m.api),
            )
            .env(format!("XKI_ADMIN{}", i + 1), m.admin.to_string());
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _haproxy = Killed(haproxy.spawn().expect("haproxy (apt-get install haproxy)"));
    for i in 1..=3 {
        wait_lb(&stats_addr, &format!("xki{i}"), "UP");
    }

    // A client without the KMS certificate is refused by HAProxy (mTLS at the balancer).
    let (oc, ok_) = pki.leaf("someone-else", false);
    let other = tls_client(&ca_pem, &oc, &ok_);
    let denied = tls_once(
        &lb,
        &other,
        &Signer::new(&a),
        &key_path("/fleet", "fleet-key", "encrypt"),
        &encrypt_body(b"x", None),
    );
    assert_eq!(denied.status, 403, "{}", denied.body);

    // --- steady traffic, kill -9 one proxy, SIGTERM another, restart both -------------------
    let load = Load::start(&lb, kms_tls.clone(), Signer::new(&a), "fleet-key");
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));

    let t_kill = Instant::now();
    members[0].child.as_mut().unwrap().kill().unwrap(); // SIGKILL
    let _ = members[0].child.take().unwrap().wait();
    wait_lb(&stats_addr, "xki1", "DOWN");
    thread::sleep(WINDOW.saturating_sub(t_kill.elapsed()));
    let t_restart1 = Instant::now();
    start_member(&tok, &cfg, &mut members[0], 0);
    wait_lb(&stats_addr, "xki1", "UP");
    thread::sleep(WINDOW.saturating_sub(t_restart1.elapsed()));

    let t_term = Instant::now();
    let pid = members[1].child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = members[1].child.take().unwrap().wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    thread::sleep(WINDOW.saturating_sub(t_term.elapsed()));
    let t_restart2 = Instant::now();
    start_member(&tok, &cfg, &mut members[1], 1);
    wait_lb(&stats_addr, "xki2", "UP");
    thread::sleep(WINDOW.saturating_sub(t_restart2.elapsed()));

    // --- a key made through one proxy's admin CLI is usable through all at once ------------
    let t_key = Instant::now();
    cli_ok(&tok, &["keys", "create", "--label", "fleet-new"]);
    let fresh = Signer::new(&a);
    for m in &members {
        let r = tls_once(
            &format!("127.0.0.1:{}", m.api),
            &lb_tls,
            &fresh,
            &key_path("/fleet", "fleet-new", "encrypt"),
            &encrypt_body(b"new key", None),
        );
        assert_eq!(r.status, 200, "new key on proxy :{}: {}", m.api, r.body);
    }
    for _ in 0..6 {
        let r = tls_once(
            &lb,
            &kms_tls,
            &fresh,
            &key_path("/fleet", "fleet-new", "encrypt"),
            &encrypt_body(b"new key", None),
        );
        assert_eq!(r.status, 200, "new key through HAProxy: {}", r.body);
    }
    let key_secs = t_key.elapsed().as_secs_f64();
    thread::sleep(Duration::from_secs(1));
    let samples = load.finish();
    let t_end = Instant::now();

    // --- report ----------------------------------------------------------------------------
    let rows = [
        ("baseline (3 proxies)", t0, t_kill),
        ("kill -9 proxy 1", t_kill, t_kill + WINDOW),
        ("restart proxy 1", t_restart1, t_restart1 + WINDOW),
        ("SIGTERM proxy 2 (drain)", t_term, t_term + WINDOW),
        ("restart proxy 2", t_restart2, t_restart2 + WINDOW),
        ("whole run", t0, t_end),
    ];
    println!(
        "fleet: {CLIENTS} client connections x {RATE_PER_CLIENT} req/s of signed Encrypt through HAProxy to 3 proxies (debug build)"
    );
    println!(
        "{:<26} {:>8} {:>7} {:>9} {:>9}",
        "event (3 s window)", "requests", "failed", "p99 ms", "max ms"
    );
    let mut by_event = Vec::new();
    for (name, from, to) in rows {
        let s = stats(&samples, from, to);
        println!(
            "{name:<26} {:>8} {:>7} {:>9.2} {:>9.2}",
            s.requests, s.failed, s.p99_ms, s.max_ms
        );
        for e in s.errors.iter().take(3) {
            println!("    error: {e}");
        }
        by_event.push((name, s));
    }
    println!(
        "HAProxy L7 retries: {} (redispatched to another proxy: {})",
        lb_field(&stats_addr, "BACKEND", 15),
        lb_field(&stats_addr, "BACKEND", 16)
    );
    println!("new key through the other proxies and HAProxy: usable at once ({key_secs:.2} s for 3 direct + 6 balanced requests)");
    let get = |n: &str| &by_event.iter().find(|(k, _)| *k == n).unwrap().1;
    assert!(
        get("baseline (3 proxies)").requests > 100,
        "too little traffic"
    );
    assert_eq!(
        get("SIGTERM proxy 2 (drain)").failed,
        0,
        "SIGTERM drain lost requests"
    );
    assert!(
        get("kill -9 proxy 1").failed <= CLIENTS,
        "kill -9 lost more than the requests in flight"
    );
    // Nothing outside the kill -9 window failed.
    assert_eq!(
        get("whole run").failed,
        get("kill -9 proxy 1").failed,
        "failures outside the kill -9 window"
    );

    // --- credentials rotated on all proxies with reload ------------------------------------
    let b = Cred::new(&tok, 1);
    let reload_all = |members: &[Member]| {
        for m in members {
            let pid = m.child.as_ref().unwrap().id() as i32;
            // SAFETY: kill(2) on the pid of a child this test started.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
    };
    let status_on = |addr: &str, tls: &Arc<rustls::ClientConfig>, c: &Cred| {
        tls_once(
            addr,
            tls,
            &Signer::new(c),
            &key_path("/fleet", "fleet-key", "metadata"),
            &serde_json::json!({"requestMetadata": md("DescribeKey")}),
        )
        .status
    };
    let direct: Vec<String> = members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.api))
        .collect();
    fleet_config(&tok, &proxy_files, &[&a, &b]); // both valid during the switch
    reload_all(&members);
    for d in &direct {
        wait_until(10, || status_on(d, &lb_tls, &b) == 200);
        assert_eq!(
            status_on(d, &lb_tls, &a),
            200,
            "old credential dropped early on {d}"
        );
    }
    fleet_config(&tok, &proxy_files, &[&b]); // the old one retired
    reload_all(&members);
    for d in &direct {
        wait_until(10, || status_on(d, &lb_tls, &a) == 401);
        assert_eq!(status_on(d, &lb_tls, &b), 200, "new credential on {d}");
    }
    for _ in 0..6 {
        assert_eq!(status_on(&lb, &kms_tls, &b), 200);
        assert_eq!(status_on(&lb, &kms_tls, &a), 401);
    }
    println!("credentials rotated on all 3 proxies with SIGHUP: new accepted, old refused (direct and through HAProxy)");

    for m in &mut members {
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
