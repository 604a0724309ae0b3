//! The module's logger: operational logs and the audit trail, each to its own sink.
//!
//! A PKCS#11 module cannot rely on its host to set up logging, so it installs its own `log`
//! backend (the cdylib has its own copy of the `log` crate, separate from the host's).
//! Level: `RUST_LOG` if it is a plain level, else the config's `log_level`, else `warn`.
//! The audit target (`xki_audit`) is always on and goes to `audit_file` or, without one, to the
//! log sink.

mod audit_entry;
mod audit_file;

use crate::audit;
pub use audit_file::{close as close_audit, flush as flush_audit};
use parking_lot::Mutex;
use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

enum Sink {
    Stderr,
    File(File),
}

impl Sink {
    fn open(path: Option<&Path>) -> std::io::Result<Sink> {
        match path {
            None => Ok(Sink::Stderr),
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?;
                Ok(Sink::File(file))
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        // A failing log write must never fail a PKCS#11 call: ignore it.
        let _ = match self {
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
        };
    }
}

struct Sinks {
    log: Sink,
}

struct Logger {
    sinks: Mutex<Sinks>,
    level: AtomicUsize,
}

static LOGGER: Logger = Logger {
    sinks: Mutex::new(Sinks { log: Sink::Stderr }),
    level: AtomicUsize::new(log::LevelFilter::Warn as usize),
};

fn level_from(n: usize) -> log::LevelFilter {
    [
        log::LevelFilter::Off,
        log::LevelFilter::Error,
        log::LevelFilter::Warn,
        log::LevelFilter::Info,
        log::LevelFilter::Debug,
        log::LevelFilter::Trace,
    ]
    .get(n)
    .copied()
    .unwrap_or(log::LevelFilter::Warn)
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == audit::TARGET
            || metadata.level() <= level_from(self.level.load(Ordering::Relaxed))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} {}: {}\n",
            utc_timestamp(SystemTime::now()),
            record.level(),
            record.target(),
            record.args()
        );
        if record.target() == audit::TARGET {
            let written =
                audit_file::with_current(|sink| sink.map(|s| s.append(line.as_bytes())).is_some());
            if written {
                return;
            }
        }
        self.sinks.lock().log.write_line(&line);
    }

    fn flush(&self) {}
}

/// Install the logger (once per process) with the default stderr sink, so that even a config
/// error is reported.
pub fn install_default() {
    // set_logger fails if already set, which is fine: it is ours (the cdylib's own `log`).
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    LOGGER.level.store(
        env_level().unwrap_or(log::LevelFilter::Warn) as usize,
        Ordering::Relaxed,
    );
}

fn env_level() -> Option<log::LevelFilter> {
    std::env::var("RUST_LOG").ok()?.trim().parse().ok()
}

/// Apply the config's logging settings. Errors name the file that could not be opened.
/// `audit_flush_ms` and `threads_allowed`: see `audit_file.rs` (buffered audit writes need a
/// thread, which `CKF_LIBRARY_CANT_CREATE_OS_THREADS` forbids).
pub fn configure(
    level: Option<&str>,
    log_file: Option<&Path>,
    audit_file: Option<&Path>,
    audit_flush_ms: u64,
    threads_allowed: bool,
) -> Result<(), String> {
    let level = env_level()
        .or_else(|| level.and_then(|l| l.parse().ok()))
        .unwrap_or(log::LevelFilter::Warn);
    let log = Sink::open(log_file).map_err(|e| {
        format!(
            "log_file: cannot open {}: {e}",
            log_file.unwrap_or(Path::new("")).display()
        )
    })?;
    let audit = match audit_file {
        Some(p) => match Sink::open(Some(p))
            .map_err(|e| format!("audit_file: cannot open {}: {e}", p.display()))?
        {
            Sink::File(f) => Some(f),
            Sink::Stderr => None,
        },
        None => None,
    };
    *LOGGER.sinks.lock() = Sinks { log };
    audit_file::install(audit, audit_flush_ms, threads_allowed);
    LOGGER.level.store(level as usize, Ordering::Relaxed);
    Ok(())
}

