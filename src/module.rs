//! The module core: `C_Initialize`/`C_Finalize` lifecycle, global state, fork detection, and
//! the implementation of every function of [`crate::api`].
//!
//! Global state is one `Arc<Module>` behind a read-mostly lock that is held only long enough
//! to clone the `Arc`; no lock of this file is ever held across a backend call.

use crate::api::*;
use crate::audit::{self, Record};
use crate::backend::{self, Backend, MechanismInfo, NewKey, TokenDescription};
use crate::config::Config;
use crate::mechanism::{Mechanism, GCM_TAG_LEN};
use crate::object::ObjectTable;
use crate::policy;
use crate::rv::{CkResult, Rv};
use crate::session::{no_plaintext, CryptOp, Operation, Session, SessionTable, MAX_MULTIPART};
use crate::slot::Slot;
use parking_lot::{Mutex, RwLock};
use pkcs11_sys::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

/// Everything that exists between `C_Initialize` and `C_Finalize`.
pub struct Module {
    slots: Vec<SlotState>,
    sessions: SessionTable,
    objects: ObjectTable,
    /// Each opened backend once, for shutdown.
    backends: Vec<Arc<dyn Backend>>,
}

/// A slot plus what was learnt about its token at initialisation.
struct SlotState {
    slot: Slot,
    token: TokenDescription,
    /// Module mechanisms the backend really supports, with the module's info for them.
    mechanisms: Vec<(CK_MECHANISM_TYPE, MechanismInfo)>,
}

static STATE: RwLock<Option<Arc<Module>>> = RwLock::new(None);
/// Serialises `C_Initialize`/`C_Finalize` without blocking other calls.
static LIFECYCLE: Mutex<()> = Mutex::new(());
/// Set in a child after `fork()`: the inherited state belongs to the parent.
static FORKED: AtomicBool = AtomicBool::new(false);
static ATFORK: Once = Once::new();

extern "C" fn mark_forked_child() {
    FORKED.store(true, Ordering::SeqCst);
}

fn module() -> CkResult<Arc<Module>> {
    if FORKED.load(Ordering::Relaxed) {
        // PKCS#11: a child process must call C_Initialize itself.
        return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
    }
    STATE.read().clone().ok_or(Rv::CRYPTOKI_NOT_INITIALIZED)
}

/// Version reported in `CK_INFO.libraryVersion`.
fn library_version() -> (u8, u8) {
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    (major, minor)
}

pub fn initialize(args: Option<InitArgs>) -> CkResult<()> {
    if let Some(a) = args {
        if a.reserved_non_null {
            return Err(Rv::ARGUMENTS_BAD);
        }
        match a.callbacks_set {
            0 => {}
            // Callbacks given: we can only lock with the OS primitives, so they must allow it.
            4 if a.os_locking_ok => {}
            4 => return Err(Rv::CANT_LOCK),
            _ => return Err(Rv::ARGUMENTS_BAD),
        }
    }
    crate::logging::install_default();
    let _lifecycle = LIFECYCLE.lock();
    if FORKED.swap(false, Ordering::SeqCst) {
        // Inherited from the parent: its backend sessions belong to the parent process.
        // Dropping them would close the parent's sessions in the child's copy of the HSM
        // library, so leak them deliberately.
        if let Some(old) = STATE.write().take() {
            std::mem::forget(old);
        }
    }
    if STATE.read().is_some() {
        return Err(Rv::CRYPTOKI_ALREADY_INITIALIZED);
    }
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is
        // async-signal-safe as fork's child handler requires.
        unsafe {
            libc::pthread_atfork(None, None, Some(mark_forked_child));
        }
    });
    let config = match Config::discover() {
        Ok(Some(c)) => c,
        Ok(None) => Config::embedded_default().map_err(config_failed)?,
        Err(e) => return Err(config_failed(e)),
    };
    if let Err(e) = crate::logging::configure(
        config.log_level.as_deref(),
        config.log_file.as_deref(),
        config.audit_file.as_deref(),
    ) {
        log::error!("{}: {e}", config.source);
        return Err(Rv::FUNCTION_FAILED);
    }
    let module = build(&config, args.is_some_and(|a| a.no_os_threads))?;
    log::info!(
        "initialised from {} with {} slot(s)",
        config.source,
        module.slots.len()
    );
    *STATE.write() = Some(Arc::new(module));
    Ok(())
}

fn config_failed(e: crate::config::ConfigError) -> Rv {
    log::error!("configuration error: {e}");
    Rv::FUNCTION_FAILED
}

