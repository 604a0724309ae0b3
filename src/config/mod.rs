//! Configuration: the TOML schema and where the file is found. Validation lives in
//! `validate.rs`, PIN reading in `secrets.rs`, paths and the zero-setup default in `paths.rs`.
//!
//! Every error names the file, the key and the problem, and never contains a PIN.
//! Discovery order: `$XKI_PKCS11_CONF`, `~/.config/xki/pkcs11.toml`, `/etc/xki/pkcs11.toml`;
//! with none of them the module serves the embedded token from the per-user data directory.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

mod paths;
mod secrets;
mod validate;

pub use paths::{
    create_private_dir, open_private_append, system_config_dir, user_config_path, user_data_dir,
    write_private_file,
};

/// A secret (PIN or key-file contents) that is wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// Environment variable naming the config file.
pub const CONF_ENV: &str = "XKI_PKCS11_CONF";

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or `<built-in default>`).
    pub file: String,
    /// Dotted key path, e.g. `backend.hsm-a.pin_file`; empty when the file as a whole is bad.
    pub key: String,
    /// What is wrong. Never contains a secret.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole module configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Log file; default is stderr.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Format of log and audit lines: `"text"` (default) or `"json"` (one object per line).
    /// The environment variable `XKI_LOG_FORMAT` overrides it (the proxy sets it from its
    /// own `log_format`).
    #[serde(default)]
    pub log_format: Option<String>,
    /// Audit file for the `xki_audit` target; default is the same sink as the log.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
    /// How long audit records written to `audit_file` may wait in memory before a background
    /// thread writes them out, in milliseconds (default 100). A crash (not a normal exit or
    /// `C_Finalize`, which write everything) loses at most this much of the audit trail.
    /// `0`: every record is written to the file before the call that made it returns.
    #[serde(default = "default_audit_flush_ms")]
    pub audit_flush_ms: u64,
    /// What happens when an audit record cannot be written to `audit_file` (full disk, I/O
    /// error): `"refuse"` (default: key operations fail with `CKR_DEVICE_ERROR` until records
    /// can be written again) or `"continue"` (operations go on; lost records are counted).
    #[serde(default)]
    pub audit_on_failure: crate::audit::health::OnFailure,
    /// The virtual slots callers see, in slot-id order (slot ids are 0, 1, ...).
    #[serde(rename = "slot", default)]
    pub slots: Vec<SlotConfig>,
    /// Named backends (real tokens).
    #[serde(rename = "backend", default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Where the config came from (set by the loader, not by the file).
    #[serde(skip)]
    pub source: String,
}

/// Default of [`Config::audit_flush_ms`].
fn default_audit_flush_ms() -> u64 {
    100
}

/// One virtual slot/token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Token label callers see (at most 32 bytes).
    pub label: String,
    /// Names of `[backend.NAME]` entries. More than one forms a replica group.
    pub backends: Vec<String>,
    /// Which keys of the backend are visible through this slot.
    #[serde(default)]
    pub keys: KeyFilter,
    /// File holding the user PIN callers give to `C_Login`. Default: the backend's PIN.
    #[serde(default)]
    pub user_pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN for `C_Login`.
    #[serde(default)]
    pub user_pin_env: Option<String>,
    /// Allow `C_DestroyObject` on keys of this slot. Default `false` (deletion protection).
    #[serde(default)]
    pub allow_destroy: bool,
    /// `"none"` (default) or `"hsm"`: the HSMs of a replica group replicate keys themselves,
    /// so a key generated on one member appears on all.
    #[serde(default)]
    pub replication: Replication,
    /// Replica groups: how often members out of service are re-checked (default 5000 ms).
    #[serde(default)]
    pub probe_interval_ms: Option<u64>,
    /// Replica groups with `replication = "hsm"`: how long a generated key may take to appear
    /// on every member before generation fails (default 10000 ms).
    #[serde(default)]
    pub replication_wait_ms: Option<u64>,
    /// Replica groups: label of the key the probe encrypts with to check a member; default
    /// any key the group knows on that member.
    #[serde(default)]
    pub canary_label: Option<String>,
    /// Consecutive wrong user PINs after which `C_Login` answers `CKR_PIN_LOCKED` until the
    /// operator unlocks the slot (default 10; `0`: unlimited, no counter is kept).
    #[serde(default = "default_max_pin_attempts")]
    pub max_pin_attempts: u32,
    /// Where the slot's failed-login counter is kept, shared by every process using this
    /// config (default: `pin-attempts/slot-<hex of the label>.state` in the per-user data
    /// directory; see `pin_attempts.rs`).
    #[serde(default)]
    pub pin_state_file: Option<PathBuf>,
}

/// Default of [`SlotConfig::max_pin_attempts`].
fn default_max_pin_attempts() -> u32 {
    SlotConfig::DEFAULT_MAX_PIN_ATTEMPTS
}

impl SlotConfig {
    /// Default of `max_pin_attempts`.
    pub const DEFAULT_MAX_PIN_ATTEMPTS: u32 = 10;

    /// The slot's PIN attempt counter file: `pin_state_file`, or the default in the per-user
    /// data directory.
    pub fn pin_state_path(&self) -> PathBuf {
        self.pin_state_file.clone().unwrap_or_else(|| {
            let hex: String = self.label.bytes().map(|b| format!("{b:02x}")).collect();
            user_data_dir()
                .join("pin-attempts")
                .join(format!("slot-{hex}.state"))
        })
    }

