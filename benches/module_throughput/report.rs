//! The compact table, the pass/fail lines for the targets, and the context needed to judge
//! the numbers (machine load, settings, audit trail check).

use crate::run::Sample;
use crate::Settings;
use std::path::Path;
use std::time::Duration;

/// Everything the table is made from.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub module_path: &'a Path,
    /// (payload bytes, threads) per cell.
    pub cells: &'a [(usize, usize)],
    /// samples[cell][target]: one per round (empty when the target was not measured).
    pub samples: &'a [Vec<Vec<Sample>>],
    pub names: &'a [&'static str],
    pub load_before: &'a str,
    pub load_after: &'a str,
    pub elapsed: Duration,
}

/// Module slice must reach this share of direct SoftHSM2 throughput.
const MODULE_TARGET: f64 = 0.95;
/// Embedded must reach this multiple of direct SoftHSM2 throughput at small payloads.
const EMBEDDED_TARGET: f64 = 10.0;
/// "Small payload" for the embedded target.
const SMALL: usize = 64;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median and spread of one target's rates; spread is half the min-max range, relative.
fn rate(samples: &[Sample]) -> Option<(f64, f64)> {
    let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
    let med = median(rates.clone())?;
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    Some((med, (hi - lo) / 2.0 / med))
}

/// Median, min and max of the per-round ratios a/b of wall-clock rates (rounds measure a
/// and b back to back, so their ratio is steadier than the ratio of medians), and the median
/// per-round ratio of CPU cost per round trip, b/a (a throughput ratio if CPU-bound).
fn ratio(a: &[Sample], b: &[Sample]) -> Option<(f64, f64, f64, f64)> {
    ratio_with(a, b, Sample::cpu_us_per_op)
}

fn ratio_with(a: &[Sample], b: &[Sample], cpu: fn(&Sample) -> f64) -> Option<(f64, f64, f64, f64)> {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.rate / b.rate).collect();
    let med = median(r.clone())?;
    let lo = r.iter().copied().fold(f64::MAX, f64::min);
    let hi = r.iter().copied().fold(f64::MIN, f64::max);
    let cpu = a.iter().zip(b).map(|(a, b)| cpu(b) / cpu(a)).collect();
    Some((med, lo, hi, median(cpu)?))
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn rate_cell(samples: &[Sample]) -> String {
    rate_cell_with(samples, Sample::cpu_us_per_op)
}

/// Like [`rate_cell`] with process CPU per round trip (includes the module's own threads).
fn rate_cell_proc(samples: &[Sample]) -> String {
    rate_cell_with(samples, Sample::proc_cpu_us_per_op)
}

fn rate_cell_with(samples: &[Sample], cpu: fn(&Sample) -> f64) -> String {
    let cpu = median(samples.iter().map(cpu).collect());
    match (rate(samples), cpu) {
        (Some((m, spread)), Some(cpu)) => {
            format!("{} ±{:.0}% {:.1}µs", thousands(m), spread * 100.0, cpu)
        }
        _ => "-".into(),
    }
}

