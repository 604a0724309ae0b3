//! `xki-proxy bench`: a load generator that sends SigV4-signed requests like KMS does, keeps
//! one keep-alive connection per worker, prints a live progress line, and ends with
//! throughput, p50/p99/p99.9 latency and errors by errorName.
//!
//! Signing: by default every worker replays one pre-signed request, signed again every
//! [`RESIGN_EVERY`] (well inside the proxy's 5-minute window), so that the client, which
//! shares the machine with the server in our measurements, spends its CPU on HTTP rather than
//! on hashing the same 5 KB body for every request. `--sign-each` signs every request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpStream;

use xki_proxy::http::sigv4;

/// Bench options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL including the prefix, e.g. https://127.0.0.1:8443/tenant-a
    #[arg(long)]
    pub url: String,
    /// External key id.
    #[arg(long, default_value = "bench-key")]
    pub key: String,
    /// Operation: encrypt, decrypt, metadata or health.
    #[arg(long, default_value = "encrypt")]
    pub op: String,
    /// Access key id.
    #[arg(long)]
    pub access_key_id: String,
    /// File holding the secret access key.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// SigV4 region.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Concurrent connections (each with one request in flight).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Total target rate in requests/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Test length in seconds (measured, after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before measuring starts (connections, first key lookup, caches).
    /// Requests started then are reported on their own line, not in the figures; their
    /// errors are counted like any other.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Plaintext size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Additional authenticated data size in bytes (encrypt and decrypt).
    #[arg(long, default_value_t = 32)]
    pub aad_size: usize,
    /// CA certificate (PEM) to trust for https URLs.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate chain (PEM) to present for https URLs (mTLS, e.g. a load balancer
    /// that requires the KMS client certificate); needs --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Worker threads for the client runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Sign every request (as KMS does) instead of replaying one signed every minute.
    #[arg(long)]
    pub sign_each: bool,
}

/// How long a pre-signed request is replayed before it is signed again.
const RESIGN_EVERY: Duration = Duration::from_secs(60);

/// The current signature of the one request all workers send (`None` with `--sign-each`).
struct Presigned {
    signed_at: Instant,
    date: hyper::header::HeaderValue,
    auth: hyper::header::HeaderValue,
}

struct Target {
    host: String,
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    path: String,
    body: Bytes,
    akid: String,
    secret: String,
    region: String,
}

#[derive(Default)]
struct Stats {
    lat_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// Successful requests started during the warm-up, and their worst latency.
    warmup_ok: u64,
    warmup_max_us: u32,
}

fn parse_url(url: &str) -> Result<(bool, String, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("--url must start with http:// or https://".into());
    };
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    Ok((tls, host.to_string(), prefix.to_string()))
}

