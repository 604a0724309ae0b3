//! GCM IVs from the token's RNG, fetched in bulk: one C_GenerateRandom yields [`BATCH`] IVs,
//! so an Encrypt costs one HSM round trip less. Every IV is handed out exactly once (popped
//! from the batch), so none repeats within this process; across processes and batches they
//! are independent 96-bit random values from the HSM, as before. IVs are not secret.

use cryptoki::session::Session;
use parking_lot::Mutex;

use super::gcm::IV_LEN;
use super::HsmError;

/// IVs per C_GenerateRandom (768 bytes of randomness).
const BATCH: usize = 64;

/// Unused IVs.
#[derive(Default)]
pub(super) struct IvPool {
    ready: Mutex<Vec<[u8; IV_LEN]>>,
}

impl IvPool {
    /// One fresh IV; refills from the token on `s` (on the calling HSM worker thread,
    /// outside the lock, so other sessions are not held up) when the batch is used up.
    pub(super) fn next(&self, s: &Session) -> Result<[u8; IV_LEN], HsmError> {
        if let Some(iv) = self.ready.lock().pop() {
            return Ok(iv);
        }
        let mut bytes = [0u8; IV_LEN * BATCH];
        s.generate_random_slice(&mut bytes)
            .map_err(|e| HsmError::pkcs11("C_GenerateRandom", e))?;
        let mut batch = bytes.chunks_exact(IV_LEN).map(|c| {
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(c);
            iv
        });
        let first = batch.next().unwrap_or_default();
        self.ready.lock().extend(batch);
        Ok(first)
    }

    /// Drop every unused IV (after the token misbehaved, take nothing more from that batch).
    pub(super) fn clear(&self) {
        self.ready.lock().clear();
    }
}