/// Open every backend and slot the config names. On any failure, shut down what was opened.
/// `no_os_threads`: the application forbade creating threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`),
/// which replica groups need (worker and probe threads), so they are refused then.
fn build(config: &Config, no_os_threads: bool) -> CkResult<Module> {
    let mut opened: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    let mut groups: Vec<Arc<dyn Backend>> = Vec::new();
    let result = (|| {
        let mut slots = Vec::with_capacity(config.slots.len());
        for (index, slot_cfg) in config.slots.iter().enumerate() {
            if slot_cfg.backends.len() > 1 && no_os_threads {
                log::error!(
                    "{}: slot[{index}].backends: a replica group needs its own threads, but C_Initialize was given CKF_LIBRARY_CANT_CREATE_OS_THREADS",
                    config.source
                );
                return Err(Rv::NEED_TO_CREATE_THREADS);
            }
            let (name, backend) = if slot_cfg.backends.len() == 1 {
                let name = slot_cfg.backends[0].clone();
                let b = open_backend(config, &name, &mut opened).map_err(|e| {
                    log_open_error(config, &name, &e);
                    Rv::FUNCTION_FAILED
                })?;
                (name, b)
            } else {
                let group = replica_group(config, index, &mut opened)?;
                groups.push(group.clone());
                (slot_cfg.label.clone(), group)
            };
            let user_pin = config
                .slot_user_pin(index)
                .map_err(config_failed)?
                .ok_or_else(|| {
                    log::error!(
                        "{}: slot[{index}].user_pin_file: no user PIN",
                        config.source
                    );
                    Rv::FUNCTION_FAILED
                })?;
            let token = backend.describe().map_err(|rv| {
                log::error!("backend {name}: cannot read token info: {rv}");
                Rv::FUNCTION_FAILED
            })?;
            let mechanisms = supported_mechanisms(backend.as_ref());
            slots.push(SlotState {
                slot: Slot::new(slot_cfg, backend, user_pin),
                token,
                mechanisms,
            });
        }
        Ok(slots)
    })();
    match result {
        Ok(slots) => Ok(Module {
            slots,
            sessions: SessionTable::default(),
            objects: ObjectTable::default(),
            // Groups first: they stop their threads before their members shut down.
            backends: groups.into_iter().chain(opened.into_values()).collect(),
        }),
        Err(rv) => {
            for b in groups.iter().chain(opened.values()) {
                b.shutdown();
            }
            Err(rv)
        }
    }
}

/// The backend `name`, opened once however many slots name it.
fn open_backend(
    config: &Config,
    name: &str,
    opened: &mut HashMap<String, Arc<dyn Backend>>,
) -> Result<Arc<dyn Backend>, backend::OpenError> {
    if let Some(b) = opened.get(name) {
        return Ok(b.clone());
    }
    let b = opener(config, name)?()?;
    opened.insert(name.to_string(), b.clone());
    Ok(b)
}

/// A function that opens backend `name` (with its PIN read now), for opening at start-up
/// and, for replica group members unreachable then, later from the group's probe thread.
fn opener(
    config: &Config,
    name: &str,
) -> Result<crate::backend::replicas::member::Opener, backend::OpenError> {
    let pin = config.backend_pin(name).map_err(|e| backend::OpenError {
        key: if e.key.ends_with("pin_env") {
            "pin_env"
        } else {
            "pin_file"
        },
        rv: Rv::FUNCTION_FAILED,
        problem: e.problem,
    })?;
    let (name, cfg) = (name.to_string(), config.backends[name].clone());
    Ok(Arc::new(move || {
        let b = backend::open(&name, &cfg, pin.clone())?;
        #[cfg(feature = "fault-injection")]
        let b = fault_wrapped(&name, b);
        Ok(b)
    }))
}

fn log_open_error(config: &Config, name: &str, e: &backend::OpenError) {
    log::error!(
        "{}: backend.{name}.{}: {} ({})",
        config.source,
        e.key,
        e.problem,
        e.rv
    );
}

/// TEST-ONLY (feature `fault-injection`): wrap backend `name` in the fault injector when the
/// environment variable `XKI_FAULT_CONTROL_<name>` names a control file (`ok`/`fail`/`hang`).
#[cfg(feature = "fault-injection")]
fn fault_wrapped(name: &str, b: Arc<dyn Backend>) -> Arc<dyn Backend> {
    match std::env::var_os(format!("XKI_FAULT_CONTROL_{name}")) {
        Some(path) => {
            log::warn!("backend {name}: fault injection enabled (test build)");
            Arc::new(crate::backend::fault::FaultBackend::with_control_file(
                name,
                b,
                path.into(),
            ))
        }
        None => b,
    }
}