/// Print the table and the target verdicts to stdout.
pub fn print(i: &Inputs<'_>) {
    let s = i.settings;
    println!();
    println!("AES-256-GCM round trips per second (Session::encrypt + Session::decrypt, 16 B AAD, 12 B IV)");
    println!("module: {}", i.module_path.display());
    println!(
        "audit: {:?}; {} rounds x {:.2} s per cell and path, interleaved; {:.0} s in all",
        s.audit,
        s.rounds,
        s.slice().as_secs_f64(),
        i.elapsed.as_secs_f64()
    );
    println!("load before: {}", i.load_before);
    println!("load after:  {}", i.load_after);
    println!("ops/s = round trips/s, median over rounds, ±half the min-max range, then CPU µs per round trip");
    println!("ratios = median of per-round wall-clock ratios [min-max], then the same from CPU µs per round trip");
    println!();
    println!(
        "{:>7} {:>3} | {:>25} | {:>25} | {:>30} | {:>25} | {:>20}",
        "payload", "thr", i.names[0], i.names[1], "module/direct", i.names[2], "emb/direct"
    );
    println!("{}", "-".repeat(152));
    let mut worst_module: Option<(f64, f64, String)> = None;
    let mut worst_embedded: Option<(f64, f64, String)> = None;
    for (c, &(payload, threads)) in i.cells.iter().enumerate() {
        let [m, d, e] = [0, 1, 2].map(|t| &i.samples[c][t][..]);
        let where_ = format!("{} x{threads}", size(payload));
        let md = ratio(m, d);
        let ed = ratio(e, d);
        if let Some((r, _, _, cpu)) = md {
            if worst_module.as_ref().is_none_or(|(w, _, _)| r < *w) {
                worst_module = Some((r, cpu, where_.clone()));
            }
        }
        if let Some((r, _, _, cpu)) = ed.filter(|_| payload <= SMALL) {
            if worst_embedded.as_ref().is_none_or(|(w, _, _)| r < *w) {
                worst_embedded = Some((r, cpu, where_.clone()));
            }
        }
        println!(
            "{:>7} {:>3} | {:>25} | {:>25} | {:>30} | {:>25} | {:>20}",
            size(payload),
            threads,
            rate_cell(m),
            rate_cell(d),
            md.map(|(r, lo, hi, cpu)| format!("{r:.3} [{lo:.2}-{hi:.2}] cpu {cpu:.3}"))
                .unwrap_or("-".into()),
            rate_cell(e),
            ed.map(|(r, _, _, cpu)| format!("{r:.1}x cpu {cpu:.1}x"))
                .unwrap_or("-".into()),
        );
    }
    println!();
    match worst_module {
        Some((r, cpu, at)) => println!(
            "target module >= {:.0}% of direct: {} (worst wall-clock {:.1}% at {at}; CPU-cost ratio there {:.1}%, {})",
            MODULE_TARGET * 100.0,
            verdict(r >= MODULE_TARGET),
            r * 100.0,
            cpu * 100.0,
            verdict(cpu >= MODULE_TARGET)
        ),
        None => println!("target module >= 95% of direct: not measured"),
    }
    match worst_embedded {
        Some((r, cpu, at)) => println!(
            "target embedded >= {EMBEDDED_TARGET:.0}x direct at payloads <= {SMALL} B: {} (worst wall-clock {r:.1}x at {at}; CPU-cost ratio there {cpu:.1}x, {})",
            verdict(r >= EMBEDDED_TARGET),
            verdict(cpu >= EMBEDDED_TARGET)
        ),
        None => println!("target embedded >= 10x direct (small payloads): not measured"),
    }
    print_group(i);
    print_find(i);
    print_message(i);
}

/// A pair of targets compared row by row against the module target (>= 95 % of direct):
/// `pair` = (module side, direct side) target indices, same interleaved rounds.
struct PairRows<'a> {
    title: &'a str,
    pair: [usize; 2],
    ratio_name: &'a str,
    target_name: &'a str,
}

fn print_pair(i: &Inputs<'_>, p: &PairRows<'_>) {
    println!();
    println!("{}", p.title);
    println!(
        "{:>7} {:>3} | {:>25} | {:>25} | {:>30}",
        "payload", "thr", i.names[p.pair[0]], i.names[p.pair[1]], p.ratio_name
    );
    println!("{}", "-".repeat(100));
    let mut worst: Option<(f64, f64, String)> = None;
    for (c, &(payload, threads)) in i.cells.iter().enumerate() {
        let [m, d] = p.pair.map(|t| &i.samples[c][t][..]);
        let md = ratio(m, d);
        if let Some((r, _, _, cpu)) = md {
            if worst.as_ref().is_none_or(|(w, _, _)| r < *w) {
                worst = Some((r, cpu, format!("{} x{threads}", size(payload))));
            }
        }
        println!(
            "{:>7} {:>3} | {:>25} | {:>25} | {:>30}",
            size(payload),
            threads,
            rate_cell(m),
            rate_cell(d),
            md.map(|(r, lo, hi, cpu)| format!("{r:.3} [{lo:.2}-{hi:.2}] cpu {cpu:.3}"))
                .unwrap_or("-".into()),
        );
    }
    match worst {
        Some((r, cpu, at)) => println!(
            "target {} >= {:.0}% of direct: {} (worst wall-clock {:.1}% at {at}; CPU-cost ratio there {:.1}%, {})",
            p.target_name,
            MODULE_TARGET * 100.0,
            verdict(r >= MODULE_TARGET),
            r * 100.0,
            cpu * 100.0,
            verdict(cpu >= MODULE_TARGET)
        ),
        None => println!("target {} >= 95% of direct: not measured", p.target_name),
    }
}

