//! Thread and session counts chosen at start-up from what the proxy can see, so that the
//! defaults serve well without hand tuning; explicit `async_workers` / `[hsm] sessions` in the
//! config are kept as overrides.
//!
//! What decides is where an HSM call spends its time, measured once before serving: a short
//! probe of small `C_GenerateRandom` calls through the loaded module. A call answered in under
//! 50 µs (median, which a busy machine's preemptions barely move) cannot have crossed a network
//! to an HSM appliance; a slower one whose time was mostly this process's CPU is an in-process
//! token that is just slow; anything else waits outside the process.
//! - **In-process token** (SoftHSM2, the embedded token, kryoptic, a replica group of them):
//!   a call is CPU on this box's cores. More HSM threads than CPUs only adds preemption, and
//!   every preempted call delays the requests queued behind it (at c=64 on 2 CPUs, 8 sessions
//!   gave p99 13-14 ms where 1 gave 6-7 ms), so the CPUs are split between the HSM calls and
//!   the HTTP side (half each, at least one).
//! - **Network HSM** (Luna, nShield, CloudHSM over the network): a call mostly waits, so many
//!   calls must overlap: 8 sessions (or 2 per CPU, if more) and one async worker per CPU.

use std::time::{Duration, Instant};

/// Where a probed HSM call spends its time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Calls timed.
    pub calls: u32,
    /// Wall time of all calls.
    pub wall: Duration,
    /// Process CPU time (all threads: the module's own workers count too) over the calls.
    pub cpu: Duration,
    /// The median wall time of one call.
    pub median: Duration,
}

/// Below this median a call cannot have been a network round trip to an HSM appliance.
const IN_PROCESS_MEDIAN: Duration = Duration::from_micros(50);

impl Probe {
    /// Time up to `calls` runs of `call`, CPU against wall, stopping early once `budget` has
    /// passed (a slow network HSM must not delay start-up by seconds). Runs on the current
    /// thread; the caller makes sure nothing else of the process is busy (start-up).
    pub fn measure(
        calls: u32,
        budget: Duration,
        mut call: impl FnMut() -> Result<(), String>,
    ) -> Result<Probe, String> {
        let cpu0 = process_cpu();
        let t0 = Instant::now();
        let mut times = Vec::with_capacity(calls as usize);
        while times.len() < calls as usize && (times.is_empty() || t0.elapsed() < budget) {
            let t = Instant::now();
            call()?;
            times.push(t.elapsed());
        }
        let wall = t0.elapsed();
        let cpu = process_cpu().saturating_sub(cpu0);
        times.sort_unstable();
        Ok(Probe {
            calls: times.len() as u32,
            wall,
            cpu,
            median: times.get(times.len() / 2).copied().unwrap_or_default(),
        })
    }

    /// The wall time of one call, on average.
    pub fn per_call(&self) -> Duration {
        self.wall / self.calls.max(1)
    }

    /// CPU time as a share of wall time (0.0 when nothing was measured).
    pub fn cpu_share(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Whether the HSM's work runs on this box's CPUs: the median call was too fast for a
    /// network round trip, or at least half of the wall time was CPU of this process. A
    /// doubtful probe errs towards "network", which picks the settings that were the defaults
    /// before tuning existed.
    pub fn in_process(&self) -> bool {
        self.calls > 0 && (self.median < IN_PROCESS_MEDIAN || self.cpu_share() >= 0.5)
    }
}

/// CPU time used by this process so far (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_PROCESS_CPUTIME_ID is always
    // available on Linux. A failure leaves it zero, which only makes the probe read "network".
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The counts to run with, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// HSM sessions = HSM worker threads = concurrent HSM calls.
    pub sessions: usize,
    /// Async worker threads (HTTP, TLS, SigV4, JSON).
    pub async_workers: usize,
    /// One line for the log: what was measured and which setting came from where.
    pub reason: String,
}

