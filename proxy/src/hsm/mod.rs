//! The HSM side: one PKCS#11 module loaded by path (cryptoki), one token, a pool of
//! logged-in sessions. Only standard PKCS#11 is used, so any module works (ours, SoftHSM2,
//! a vendor HSM's).
//!
//! Blocking PKCS#11 calls never run on the async workers: [`Hsm::run`] queues a closure for
//! the HSM worker threads (one per session, [`exec`]), with a bounded wait queue in front.

mod canary;
mod date;
mod error;
mod exec;
mod gcm;
mod ivs;
mod keys;
mod lifecycle;
mod pool;
mod state;
mod status;

pub use date::Date;
pub use error::HsmError;
pub use gcm::{gcm_decrypt, gcm_encrypt, gcm_encrypt_token_iv, GcmOutput, IV_LEN, TAG_LEN};
pub use ivs::IvPath;
pub use lifecycle::{KeyInfo, Usage};
pub use pool::PoolStats;
pub use state::{KeyState, KeyStatus, UsageFlags};
pub use status::{AuditStatus, Member, MemberState};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::config::HsmConfig;

/// How long [`Hsm::close`] waits for the calls already in the HSM.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Description of the token, for health reports and logs.
#[derive(Debug, Clone)]
pub struct TokenDesc {
    /// Token label.
    pub label: String,
    /// Manufacturer id.
    pub manufacturer: String,
    /// Model string.
    pub model: String,
    /// Serial number.
    pub serial: String,
}

/// A loaded module, its token, the session pool and the key-handle cache.
pub struct Hsm {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    pool: pool::Pool,
    keys: keys::KeyCache,
    ivs: ivs::IvPool,
    /// Where Encrypt IVs come from (decided once at open).
    iv_path: IvPath,
    /// HSM worker threads, started by the first [`Hsm::run`] (CLI commands never start them).
    exec: std::sync::OnceLock<Arc<exec::Exec>>,
    exec_start: parking_lot::Mutex<()>,
    /// Dedicated health-check key label.
    pub canary_label: String,
    /// `CKA_ID`s of the canary keys this process created (see `canary.rs`).
    created_canaries: parking_lot::Mutex<Vec<Vec<u8>>>,
    /// The token behind this pool.
    pub token: TokenDesc,
    /// The PKCS#11 library in use (configured or found by the default search).
    pub module: PathBuf,
    /// The module's "XKI Status" vendor interface, when it has one (ours does).
    status: Option<status::StatusInterface>,
}

