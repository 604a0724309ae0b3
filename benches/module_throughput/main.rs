//! `cargo bench --bench module_throughput`: AES-GCM encrypt+decrypt round trips per second
//! through `libxki_pkcs11.so` over SoftHSM2, through SoftHSM2 directly (same token, same key),
//! and through the module's embedded token, for 32 B and 4 KiB payloads with 1 and 2 threads.
//!
//! The three paths are measured in the same process in short interleaved rounds (the order
//! alternates every cell and round), and the table reports medians over rounds, because the
//! machine is shared and noisy. See `benches/README.md` for the knobs and how to read it.

#[cfg(feature = "fault-injection")]
mod failover;
mod group_setup;
mod report;
mod run;
mod setup;
mod status;
mod targets;

use std::time::{Duration, Instant};

/// What to measure, from the environment.
pub struct Settings {
    /// Total measuring time (all rounds, cells and targets), `XKI_BENCH_SECS`.
    pub secs: f64,
    /// Interleaved rounds, `XKI_BENCH_ROUNDS`.
    pub rounds: usize,
    /// Plaintext sizes, `XKI_BENCH_PAYLOADS` (comma-separated bytes).
    pub payloads: Vec<usize>,
    /// Thread counts, `XKI_BENCH_THREADS` (comma-separated).
    pub threads: Vec<usize>,
    /// Targets by index (0 module, 1 direct, 2 embedded, 3 one-member slot, 4 group slot,
    /// 5/6 find-per-operation through the module / directly, 7 module message API, 8 direct
    /// with RNG IVs), `XKI_BENCH_TARGETS`.
    pub targets: Vec<usize>,
    /// Where audit records go, `XKI_BENCH_AUDIT`.
    pub audit: setup::AuditSink,
    /// Threads of the failover run (`fault-injection` builds), `XKI_BENCH_FAILOVER_THREADS`.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub failover_threads: usize,
}