/// Write one audit record (outcome `rv`: `CKR_OK` or the error's code) to the audit file, if
/// one is configured. Buffered, the record's fields go to the buffer and the flusher thread
/// formats them (`audit_entry.rs`); synchronous, the line is formatted here into a reused
/// per-thread buffer, without the `log` crate's machinery, and written at once. Either way the
/// text is the logger's (`<timestamp> INFO  xki_audit: <message>`). Returns `false` (and
/// writes nothing) when there is no audit file: the caller logs instead.
pub fn audit_record(r: &audit::Record<'_>, rv: u64) -> bool {
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    audit_file::with_current(|sink| {
        let Some(sink) = sink else { return false };
        let since_epoch = wall_clock();
        if sink.append_record(r, rv, since_epoch) {
            return true;
        }
        let at = UNIX_EPOCH + since_epoch;
        let wrote = LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            push_line_prefix(&mut line, at);
            audit::push_message(&mut line, r, &audit::outcome_name(rv));
            line.push(b'\n');
            sink.append(&line);
            true
        });
        wrote.unwrap_or(false)
    })
}

/// The wall-clock time since the Unix epoch: one `clock_gettime(CLOCK_REALTIME)` (a vDSO
/// call), without `SystemTime`'s checked arithmetic around it (this runs for every record).
fn wall_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call; CLOCK_REALTIME always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Buffer a record whose names are numbers (see `audit::names`). `false` (nothing written)
/// without a buffered audit file: the caller spells the record out and uses [`audit_record`].
pub(crate) fn audit_compact(r: &audit::CompactRecord) -> bool {
    audit_file::with_current(|sink| sink.is_some_and(|s| s.append_compact(r, wall_clock())))
}

/// What the logger writes before an audit message: `<timestamp> INFO  xki_audit: `.
fn push_line_prefix(out: &mut Vec<u8>, at: SystemTime) {
    push_timestamp(out, at);
    out.extend_from_slice(b" INFO  ");
    out.extend_from_slice(audit::TARGET.as_bytes());
    out.extend_from_slice(b": ");
}

/// [`utc_timestamp`] appended to `out` without formatting machinery. The part down to the
/// second is computed once per second per thread (`YYYY-MM-DDTHH:MM:SS.`), so a record pays
/// only for its milliseconds.
fn push_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static PREFIX: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let prefix = PREFIX
        .try_with(|cache| {
            let (cached, prefix) = cache.get();
            if cached == secs {
                return prefix;
            }
            let prefix = second_prefix(secs);
            cache.set((secs, prefix));
            prefix
        })
        .unwrap_or_else(|_| second_prefix(secs));
    out.extend_from_slice(&prefix);
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut v = Vec::with_capacity(20);
    push_digits(&mut v, y.clamp(0, 9999) as u64, 4);
    v.push(b'-');
    push_digits(&mut v, u64::from(m), 2);
    v.push(b'-');
    push_digits(&mut v, u64::from(day), 2);
    v.push(b'T');
    push_digits(&mut v, rem / 3600, 2);
    v.push(b':');
    push_digits(&mut v, (rem % 3600) / 60, 2);
    v.push(b':');
    push_digits(&mut v, rem % 60, 2);
    v.push(b'.');
    let mut out = [0u8; 20];
    out.copy_from_slice(&v);
    out
}

/// `n` in decimal, zero-padded to at least `width` digits.
pub fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while digits.len() - i < width && i > 0 {
        i -= 1;
        digits[i] = b'0';
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(utc_timestamp(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for t in [
            UNIX_EPOCH,
            t,
            UNIX_EPOCH + Duration::from_millis(4_102_444_799_999),
        ] {
            let mut out = Vec::new();
            push_timestamp(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), utc_timestamp(t));
        }
        let mut out = Vec::new();
        push_digits(&mut out, 0, 1);
        push_digits(&mut out, 7, 3);
        push_digits(&mut out, 18_446_744_073_709_551_615, 2);
        assert_eq!(
            out,
            b"0007"
                .iter()
                .chain(b"18446744073709551615")
                .copied()
                .collect::<Vec<_>>()
        );
    }
}
