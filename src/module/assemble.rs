//! Opening the configured backends and slots at `C_Initialize` (including replica groups).

use super::*;

/// Open every backend and slot the config names. On any failure, shut down what was opened.
/// `no_os_threads`: the application forbade creating threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`),
/// which replica groups need (worker and probe threads), so they are refused then.
pub(super) fn build(config: &Config, no_os_threads: bool) -> CkResult<Module> {
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
                audit_name: crate::audit::names::intern(slot_cfg.label.as_bytes()),
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
pub(super) fn open_backend(
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
pub(super) fn opener(
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

pub(super) fn log_open_error(config: &Config, name: &str, e: &backend::OpenError) {
    log::error!(
        "{}: backend.{name}.{}: {} ({})",
        config.source,
        e.key,
        e.problem,
        e.rv
    );
}

/// TEST-ONLY (feature `fault-injection`): wrap backend `name` in the fault injector when the
/// environment variable `XKI_FAULT_CONTROL_<name>` names a control file (`ok`/`fail`/`hang`/
/// `delay MICROS`).
#[cfg(feature = "fault-injection")]
pub(super) fn fault_wrapped(name: &str, b: Arc<dyn Backend>) -> Arc<dyn Backend> {
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
pub(super) fn replica_group(
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
            inline: b.inline_calls,
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

/// The module's mechanisms that the backend really supports for 256-bit keys, with flags
/// set outright by the module (never OR-ed into anything).
pub(super) fn supported_mechanisms(
    backend: &dyn Backend,
) -> Vec<(CK_MECHANISM_TYPE, MechanismInfo)> {
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
                    flags: flags | policy::module_mechanism_flags(m),
                },
            ))
        })
        .collect()
}