/// The replica group of slot `index`. A member that cannot be reached now (device or token
/// not present, see [`open_later`](crate::backend::replicas::open_later)) starts out of
/// service and the group's probe opens it later; any other open error fails initialisation.
fn replica_group(
    config: &Config,
    index: usize,
    opened: &mut HashMap<String, Arc<dyn Backend>>,
) -> CkResult<Arc<dyn Backend>> {
    use crate::backend::replicas::{open_later, GroupSettings, MemberSpec, ReplicaGroup};
    use crate::config::{BackendConfig, SlotConfig};
    use std::time::Duration;
    let slot_cfg = &config.slots[index];
    let mut specs = Vec::with_capacity(slot_cfg.backends.len());
    for name in &slot_cfg.backends {
        let b = &config.backends[name];
        let mut spec = MemberSpec {
            name: name.clone(),
            backend: None,
            reopen: None,
            deadline: Duration::from_millis(
                b.timeout_ms.unwrap_or(BackendConfig::DEFAULT_TIMEOUT_MS),
            ),
            max_threads: b
                .max_sessions
                .unwrap_or(BackendConfig::DEFAULT_MAX_SESSIONS),
        };
        match open_backend(config, name, opened) {
            Ok(backend) => spec.backend = Some(backend),
            Err(e) if open_later(e.rv) => {
                log::error!(
                    "{}: slot[{index}]: member {name} cannot be reached now ({}: {}); it starts out of service and is retried by the probe",
                    config.source,
                    e.rv,
                    e.problem
                );
                spec.reopen = Some(opener(config, name).map_err(|e| {
                    log_open_error(config, name, &e);
                    Rv::FUNCTION_FAILED
                })?);
            }
            Err(e) => {
                log_open_error(config, name, &e);
                return Err(Rv::FUNCTION_FAILED);
            }
        }
        specs.push(spec);
    }
    let settings = GroupSettings {
        replication: slot_cfg.replication,
        probe_interval: Duration::from_millis(
            slot_cfg
                .probe_interval_ms
                .unwrap_or(SlotConfig::DEFAULT_PROBE_INTERVAL_MS),
        ),
        replication_wait: Duration::from_millis(
            slot_cfg
                .replication_wait_ms
                .unwrap_or(SlotConfig::DEFAULT_REPLICATION_WAIT_MS),
        ),
        canary_label: slot_cfg
            .canary_label
            .as_ref()
            .map(|l| l.as_bytes().to_vec()),
    };
    let group = ReplicaGroup::new(&slot_cfg.label, specs, settings).map_err(|rv| {
        log::error!(
            "{}: slot[{index}]: replica group over {} cannot start: {rv}",
            config.source,
            slot_cfg.backends.join(",")
        );
        Rv::FUNCTION_FAILED
    })?;
    Ok(Arc::new(group))
}

/// `XKI_GetMemberCount`: how many tokens serve `slot` (1 unless it is a replica group).
pub fn member_count(slot: u64) -> CkResult<u64> {
    let m = module()?;
    Ok(m.slot(slot)?.slot.backend.member_status().len() as u64)
}

/// `XKI_GetMemberStatus`: health of member `index` of `slot`.
pub fn member_status(
    slot: u64,
    index: u64,
) -> CkResult<crate::backend::replicas::health::MemberStatus> {
    let m = module()?;
    let all = m.slot(slot)?.slot.backend.member_status();
    usize::try_from(index)
        .ok()
        .and_then(|i| all.into_iter().nth(i))
        .ok_or(Rv::ARGUMENTS_BAD)
}

/// The module's mechanisms that the backend really supports for 256-bit keys, with flags
/// set outright by the module (never OR-ed into anything).
fn supported_mechanisms(backend: &dyn Backend) -> Vec<(CK_MECHANISM_TYPE, MechanismInfo)> {
    policy::MECHANISMS
        .iter()
        .filter_map(|&m| {
            let info = backend.mechanism_info(m).ok()?;
            let flags = policy::mechanism_flags(m)?;
            let fits = info.min_key_size <= policy::KEY_LEN && policy::KEY_LEN <= info.max_key_size;
            let has_flags = info.flags & flags == flags;
            (fits && has_flags).then_some((
                m,
                MechanismInfo {
                    min_key_size: policy::KEY_LEN,
                    max_key_size: policy::KEY_LEN,
                    flags,
                },
            ))
        })
        .collect()
}

pub fn finalize() -> CkResult<()> {
    let _lifecycle = LIFECYCLE.lock();
    if FORKED.load(Ordering::SeqCst) {
        return Err(Rv::CRYPTOKI_NOT_INITIALIZED);
    }
    let module = STATE.write().take().ok_or(Rv::CRYPTOKI_NOT_INITIALIZED)?;
    for b in &module.backends {
        b.shutdown();
    }
    log::info!("finalised");
    Ok(())
}

pub fn get_info() -> CkResult<ModuleInfo> {
    module()?;
    Ok(ModuleInfo {
        cryptoki_version: (2, 40),
        manufacturer: "xki-bridge".into(),
        description: "xki-bridge HYOK PKCS#11 module".into(),
        library_version: library_version(),
    })
}

