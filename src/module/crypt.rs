//! AES-GCM encryption and decryption, single- and multi-part.

use super::*;
use crate::secret::SecretBytes;
use crate::session::{IvWriteBack, KeyLabel};

/// Set up an encryption or decryption.
///
/// One session lock for the whole check-and-install (the key lookup runs inside it: the
/// object table never takes a session lock, so the order session -> objects cannot deadlock),
/// under the state's read lock: this runs twice per round trip and calls no backend.
///
/// An encryption on a backend whose HSM generates IVs (`accepts_caller_iv` false) takes no
/// caller IV: only the zero-IV convention (`iv_write_back`, made by the boundary for a 12-byte
/// all-zero IV) is accepted, and the IV the token generates is written back into the
/// caller's `pIv` when the encryption has run. Elsewhere the caller's IV (zeros included) is
/// used as given; `iv_write_back` is kept for the case [`encrypt_into`] describes (a backend
/// that turns out to generate IVs when the encryption runs).
pub(super) fn crypt_init(
    session: u64,
    mechanism: Mechanism,
    key: u64,
    encrypt: bool,
    iv_write_back: Option<IvWriteBack>,
) -> CkResult<()> {
    with_module(|m| {
        m.sessions.with(session, |sess| {
            if !matches!(sess.op, Operation::None) {
                return Err(Rv::OPERATION_ACTIVE);
            }
            let index = sess.slot;
            let (key, key_name, label) =
                m.with_key(&m.slots[index], index, key, Rv::KEY_HANDLE_INVALID, |e| {
                    // The label's bytes only when it has no number (the name table is full).
                    let label = match e.audit_name {
                        Some(_) => KeyLabel::new(),
                        None => KeyLabel::from_slice(&e.label),
                    };
                    (e.key, e.audit_name, label)
                })?;
            policy::gcm_params(&mechanism)?;
            // Checked just above; moved, not cloned, so the IV and AAD are not copied again.
            let Mechanism::AesGcm(params) = mechanism else {
                return Err(Rv::MECHANISM_INVALID);
            };
            let slot = &m.slots[index].slot;
            let iv_write_back = match iv_write_back {
                _ if !encrypt => None,
                Some(write_back) => Some(write_back),
                None if slot.backend.accepts_caller_iv() => None,
                None => {
                    log::warn!(
                        "slot {:?}: C_EncryptInit(CKM_AES_GCM) with a caller IV refused: this slot's HSM generates encryption IVs itself. Use C_MessageEncryptInit/C_EncryptMessage with ivGenerator = CKG_GENERATE_RANDOM, or pass a 12-byte all-zero IV to get the generated IV written back into pIv",
                        slot.label
                    );
                    return Err(Rv::MECHANISM_PARAM_INVALID);
                }
            };
            let op = CryptOp {
                key_name,
                label,
                key,
                params,
                buffered: None,
                iv_write_back,
            };
            sess.op = if encrypt {
                Operation::Encrypt(op)
            } else {
                Operation::Decrypt(op)
            };
            Ok(())
        })?
    })
}

pub fn encrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, true, None)
}

pub fn encrypt_init_zero_iv(
    session: u64,
    mechanism: Mechanism,
    key: u64,
    iv_write_back: IvWriteBack,
) -> CkResult<()> {
    crypt_init(session, mechanism, key, true, Some(iv_write_back))
}

pub fn decrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, false, None)
}

/// Run `f` on the session's active operation; an error ends the operation, as PKCS#11 says
/// every failing encrypt/decrypt call does.
pub(super) fn with_op<T>(
    session: u64,
    encrypt: bool,
    f: impl FnOnce(&mut CryptOp) -> CkResult<T>,
) -> CkResult<T> {
    // Straight to the session: no slot needed, so one lock (this runs for every length query).
    with_module(|m| {
        m.sessions.with(session, |sess| {
            let op = if encrypt {
                sess.encrypt_op()?
            } else {
                sess.decrypt_op()?
            };
            let result = f(op);
            if result.is_err() {
                sess.op = Operation::None;
            }
            result
        })?
    })
}

/// What the output of a single-part call needs, decided under the session lock before the
/// operation is taken: the caller's capacity and the rule for the needed length.
pub(super) struct SinglePartOutput {
    capacity: usize,
    needed: fn(&CryptOp, usize) -> CkResult<usize>,
}

