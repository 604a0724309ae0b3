//! `impl Backend for ReplicaGroup`: each verb over the group's members (routing, failover and
//! key mapping live in `mod.rs`).

use super::member::Outcome;
use super::{MemberStatus, ReplicaGroup, Served};
use crate::backend::{
    Backend, BackendKey, KeyChanges, KeyInfo, MechanismInfo, NewKey, TokenDescription,
};
use crate::config::Replication;
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The group's view of a member's key: same attributes, the group's key number.
fn as_group_key(mut info: KeyInfo, key: u64) -> KeyInfo {
    info.handle = BackendKey(key);
    info
}

impl Backend for ReplicaGroup {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn describe(&self) -> CkResult<TokenDescription> {
        self.inner.run(None, |b, _| b.describe())
    }

    fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo> {
        // What every member in service supports: the narrowest range and the common flags.
        let mut combined: Option<MechanismInfo> = None;
        for m in self.inner.members.iter().filter(|m| m.is_up()) {
            match m.attempt_read(move |b| b.mechanism_info(mechanism)) {
                Outcome::Answer(Ok(info)) => {
                    let c = combined.get_or_insert(info);
                    c.min_key_size = c.min_key_size.max(info.min_key_size);
                    c.max_key_size = c.max_key_size.min(info.max_key_size);
                    c.flags &= info.flags;
                }
                Outcome::Answer(Err(rv)) => return Err(rv),
                Outcome::Failed(_) => {}
            }
        }
        combined.ok_or(Rv::DEVICE_ERROR)
    }

    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        let inner = &self.inner;
        let mut first: std::collections::BTreeMap<u64, KeyInfo> = Default::default();
        let mut answered = false;
        for i in 0..inner.members.len() {
            if !inner.members[i].is_up() {
                continue;
            }
            let Some(listed) = inner.refresh_member(i) else {
                continue;
            };
            answered = true;
            let keys = inner.keys.read();
            for info in listed {
                if let Some(gk) = keys.group_key_of(&info) {
                    if keys.member_key(gk, i).is_some() && !first.contains_key(&gk) {
                        first.insert(gk, as_group_key(info, gk));
                    }
                }
            }
        }
        if !answered {
            return Err(Rv::DEVICE_ERROR);
        }
        Ok(first.into_values().collect())
    }

    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
        let k = key.0;
        self.inner.run(Some(k), move |b, mk| {
            b.key_info(mk).map(|i| as_group_key(i, k))
        })
    }

    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
        let inner = &self.inner;
        if inner.members.len() > 1 && inner.settings.replication != Replication::Hsm {
            log::error!(
                "replica group {}: key generation refused: the members do not replicate keys (set replication = \"hsm\" on the slot if the HSMs do)",
                inner.name
            );
            return Err(Rv::FUNCTION_FAILED);
        }
        let tried = vec![false; inner.members.len()];
        let (i, _) = inner.pick(None, &tried).ok_or(Rv::DEVICE_ERROR)?;
        let spec_owned = spec.clone();
        // Never retried elsewhere: a timed-out generation may still have created the key.
        let created = match inner.members[i].attempt(move |b| b.generate_aes_key(&spec_owned)) {
            Outcome::Answer(r) => r?,
            Outcome::Failed(rv) => return Err(rv),
        };
        inner.refresh_member(i);
        let gk = inner
            .keys
            .read()
            .group_key_of(&created)
            .ok_or(Rv::GENERAL_ERROR)?;
        // Wait for the HSMs' own replication to bring the key to every member in service.
        let until = Instant::now() + inner.settings.replication_wait;
        loop {
            let missing: Vec<usize> = (0..inner.members.len())
                .filter(|j| inner.members[*j].is_up())
                .filter(|j| inner.keys.read().member_key(gk, *j).is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= until {
                let names: Vec<&str> = missing
                    .iter()
                    .map(|j| inner.members[*j].name.as_str())
                    .collect();
                log::error!(
                    "replica group {}: generated key did not appear on {} within {} ms",
                    inner.name,
                    names.join(","),
                    inner.settings.replication_wait.as_millis()
                );
                return Err(Rv::FUNCTION_FAILED);
            }
            std::thread::sleep(Duration::from_millis(50));
            for j in missing {
                inner.refresh_member(j);
            }
        }
        Ok(as_group_key(created, gk))
    }

    fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()> {
        let changes = changes.clone();
        self.inner
            .apply_all(key.0, "attribute change", move |b, mk| {
                b.set_key_attributes(mk, &changes)
            })
            .map(|_| ())
    }

    fn key_state(&self, key: BackendKey) -> CkResult<Option<Vec<u8>>> {
        // Read from every member in service holding the key: a member that missed a change
        // (out of service at the time) must not decide the answer alone. Members that
        // disagree make the state unreadable (reported damaged, the key treated as DISABLED)
        // until an admin command writes it to all of them again.
        let inner = &self.inner;
        if !inner.keys.read().contains(key.0) {
            return Err(Rv::KEY_HANDLE_INVALID);
        }
        let mut answers: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        for (i, mk) in inner.holders(key.0) {
            match inner.members[i].attempt_read(move |b| b.key_state(mk)) {
                Outcome::Answer(Ok(r)) => answers.push((i, r)),
                Outcome::Answer(Err(rv)) if answers.is_empty() => return Err(rv),
                Outcome::Answer(Err(_)) | Outcome::Failed(_) => {}
            }
        }
        let Some((_, first)) = answers.first().cloned() else {
            return Err(Rv::DEVICE_ERROR);
        };
        if let Some((j, _)) = answers.iter().find(|(_, r)| *r != first) {
            log::error!(
                "replica group {}: members {} and {} hold different state records for key #{}; run the key's last admin command again to rewrite them",
                inner.name,
                inner.members[answers[0].0].name,
                inner.members[*j].name,
                key.0
            );
            return Ok(Some(b"members disagree".to_vec()));
        }
        Ok(first)
    }

    fn set_key_state(&self, key: BackendKey, record: &[u8]) -> CkResult<()> {
        // Written to every member holding the key (like attribute changes), so any member
        // answers the same state.
        let record = record.to_vec();
        self.inner
            .apply_all(key.0, "key state change", move |b, mk| {
                b.set_key_state(mk, &record)
            })
            .map(|_| ())
    }

    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        let done = self
            .inner
            .apply_all(key.0, "destroy", |b, mk| match b.destroy_key(mk) {
                // Replicating HSMs may have removed it already.
                Err(rv) if rv == Rv::OBJECT_HANDLE_INVALID || rv == Rv::KEY_HANDLE_INVALID => {
                    Ok(())
                }
                r => r,
            })?;
        let mut keys = self.inner.keys.write();
        for i in done {
            keys.set_missing(key.0, i);
        }
        if (0..self.inner.members.len()).all(|i| keys.member_key(key.0, i).is_none()) {
            keys.remove(key.0);
        }
        Ok(())
    }

    fn gcm_encrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<Vec<u8>> {
        let served = self.inner.run_read(
            Some(key.0),
            |b, mk| b.gcm_encrypt(mk, iv, aad, plaintext),
            || {
                let (iv, aad) = (iv.to_vec(), aad.to_vec());
                let pt = SecretBytes::new(plaintext.to_vec());
                move |b: &dyn Backend, mk| b.gcm_encrypt(mk, &iv, &aad, &pt)
            },
        )?;
        Ok(match served {
            Served::Here(ct) | Served::Worker(ct) => ct,
        })
    }

    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> CkResult<SecretBytes> {
        let served = self.inner.run_read(
            Some(key.0),
            |b, mk| b.gcm_decrypt(mk, iv, aad, ciphertext_and_tag),
            || {
                let (iv, aad, ct) = (iv.to_vec(), aad.to_vec(), ciphertext_and_tag.to_vec());
                move |b: &dyn Backend, mk| b.gcm_decrypt(mk, &iv, &aad, &ct)
            },
        )?;
        Ok(match served {
            Served::Here(pt) | Served::Worker(pt) => pt,
        })
    }

    /// Straight into the caller's buffer on an inline member (no copy); copied from a
    /// worker's answer otherwise.
    fn gcm_encrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let served = self.inner.run_read(
            Some(key.0),
            |b, mk| b.gcm_encrypt_into(mk, iv, aad, plaintext, out),
            || {
                let (iv, aad) = (iv.to_vec(), aad.to_vec());
                let pt = SecretBytes::new(plaintext.to_vec());
                move |b: &dyn Backend, mk| b.gcm_encrypt(mk, &iv, &aad, &pt)
            },
        )?;
        match served {
            Served::Here(n) => Ok(n),
            Served::Worker(ct) => crate::backend::copy_out(&ct, out),
        }
    }

    /// As [`Backend::gcm_encrypt_into`] above. A member that fails after writing part of
    /// `out` leaves it to be overwritten by the next member, or wiped by the caller.
    fn gcm_decrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let served = self.inner.run_read(
            Some(key.0),
            |b, mk| b.gcm_decrypt_into(mk, iv, aad, ciphertext_and_tag, out),
            || {
                let (iv, aad, ct) = (iv.to_vec(), aad.to_vec(), ciphertext_and_tag.to_vec());
                move |b: &dyn Backend, mk| b.gcm_decrypt(mk, &iv, &aad, &ct)
            },
        )?;
        match served {
            Served::Here(n) => Ok(n),
            Served::Worker(pt) => crate::backend::copy_out(&pt, out),
        }
    }

    /// A group takes caller IVs only if every member it has opened does (members of one group
    /// are the same kind of HSM; a mixed group must not encrypt with a caller IV anywhere).
    fn accepts_caller_iv(&self) -> bool {
        self.inner
            .members
            .iter()
            .filter_map(|m| m.backend())
            .all(|b| b.accepts_caller_iv())
    }

    /// The member that serves the call generates the IV; a call retried on another member
    /// generates a new one there, and the caller gets the IV of the encryption that answered.
    fn gcm_encrypt_generated_iv(
        &self,
        key: BackendKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<crate::backend::GeneratedIvEncryption> {
        let served = self.inner.run_read(
            Some(key.0),
            |b, mk| b.gcm_encrypt_generated_iv(mk, aad, plaintext),
            || {
                let aad = aad.to_vec();
                let pt = SecretBytes::new(plaintext.to_vec());
                move |b: &dyn Backend, mk| b.gcm_encrypt_generated_iv(mk, &aad, &pt)
            },
        )?;
        Ok(match served {
            Served::Here(e) | Served::Worker(e) => e,
        })
    }

    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        let len = out.len();
        let served = self.inner.run_read(
            None,
            |b, _| b.generate_random(out),
            || {
                move |b: &dyn Backend, _| {
                    let mut buf = Zeroizing::new(vec![0u8; len]);
                    b.generate_random(&mut buf)?;
                    Ok(buf)
                }
            },
        )?;
        if let Served::Worker(bytes) = served {
            out.copy_from_slice(&bytes);
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.inner.stop();
        if let Some(h) = self.probe.lock().take() {
            let _ = h.join();
        }
        // Backends opened at start-up belong to the module, which shuts them down; the ones
        // the probe opened later are ours.
        for m in self.inner.members.iter().filter(|m| m.opened_late()) {
            if let Some(b) = m.backend() {
                b.shutdown();
            }
        }
    }

    fn member_status(&self) -> Vec<MemberStatus> {
        self.status()
    }
}
