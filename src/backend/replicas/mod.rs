//! Replica groups: one slot served by several HSMs that hold the same keys.
//!
//! [`ReplicaGroup`] implements [`Backend`] over its members, so the module core still talks to
//! one backend per slot. What it adds:
//! - Key identity across members by `CKA_ID` (or `CKA_LABEL`), with the group's own stable
//!   key numbers and mismatch detection ([`keys`]).
//! - Load spreading: each call goes to the in-service member with the fewest calls in flight.
//! - Failover: a member that fails (see [`health::is_member_failure`]) or does not answer
//!   within its `timeout_ms` leaves service and the call is retried on the next member. Calls
//!   run on per-member worker threads ([`worker`]) so a hung vendor library never holds the
//!   caller beyond the deadline; reads and crypto on a member whose backend cannot hang (the
//!   embedded token, or `inline_calls = true`) run on the caller's thread instead
//!   ([`member`]). Every verb retried this way is safe to repeat (GCM with the
//!   caller's IV, GCM with a generated IV: each attempt has its member generate a new one,
//!   and the caller gets the IV of the attempt that answered; decrypt, reads, random); key
//!   generation is never retried.
//! - Recovery: a probe thread (`probe.rs`) re-checks members out of service every
//!   `probe_interval_ms` with a listing and a real encrypt/decrypt round trip on a key the
//!   group knows on that member (the slot's `canary_label` key if configured).
//! - Health: [`ReplicaGroup::status`], reported through the `XKI Status` vendor interface.
//!
//! With no member in service a call fails at once with `CKR_DEVICE_ERROR` (no waiting).
//!
//! Decisions (documented here because callers and operators depend on them):
//! - Failure set: [`health::is_member_failure`]. Errors about the request
//!   (`CKR_ENCRYPTED_DATA_INVALID`, `CKR_KEY_FUNCTION_NOT_PERMITTED`, length errors, ...)
//!   are returned as they are and never take a member out of service.
//! - Retried verbs: GCM encrypt (with the caller's IV, or a generated one: a new IV per
//!   attempt) and decrypt, key reads, listing, random. A group takes caller IVs only if every
//!   member it has opened does. Each attempt has the member's own deadline, so a caller waits at most one
//!   deadline per member that hangs at that very moment (one, normally: after the first
//!   timeout the member is out of service and later calls skip it).
//! - Key mismatches: served only from members holding exactly one copy ([`keys`]); a key a
//!   member answers `CKR_KEY_HANDLE_INVALID`/`CKR_OBJECT_HANDLE_INVALID` for is marked
//!   missing there and the call goes to another member.
//! - Key generation: only with `replication = "hsm"`: created on one member, then the group
//!   polls every 50 ms until every member in service lists it (`replication_wait_ms`,
//!   default 10 s) or fails with `CKR_FUNCTION_FAILED`. Without it, a group of several
//!   members refuses with `CKR_FUNCTION_FAILED` and an error in the log (keys cannot be
//!   copied between HSMs, so a key on one member only would be a mismatch from birth).
//! - Attribute changes, key-state records (`crate::keystate`) and destruction go to every
//!   member in service holding the key; the first member's answer decides, later members
//!   that fail are logged and reported. A member out of service at that moment misses the
//!   change: the key's state is then read from the members that have it until an admin
//!   command repeats the change (reads go to one member in service).
//! - Members that cannot be reached when the module starts ([`open_later`]) start out of
//!   service and the probe opens them; at least one member must answer at start.
//! - Threads: per member at most `max_sessions` workers (default 32), which bounds how many
//!   threads a hung vendor library can hold; one probe thread per group. Inline members start
//!   workers only for changes and opening. An application that
//!   forbids thread creation (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`) cannot have groups:
//!   `C_Initialize` then fails with `CKR_NEED_TO_CREATE_THREADS`.

mod backend;
pub mod health;
pub mod keys;
pub mod member;
mod probe;
pub mod worker;