impl Module {
    fn slot(&self, id: u64) -> CkResult<&SlotState> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(Rv::SLOT_ID_INVALID)
    }

    /// The session and its slot.
    fn session(&self, handle: u64) -> CkResult<(Arc<Mutex<Session>>, &SlotState, usize)> {
        let s = self.sessions.get(handle)?;
        let index = s.lock().slot;
        Ok((s, &self.slots[index], index))
    }

    /// A key handle of the session's slot, for a logged-in user.
    fn key(
        &self,
        slot: &SlotState,
        slot_index: usize,
        handle: u64,
        invalid: Rv,
    ) -> CkResult<crate::object::ObjectEntry> {
        slot.slot.require_login()?;
        match self.objects.get(handle) {
            Ok(e) if e.slot == slot_index => Ok(e),
            _ => Err(invalid),
        }
    }
}

pub fn get_slot_list(_token_present: bool) -> CkResult<Vec<u64>> {
    // Every virtual slot always holds its token.
    Ok((0..module()?.slots.len() as u64).collect())
}

pub fn get_slot_info(slot: u64) -> CkResult<SlotInfo> {
    let m = module()?;
    let s = m.slot(slot)?;
    Ok(SlotInfo {
        description: format!(
            "xki-bridge slot {} over {}",
            s.slot.label,
            s.slot.backend_names.join(",")
        ),
        manufacturer: "xki-bridge".into(),
        flags: CKF_TOKEN_PRESENT,
        hardware_version: (0, 0),
        firmware_version: library_version(),
    })
}

pub fn get_token_info(slot: u64) -> CkResult<TokenInfo> {
    let m = module()?;
    let s = m.slot(slot)?;
    let (sessions, rw) = m.sessions.count(slot as usize);
    let mut serial = s.token.serial.clone();
    serial.truncate(16);
    Ok(TokenInfo {
        label: s.slot.label.clone(),
        manufacturer: "xki-bridge".into(),
        model: s.token.model.clone(),
        serial,
        flags: CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED,
        max_session_count: CK_EFFECTIVELY_INFINITE,
        session_count: sessions,
        max_rw_session_count: CK_EFFECTIVELY_INFINITE,
        rw_session_count: rw,
        max_pin_len: 255,
        min_pin_len: 1,
        total_public_memory: CK_UNAVAILABLE_INFORMATION,
        free_public_memory: CK_UNAVAILABLE_INFORMATION,
        total_private_memory: CK_UNAVAILABLE_INFORMATION,
        free_private_memory: CK_UNAVAILABLE_INFORMATION,
        hardware_version: s.token.hardware_version,
        firmware_version: s.token.firmware_version,
        utc_time: String::new(),
    })
}

pub fn get_mechanism_list(slot: u64) -> CkResult<Vec<u64>> {
    let m = module()?;
    Ok(m.slot(slot)?.mechanisms.iter().map(|(t, _)| *t).collect())
}

pub fn get_mechanism_info(slot: u64, mechanism: u64) -> CkResult<MechanismInfo> {
    let m = module()?;
    m.slot(slot)?
        .mechanisms
        .iter()
        .find(|(t, _)| *t == mechanism)
        .map(|(_, info)| *info)
        .ok_or(Rv::MECHANISM_INVALID)
}

pub fn open_session(slot: u64, flags: u64) -> CkResult<u64> {
    let m = module()?;
    m.slot(slot)?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(Rv::SESSION_PARALLEL_NOT_SUPPORTED);
    }
    Ok(m.sessions.open(slot as usize, flags & CKF_RW_SESSION != 0))
}

pub fn close_session(session: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    m.sessions.close(session)?;
    if m.sessions.count(index).0 == 0 {
        // PKCS#11: closing the last session of a token logs the user out.
        s.slot.reset_login();
    }
    Ok(())
}

pub fn close_all_sessions(slot: u64) -> CkResult<()> {
    let m = module()?;
    let s = m.slot(slot)?;
    m.sessions.close_slot(slot as usize);
    s.slot.reset_login();
    Ok(())
}

pub fn get_session_info(session: u64) -> CkResult<SessionInfo> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    let rw = sess.lock().read_write;
    let state = match (s.slot.is_logged_in(), rw) {
        (false, false) => CKS_RO_PUBLIC_SESSION,
        (false, true) => CKS_RW_PUBLIC_SESSION,
        (true, false) => CKS_RO_USER_FUNCTIONS,
        (true, true) => CKS_RW_USER_FUNCTIONS,
    };
    Ok(SessionInfo {
        slot_id: index as u64,
        state,
        flags: CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 },
        device_error: 0,
    })
}

