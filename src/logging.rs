//! The module's logger: operational logs and the audit trail, each to its own sink.
//!
//! A PKCS#11 module cannot rely on its host to set up logging, so it installs its own `log`
//! backend (the cdylib has its own copy of the `log` crate, separate from the host's).
//! Level: `RUST_LOG` if it is a plain level, else the config's `log_level`, else `warn`.
//! The audit target (`xki_audit`) is always on and goes to `audit_file` or, without one, to the
//! log sink.

use crate::audit;
use crate::timefmt::utc_timestamp;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

enum Sink {
    Stderr,
    File(File),
}

impl Sink {
    fn open(path: Option<&Path>) -> std::io::Result<Sink> {
        match path {
            None => Ok(Sink::Stderr),
            Some(p) => open_append(p).map(Sink::File),
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

/// Open (or create, mode 0600) a file for appending lines.
pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
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
        if record.target() == audit::TARGET && audit::file::append_line(line.as_bytes()) {
            return;
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
/// `audit_flush_ms` and `threads_allowed`: see `audit/file.rs` (buffered audit writes need a
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
    let audit = audit_file
        .map(|p| {
            audit::file::open(p)
                .map_err(|e| format!("audit_file: cannot open {}: {e}", p.display()))
        })
        .transpose()?;
    *LOGGER.sinks.lock() = Sinks { log };
    audit::file::install(audit, audit_flush_ms, threads_allowed);
    LOGGER.level.store(level as usize, Ordering::Relaxed);
    Ok(())
}