const TARGET_NAMES: [&str; 9] = [
    "module",
    "direct",
    "embedded",
    "single",
    "group",
    "findmodule",
    "finddirect",
    "message",
    "direct-rng",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn env_list<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Result<Vec<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .map_err(|_| format!("{name}: {x:?} is not a valid value"))
            })
            .collect(),
        _ => Ok(default.to_vec()),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let targets: Vec<String> = env_list("XKI_BENCH_TARGETS", &TARGET_NAMES.map(String::from))?;
        let targets = targets
            .iter()
            .map(|t| {
                TARGET_NAMES.iter().position(|n| n == t).ok_or(format!(
                    "XKI_BENCH_TARGETS: {t:?}: use module, direct, embedded, single, group, findmodule, finddirect, message, direct-rng"
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = Settings {
            secs: env_or("XKI_BENCH_SECS", 60.0)?,
            rounds: env_or("XKI_BENCH_ROUNDS", 12)?,
            payloads: env_list("XKI_BENCH_PAYLOADS", &[32, 4096])?,
            threads: env_list("XKI_BENCH_THREADS", &[1, 2])?,
            targets,
            audit: setup::AuditSink::from_env()?,
            // 2-4 threads: enough that several calls meet the hung member at once.
            failover_threads: env_or("XKI_BENCH_FAILOVER_THREADS", 3)?,
        };
        if s.secs <= 0.0 || s.rounds == 0 || s.targets.is_empty() {
            return Err(
                "XKI_BENCH_SECS, XKI_BENCH_ROUNDS and XKI_BENCH_TARGETS must be positive/non-empty"
                    .into(),
            );
        }
        if s.threads.contains(&0) {
            return Err("XKI_BENCH_THREADS: thread counts start at 1".into());
        }
        Ok(s)
    }

    /// Time for one target in one cell of one round.
    fn slice(&self) -> Duration {
        let n = self.rounds * self.payloads.len() * self.threads.len() * self.targets.len();
        Duration::from_secs_f64(self.secs / n as f64)
    }
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("module_throughput: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let module_path = setup::locate_module()?;
    let fixture = setup::prepare(settings.audit)?;
    let load_before = report::machine_load();
    let started = Instant::now();

    let ctx = targets::load(&module_path)?;
    let max_threads = settings.threads.iter().copied().max().unwrap_or(1);
    let (m, d, e) = targets::open(&ctx, max_threads)?;
    let group_sessions = max_threads.max(settings.failover_threads);
    let (single, group, group_slot) = targets::open_group(&ctx, group_sessions)?;
    let (find_m, find_d) = targets::open_find(&ctx, max_threads, [m.key, d.key])?;
    let (msg, direct_rng) = targets::open_message(&ctx, max_threads)?;
    let mut all = vec![m, d, e, single, group, find_m, find_d, msg, direct_rng];

    let cells: Vec<(usize, usize)> = settings
        .payloads
        .iter()
        .flat_map(|&p| settings.threads.iter().map(move |&t| (p, t)))
        .collect();
    let slice = settings.slice();
    let warm = slice.min(Duration::from_millis(200));
    // samples[cell][target] = one sample per round.
    let mut samples = vec![vec![Vec::new(); all.len()]; cells.len()];

    // Round trips through the module (both its slots), to check the audit trail against.
    let mut module_ops = 0u64;
    // Round trips (two records each): both module slots, the group rows, the message API.
    let through_module = |t: usize| matches!(t, 0 | 2 | 3 | 4 | 7);
    // Single encrypts through the module (the find rows), one audit record each.
    let mut single_calls = 0u64;
    eprint!("warm-up");
    for &(payload, threads) in &cells {
        for &t in &settings.targets {
            let s = run::measure(&mut all[t], threads, payload, warm)?;
            module_ops += if through_module(t) { s.ops } else { 0 };
            single_calls += if t == 5 { s.ops } else { 0 };
        }
    }
    eprint!(
        ", {} rounds of {:.2} s per cell and target:",
        settings.rounds,
        slice.as_secs_f64()
    );
    for round in 0..settings.rounds {
        for (c, &(payload, threads)) in cells.iter().enumerate() {
            // Alternate the order so that no path always runs right after another.
            let mut order = settings.targets.clone();
            if (round + c) % 2 == 1 {
                order.reverse();
            }
            for t in order {
                let s = run::measure(&mut all[t], threads, payload, slice)?;
                module_ops += if through_module(t) { s.ops } else { 0 };
                single_calls += if t == 5 { s.ops } else { 0 };
                samples[c][t].push(s);
            }
        }
        eprint!(" {}", round + 1);
    }
    eprintln!();
    let load_after = report::machine_load();
    let measured = started.elapsed();

    // Are calls spread over both members? Sample their in-flight counts under 2 threads.
    // Only when the group is measured at all (`XKI_BENCH_TARGETS=module` for profiling runs no
    // group calls).
    let spread_threads = max_threads.min(2);
    let spread = if settings.targets.contains(&4) {
        let status = status::Status::open(&module_path, group_slot)?;
        let group = &mut all[4];
        let mut result = Ok(run::Sample::default());
        let busy = || result = run::measure(group, spread_threads, 32, Duration::from_millis(500));
        let spread = status::spread(&status, busy)?;
        module_ops += result?.ops;
        Some(spread)
    } else {
        None
    };

    report::print(&report::Inputs {
        settings: &settings,
        module_path: &module_path,
        cells: &cells,
        samples: &samples,
        names: &all.iter().map(|t| t.name).collect::<Vec<_>>(),
        load_before: &load_before,
        load_after: &load_after,
        elapsed: measured,
    });
    match spread {
        Some(spread) => println!(
            "spreading: {spread_threads} threads on the group for 0.5 s, 32 B: a member had a call in flight in {:.0}% ({}) / {:.0}% ({}) of samples taken every 100 µs",
            spread[0] * 100.0,
            group_setup::MEMBERS[0],
            spread[1] * 100.0,
            group_setup::MEMBERS[1]
        ),
        None => println!("spreading: not measured (the group is not among XKI_BENCH_TARGETS)"),
    }
    // Encrypt and decrypt calls through the module outside the measured rounds.
    #[cfg(feature = "fault-injection")]
    let extra_calls = failover::run(
        &mut all[4],
        &module_path,
        group_slot,
        &fixture.fault_control,
        settings.failover_threads,
    )?;
    #[cfg(not(feature = "fault-injection"))]
    let extra_calls = {
        let _ = group_slot;
        println!();
        println!("failover run: not built; it needs the TEST-ONLY fault injector: cargo bench --features fault-injection --bench module_throughput");
        0
    };
    // C_Finalize first: it writes out the audit records still buffered (`audit_flush_ms`).
    targets::close(ctx, all);
    if let Some(path) = &fixture.audit_file {
        report::audit_check(path, module_ops, extra_calls + single_calls);
    }
    Ok(())
}