fn tls_connector(
    cacert: Option<&PathBuf>,
    client: Option<(&PathBuf, &PathBuf)>,
) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = cacert.ok_or("https needs --cacert")?;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let cfg = match client {
        None => cfg.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--client-cert {}: {e}", cert.display()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--client-key {}: {e}", key.display()))?;
            cfg.with_client_auth_cert(chain, key)
                .map_err(|e| format!("--client-cert/--client-key: {e}"))?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(t: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect(&t.addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        None => {
            let (s, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(s)
        }
        Some((c, name)) => {
            let tls = c
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (s, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(s)
        }
    }
}

/// Sign `body` for `path` now: the `x-amz-date` and `authorization` header values.
fn sign_now(t: &Target, path: &str, body: &[u8]) -> Result<Presigned, String> {
    let (date, auth) = sigv4::sign(
        &t.host,
        path,
        body,
        &t.akid,
        &t.secret,
        &t.region,
        SystemTime::now(),
    );
    Ok(Presigned {
        signed_at: Instant::now(),
        date: date.parse().map_err(|e| format!("x-amz-date: {e}"))?,
        auth: auth.parse().map_err(|e| format!("authorization: {e}"))?,
    })
}

/// The signature to send with the next request of the bench: fresh with `--sign-each`,
/// otherwise the shared one, signed again once it is [`RESIGN_EVERY`] old.
fn signature(
    t: &Target,
    shared: Option<&Mutex<Presigned>>,
) -> Result<(hyper::header::HeaderValue, hyper::header::HeaderValue), String> {
    let Some(shared) = shared else {
        let p = sign_now(t, &t.path, &t.body)?;
        return Ok((p.date, p.auth));
    };
    let mut p = shared.lock();
    if p.signed_at.elapsed() >= RESIGN_EVERY {
        *p = sign_now(t, &t.path, &t.body)?;
    }
    Ok((p.date.clone(), p.auth.clone()))
}

async fn one(t: &Target, s: &mut Sender, path: &str, body: &[u8]) -> Result<(u16, Bytes), String> {
    let p = sign_now(t, path, body)?;
    send(t, s, path, Bytes::copy_from_slice(body), (p.date, p.auth)).await
}

async fn send(
    t: &Target,
    s: &mut Sender,
    path: &str,
    body: Bytes,
    (date, auth): (hyper::header::HeaderValue, hyper::header::HeaderValue),
) -> Result<(u16, Bytes), String> {
    let req = Request::post(path)
        .header("host", &t.host)
        .header("content-type", "application/json")
        .header("x-amz-date", date)
        .header("authorization", auth)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn md(op: &str) -> serde_json::Value {
    json!({
        "kmsRequestId": "bench",
        "kmsOperation": op,
        "awsPrincipalArn": "arn:aws:iam::000000000000:user/bench",
        "kmsKeyArn": "arn:aws:kms:us-east-1:000000000000:key/bench",
    })
}

/// Run the bench.
pub fn run(args: BenchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> Result<(), String> {
    let b64 = base64_simd::STANDARD;
    let (https, host, prefix) = parse_url(&args.url)?;
    let secret = std::fs::read_to_string(&args.secret_file)
        .map_err(|e| format!("{}: {e}", args.secret_file.display()))?
        .trim()
        .to_string();
    let tls = if https {
        let name = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string();
        let sn = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
        let client = args.client_cert.as_ref().zip(args.client_key.as_ref());
        Some((tls_connector(args.cacert.as_ref(), client)?, sn))
    } else {
        None
    };
    let plaintext = vec![0x5au8; args.size];
    let aad = vec![0x61u8; args.aad_size];
    let enc_path = format!("{prefix}/kms/xks/v1/keys/{}/encrypt", args.key);
    let enc_body = serde_json::to_vec(&json!({
        "requestMetadata": md("Encrypt"),
        "plaintext": b64.encode_to_string(&plaintext),
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": b64.encode_to_string(&aad),
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    }))
    .map_err(|e| e.to_string())?;
    let mut t = Target {
        addr: host.clone(),
        host,
        tls,
        path: enc_path.clone(),
        body: Bytes::from(enc_body.clone()),
        akid: args.access_key_id.clone(),
        secret,
        region: args.region.clone(),
    };
    match args.op.as_str() {
        "encrypt" => {}
        "decrypt" => {
            let mut s = connect(&t).await?;
            let (st, b) = one(&t, &mut s, &enc_path, &enc_body).await?;
            if st != 200 {
                return Err(format!(
                    "priming encrypt failed: {st} {}",
                    String::from_utf8_lossy(&b)
                ));
            }
            let e: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
            t.path = format!("{prefix}/kms/xks/v1/keys/{}/decrypt", args.key);
            t.body = Bytes::from(serde_json::to_vec(&json!({
                "requestMetadata": md("Decrypt"),
                "ciphertext": e["ciphertext"], "initializationVector": e["initializationVector"],
                "authenticationTag": e["authenticationTag"], "ciphertextMetadata": e["ciphertextMetadata"],
                "additionalAuthenticatedData": b64.encode_to_string(&aad),
                "encryptionAlgorithm": "AES_GCM",
            }))
            .map_err(|e| e.to_string())?);
        }
        "metadata" => {
            t.path = format!("{prefix}/kms/xks/v1/keys/{}/metadata", args.key);
            t.body = Bytes::from(
                serde_json::to_vec(&json!({"requestMetadata": md("DescribeKey")}))
                    .map_err(|e| e.to_string())?,
            );
        }
        "health" => {
            t.path = format!("{prefix}/kms/xks/v1/health");
            t.body = Bytes::from(
                serde_json::to_vec(&json!({"requestMetadata": {"kmsRequestId": "bench", "kmsOperation": "GetHealthStatus"}}))
                    .map_err(|e| e.to_string())?,
            );
        }
        other => {
            return Err(format!(
                "--op {other}: use encrypt, decrypt, metadata or health"
            ))
        }
    }
    let presigned = if args.sign_each {
        None
    } else {
        Some(Arc::new(Mutex::new(sign_now(&t, &t.path, &t.body)?)))
    };
    let t = Arc::new(t);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let per_worker = if args.rate > 0 {
        Some(Duration::from_secs_f64(
            args.concurrency as f64 / args.rate as f64,
        ))
    } else {
        None
    };
    let mut tasks = Vec::new();
    let workers = args.concurrency.max(1);
    for i in 0..workers {
        let (t, stats, done, failed) = (t.clone(), stats.clone(), done.clone(), failed.clone());
        let presigned = presigned.clone();
        // Stagger paced workers so the rate is smooth, not bursts of `concurrency` at once.
        let first =
            per_worker.map(|p| tokio::time::Instant::now() + p.mul_f64(i as f64 / workers as f64));
        tasks.push(tokio::spawn(async move {
            let mut local = Stats::default();
            let mut sender: Option<Sender> = None;
            let mut tick = per_worker
                .zip(first)
                .map(|(p, f)| tokio::time::interval_at(f, p));
            while Instant::now() < end {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if sender.is_none() {
                    match connect(&t).await {
                        Ok(s) => sender = Some(s),
                        Err(e) => {
                            *local.errors.entry(format!("connect: {e}")).or_default() += 1;
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let s = sender.as_mut().expect("connected above");
                let t0 = Instant::now();
                let sent = match signature(&t, presigned.as_deref()) {
                    Ok(sig) => send(&t, s, &t.path, t.body.clone(), sig).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok((200, _)) => {
                        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        if t0 >= measure_from {
                            local.lat_us.push(us);
                        } else {
                            local.warmup_ok += 1;
                            local.warmup_max_us = local.warmup_max_us.max(us);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((st, b)) => {
                        let name = serde_json::from_slice::<serde_json::Value>(&b)
                            .ok()
                            .and_then(|v| v["errorName"].as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("HTTP {st}"));
                        *local.errors.entry(name).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *local.errors.entry(format!("transport: {e}")).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                        sender = None;
                    }
                }
            }
            let mut g = stats.lock();
            g.lat_us.extend(local.lat_us);
            g.warmup_ok += local.warmup_ok;
            g.warmup_max_us = g.warmup_max_us.max(local.warmup_max_us);
            for (k, v) in local.errors {
                *g.errors.entry(k).or_default() += v;
            }
        }));
    }
    let progress = {
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                eprint!(
                    "\r[{:>3}s] ok {d:>9}  {:>7} req/s  errors {:>6}   ",
                    start.elapsed().as_secs(),
                    d - last,
                    failed.load(Ordering::Relaxed)
                );
                last = d;
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    eprintln!();
    let secs = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(f64::EPSILON);
    let mut g = stats.lock();
    g.lat_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if g.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((g.lat_us.len() as f64 * p).ceil() as usize).clamp(1, g.lat_us.len()) - 1;
        f64::from(g.lat_us[i]) / 1000.0
    };
    println!(
        "op={} concurrency={} size={}B duration={secs:.1}s signing={}",
        args.op,
        args.concurrency,
        args.size,
        if args.sign_each {
            "every request"
        } else {
            "replayed, re-signed every 60 s"
        }
    );
    println!(
        "ok={} throughput={:.0} req/s",
        g.lat_us.len(),
        g.lat_us.len() as f64 / secs
    );
    println!(
        "latency ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    if args.warmup > 0 {
        println!(
            "warm-up: {} requests in the first {} s, not in the figures above (slowest {:.2} ms)",
            g.warmup_ok,
            args.warmup,
            f64::from(g.warmup_max_us) / 1000.0
        );
    }
    if g.errors.is_empty() {
        println!("errors: none");
    } else {
        for (k, v) in &g.errors {
            println!("errors: {k}: {v}");
        }
    }
    Ok(())
}
