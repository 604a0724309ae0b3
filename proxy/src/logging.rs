//! Log setup: text or JSON lines on stderr via tracing. Request lines use the target
//! `xki_proxy::request`; nothing logged anywhere carries plaintext, AAD, PINs or secrets.

use tracing::level_filters::LevelFilter;

use crate::config::LogFormat;

/// Install the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat, level: &str) {
    let level = match level {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
