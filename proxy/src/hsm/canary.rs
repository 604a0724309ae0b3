//! The health check's canary key: found, and created only when the token answered that it is
//! not there.
//!
//! PKCS#11 has no "create if absent", so two proxies on one token may both find no canary and
//! both create one. The rule that keeps exactly one: the canary is the key with the lowest
//! `CKA_ID` among those carrying the label, and a proxy destroys a duplicate only if it
//! created that key itself (it remembers the IDs it gave) and it is not the lowest. So the
//! lowest is never destroyed, and every other one is destroyed by its own creator on its next
//! check (where the slot allows destruction; otherwise it stays unused, and that is logged).
//! Before creating, a proxy waits a random moment and looks again, which makes such a
//! race rare in the first place.

use std::time::Duration;

use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::keys::{ck, find_by_label, is_hyok_key, read_state, KeyState};
use super::{Hsm, HsmError, Usage};

/// Longest random wait before a creation (the look again that follows it is what avoids
/// most duplicates between proxies that start together).
const CREATE_JITTER_MS: u64 = 300;

impl Hsm {
    /// The canary key and its live state, or `None` when the token answered that no key
    /// carries the canary label. A token that does not answer is an error, never `None`.
    pub fn find_canary(&self, s: &Session) -> Result<Option<(ObjectHandle, KeyState)>, HsmError> {
        let label = &self.canary_label;
        let mut candidates = Vec::new();
        for h in find_by_label(s, label)? {
            if is_hyok_key(s, h)? {
                candidates.push((read_id(s, h)?, h));
            }
        }
        if candidates.is_empty() {
            self.token_answers()?;
            return Ok(None);
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        let (_, canary) = candidates[0];
        let ours = self.created_canaries.lock().clone();
        for (id, h) in &candidates[1..] {
            if ours.iter().any(|o| o == id) {
                // Tried once: a slot that forbids destruction (our module's default) keeps
                // the duplicate, which is harmless (the lowest CKA_ID stays the canary).
                self.created_canaries.lock().retain(|o| o != id);
                match s.destroy_object(*h) {
                    Ok(()) => {
                        tracing::warn!(key = %label, "destroyed the duplicate canary key this proxy created (another proxy created one at the same time)")
                    }
                    Err(e) => {
                        tracing::warn!(key = %label, error = %e, "another proxy created a canary key at the same time; this proxy's duplicate cannot be destroyed here (remove it by hand); the one with the lowest CKA_ID is used")
                    }
                }
            }
        }
        Ok(Some((canary, read_state(s, canary)?)))
    }

    /// Create the canary after a random wait, unless it appeared meanwhile (another proxy).
    /// True when this call created it.
    pub fn create_canary(&self, s: &Session) -> Result<bool, HsmError> {
        let mut r = [0u8; 2];
        getrandom::getrandom(&mut r).map_err(|e| HsmError::Other(format!("OS RNG: {e}")))?;
        let wait = u64::from(u16::from_le_bytes(r)) % CREATE_JITTER_MS;
        std::thread::sleep(Duration::from_millis(wait));
        if self.find_canary(s)?.is_some() {
            return Ok(false);
        }
        tracing::info!(key = %self.canary_label, "creating health-check canary key");
        let id = self.create_key(s, &self.canary_label, Usage::Both)?;
        self.created_canaries.lock().push(id.to_vec());
        Ok(true)
    }
}

/// A key's `CKA_ID` (empty when it has none).
fn read_id(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Id])
        .map_err(ck("C_GetAttributeValue"))?;
    Ok(attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .unwrap_or_default())
}
