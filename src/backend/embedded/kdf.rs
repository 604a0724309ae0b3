//! The key-encryption key (KEK) that seals the embedded token's store, and where it comes from.
//!
//! Two sources, recorded in the store header so a store is always opened the way it was made:
//! - a PIN, stretched with Argon2id (memory-hard, so a stolen store file resists offline PIN
//!   guessing); the salt and the cost parameters live in the header;
//! - a key file of 32 random bytes, used as the KEK as-is.

use crate::config::Secret;
use argon2::{Algorithm, Argon2, Params, Version};
use parking_lot::Mutex;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Length of the KEK (AES-256).
pub const KEK_LEN: usize = 32;
/// Length of the Argon2id salt stored in the header.
pub const SALT_LEN: usize = 16;

/// A key-encryption key; wiped when dropped.
pub type Kek = Zeroizing<[u8; KEK_LEN]>;

/// Environment variable that makes *newly created* PIN-sealed stores use [`KdfParams::FAST`].
/// For tests only: it weakens the protection of the PIN against offline guessing.
pub const TEST_KDF_ENV: &str = "XKI_EMBEDDED_TEST_KDF";

/// How a store's KEK is obtained (the header's KDF id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfKind {
    /// Argon2id over the PIN (id 1).
    Argon2id,
    /// The raw 32 bytes of a key file (id 2).
    KeyFile,
}

impl KdfKind {
    /// The byte stored in the header.
    pub fn id(self) -> u8 {
        match self {
            KdfKind::Argon2id => 1,
            KdfKind::KeyFile => 2,
        }
    }

    /// Parse the header byte.
    pub fn from_id(id: u8) -> Option<KdfKind> {
        match id {
            1 => Some(KdfKind::Argon2id),
            2 => Some(KdfKind::KeyFile),
            _ => None,
        }
    }

    /// Human wording for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            KdfKind::Argon2id => "a PIN (pin_file or pin_env)",
            KdfKind::KeyFile => "a key file (key_file)",
        }
    }
}