pub fn login(session: u64, user_type: u64, pin: &[u8]) -> CkResult<()> {
    let m = module()?;
    let (_, s, _) = m.session(session)?;
    match user_type {
        CKU_USER => {
            let result = s.slot.login(pin);
            if result == Err(Rv::PIN_INCORRECT) {
                log::warn!("slot {}: C_Login with an incorrect PIN", s.slot.label);
            }
            result
        }
        // No operation ever needs re-authentication.
        CKU_CONTEXT_SPECIFIC => Err(Rv::OPERATION_NOT_INITIALIZED),
        // The virtual token has no security officer: HSM administration happens on the HSM.
        _ => Err(Rv::USER_TYPE_INVALID),
    }
}

pub fn logout(session: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    s.slot.logout()?;
    m.sessions.end_operations(index);
    Ok(())
}

fn refused<T>(s: &SlotState, function: &str, key: &[u8], rv: Rv) -> CkResult<T> {
    audit::refusal(function, &s.slot.label, key, rv).map(|_| unreachable!("refusal is Err"))
}

pub fn create_object(session: u64, template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (_, s, _) = m.session(session)?;
    refused(
        s,
        "C_CreateObject",
        b"",
        policy::create_object_refusal(template),
    )
}

pub fn copy_object(session: u64, object: u64, _template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    refused(s, "C_CopyObject", &e.label, Rv::ACTION_PROHIBITED)
}

pub fn destroy_object(session: u64, object: u64) -> CkResult<()> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    if !sess.lock().read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    if !s.slot.allow_destroy {
        return refused(s, "C_DestroyObject", &e.label, Rv::ACTION_PROHIBITED);
    }
    let result = s.slot.backend.destroy_key(e.key);
    if result.is_ok() {
        m.objects.remove(object);
    }
    audit::record(lifecycle("destroy", s, &e.label), result)
}

fn lifecycle<'a>(op: &'a str, s: &'a SlotState, key: &'a [u8]) -> Record<'a> {
    Record {
        op,
        slot: &s.slot.label,
        key,
        mechanism: "",
        bytes_in: 0,
        bytes_out: 0,
    }
}

pub fn get_object_size(session: u64, object: u64) -> CkResult<u64> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    // The size of a key object inside an HSM is not information the token gives out.
    Ok(CK_UNAVAILABLE_INFORMATION)
}

/// Fresh attributes of a key from its backend; a key gone from the HSM is an invalid handle.
fn fresh_key(
    m: &Module,
    s: &SlotState,
    object: u64,
    key: backend::BackendKey,
) -> CkResult<backend::KeyInfo> {
    let info = s.slot.backend.key_info(key).map_err(|rv| match rv {
        Rv::OBJECT_HANDLE_INVALID | Rv::KEY_HANDLE_INVALID => Rv::OBJECT_HANDLE_INVALID,
        other => other,
    })?;
    if !s.slot.admits(&info) {
        return Err(Rv::OBJECT_HANDLE_INVALID);
    }
    m.objects.refresh(object, &info);
    Ok(info)
}

pub fn get_attribute_value(
    session: u64,
    object: u64,
    types: &[u64],
) -> CkResult<Vec<AttributeAnswer>> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    let info = fresh_key(&m, s, object, e.key)?;
    Ok(types
        .iter()
        .map(|t| policy::public_attribute(&info, *t, s.slot.allow_destroy))
        .collect())
}

pub fn set_attribute_value(session: u64, object: u64, template: &[Attribute]) -> CkResult<()> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    let e = m.key(s, index, object, Rv::OBJECT_HANDLE_INVALID)?;
    if !sess.lock().read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    let changes = match policy::attribute_changes(template) {
        Ok(c) => c,
        Err(rv) => return refused(s, "C_SetAttributeValue", &e.label, rv),
    };
    let info = fresh_key(&m, s, object, e.key)?;
    if let Some(label) = &changes.label {
        if !s.slot.admits_names(&info.id, label) {
            // The key would vanish from its own slot.
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
        if *label != info.label && !label.is_empty() && label_in_use(s, label)? {
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
    }
    let mut op = String::from("set_attributes(");
    for (name, set) in [
        ("label", changes.label.is_some()),
        ("encrypt", changes.encrypt.is_some()),
        ("decrypt", changes.decrypt.is_some()),
        ("start_date", changes.start_date.is_some()),
        ("end_date", changes.end_date.is_some()),
    ] {
        if set {
            op.push_str(name);
            op.push(match (changes.encrypt, changes.decrypt, name) {
                (Some(true), _, "encrypt") | (_, Some(true), "decrypt") => '+',
                (Some(false), _, "encrypt") | (_, Some(false), "decrypt") => '-',
                _ => ' ',
            });
        }
    }
    let op = format!("{})", op.trim_end());
    let result = s.slot.backend.set_key_attributes(e.key, &changes);
    if result.is_ok() {
        if let Ok(info) = s.slot.backend.key_info(e.key) {
            m.objects.refresh(object, &info);
        }
    }
    audit::record(lifecycle(&op, s, &info.label), result)
}

/// Whether any secret key on the slot's backend already carries this label.
fn label_in_use(s: &SlotState, label: &[u8]) -> CkResult<bool> {
    Ok(s.slot
        .backend
        .list_secret_keys()?
        .iter()
        .any(|k| k.label == label))
}

pub fn find_objects_init(session: u64, template: &[Attribute]) -> CkResult<()> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    if !matches!(sess.lock().op, Operation::None) {
        return Err(Rv::OPERATION_ACTIVE);
    }
    // Every key is a private object: nothing is visible before C_Login.
    let found = if s.slot.is_logged_in() {
        s.slot
            .visible_keys()?
            .iter()
            .filter(|k| policy::template_matches(k, template, s.slot.allow_destroy))
            .map(|k| m.objects.handle_for(index, k))
            .collect()
    } else {
        Default::default()
    };
    let mut sess = sess.lock();
    if !matches!(sess.op, Operation::None) {
        return Err(Rv::OPERATION_ACTIVE);
    }
    sess.op = Operation::Find(found);
    Ok(())
}

