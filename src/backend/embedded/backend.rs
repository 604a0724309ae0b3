//! The [`Backend`] verbs of the embedded token.

use super::gcm::GcmKey;
use super::records::{KeyRecord, MAX_ATTR_LEN};
use super::store::hex;
use super::{EmbeddedBackend, KeyEntry};
use crate::backend::{
    Backend, BackendKey, KeyChanges, KeyInfo, MechanismInfo, NewKey, TokenDescription,
};
use crate::rv::{CkResult, Rv};
use crate::secret::SecretBytes;
use pkcs11_sys::{CKF_DECRYPT, CKF_ENCRYPT, CKF_GENERATE, CKM_AES_GCM, CKM_AES_KEY_GEN};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The public attributes of a record, exactly as this token keeps keys: always a local,
/// sensitive, never-extractable AES token object that only encrypts/decrypts.
fn key_info(r: &KeyRecord) -> KeyInfo {
    KeyInfo {
        encrypt: r.encrypt,
        decrypt: r.decrypt,
        start_date: r.start_date.clone(),
        end_date: r.end_date.clone(),
        ..KeyInfo::generated_aes(
            BackendKey(r.record),
            r.id.clone(),
            r.label.clone(),
            r.value.len() as u64,
        )
    }
}

/// A `CK_DATE` value: empty, or 8 ASCII digits.
fn check_date(d: &[u8]) -> CkResult<()> {
    if d.is_empty() || (d.len() == 8 && d.iter().all(u8::is_ascii_digit)) {
        Ok(())
    } else {
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    }
}

fn check_attr_len(v: &[u8]) -> CkResult<()> {
    if v.len() <= MAX_ATTR_LEN {
        Ok(())
    } else {
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    }
}

impl EmbeddedBackend {
    /// The key for a crypto call. From memory, which is compared with the store at most every
    /// `RECHECK_MS` (another process's disable reaches this one's crypto path that fast), and
    /// re-read on a miss: a key another process just generated is found instead of failing.
    fn crypto_key(&self, key: BackendKey) -> CkResult<Arc<KeyEntry>> {
        self.recheck_now_and_then();
        if let Some(e) = self.cached(key.0) {
            return Ok(e);
        }
        self.fresh(key.0)?.ok_or(Rv::KEY_HANDLE_INVALID)
    }
}

