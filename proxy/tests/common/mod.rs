//! Test harness: a throwaway SoftHSM2 token (softhsm/new-token.sh) and embedded tokens behind
//! our module `libxki_pkcs11.so` (the proxy's default module, configured through
//! `XKI_PKCS11_CONF`), or SoftHSM2's own library directly ([`Token::raw`]); the real
//! `xki-proxy` binary on 127.0.0.1 with a random port; and a small HTTP/1.1 client with its own
//! SigV4 signer (written here, apart from the server's verifier, so the two check each other).
#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

#[path = "../../../tests/support/itest_backend.rs"]
mod itest_backend;
#[allow(unused_imports)]
pub use itest_backend::{backend_kind, BackendKind};

pub const BIN: &str = env!("CARGO_BIN_EXE_xki-proxy");
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "1234";
/// Module slot (and SoftHSM2 token) label of the SoftHSM2-backed slot.
pub const SOFTHSM_SLOT: &str = "xki-test";
/// Module slot on an embedded token with `allow_destroy = true` (keeps CKA_END_DATE).
pub const EMBEDDED_SLOT: &str = "xki-emb";
/// Module slot on an embedded token with the default deletion protection.
pub const PROTECTED_SLOT: &str = "xki-emb-protected";

/// A token for one test: the SoftHSM2 token and the module config with three slots
/// ([`SOFTHSM_SLOT`], [`EMBEDDED_SLOT`], [`PROTECTED_SLOT`]); `slot` is the one the proxy
/// config names. With `raw`, the proxy loads SoftHSM2's library itself instead of our module.
pub struct Token {
    pub dir: tempfile::TempDir,
    /// The token store config: SOFTHSM2_CONF (`conf_var`), or KRYOPTIC_CONF when
    /// `XKI_ITEST_BACKEND=kryoptic` puts the module's hardware slot on kryoptic.
    pub conf: PathBuf,
    /// The environment variable `conf` goes in.
    pub conf_var: &'static str,
    /// The hardware token's own library, for tests that act on the token around the module
    /// (SoftHSM2, or kryoptic; the emulated kinds sit on a SoftHSM2 token).
    pub direct_module: PathBuf,
    /// XKI_PKCS11_CONF.
    pub module_conf: PathBuf,
    /// Token label in the proxy config.
    pub slot: &'static str,
    /// Proxy loads SoftHSM2 directly (no module).
    pub raw: bool,
}

impl Token {
    /// SoftHSM2 through libxki_pkcs11.so (the usual test setup).
    pub fn new() -> Token {
        Token::make(SOFTHSM_SLOT, false)
    }

    /// The embedded token through the module, `allow_destroy = true`.
    pub fn embedded() -> Token {
        Token::make(EMBEDDED_SLOT, false)
    }

    /// The embedded token through the module, default deletion protection.
    pub fn protected() -> Token {
        Token::make(PROTECTED_SLOT, false)
    }

    /// SoftHSM2's own library, no module in between ("any PKCS#11 module works").
    pub fn raw() -> Token {
        Token::make(SOFTHSM_SLOT, true)
    }

