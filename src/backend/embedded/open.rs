//! Opening the token: find (or, when asked, create) the store and its sealing key, unseal,
//! check everything.
//!
//! A store is created only when asked: `create = true` in `[backend.NAME]`, the zero-setup
//! configuration (no config file at all), or [`CREATE_ENV`] (what `xki-proxy keys init`
//! sets). Otherwise a missing store is an error naming its path, before anything is created
//! (not its directory, not a key file): a mistyped or not-yet-mounted path must never become
//! a new, empty token in which every key is "not found".
//!
//! The store is never written here except to create it, and never over a file that exists:
//! a store that cannot be read (corrupt, wrong PIN, wrong key file) makes `open` fail and
//! leaves the file exactly as it was.

use super::format::{self, Identity};
use super::kdf::{KdfParams, Sealing};
use super::records::Contents;
use super::store::{self, StorePaths};
use super::{keyfile, EmbeddedBackend, State, DEFAULT_KEY_FILE_NAME, DEFAULT_STORE_NAME};
use crate::backend::OpenError;
use crate::config::{BackendConfig, Secret};
use crate::rv::Rv;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::path::Path;

/// Environment variable that lets this process create every embedded store its config names
/// that does not exist yet (`1`); `xki-proxy keys init` sets it for its one `C_Initialize`.
pub const CREATE_ENV: &str = "XKI_EMBEDDED_CREATE";

/// Whether a missing store may be created: the backend's `create`, or [`CREATE_ENV`].
fn may_create(cfg: &BackendConfig) -> bool {
    cfg.create || std::env::var_os(CREATE_ENV).is_some_and(|v| v == "1")
}

fn err(key: &'static str, rv: Rv, problem: impl Into<String>) -> OpenError {
    OpenError {
        key,
        rv,
        problem: problem.into(),
    }
}

impl EmbeddedBackend {
    /// Open (or, when `cfg.create` or [`CREATE_ENV`] allows it, create) the embedded token for
    /// `[backend.NAME]`. A missing store that may not be created is `CKR_DEVICE_ERROR` on
    /// `store`, naming the path.
    ///
    /// - `cfg.store`: the store file; default `user_data_dir()/embedded-token.store`. Its
    ///   directory is created with mode 0700 if missing.
    /// - Sealing: `pin` (read by the caller from `cfg.pin_file` / `cfg.pin_env`) is stretched
    ///   with Argon2id; otherwise `cfg.key_file` (32 random bytes, mode 0600) is the key. With
    ///   neither configured, the key file `embedded-token.key` next to the store is used. A
    ///   missing key file is created only when the store does not exist either.
    /// - A new PIN-sealed store uses [`KdfParams::DEFAULT`], or [`KdfParams::FAST`] when the
    ///   environment has `XKI_EMBEDDED_TEST_KDF=fast` (tests only). An existing store always
    ///   uses the parameters in its header.
    ///
    /// Errors: wrong PIN is `CKR_PIN_INCORRECT` on `pin_file`/`pin_env`; a corrupt or
    /// truncated store is `CKR_DEVICE_ERROR` on `store` with the file named; a key file that
    /// does not unseal the store is `CKR_DEVICE_ERROR` on `key_file`.
    pub fn open(
        name: &str,
        cfg: &BackendConfig,
        pin: Option<Secret>,
    ) -> Result<EmbeddedBackend, OpenError> {
        EmbeddedBackend::open_with_kdf(name, cfg, pin, KdfParams::from_env())
    }

