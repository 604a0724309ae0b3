//! Admin commands that act on the HSM directly (no server needed): key lifecycle, one-shot
//! health check, and `reload` (SIGHUP to the running server via its pid file).

use std::path::Path;
use std::sync::Arc;

use crate::config::{valid_key_id, Config};
use crate::hsm::{Date, Hsm, HsmError, KeyState, KeyStatus, Usage, UsageFlags};

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

/// What the KMS console asks for when an external key is registered, plus what the operator
/// needs to see (deletion date, state problems).
fn key_json(label: &str, st: &KeyState, canary: bool) -> serde_json::Value {
    let mut notes = Vec::new();
    if st.status == KeyStatus::Damaged {
        notes.push(
            "stored key state is damaged: treated as DISABLED; `keys enable --usage ...` rewrites it"
                .to_string(),
        );
    }
    if st.incomplete() {
        notes.push(
            "an admin change was interrupted: the HSM still allows the key; run the last keys command again"
                .to_string(),
        );
    }
    if !st.module_state {
        notes.push("foreign PKCS#11 library: status and usage are folded together".to_string());
    }
    if canary {
        notes.push("health canary".to_string());
    }
    serde_json::json!({
        "externalKeyId": label,
        "keySpec": "AES_256",
        "keyUsage": st.usage.names(),
        "keyStatus": if st.disabled() { "DISABLED" } else { "ENABLED" },
        "deletionDate": st.deletion.map(|d| d.to_string()),
        "hsmAllows": UsageFlags { encrypt: st.encrypt, decrypt: st.decrypt }.names(),
        "notes": notes,
    })
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

/// The error of an admin command about key `label`: "not found" names the key and the token.
fn about<'a>(hsm: &'a Hsm, label: &'a str) -> impl Fn(HsmError) -> String + 'a {
    move |e| match e {
        HsmError::KeyNotFound => format!(
            "no key {label:?} on token {:?} (`xki-proxy keys list` shows the keys)",
            hsm.token.label
        ),
        e => format!("key {label:?}: {e}"),
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn state_of(hsm: &Hsm, label: &str) -> Result<KeyState, String> {
    hsm.with_session(|s| hsm.key_state(s, label))
        .map_err(about(hsm, label))
}

/// `keys create`: the key with its final usage, then what the KMS console asks for.
pub fn create(config: &Path, label: &str, usage: Usage, json: bool) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.create_key(s, label, usage).map(|_| ()))
        .map_err(|e| e.to_string())?;
    let st = state_of(&hsm, label)?;
    let v = key_json(label, &st, false);
    if json {
        print_json(&v);
        return Ok(());
    }
    println!("External Key ID: {label}");
    println!("Key spec:        AES_256");
    println!("Key usage:       {}", st.usage.names().join(", "));
    println!(
        "Key status:      {}",
        if st.disabled() { "DISABLED" } else { "ENABLED" }
    );
    if usage != Usage::Both {
        println!("Note: a KMS registers an external key only when it allows ENCRYPT and DECRYPT.");
    }
    Ok(())
}

/// `keys list`.
pub fn list(config: &Path, json: bool) -> Result<(), String> {
    let (_, hsm) = open(config)?;
    let keys = hsm
        .with_session(|s| hsm.list_keys(s))
        .map_err(|e| e.to_string())?;
    if json {
        let all: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| key_json(&k.label, &k.state, k.label == hsm.canary_label))
            .collect();
        print_json(&serde_json::Value::Array(all));
        return Ok(());
    }
    println!(
        "{:<40} {:<8} {:<17} {:<16} {:<13} NOTES",
        "EXTERNAL_KEY_ID", "SPEC", "STATE", "USAGE", "DELETION_DATE"
    );
    for k in keys {
        let st = &k.state;
        let state = match (st.status, st.deletion) {
            (KeyStatus::Damaged, _) => "DAMAGED",
            (_, Some(_)) => "PENDING_DELETION",
            (KeyStatus::Disabled, None) => "DISABLED",
            (KeyStatus::Enabled, None) => "ENABLED",
        };
        let usage = st.usage.names().join(",");
        let notes = key_json(&k.label, st, k.label == hsm.canary_label)["notes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:<8} {:<17} {:<16} {:<13} {}",
            k.label,
            "AES_256",
            state,
            if usage.is_empty() { "-" } else { &usage },
            st.deletion.map_or("-".to_string(), |d| d.to_string()),
            if notes.is_empty() { "-" } else { &notes },
        );
    }
    Ok(())
}