impl Hsm {
    /// Load the module, find the token, log in once and keep one session open.
    ///
    /// `read_pin` runs after `C_Initialize`: our module creates the zero-setup token's PIN
    /// file there, so on a first run the file exists only from that point on.
    pub fn open(
        cfg: &HsmConfig,
        read_pin: impl FnOnce() -> Result<Zeroizing<String>, String>,
    ) -> Result<Arc<Hsm>, HsmError> {
        let module = crate::module_path::resolve(cfg.module.as_deref()).map_err(HsmError::Other)?;
        let ctx = load_module(&module)?;
        let slot = find_slot(&ctx, cfg, &module)?;
        let pin = read_pin().map_err(HsmError::Other)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| HsmError::pkcs11("C_GetTokenInfo", e))?;
        let token = TokenDesc {
            label: info.label().trim().to_string(),
            manufacturer: info.manufacturer_id().trim().to_string(),
            model: info.model().trim().to_string(),
            serial: info.serial_number().trim().to_string(),
        };
        let iv_path = IvPath::of(&ctx, slot);
        tracing::info!(
            module = %module.display(),
            iv_source = iv_path.describe(),
            "GCM encryption IVs"
        );
        let hsm = Arc::new(Hsm {
            iv_path,
            ctx,
            slot,
            pin: AuthPin::new(pin.as_str().into()),
            pool: pool::Pool::new(cfg.sessions.unwrap_or(1), cfg.queue_depth),
            keys: keys::KeyCache::new(Duration::from_millis(cfg.key_cache_ms)),
            ivs: ivs::IvPool::default(),
            exec: std::sync::OnceLock::new(),
            exec_start: parking_lot::Mutex::new(()),
            canary_label: cfg.canary_label.clone(),
            created_canaries: parking_lot::Mutex::new(Vec::new()),
            token,
            status: status::StatusInterface::open(&module),
            module,
        });
        // Fail fast on a wrong PIN or a broken module: open and log in the first session now.
        let s = hsm.open_session()?;
        hsm.pool.put_back(s);
        Ok(hsm)
    }

    /// Open a read-write session and make sure the token is logged in.
    fn open_session(&self) -> Result<Session, HsmError> {
        let s = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| HsmError::pkcs11("C_OpenSession", e))?;
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(HsmError::pkcs11("C_Login", e)),
        }
        Ok(s)
    }

    /// Run `f` with a pooled session on an HSM worker thread, within `deadline`.
    ///
    /// More than `queue_depth` calls already waiting -> [`HsmError::Busy`] at once; deadline
    /// passes (waiting or in the call) -> [`HsmError::Timeout`]. A call that times out keeps
    /// its session (and worker) until the module returns, then the session goes back to the
    /// pool; a call still queued at its deadline is dropped without touching the HSM.
    pub async fn run<R, F>(self: &Arc<Self>, deadline: Instant, f: F) -> Result<R, HsmError>
    where
        R: Send + 'static,
        F: FnOnce(&Hsm, &Session) -> Result<R, HsmError> + Send + 'static,
    {
        let exec = match self.exec.get() {
            Some(e) => e,
            None => {
                // One starter only (a racing second start would leave idle threads behind).
                let _g = self.exec_start.lock();
                match self.exec.get() {
                    Some(e) => e,
                    None => {
                        let e = exec::Exec::start(self.pool.size(), self.pool.queue_depth())?;
                        self.exec.get_or_init(|| e)
                    }
                }
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        exec.submit(Box::new(move || {
            let r = if tx.is_closed() || Instant::now() >= deadline {
                Err(HsmError::Timeout)
            } else {
                me.with_session(|s| f(&me, s))
            };
            // The worker's reference goes before the answer: once the caller has its answer
            // it may drop the last other reference and exit, and the last one dropped here
            // would close the sessions and the library on this thread while the process runs
            // its exit handlers (seen: `xki-proxy health` over SoftHSM2, a segfault in
            // libsofthsm2.so in thread xki-hsm-0 after the report was printed).
            drop(me);
            let _ = tx.send(r);
        }))?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => Err(HsmError::Timeout),
            Ok(Err(_)) => Err(HsmError::Other(
                "HSM worker dropped the call (panic or shutdown)".into(),
            )),
            Ok(Ok(r)) => r,
        }
    }

    /// Run `f` on the current thread with a pooled session (CLI and blocking contexts).
    /// Callers on async runtimes must use [`Hsm::run`] instead.
    pub fn with_session<R>(
        &self,
        f: impl FnOnce(&Session) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        let _busy = self.pool.mark_busy();
        let s = match self.pool.take() {
            Some(s) => s,
            None => self.open_session()?,
        };
        let r = self.audit_refusal(f(&s));
        match &r {
            Err(e) if e.session_broken() => {
                // Dropping closes it; the next caller opens (and logs in) a fresh one.
                self.keys.clear();
                self.ivs.clear();
                drop(s);
            }
            _ => self.pool.put_back(s),
        }
        r
    }

    /// Set the number of sessions (= HSM worker threads) before serving; an error once the
    /// workers run (they are sized once, by the first [`Hsm::run`]).
    pub fn set_sessions(&self, n: usize) -> Result<(), String> {
        let _g = self.exec_start.lock();
        if self.exec.get().is_some() {
            return Err("the HSM workers already run; sessions can no longer change".into());
        }
        self.pool.set_size(n.max(1));
        Ok(())
    }

    /// Time up to `calls` small HSM calls (`C_GenerateRandom` of 12 bytes; at most `budget`
    /// of them) on this thread with a pooled session: where the token's work runs
    /// ([`crate::tuning`]).
    pub fn probe(&self, calls: u32, budget: Duration) -> Result<crate::tuning::Probe, HsmError> {
        self.with_session(|s| {
            let mut buf = [0u8; IV_LEN];
            crate::tuning::Probe::measure(calls, budget, || {
                s.generate_random_slice(&mut buf)
                    .map_err(|e| format!("C_GenerateRandom: {e}"))
            })
            .map_err(HsmError::Other)
        })
    }

    /// Where Encrypt IVs come from.
    pub fn iv_path(&self) -> IvPath {
        self.iv_path
    }

    /// Encrypt under a fresh IV by this module's path: generated inside the token (message
    /// API) when offered, else from the token's RNG ([`Hsm::next_iv`]).
    pub fn encrypt(
        &self,
        s: &Session,
        key: cryptoki::object::ObjectHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<GcmOutput, HsmError> {
        match self.iv_path {
            IvPath::TokenGenerated => gcm_encrypt_token_iv(s, key, aad, plaintext),
            IvPath::HsmRandom => gcm_encrypt(s, key, self.next_iv(s)?, aad, plaintext),
        }
    }

    /// A fresh GCM IV from the token's RNG (fetched in bulk, each handed out once).
    pub fn next_iv(&self, s: &Session) -> Result<[u8; IV_LEN], HsmError> {
        self.ivs.next(s)
    }

    /// The tokens behind the proxy's slot, from the module's "XKI Status" interface; `None`
    /// when the module has no such interface (or refuses the query). Cheap: the module reads
    /// counters, no HSM call.
    pub fn members(&self) -> Option<Vec<Member>> {
        self.status.as_ref()?.members(self.slot.id())
    }

    /// The module's audit state, from its "XKI Status" interface (`None` for modules without
    /// it). Cheap: counters only.
    pub fn audit(&self) -> Option<AuditStatus> {
        self.status.as_ref()?.audit()
    }

    /// Ask the module to reopen its log and audit files (SIGHUP: log rotation); `false` when
    /// it cannot (not our module).
    pub fn reopen_logs(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.reopen_logs())
    }

    /// A `CKR_DEVICE_ERROR` while the module refuses key operations because its audit file
    /// cannot be written is [`HsmError::AuditRefused`], not an HSM failure: the session is
    /// fine and stays pooled.
    fn audit_refusal<R>(&self, r: Result<R, HsmError>) -> Result<R, HsmError> {
        match r {
            Err(e) if e.rv() == Some(RvError::DeviceError) => {
                if self.audit().is_some_and(|a| a.refusing()) {
                    Err(HsmError::AuditRefused)
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// Pool occupancy for metrics.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats(self.exec.get().map_or(0, |e| e.waiting()))
    }

    /// Stop handing out sessions, wait (up to [`CLOSE_WAIT`]) for the calls already in the
    /// HSM, and close the idle sessions (graceful shutdown: the process exits after this, and
    /// must not while a worker is inside the PKCS#11 library).
    pub fn close(&self) {
        if let Some(e) = self.exec.get() {
            let running = e.close(CLOSE_WAIT);
            if running > 0 {
                tracing::warn!(
                    running,
                    wait_ms = CLOSE_WAIT.as_millis() as u64,
                    "HSM calls still running at shutdown (hung module?); exiting anyway"
                );
            }
        }
        self.pool.close();
    }
}

fn load_module(path: &Path) -> Result<Pkcs11, HsmError> {
    let ctx = Pkcs11::new(path).map_err(|e| {
        HsmError::Other(format!(
            "cannot load PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(HsmError::pkcs11("C_Initialize", e)),
    }
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, cfg: &HsmConfig, module: &Path) -> Result<Slot, HsmError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| HsmError::pkcs11("C_GetSlotList", e))?;
    if let Some(label) = &cfg.token_label {
        for s in &slots {
            if let Ok(ti) = ctx.get_token_info(*s) {
                if ti.label().trim() == label {
                    return Ok(*s);
                }
            }
        }
        let mut seen = Vec::new();
        for s in &slots {
            if let Ok(ti) = ctx.get_token_info(*s) {
                seen.push(format!("{:?}", ti.label().trim()));
            }
        }
        return Err(HsmError::Other(format!(
            "no token with label {label:?} in {} (tokens present: {})",
            module.display(),
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        )));
    }
    let want = cfg.slot.unwrap_or_default();
    slots
        .into_iter()
        .find(|s| s.id() == want)
        .ok_or_else(|| HsmError::Other(format!("no token in slot {want}")))
}