    /// Default probe interval of replica groups.
    pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 5000;
    /// Default wait for HSM replication of a generated key.
    pub const DEFAULT_REPLICATION_WAIT_MS: u64 = 10_000;
}

/// How keys get onto every member of a replica group.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Nothing replicates: key generation on a multi-member group is refused.
    #[default]
    None,
    /// The HSM cluster replicates keys itself.
    Hsm,
}

/// The key allow-list of a slot. An empty filter admits every key that passes the
/// never-export policy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyFilter {
    /// Only keys whose `CKA_LABEL` starts with this prefix (also required of new keys).
    #[serde(default)]
    pub label_prefix: Option<String>,
    /// Only keys whose `CKA_LABEL` is in this list.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Only keys whose `CKA_ID` (hex) is in this list.
    #[serde(default)]
    pub ids_hex: Option<Vec<String>>,
}

/// Which kind of token a backend is.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A vendor PKCS#11 library (`module = ...`).
    #[default]
    Pkcs11,
    /// The built-in software token (development and tests; not an HSM).
    Embedded,
}

/// One `[backend.NAME]` table. `Default` is a pkcs11 backend with nothing set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `"pkcs11"` (default) or `"embedded"`.
    #[serde(default, rename = "type")]
    pub kind: BackendKind,
    /// pkcs11: path of the vendor PKCS#11 library.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// pkcs11: label of the token to use.
    #[serde(default)]
    pub token_label: Option<String>,
    /// pkcs11: slot id of the token to use (alternative to `token_label`).
    #[serde(default)]
    pub slot_id: Option<u64>,
    /// File holding the token's user PIN (pkcs11) or the store PIN (embedded).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding that PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// pkcs11: most backend sessions kept open (default 32).
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Per-call deadline in milliseconds for health and failover decisions (default 2000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Replica group member: run reads and crypto on the caller's thread instead of handing
    /// them to a worker that `timeout_ms` can abandon (default: `true` for embedded, `false`
    /// for pkcs11). Only for members of a group: a single-backend slot calls its backend
    /// directly anyway.
    #[serde(default)]
    pub inline_calls: Option<bool>,
    /// embedded: the key-store file.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// embedded: a file of 32 random bytes sealing the store instead of a PIN-derived key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// pkcs11: how the HSM wants the IV of an AES-GCM encryption (default `auto`: chosen from
    /// the library's manufacturer ID and functions; see README "HSM vendors").
    #[serde(default)]
    pub gcm_iv: GcmIvMode,
    /// embedded: create a new, empty store when `store` does not exist (default `false`: a
    /// missing store is an error naming the path, so that a mistyped or unmounted path never
    /// becomes an empty token).
    #[serde(default)]
    pub create: bool,
}

/// `[backend.NAME] gcm_iv`: how a pkcs11 backend's HSM takes the IV of an AES-GCM encryption.
/// Decryption always takes the caller's IV.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GcmIvMode {
    /// Chosen at start-up from `CK_INFO.manufacturerID` (the vendor rows of the quirk table)
    /// and whether the library offers the PKCS#11 3.0 message functions; logged.
    #[default]
    Auto,
    /// The caller's IV in `CK_GCM_PARAMS.pIv` (SoftHSM2, Luna outside FIPS mode). IVs the
    /// module generates come from the HSM's `C_GenerateRandom`.
    Caller,
    /// `pIv` = 12 zero bytes; the library writes the IV it generated there (AWS CloudHSM,
    /// nShield). Any other IV is refused by the HSM.
    WriteBack,
    /// `pIv` = NULL, `ulIvLen` = 0; the output is ciphertext || tag || IV (Luna in FIPS mode).
    Append,
    /// PKCS#11 3.0 `C_EncryptMessage` with `CKG_GENERATE_RANDOM` (3.0 tokens, e.g. kryoptic).
    Message,
}

impl GcmIvMode {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            GcmIvMode::Auto => "auto",
            GcmIvMode::Caller => "caller",
            GcmIvMode::WriteBack => "write-back",
            GcmIvMode::Append => "append",
            GcmIvMode::Message => "message",
        }
    }
}

impl BackendConfig {
    /// Default number of backend sessions kept open.
    pub const DEFAULT_MAX_SESSIONS: usize = 32;
    /// Default per-call deadline.
    pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
}

impl Config {
    /// Parse and validate a config from TOML text. `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: source.to_string(),
            key: String::new(),
            problem: e.to_string().trim().replace('\n', " "),
        })?;
        config.source = source.to_string();
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            key: String::new(),
            problem: format!("cannot read config file: {e}"),
        })?;
        Config::from_toml(&text, &source)
    }

    /// Find and load the config: `$XKI_PKCS11_CONF`, then the user path, then the system
    /// path; `Ok(None)` when none exists (the caller then serves the embedded token).
    pub fn discover() -> Result<Option<Config>, ConfigError> {
        if let Some(path) = std::env::var_os(CONF_ENV) {
            // An explicitly named file must exist: silently falling back would hide a typo.
            return Config::from_file(Path::new(&path)).map(Some);
        }
        for path in [
            user_config_path(),
            Some(system_config_dir().join("pkcs11.toml")),
        ]
        .into_iter()
        .flatten()
        {
            if path.exists() {
                return Config::from_file(&path).map(Some);
            }
        }
        Ok(None)
    }
}

/// Decode a hex string (either case); `None` if it is not valid even-length hex.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
