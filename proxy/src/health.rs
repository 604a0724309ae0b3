//! Deep health: a real encrypt + decrypt on a dedicated canary key (never a customer key),
//! run in the background every `health_interval_ms` (<= 30 s); requests read the cached
//! result, which is treated as UNAVAILABLE once older than 60 s.
//!
//! `ekmFleetDetails`: when the module offers the "XKI Status" vendor interface (ours does),
//! one entry per token ("member") behind the proxy's slot, `id` = the member's backend name;
//! otherwise (SoftHSM2 or a vendor library loaded directly) one entry for the token.
//!
//! **Combination rule.** The canary check is the proxy's own end-to-end verdict; a member's
//! reported status is the *worse* of its own state (from the module) and the canary verdict:
//! - canary ACTIVE: each member as the module reports it;
//! - canary DEGRADED (slow, or lost to overload): no member better than DEGRADED;
//! - canary UNAVAILABLE (failed, or stale): every member UNAVAILABLE, since a member the module
//!   still calls healthy is of no use when requests through the slot fail (this also keeps the
//!   "disable the canary to drain a proxy" switch working on replica groups).
//!
//! So the list is never more optimistic than the check, and a member the module has taken out
//! of service is never reported ACTIVE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::api::{EkmFleetMember, HealthResponse};
use crate::hsm::{gcm_decrypt, Hsm, HsmError, Member, MemberState};

/// Results older than this count as UNAVAILABLE.
const MAX_AGE: Duration = Duration::from_secs(60);
/// A check slower than this (or one that could not get a session in time) is DEGRADED.
const SLOW: Duration = Duration::from_millis(100);
/// Deadline for one check.
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// While the HSM side is UNAVAILABLE, checks run at least this often, so readiness returns
/// soon after the HSM does (and our module's recovery is driven even with no traffic).
const DOWN_RECHECK: Duration = Duration::from_secs(1);

/// Outcome of one deep check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Did the round trip succeed?
    pub ok: bool,
    /// Failed only because the pool was saturated or slow (overload, not an HSM fault).
    pub overloaded: bool,
    /// When it finished.
    pub at: Instant,
    /// How long it took.
    pub latency: Duration,
    /// Failure reason.
    pub error: Option<String>,
}

impl CheckResult {
    /// ACTIVE, DEGRADED or UNAVAILABLE.
    pub fn status(&self) -> &'static str {
        if self.at.elapsed() > MAX_AGE || (!self.ok && !self.overloaded) {
            "UNAVAILABLE"
        } else if !self.ok || self.latency > SLOW {
            "DEGRADED"
        } else {
            "ACTIVE"
        }
    }
}

/// The cached health of the backend(s).
pub struct Health {
    hsm: Arc<Hsm>,
    fleet_size: u32,
    last: Mutex<Option<CheckResult>>,
    /// Member states at the last check, to log transitions once.
    members_seen: Mutex<Vec<(String, MemberState)>>,
    /// The check interval; a canary is created at most once per interval.
    interval: Mutex<Duration>,
    /// When this process last created a canary key.
    last_created: Mutex<Option<Instant>>,
}

/// One canary round trip on a session. `KeyNotFound` only when the token answered that no
/// canary key exists (an unreachable token is another error).
fn round_trip(hsm: &Hsm, s: &cryptoki::session::Session) -> Result<(), HsmError> {
    let (h, st) = hsm.find_canary(s)?.ok_or(HsmError::KeyNotFound)?;
    if !st.encrypt || !st.decrypt {
        return Err(HsmError::Other("canary key is disabled".into()));
    }
    let mut probe = [0u8; 32];
    s.generate_random_slice(&mut probe)
        .map_err(|e| HsmError::pkcs11("C_GenerateRandom", e))?;
    let aad = b"xki-proxy health canary";
    let out = hsm.encrypt(s, h, aad, &probe)?;
    let back = gcm_decrypt(s, h, &out.iv, aad, &out.ciphertext, &out.tag)?;
    if back != probe {
        return Err(HsmError::Other(
            "canary round trip returned different bytes".into(),
        ));
    }
    Ok(())
}

/// One canary round trip on a session, creating the canary key first if the token answered
/// that it is missing (the `health` command).
pub fn canary_round_trip(hsm: &Hsm, s: &cryptoki::session::Session) -> Result<(), HsmError> {
    match round_trip(hsm, s) {
        Err(HsmError::KeyNotFound) => {
            hsm.create_canary(s)?;
            round_trip(hsm, s)
        }
        r => r,
    }
}

impl Health {
    /// New, with no result yet (reports UNAVAILABLE until the first check).
    pub fn new(hsm: Arc<Hsm>, fleet_size: u32) -> Arc<Health> {
        Arc::new(Health {
            hsm,
            fleet_size,
            last: Mutex::new(None),
            members_seen: Mutex::new(Vec::new()),
            interval: Mutex::new(Duration::from_secs(10)),
            last_created: Mutex::new(None),
        })
    }

