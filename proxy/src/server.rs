//! `xki-proxy serve`: wire config, HSM, tenants, health, metrics and listeners together;
//! SIGHUP reloads tenants (credentials, allow-lists, rules, quotas) without dropping
//! connections; SIGTERM/SIGINT stop accepting, drain, and close the HSM sessions.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;
use crate::fdlimit;
use crate::health::Health;
use crate::hsm::Hsm;
use crate::http;
use crate::http::conns::Connections;
use crate::metrics::Metrics;
use crate::state::App;
use crate::tenants::Tenants;

/// Re-read the config file and swap in the new tenants (`[[prefix]]`: credentials, key
/// allow-lists, regions, quotas, rules) and, when serving HTTPS, the TLS settings (`[tls]`,
/// with the certificate, key and client CA files read again). Everything is built before
/// anything is swapped: a bad file or setting fails the whole reload and changes nothing.
/// Changes to anything else are reported but need a restart.
pub fn reload(app: &App, running: &Config) -> Result<(), String> {
    let cfg = Config::load(&app.config_path).map_err(|e| e.to_string())?;
    let tenants = Tenants::from_config(&cfg).map_err(|e| e.to_string())?;
    let tls = match (&app.tls, &cfg.tls) {
        (Some(_), Some(t)) => Some(http::tls::server_config(t)?),
        _ => None,
    };
    let n = tenants.len();
    let expiry = cfg
        .tls
        .as_ref()
        .and_then(|t| http::tls::cert_not_after(&t.cert_file).ok());
    app.tenants.store(Arc::new(tenants));
    if let (Some(current), Some(new)) = (&app.tls, tls) {
        current.store(new);
        if let Some(t) = expiry {
            app.metrics.set_cert_expiry("api", t);
        }
    }
    let needs_restart = |c: &Config| {
        let mut c = c.clone();
        c.prefix.clear();
        // Reloaded above; only switching TLS on or off needs a restart.
        let https = c.tls.take().is_some();
        format!("{https} {c:?}")
    };
    if needs_restart(&cfg) != needs_restart(running) {
        tracing::warn!(
            "settings outside [[prefix]] and [tls] changed (or [tls] was added or removed); \
             they take effect only after a restart"
        );
    }
    tracing::info!(
        prefixes = n,
        tls = app.tls.is_some(),
        "configuration reloaded"
    );
    Ok(())
}

/// The start-up error for a listener that cannot bind; a taken port says so and names the flag
/// that picks another address.
fn bind_error(key: &str, flag: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "{key} {addr}: the address is already in use (another xki-proxy, or another \
             service, listens there); stop it, or pick another address with {flag} ADDR or \
             `{key}` in the config"
        )
    } else {
        format!("{key} {addr}: {e}")
    }
}

/// Print a line to stdout; a closed stdout (a supervisor that stopped reading) must not stop
/// the server, so write errors are ignored (println! would panic).
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Raise the descriptor limit to the hard limit and derive the cap on API connections from
/// it, keeping `[clients] fd_reserve` for the HSM side; both logged.
fn descriptor_budget(cfg: &Config) -> Result<usize, String> {
    let lim = fdlimit::raise_nofile();
    let c = &cfg.clients;
    let cap = fdlimit::connection_cap(lim.soft, c.fd_reserve, c.max_connections)?;
    tracing::info!(
        soft_before = lim.soft_before,
        soft = lim.soft,
        hard = lim.hard,
        max_connections = cap,
        admin_max_connections = fdlimit::ADMIN_MAX_CONNECTIONS,
        fd_reserve = c.fd_reserve,
        request_read_timeout_ms = c.request_read_timeout_ms,
        "descriptor limit raised to the hard limit; client connections capped"
    );
    Ok(cap)
}

/// Thread and session counts for this run ([`crate::tuning`]): explicit settings as set, the
/// rest chosen from a short probe of the HSM (up to 200 small calls, at most ~0.3 s); logged
/// either way.
fn tune(cfg: &Config, hsm: &Hsm) -> Result<crate::tuning::Tuning, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let probe = if cfg.hsm.sessions.is_some() && cfg.async_workers > 0 {
        None
    } else {
        // The first calls warm caches and lazy set-up; time the rest.
        let budget = Duration::from_millis(250);
        hsm.probe(20, budget / 5).map_err(|e| format!("hsm: {e}"))?;
        Some(hsm.probe(200, budget).map_err(|e| format!("hsm: {e}"))?)
    };
    let t = crate::tuning::choose(cpus, cfg.hsm.sessions, cfg.async_workers, probe);
    hsm.set_sessions(t.sessions)?;
    tracing::info!(
        sessions = t.sessions,
        async_workers = t.async_workers,
        "threads: {}",
        t.reason
    );
    Ok(t)
}

/// How `serve` was asked to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Listen here instead of the config's `listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// Serve the admin listener here instead of the config's `admin_listen`.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The config is the generated local demo ([`crate::demo`]): make sure the demo key
    /// exists and print the banner and next steps.
    pub demo: bool,
}