/// Argon2id cost parameters (stored in the header; all zero for a key-file store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// Default for new PIN-sealed stores: 19 MiB, 2 passes, 1 lane (the OWASP recommendation).
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// Cheap parameters for tests (64 KiB, 1 pass). Never use for a real PIN.
    pub const FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// The parameters of a key-file store (no derivation).
    pub const NONE: KdfParams = KdfParams {
        m_cost_kib: 0,
        t_cost: 0,
        p_cost: 0,
    };

    /// Upper bounds accepted from a header, so a crafted file cannot make `open` allocate
    /// gigabytes or spin for minutes.
    const MAX_M_COST_KIB: u32 = 1024 * 1024;
    const MAX_T_COST: u32 = 64;
    const MAX_P_COST: u32 = 16;

    /// [`KdfParams::FAST`] when `XKI_EMBEDDED_TEST_KDF=fast`, otherwise [`KdfParams::DEFAULT`].
    pub fn from_env() -> KdfParams {
        match std::env::var(TEST_KDF_ENV) {
            Ok(v) if v == "fast" => {
                log::warn!("{TEST_KDF_ENV}=fast: new embedded stores use weak test-only Argon2id parameters");
                KdfParams::FAST
            }
            _ => KdfParams::DEFAULT,
        }
    }

    /// Whether these are acceptable parameters for `kind` (checked when a header is parsed).
    pub fn check(&self, kind: KdfKind) -> Result<(), String> {
        match kind {
            KdfKind::KeyFile if *self == KdfParams::NONE => Ok(()),
            KdfKind::KeyFile => Err("key-file store with non-zero KDF parameters".into()),
            KdfKind::Argon2id => {
                if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
                    return Err(format!("Argon2id t_cost {} out of range", self.t_cost));
                }
                if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
                    return Err(format!("Argon2id p_cost {} out of range", self.p_cost));
                }
                if self.m_cost_kib < 8 * self.p_cost || self.m_cost_kib > Self::MAX_M_COST_KIB {
                    return Err(format!(
                        "Argon2id m_cost {} KiB out of range",
                        self.m_cost_kib
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Derive the KEK from a PIN with Argon2id (version 0x13).
pub fn derive_from_pin(
    pin: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Kek, String> {
    let p = Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(KEK_LEN),
    )
    .map_err(|e| format!("bad Argon2id parameters: {e}"))?;
    let mut kek = Zeroizing::new([0u8; KEK_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(pin, salt, kek.as_mut())
        .map_err(|e| format!("Argon2id failed: {e}"))?;
    Ok(kek)
}

/// The configured way to seal the store: what `open` was given.
pub enum Sealing {
    /// A PIN; `config_key` is `pin_file` or `pin_env` (for error messages).
    Pin {
        /// The PIN itself (kept so a store re-created by another process can still be read).
        pin: Secret,
        /// Which config key supplied it.
        config_key: &'static str,
        /// Parameters for a store this backend creates.
        new_params: KdfParams,
        /// The last derivation, so Argon2id runs once per (salt, params), not once per write.
        cache: Mutex<Option<(KdfParams, [u8; SALT_LEN], Kek)>>,
    },
    /// A key file's 32 bytes.
    KeyFile {
        /// The KEK.
        key: Kek,
        /// Where it came from (for error messages).
        path: PathBuf,
    },
}

impl Sealing {
    /// The KDF id a store sealed this way carries.
    pub fn kind(&self) -> KdfKind {
        match self {
            Sealing::Pin { .. } => KdfKind::Argon2id,
            Sealing::KeyFile { .. } => KdfKind::KeyFile,
        }
    }

    /// The config key to blame when the store cannot be unsealed.
    pub fn config_key(&self) -> &'static str {
        match self {
            Sealing::Pin { config_key, .. } => config_key,
            Sealing::KeyFile { .. } => "key_file",
        }
    }

    /// Parameters to write into the header of a store created now.
    pub fn new_params(&self) -> KdfParams {
        match self {
            Sealing::Pin { new_params, .. } => *new_params,
            Sealing::KeyFile { .. } => KdfParams::NONE,
        }
    }

    /// The KEK for a store whose header says `params` and `salt`.
    pub fn kek(&self, params: KdfParams, salt: &[u8; SALT_LEN]) -> Result<Kek, String> {
        match self {
            Sealing::KeyFile { key, .. } => Ok(key.clone()),
            Sealing::Pin { pin, cache, .. } => {
                let mut cache = cache.lock();
                if let Some((p, s, kek)) = cache.as_ref() {
                    if *p == params && s == salt {
                        return Ok(kek.clone());
                    }
                }
                let kek = derive_from_pin(pin, salt, params)?;
                *cache = Some((params, *salt, kek.clone()));
                Ok(kek)
            }
        }
    }

    /// Forget the cached derivation (on shutdown).
    pub fn forget(&self) {
        if let Sealing::Pin { cache, .. } = self {
            *cache.lock() = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_is_deterministic_and_salted() {
        let salt_a = [1u8; SALT_LEN];
        let salt_b = [2u8; SALT_LEN];
        let a1 = derive_from_pin(b"1234", &salt_a, KdfParams::FAST).unwrap();
        let a2 = derive_from_pin(b"1234", &salt_a, KdfParams::FAST).unwrap();
        let b = derive_from_pin(b"1234", &salt_b, KdfParams::FAST).unwrap();
        let c = derive_from_pin(b"1235", &salt_a, KdfParams::FAST).unwrap();
        assert_eq!(*a1, *a2);
        assert_ne!(*a1, *b);
        assert_ne!(*a1, *c);
    }

    #[test]
    fn header_params_are_bounded() {
        assert!(KdfParams::DEFAULT.check(KdfKind::Argon2id).is_ok());
        assert!(KdfParams::FAST.check(KdfKind::Argon2id).is_ok());
        assert!(KdfParams::NONE.check(KdfKind::KeyFile).is_ok());
        assert!(KdfParams::NONE.check(KdfKind::Argon2id).is_err());
        let huge = KdfParams {
            m_cost_kib: u32::MAX,
            ..KdfParams::DEFAULT
        };
        assert!(huge.check(KdfKind::Argon2id).is_err());
        assert!(KdfParams::FAST.check(KdfKind::KeyFile).is_err());
    }

    #[test]
    fn kind_ids_round_trip() {
        for k in [KdfKind::Argon2id, KdfKind::KeyFile] {
            assert_eq!(KdfKind::from_id(k.id()), Some(k));
        }
        assert_eq!(KdfKind::from_id(0), None);
    }
}
