//! Shared state of a running server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::health::Health;
use crate::hsm::Hsm;
use crate::metrics::Metrics;
use crate::tenants::Tenants;

/// Everything a request handler needs.
pub struct App {
    /// The HSM pool.
    pub hsm: Arc<Hsm>,
    /// Tenants; swapped on reload.
    pub tenants: ArcSwap<Tenants>,
    /// TLS settings (certificate, key, client CA and names) when serving HTTPS; rebuilt from
    /// the files on reload, so a renewed certificate needs no restart. New connections use
    /// the current one; open connections keep the one they were accepted with.
    pub tls: Option<ArcSwap<rustls::ServerConfig>>,
    /// Cached deep-health result.
    pub health: Arc<Health>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// HSM deadline per request.
    pub hsm_deadline: Duration,
    /// Body size cap.
    pub max_body: usize,
    /// `[clients] request_read_timeout_ms`: for the TLS handshake, a request's head, and
    /// its body, each.
    pub read_timeout: Duration,
    /// Config file, re-read on reload.
    pub config_path: PathBuf,
}

impl App {
    /// Deadline for an HSM call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.hsm_deadline
    }
}
