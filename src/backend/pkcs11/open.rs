//! Opening a backend: load and initialise the library, find the token, log in.

use super::pool::{Pool, Take};
use super::quirks::Quirks;
use super::{errors, handles, library, Pkcs11Backend};
use crate::backend::OpenError;
use crate::config::{BackendConfig, Secret};
use crate::rv::Rv;
use cryptoki::context::Pkcs11;
use cryptoki::slot::Slot;
use parking_lot::Mutex;
use std::time::Duration;

impl Pkcs11Backend {
    /// Load `cfg.module`, initialise it (sharing an initialisation the host already made),
    /// find the token by `token_label` or `slot_id`, and log in as CKU_USER with `pin`.
    /// Errors name the config key at fault and never contain the PIN.
    pub fn open(
        name: &str,
        cfg: &BackendConfig,
        pin: Option<Secret>,
    ) -> Result<Pkcs11Backend, OpenError> {
        let module = cfg.module.as_deref().ok_or_else(|| OpenError {
            key: "module",
            rv: Rv::ARGUMENTS_BAD,
            problem: "missing: path of the vendor PKCS#11 library".into(),
        })?;
        let lease = library::acquire(module).map_err(|e| OpenError {
            key: "module",
            rv: e.rv,
            problem: e.problem,
        })?;
        let ctx = lease.ctx().clone();
        let gcm = lease.gcm();
        let attribute_calls = std::fs::canonicalize(module)
            .ok()
            .and_then(|p| super::find::AttributeCalls::of_loaded(&p));
        let quirks = match ctx.get_library_info() {
            Ok(info) => Quirks::for_library(info.manufacturer_id()),
            Err(_) => Quirks::default(),
        };
        let slot = find_slot(&ctx, cfg)?;
        let pin_key = if cfg.pin_file.is_none() && cfg.pin_env.is_some() {
            "pin_env"
        } else {
            "pin_file"
        };
        if pin.is_none() {
            // Without a PIN we can only serve a token that needs no login.
            let needs_login = ctx
                .get_token_info(slot)
                .map(|i| i.login_required() && !i.protected_authentication_path())
                .unwrap_or(true);
            if needs_login {
                return Err(OpenError {
                    key: pin_key,
                    rv: Rv::USER_NOT_LOGGED_IN,
                    problem: "the token requires a user PIN: set pin_file or pin_env".into(),
                });
            }
        }
        let wait =
            Duration::from_millis(cfg.timeout_ms.unwrap_or(BackendConfig::DEFAULT_TIMEOUT_MS));
        let max = cfg
            .max_sessions
            .unwrap_or(BackendConfig::DEFAULT_MAX_SESSIONS);
        let iv_mode = super::iv_mode::IvModeState::choose(
            name,
            cfg.gcm_iv,
            quirks.gcm_iv,
            super::iv_mode::offers_message_api(&ctx, slot),
        );
        let generation = lease.generation_counter();
        let seen = lease.generation();
        let backend = Pkcs11Backend {
            iv_mode,
            iv_batch: Default::default(),
            name: name.to_string(),
            slot: Mutex::new(slot),
            token_label: cfg.token_label.clone(),
            outage: super::outage::Outage::default(),
            seen_generation: std::sync::atomic::AtomicU64::new(seen),
            generation,
            pin,
            pool: Pool::new(max, wait),
            quirks,
            keys: handles::KeyDirectory::default(),
            lease: Mutex::new(Some(lease)),
            ctx,
            gcm,
            attribute_calls,
        };
        // Open the first session now: it proves the token answers and the PIN is right.
        let token_key = if cfg.token_label.is_some() {
            "token_label"
        } else {
            "slot_id"
        };
        let session = match backend.pool.take(true) {
            Ok(Take::Open(reservation)) => {
                let session = backend
                    .ctx
                    .open_rw_session_no_drop(slot)
                    .map_err(|e| OpenError {
                        key: token_key,
                        rv: errors::rv_of(&e),
                        problem: format!("cannot open a session on the token: {e}"),
                    })?;
                reservation.fill(session)
            }
            _ => {
                return Err(OpenError {
                    key: "max_sessions",
                    rv: Rv::GENERAL_ERROR,
                    problem: "no session available".into(),
                })
            }
        };
        if let Err(rv) = backend.login(&session) {
            session.discard();
            let problem = if rv == Rv::PIN_INCORRECT {
                "the token rejected the PIN".to_string()
            } else {
                format!("login failed: {rv}")
            };
            return Err(OpenError {
                key: pin_key,
                rv,
                problem,
            });
        }
        drop(session);
        log::info!(
            "backend {name}: opened {} slot {}",
            module.display(),
            slot.id()
        );
        Ok(backend)
    }
}

/// Find the configured token's slot by label or id.
fn find_slot(ctx: &Pkcs11, cfg: &BackendConfig) -> Result<Slot, OpenError> {
    let key = if cfg.token_label.is_some() {
        "token_label"
    } else {
        "slot_id"
    };
    let slots = ctx.get_slots_with_token().map_err(|e| OpenError {
        key,
        rv: errors::rv_of(&e),
        problem: format!("cannot list slots: {e}"),
    })?;
    if let Some(label) = &cfg.token_label {
        let mut seen = Vec::new();
        for slot in slots {
            // A slot whose token cannot be read right now is simply not a match.
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if info.label().trim_end() == label.as_str() {
                return Ok(slot);
            }
            seen.push(format!("{:?}", info.label().trim_end()));
        }
        return Err(OpenError {
            key: "token_label",
            rv: Rv::TOKEN_NOT_PRESENT,
            problem: format!(
                "no token labelled {label:?}; tokens present: [{}]",
                seen.join(", ")
            ),
        });
    }
    let Some(id) = cfg.slot_id else {
        return Err(OpenError {
            key: "token_label",
            rv: Rv::ARGUMENTS_BAD,
            problem: "set one of token_label or slot_id".into(),
        });
    };
    if let Some(slot) = slots.iter().find(|s| s.id() == id) {
        return Ok(*slot);
    }
    let ids: Vec<String> = slots.iter().map(|s| s.id().to_string()).collect();
    Err(OpenError {
        key: "slot_id",
        rv: Rv::SLOT_ID_INVALID,
        problem: format!(
            "no slot {id} with a token; slots with tokens: [{}]",
            ids.join(", ")
        ),
    })
}
