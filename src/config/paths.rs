//! Where files live (config discovery paths, the per-user data directory), private file
//! creation, and the zero-setup default config that bootstraps the embedded token there.

use super::{
    default_audit_flush_ms, BackendConfig, BackendKind, Config, ConfigError, KeyFilter,
    Replication, SlotConfig,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

impl Config {
    /// The zero-setup configuration: one slot `xki` on the embedded token in the per-user data
    /// directory, sealed by a key file. Creates the directory (0700) and a random user PIN file
    /// (0600) on first use; the embedded backend creates the key file and store.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        let dir = user_data_dir();
        let source = "<built-in default: embedded token>".to_string();
        let fail = |key: &str, e: std::io::Error, path: &Path| ConfigError {
            file: source.clone(),
            key: key.to_string(),
            problem: format!("cannot create {}: {e}", path.display()),
        };
        create_private_dir(&dir).map_err(|e| fail("data_dir", e, &dir))?;
        let pin_path = dir.join("user.pin");
        if !pin_path.exists() {
            let mut raw = Zeroizing::new([0u8; 12]);
            getrandom::getrandom(raw.as_mut())
                .map_err(|e| fail("user_pin_file", std::io::Error::other(e), &pin_path))?;
            let pin: Zeroizing<String> =
                Zeroizing::new(raw.iter().map(|b| format!("{b:02x}")).collect());
            write_private_file(&pin_path, pin.as_bytes())
                .map_err(|e| fail("user_pin_file", e, &pin_path))?;
        }
        let mut backends = BTreeMap::new();
        backends.insert(
            "embedded".to_string(),
            BackendConfig {
                kind: BackendKind::Embedded,
                store: Some(dir.join("embedded-token.store")),
                key_file: Some(dir.join("embedded-token.key")),
                // Zero-setup first run: the one case where a store is created unasked.
                create: true,
                ..Default::default()
            },
        );
        let config = Config {
            log_level: None,
            log_file: None,
            log_format: None,
            audit_file: Some(dir.join("audit.log")),
            audit_flush_ms: default_audit_flush_ms(),
            audit_on_failure: Default::default(),
            slots: vec![SlotConfig {
                label: "xki".to_string(),
                backends: vec!["embedded".to_string()],
                keys: KeyFilter::default(),
                user_pin_file: Some(pin_path),
                user_pin_env: None,
                allow_destroy: false,
                replication: Replication::None,
                probe_interval_ms: None,
                replication_wait_ms: None,
                canary_label: None,
                max_pin_attempts: SlotConfig::DEFAULT_MAX_PIN_ATTEMPTS,
                pin_state_file: None,
            }],
            backends,
            source,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Create a directory (and parents) readable only by its owner.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write a new file with mode 0600 (fails if it exists, so nothing is ever overwritten).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Open (or create, mode 0600) a file for appending lines: the log and audit files.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The system-wide config directory: `/etc/xki`, or `$XKI_SYSCONF_DIR` when set (for
/// relocated installs, and for tests that must not pick up an installed package's config).
pub fn system_config_dir() -> PathBuf {
    std::env::var_os("XKI_SYSCONF_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/etc/xki"), PathBuf::from)
}

/// `~/.config/xki/pkcs11.toml` (honouring `XDG_CONFIG_HOME`).
pub fn user_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("xki/pkcs11.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/xki/pkcs11.toml"))
}

/// The per-user data directory: `$XDG_DATA_HOME/xki` or `~/.local/share/xki`.
pub fn user_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("xki");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/xki"),
        None => PathBuf::from("/var/lib/xki"),
    }
}
