//! Proxy configuration: one TOML file, strict schema, validation messages that name the key.
//!
//! Secrets (HSM PIN, SigV4 secrets) are never inline: `pin_file`/`pin_env` and `secret_file`.
//! Everything under `[[prefix]]` and `[tls]` is re-read on reload (SIGHUP); the listeners, the
//! HSM settings and switching TLS on or off need a restart.
//!
//! The schema lives here; `validate.rs` checks it, `secrets.rs` reads the PIN and SigV4
//! secrets, `ids.rs` holds the identifier charsets the request path checks too.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

mod ids;
mod secrets;
mod validate;

pub use ids::{valid_access_key_id, valid_key_id, valid_secret, validate_prefix_path};

/// A configuration problem, naming the file, the key and what is wrong.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, problem: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {problem}"))
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the XKS API listens on, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// Optional plain-HTTP admin listener serving `/metrics`, `/ping` and `/ready`.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Minimum log level: error, warn, info (default), debug, trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Where `serve` writes its pid, so `reload` can signal it.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Number of proxy instances reported in health (`xksProxyFleetSize`).
    #[serde(default = "one")]
    pub fleet_size: u32,
    /// Largest accepted request body in bytes (checked before the body is read).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Async worker threads for HTTP, TLS, SigV4 and JSON; 0 = chosen at start-up
    /// ([`crate::tuning`]). HSM calls never run on them (they have their own threads, one per
    /// `[hsm] sessions`).
    #[serde(default)]
    pub async_workers: usize,
    /// TLS; absent means plain HTTP (only for tests or behind a TLS-terminating balancer).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The PKCS#11 module and token.
    pub hsm: HsmConfig,
    /// Limits that keep slow, unfinished or too many client connections from taking the
    /// service down.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// Path-prefix tenants (each an isolated key store).
    #[serde(default)]
    pub prefix: Vec<PrefixConfig>,
}

fn default_log_level() -> String {
    "info".into()
}
fn one() -> u32 {
    1
}
fn default_max_body() -> usize {
    256 * 1024
}

/// Server certificate and optional client-certificate (mTLS) requirements.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate chaining to it.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Accepted client subject CN or DNS SAN values (any one matches). Required with a CA.
    #[serde(default)]
    pub client_names: Vec<String>,
}

/// Which PKCS#11 module, which token, how many sessions, how long to wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 library; absent = our `libxki_pkcs11.so`, found as described in
    /// [`crate::module_path`].
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label to find the slot by (preferred).
    #[serde(default)]
    pub token_label: Option<String>,
    /// Slot id, when no token label is given.
    #[serde(default)]
    pub slot: Option<u64>,
    /// File holding the user PIN.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Logged-in sessions kept open; also the number of concurrent HSM calls. Absent = chosen
    /// at start-up from where HSM calls spend their time ([`crate::tuning`]).
    #[serde(default)]
    pub sessions: Option<usize>,
    /// Per-request HSM deadline (queue wait + call) in ms -> DependencyTimeoutException.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Requests allowed to wait for a busy pool; beyond it -> ThrottlingException at once.
    #[serde(default = "default_queue")]
    pub queue_depth: usize,
    /// How long a key label -> object handle lookup is cached (state is read every call).
    #[serde(default = "default_key_cache")]
    pub key_cache_ms: u64,
    /// Label of the dedicated health-check key (created if missing).
    #[serde(default = "default_canary")]
    pub canary_label: String,
    /// Interval of the background deep health check, ms (at most 30 000).
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
}

fn default_deadline() -> u64 {
    200
}
fn default_queue() -> usize {
    256
}
fn default_key_cache() -> u64 {
    5000
}
fn default_canary() -> String {
    "xki-proxy-canary".into()
}
fn default_health_interval() -> u64 {
    10_000
}

/// `[clients]`: what a client connection may take (see README: Reliability, Hostile clients).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Time to read one request: its head must be complete this long after the connection
    /// starts waiting for it (after accept, a finished response, or the TLS handshake, which
    /// has the same limit), then its body within the same time again. Also the keep-alive
    /// idle limit.
    #[serde(default = "default_request_read_timeout")]
    pub request_read_timeout_ms: u64,
    /// Open client connections on the API listener; 0 = derived from the descriptor limit
    /// (limit - `fd_reserve` - the admin listener's, at most 65 536).
    #[serde(default)]
    pub max_connections: usize,
    /// File descriptors kept out of reach of client connections, for the HSM side (the
    /// PKCS#11 library, SoftHSM2's object files, audit and log files).
    #[serde(default = "default_fd_reserve")]
    pub fd_reserve: u64,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            request_read_timeout_ms: default_request_read_timeout(),
            max_connections: 0,
            fd_reserve: default_fd_reserve(),
        }
    }
}

