//! Where encryption IVs come from ([`IvPath`]), and, for modules without the PKCS#11 3.0
//! message API, GCM IVs from the token's RNG, fetched in bulk: one C_GenerateRandom yields [`BATCH`] IVs,
//! so an Encrypt costs one HSM round trip less. Every IV is handed out exactly once (popped
//! from the batch), so none repeats within this process; across processes and batches they
//! are independent 96-bit random values from the HSM, as before. IVs are not secret.

use cryptoki::context::{Function, Pkcs11};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use parking_lot::Mutex;

use super::gcm::IV_LEN;
use super::HsmError;

/// How the proxy gets the IV of an Encrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvPath {
    /// The token generates it: PKCS#11 3.0 `C_EncryptMessage` with `CKG_GENERATE_RANDOM`
    /// (our module always offers it, whatever HSM is behind it).
    TokenGenerated,
    /// 12 bytes from the token's `C_GenerateRandom`, passed as the caller IV of `C_Encrypt`
    /// (vendor libraries loaded directly that lack the 3.0 message functions).
    HsmRandom,
}

impl IvPath {
    /// The path the module at `ctx` supports on `slot`: the message API when it offers
    /// `C_MessageEncryptInit`/`C_EncryptMessage`/`C_MessageEncryptFinal` and
    /// `CKF_MESSAGE_ENCRYPT` for `CKM_AES_GCM`.
    pub fn of(ctx: &Pkcs11, slot: Slot) -> IvPath {
        let functions = [
            Function::MessageEncryptInit,
            Function::EncryptMessage,
            Function::MessageEncryptFinal,
        ];
        let offered = functions.iter().all(|f| ctx.is_fn_supported(*f))
            && ctx
                .get_mechanism_info(slot, MechanismType::AES_GCM)
                .is_ok_and(|i| i.message_encrypt());
        if offered {
            IvPath::TokenGenerated
        } else {
            IvPath::HsmRandom
        }
    }

    /// For logs and `xki-proxy health`.
    pub fn describe(self) -> &'static str {
        match self {
            IvPath::TokenGenerated => {
                "token-generated (PKCS#11 3.0 C_EncryptMessage, CKG_GENERATE_RANDOM)"
            }
            IvPath::HsmRandom => {
                "HSM RNG (C_GenerateRandom, caller IV to C_Encrypt; the module has no 3.0 message API)"
            }
        }
    }
}

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