impl Backend for EmbeddedBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> CkResult<TokenDescription> {
        Ok(TokenDescription {
            manufacturer: "xki-bridge".into(),
            model: "embedded (dev)".into(),
            serial: hex(&self.identity.token_id[..8]),
            hardware_version: (0, 0),
            firmware_version: (0, 1),
        })
    }

    fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo> {
        let (min, max) = (GcmKey::KEY_LENS[0] as u64, GcmKey::KEY_LENS[2] as u64);
        match mechanism {
            m if m == CKM_AES_GCM => Ok(MechanismInfo {
                min_key_size: min,
                max_key_size: max,
                flags: (CKF_ENCRYPT | CKF_DECRYPT),
            }),
            m if m == CKM_AES_KEY_GEN => Ok(MechanismInfo {
                min_key_size: min,
                max_key_size: max,
                flags: CKF_GENERATE,
            }),
            _ => Err(Rv::MECHANISM_INVALID),
        }
    }

    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        self.refresh_if_changed()?;
        let state = self.state.read();
        let mut keys: Vec<KeyInfo> = state.keys.values().map(|e| key_info(&e.record)).collect();
        keys.sort_by_key(|k| k.handle.0);
        Ok(keys)
    }

    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
        let entry = self.fresh(key.0)?.ok_or(Rv::OBJECT_HANDLE_INVALID)?;
        Ok(key_info(&entry.record))
    }

    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
        let len = usize::try_from(spec.value_len).map_err(|_| Rv::KEY_SIZE_RANGE)?;
        if !GcmKey::KEY_LENS.contains(&len) {
            return Err(Rv::KEY_SIZE_RANGE);
        }
        check_attr_len(&spec.id)?;
        check_attr_len(&spec.label)?;
        let mut value = Zeroizing::new(vec![0u8; len]);
        getrandom::getrandom(&mut value).map_err(|_| Rv::DEVICE_ERROR)?;
        let info = self.mutate(|contents| {
            let record = KeyRecord {
                record: contents.next_record,
                id: spec.id.clone(),
                label: spec.label.clone(),
                value,
                encrypt: spec.encrypt,
                decrypt: spec.decrypt,
                start_date: Vec::new(),
                end_date: Vec::new(),
                state: Vec::new(),
            };
            contents.next_record += 1;
            let info = key_info(&record);
            contents.keys.push(record);
            Ok(info)
        })?;
        log::debug!(
            "embedded token {}: generated AES-{} key, record {}",
            self.name,
            len * 8,
            info.handle.0
        );
        Ok(info)
    }

    fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()> {
        if let Some(label) = &changes.label {
            check_attr_len(label)?;
        }
        for date in [&changes.start_date, &changes.end_date]
            .into_iter()
            .flatten()
        {
            check_date(date)?;
        }
        self.mutate(|contents| {
            let r = contents
                .keys
                .iter_mut()
                .find(|r| r.record == key.0)
                .ok_or(Rv::OBJECT_HANDLE_INVALID)?;
            if let Some(v) = &changes.label {
                r.label = v.clone();
            }
            if let Some(v) = changes.encrypt {
                r.encrypt = v;
            }
            if let Some(v) = changes.decrypt {
                r.decrypt = v;
            }
            if let Some(v) = &changes.start_date {
                r.start_date = v.clone();
            }
            if let Some(v) = &changes.end_date {
                r.end_date = v.clone();
            }
            Ok(())
        })
    }

    fn key_state(&self, key: BackendKey) -> CkResult<Option<Vec<u8>>> {
        let entry = self.fresh(key.0)?.ok_or(Rv::OBJECT_HANDLE_INVALID)?;
        let state = &entry.record.state;
        Ok((!state.is_empty()).then(|| state.clone()))
    }

    fn set_key_state(&self, key: BackendKey, record: &[u8]) -> CkResult<()> {
        // One byte of length in the record encoding; the module's records are ~36 bytes.
        if record.is_empty() || record.len() > usize::from(u8::MAX) {
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
        self.mutate(|contents| {
            let r = contents
                .keys
                .iter_mut()
                .find(|r| r.record == key.0)
                .ok_or(Rv::OBJECT_HANDLE_INVALID)?;
            r.state = record.to_vec();
            Ok(())
        })
    }

    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        // The key-state record is part of the key's record: it goes with it.
        self.mutate(|contents| {
            let before = contents.keys.len();
            contents.keys.retain(|r| r.record != key.0);
            if contents.keys.len() == before {
                return Err(Rv::OBJECT_HANDLE_INVALID);
            }
            Ok(())
        })?;
        log::debug!("embedded token {}: destroyed record {}", self.name, key.0);
        Ok(())
    }

    fn gcm_encrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> CkResult<Vec<u8>> {
        crate::backend::encrypt_owned(plaintext.len(), |out| {
            self.gcm_encrypt_into(key, iv, aad, plaintext, out)
        })
    }

    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> CkResult<SecretBytes> {
        crate::backend::decrypt_owned(ciphertext_and_tag.len(), |out| {
            self.gcm_decrypt_into(key, iv, aad, ciphertext_and_tag, out)
        })
    }

    fn gcm_encrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let entry = self.crypto_key(key)?;
        if !entry.record.encrypt {
            return Err(Rv::KEY_FUNCTION_NOT_PERMITTED);
        }
        entry.cipher.encrypt_into(iv, aad, plaintext, out)
    }

    fn gcm_decrypt_into(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut [u8],
    ) -> CkResult<usize> {
        let entry = self.crypto_key(key)?;
        if !entry.record.decrypt {
            return Err(Rv::KEY_FUNCTION_NOT_PERMITTED);
        }
        entry.cipher.decrypt_into(iv, aad, ciphertext_and_tag, out)
    }

    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        getrandom::getrandom(out).map_err(|_| Rv::DEVICE_ERROR)
    }

    /// Reads and crypto are this process's code over the in-memory image, plus a `stat` (and
    /// on a change, a read) of the store file; they never take the store's inter-process lock,
    /// which only changes (`mutate`) wait for. A store on a network file system that can stall
    /// should set `inline_calls = false`.
    fn reads_cannot_hang(&self) -> bool {
        true
    }

    fn shutdown(&self) {
        // Dropping the entries wipes key bytes (Zeroizing) and cipher state (zeroize features).
        let mut state = self.state.write();
        state.keys.clear();
        state.stamp = None;
        drop(state);
        self.sealing.forget();
    }
}