fn default_request_read_timeout() -> u64 {
    10_000
}
fn default_fd_reserve() -> u64 {
    256
}

/// One tenant: a URI path prefix with its own credentials, keys, regions, quota and rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// URI path prefix before `/kms/xks/v1`, e.g. `/tenant-a`; may be empty.
    #[serde(default)]
    pub path: String,
    /// SigV4 credentials accepted on this prefix (two or more allow rotation).
    pub credential: Vec<CredentialConfig>,
    /// Allowed SigV4 regions; absent = any.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// `"all"` or a list of external key ids this prefix may use.
    pub keys: KeyAllowList,
    /// Requests per second allowed on this prefix; absent = unlimited.
    #[serde(default)]
    pub quota_rps: Option<u32>,
    /// Secondary authorization rules (first match wins; with rules, no match = deny).
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

/// `keys = "all"` or `keys = ["id", ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyAllowList {
    /// Must be the string "all".
    All(String),
    /// Explicit external key ids.
    List(Vec<String>),
}

/// One SigV4 access key id and the file holding its secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// 20-30 chars of A-Z2-7.
    pub access_key_id: String,
    /// File whose (trimmed) content is the secret access key.
    pub secret_file: PathBuf,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Matching requests proceed.
    Allow,
    /// Matching requests get AccessDeniedException.
    Deny,
}

/// A secondary-authorization rule on requestMetadata. Unset fields match anything;
/// list entries may contain `*` wildcards (any run of characters).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name logged when the rule denies.
    pub name: String,
    /// allow or deny.
    pub effect: Effect,
    /// External key ids.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// awsPrincipalArn patterns.
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    /// kmsOperation values.
    #[serde(default)]
    pub operations: Option<Vec<String>>,
    /// awsSourceVpc values.
    #[serde(default)]
    pub source_vpcs: Option<Vec<String>>,
    /// awsSourceVpce values.
    #[serde(default)]
    pub source_vpces: Option<Vec<String>>,
}

/// A validated SigV4 credential with its secret loaded.
pub struct Credential {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (wiped on drop).
    pub secret: Zeroizing<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <secret>)", self.access_key_id)
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    const BASE: &str = r#"
listen = "127.0.0.1:0"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
pin_env = "PIN"
"#;

    #[test]
    fn minimal_ok() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.hsm.sessions, None);
        assert!(c.prefix.is_empty());
    }

    #[test]
    fn async_workers_default_and_bounds() {
        assert_eq!(parse(BASE).unwrap().async_workers, 0);
        assert_eq!(
            parse(&format!("async_workers = 1\n{BASE}"))
                .unwrap()
                .async_workers,
            1
        );
        let e = parse(&format!("async_workers = 5000\n{BASE}")).unwrap_err();
        assert!(e.contains("async_workers"), "{e}");
    }

    #[test]
    fn clients_defaults_and_bounds() {
        let c = parse(BASE).unwrap().clients;
        assert_eq!(
            (c.request_read_timeout_ms, c.max_connections, c.fd_reserve),
            (10_000, 0, 256)
        );
        let e = parse(&format!("{BASE}[clients]\nrequest_read_timeout_ms = 0\n")).unwrap_err();
        assert!(e.contains("clients.request_read_timeout_ms"), "{e}");
        let e = parse(&format!("{BASE}[clients]\nfd_reserve = 1\n")).unwrap_err();
        assert!(e.contains("clients.fd_reserve"), "{e}");
        let c = parse(&format!("{BASE}[clients]\nmax_connections = 100\n"))
            .unwrap()
            .clients;
        assert_eq!(c.max_connections, 100);
    }

    #[test]
    fn unknown_key_named() {
        let e = parse(&format!("{BASE}bogus = 1\n")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn prefix_checks() {
        let p = r#"
[[prefix]]
path = "/a/"
keys = "all"
[[prefix.credential]]
access_key_id = "ABCDEFGHIJKLMNOPQRST"
secret_file = "/x"
"#;
        let e = parse(&format!("{BASE}{p}")).unwrap_err();
        assert!(e.contains("prefix[0].path"), "{e}");
        let p2 = p
            .replace("/a/", "/a")
            .replace("ABCDEFGHIJKLMNOPQRST", "abc");
        let e = parse(&format!("{BASE}{p2}")).unwrap_err();
        assert!(e.contains("prefix[0].credential[0].access_key_id"), "{e}");
        let p3 = p.replace("/a/", "/a").replace("\"all\"", "\"some\"");
        let e = parse(&format!("{BASE}{p3}")).unwrap_err();
        assert!(e.contains("prefix[0].keys"), "{e}");
        let p4 = p.replace("/a/", "/a");
        parse(&format!("{BASE}{p4}")).unwrap();
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../../proxy.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.prefix[0].credential.len(), 2);
    }
}