/// Choose the counts. `sessions` / `async_workers`: the config's explicit values (`None` /
/// `0` = choose); `probe`: `None` when both are explicit (nothing was measured).
pub fn choose(
    cpus: usize,
    sessions: Option<usize>,
    async_workers: usize,
    probe: Option<Probe>,
) -> Tuning {
    let cpus = cpus.max(1);
    let (auto_sessions, auto_workers, measured) = match probe {
        Some(p) if p.in_process() => {
            let s = (cpus / 2).max(1);
            let w = (cpus - s).max(1);
            let why = format!(
                "HSM calls run in this process (median {} µs per call, CPU {:.0} % of wall)",
                p.median.as_micros(),
                p.cpu_share() * 100.0
            );
            (s, w, why)
        }
        Some(p) => {
            let why = format!(
                "HSM calls wait outside this process (median {} µs per call, CPU {:.0} % of \
                 wall)",
                p.median.as_micros(),
                p.cpu_share() * 100.0
            );
            ((2 * cpus).max(8), cpus, why)
        }
        None => ((2 * cpus).max(8), cpus, "nothing measured".to_string()),
    };
    let (sessions, s_from) = match sessions {
        Some(n) => (n, "set in [hsm]"),
        None => (auto_sessions, "chosen"),
    };
    let (async_workers, w_from) = match async_workers {
        0 => (auto_workers, "chosen"),
        n => (n, "set in the config"),
    };
    Tuning {
        sessions,
        async_workers,
        reason: format!(
            "{measured}; {cpus} CPUs -> sessions = {sessions} ({s_from}), async_workers = \
             {async_workers} ({w_from}); set [hsm] sessions / async_workers to override"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 calls of `wall_us / 100` each.
    fn probe(cpu_us: u64, wall_us: u64) -> Option<Probe> {
        Some(Probe {
            calls: 100,
            wall: Duration::from_micros(wall_us),
            cpu: Duration::from_micros(cpu_us),
            median: Duration::from_micros(wall_us / 100),
        })
    }

    #[test]
    fn in_process_tokens_split_the_cpus() {
        let t = choose(2, None, 0, probe(950, 1000));
        assert_eq!((t.sessions, t.async_workers), (1, 1), "{}", t.reason);
        assert!(t.reason.contains("in this process"), "{}", t.reason);
        // Fast calls on a busy machine (little CPU share): still in-process.
        let t = choose(2, None, 0, probe(300, 1000));
        assert_eq!((t.sessions, t.async_workers), (1, 1), "{}", t.reason);
        // Slow calls, but CPU: an in-process token that is slow.
        let t = choose(2, None, 0, probe(90_000, 100_000));
        assert_eq!((t.sessions, t.async_workers), (1, 1), "{}", t.reason);
        let t = choose(8, None, 0, probe(900, 1000));
        assert_eq!((t.sessions, t.async_workers), (4, 4));
        let t = choose(1, None, 0, probe(900, 1000));
        assert_eq!((t.sessions, t.async_workers), (1, 1));
        let t = choose(3, None, 0, probe(900, 1000));
        assert_eq!((t.sessions, t.async_workers), (1, 2));
    }

    #[test]
    fn network_hsms_get_many_sessions() {
        let t = choose(2, None, 0, probe(40, 100_000));
        assert_eq!((t.sessions, t.async_workers), (8, 2), "{}", t.reason);
        assert!(t.reason.contains("outside this process"), "{}", t.reason);
        let t = choose(16, None, 0, probe(40, 100_000));
        assert_eq!((t.sessions, t.async_workers), (32, 16));
    }

    #[test]
    fn explicit_settings_override_the_choice() {
        let t = choose(2, Some(3), 0, probe(950, 1000));
        assert_eq!((t.sessions, t.async_workers), (3, 1));
        assert!(
            t.reason.contains("sessions = 3 (set in [hsm])"),
            "{}",
            t.reason
        );
        let t = choose(2, None, 5, probe(950, 1000));
        assert_eq!((t.sessions, t.async_workers), (1, 5));
        assert!(t.reason.contains("async_workers = 5 (set in the config)"));
        let t = choose(2, Some(4), 2, None);
        assert_eq!((t.sessions, t.async_workers), (4, 2));
    }

    #[test]
    fn a_probe_that_measured_nothing_reads_network() {
        let p = Probe {
            calls: 0,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            median: Duration::ZERO,
        };
        assert!(!p.in_process());
        assert_eq!(p.per_call(), Duration::ZERO);
    }

    #[test]
    fn the_probe_measures_cpu_bound_calls_as_in_process() {
        // A call of a few µs of CPU, like an in-process token's C_GenerateRandom.
        let p = Probe::measure(200, Duration::from_secs(5), || {
            let mut x = 0u64;
            for i in 0..200u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            Ok(())
        })
        .unwrap();
        assert!(p.in_process(), "{p:?}");
        assert_eq!(p.calls, 200);
        // Calls that sleep: not in-process. The CPU share is the whole process's, and other
        // unit tests run beside this one in it: they can only add CPU, so some try of up to
        // 30 (<= ~1 s) runs once they are done or quiet enough.
        let sleeping = || {
            Probe::measure(50, Duration::from_millis(30), || {
                std::thread::sleep(Duration::from_millis(5));
                Ok(())
            })
            .unwrap()
        };
        let mut tries = vec![sleeping()];
        while tries.last().unwrap().in_process() && tries.len() < 30 {
            tries.push(sleeping());
        }
        assert!(!tries.last().unwrap().in_process(), "{tries:?}");
        assert!(
            tries.iter().all(|p| p.calls < 50),
            "the budget stops the probe early: {tries:?}"
        );
    }
}