/// Run the server until SIGTERM/SIGINT.
pub fn serve(config_path: &Path, opts: ServeOptions) -> Result<(), String> {
    let mut cfg = Config::load(config_path).map_err(|e| e.to_string())?;
    // Reload compares against the file as read, so `--listen` is not reported as a change.
    let as_read = cfg.clone();
    if let Some(a) = opts.listen {
        cfg.listen = a;
    }
    crate::logging::module_format_env(cfg.log_format);
    if let Some(a) = opts.admin_listen {
        cfg.admin_listen = Some(a);
    }
    // Dropped when `serve` returns (also on error): every queued log line is written first.
    let _log_writer = crate::logging::init(cfg.log_format, &cfg.log_level);
    let tenants = Tenants::from_config(&cfg).map_err(|e| e.to_string())?;
    if tenants.is_empty() {
        tracing::warn!(
            "no [[prefix]] configured: every API request will get InvalidUriPathException"
        );
    }
    let tls = cfg.tls.as_ref().map(http::tls::server_config).transpose()?;
    // Before the HSM library opens anything: the descriptor budget for both sides.
    let api_cap = descriptor_budget(&cfg)?;
    let hsm = Hsm::open(&cfg.hsm, || cfg.read_pin().map_err(|e| e.to_string())).map_err(|e| {
        if opts.demo {
            format!(
                "hsm: {e}\n(the local demo uses the module's zero-setup token {:?}; with \
                 XKI_PKCS11_CONF or a pkcs11.toml in place the module serves that instead: \
                 unset it, or write a proxy config for your token)",
                crate::demo::DEMO_TOKEN
            )
        } else {
            format!("hsm: {e}")
        }
    })?;
    tracing::info!(module = %hsm.module.display(), token = %hsm.token.label, "HSM ready");
    if opts.demo && crate::demo::ensure_key(&hsm)? {
        tracing::info!(key = crate::demo::DEMO_KEY, "generated the demo key");
    }

    let tuning = tune(&cfg, &hsm)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tuning.async_workers)
        .enable_all()
        .max_blocking_threads(tuning.sessions + 8)
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let hsm_at_exit = hsm.clone();
    let served = rt.block_on(async move {
        let health = Health::new(hsm.clone(), cfg.fleet_size);
        let app = Arc::new(App {
            hsm: hsm.clone(),
            tenants: ArcSwap::from_pointee(tenants),
            tls: tls.map(ArcSwap::new),
            health: health.clone(),
            metrics: Metrics::new(),
            hsm_deadline: Duration::from_millis(cfg.hsm.deadline_ms),
            max_body: cfg.max_body_bytes,
            read_timeout: Duration::from_millis(cfg.clients.request_read_timeout_ms),
            config_path: config_path.to_path_buf(),
        });
        if let Some(t) = cfg.tls.as_ref() {
            app.metrics
                .set_cert_expiry("api", http::tls::cert_not_after(&t.cert_file)?);
        }
        crate::metrics::spawn_key_counts(
            app.clone(),
            Duration::from_millis(cfg.hsm.health_interval_ms),
        );
        let first = health.check_now().await;
        if let Some(e) = &first.error {
            tracing::warn!(error = %e, "initial health check failed");
        }
        health.spawn(Duration::from_millis(cfg.hsm.health_interval_ms));

        let listener = http::accept::bind(cfg.listen)
            .map_err(|e| bind_error("listen", "--listen", cfg.listen, &e))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        if let Some(a) = cfg.admin_listen {
            let l = http::accept::bind(a)
                .map_err(|e| bind_error("admin_listen", "--admin-listen", a, &e))?;
            let admin_addr = l.local_addr().map_err(|e| e.to_string())?;
            say(&format!("xki-proxy admin listening on {admin_addr}"));
            let conns = Connections::new(
                "admin",
                fdlimit::ADMIN_MAX_CONNECTIONS,
                app.metrics.connections("admin"),
            );
            tokio::spawn(http::serve_admin(
                app.clone(),
                l,
                conns,
                stopped(stop_rx.clone()),
            ));
        }
        if let Some(p) = &cfg.pid_file {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .map_err(|e| format!("pid_file {}: {e}", p.display()))?;
        }
        let scheme = if app.tls.is_some() { "https" } else { "http" };
        say(&format!("xki-proxy listening on {addr} ({scheme})"));
        if opts.demo {
            say(&crate::demo::instructions(&cfg, addr));
        } else if app.tls.is_none() {
            tracing::warn!("no [tls]: serving plain HTTP; only behind a TLS-terminating balancer");
        }
        tracing::info!(%addr, scheme, "listening");

        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let app2 = app.clone();
        let running = as_read;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        // Log rotation: the module writes to its log and audit files' paths
                        // again (logrotate moved them).
                        if app2.hsm.reopen_logs() {
                            tracing::info!("module log and audit files reopened");
                        }
                        if let Err(e) = reload(&app2, &running) {
                            tracing::error!(error = %e, "reload failed; keeping the previous configuration");
                        }
                    }
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            tracing::info!("shutdown requested");
            let _ = stop_tx.send(true);
        });

        let conns = Connections::new("api", api_cap, app.metrics.connections("api"));
        http::serve_api(app.clone(), listener, conns, stopped(stop_rx)).await;
        hsm.close();
        if let Some(p) = &cfg.pid_file {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("stopped");
        Ok::<(), String>(())
    });
    // On every way out, a start-up error too (a port already taken): wait for the HSM calls
    // already running (the key-count and health tasks start before the listeners bind). The
    // process must not exit under a worker inside the PKCS#11 library: SoftHSM2's OpenSSL
    // frees its locks in an exit handler, and the worker then crashes the process.
    hsm_at_exit.close();
    rt.shutdown_timeout(Duration::from_secs(2));
    served
}
