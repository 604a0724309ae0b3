//! The failover run (built only with the root crate's TEST-ONLY feature `fault-injection`):
//! threads do round trips on the group slot while the module's fault injector makes the
//! second member hang, then fail, then recover. Every call's latency and result is recorded.
//!
//! What it reports: the longest call a caller saw against the member's deadline
//! (`timeout_ms`; the group abandons a member that does not answer within it and retries the
//! call on the other, target: at most 50 ms beyond it), the failed calls (expected 0: one
//! member stays in service throughout), and how long after the member is switched back to
//! `ok` it is in service again (`XKI Status`) and seen serving calls (`in_flight` > 0).

use crate::group_setup::{MEMBERS, MEMBER_TIMEOUT_MS, PROBE_INTERVAL_MS};
use crate::status::Status;
use crate::targets::Target;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Phases: all members fine, member hangs, member fails, then until it serves again.
const BEFORE: Duration = Duration::from_millis(1000);
const HANG: Duration = Duration::from_millis(2000);
const FAIL: Duration = Duration::from_millis(1000);
/// Traffic kept up after the member serves again.
const AFTER: Duration = Duration::from_millis(500);
/// Give up waiting for recovery after this long.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
/// The target: the longest call at most this much beyond the deadline.
const STALL_TARGET: Duration = Duration::from_millis(50);
/// Index of the faulted member in the group: [`MEMBERS`]`[1]`, whose control file is the
/// bench's `fault-control`.
const FAULTY: u64 = 1;
/// Extra fail/ok cycles after the main scenario, each switching at a random point of the
/// probe's cycle, so the recovery time is not one phase-locked sample.
const CYCLES: usize = 4;

/// One recorded call (`Session::encrypt` or `Session::decrypt`: C_*Init, length query, call).
#[derive(Clone, Copy)]
struct Call {
    /// When it started, from the start of the run.
    start: Duration,
    latency: Duration,
    ok: bool,
}

/// What a worker thread saw.
fn worker(
    s: &Session,
    key: cryptoki::object::ObjectHandle,
    t: usize,
    t0: Instant,
    stop: &AtomicBool,
) -> Vec<Call> {
    let aad = crate::run::AAD;
    let plaintext = [0x5au8; 32];
    let mut calls = Vec::with_capacity(1 << 16);
    let mut n = (t as u64) << 48 | 1 << 40;
    let mut time = |ok_fn: &mut dyn FnMut() -> bool| {
        let begin = Instant::now();
        let ok = ok_fn();
        calls.push(Call {
            start: begin - t0,
            latency: begin.elapsed(),
            ok,
        });
        ok
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&n.to_be_bytes());
        let mut ct = Vec::new();
        let encrypted = time(&mut || {
            let Ok(params) = GcmParams::new(&mut iv, aad, 128.into()) else {
                return false;
            };
            match s.encrypt(&Mechanism::AesGcm(params), key, &plaintext) {
                Ok(c) => {
                    ct = c;
                    true
                }
                Err(_) => false,
            }
        });
        if !encrypted {
            continue;
        }
        let mut iv2 = iv;
        time(&mut || {
            let Ok(params) = GcmParams::new(&mut iv2, aad, 128.into()) else {
                return false;
            };
            matches!(s.decrypt(&Mechanism::AesGcm(params), key, &ct), Ok(pt) if pt == plaintext)
        });
    }
    calls
}

/// After a switch back to `ok`: time until the member is in service again (`XKI Status`
/// state 0) and until it is seen with a call in flight after that.
type Recovery = (Option<Duration>, Option<Duration>);

/// Phase boundaries, from the start of the run.
struct Marks {
    hang: Duration,
    fail: Duration,
    ok: Duration,
    /// Start of the extra fail/ok cycles (recovery timing only).
    cycles: Duration,
    end: Duration,
    /// Per switch back to `ok`: time until the member is in service again (`XKI Status`
    /// state 0) and until it is seen with a call in flight after that.
    recoveries: Vec<Recovery>,
}

/// A random duration in `[0, max)`: where in the probe's cycle a switch lands.
fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    max.mul_f64(u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0))
}

