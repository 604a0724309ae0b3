//! `xki-proxy check-config`: everything `serve` would check before serving, without serving.
//!
//! Loads the config (schema and values), reads every SigV4 secret file, builds the TLS
//! settings from the certificate and key files, loads the PKCS#11 module, logs in to the token,
//! lists the keys and, when the health-check canary exists, does one encrypt + decrypt with
//! it. It keeps going after a problem so one run reports all of them, prints what would be
//! served (listeners, scheme, prefixes with their credential ids and key allow-lists, the
//! token and its keys, the certificate's expiry; never a secret or PIN) on stdout, problems on
//! stderr, and fails when there was any. It creates and changes nothing (the server creates
//! a missing canary key on start; this only reports it).

use std::path::Path;

use crate::config::{Config, KeyAllowList};
use crate::hsm::{Hsm, HsmError};
use crate::tenants::Tenants;

/// Run every check; `Err` names how many problems were found (each printed on stderr).
pub fn run(config: &Path) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    let cfg = Config::load(config).map_err(|e| format!("config: {e}"))?;
    println!("config:   {} (valid)", config.display());
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    println!("listen:   {} ({scheme})", cfg.listen);
    match cfg.admin_listen {
        Some(a) => println!("admin:    {a} (http: /metrics /ping /health /status)"),
        None => println!("admin:    none (no admin_listen: no metrics)"),
    }

    if let Some(t) = &cfg.tls {
        match crate::http::tls::server_config(t) {
            Ok(_) => match crate::http::tls::cert_not_after(&t.cert_file) {
                Ok(not_after) => {
                    let days = (not_after - crate::http::tls::unix_now()) / 86_400;
                    println!(
                        "tls:      {} (expires {}, in {days} days){}",
                        t.cert_file.display(),
                        crate::hsm::Date::from_days(not_after.div_euclid(86_400)),
                        if t.client_ca_file.is_some() {
                            format!(", mTLS names {:?}", t.client_names)
                        } else {
                            String::new()
                        }
                    );
                    if days < 0 {
                        problems.push(format!("tls: {} has expired", t.cert_file.display()));
                    } else if days < 30 {
                        eprintln!("warning: tls certificate expires in {days} days");
                    }
                }
                Err(e) => problems.push(format!("tls: {e}")),
            },
            Err(e) => problems.push(e),
        }
    } else {
        println!(
            "tls:      none (plain HTTP: only on loopback or behind a TLS-terminating balancer)"
        );
    }

    match Tenants::from_config(&cfg) {
        Ok(_) => {
            if cfg.prefix.is_empty() {
                eprintln!("warning: no [[prefix]]: every API request gets InvalidUriPathException");
            }
            for p in &cfg.prefix {
                let keys = match &p.keys {
                    KeyAllowList::All(_) => "all keys".to_string(),
                    KeyAllowList::List(l) => format!("keys {}", l.join(", ")),
                };
                let ids: Vec<&str> = p
                    .credential
                    .iter()
                    .map(|c| c.access_key_id.as_str())
                    .collect();
                println!(
                    "prefix:   {:?} -> {keys}; credentials {}{}",
                    format!("{}/kms/xks/v1", p.path),
                    ids.join(", "),
                    p.quota_rps
                        .map_or(String::new(), |q| format!("; quota {q} req/s"))
                );
            }
        }
        Err(e) => problems.push(format!("credentials: {e}")),
    }

    match open_hsm(&cfg) {
        Ok(hsm) => report_hsm(&hsm, &mut problems),
        Err(e) => problems.push(e),
    }

    if problems.is_empty() {
        println!("result:   OK");
        return Ok(());
    }
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Err(format!("check-config: {} problem(s)", problems.len()))
}

fn open_hsm(cfg: &Config) -> Result<std::sync::Arc<Hsm>, String> {
    Hsm::open(&cfg.hsm, || cfg.read_pin().map_err(|e| e.to_string()))
        .map_err(|e| format!("hsm: {e}"))
}

fn report_hsm(hsm: &Hsm, problems: &mut Vec<String>) {
    println!(
        "hsm:      {} -> token {:?} ({} {}, serial {}); login OK",
        hsm.module.display(),
        hsm.token.label,
        hsm.token.manufacturer,
        hsm.token.model,
        hsm.token.serial
    );
    let keys = match hsm.with_session(|s| hsm.list_keys(s)) {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("hsm: listing keys: {e}"));
            return;
        }
    };
    let canary = keys.iter().any(|k| k.label == hsm.canary_label);
    let enabled = keys
        .iter()
        .filter(|k| {
            k.label != hsm.canary_label && !k.state.disabled() && k.state.deletion.is_none()
        })
        .count();
    println!(
        "keys:     {} HYOK key(s), {enabled} enabled (plus the health canary: {})",
        keys.iter().filter(|k| k.label != hsm.canary_label).count(),
        if canary {
            "present"
        } else {
            "missing, the server creates it on start"
        }
    );
    if canary {
        match hsm.with_session(|s| crate::health::canary_round_trip(hsm, s)) {
            Ok(()) => println!("health:   canary encrypt + decrypt OK"),
            Err(HsmError::Other(m)) => problems.push(format!("health: {m}")),
            Err(e) => problems.push(format!("health: canary round trip: {e}")),
        }
    }
}
