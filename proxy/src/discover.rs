//! Where the proxy config comes from.
//!
//! Order: `--config FILE`, `$XKI_PROXY_CONF`, `$XDG_CONFIG_HOME/xki/proxy.toml` (default
//! `~/.config/xki/proxy.toml`), `/etc/xki/proxy.toml`, and finally the local demo config a
//! first `xki-proxy` run generated in the data directory (see [`crate::demo`]). An explicitly
//! named file (flag or variable) must exist: falling back silently would hide a typo.

use std::path::{Path, PathBuf};

/// Environment variable naming the proxy config file.
pub const CONF_ENV: &str = "XKI_PROXY_CONF";

/// The config file to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A real config (flag, variable, user or system file).
    File(PathBuf),
    /// The generated local demo config (exists).
    Demo(PathBuf),
    /// Nothing at all: `serve` creates the demo setup; other commands fail with `tried`.
    Nothing {
        /// Every path looked at, in order.
        tried: Vec<PathBuf>,
    },
}

/// `~/.config/xki/proxy.toml`, honouring `XDG_CONFIG_HOME`.
pub fn user_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("xki/proxy.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/xki/proxy.toml"))
}

/// Locate the config; `flag` is `--config`.
pub fn locate(flag: Option<&Path>) -> Result<Found, String> {
    if let Some(p) = flag {
        return Ok(Found::File(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os(CONF_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("{CONF_ENV}={}: no such file", p.display()));
        }
        return Ok(Found::File(p));
    }
    let mut tried = Vec::new();
    for p in [
        user_config_path(),
        Some(xki_pkcs11::config::system_config_dir().join("proxy.toml")),
    ]
    .into_iter()
    .flatten()
    {
        if p.is_file() {
            return Ok(Found::File(p));
        }
        tried.push(p);
    }
    let demo = crate::demo::config_path();
    if demo.is_file() {
        return Ok(Found::Demo(demo));
    }
    tried.push(demo);
    Ok(Found::Nothing { tried })
}

/// The config path for commands that need an existing config (everything but `serve`).
pub fn require(flag: Option<&Path>) -> Result<PathBuf, String> {
    match locate(flag)? {
        Found::File(p) | Found::Demo(p) => Ok(p),
        Found::Nothing { tried } => {
            let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            Err(format!(
                "no config found (tried --config, ${CONF_ENV}, {}); pass --config FILE, or run \
                 `xki-proxy` once to create a local demo setup",
                list.join(", ")
            ))
        }
    }
}
