//! Reading PINs from the files and environment variables a config names.

use super::{Config, ConfigError, Secret};
use std::path::Path;
use zeroize::Zeroizing;

impl Config {
    /// Read the backend's PIN from its `pin_file` or `pin_env`. Errors never contain the PIN.
    pub fn backend_pin(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        let b = &self.backends[name];
        let key = format!("backend.{name}");
        self.read_secret(&key, b.pin_file.as_deref(), b.pin_env.as_deref())
    }

    /// The user PIN callers must give `C_Login` on slot `index`: the slot's own, or else the
    /// PIN of its first backend.
    pub fn slot_user_pin(&self, index: usize) -> Result<Option<Secret>, ConfigError> {
        let slot = &self.slots[index];
        let key = format!("slot[{index}]");
        match self.read_secret(
            &key,
            slot.user_pin_file.as_deref(),
            slot.user_pin_env.as_deref(),
        )? {
            Some(pin) => Ok(Some(pin)),
            None => self.backend_pin(&slot.backends[0]),
        }
    }

    fn read_secret(
        &self,
        key: &str,
        file: Option<&Path>,
        env: Option<&str>,
    ) -> Result<Option<Secret>, ConfigError> {
        let pin = if let Some(file) = file {
            let field = if key.starts_with("slot") {
                "user_pin_file"
            } else {
                "pin_file"
            };
            let bytes = std::fs::read(file).map_err(|e| {
                self.err(
                    format!("{key}.{field}"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let mut bytes = Zeroizing::new(bytes);
            // PIN files are usually written with `echo`: a trailing newline is not part of it.
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Err(self.err(
                    format!("{key}.{field}"),
                    format!("{} is empty", file.display()),
                ));
            }
            Some(bytes)
        } else if let Some(var) = env {
            let field = if key.starts_with("slot") {
                "user_pin_env"
            } else {
                "pin_env"
            };
            match std::env::var_os(var) {
                Some(v) if !v.is_empty() => {
                    use std::os::unix::ffi::OsStrExt;
                    Some(Zeroizing::new(v.as_bytes().to_vec()))
                }
                _ => {
                    return Err(self.err(
                        format!("{key}.{field}"),
                        format!("environment variable {var} is not set or empty"),
                    ))
                }
            }
        } else {
            None
        };
        Ok(pin)
    }
}
