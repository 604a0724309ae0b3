//! The throwaway world the benchmark runs in: a SoftHSM2 token, an embedded store, the module
//! config naming both, and the environment variables that point the libraries at them.
//!
//! Everything lives in one temp dir that is deleted when the [`Fixture`] drops. The
//! environment is set here, before any PKCS#11 library is loaded: SoftHSM2 reads
//! `SOFTHSM2_CONF` and the module reads `XKI_PKCS11_CONF` once, at `C_Initialize`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2 as Debian installs it.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the throwaway SoftHSM2 token.
pub const SOFTHSM_TOKEN: &str = "xki-bench";
/// Virtual slot (token label) of the module over SoftHSM2.
pub const MODULE_HSM_SLOT: &str = "bench-hsm";
/// Virtual slot (token label) of the module's embedded token.
pub const MODULE_EMB_SLOT: &str = "bench-emb";
/// TEST-ONLY PIN that `softhsm/new-token.sh` gives the token (and the module slot over it).
pub const SOFTHSM_PIN: &str = "1234";
/// TEST-ONLY PIN sealing the throwaway embedded store (also the slot's `C_Login` PIN).
pub const EMBEDDED_PIN: &str = "bench-embedded-pin";

/// Where the module's audit records go during the run (`XKI_BENCH_AUDIT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuditSink {
    /// `audit_file` in the temp dir (default; what a deployment does).
    File,
    /// `audit_file = "/dev/null"`: records are still formatted, the write is nearly free.
    Null,
    /// No `audit_file`: records go to the log sink, the bench's stderr.
    Stderr,
}

impl AuditSink {
    /// From `XKI_BENCH_AUDIT` (`file`, `null`, `stderr`).
    pub fn from_env() -> Result<AuditSink, String> {
        match std::env::var("XKI_BENCH_AUDIT").as_deref() {
            Err(_) | Ok("") | Ok("file") => Ok(AuditSink::File),
            Ok("null") => Ok(AuditSink::Null),
            Ok("stderr") => Ok(AuditSink::Stderr),
            Ok(other) => Err(format!(
                "XKI_BENCH_AUDIT={other:?}: use file, null or stderr"
            )),
        }
    }
}

/// The temp dir and what is in it.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The audit file, when [`AuditSink::File`].
    pub audit_file: Option<PathBuf>,
    /// The fault injector's control file for the group's second member (`ok`/`fail`/`hang`).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub fault_control: PathBuf,
}

/// `libxki_pkcs11.so`: `$XKI_BENCH_MODULE`, else the newest of `target/<profile>/deps/` (where
/// `cargo bench` builds the cdylib: as a dependency of the bench it is not copied up) and
/// `target/<profile>/` (where `cargo build --release` puts it).
pub fn locate_module() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("XKI_BENCH_MODULE") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("XKI_BENCH_MODULE={}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let deps = exe.parent().ok_or("bench binary has no directory")?;
    let profile_dir = deps
        .parent()
        .ok_or("bench binary is not in target/<profile>/deps")?;
    let candidates = [
        deps.join("libxki_pkcs11.so"),
        profile_dir.join("libxki_pkcs11.so"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "libxki_pkcs11.so is in neither {} nor {}: the module's cdylib was not built. \
                 Run `cargo build --release --lib` (cargo bench normally builds it), or set \
                 XKI_BENCH_MODULE to the .so to measure",
                deps.display(),
                profile_dir.display()
            )
        })
}

/// Create the token, the store config and the module config, and set `SOFTHSM2_CONF`,
/// `XKI_PKCS11_CONF` and `XKI_EMBEDDED_TEST_KDF=fast`. Call before loading any library.
pub fn prepare(audit: AuditSink) -> Result<Fixture, String> {
    if !Path::new(SOFTHSM).is_file() {
        return Err(format!(
            "{SOFTHSM} not found: run softhsm/ensure-installed.sh"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("xki-bench-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let root = dir.path();
    let hsm_dir = root.join("softhsm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm/new-token.sh");
    let out = Command::new(&script)
        .arg(&hsm_dir)
        .arg(SOFTHSM_TOKEN)
        .arg(SOFTHSM_PIN)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let emb_pin = root.join("embedded.pin");
    write_private(&emb_pin, EMBEDDED_PIN.as_bytes())?;
    let audit_file = match audit {
        AuditSink::File => Some(root.join("audit.log")),
        AuditSink::Null => Some(PathBuf::from("/dev/null")),
        AuditSink::Stderr => None,
    };
    let mut audit_line = audit_file
        .as_ref()
        .map(|p| format!("audit_file = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    // Only when asked: a module built before `audit_flush_ms` existed refuses the key.
    if let Ok(ms) = std::env::var("XKI_BENCH_AUDIT_FLUSH_MS") {
        let ms: u64 = ms
            .trim()
            .parse()
            .map_err(|_| format!("XKI_BENCH_AUDIT_FLUSH_MS={ms:?}: not a number"))?;
        audit_line.push_str(&format!("audit_flush_ms = {ms}\n"));
    }
    let group = crate::group_setup::write(root)?;
    let config = format!(
        r#"# Written by benches/module_throughput (throwaway).
log_level = "warn"
{audit_line}
[[slot]]
label = "{MODULE_HSM_SLOT}"
backends = ["hsm"]

[[slot]]
label = "{MODULE_EMB_SLOT}"
backends = ["emb"]

[backend.hsm]
module = "{SOFTHSM}"
token_label = "{SOFTHSM_TOKEN}"
pin_file = {hsm_pin:?}

[backend.emb]
type = "embedded"
create = true
store = {store:?}
pin_file = {emb_pin:?}
{group}"#,
        hsm_pin = hsm_dir.join("user.pin").display().to_string(),
        store = root.join("embedded/token.store").display().to_string(),
        emb_pin = emb_pin.display().to_string(),
    );
    let conf = root.join("pkcs11.toml");
    std::fs::write(&conf, config).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    // Single-threaded here: no other thread reads the environment yet.
    std::env::set_var("SOFTHSM2_CONF", hsm_dir.join("softhsm2.conf"));
    std::env::set_var("XKI_PKCS11_CONF", &conf);
    std::env::set_var("XKI_EMBEDDED_TEST_KDF", "fast");
    // The failover run drives the module's TEST-ONLY fault injector on the second member
    // through this file (only a module built with `fault-injection` reads it).
    let fault_control = root.join("fault-control");
    std::fs::write(&fault_control, "ok")
        .map_err(|e| format!("cannot write {}: {e}", fault_control.display()))?;
    if cfg!(feature = "fault-injection") {
        std::env::set_var(
            format!("XKI_FAULT_CONTROL_{}", crate::group_setup::MEMBERS[1]),
            &fault_control,
        );
    }
    Ok(Fixture {
        fault_control,
        _dir: dir,
        audit_file: if audit == AuditSink::File {
            audit_file
        } else {
            None
        },
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