/// End the active operation and run the backend call for it, outside every lock.
///
/// With `output` (single-part `C_Encrypt`/`C_Decrypt` with a buffer), the needed length is
/// checked in the same session lock that takes the operation: a buffer that is too small
/// answers [`SinglePart::TooSmall`] and leaves the operation active, as the two-call
/// convention wants, without a second lookup for the length.
pub(super) fn finish<T>(
    session: u64,
    encrypt: bool,
    single_part: Option<(&[u8], SinglePartOutput)>,
    run: impl FnOnce(&SlotState, &CryptOp, &[u8]) -> CkResult<T>,
    out_len: impl Fn(&T) -> usize,
) -> CkResult<SinglePart<T>> {
    let m = module()?;
    // One lock to check the length, read the slot and take the operation.
    let taken = m.sessions.with(session, |sess| {
        if let Some((data, output)) = &single_part {
            let op = if encrypt {
                sess.encrypt_op()?
            } else {
                sess.decrypt_op()?
            };
            match (output.needed)(op, data.len()) {
                Ok(n) if n > output.capacity => return Ok(Err(n)),
                Ok(_) => {}
                Err(rv) => {
                    // A failing call ends the operation (as `with_op` does).
                    sess.op = Operation::None;
                    return Err(rv);
                }
            }
        }
        let op = if encrypt {
            sess.take_encrypt()?
        } else {
            sess.take_decrypt()?
        };
        Ok(Ok((sess.slot, op)))
    })??;
    let (index, op) = match taken {
        Ok(t) => t,
        Err(needed) => return Ok(SinglePart::TooSmall(needed)),
    };
    let s = &m.slots[index];
    // Fail closed: no key use without its record (the operation has ended, as any failing
    // C_Encrypt/C_Decrypt ends it).
    audit::health::gate()?;
    let data: &[u8] = match (single_part.as_ref().map(|(d, _)| *d), &op.buffered) {
        (Some(_), Some(_)) => return Err(Rv::OPERATION_ACTIVE),
        (Some(d), None) => d,
        (None, Some(b)) => b,
        (None, None) => &[],
    };
    let result = run(s, &op, data);
    let bytes_out = result.as_ref().map(&out_len).unwrap_or(0);
    audit::record_crypt(
        audit::CryptRecord {
            encrypt,
            slot: &s.slot.label,
            slot_name: s.audit_name,
            key: &op.label,
            key_name: op.key_name,
            bytes_in: data.len(),
            bytes_out,
        },
        result,
    )
    .map(SinglePart::Done)
}

/// The encryption of a multi-part operation's buffered data (`C_EncryptFinal`): the
/// single-part path into a buffer of its own.
pub(super) fn gcm_encrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Vec<u8>> {
    crate::backend::encrypt_owned(data.len(), |out| encrypt_into(s, op, data, out))
}

/// The decryption of a multi-part operation's buffered data (`C_DecryptFinal`): the
/// single-part path into a wiped-on-drop buffer with room for the whole input.
pub(super) fn gcm_decrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Plaintext> {
    crate::backend::decrypt_owned(data.len(), |out| decrypt_into(s, op, data, out))
}

/// Output length of a single-part encryption of `data_len` bytes.
fn encrypt_needed(op: &CryptOp, data_len: usize) -> CkResult<usize> {
    if op.buffered.is_some() {
        return Err(Rv::OPERATION_ACTIVE);
    }
    if data_len > MAX_MULTIPART {
        return Err(Rv::DATA_LEN_RANGE);
    }
    Ok(data_len + GCM_TAG_LEN)
}

/// Output length (upper bound) of a single-part decryption of `data_len` bytes.
fn decrypt_needed(op: &CryptOp, data_len: usize) -> CkResult<usize> {
    if op.buffered.is_some() {
        return Err(Rv::OPERATION_ACTIVE);
    }
    data_len
        .checked_sub(GCM_TAG_LEN)
        .ok_or(Rv::ENCRYPTED_DATA_LEN_RANGE)
}

pub fn encrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, true, |op| encrypt_needed(op, data_len))
}

pub fn encrypt(session: u64, data: &[u8], out: &mut [u8]) -> CkResult<SinglePart<usize>> {
    let output = SinglePartOutput {
        capacity: out.len(),
        needed: encrypt_needed,
    };
    let run = |s: &SlotState, op: &CryptOp, data: &[u8]| encrypt_into(s, op, data, out);
    finish(session, true, Some((data, output)), run, |n| *n)
}

/// Single-part encryption straight into the caller's buffer (`out` holds at least
/// `data.len() + 16` bytes: `finish` checked the needed length first).
///
/// A zero IV (`iv_write_back` set) on a backend that takes caller IVs is used as given; if the
/// HSM refuses it with `CKR_MECHANISM_PARAM_INVALID` and that refusal taught the backend that
/// it generates IVs (`auto` on a Luna in FIPS mode, `iv_mode.rs`), nothing was encrypted and
/// the same call runs under the zero-IV convention, as every later one will: the caller's
/// first zero-IV encryption is not the one that fails.
fn encrypt_into(s: &SlotState, op: &CryptOp, data: &[u8], out: &mut [u8]) -> CkResult<usize> {
    if data.len() > MAX_MULTIPART {
        return Err(Rv::DATA_LEN_RANGE);
    }
    let out = out
        .get_mut(..data.len() + GCM_TAG_LEN)
        .ok_or(Rv::GENERAL_ERROR)?;
    let backend = &s.slot.backend;
    let write_back = match &op.iv_write_back {
        Some(write_back) if !backend.accepts_caller_iv() => write_back,
        zero_iv => {
            let result = backend.gcm_encrypt_into(op.key, &op.params.iv, &op.params.aad, data, out);
            match (result, zero_iv) {
                (Err(Rv::MECHANISM_PARAM_INVALID), Some(write_back))
                    if !backend.accepts_caller_iv() =>
                {
                    write_back
                }
                (result, _) => return result,
            }
        }
    };
    let generated = backend.gcm_encrypt_generated_iv(op.key, &op.params.aad, data)?;
    if generated.iv.len() != op.params.iv.len() {
        log::error!(
            "slot {:?}: the token generated a {}-byte IV for a {}-byte pIv",
            s.slot.label,
            generated.iv.len(),
            op.params.iv.len()
        );
        return Err(Rv::FUNCTION_FAILED);
    }
    write_back(&generated.iv)?;
    crate::backend::copy_out(&generated.ciphertext_and_tag, out)
}

