//! Log setup: text or JSON lines on stderr via tracing. Request lines use the target
//! `xki_proxy::request`; nothing logged anywhere carries plaintext, AAD, PINs or secrets.
//!
//! Lines are handed to a dedicated writer thread ([`batch`]: lossless, a caller waits rather
//! than a line being dropped when 8 MiB are queued) that writes them in batches, so the async
//! workers never block on stderr's file or pipe and a busy server wakes it at most once per
//! 20 ms. The returned guard writes out what is queued when dropped: hold it until the server
//! stops.

mod batch;

use tracing::level_filters::LevelFilter;

use crate::config::LogFormat;

/// Make the module's lines (its log and, without an `audit_file`, its audit records, which
/// share this stderr) the same format: `XKI_LOG_FORMAT`, read by `libxki_pkcs11.so` at
/// `C_Initialize`. An explicit `XKI_LOG_FORMAT` in the environment is left as it is. Call
/// before any thread is started and before the module is loaded.
pub fn module_format_env(format: LogFormat) {
    const ENV: &str = xki_pkcs11::lineformat::FORMAT_ENV;
    if std::env::var_os(ENV).is_none() {
        let value = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        std::env::set_var(ENV, value);
    }
}

/// Install the global subscriber (once; later calls are ignored). Keep the guard alive
/// while serving; dropping it flushes the queued lines.
pub fn init(format: LogFormat, level: &str) -> batch::Flusher {
    let level = match level {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    // A quiet server still writes each line at once; a busy one writes an interval's lines
    // with one write(2).
    let (writer, guard) = batch::start(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}
