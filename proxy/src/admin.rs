//! Admin commands that act on the HSM directly (no server needed): key lifecycle, one-shot
//! health check, and `reload` (SIGHUP to the running server via its pid file).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{valid_key_id, Config};
use crate::hsm::{Date, Hsm, HsmError, Usage};

/// Open the HSM named in the config (for CLI use).
pub fn open(config: &Path) -> Result<(Config, Arc<Hsm>), String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let hsm = Hsm::open(&cfg.hsm, || cfg.read_pin().map_err(|e| e.to_string()))
        .map_err(|e| format!("hsm: {e}"))?;
    Ok((cfg, hsm))
}

fn check_id(id: &str) -> Result<(), String> {
    if valid_key_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{id:?}: external key ids are 1-128 chars of [A-Za-z0-9._-]"
        ))
    }
}

fn usage_str(e: bool, d: bool) -> &'static str {
    match (e, d) {
        (true, true) => "ENCRYPT,DECRYPT",
        (true, false) => "ENCRYPT",
        (false, true) => "DECRYPT",
        (false, false) => "-",
    }
}

/// `keys init`: open the configured token, letting our module create each embedded store
/// of its config that does not exist yet (`XKI_EMBEDDED_CREATE=1` for this one
/// `C_Initialize`; without it a missing store is an error naming the path). An existing
/// store is opened as it is, never replaced.
pub fn init(config: &Path) -> Result<(), String> {
    // Single-threaded here: nothing has loaded the module or started a thread yet.
    std::env::set_var(xki_pkcs11::backend::embedded::CREATE_ENV, "1");
    let (_, hsm) = open(config)?;
    let keys = hsm
        .with_session(|s| hsm.list_keys(s))
        .map_err(|e| e.to_string())?;
    println!("token {:?} ready ({} key(s))", hsm.token.label, keys.len());
    Ok(())
}

/// `keys create`.
pub fn create(config: &Path, label: &str, usage: Usage) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.create_key(s, label, usage).map(|_| ()))
        .map_err(|e| e.to_string())?;
    println!("External Key ID: {label}");
    Ok(())
}

/// `keys list`.
pub fn list(config: &Path) -> Result<(), String> {
    let (_, hsm) = open(config)?;
    let keys = hsm
        .with_session(|s| hsm.list_keys(s))
        .map_err(|e| e.to_string())?;
    println!(
        "{:<40} {:<17} {:<16} DELETION_DATE",
        "EXTERNAL_KEY_ID", "STATE", "USAGE"
    );
    for k in keys {
        let state = match (k.deletion, k.state.disabled()) {
            (Some(_), _) => "PENDING_DELETION",
            (None, true) => "DISABLED",
            (None, false) => "ENABLED",
        };
        let mark = if k.label == hsm.canary_label {
            " (health canary)"
        } else {
            ""
        };
        println!(
            "{:<40} {:<17} {:<16} {}{}",
            k.label,
            state,
            usage_str(k.state.encrypt, k.state.decrypt),
            k.deletion.map_or("-".to_string(), |d| d.to_string()),
            mark
        );
    }
    Ok(())
}

/// `keys enable` (with a usage, default both).
pub fn enable(config: &Path, label: &str, usage: Usage) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.set_usage(s, label, usage))
        .map_err(|e| e.to_string())?;
    println!("{label}: ENABLED ({usage:?})");
    Ok(())
}

/// `keys disable`.
pub fn disable(config: &Path, label: &str) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.disable_key(s, label))
        .map_err(|e| e.to_string())?;
    println!("{label}: DISABLED");
    Ok(())
}

/// `keys schedule-deletion --days N` (7..=30, like KMS).
pub fn schedule_deletion(config: &Path, label: &str, days: u32) -> Result<(), String> {
    check_id(label)?;
    if !(7..=30).contains(&days) {
        return Err("--days must be between 7 and 30".into());
    }
    let on = Date::today().plus_days(i64::from(days));
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.schedule_deletion(s, label, on))
        .map_err(|e| e.to_string())?;
    println!(
        "{label}: DISABLED, pending deletion on {on} (run `keys purge` on or after that date)"
    );
    Ok(())
}

/// `keys cancel-deletion`.
pub fn cancel_deletion(config: &Path, label: &str) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.cancel_deletion(s, label))
        .map_err(|e| e.to_string())?;
    println!("{label}: deletion cancelled; key stays DISABLED until `keys enable`");
    Ok(())
}

/// `keys purge`: destroy keys whose deletion date has passed. `today` is overridable for tests.
pub fn purge(config: &Path, today: Option<Date>) -> Result<(), String> {
    let (_, hsm) = open(config)?;
    let today = today.unwrap_or_else(Date::today);
    let keys = hsm
        .with_session(|s| hsm.list_keys(s))
        .map_err(|e| e.to_string())?;
    let (mut done, mut failed) = (0, 0);
    for k in keys
        .iter()
        .filter(|k| k.deletion.is_some_and(|d| d <= today))
    {
        match hsm.with_session(|s| hsm.purge_key(s, &k.label, today)) {
            Ok(()) => {
                done += 1;
                println!("{}: destroyed", k.label);
            }
            Err(e) => {
                failed += 1;
                let why = match e.rv() {
                    Some(cryptoki::error::RvError::ActionProhibited) => {
                        "the module refused C_DestroyObject (deletion protection / CKA_DESTROYABLE=false)".to_string()
                    }
                    _ => e.to_string(),
                };
                eprintln!("{}: NOT destroyed: {why}", k.label);
            }
        }
    }
    println!("purge: {done} destroyed, {failed} failed");
    if failed > 0 {
        Err(format!("{failed} key(s) could not be destroyed"))
    } else {
        Ok(())
    }
}

/// `health`: one deep check, printed as the GetHealthStatus body would be.
pub fn health(config: &Path) -> Result<(), String> {
    let (cfg, hsm) = open(config)?;
    let start = Instant::now();
    let r = hsm.with_session(|s| crate::health::canary_round_trip(&hsm, s));
    let status = match &r {
        Ok(()) => "ACTIVE",
        Err(_) => "UNAVAILABLE",
    };
    let body = serde_json::json!({
        "xksProxyFleetSize": cfg.fleet_size,
        "ekmVendor": hsm.token.manufacturer,
        "ekmFleetDetails": [{
            "id": format!("{}/{}", hsm.token.label, hsm.token.serial),
            "model": hsm.token.model,
            "healthStatus": status,
        }],
        "checkLatencyMicros": start.elapsed().as_micros() as u64,
        "encryptIvSource": hsm.iv_path().describe(),
        "error": r.as_ref().err().map(HsmError::to_string),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&body).unwrap_or_default()
    );
    r.map_err(|e| format!("health check failed: {e}"))
}

/// `reload`: SIGHUP the server whose pid is in `pid_file`.
pub fn reload(config: &Path) -> Result<(), String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let pf = cfg
        .pid_file
        .ok_or("reload needs pid_file in the config (the server writes its pid there)")?;
    let pid: i32 = std::fs::read_to_string(&pf)
        .map_err(|e| format!("{}: {e}", pf.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a pid", pf.display()))?;
    // SAFETY: kill(2) with a pid read from our own pid file and a valid signal number; no
    // memory is passed.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc != 0 {
        return Err(format!(
            "kill -HUP {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    println!("sent SIGHUP to {pid}");
    Ok(())
}
