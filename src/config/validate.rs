//! Validation: everything about a config that can be checked without touching a token.

use super::{decode_hex, BackendKind, Config, ConfigError, GcmIvMode};

impl Config {
    pub(super) fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Check everything that can be checked without touching a token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(level) = &self.log_level {
            if level.parse::<log::LevelFilter>().is_err() {
                return Err(self.err(
                    "log_level",
                    format!("unknown level {level:?}; use error, warn, info, debug or trace"),
                ));
            }
        }
        if let Some(format) = &self.log_format {
            if crate::lineformat::parse(format).is_none() {
                return Err(self.err(
                    "log_format",
                    format!("unknown format {format:?}; use text or json"),
                ));
            }
        }
        if self.slots.is_empty() {
            return Err(self.err("slot", "no [[slot]] is configured"));
        }
        let mut labels = std::collections::HashSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let key = format!("slot[{i}]");
            if slot.label.is_empty() || slot.label.len() > 32 {
                return Err(self.err(format!("{key}.label"), "must be 1 to 32 bytes"));
            }
            if !labels.insert(slot.label.clone()) {
                return Err(self.err(
                    format!("{key}.label"),
                    format!("label {:?} is used by two slots", slot.label),
                ));
            }
            if slot.backends.is_empty() {
                return Err(self.err(format!("{key}.backends"), "names no backend"));
            }
            for name in &slot.backends {
                if !self.backends.contains_key(name) {
                    return Err(self.err(
                        format!("{key}.backends"),
                        format!("no [backend.{name}] table is defined"),
                    ));
                }
            }
            for (field, v) in [
                ("probe_interval_ms", slot.probe_interval_ms),
                ("replication_wait_ms", slot.replication_wait_ms),
            ] {
                if v == Some(0) {
                    return Err(self.err(format!("{key}.{field}"), "must be at least 1"));
                }
            }
            if slot.user_pin_file.is_some() && slot.user_pin_env.is_some() {
                return Err(self.err(
                    format!("{key}.user_pin_file"),
                    "set user_pin_file or user_pin_env, not both",
                ));
            }
            let first = &self.backends[&slot.backends[0]];
            if slot.user_pin_file.is_none()
                && slot.user_pin_env.is_none()
                && first.pin_file.is_none()
                && first.pin_env.is_none()
            {
                return Err(self.err(
                    format!("{key}.user_pin_file"),
                    format!(
                        "missing: backend {} has no PIN for C_Login to default to; set user_pin_file or user_pin_env",
                        slot.backends[0]
                    ),
                ));
            }
            if let Some(ids) = &slot.keys.ids_hex {
                for id in ids {
                    if decode_hex(id).is_none() {
                        return Err(self.err(
                            format!("{key}.keys.ids_hex"),
                            format!("{id:?} is not an even-length hex string"),
                        ));
                    }
                }
            }
        }
        for (name, b) in &self.backends {
            let key = format!("backend.{name}");
            if b.pin_file.is_some() && b.pin_env.is_some() {
                return Err(self.err(
                    format!("{key}.pin_file"),
                    "set pin_file or pin_env, not both",
                ));
            }
            if b.max_sessions == Some(0) {
                return Err(self.err(format!("{key}.max_sessions"), "must be at least 1"));
            }
            if b.timeout_ms == Some(0) {
                return Err(self.err(format!("{key}.timeout_ms"), "must be at least 1"));
            }
            let in_group = self
                .slots
                .iter()
                .any(|s| s.backends.len() > 1 && s.backends.contains(name));
            if b.inline_calls.is_some() && !in_group {
                return Err(self.err(
                    format!("{key}.inline_calls"),
                    "only valid for a member of a replica group (a [[slot]] naming several backends); a slot over one backend calls it directly",
                ));
            }
            match b.kind {
                BackendKind::Pkcs11 => {
                    if b.module.is_none() {
                        return Err(self.err(
                            format!("{key}.module"),
                            "missing: path of the vendor PKCS#11 library",
                        ));
                    }
                    if b.token_label.is_some() == b.slot_id.is_some() {
                        return Err(self.err(
                            format!("{key}.token_label"),
                            "set exactly one of token_label or slot_id",
                        ));
                    }
                    if b.pin_file.is_none() && b.pin_env.is_none() {
                        return Err(self.err(
                            format!("{key}.pin_file"),
                            "missing: the token's user PIN (pin_file or pin_env)",
                        ));
                    }
                    for (field, set) in [
                        ("store", b.store.is_some()),
                        ("key_file", b.key_file.is_some()),
                        ("create", b.create),
                    ] {
                        if set {
                            return Err(self.err(
                                format!("{key}.{field}"),
                                "only valid for type = \"embedded\"",
                            ));
                        }
                    }
                }
                BackendKind::Embedded => {
                    for (field, set) in [
                        ("module", b.module.is_some()),
                        ("token_label", b.token_label.is_some()),
                        ("slot_id", b.slot_id.is_some()),
                        ("gcm_iv", b.gcm_iv != GcmIvMode::Auto),
                    ] {
                        if set {
                            return Err(self.err(
                                format!("{key}.{field}"),
                                "only valid for type = \"pkcs11\"",
                            ));
                        }
                    }
                    let sources = [
                        b.pin_file.is_some(),
                        b.pin_env.is_some(),
                        b.key_file.is_some(),
                    ];
                    if sources.iter().filter(|s| **s).count() != 1 {
                        return Err(self.err(
                            format!("{key}.key_file"),
                            "set exactly one of pin_file, pin_env or key_file to seal the store",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