    /// [`EmbeddedBackend::open`] with explicit Argon2id parameters for a store created now
    /// (tests pass [`KdfParams::FAST`]). Ignored when the store exists or a key file seals it.
    pub fn open_with_kdf(
        name: &str,
        cfg: &BackendConfig,
        pin: Option<Secret>,
        new_params: KdfParams,
    ) -> Result<EmbeddedBackend, OpenError> {
        let store_path = cfg
            .store
            .clone()
            .unwrap_or_else(|| crate::config::user_data_dir().join(DEFAULT_STORE_NAME));
        let paths = StorePaths::new(store_path);
        let shown = paths.store.display().to_string();
        let create = may_create(cfg);
        let missing = |name: &str| {
            err(
                "store",
                Rv::DEVICE_ERROR,
                format!(
                    "{shown} does not exist; a new, empty store is created only when asked \
                     (set create = true in [backend.{name}] once, or run `xki-proxy keys \
                     init`): check the path and that its file system is mounted"
                ),
            )
        };
        // Before anything is created (directory, lock file, key file).
        if !create && !paths.store.exists() {
            return Err(missing(name));
        }
        store::ensure_dir(&paths.dir).map_err(|e| {
            err(
                "store",
                Rv::DEVICE_ERROR,
                format!("cannot create directory {}: {e}", paths.dir.display()),
            )
        })?;
        // Held until open returns: creation of the key file and the store, and the sweep of
        // temp files, must not race another process doing the same.
        let _lock = store::lock(&paths).map_err(|e| {
            err(
                "store",
                Rv::DEVICE_ERROR,
                format!("cannot lock {}: {e}", paths.lock.display()),
            )
        })?;
        let swept = store::remove_stale_temps(&paths);
        if swept > 0 {
            log::warn!("{shown}: removed {swept} temp file(s) left by an interrupted write");
        }
        let existing = store::read(&paths.store).map_err(|e| {
            err(
                "store",
                Rv::DEVICE_ERROR,
                format!("cannot read {shown}: {e}"),
            )
        })?;
        if existing.is_none() && !create {
            // Removed between the check above and the lock.
            return Err(missing(name));
        }
        let sealing = choose_sealing(cfg, pin, new_params, &paths, existing.is_some())?;

        let (identity, contents, stamp) = match existing {
            Some((bytes, stamp)) => {
                let (identity, contents) = unseal_at_open(&paths.store, &sealing, &bytes)?;
                (identity, contents, stamp)
            }
            None => {
                let identity = Identity::generate(sealing.kind(), sealing.new_params())
                    .map_err(|e| err("store", Rv::DEVICE_ERROR, format!("OS RNG failed: {e}")))?;
                let contents = Contents::default();
                let kek = sealing
                    .kek(identity.params, &identity.salt)
                    .map_err(|e| err(sealing.config_key(), Rv::DEVICE_ERROR, e))?;
                let file = format::seal(&identity, &kek, &contents.encode())
                    .map_err(|e| err("store", Rv::DEVICE_ERROR, format!("{shown}: {e}")))?;
                let stamp = store::write_atomic(&paths, &file).map_err(|e| {
                    err(
                        "store",
                        Rv::DEVICE_ERROR,
                        format!("cannot create {shown}: {e}"),
                    )
                })?;
                log::info!("embedded token {name}: created new key store {shown}");
                (identity, contents, stamp)
            }
        };

        let keys = super::state::build_map(&HashMap::new(), contents).map_err(|problem| {
            err(
                "store",
                Rv::DEVICE_ERROR,
                format!("{shown}: corrupt key store: {problem}"),
            )
        })?;
        log::info!(
            "embedded token {name}: opened {shown} with {} key(s) (development token, not an HSM)",
            keys.len()
        );
        Ok(EmbeddedBackend {
            name: name.to_string(),
            paths,
            sealing,
            identity,
            state: RwLock::new(State {
                keys,
                stamp: Some(stamp),
            }),
            writer: Mutex::new(()),
        })
    }
}