    /// Run one check through the pool and cache the result.
    pub async fn check_now(&self) -> CheckResult {
        let deadline = || Instant::now() + CHECK_DEADLINE;
        let mut start = Instant::now();
        let mut r = self.hsm.run(start + CHECK_DEADLINE, round_trip).await;
        if let Err(HsmError::KeyNotFound) = r {
            // The token answered that the canary is missing: create it, at most once per
            // interval, and time only the round trip after (a first check that generated the
            // key would otherwise read DEGRADED).
            let interval = *self.interval.lock();
            let may_create = self
                .last_created
                .lock()
                .is_none_or(|at| at.elapsed() >= interval);
            r = if !may_create {
                Err(HsmError::Other(
                    "the canary key is missing, and this proxy created one less than a check interval ago"
                        .into(),
                ))
            } else {
                match self
                    .hsm
                    .run(deadline(), |hsm, s| hsm.create_canary(s))
                    .await
                {
                    Err(e) => Err(e),
                    Ok(created) => {
                        if created {
                            *self.last_created.lock() = Some(Instant::now());
                        }
                        start = Instant::now();
                        self.hsm.run(start + CHECK_DEADLINE, round_trip).await
                    }
                }
            };
        }
        // Still missing right after creating it: name it (not "key not found").
        if let Err(HsmError::KeyNotFound) = r {
            r = Err(HsmError::Other("the canary key cannot be found".into()));
        }
        let res = CheckResult {
            ok: r.is_ok(),
            overloaded: matches!(r, Err(HsmError::Busy | HsmError::Timeout)),
            at: Instant::now(),
            latency: start.elapsed(),
            error: r.err().map(|e| e.to_string()),
        };
        let prev = self.last.lock().replace(res.clone());
        let changed = prev.map(|p| p.ok) != Some(res.ok);
        if changed {
            match &res.error {
                None => tracing::info!(backend = %self.hsm.token.label, "backend health: ACTIVE"),
                Some(e) => {
                    tracing::warn!(backend = %self.hsm.token.label, error = %e, "backend health: UNAVAILABLE")
                }
            }
        }
        self.log_member_changes();
        res
    }

    /// Log each member whose combined state changed since the previous check.
    fn log_member_changes(&self) {
        let now: Vec<(Member, MemberState)> = self.members().unwrap_or_default();
        let mut seen = self.members_seen.lock();
        for (m, st) in &now {
            let before = seen.iter().find(|(n, _)| *n == m.name).map(|(_, s)| *s);
            if before.is_some_and(|b| b != *st) {
                if *st == MemberState::Active {
                    tracing::info!(member = %m.name, "member health: ACTIVE");
                } else {
                    tracing::warn!(member = %m.name, state = st.as_str(), error = %m.last_error, "member health changed");
                }
            }
        }
        *seen = now.into_iter().map(|(m, st)| (m.name, st)).collect();
    }

    /// Check every `interval` (every second while UNAVAILABLE) until the runtime stops.
    pub fn spawn(self: &Arc<Self>, interval: Duration) {
        *self.interval.lock() = interval;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = if me.status() == "UNAVAILABLE" {
                    interval.min(DOWN_RECHECK)
                } else {
                    interval
                };
                tokio::time::sleep(wait).await;
                me.check_now().await;
            }
        });
    }

    /// Readiness for a load balancer (`GET /ready`): `Err(why)` while the HSM side cannot
    /// serve: before the first check, when the last check was UNAVAILABLE (failed for another
    /// reason than overload, or older than 60 s), or when the module reports every token
    /// behind the slot out of service. Reads cached state only (no HSM call).
    pub fn ready(&self) -> Result<(), String> {
        match self.last.lock().as_ref() {
            None => return Err("no health check has finished yet".into()),
            Some(r) if r.status() == "UNAVAILABLE" => {
                return Err(r
                    .error
                    .clone()
                    .unwrap_or_else(|| "the last health check is too old".into()))
            }
            Some(_) => {}
        }
        if let Some(members) = self.hsm.members() {
            if !members.is_empty() && members.iter().all(|m| m.state == MemberState::Unavailable) {
                return Err("every HSM behind the slot is out of service".into());
            }
        }
        Ok(())
    }

    /// Status of the one backend (for metrics).
    pub fn status(&self) -> &'static str {
        self.last
            .lock()
            .as_ref()
            .map_or("UNAVAILABLE", CheckResult::status)
    }

    /// The members of the slot with their combined status (see the module docs), or `None`
    /// when the module has no status interface.
    pub fn members(&self) -> Option<Vec<(Member, MemberState)>> {
        let canary = MemberState::parse(self.status());
        let members = self.hsm.members()?;
        Some(
            members
                .into_iter()
                .map(|m| {
                    let st = m.state.max(canary);
                    (m, st)
                })
                .collect(),
        )
    }

    /// Backend id used in reports.
    pub fn backend_id(&self) -> String {
        let t = &self.hsm.token;
        if t.serial.is_empty() {
            t.label.clone()
        } else {
            format!("{}/{}", t.label, t.serial)
        }
    }

    /// The GetHealthStatus response body.
    pub fn report(&self) -> HealthResponse {
        let t = &self.hsm.token;
        let ekm_fleet_details = match self.members() {
            Some(ms) if !ms.is_empty() => ms
                .into_iter()
                // The API allows at most 10 entries.
                .take(10)
                .map(|(m, st)| EkmFleetMember {
                    id: m.name,
                    model: t.model.clone(),
                    health_status: st.as_str(),
                })
                .collect(),
            _ => vec![EkmFleetMember {
                id: self.backend_id(),
                model: t.model.clone(),
                health_status: self.status(),
            }],
        };
        HealthResponse {
            xks_proxy_fleet_size: self.fleet_size,
            xks_proxy_vendor: "xki-bridge",
            xks_proxy_model: format!("xki-proxy {}", env!("CARGO_PKG_VERSION")),
            ekm_vendor: t.manufacturer.clone(),
            ekm_fleet_details,
        }
    }
}