use crate::backend::{Backend, BackendKey, KeyInfo};
use crate::config::Replication;
use crate::rv::{CkResult, Rv};
use health::MemberStatus;
use keys::{Holding, KeyMap};
use member::{Member, Outcome};
use parking_lot::{Condvar, Mutex, RwLock};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Group settings from the slot's config.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// How new keys reach every member.
    pub replication: Replication,
    /// How often members out of service are probed.
    pub probe_interval: Duration,
    /// How long a generated key may take to appear on every member (replication = "hsm").
    pub replication_wait: Duration,
    /// Label of the key the probe encrypts with; any key of the group when `None`.
    pub canary_label: Option<Vec<u8>>,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            replication: Replication::None,
            probe_interval: Duration::from_millis(5000),
            replication_wait: Duration::from_millis(10_000),
            canary_label: None,
        }
    }
}

/// One member to build a group from: its backend and per-call deadline.
pub struct MemberSpec {
    /// The member's name (`[backend.NAME]`).
    pub name: String,
    /// The opened backend, or `None` when it could not be opened yet (then `reopen` is set).
    pub backend: Option<Arc<dyn Backend>>,
    /// For a member that could not be opened at start-up: how the probe opens it later.
    pub reopen: Option<member::Opener>,
    /// Per-call deadline (`timeout_ms`).
    pub deadline: Duration,
    /// Most worker threads (and so most calls stuck in a hung library) for this member.
    pub max_threads: usize,
    /// Run reads and crypto on the caller's thread (`inline_calls`); `None`: as the backend
    /// says ([`Backend::reads_cannot_hang`]).
    pub inline: Option<bool>,
}

impl MemberSpec {
    /// A member on an opened backend.
    pub fn open(backend: Arc<dyn Backend>, deadline: Duration, max_threads: usize) -> Self {
        MemberSpec {
            name: backend.name().to_string(),
            backend: Some(backend),
            reopen: None,
            deadline,
            max_threads,
            inline: None,
        }
    }
}

/// Whether a failure to open a member means "unreachable now, try again later" rather than
/// a configuration problem. PIN and login errors are never retried (retrying a wrong PIN can
/// lock the HSM user), nor is a library that does not load.
pub fn open_later(rv: Rv) -> bool {
    matches!(
        rv.code(),
        pkcs11_sys::CKR_DEVICE_ERROR
            | pkcs11_sys::CKR_DEVICE_REMOVED
            | pkcs11_sys::CKR_DEVICE_MEMORY
            | pkcs11_sys::CKR_TOKEN_NOT_PRESENT
            | pkcs11_sys::CKR_TOKEN_NOT_RECOGNIZED
            | pkcs11_sys::CKR_SLOT_ID_INVALID
    )
}

pub(crate) struct Inner {
    name: String,
    members: Vec<Member>,
    keys: RwLock<KeyMap>,
    settings: GroupSettings,
    /// Rotates the tie-break between equally busy members.
    turn: AtomicUsize,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Which call of [`Inner::run_read`] answered: the one run on the caller's thread, or the
/// owned one a worker ran.
enum Served<H, W> {
    Here(H),
    Worker(W),
}

/// A replica group. See the module docs.
pub struct ReplicaGroup {
    inner: Arc<Inner>,
    probe: Mutex<Option<JoinHandle<()>>>,
}

impl ReplicaGroup {
    /// Build a group named `name` (the slot label, for logs) and start its probe thread.
    /// Members that cannot list their keys now start out of service. Fails only when no
    /// member answers at all.
    pub fn new(name: &str, members: Vec<MemberSpec>, settings: GroupSettings) -> CkResult<Self> {
        if members.is_empty() {
            return Err(Rv::ARGUMENTS_BAD);
        }
        let count = members.len();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            members: members
                .into_iter()
                .map(|m| {
                    Member::new(
                        &m.name,
                        m.backend,
                        m.reopen,
                        m.deadline,
                        m.max_threads,
                        m.inline,
                    )
                })
                .collect(),
            keys: RwLock::new(KeyMap::new(count)),
            settings,
            turn: AtomicUsize::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        for (i, m) in inner.members.iter().enumerate() {
            if m.backend().is_some() {
                inner.refresh_member(i);
            } else {
                m.mark_down(Rv::DEVICE_ERROR, "could not be opened at start-up".into());
            }
        }
        if !inner.members.iter().any(Member::is_up) {
            log::error!("replica group {name}: no member answers");
            return Err(Rv::DEVICE_ERROR);
        }
        let worker = inner.clone();
        let probe = std::thread::Builder::new()
            .name(format!("xki-probe-{name}"))
            .spawn(move || probe::run(worker))
            .map_err(|e| {
                log::error!("replica group {name}: cannot start the probe thread: {e}");
                Rv::FUNCTION_FAILED
            })?;
        Ok(ReplicaGroup {
            inner,
            probe: Mutex::new(Some(probe)),
        })
    }