pub fn find_objects(session: u64, max: usize) -> CkResult<Vec<u64>> {
    let m = module()?;
    let (sess, _, _) = m.session(session)?;
    let mut sess = sess.lock();
    match &mut sess.op {
        Operation::Find(rest) => {
            let n = max.min(rest.len());
            Ok(rest.drain(..n).collect())
        }
        _ => Err(Rv::OPERATION_NOT_INITIALIZED),
    }
}

pub fn find_objects_final(session: u64) -> CkResult<()> {
    let m = module()?;
    let (sess, _, _) = m.session(session)?;
    let mut sess = sess.lock();
    match sess.op {
        Operation::Find(_) => {
            sess.op = Operation::None;
            Ok(())
        }
        _ => Err(Rv::OPERATION_NOT_INITIALIZED),
    }
}

/// Set up an encryption or decryption.
fn crypt_init(session: u64, mechanism: &Mechanism, key: u64, encrypt: bool) -> CkResult<()> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    if !matches!(sess.lock().op, Operation::None) {
        return Err(Rv::OPERATION_ACTIVE);
    }
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    let params = policy::gcm_params(mechanism)?.clone();
    let op = CryptOp {
        object: key,
        key: e.key,
        params,
        buffered: None,
    };
    let mut sess = sess.lock();
    if !matches!(sess.op, Operation::None) {
        return Err(Rv::OPERATION_ACTIVE);
    }
    sess.op = if encrypt {
        Operation::Encrypt(op)
    } else {
        Operation::Decrypt(op)
    };
    Ok(())
}

pub fn encrypt_init(session: u64, mechanism: &Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, true)
}

pub fn decrypt_init(session: u64, mechanism: &Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, false)
}

/// Run `f` on the session's active operation; an error ends the operation, as PKCS#11 says
/// every failing encrypt/decrypt call does.
fn with_op<T>(
    session: u64,
    encrypt: bool,
    f: impl FnOnce(&mut CryptOp) -> CkResult<T>,
) -> CkResult<T> {
    let m = module()?;
    let (sess, _, _) = m.session(session)?;
    let mut sess = sess.lock();
    let op = if encrypt {
        sess.encrypt_op()?
    } else {
        sess.decrypt_op()?
    };
    let result = f(op);
    if result.is_err() {
        sess.op = Operation::None;
    }
    result
}

/// End the active operation and run the backend call for it, outside every lock.
fn finish<T>(
    session: u64,
    encrypt: bool,
    single_part: Option<&[u8]>,
    run: impl FnOnce(&SlotState, &CryptOp, &[u8]) -> CkResult<T>,
    out_len: impl Fn(&T) -> usize,
) -> CkResult<T> {
    let m = module()?;
    let (sess, s, _) = m.session(session)?;
    let op = {
        let mut sess = sess.lock();
        if encrypt {
            sess.take_encrypt()?
        } else {
            sess.take_decrypt()?
        }
    };
    let data: &[u8] = match (single_part, &op.buffered) {
        (Some(_), Some(_)) => return Err(Rv::OPERATION_ACTIVE),
        (Some(d), None) => d,
        (None, Some(b)) => b,
        (None, None) => &[],
    };
    let result = run(s, &op, data);
    let label = m
        .objects
        .get(op.object)
        .map(|e| e.label)
        .unwrap_or_default();
    let bytes_out = result.as_ref().map(&out_len).unwrap_or(0);
    audit::record(
        Record {
            op: if encrypt { "encrypt" } else { "decrypt" },
            slot: &s.slot.label,
            key: &label,
            mechanism: "CKM_AES_GCM",
            bytes_in: data.len(),
            bytes_out,
        },
        result,
    )
}

