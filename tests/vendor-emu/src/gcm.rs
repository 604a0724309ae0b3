//! The GCM IV rules of each mode, as pure functions: what an encryption's IV parameter gets
//! (forwarded, refused, or replaced by a generated IV) and how long the output becomes.

use crate::mode::{GcmIv, GENERATED_IV_LEN};

/// What `C_EncryptInit(CKM_AES_GCM)` does with the caller's IV parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvDecision {
    /// Pass the caller's parameters to SoftHSM2 unchanged.
    Forward,
    /// `CKR_MECHANISM_PARAM_INVALID`: the vendor refuses this IV for encryption.
    Refuse,
    /// Generate the IV (SoftHSM2's `C_GenerateRandom`) and encrypt with it; the mode says
    /// where the caller gets it.
    Generate,
}

/// The decision for an encryption IV. `iv` is `None` when `pIv` is NULL, else the
/// `ulIvLen` bytes it points to; `iv_len` is `ulIvLen`.
pub fn encrypt_iv(style: GcmIv, iv: Option<&[u8]>, iv_len: u64) -> IvDecision {
    match style {
        GcmIv::Caller => IvDecision::Forward,
        // Luna in FIPS mode: no IV from the caller (`ulIvLen` 0; `pIv` NULL, or whatever an
        // empty slice's pointer is: nothing is read through it).
        GcmIv::Appended => match iv_len {
            0 => IvDecision::Generate,
            _ => IvDecision::Refuse,
        },
        // CloudHSM / nShield: a buffer of exactly 12 zero bytes that receives the IV.
        GcmIv::WrittenBack => match iv {
            Some(bytes)
                if iv_len == GENERATED_IV_LEN as u64
                    && bytes.len() == GENERATED_IV_LEN
                    && bytes.iter().all(|b| *b == 0) =>
            {
                IvDecision::Generate
            }
            _ => IvDecision::Refuse,
        },
    }
}

/// Length of an appended-IV output whose SoftHSM2 part (ciphertext ‖ tag, or the final
/// part) is `inner` bytes.
pub fn appended_len(inner: u64) -> u64 {
    inner + GENERATED_IV_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: [u8; 12] = [0; 12];

    #[test]
    fn caller_iv_mode_forwards_everything() {
        for (iv, len) in [(None, 0), (Some(&[7u8; 12][..]), 12), (Some(&ZERO[..]), 12)] {
            assert_eq!(encrypt_iv(GcmIv::Caller, iv, len), IvDecision::Forward);
        }
    }

    #[test]
    fn appended_mode_takes_no_iv_only() {
        assert_eq!(encrypt_iv(GcmIv::Appended, None, 0), IvDecision::Generate);
        assert_eq!(encrypt_iv(GcmIv::Appended, None, 12), IvDecision::Refuse);
        assert_eq!(
            encrypt_iv(GcmIv::Appended, Some(&ZERO), 12),
            IvDecision::Refuse
        );
        // An empty slice (non-NULL pointer, length 0) is no IV either.
        assert_eq!(
            encrypt_iv(GcmIv::Appended, Some(&[]), 0),
            IvDecision::Generate
        );
    }

    #[test]
    fn written_back_mode_takes_twelve_zero_bytes_only() {
        assert_eq!(
            encrypt_iv(GcmIv::WrittenBack, Some(&ZERO), 12),
            IvDecision::Generate
        );
        let mut one = ZERO;
        one[11] = 1;
        assert_eq!(
            encrypt_iv(GcmIv::WrittenBack, Some(&one), 12),
            IvDecision::Refuse
        );
        assert_eq!(
            encrypt_iv(GcmIv::WrittenBack, Some(&[0; 16]), 16),
            IvDecision::Refuse
        );
        assert_eq!(encrypt_iv(GcmIv::WrittenBack, None, 0), IvDecision::Refuse);
    }

    #[test]
    fn appended_output_is_twelve_bytes_longer() {
        assert_eq!(appended_len(16), 28);
        assert_eq!(appended_len(0), 12);
    }
}