/// After the member was switched to `ok` (at `since`): wait until it is in service again
/// and then seen serving a call.
fn await_recovery(status: &Status, since: Instant) -> Result<Recovery, String> {
    let (mut up, mut serving) = (None, None);
    while since.elapsed() < RECOVERY_LIMIT && serving.is_none() {
        let (state, in_flight) = status.member(FAULTY)?;
        if state == 0 && up.is_none() {
            up = Some(since.elapsed());
        }
        if up.is_some() && in_flight > 0 {
            serving = Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((up, serving))
}

fn set(control: &Path, word: &str) -> Result<(), String> {
    // Write a new file and rename it over the old one: the injector never reads half a word.
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, word)
        .and_then(|()| std::fs::rename(&tmp, control))
        .map_err(|e| format!("fault control {}: {e}", control.display()))
}

/// Run the failover scenario on `group` (sessions on the group slot `slot`) with `threads`
/// threads; print the findings. Returns the encrypt + decrypt calls made (for the audit check).
pub fn run(
    group: &mut Target,
    module: &Path,
    slot: u64,
    control: &Path,
    threads: usize,
) -> Result<u64, String> {
    let threads = threads.clamp(1, group.sessions.len());
    let status = Status::open(module, slot)?;
    set(control, "ok")?;
    if status.member(FAULTY)?.0 != 0 {
        return Err(format!("{} is not in service before the run", MEMBERS[1]));
    }
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let key = group.key;
    let (per_thread, marks) = std::thread::scope(|scope| -> Result<_, String> {
        let workers: Vec<_> = group.sessions[..threads]
            .iter_mut()
            .enumerate()
            .map(|(t, s)| {
                let stop = &stop;
                // `&mut`: a Session may move to another thread but not be shared.
                scope.spawn(move || worker(s, key, t, t0, stop))
            })
            .collect();
        let phases = (|| -> Result<Marks, String> {
            std::thread::sleep(BEFORE);
            set(control, "hang")?;
            let hang = t0.elapsed();
            std::thread::sleep(HANG);
            let hung_state = status.member(FAULTY)?.0;
            set(control, "fail")?;
            let fail = t0.elapsed();
            if hung_state == 0 {
                return Err(format!(
                    "{} stayed in service while told to hang: is the module built with --features fault-injection?",
                    MEMBERS[1]
                ));
            }
            std::thread::sleep(FAIL + jitter(Duration::from_millis(PROBE_INTERVAL_MS)));
            set(control, "ok")?;
            let ok = t0.elapsed();
            let mut recoveries = vec![await_recovery(&status, Instant::now())?];
            std::thread::sleep(AFTER);
            let cycles = t0.elapsed();
            for _ in 0..CYCLES {
                set(control, "fail")?;
                // Traffic takes it out of service at once; wait for that, then a while.
                let begin = Instant::now();
                while status.member(FAULTY)?.0 == 0 && begin.elapsed() < RECOVERY_LIMIT {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(
                    Duration::from_millis(100) + jitter(Duration::from_millis(PROBE_INTERVAL_MS)),
                );
                set(control, "ok")?;
                recoveries.push(await_recovery(&status, Instant::now())?);
            }
            Ok(Marks {
                hang,
                fail,
                ok,
                cycles,
                end: t0.elapsed(),
                recoveries,
            })
        })();
        stop.store(true, Ordering::Relaxed);
        let per_thread: Vec<Vec<Call>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect();
        Ok((per_thread, phases?))
    })?;
    set(control, "ok")?;
    let calls: Vec<Call> = per_thread.into_iter().flatten().collect();
    report(&calls, &marks, threads);
    Ok(calls.len() as u64)
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn report(calls: &[Call], m: &Marks, threads: usize) {
    let deadline = Duration::from_millis(MEMBER_TIMEOUT_MS);
    println!();
    println!(
        "Failover on the group slot ({threads} threads of round trips; member {} switched by the TEST-ONLY fault injector; timeout_ms = {MEMBER_TIMEOUT_MS}, probe_interval_ms = {PROBE_INTERVAL_MS})",
        MEMBERS[1]
    );
    println!("call = Session::encrypt or Session::decrypt (C_*Init + length query + C_*), latency from the caller's side");
    let phases = [
        ("ok", Duration::ZERO, m.hang),
        ("hang", m.hang, m.fail),
        ("fail", m.fail, m.ok),
        ("ok again", m.ok, m.cycles),
        ("fail/ok x4", m.cycles, m.end + Duration::from_secs(3600)),
    ];
    println!(
        "{:>10} {:>11} | {:>8} {:>6} | {:>8} {:>20} | {:>18}",
        "phase", "from-to (s)", "calls", "failed", "p50", "p99.9 / max", "calls > deadline/2"
    );
    let mut worst = Duration::ZERO;
    let mut failed_total = 0;
    for (name, from, to) in phases {
        let mut lat: Vec<Duration> = calls
            .iter()
            .filter(|c| c.start >= from && c.start < to)
            .map(|c| c.latency)
            .collect();
        let failed = calls
            .iter()
            .filter(|c| c.start >= from && c.start < to && !c.ok)
            .count();
        failed_total += failed;
        lat.sort();
        let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
        let p999 = lat.get(lat.len() * 999 / 1000).copied().unwrap_or_default();
        let max = lat.last().copied().unwrap_or_default();
        worst = worst.max(max);
        let slow = lat.iter().filter(|l| **l > deadline / 2).count();
        println!(
            "{name:>10} {:>11} | {:>8} {failed:>6} | {:>8} {:>20} | {slow:>18}",
            format!(
                "{:.2}-{:.2}",
                from.as_secs_f64(),
                to.min(m.end).as_secs_f64()
            ),
            lat.len(),
            ms(p50),
            format!("{} / {}", ms(p999), ms(max)),
        );
    }
    let beyond = worst.saturating_sub(deadline);
    println!(
        "longest call: {} = deadline {} + {} (target: at most +{} beyond the deadline: {})",
        ms(worst),
        ms(deadline),
        if worst < deadline {
            "0 (below it)".to_string()
        } else {
            ms(beyond)
        },
        ms(STALL_TARGET),
        if beyond <= STALL_TARGET {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!(
        "failed calls: {failed_total} of {} (expected 0 while one member stays in service): {}",
        calls.len(),
        if failed_total == 0 { "PASS" } else { "FAIL" }
    );
    let fmt = |d: Option<Duration>| d.map_or("never".to_string(), ms);
    let list = |f: fn(&Recovery) -> Option<Duration>| {
        m.recoveries
            .iter()
            .map(|r| fmt(f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "recovery after switching {} back to ok (main run first, then {CYCLES} fail/ok cycles switched at random points of the probe cycle):",
        MEMBERS[1]
    );
    println!("  back in service (XKI Status state 0): {}", list(|r| r.0));
    println!("  first seen serving a call:            {}", list(|r| r.1));
    let worst = m
        .recoveries
        .iter()
        .map(|r| r.1.unwrap_or(RECOVERY_LIMIT))
        .max()
        .unwrap_or_default();
    println!(
        "  expected <= probe_interval_ms ({PROBE_INTERVAL_MS} ms) + injector re-read (<= 10 ms) + one probe (listing + round trip): worst {} {}",
        ms(worst),
        if worst <= Duration::from_millis(PROBE_INTERVAL_MS + 50) { "(within)" } else { "(LONGER)" }
    );
}