fn gcm_encrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Vec<u8>> {
    if data.len() > MAX_MULTIPART {
        return Err(Rv::DATA_LEN_RANGE);
    }
    s.slot
        .backend
        .gcm_encrypt(op.key, &op.params.iv, &op.params.aad, data)
}

fn gcm_decrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Plaintext> {
    if data.len() < GCM_TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    if data.len() > MAX_MULTIPART + GCM_TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    s.slot
        .backend
        .gcm_decrypt(op.key, &op.params.iv, &op.params.aad, data)
}

pub fn encrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, true, |op| {
        if op.buffered.is_some() {
            return Err(Rv::OPERATION_ACTIVE);
        }
        if data_len > MAX_MULTIPART {
            return Err(Rv::DATA_LEN_RANGE);
        }
        Ok(data_len + GCM_TAG_LEN)
    })
}

pub fn encrypt(session: u64, data: &[u8]) -> CkResult<Vec<u8>> {
    finish(session, true, Some(data), gcm_encrypt, Vec::len)
}

pub fn encrypt_update(session: u64, part: &[u8]) -> CkResult<Vec<u8>> {
    with_op(session, true, |op| op.buffer(part, Rv::DATA_LEN_RANGE))?;
    Ok(Vec::new())
}

pub fn encrypt_update_len(session: u64, _part_len: usize) -> CkResult<usize> {
    with_op(session, true, |_| Ok(0))
}

pub fn encrypt_final_len(session: u64) -> CkResult<usize> {
    with_op(session, true, |op| Ok(op.buffered_len() + GCM_TAG_LEN))
}

pub fn encrypt_final(session: u64) -> CkResult<Vec<u8>> {
    finish(session, true, None, gcm_encrypt, Vec::len)
}

pub fn decrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, false, |op| {
        if op.buffered.is_some() {
            return Err(Rv::OPERATION_ACTIVE);
        }
        data_len
            .checked_sub(GCM_TAG_LEN)
            .ok_or(Rv::ENCRYPTED_DATA_LEN_RANGE)
    })
}

pub fn decrypt(session: u64, data: &[u8]) -> CkResult<Plaintext> {
    finish(session, false, Some(data), gcm_decrypt, |p| p.len())
}

pub fn decrypt_update(session: u64, part: &[u8]) -> CkResult<Plaintext> {
    with_op(session, false, |op| {
        op.buffer(part, Rv::ENCRYPTED_DATA_LEN_RANGE)
    })?;
    Ok(no_plaintext())
}

pub fn decrypt_update_len(session: u64, _part_len: usize) -> CkResult<usize> {
    with_op(session, false, |_| Ok(0))
}

pub fn decrypt_final_len(session: u64) -> CkResult<usize> {
    with_op(session, false, |op| {
        op.buffered_len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or(Rv::ENCRYPTED_DATA_LEN_RANGE)
    })
}

pub fn decrypt_final(session: u64) -> CkResult<Plaintext> {
    finish(session, false, None, gcm_decrypt, |p| p.len())
}

