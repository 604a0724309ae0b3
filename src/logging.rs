//! The module's logger: operational logs to stderr or the `log_file`.
//!
//! A PKCS#11 module cannot rely on its host to set up logging, so it installs its own `log`
//! backend (the cdylib has its own copy of the `log` crate, separate from the host's).
//! Level: `RUST_LOG` if it is a plain level, else the config's `log_level`, else `warn`.
//! Format: text or JSON lines (`lineformat.rs`: `XKI_LOG_FORMAT`, else `log_format`).
//! Audit records are not `log` records: `audit` writes them to its own file, or, without an
//! `audit_file`, hands the formatted line to [`write_line`] whatever the level.
//!
//! A `log_file` is reopened when it was moved away or replaced (checked at most once a
//! second, when a line is written) and on [`reopen`] (`XKI_ReopenLogs`), for log rotation.

use crate::lineformat;
use crate::timefmt::utc_timestamp;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How often a line written to a `log_file` checks whether the path still names the file.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// An open log file and what rotation checks need.
struct LogFile {
    file: File,
    path: PathBuf,
    /// Device and inode of `file`.
    identity: (u64, u64),
    checked: Option<Instant>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = crate::config::open_private_append(path)?;
        Ok(LogFile {
            identity: identity_of(&file),
            file,
            path: path.to_path_buf(),
            checked: Some(Instant::now()),
        })
    }

    /// Reopen the path when it no longer names the open file (at most once a second), or
    /// at once with `force`. A path that cannot be opened keeps the old file.
    fn check_rotation(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .checked
                .is_some_and(|t| now.duration_since(t) < ROTATION_CHECK)
        {
            return;
        }
        self.checked = Some(now);
        let moved = force
            || match std::fs::metadata(&self.path) {
                Ok(m) => (m.dev(), m.ino()) != self.identity,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
        if moved {
            if let Ok(file) = crate::config::open_private_append(&self.path) {
                self.identity = identity_of(&file);
                self.file = file;
            }
        }
    }
}

fn identity_of(file: &File) -> (u64, u64) {
    file.metadata()
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0))
}

enum Sink {
    Stderr,
    File(LogFile),
}

impl Sink {
    fn open(path: Option<&Path>) -> std::io::Result<Sink> {
        match path {
            None => Ok(Sink::Stderr),
            Some(p) => LogFile::open(p).map(Sink::File),
        }
    }

    fn write_line(&mut self, line: &[u8]) {
        // A failing log write must never fail a PKCS#11 call: ignore it.
        let _ = match self {
            Sink::Stderr => std::io::stderr().lock().write_all(line),
            Sink::File(f) => {
                f.check_rotation(false);
                (&f.file).write_all(line)
            }
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

/// A log line in the configured format: `<timestamp> <LEVEL> <target>: <message>` or
/// `{"timestamp":...,"level":...,"target":...,"message":...}`.
fn format_line(level: log::Level, target: &str, message: &str) -> Vec<u8> {
    let timestamp = utc_timestamp(SystemTime::now());
    if !lineformat::json() {
        return format!("{timestamp} {level:<5} {target}: {message}\n").into_bytes();
    }
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"timestamp\":\"");
    out.extend_from_slice(timestamp.as_bytes());
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(level.as_str().as_bytes());
    out.extend_from_slice(b"\",\"target\":\"");
    lineformat::push_json_str(&mut out, target.as_bytes());
    out.extend_from_slice(b"\",\"message\":\"");
    lineformat::push_json_str(&mut out, message.as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= level_from(self.level.load(Ordering::Relaxed))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), &record.args().to_string());
        self.sinks.lock().log.write_line(&line);
    }

    fn flush(&self) {}
}

/// Write a line formatted elsewhere (an audit record without an audit file) to the log sink.
pub(crate) fn write_line(line: &[u8]) {
    LOGGER.sinks.lock().log.write_line(line);
}

/// Install the logger (once per process) with the default stderr sink, so that even a config
/// error is reported (in the format `XKI_LOG_FORMAT` asks for).
pub fn install_default() {
    // set_logger fails if already set, which is fine: it is ours (the cdylib's own `log`).
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    lineformat::set(None);
    LOGGER.level.store(
        env_level().unwrap_or(log::LevelFilter::Warn) as usize,
        Ordering::Relaxed,
    );
}

fn env_level() -> Option<log::LevelFilter> {
    std::env::var("RUST_LOG").ok()?.trim().parse().ok()
}

/// Apply the config's logging settings (the audit file's are `audit::file::configure`'s).
/// Errors name the file that could not be opened.
pub fn configure(config: &crate::config::Config) -> Result<(), String> {
    let level = env_level()
        .or_else(|| config.log_level.as_deref().and_then(|l| l.parse().ok()))
        .unwrap_or(log::LevelFilter::Warn);
    let log_file = config.log_file.as_deref();
    let log = Sink::open(log_file).map_err(|e| {
        format!(
            "log_file: cannot open {}: {e}",
            log_file.unwrap_or(Path::new("")).display()
        )
    })?;
    lineformat::set(config.log_format.as_deref());
    *LOGGER.sinks.lock() = Sinks { log };
    LOGGER.level.store(level as usize, Ordering::Relaxed);
    Ok(())
}

/// Open the log file again (log rotation: `XKI_ReopenLogs`, which the proxy calls on
/// SIGHUP). A file that cannot be opened keeps writing to the old one (logged).
pub fn reopen() {
    if let Sink::File(f) = &mut LOGGER.sinks.lock().log {
        f.check_rotation(true);
    }
}