/// Plaintexts up to this long are decrypted into a scratch buffer on the stack when the
/// caller's buffer is too short for the backend (no allocation for the common small request).
const STACK_SCRATCH: usize = 512;

/// Single-part decryption into the caller's `out` (at least the plaintext length: `finish`
/// checked). The backend wants room for the whole input (SoftHSM2 does): when `out` has it,
/// the plaintext goes there directly; otherwise through a scratch buffer that is wiped after
/// the copy. On failure nothing the backend wrote is left in `out` or the scratch buffer.
fn decrypt_into(s: &SlotState, op: &CryptOp, data: &[u8], out: &mut [u8]) -> CkResult<usize> {
    if data.len() < GCM_TAG_LEN || data.len() > MAX_MULTIPART + GCM_TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    let backend = &s.slot.backend;
    let decrypt = |room: &mut [u8]| {
        let result = backend.gcm_decrypt_into(op.key, &op.params.iv, &op.params.aad, data, room);
        if result.is_err() {
            // A library may have written unverified plaintext before failing.
            crate::secret::wipe_slice(room);
        }
        result
    };
    if let Some(room) = out.get_mut(..data.len()) {
        return decrypt(room);
    }
    let mut stack = [0u8; STACK_SCRATCH];
    let mut heap = SecretBytes::default();
    let room = match stack.get_mut(..data.len()) {
        Some(room) => room,
        None => {
            heap.resize(data.len(), 0);
            &mut heap[..]
        }
    };
    let result = decrypt(room).and_then(|n| crate::backend::copy_out(&room[..n], out));
    crate::secret::wipe_slice(room);
    if result.is_err() {
        crate::secret::wipe_slice(out);
    }
    result
}

pub fn encrypt_update(session: u64, part: &[u8]) -> CkResult<Vec<u8>> {
    with_op(session, true, |op| op.buffer(part, Rv::DATA_LEN_RANGE))?;
    Ok(Vec::new())
}

pub fn encrypt_update_len(session: u64, _part_len: usize) -> CkResult<usize> {
    with_op(session, true, |_| Ok(0))
}

pub fn encrypt_final_len(session: u64) -> CkResult<usize> {
    with_op(session, true, |op| Ok(op.buffered_len() + GCM_TAG_LEN))
}

pub fn encrypt_final(session: u64) -> CkResult<Vec<u8>> {
    finish(session, true, None, gcm_encrypt, Vec::len).and_then(SinglePart::done)
}

/// The length query of a single-part decryption answers the input length: an upper bound
/// (PKCS#11 5.2 allows the answer to "somewhat exceed" the output, by 16 bytes here, as
/// SoftHSM2's own answer does), so that a caller sizing its buffer by it gives the backend the
/// room it wants and the plaintext goes there directly, with no scratch copy. The minimum,
/// `data_len - 16`, is what `C_Decrypt` checks and reports with `CKR_BUFFER_TOO_SMALL`.
pub fn decrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, false, |op| {
        decrypt_needed(op, data_len)?;
        Ok(data_len)
    })
}

pub fn decrypt(session: u64, data: &[u8], out: &mut [u8]) -> CkResult<SinglePart<usize>> {
    let output = SinglePartOutput {
        capacity: out.len(),
        needed: decrypt_needed,
    };
    let run = |s: &SlotState, op: &CryptOp, data: &[u8]| decrypt_into(s, op, data, out);
    finish(session, false, Some((data, output)), run, |n| *n)
}

pub fn decrypt_update(session: u64, part: &[u8]) -> CkResult<Plaintext> {
    with_op(session, false, |op| {
        op.buffer(part, Rv::ENCRYPTED_DATA_LEN_RANGE)
    })?;
    Ok(no_plaintext())
}

pub fn decrypt_update_len(session: u64, _part_len: usize) -> CkResult<usize> {
    with_op(session, false, |_| Ok(0))
}

pub fn decrypt_final_len(session: u64) -> CkResult<usize> {
    with_op(session, false, |op| {
        op.buffered_len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or(Rv::ENCRYPTED_DATA_LEN_RANGE)
    })
}

pub fn decrypt_final(session: u64) -> CkResult<Plaintext> {
    finish(session, false, None, gcm_decrypt, |p| p.len()).and_then(SinglePart::done)
}
