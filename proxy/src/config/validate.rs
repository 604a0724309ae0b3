//! Structural checks of a proxy config: everything that needs no file access beyond what
//! is named.

use super::{
    err, valid_access_key_id, valid_key_id, validate_prefix_path, Config, ConfigError, KeyAllowList,
};
use std::collections::HashSet;

impl Config {
    /// Structural checks that need no file access beyond what is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fleet_size == 0 {
            return Err(err("fleet_size", "must be > 0"));
        }
        if self.max_body_bytes < 16 * 1024 {
            return Err(err("max_body_bytes", "must be at least 16384"));
        }
        if self.async_workers > 1024 {
            return Err(err(
                "async_workers",
                "must be 0 (chosen at start-up) or 1..=1024",
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(err("log_level", "must be error|warn|info|debug|trace"));
        }
        if let Some(tls) = &self.tls {
            if tls.client_ca_file.is_some() && tls.client_names.is_empty() {
                return Err(err(
                    "tls.client_names",
                    "required (at least one CN/SAN) when tls.client_ca_file is set",
                ));
            }
            if tls.client_ca_file.is_none() && !tls.client_names.is_empty() {
                return Err(err(
                    "tls.client_ca_file",
                    "required when tls.client_names is set",
                ));
            }
        }
        let c = &self.clients;
        if !(100..=600_000).contains(&c.request_read_timeout_ms) {
            return Err(err(
                "clients.request_read_timeout_ms",
                "must be 100..=600000",
            ));
        }
        if !(64..=1_000_000).contains(&c.fd_reserve) {
            return Err(err("clients.fd_reserve", "must be 64..=1000000"));
        }
        let h = &self.hsm;
        if h.token_label.is_none() && h.slot.is_none() {
            return Err(err("hsm", "set token_label or slot"));
        }
        if h.pin_file.is_some() == h.pin_env.is_some() {
            return Err(err("hsm", "set exactly one of pin_file or pin_env"));
        }
        if h.sessions.is_some_and(|n| n == 0 || n > 1024) {
            return Err(err("hsm.sessions", "must be 1..=1024"));
        }
        if h.deadline_ms == 0 {
            return Err(err("hsm.deadline_ms", "must be > 0"));
        }
        if h.health_interval_ms == 0 || h.health_interval_ms > 30_000 {
            return Err(err("hsm.health_interval_ms", "must be 1..=30000"));
        }
        if !valid_key_id(&h.canary_label) {
            return Err(err(
                "hsm.canary_label",
                "must be 1-128 chars of [A-Za-z0-9._-]",
            ));
        }
        let mut seen = HashSet::new();
        for (i, p) in self.prefix.iter().enumerate() {
            let k = format!("prefix[{i}]");
            validate_prefix_path(&p.path).map_err(|m| err(&format!("{k}.path"), m))?;
            if !seen.insert(p.path.clone()) {
                return Err(err(
                    &format!("{k}.path"),
                    format!("duplicate prefix {:?}", p.path),
                ));
            }
            if p.credential.is_empty() {
                return Err(err(
                    &format!("{k}.credential"),
                    "at least one credential is required",
                ));
            }
            let mut ids = HashSet::new();
            for (j, c) in p.credential.iter().enumerate() {
                let ck = format!("{k}.credential[{j}].access_key_id");
                if !valid_access_key_id(&c.access_key_id) {
                    return Err(err(&ck, "must be 20-30 chars of A-Z2-7"));
                }
                if !ids.insert(c.access_key_id.clone()) {
                    return Err(err(&ck, "duplicate access key id on this prefix"));
                }
            }
            match &p.keys {
                KeyAllowList::All(s) if s != "all" => {
                    return Err(err(
                        &format!("{k}.keys"),
                        "must be \"all\" or a list of key ids",
                    ))
                }
                KeyAllowList::List(l) => {
                    if let Some(bad) = l.iter().find(|id| !valid_key_id(id)) {
                        return Err(err(&format!("{k}.keys"), format!("invalid key id {bad:?}")));
                    }
                }
                _ => {}
            }
            if p.quota_rps == Some(0) {
                return Err(err(
                    &format!("{k}.quota_rps"),
                    "must be > 0 (omit for unlimited)",
                ));
            }
            if let Some(r) = &p.regions {
                if r.is_empty() {
                    return Err(err(&format!("{k}.regions"), "empty list (omit for any)"));
                }
            }
        }
        Ok(())
    }
}
