//! Observability with real tools: a real Prometheus server (Debian's prometheus) scrapes a
//! running proxy and sees its series and loads the packaged alerting rules; the admin
//! listener's /status page, rendered by headless Chromium (Debian's chromium), shows the same
//! numbers as /metrics, and a screenshot of it is taken.
//!
//! Needs `prometheus` and `chromium` (tests/run-all.sh installs them). Bounded: each tool gets
//! at most 60 s.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;
use serde_json::json;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/xki-proxy.rules.yml"
);

/// A proxy serving HTTPS (so it exports its certificate's expiry), with one key, after a few
/// requests: some OK, one refused signature, one unknown key.
struct Setup {
    tok: Token,
    srv: Server,
    cert_not_after: i64,
}

fn setup() -> Setup {
    let tok = Token::new();
    let a = Cred::new(&tok, 0);
    let pki = Pki::new();
    let (cert, key) = pki.leaf("localhost", true);
    std::fs::write(tok.path("server.pem"), &cert).unwrap();
    std::fs::write(tok.path("server.key"), &key).unwrap();
    std::fs::write(tok.path("ca.pem"), pki.ca.pem()).unwrap();
    let cert_not_after = xki_proxy::http::tls::cert_not_after(&tok.path("server.pem")).unwrap();
    config(
        &tok,
        &format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            path_of(&tok.path("server.pem")),
            path_of(&tok.path("server.key"))
        ),
        "",
        &format!("[[prefix]]\npath = \"\"\nkeys = \"all\"\n{}", a.toml()),
    );
    cli_ok(&tok, &["keys", "create", "--label", "obs-key"]);
    let srv = Server::start(&tok);
    let (cc, ck) = pki.leaf("client", false);
    let tls: Arc<rustls::ClientConfig> = tls_client(&pki.ca.pem(), &cc, &ck);
    let s = Signer::new(&a);
    for _ in 0..5 {
        let r = tls_once(
            &srv.addr,
            &tls,
            &s,
            &key_path("", "obs-key", "encrypt"),
            &encrypt_body(b"observe", None),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut bad = Signer::new(&a);
    bad.secret = "A".repeat(64);
    let r = tls_once(
        &srv.addr,
        &tls,
        &bad,
        &key_path("", "obs-key", "metadata"),
        &json!({"requestMetadata": md("DescribeKey")}),
    );
    r.expect_err(401, "AuthenticationFailedException");
    let r = tls_once(
        &srv.addr,
        &tls,
        &s,
        &key_path("", "no-such-key", "metadata"),
        &json!({"requestMetadata": md("DescribeKey")}),
    );
    r.expect_err(404, "KeyNotFoundException");
    // The key count is refreshed every health interval (200 ms here).
    wait_until(10, || {
        http_get(&srv.admin, "/metrics").contains("xki_proxy_keys{state=\"enabled\"} 1")
    });
    Setup {
        tok,
        srv,
        cert_not_after,
    }
}

/// Plain HTTP GET (Connection: close); the body ("" when nothing listens yet).
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // hyper answers small bodies with Content-Length; Prometheus may chunk: undo that.
    if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        return out;
    }
    body.to_string()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prom_query(prom: &str, q: &str) -> serde_json::Value {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(prom, &format!("/api/v1/query?query={enc}"));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[test]
#[ignore = "needs prometheus; run by tests/run-all.sh: cargo test -p xki-proxy --test observability -- --ignored"]
fn prometheus_scrapes_a_running_proxy() {
    let st = setup();
    let port = free_port();
    let prom = format!("127.0.0.1:{port}");
    let conf = st.tok.path("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {RULES:?}\n\
             scrape_configs:\n  - job_name: xki-proxy\n    static_configs:\n      - targets: [{:?}]\n",
            st.srv.admin
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                st.tok.path("prom-data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(st.tok.path("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );
    let start = Instant::now();
    let series = |q: &str| -> Vec<serde_json::Value> {
        prom_query(&prom, q)["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    loop {
        let got = series("xki_proxy_requests_total");
        if !got.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus saw no xki_proxy series in 60 s: {}",
            std::fs::read_to_string(st.tok.path("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let value = |q: &str| -> f64 {
        series(q)
            .first()
            .and_then(|r| r["value"][1].as_str().map(str::to_string))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    assert_eq!(value("up{job=\"xki-proxy\"}"), 1.0);
    assert_eq!(
        value("sum(xki_proxy_requests_total{outcome=\"ok\"})"),
        5.0,
        "five successful Encrypts"
    );
    assert_eq!(
        value("sum(xki_proxy_requests_total{outcome=\"AuthenticationFailedException\"})"),
        1.0
    );
    assert_eq!(
        value("xki_proxy_tls_certificate_expiry_seconds"),
        st.cert_not_after as f64
    );
    assert_eq!(value("xki_proxy_keys{state=\"enabled\"}"), 1.0);
    assert_eq!(value("xki_proxy_backend_health"), 2.0);
    assert!(value("sum(xki_proxy_request_duration_seconds_count)") >= 7.0);
    // The packaged rules are loaded and evaluated against the live series; none fires.
    let rules: serde_json::Value =
        serde_json::from_str(&http_get(&prom, "/api/v1/rules")).unwrap_or_default();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "xki-proxy");
    assert_eq!(group["rules"].as_array().map(Vec::len), Some(8));
    wait_until(30, || {
        series("ALERTS").is_empty() && {
            let r: serde_json::Value =
                serde_json::from_str(&http_get(&prom, "/api/v1/rules")).unwrap_or_default();
            r["data"]["groups"][0]["rules"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|x| x["health"] == "ok"))
        }
    });
    println!(
        "prometheus: scraped xki-proxy, {} series of xki_proxy_requests_total, 8 rules healthy, no alert",
        series("xki_proxy_requests_total").len()
    );
}

/// The value of the element with `id` in the DOM text.
fn by_id(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at + marker.len()..];
    rest[..rest.find('<').unwrap()].to_string()
}

/// What /metrics says, computed here independently of the page's own code.
struct FromMetrics {
    requests: f64,
    errors: f64,
    p50_ms: f64,
    p99_ms: f64,
    keys_enabled: f64,
    cert_expiry: f64,
}

fn from_metrics(text: &str) -> FromMetrics {
    let mut m = FromMetrics {
        requests: 0.0,
        errors: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        keys_enabled: f64::NAN,
        cert_expiry: f64::NAN,
    };
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = v.parse().unwrap();
        if series.starts_with("xki_proxy_requests_total{") {
            m.requests += v;
            if !series.contains("outcome=\"ok\"") {
                m.errors += v;
            }
        } else if series.starts_with("xki_proxy_request_duration_seconds_bucket{") {
            let le = series
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            match buckets.iter_mut().find(|(l, _)| *l == le) {
                Some(b) => b.1 += v,
                None => buckets.push((le, v)),
            }
        } else if series == "xki_proxy_keys{state=\"enabled\"}" {
            m.keys_enabled = v;
        } else if series.starts_with("xki_proxy_tls_certificate_expiry_seconds{") {
            m.cert_expiry = v;
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let q = |q: f64| {
        buckets
            .iter()
            .find(|b| b.1 >= q * total)
            .map_or(0.0, |b| b.0 * 1000.0)
    };
    m.p50_ms = q(0.5);
    m.p99_ms = q(0.99);
    m
}

fn chromium(profile: &Path, args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (apt-get install chromium)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs chromium; run by tests/run-all.sh: cargo test -p xki-proxy --test observability -- --ignored"]
fn status_page_in_headless_chromium_matches_metrics() {
    let st = setup();
    let url = format!("http://{}/status", st.srv.admin);

    let shot = st.tok.path("status.png");
    let (ok, _, err) = chromium(
        &st.tok.path("chrome-1"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=900,1300",
        ],
        &url,
    );
    assert!(ok, "chromium --screenshot: {err}");
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "screenshot too small: {} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("XKI_STATUS_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, Path::new(&dir).join("status.png"));
    }

    let (ok, dom, err) = chromium(&st.tok.path("chrome-2"), &["--dump-dom"], &url);
    assert!(ok, "chromium --dump-dom: {err}");
    let metrics = http_get(&st.srv.admin, "/metrics");
    let m = from_metrics(&metrics);

    let num = |id: &str| -> f64 {
        by_id(&dom, id)
            .parse()
            .unwrap_or_else(|_| panic!("#{id} is not a number: {dom}"))
    };
    assert_eq!(m.requests, 7.0, "{metrics}");
    assert_eq!(num("requests-total"), m.requests);
    assert_eq!(num("errors-total"), m.errors);
    assert_eq!(m.errors, 2.0);
    assert!((num("latency-p50") - m.p50_ms).abs() < 1e-9, "p50: {dom}");
    assert!((num("latency-p99") - m.p99_ms).abs() < 1e-9, "p99: {dom}");
    assert_eq!(num("keys-enabled"), m.keys_enabled);
    assert_eq!(num("cert-expiry"), m.cert_expiry);
    assert_eq!(m.cert_expiry, st.cert_not_after as f64);
    // Requests per second since the previous render (the screenshot's): none in between.
    assert!(num("request-rate") >= 0.0);
    assert!(
        dom.contains("data-member=\"") && dom.contains(">ACTIVE<"),
        "member health: {dom}"
    );
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "no self-refresh: {dom}"
    );
    println!(
        "status page (chromium): requests {} errors {} p50 {} ms p99 {} ms keys {} cert expiry {} = /metrics; screenshot {} bytes",
        m.requests, m.errors, m.p50_ms, m.p99_ms, m.keys_enabled, m.cert_expiry, png.len()
    );
}
