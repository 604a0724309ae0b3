//! AES-GCM encryption and decryption, single- and multi-part.

use super::*;

/// Set up an encryption or decryption.
pub(super) fn crypt_init(
    session: u64,
    mechanism: Mechanism,
    key: u64,
    encrypt: bool,
) -> CkResult<()> {
    let m = module()?;
    // One lock for both the slot and the "nothing active" check.
    let index = m.sessions.with(session, |sess| {
        if !matches!(sess.op, Operation::None) {
            return Err(Rv::OPERATION_ACTIVE);
        }
        Ok(sess.slot)
    })??;
    let s = &m.slots[index];
    let e = m.key(s, index, key, Rv::KEY_HANDLE_INVALID)?;
    policy::gcm_params(&mechanism)?;
    // Checked just above; moved, not cloned, so the IV and AAD are not copied again.
    let Mechanism::AesGcm(params) = mechanism else {
        return Err(Rv::MECHANISM_INVALID);
    };
    let op = CryptOp {
        label: e.label,
        key: e.key,
        params,
        buffered: None,
    };
    m.sessions.with(session, |sess| {
        // Checked again: another thread may have started an operation in between.
        if !matches!(sess.op, Operation::None) {
            return Err(Rv::OPERATION_ACTIVE);
        }
        sess.op = if encrypt {
            Operation::Encrypt(op)
        } else {
            Operation::Decrypt(op)
        };
        Ok(())
    })?
}

pub fn encrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, true)
}

pub fn decrypt_init(session: u64, mechanism: Mechanism, key: u64) -> CkResult<()> {
    crypt_init(session, mechanism, key, false)
}

/// Run `f` on the session's active operation; an error ends the operation, as PKCS#11 says
/// every failing encrypt/decrypt call does.
pub(super) fn with_op<T>(
    session: u64,
    encrypt: bool,
    f: impl FnOnce(&mut CryptOp) -> CkResult<T>,
) -> CkResult<T> {
    let m = module()?;
    // Straight to the session: no slot needed, so one lock (this runs for every length query).
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
}

/// End the active operation and run the backend call for it, outside every lock.
pub(super) fn finish<T>(
    session: u64,
    encrypt: bool,
    single_part: Option<&[u8]>,
    run: impl FnOnce(&SlotState, &CryptOp, &[u8]) -> CkResult<T>,
    out_len: impl Fn(&T) -> usize,
) -> CkResult<T> {
    let m = module()?;
    // One lock to read the slot and take the operation.
    let (index, op) = m.sessions.with(session, |sess| {
        let op = if encrypt {
            sess.take_encrypt()?
        } else {
            sess.take_decrypt()?
        };
        Ok((sess.slot, op))
    })??;
    let s = &m.slots[index];
    let data: &[u8] = match (single_part, &op.buffered) {
        (Some(_), Some(_)) => return Err(Rv::OPERATION_ACTIVE),
        (Some(d), None) => d,
        (None, Some(b)) => b,
        (None, None) => &[],
    };
    let result = run(s, &op, data);
    let bytes_out = result.as_ref().map(&out_len).unwrap_or(0);
    audit::record(
        Record {
            op: if encrypt { "encrypt" } else { "decrypt" },
            slot: &s.slot.label,
            key: &op.label,
            mechanism: "CKM_AES_GCM",
            bytes_in: data.len(),
            bytes_out,
        },
        result,
    )
}

pub(super) fn gcm_encrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Vec<u8>> {
    if data.len() > MAX_MULTIPART {
        return Err(Rv::DATA_LEN_RANGE);
    }
    s.slot
        .backend
        .gcm_encrypt(op.key, &op.params.iv, &op.params.aad, data)
}

pub(super) fn gcm_decrypt(s: &SlotState, op: &CryptOp, data: &[u8]) -> CkResult<Plaintext> {
    if data.len() < GCM_TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    if data.len() > MAX_MULTIPART + GCM_TAG_LEN {
        return Err(Rv::ENCRYPTED_DATA_LEN_RANGE);
    }
    s.slot
        .backend
        .gcm_decrypt(op.key, &op.params.iv, &op.params.aad, data)
}

pub fn encrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, true, |op| {
        if op.buffered.is_some() {
            return Err(Rv::OPERATION_ACTIVE);
        }
        if data_len > MAX_MULTIPART {
            return Err(Rv::DATA_LEN_RANGE);
        }
        Ok(data_len + GCM_TAG_LEN)
    })
}

pub fn encrypt(session: u64, data: &[u8]) -> CkResult<Vec<u8>> {
    finish(session, true, Some(data), gcm_encrypt, Vec::len)
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
    finish(session, true, None, gcm_encrypt, Vec::len)
}

pub fn decrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    with_op(session, false, |op| {
        if op.buffered.is_some() {
            return Err(Rv::OPERATION_ACTIVE);
        }
        data_len
            .checked_sub(GCM_TAG_LEN)
            .ok_or(Rv::ENCRYPTED_DATA_LEN_RANGE)
    })
}

pub fn decrypt(session: u64, data: &[u8]) -> CkResult<Plaintext> {
    finish(session, false, Some(data), gcm_decrypt, |p| p.len())
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
    finish(session, false, None, gcm_decrypt, |p| p.len())
}