    fn make(slot: &'static str, raw: bool) -> Token {
        let kind = backend_kind();
        if !raw && kind != BackendKind::SoftHsm {
            return Token::make_on(slot, kind);
        }
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../softhsm/new-token.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .arg(SOFTHSM_SLOT)
            .arg(PIN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "new-token.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("softhsm2.conf");
        let pin = dir.path().join("user.pin");
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let module_conf = dir.path().join("xki-pkcs11.toml");
        std::fs::write(
            &module_conf,
            format!(
                "log_level = \"warn\"\n\
                 [[slot]]\nlabel = \"{SOFTHSM_SLOT}\"\nbackends = [\"softhsm\"]\n\
                 [[slot]]\nlabel = \"{EMBEDDED_SLOT}\"\nbackends = [\"emb\"]\nallow_destroy = true\n\
                 [[slot]]\nlabel = \"{PROTECTED_SLOT}\"\nbackends = [\"emb-protected\"]\n\
                 [backend.softhsm]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"{SOFTHSM_SLOT}\"\npin_file = {pin}\n\
                 [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {emb}\npin_file = {pin}\n\
                 [backend.emb-protected]\ntype = \"embedded\"\ncreate = true\nstore = {embp}\npin_file = {pin}\n",
                pin = q(pin.clone()),
                emb = q(dir.path().join("emb.store")),
                embp = q(dir.path().join("emb-protected.store")),
            ),
        )
        .unwrap();
        std::fs::copy(&pin, dir.path().join("pin")).unwrap();
        Token {
            dir,
            conf,
            conf_var: "SOFTHSM2_CONF",
            direct_module: PathBuf::from(SOFTHSM),
            module_conf,
            slot,
            raw,
        }
    }

    /// [`Token::make`] with the module's hardware slot on another token kind
    /// (`XKI_ITEST_BACKEND`, see tests/support/itest_backend.rs); the same slots and labels.
    fn make_on(slot: &'static str, kind: BackendKind) -> Token {
        let dir = tempfile::tempdir().unwrap();
        let backend = itest_backend::new_backend_token(dir.path(), SOFTHSM_SLOT, PIN);
        assert_eq!(backend.kind, kind);
        let pin = dir.path().join("user.pin");
        std::fs::write(&pin, PIN).unwrap();
        let backend_pin = dir.path().join("backend.pin");
        std::fs::write(&backend_pin, &backend.backend_pin).unwrap();
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let module_conf = dir.path().join("xki-pkcs11.toml");
        std::fs::write(
            &module_conf,
            format!(
                "log_level = \"warn\"\n\
                 [[slot]]\nlabel = \"{SOFTHSM_SLOT}\"\nbackends = [\"softhsm\"]\nuser_pin_file = {pin}\n\
                 [[slot]]\nlabel = \"{EMBEDDED_SLOT}\"\nbackends = [\"emb\"]\nallow_destroy = true\n\
                 [[slot]]\nlabel = \"{PROTECTED_SLOT}\"\nbackends = [\"emb-protected\"]\n\
                 [backend.softhsm]\nmodule = {module}\ntoken_label = \"{SOFTHSM_SLOT}\"\npin_file = {bpin}\n\
                 [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {emb}\npin_file = {pin}\n\
                 [backend.emb-protected]\ntype = \"embedded\"\ncreate = true\nstore = {embp}\npin_file = {pin}\n",
                pin = q(pin.clone()),
                bpin = q(backend_pin),
                module = q(backend.module.clone()),
                emb = q(dir.path().join("emb.store")),
                embp = q(dir.path().join("emb-protected.store")),
            ),
        )
        .unwrap();
        std::fs::copy(&pin, dir.path().join("pin")).unwrap();
        Token {
            dir,
            conf: backend.conf.clone(),
            conf_var: backend.conf_var,
            direct_module: backend.direct.clone(),
            module_conf,
            slot,
            raw: false,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment a proxy process of this test runs with.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(self.conf_var, &self.conf)
            .env("XKI_PKCS11_CONF", &self.module_conf)
            .env("XKI_EMBEDDED_TEST_KDF", "fast")
            // The module's PIN attempt counters next to its config, not in the user's data dir.
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            // The proxy finds the module next to itself (target/*/deps), as `cargo run` does.
            .env_remove("XKI_PKCS11_MODULE")
            .env_remove("XKI_PROXY_CONF")
    }
}

/// A credential: access key id + secret, with the secret written to a file.
#[derive(Clone)]
pub struct Cred {
    pub akid: String,
    pub secret: String,
    pub file: PathBuf,
}

impl Cred {
    /// Deterministic-but-distinct credential for tests (`n` picks it).
    pub fn new(tok: &Token, n: u8) -> Cred {
        let letter = (b'A' + n) as char;
        let akid = format!("TESTKEY{}", letter.to_string().repeat(17));
        let secret = B64.encode([n.wrapping_mul(7).wrapping_add(1); 48]);
        let file = tok.path(&format!("secret-{n}"));
        std::fs::write(&file, &secret).unwrap();
        Cred { akid, secret, file }
    }

    pub fn toml(&self) -> String {
        format!(
            "[[prefix.credential]]\naccess_key_id = \"{}\"\nsecret_file = \"{}\"\n",
            self.akid,
            self.file.display()
        )
    }
}

/// Base config text for a token; `extra_hsm` lines go into [hsm], `rest` is appended.
pub fn config(tok: &Token, extra_top: &str, extra_hsm: &str, rest: &str) -> PathBuf {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npid_file = \"{pid}\"\n{extra_top}\n\
         [hsm]\n{module}token_label = \"{slot}\"\npin_file = \"{pin}\"\n\
         health_interval_ms = 200\n{extra_hsm}\n{rest}",
        pid = tok.path("proxy.pid").display(),
        pin = tok.path("pin").display(),
        module = if tok.raw {
            format!("module = \"{SOFTHSM}\"\n")
        } else {
            String::new()
        },
        slot = tok.slot,
    );
    let p = tok.path("proxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Run an admin command; returns (success, stdout, stderr).
pub fn cli(tok: &Token, args: &[&str]) -> (bool, String, String) {
    let out = tok
        .env(&mut Command::new(BIN))
        .arg("--config")
        .arg(tok.path("proxy.toml"))
        .args(args)
        .output()
        .unwrap();
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // A crash prints nothing of its own: say how the command ended.
        err.push_str(&format!("\n[{}]", out.status));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

pub fn cli_ok(tok: &Token, args: &[&str]) -> String {
    let (ok, out, err) = cli(tok, args);
    assert!(ok, "{args:?} failed: {out}\n{err}");
    out
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub admin: String,
    pub stderr_path: PathBuf,
}

impl Server {
    pub fn start(tok: &Token) -> Server {
        Server::start_with(tok, |_| {})
    }

    /// [`Server::start`], with `adjust` applied to the command first (e.g. resource limits).
    pub fn start_with(tok: &Token, adjust: impl FnOnce(&mut Command)) -> Server {
        let stderr_path = tok.path("server.log");
        let mut cmd = Command::new(BIN);
        adjust(&mut cmd);
        let mut child = tok
            .env(&mut cmd)
            .arg("--config")
            .arg(tok.path("proxy.toml"))
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut admin) = (String::new(), String::new());
        while addr.is_empty() {
            let Some(Ok(l)) = lines.next() else {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("server exited early: {log}");
            };
            if let Some(a) = l.strip_prefix("xki-proxy admin listening on ") {
                admin = a.to_string();
            } else if let Some(a) = l.strip_prefix("xki-proxy listening on ") {
                addr = a.split(' ').next().unwrap().to_string();
            }
        }
        let srv = Server {
            child,
            addr,
            admin,
            stderr_path,
        };
        // Prove which PKCS#11 library served: ours by default, SoftHSM2's only for raw tokens.
        // Log lines are written by the server's logging thread, which may trail stdout's
        // "listening" line on a busy machine: give it a moment.
        let want = if tok.raw { SOFTHSM } else { "libxki_pkcs11.so" };
        let served_by = |log: &str| {
            log.lines()
                .any(|l| l.contains("HSM ready") && l.contains(want))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !served_by(&srv.log()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let log = srv.log();
        assert!(served_by(&log), "expected module {want}: {log}");
        srv
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test started.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn error_name(&self) -> String {
        self.json()["errorName"].as_str().unwrap_or("").to_string()
    }
    /// Assert status and errorName.
    pub fn expect_err(&self, status: u16, name: &str) {
        assert_eq!(
            (self.status, self.error_name().as_str()),
            (status, name),
            "body: {}",
            self.body
        );
    }
    pub fn expect_ok(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "body: {}", self.body);
        self.json()
    }
}

/// Send raw request bytes over any stream, read the whole response (Connection: close).
pub fn exchange<S: Read + Write>(mut s: S, req: &[u8]) -> Resp {
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn hmac(k: &[u8], d: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(k).unwrap();
    m.update(d);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for a time.
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let d = xki_proxy::hsm::Date::from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        d.y,
        d.m,
        d.d,
        r / 3600,
        (r / 60) % 60,
        r % 60
    )
}

/// How to sign a request.
#[derive(Clone)]
pub struct Signer {
    pub akid: String,
    pub secret: String,
    pub region: String,
    pub service: String,
    pub time: SystemTime,
    /// Use this date in the credential scope instead of the X-Amz-Date day.
    pub scope_date: Option<String>,
    /// Also sign an `x-amz-content-sha256` header with this value (None = don't send it).
    pub content_sha256: Option<String>,
}

impl Signer {
    pub fn new(c: &Cred) -> Signer {
        Signer {
            akid: c.akid.clone(),
            secret: c.secret.clone(),
            region: "us-east-1".into(),
            service: "kms-xks-proxy".into(),
            time: SystemTime::now(),
            scope_date: None,
            content_sha256: None,
        }
    }

    /// Headers (name, value) to add: x-amz-date and authorization; signs host + x-amz-date
    /// (+ content-type, to exercise extra signed headers).
    pub fn headers(&self, host: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let date = amz_date(self.time);
        let day = self
            .scope_date
            .clone()
            .unwrap_or_else(|| date[..8].to_string());
        let (sha_line, signed) = match &self.content_sha256 {
            Some(v) => (
                format!("x-amz-content-sha256:{v}\n"),
                "content-type;host;x-amz-content-sha256;x-amz-date",
            ),
            None => (String::new(), "content-type;host;x-amz-date"),
        };
        let canonical = format!(
            "POST\n{path}\n\ncontent-type:application/json\nhost:{host}\n{sha_line}x-amz-date:{date}\n\n{signed}\n{}",
            hex::encode(Sha256::digest(body))
        );
        let scope = format!("{day}/{}/{}/aws4_request", self.region, self.service);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut k = hmac(format!("AWS4{}", self.secret).as_bytes(), day.as_bytes());
        for part in [self.region.as_str(), self.service.as_str(), "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        let sig = hex::encode(hmac(&k, sts.as_bytes()));
        let mut h = vec![
            ("X-Amz-Date".into(), date),
            (
                "Authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
                    self.akid
                ),
            ),
        ];
        if let Some(v) = &self.content_sha256 {
            h.push(("X-Amz-Content-Sha256".into(), v.clone()));
        }
        h
    }
}

/// Build a raw request.
pub fn raw_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

/// Signed POST over plain TCP.
pub fn post(addr: &str, signer: Option<&Signer>, path: &str, body: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec(body).unwrap();
    post_bytes(addr, signer, path, &body)
}

pub fn post_bytes(addr: &str, signer: Option<&Signer>, path: &str, body: &[u8]) -> Resp {
    let headers = signer
        .map(|s| s.headers(addr, path, body))
        .unwrap_or_default();
    let req = raw_request("POST", addr, path, &headers, body);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(s, &req)
}

/// requestMetadata for an operation.
pub fn md(op: &str) -> serde_json::Value {
    serde_json::json!({
        "kmsRequestId": format!("req-{}", rand_u32()),
        "kmsOperation": op,
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/abc",
    })
}

pub fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn b64(d: &[u8]) -> String {
    B64.encode(d)
}

pub fn unb64(s: &serde_json::Value) -> Vec<u8> {
    B64.decode(s.as_str().unwrap()).unwrap()
}

pub fn encrypt_body(pt: &[u8], aad: Option<&[u8]>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "requestMetadata": md("Encrypt"),
        "plaintext": b64(pt),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    });
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = b64(a).into();
    }
    v
}

/// Decrypt body rebuilt from an encrypt response.
pub fn decrypt_body(enc: &serde_json::Value, aad: Option<&[u8]>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "requestMetadata": md("Decrypt"),
        "ciphertext": enc["ciphertext"],
        "initializationVector": enc["initializationVector"],
        "authenticationTag": enc["authenticationTag"],
        "ciphertextMetadata": enc["ciphertextMetadata"],
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = b64(a).into();
    }
    v
}

pub fn key_path(prefix: &str, key: &str, op: &str) -> String {
    format!("{prefix}/kms/xks/v1/keys/{key}/{op}")
}

/// Wait until `f` is true (or panic after `secs`).
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("condition not reached in {secs}s");
}