pub fn generate_key(session: u64, mechanism: &Mechanism, template: &[Attribute]) -> CkResult<u64> {
    let m = module()?;
    let (sess, s, index) = m.session(session)?;
    s.slot.require_login()?;
    if !sess.lock().read_write {
        return Err(Rv::SESSION_READ_ONLY);
    }
    let req = match policy::generation_request(mechanism, template) {
        Ok(r) => r,
        Err(rv) => {
            log::warn!(
                "slot {}: C_GenerateKey refused ({rv}); template attributes: {}",
                s.slot.label,
                attribute_summary(template)
            );
            return refused(s, "C_GenerateKey", b"", rv);
        }
    };
    let id = match req.id {
        Some(id) if !id.is_empty() => id,
        _ => {
            // A stable identity for the key across HSM replicas and restarts.
            let mut id = vec![0u8; 16];
            s.slot.backend.generate_random(&mut id)?;
            id
        }
    };
    let label = req.label.unwrap_or_default();
    if !s.slot.admits_names(&id, &label) {
        return refused(s, "C_GenerateKey", &label, Rv::ATTRIBUTE_VALUE_INVALID);
    }
    let existing = s.slot.backend.list_secret_keys()?;
    if existing
        .iter()
        .any(|k| k.id == id || (!label.is_empty() && k.label == label))
    {
        // Two keys with one identity would make "which key?" ambiguous for every caller.
        return refused(s, "C_GenerateKey", &label, Rv::ATTRIBUTE_VALUE_INVALID);
    }
    let spec = NewKey {
        id,
        label: label.clone(),
        value_len: policy::KEY_LEN,
        encrypt: req.encrypt,
        decrypt: req.decrypt,
    };
    let result = (|| {
        let generated = s.slot.backend.generate_aes_key(&spec)?;
        let finished = (|| {
            let mut info = generated.clone();
            if req.start_date.is_some() || req.end_date.is_some() {
                let dates = backend::KeyChanges {
                    start_date: req.start_date.clone(),
                    end_date: req.end_date.clone(),
                    ..Default::default()
                };
                s.slot.backend.set_key_attributes(info.handle, &dates)?;
                info = s.slot.backend.key_info(info.handle)?;
            }
            if !s.slot.admits(&info) {
                log::error!(
                    "slot {}: backend {} generated a key that fails the never-export policy",
                    s.slot.label,
                    s.slot.backend.name()
                );
                return Err(Rv::GENERAL_ERROR);
            }
            Ok(info)
        })();
        match finished {
            Ok(info) => Ok(m.objects.handle_for(index, &info)),
            Err(rv) => {
                // C_GenerateKey failed, so no key may remain: a half-made key would hold the
                // label (and ID) the caller will retry with.
                if let Err(e) = s.slot.backend.destroy_key(generated.handle) {
                    log::error!(
                        "slot {}: cannot remove the key of a failed C_GenerateKey: {e}",
                        s.slot.label
                    );
                }
                Err(rv)
            }
        }
    })();
    let mut rec = lifecycle("generate", s, &label);
    rec.mechanism = "CKM_AES_KEY_GEN";
    audit::record(rec, result)
}

/// Largest `C_GenerateRandom` request served in one call.
const MAX_RANDOM: usize = 1 << 20;

pub fn generate_random(session: u64, len: usize) -> CkResult<Vec<u8>> {
    let m = module()?;
    let (_, s, _) = m.session(session)?;
    if len > MAX_RANDOM {
        return Err(Rv::ARGUMENTS_BAD);
    }
    let mut out = vec![0u8; len];
    s.slot.backend.generate_random(&mut out)?;
    Ok(out)
}

pub fn seed_random(session: u64, _seed: &[u8]) -> CkResult<()> {
    let m = module()?;
    m.session(session)?;
    // The HSM's RNG is not seeded by callers.
    Err(Rv(CKR_RANDOM_SEED_NOT_SUPPORTED))
}

pub fn wrap_key(session: u64, _mechanism: &Mechanism, wrapping_key: u64, key: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    m.key(s, index, wrapping_key, Rv(CKR_WRAPPING_KEY_HANDLE_INVALID))?;
    refused(s, "C_WrapKey", &e.label, Rv::KEY_UNEXTRACTABLE)
}

pub fn unwrap_key(
    session: u64,
    _mechanism: &Mechanism,
    unwrapping_key: u64,
    _template: &[Attribute],
) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(
        s,
        index,
        unwrapping_key,
        Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    )?;
    // Keys are generated inside the HSM; importing key material is never allowed.
    refused(s, "C_UnwrapKey", &e.label, Rv::KEY_FUNCTION_NOT_PERMITTED)
}

pub fn derive_key(
    session: u64,
    _mechanism: &Mechanism,
    base_key: u64,
    _template: &[Attribute],
) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(s, index, base_key, Rv::KEY_HANDLE_INVALID)?;
    refused(s, "C_DeriveKey", &e.label, Rv::KEY_FUNCTION_NOT_PERMITTED)
}

pub fn digest_key(session: u64, key: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, index) = m.session(session)?;
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    refused(s, "C_DigestKey", &e.label, Rv(CKR_KEY_INDIGESTIBLE))
}

pub fn get_operation_state(session: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, _) = m.session(session)?;
    refused(s, "C_GetOperationState", b"", Rv::STATE_UNSAVEABLE)
}

pub fn set_operation_state(session: u64) -> CkResult<()> {
    let m = module()?;
    let (_, s, _) = m.session(session)?;
    refused(s, "C_SetOperationState", b"", Rv::SAVED_STATE_INVALID)
}

pub fn not_supported(_function: &'static str) -> CkResult<()> {
    module()?;
    Err(Rv::FUNCTION_NOT_SUPPORTED)
}

/// Attribute types of a template, with the values of booleans and numbers (never of byte
/// strings), so a refused template can be diagnosed from the log.
fn attribute_summary(template: &[Attribute]) -> String {
    template
        .iter()
        .map(|a| match a.value.len() {
            1 => format!("{:#x}={}", a.kind, a.value[0]),
            8 => format!(
                "{:#x}={}",
                a.kind,
                u64::from_ne_bytes(a.value[..].try_into().unwrap_or([0; 8]))
            ),
            n => format!("{:#x}=<{n} bytes>", a.kind),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