/// The find-per-operation rows: find by label + one encrypt per operation, through the module
/// over SoftHSM2 and directly on SoftHSM2 (same token, same key), same interleaved rounds.
fn print_find(i: &Inputs<'_>) {
    print_pair(
        i,
        &PairRows {
            title: "Find per operation: C_FindObjectsInit(class, label) + C_FindObjects + C_FindObjectsFinal + Session::encrypt",
            pair: [5, 6],
            ratio_name: "module/direct",
            target_name: "find+encrypt through the module",
        },
    );
}

/// The message-API rows: the module's PKCS#11 3.0 message API with token-generated IVs
/// (CKG_GENERATE_RANDOM; on SoftHSM2 the module takes the IV from its C_GenerateRandom) vs
/// SoftHSM2 directly doing the same by hand (C_GenerateRandom, then the classic calls).
fn print_message(i: &Inputs<'_>) {
    print_pair(
        i,
        &PairRows {
            title: "Message API: module C_EncryptMessage/C_DecryptMessage (token-generated IV) vs SoftHSM2 direct (C_GenerateRandom IV + classic calls)",
            pair: [7, 8],
            ratio_name: "msg/direct",
            target_name: "message API",
        },
    );
}

/// The replica-group rows: a two-member group slot against a one-member slot over one of
/// its members' stores, measured in the same interleaved rounds.
fn print_group(i: &Inputs<'_>) {
    println!();
    println!(
        "Replica group: slot over 2 embedded members holding the same key (same CKA_ID) vs a slot over one of them"
    );
    println!(
        "CPU here = process CPU µs per round trip: includes member worker threads (calls on members whose reads run inline have none)"
    );
    println!(
        "{:>7} {:>3} | {:>25} | {:>25} | {:>30}",
        "payload", "thr", i.names[3], i.names[4], "group/one member"
    );
    println!("{}", "-".repeat(100));
    for (c, &(payload, threads)) in i.cells.iter().enumerate() {
        let [one, group] = [3, 4].map(|t| &i.samples[c][t][..]);
        println!(
            "{:>7} {:>3} | {:>25} | {:>25} | {:>30}",
            size(payload),
            threads,
            rate_cell_proc(one),
            rate_cell_proc(group),
            ratio_with(group, one, Sample::proc_cpu_us_per_op)
                .map(|(r, lo, hi, cpu)| format!("{r:.3} [{lo:.2}-{hi:.2}] cpu {cpu:.3}"))
                .unwrap_or("-".into()),
        );
    }
    println!("note: on this 2-CPU machine with in-process software tokens two members cannot double throughput:");
    println!("      the members share the caller's CPUs, so the row shows what the group costs (routing, and for a");
    println!("      member behind workers the hand-off to a worker thread and back); the line below shows the spreading.");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Check that the module wrote one audit record per operation (encrypt and decrypt) through
/// it, so the numbers include the audit cost a deployment pays.
/// `extra_calls`: single encrypt or decrypt calls made besides the round trips (the failover
/// run, where a failed encrypt has no decrypt).
pub fn audit_check(path: &Path, module_round_trips: u64, extra_calls: u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let records = text
        .lines()
        .filter(|l| l.contains("op=encrypt") || l.contains("op=decrypt"))
        .count() as u64;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "audit file: {records} encrypt/decrypt records ({:.1} MB) for {module_round_trips} round trips through the module{}: {}",
        size as f64 / 1e6,
        if extra_calls > 0 {
            format!(" and {extra_calls} single calls (find rows, failover run)")
        } else {
            String::new()
        },
        if records == 2 * module_round_trips + extra_calls {
            "one per operation, as expected"
        } else {
            "MISMATCH (expected two per round trip)"
        }
    );
}

/// Load average and how many compilers/linkers are running (other helpers building).
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut busy = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if matches!(
                comm,
                "rustc" | "cc1" | "cc1plus" | "ld" | "collect2" | "build-script-b"
            ) || comm.starts_with("ld.")
                || comm == "cargo"
            {
                busy += 1;
            }
        }
    }
    format!(
        "loadavg {} (1/5/15 min) on {cpus} CPUs; {busy} cargo/rustc/cc/ld processes running",
        load.join(" ")
    )
}