pub fn pkcs11_dup_key(tok: &Token, label: &str) {
    let st = Command::new("pkcs11-tool")
        .env(tok.conf_var, &tok.conf)
        .args([
            "--module",
            tok.direct_module.to_str().unwrap(),
            "--login",
            "--pin",
            PIN,
            "--token-label",
            "xki-test",
        ])
        .args([
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--sensitive",
            "--private",
            // Distinct CKA_IDs: our module hides keys whose identity (CKA_ID, or the label
            // when the ID is empty) is shared, so only same-label keys with different IDs
            // reach the proxy as "two keys with one label".
            "--id",
            &format!("{:08x}", rand_u32()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// A keep-alive connection: several requests on one socket.
pub struct KeepAlive {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        KeepAlive {
            stream: BufReader::new(s),
            addr: addr.to_string(),
        }
    }

    /// Signed POST; reads exactly one response (Content-Length framed).
    pub fn post(&mut self, signer: &Signer, path: &str, body: &serde_json::Value) -> Resp {
        let body = serde_json::to_vec(body).unwrap();
        let headers = signer.headers(&self.addr, path, &body);
        let req = raw_request("POST", &self.addr, path, &headers, &body);
        let req = String::from_utf8(req)
            .unwrap()
            .replace("Connection: close\r\n", "");
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).unwrap();
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        parse_response(&raw)
    }
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

pub type Shared<T> = Arc<T>;