/// `keys enable`: restores the usage the key had, or sets `--usage`.
pub fn enable(config: &Path, label: &str, usage: Option<Usage>) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    let f = hsm
        .with_session(|s| hsm.enable_key(s, label, usage))
        .map_err(about(&hsm, label))?;
    println!("{label}: ENABLED, usage {}", f.names().join(","));
    Ok(())
}

/// `keys disable`.
pub fn disable(config: &Path, label: &str) -> Result<(), String> {
    check_id(label)?;
    let (_, hsm) = open(config)?;
    hsm.with_session(|s| hsm.disable_key(s, label))
        .map_err(about(&hsm, label))?;
    println!("{label}: DISABLED (usage kept for `keys enable`)");
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
        .map_err(about(&hsm, label))?;
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
        .map_err(about(&hsm, label))?;
    println!("{label}: deletion cancelled; key stays DISABLED until `keys enable`");
    Ok(())
}

/// `keys purge`: destroy keys whose deletion date has passed. `today` is overridable only in
/// test builds (the `fault-injection` feature; see main.rs), so a production purge can never
/// destroy a key before its date.
pub fn purge(config: &Path, today: Option<Date>) -> Result<(), String> {
    let (_, hsm) = open(config)?;
    let today = today.unwrap_or_else(Date::today);
    let keys = hsm
        .with_session(|s| hsm.list_keys(s))
        .map_err(|e| e.to_string())?;
    let (mut done, mut failed) = (0, 0);
    for k in keys
        .iter()
        .filter(|k| k.state.deletion.is_some_and(|d| d <= today))
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

/// `health`: one deep check (the server's own, canary creation rules included), printed as
/// the GetHealthStatus body: the same shape and member names the KMS sees, plus
/// `encryptIvSource` (token-generated IVs or the HSM's RNG). The check's
/// latency and any failure go to stderr; the exit status is non-zero when UNAVAILABLE.
pub fn health(config: &Path) -> Result<(), String> {
    let (cfg, hsm) = open(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let iv_source = hsm.iv_path().describe();
    let health = crate::health::Health::new(hsm.clone(), cfg.fleet_size);
    let check = rt.block_on(health.check_now());
    // A check that timed out left its call running on an HSM worker; this process must not
    // exit while it is still inside the PKCS#11 library (as `serve` waits on its way out).
    hsm.close();
    // The GetHealthStatus body, plus one field of ours: where Encrypt's IVs come from.
    let mut body = serde_json::to_value(health.report()).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert("encryptIvSource".into(), iv_source.into());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&body).unwrap_or_default()
    );
    eprintln!(
        "health check: {} in {} µs",
        check.status(),
        check.latency.as_micros()
    );
    match (check.status(), check.error) {
        ("UNAVAILABLE", e) => Err(format!(
            "health check failed: {}",
            e.unwrap_or_else(|| "UNAVAILABLE".into())
        )),
        (_, Some(e)) => {
            eprintln!("note: {e}");
            Ok(())
        }
        _ => Ok(()),
    }
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

/// `pin unlock`: lift the module's user-PIN lock of one slot (see the module README, "PIN
/// attempt limit"). Needs write access to the slot's `pin_state_file`.
pub fn pin_unlock(module_config: Option<&Path>, slot: &str) -> Result<(), String> {
    use xki_pkcs11::config::Config as ModuleConfig;
    let cfg = match module_config {
        Some(p) => ModuleConfig::from_file(p).map_err(|e| e.to_string())?,
        None => ModuleConfig::discover()
            .map_err(|e| e.to_string())?
            .map_or_else(ModuleConfig::embedded_default, Ok)
            .map_err(|e| e.to_string())?,
    };
    let failures = xki_pkcs11::pin_attempts::operator_unlock(&cfg, slot)?;
    println!("slot {slot}: unlocked ({failures} consecutive failed logins cleared)");
    Ok(())
}
