//! The module's logger: operational logs and the audit trail, each to its own sink.
//!
//! A PKCS#11 module cannot rely on its host to set up logging, so it installs its own `log`
//! backend (the cdylib has its own copy of the `log` crate, separate from the host's).
//! Level: `RUST_LOG` if it is a plain level, else the config's `log_level`, else `warn`.
//! The audit target (`xki_audit`) is always on and goes to `audit_file` or, without one, to the
//! log sink.

use crate::audit;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    audit: Option<Sink>,
}

struct Logger {
    sinks: Mutex<Sinks>,
    level: AtomicUsize,
}

static LOGGER: Logger = Logger {
    sinks: Mutex::new(Sinks {
        log: Sink::Stderr,
        audit: None,
    }),
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
        let mut sinks = self.sinks.lock();
        if record.target() == audit::TARGET {
            if let Some(a) = sinks.audit.as_mut() {
                a.write_line(&line);
                return;
            }
        }
        sinks.log.write_line(&line);
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
pub fn configure(
    level: Option<&str>,
    log_file: Option<&Path>,
    audit_file: Option<&Path>,
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
        Some(p) => Some(
            Sink::open(Some(p))
                .map_err(|e| format!("audit_file: cannot open {}: {e}", p.display()))?,
        ),
        None => None,
    };
    *LOGGER.sinks.lock() = Sinks { log, audit };
    LOGGER.level.store(level as usize, Ordering::Relaxed);
    Ok(())
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
    }
}