    /// Health of every member, in configured order.
    pub fn status(&self) -> Vec<MemberStatus> {
        let keys = self.inner.keys.read();
        self.inner
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| m.status(keys.mismatches_of(i)))
            .collect()
    }
}

impl Inner {
    /// List member `i`'s keys and merge them into the key map, logging new mismatches.
    /// Returns the listing, or `None` when the member failed (it is then out of service).
    fn refresh_member(&self, i: usize) -> Option<Vec<KeyInfo>> {
        let m = &self.members[i];
        let listed = match m.attempt_read(|b| b.list_secret_keys()) {
            Outcome::Answer(Ok(l)) => l,
            Outcome::Answer(Err(rv)) => {
                m.mark_down(rv, format!("cannot list keys: {rv}"));
                return None;
            }
            Outcome::Failed(_) => return None,
        };
        let fresh = self.keys.write().merge_listing(i, &listed);
        for x in fresh {
            let text = format!("key {} is {} on this member", x.key, x.kind);
            log::error!(
                "replica group {}: member {}: {text}; it is served only from members holding exactly one copy",
                self.name,
                m.name
            );
            m.note_problem(Rv::GENERAL_ERROR, text);
        }
        Some(listed)
    }

    /// The least busy member in service not yet `tried` that can serve a call on `key` (any
    /// member for `None`), with its handle for the key.
    fn pick(&self, key: Option<u64>, tried: &[bool]) -> Option<(usize, BackendKey)> {
        let keys = self.keys.read();
        match key {
            Some(k) => self.pick_in(Some(keys.holdings(k)?), tried),
            None => self.pick_in(None, tried),
        }
    }

