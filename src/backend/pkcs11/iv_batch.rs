//! GCM IVs from the HSM's random number generator for a `caller`-mode backend, fetched in
//! batches: one `C_GenerateRandom` yields [`BATCH`] IVs, so an encryption with a generated IV
//! costs one library call more only once in [`BATCH`]. Every IV is handed out exactly once
//! (popped from the batch) and an IV whose encryption failed is never handed out again; they
//! are independent 96-bit random values from the HSM. A forked child drops what it inherited,
//! so parent and child never hand out the same IV. IVs are not secret.

use crate::backend::GENERATED_IV_LEN;
use crate::rv::CkResult;
use parking_lot::Mutex;

/// IVs per `C_GenerateRandom` (768 bytes).
const BATCH: usize = 64;

type Iv = [u8; GENERATED_IV_LEN];

/// Unused IVs, and the process they belong to.
#[derive(Default)]
pub(crate) struct IvBatch {
    ready: Mutex<(u32, Vec<Iv>)>,
}

impl std::fmt::Debug for IvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IvBatch")
    }
}

impl IvBatch {
    /// One fresh IV; refills with `fill` (the HSM's RNG, called with no lock held) when the
    /// batch is used up.
    pub(crate) fn next(&self, fill: impl FnOnce(&mut [u8]) -> CkResult<()>) -> CkResult<Iv> {
        let pid = std::process::id();
        {
            let mut ready = self.ready.lock();
            if ready.0 != pid {
                *ready = (pid, Vec::new());
            }
            if let Some(iv) = ready.1.pop() {
                return Ok(iv);
            }
        }
        let mut bytes = [0u8; GENERATED_IV_LEN * BATCH];
        fill(&mut bytes)?;
        let mut batch = bytes.chunks_exact(GENERATED_IV_LEN).map(|c| {
            let mut iv = [0u8; GENERATED_IV_LEN];
            iv.copy_from_slice(c);
            iv
        });
        let first = batch.next().unwrap_or_default();
        let mut ready = self.ready.lock();
        if ready.0 == pid {
            ready.1.extend(batch);
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rv::Rv;
    use std::collections::HashSet;

    #[test]
    fn each_iv_once_and_one_fill_per_batch() {
        let b = IvBatch::default();
        let mut fills = 0u8;
        let mut seen = HashSet::new();
        for _ in 0..BATCH * 3 {
            let iv = b
                .next(|buf| {
                    fills += 1;
                    for (i, x) in buf.iter_mut().enumerate() {
                        *x = (i / GENERATED_IV_LEN) as u8 ^ fills.wrapping_mul(101);
                    }
                    Ok(())
                })
                .unwrap();
            assert!(seen.insert(iv));
        }
        assert_eq!(fills, 3);
        assert_eq!(b.next(|_| Err(Rv::DEVICE_ERROR)), Err(Rv::DEVICE_ERROR));
    }
}
