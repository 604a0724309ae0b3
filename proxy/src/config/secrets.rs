//! Reading the HSM PIN and the SigV4 secrets a config names (never inline in the file).

use super::{err, valid_secret, Config, ConfigError, Credential, CredentialConfig};
use zeroize::Zeroizing;

impl Config {
    /// Read the HSM user PIN from `pin_file` or `pin_env`.
    pub fn read_pin(&self) -> Result<Zeroizing<String>, ConfigError> {
        if let Some(f) = &self.hsm.pin_file {
            let s =
                Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                    err("hsm.pin_file", format!("cannot read {}: {e}", f.display()))
                })?);
            return Ok(Zeroizing::new(s.trim().to_string()));
        }
        let var = self.hsm.pin_env.as_deref().unwrap_or_default();
        std::env::var(var)
            .map(|v| Zeroizing::new(v.trim().to_string()))
            .map_err(|_| {
                err(
                    "hsm.pin_env",
                    format!("environment variable {var} is not set"),
                )
            })
    }
}

impl CredentialConfig {
    /// Load and check the secret named by `secret_file`.
    pub fn load(&self, key: &str) -> Result<Credential, ConfigError> {
        let raw = Zeroizing::new(std::fs::read_to_string(&self.secret_file).map_err(|e| {
            err(
                &format!("{key}.secret_file"),
                format!("cannot read {}: {e}", self.secret_file.display()),
            )
        })?);
        let secret = Zeroizing::new(raw.trim().to_string());
        if !valid_secret(&secret) {
            return Err(err(
                &format!("{key}.secret_file"),
                "secret must be 43-64 chars of [A-Za-z0-9+/=]",
            ));
        }
        Ok(Credential {
            access_key_id: self.access_key_id.clone(),
            secret,
        })
    }
}
