//! Keeping the in-memory image in step with the store file: cheap re-reads for readers, and
//! locked read-modify-write for every change.

use super::format;
use super::gcm::GcmKey;
use super::records::Contents;
use super::store;
use super::{EmbeddedBackend, KeyEntry};
use crate::rv::{CkResult, Rv};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Turn decoded records into map entries, reusing the ciphers of `old` entries whose key bytes
/// are unchanged (so a re-read costs no key schedules). Errors describe an invalid record.
pub(super) fn build_map(
    old: &HashMap<u64, Arc<KeyEntry>>,
    contents: Contents,
) -> Result<HashMap<u64, Arc<KeyEntry>>, String> {
    let mut map = HashMap::with_capacity(contents.keys.len());
    for record in contents.keys {
        let reused = old.get(&record.record).and_then(|e| {
            let same = e.record.value.len() == record.value.len()
                && bool::from(e.record.value.ct_eq(&record.value));
            same.then(|| e.cipher.clone())
        });
        let cipher = match reused {
            Some(c) => c,
            None => Arc::new(GcmKey::new(&record.value).ok_or_else(|| {
                format!(
                    "record {} has a {}-byte key (16, 24 or 32 expected)",
                    record.record,
                    record.value.len()
                )
            })?),
        };
        map.insert(record.record, Arc::new(KeyEntry { record, cipher }));
    }
    Ok(map)
}

/// How often the encrypt/decrypt path looks at the store for changes made by another
/// process (a key disabled or its usage changed by an admin command): one `stat` per window
/// per process, so another process's change is enforced here within this time.
pub(super) const RECHECK_MS: u64 = 20;

/// The time of the crypto path's last look at the store, in ms since the backend opened.
pub(super) struct Recheck {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Recheck {
    pub(super) fn new() -> Recheck {
        Recheck {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// True at most once per [`RECHECK_MS`] (for one caller; the others skip).
    fn due(&self) -> bool {
        let now = self.opened.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= RECHECK_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl EmbeddedBackend {
    /// The crypto path's periodic look at the store (see [`RECHECK_MS`]). A failure is
    /// logged by `refresh_if_changed`; the keys in memory keep serving.
    pub(super) fn recheck_now_and_then(&self) {
        if self.recheck.due() {
            let _ = self.refresh_if_changed();
        }
    }

    /// The entry for `handle` from memory only: the encrypt/decrypt path.
    pub(super) fn cached(&self, handle: u64) -> Option<Arc<KeyEntry>> {
        self.state.read().keys.get(&handle).cloned()
    }

    /// The entry for `handle`, re-reading the store first if another process changed it.
    pub(super) fn fresh(&self, handle: u64) -> CkResult<Option<Arc<KeyEntry>>> {
        self.refresh_if_changed()?;
        Ok(self.cached(handle))
    }

    /// Read and unseal the store as it is now. Every failure is logged with the file name and
    /// reported as `CKR_DEVICE_ERROR`; nothing is ever written in response.
    fn load(&self) -> CkResult<(format::Identity, Contents, store::Stamp)> {
        let shown = self.paths.store.display();
        let fail = |problem: String| {
            log::error!("embedded token {}: {shown}: {problem}", self.name);
            Rv::DEVICE_ERROR
        };
        let (bytes, stamp) = store::read(&self.paths.store)
            .map_err(|e| fail(format!("cannot read: {e}")))?
            .ok_or_else(|| fail("the key store has disappeared".into()))?;
        let parsed =
            format::parse(&bytes).map_err(|c| fail(format!("corrupt key store: {}", c.0)))?;
        if parsed.identity.kdf != self.sealing.kind() {
            return Err(fail(
                "the store was replaced by one sealed differently".into(),
            ));
        }
        let kek = self
            .sealing
            .kek(parsed.identity.params, &parsed.identity.salt)
            .map_err(fail)?;
        let plain = parsed
            .open(&kek)
            .ok_or_else(|| fail("cannot unseal the store (modified, or replaced)".into()))?;
        let contents =
            Contents::decode(&plain).map_err(|p| fail(format!("corrupt key records: {p}")))?;
        Ok((parsed.identity, contents, stamp))
    }

    /// Replace the in-memory image with `contents` read at `stamp`.
    fn install(&self, contents: Contents, stamp: store::Stamp) -> CkResult<()> {
        let old = self.state.read().keys.clone();
        let keys = build_map(&old, contents).map_err(|p| {
            log::error!(
                "embedded token {}: {}: {p}",
                self.name,
                self.paths.store.display()
            );
            Rv::DEVICE_ERROR
        })?;
        let mut state = self.state.write();
        state.keys = keys;
        state.stamp = Some(stamp);
        Ok(())
    }

    /// Re-read the store if its stamp differs from the one the image came from. Costs one
    /// `stat` when nothing changed.
    pub(super) fn refresh_if_changed(&self) -> CkResult<()> {
        let now = store::stamp(&self.paths.store).map_err(|e| {
            log::error!(
                "embedded token {}: cannot stat {}: {e}",
                self.name,
                self.paths.store.display()
            );
            Rv::DEVICE_ERROR
        })?;
        if now.is_some() && now == self.state.read().stamp {
            return Ok(());
        }
        let (_, contents, stamp) = self.load()?;
        self.install(contents, stamp)
    }

    /// Apply `change` to the store: lock, re-read (another process may have changed it), apply,
    /// write crash-safely, then update the image. On any error nothing is written.
    pub(super) fn mutate<T>(
        &self,
        change: impl FnOnce(&mut Contents) -> CkResult<T>,
    ) -> CkResult<T> {
        let _in_process = self.writer.lock();
        let _lock = store::lock(&self.paths).map_err(|e| {
            log::error!(
                "embedded token {}: cannot lock {}: {e}",
                self.name,
                self.paths.lock.display()
            );
            Rv::DEVICE_ERROR
        })?;
        let (identity, mut contents, _) = self.load()?;
        let result = change(&mut contents)?;
        let kek = self
            .sealing
            .kek(identity.params, &identity.salt)
            .map_err(|_| Rv::DEVICE_ERROR)?;
        let file = format::seal(&identity, &kek, &contents.encode()).map_err(|e| {
            log::error!(
                "embedded token {}: {}: {e}",
                self.name,
                self.paths.store.display()
            );
            Rv::DEVICE_ERROR
        })?;
        let stamp = store::write_atomic(&self.paths, &file).map_err(|e| {
            log::error!(
                "embedded token {}: cannot write {}: {e}",
                self.name,
                self.paths.store.display()
            );
            Rv::DEVICE_ERROR
        })?;
        self.install(contents, stamp)?;
        Ok(result)
    }
}
