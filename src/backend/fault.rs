//! TEST-ONLY fault injection (cargo feature `fault-injection`, off by default; never build a
//! release with it): a [`Backend`] that wraps a real backend and can be told to fail every
//! call with `CKR_DEVICE_ERROR`, hang in every call until told otherwise, or pass through.
//!
//! The mode is set through a [`FaultSwitch`], or read from a control file holding one word
//! (`ok`, `fail` or `hang`; missing or unreadable file = `ok`), re-read at most every 10 ms.
//! The control file may also say `delay MICROS`: pass every call through after sleeping that
//! long, the way a network HSM's round trip waits without using this machine's CPU.

use crate::backend::*;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the wrapper does with calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Pass every call to the wrapped backend.
    Ok = 0,
    /// Fail every call with `CKR_DEVICE_ERROR`.
    Fail = 1,
    /// Block every call until the mode changes, then behave as the new mode says.
    Hang = 2,
}

/// A handle that switches a wrapper's mode and counts the calls it passed through.
#[derive(Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU8>, Arc<AtomicU64>);

impl FaultSwitch {
    /// Calls passed to the wrapped backend so far.
    pub fn calls(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }

    /// Set the mode.
    pub fn set(&self, mode: FaultMode) {
        self.0.store(mode as u8, Ordering::SeqCst);
    }

    fn get(&self) -> FaultMode {
        match self.0.load(Ordering::SeqCst) {
            1 => FaultMode::Fail,
            2 => FaultMode::Hang,
            _ => FaultMode::Ok,
        }
    }
}

/// The fault-injecting wrapper.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    name: String,
    switch: FaultSwitch,
    control_file: Option<PathBuf>,
    last_read: Mutex<Option<Instant>>,
    /// Sleep before each passed call, µs (`delay N` in the control file; 0 = none).
    delay_us: AtomicU64,
}

impl FaultBackend {
    /// Wrap `inner` under the name `name`; the returned switch sets the mode.
    pub fn new(name: &str, inner: Arc<dyn Backend>) -> (Self, FaultSwitch) {
        let switch = FaultSwitch::default();
        (
            FaultBackend {
                inner,
                name: name.to_string(),
                switch: switch.clone(),
                control_file: None,
                last_read: Mutex::new(None),
                delay_us: AtomicU64::new(0),
            },
            switch,
        )
    }

    /// Wrap `inner`, taking the mode from `control_file`.
    pub fn with_control_file(name: &str, inner: Arc<dyn Backend>, control_file: PathBuf) -> Self {
        let (mut b, _) = Self::new(name, inner);
        b.control_file = Some(control_file);
        b
    }

    fn mode(&self) -> FaultMode {
        if let Some(path) = &self.control_file {
            let mut last = self.last_read.lock();
            if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(10)) {
                *last = Some(Instant::now());
                let word = std::fs::read_to_string(path).unwrap_or_default();
                let delay = word
                    .trim()
                    .strip_prefix("delay ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                self.delay_us.store(delay, Ordering::SeqCst);
                self.switch.set(match word.trim() {
                    "fail" => FaultMode::Fail,
                    "hang" => FaultMode::Hang,
                    _ => FaultMode::Ok,
                });
            }
        }
        self.switch.get()
    }

    /// Apply the current mode before a call.
    fn gate(&self) -> CkResult<()> {
        loop {
            match self.mode() {
                FaultMode::Ok => {
                    let delay = self.delay_us.load(Ordering::SeqCst);
                    if delay > 0 {
                        std::thread::sleep(Duration::from_micros(delay));
                    }
                    self.switch.1.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                FaultMode::Fail => return Err(Rv::DEVICE_ERROR),
                FaultMode::Hang => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

impl Backend for FaultBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn describe(&self) -> CkResult<TokenDescription> {
        self.gate()?;
        self.inner.describe()
    }
    fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo> {
        self.gate()?;
        self.inner.mechanism_info(mechanism)
    }
    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        self.gate()?;
        self.inner.list_secret_keys()
    }
    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
        self.gate()?;
        self.inner.key_info(key)
    }
    fn find_secret_keys(&self, query: &crate::backend::KeyQuery) -> CkResult<Vec<KeyInfo>> {
        self.gate()?;
        self.inner.find_secret_keys(query)
    }
    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
        self.gate()?;
        self.inner.generate_aes_key(spec)
    }
    fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()> {
        self.gate()?;
        self.inner.set_key_attributes(key, changes)
    }
    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        self.gate()?;
        self.inner.destroy_key(key)
    }
    fn key_state(&self, key: BackendKey) -> CkResult<Option<Vec<u8>>> {
        self.gate()?;
        self.inner.key_state(key)
    }
    fn set_key_state(&self, key: BackendKey, record: &[u8]) -> CkResult<()> {
        self.gate()?;
        self.inner.set_key_state(key, record)
    }
    fn gcm_encrypt(&self, key: BackendKey, iv: &[u8], aad: &[u8], pt: &[u8]) -> CkResult<Vec<u8>> {
        self.gate()?;
        self.inner.gcm_encrypt(key, iv, aad, pt)
    }
    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> CkResult<SecretBytes> {
        self.gate()?;
        self.inner.gcm_decrypt(key, iv, aad, ct)
    }
    fn gcm_encrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        pt: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        self.gate()?;
        self.inner.gcm_encrypt_into(key, iv, aad, pt, out)
    }
    fn gcm_decrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        self.gate()?;
        self.inner.gcm_decrypt_into(key, iv, aad, ct, out)
    }
    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        self.gate()?;
        self.inner.generate_random(out)
    }

    fn accepts_caller_iv(&self) -> bool {
        self.inner.accepts_caller_iv()
    }

    fn gcm_encrypt_generated_iv(
        &self,
        key: BackendKey,
        aad: &[u8],
        pt: &[u8],
    ) -> CkResult<crate::backend::GeneratedIvEncryption> {
        self.gate()?;
        self.inner.gcm_encrypt_generated_iv(key, aad, pt)
    }
    fn shutdown(&self) {
        self.inner.shutdown();
    }
}