    /// [`Inner::pick`] for a key held as `holdings` (`None`: no key).
    fn pick_in(&self, holdings: Option<&[Holding]>, tried: &[bool]) -> Option<(usize, BackendKey)> {
        let n = self.members.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, BackendKey, u64)> = None;
        for off in 0..n {
            let i = (start + off) % n;
            let m = &self.members[i];
            if tried[i] || !m.is_up() {
                continue;
            }
            let mk = match holdings {
                Some(h) => match keys::held(h, i) {
                    Some(mk) => mk,
                    None => continue,
                },
                None => BackendKey(0),
            };
            let load = m.in_flight();
            if best.is_none_or(|(_, _, l)| load < l) {
                best = Some((i, mk, load));
            }
        }
        best.map(|(i, mk, _)| (i, mk))
    }

    /// Run `op` on the least busy member that can, failing over until one answers. `op` is a
    /// read or crypto call (it may run on the caller's thread); see [`Inner::run_read`].
    fn run<T, F>(&self, key: Option<u64>, op: F) -> CkResult<T>
    where
        T: Send + 'static,
        F: Fn(&dyn Backend, BackendKey) -> CkResult<T> + Send + Sync + 'static,
    {
        let op = Arc::new(op);
        let here = op.clone();
        Ok(
            match self.run_read(
                key,
                |b, mk| here(b, mk),
                move || move |b: &dyn Backend, mk| op(b, mk),
            )? {
                Served::Here(v) | Served::Worker(v) => v,
            },
        )
    }

    /// Run a read or crypto call on the least busy member that can, failing over until one
    /// answers. On a member that runs reads inline the call is `here`, which may borrow the
    /// caller's buffers; on the others it is the owned call `owned()` makes (at most once, on
    /// the first such member), which a worker can keep running after the caller left.
    fn run_read<H, W, FH, FW, O>(
        &self,
        key: Option<u64>,
        mut here: FH,
        owned: O,
    ) -> CkResult<Served<H, W>>
    where
        W: Send + 'static,
        FH: FnMut(&dyn Backend, BackendKey) -> CkResult<H>,
        FW: Fn(&dyn Backend, BackendKey) -> CkResult<W> + Send + Sync + 'static,
        O: FnOnce() -> FW,
    {
        let mut tried: SmallVec<[bool; 8]> = smallvec::smallvec![false; self.members.len()];
        let mut next = {
            let keys = self.keys.read();
            match key {
                Some(k) => {
                    let holdings = keys.holdings(k).ok_or(Rv::KEY_HANDLE_INVALID)?;
                    self.pick_in(Some(holdings), &tried)
                }
                None => self.pick_in(None, &tried),
            }
        };
        let mut owned = Some(owned);
        let mut shared: Option<Arc<FW>> = None;
        let mut last = Rv::DEVICE_ERROR;
        while let Some((i, mk)) = next {
            tried[i] = true;
            let m = &self.members[i];
            let outcome = match m.inline_backend() {
                Some(b) => m.attempt_here(|| here(b, mk)).map(Served::Here),
                None => {
                    let op = match &shared {
                        Some(op) => op.clone(),
                        None => {
                            let make = owned.take().ok_or(Rv::GENERAL_ERROR)?;
                            shared.insert(Arc::new(make())).clone()
                        }
                    };
                    m.attempt_read(move |b| op(b, mk)).map(Served::Worker)
                }
            };
            match outcome {
                Outcome::Answer(Err(rv)) if key.is_some() && is_gone(rv) => {
                    // The map says the member holds the key, the member says it does not:
                    // it was destroyed there behind our back. Serve from the others.
                    let k = key.unwrap_or_default();
                    self.keys.write().set_missing(k, i);
                    let text = format!("key #{k} vanished from this member ({rv})");
                    log::error!(
                        "replica group {}: member {}: {text}",
                        self.name,
                        self.members[i].name
                    );
                    self.members[i].note_problem(rv, text);
                    last = rv;
                }
                Outcome::Answer(result) => return result,
                Outcome::Failed(rv) => {
                    last = rv;
                    self.wake.notify_all();
                }
            }
            next = self.pick(key, &tried);
        }
        if tried.iter().all(|t| !t) {
            log::error!(
                "replica group {}: no member in service can serve the call",
                self.name
            );
        }
        Err(
            if crate::backend::replicas::health::is_member_failure(last) {
                Rv::DEVICE_ERROR
            } else {
                last
            },
        )
    }

    /// Members in service holding `key` exactly once, in configured order.
    fn holders(&self, key: u64) -> Vec<(usize, BackendKey)> {
        let keys = self.keys.read();
        (0..self.members.len())
            .filter(|i| self.members[*i].is_up())
            .filter_map(|i| keys.member_key(key, i).map(|mk| (i, mk)))
            .collect()
    }

    /// Apply a change to every member in service holding `key`. The first answer about the
    /// request decides the result (a refused change is refused everywhere alike); a later
    /// member that fails to follow is logged and reported as a mismatch.
    fn apply_all<F>(&self, key: u64, what: &str, op: F) -> CkResult<Vec<usize>>
    where
        F: Fn(&dyn Backend, BackendKey) -> CkResult<()> + Send + Sync + 'static,
    {
        if !self.keys.read().contains(key) {
            return Err(Rv::KEY_HANDLE_INVALID);
        }
        let op = Arc::new(op);
        let mut done = Vec::new();
        let mut decided: Option<CkResult<()>> = None;
        for (i, mk) in self.holders(key) {
            let m = &self.members[i];
            let op = op.clone();
            match (m.attempt(move |b| op(b, mk)), &decided) {
                (Outcome::Answer(Ok(())), _) => {
                    done.push(i);
                    decided.get_or_insert(Ok(()));
                }
                (Outcome::Answer(Err(rv)), None) => return Err(rv),
                (Outcome::Answer(Err(rv)), Some(_)) => {
                    let text = format!("{what} failed on this member only: {rv}");
                    log::error!("replica group {}: member {}: {text}", self.name, m.name);
                    m.note_problem(rv, text);
                }
                (Outcome::Failed(_), _) => {}
            }
        }
        match decided {
            Some(Ok(())) => Ok(done),
            _ => Err(Rv::DEVICE_ERROR),
        }
    }

    /// Stop the probe thread and the workers.
    fn stop(&self) {
        *self.stop.lock() = true;
        self.wake.notify_all();
        for m in &self.members {
            m.shutdown();
        }
    }
}

/// A member's answer that the key object is not there (any more).
fn is_gone(rv: Rv) -> bool {
    rv == Rv::KEY_HANDLE_INVALID || rv == Rv::OBJECT_HANDLE_INVALID
}

impl Drop for ReplicaGroup {
    fn drop(&mut self) {
        self.inner.stop();
    }
}