/// Decide how the store is sealed from what the config and caller gave.
fn choose_sealing(
    cfg: &BackendConfig,
    pin: Option<Secret>,
    new_params: KdfParams,
    paths: &StorePaths,
    store_exists: bool,
) -> Result<Sealing, OpenError> {
    let pin_key = if cfg.pin_file.is_none() && cfg.pin_env.is_some() {
        "pin_env"
    } else {
        "pin_file"
    };
    match (pin, &cfg.key_file) {
        (Some(_), Some(_)) => Err(err(
            "key_file",
            Rv::ARGUMENTS_BAD,
            "set a PIN (pin_file/pin_env) or a key_file to seal the store, not both",
        )),
        (Some(pin), None) => {
            if pin.is_empty() {
                return Err(err(pin_key, Rv::PIN_LEN_RANGE, "the store PIN is empty"));
            }
            Ok(Sealing::Pin {
                pin,
                config_key: pin_key,
                new_params,
                cache: Mutex::new(None),
            })
        }
        (None, _) if cfg.pin_file.is_some() || cfg.pin_env.is_some() => Err(err(
            pin_key,
            Rv::ARGUMENTS_BAD,
            "a PIN is configured but none was supplied to the embedded token",
        )),
        (None, key_file) => {
            let path = key_file
                .clone()
                .unwrap_or_else(|| paths.dir.join(DEFAULT_KEY_FILE_NAME));
            match keyfile::read(&path) {
                Err(problem) => Err(err("key_file", Rv::DEVICE_ERROR, problem)),
                Ok(Some(key)) => Ok(Sealing::KeyFile { key, path }),
                Ok(None) if store_exists => Err(err(
                    "key_file",
                    Rv::DEVICE_ERROR,
                    format!(
                        "{} does not exist, but the store {} does: the store cannot be opened \
                         without the key file that sealed it (a new key is never created over \
                         an existing store)",
                        path.display(),
                        paths.store.display()
                    ),
                )),
                Ok(None) => {
                    let key = keyfile::create(&path)
                        .map_err(|problem| err("key_file", Rv::DEVICE_ERROR, problem))?;
                    log::info!(
                        "created key file {} for a new embedded store",
                        path.display()
                    );
                    Ok(Sealing::KeyFile { key, path })
                }
            }
        }
    }
}

/// Parse, check and unseal an existing store, mapping each failure to the config key at fault.
fn unseal_at_open(
    path: &Path,
    sealing: &Sealing,
    bytes: &[u8],
) -> Result<(Identity, Contents), OpenError> {
    let shown = path.display();
    let parsed = format::parse(bytes).map_err(|c| {
        err(
            "store",
            Rv::DEVICE_ERROR,
            format!(
                "{shown}: corrupt key store: {}; the file was left untouched",
                c.0
            ),
        )
    })?;
    let identity = parsed.identity;
    if identity.kdf != sealing.kind() {
        return Err(err(
            sealing.config_key(),
            Rv::DEVICE_ERROR,
            format!(
                "{shown} is sealed with {}, but this backend is configured with {}",
                identity.kdf.describe(),
                sealing.kind().describe()
            ),
        ));
    }
    let kek = sealing
        .kek(identity.params, &identity.salt)
        .map_err(|e| err(sealing.config_key(), Rv::DEVICE_ERROR, e))?;
    let Some(plain) = parsed.open(&kek) else {
        return Err(match sealing {
            // GCM cannot tell a wrong PIN from a modified body: both fail the tag.
            Sealing::Pin { config_key, .. } => err(
                config_key,
                Rv::PIN_INCORRECT,
                format!("wrong PIN for {shown} (or the store was modified; the two look the same)"),
            ),
            Sealing::KeyFile { path: kf, .. } => err(
                "key_file",
                Rv::DEVICE_ERROR,
                format!(
                    "{} does not unseal {shown}: wrong key file, or the store is corrupt; \
                     the file was left untouched",
                    kf.display()
                ),
            ),
        });
    };
    let contents = Contents::decode(&plain).map_err(|problem| {
        err(
            "store",
            Rv::DEVICE_ERROR,
            format!("{shown}: corrupt key records: {problem}; the file was left untouched"),
        )
    })?;
    Ok((identity, contents))
}
