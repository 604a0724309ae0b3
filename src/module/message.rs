//! PKCS#11 3.0 message-based AES-GCM (`C_MessageEncryptInit` .. `C_MessageDecryptFinal`,
//! PKCS#11 3.0 §5.13 and §5.15) over the backends' single-part calls.
//!
//! A process (`*Init` .. `*Final`) holds the key; each message is one backend operation. An
//! encryption with `CKG_GENERATE_RANDOM` gets its IV from inside the backend's token
//! ([`crate::backend::Backend::gcm_encrypt_generated_iv`]: the HSM's own IV generation, or
//! its random number generator). `*MessageBegin`/`*MessageNext` buffer the message and run it
//! at the part flagged `CKF_END_OF_MESSAGE`: nothing, plaintext or ciphertext, is released
//! before then, and the IV and tag are returned at that last part.
//!
//! A failing message ends that message, never the process (only `*Final` does); the
//! two-call convention (a length query, `CKR_BUFFER_TOO_SMALL`) consumes nothing.

use super::*;
use crate::mechanism::{Aad, GcmMessageParams, MessageEncryption};
use crate::policy::MessageIv;
use crate::secret::SecretBytes;
use crate::session::{KeyLabel, MessageOp, PendingMessage};

/// `CK_GCM_MESSAGE_PARAMS` is what cryptoki and other 3.0 callers pass to `*Init` too (the
/// specification leaves the init parameter to the mechanism); it is not used there.
const MESSAGE_PARAMS_LEN: u64 = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as u64;

/// `C_MessageEncryptInit` / `C_MessageDecryptInit`: `CKM_AES_GCM`, with no parameter or a
/// `CK_GCM_MESSAGE_PARAMS` (ignored: each message brings its own).
pub fn message_init(
    session: u64,
    mechanism: u64,
    param_len: u64,
    key: u64,
    encrypt: bool,
) -> CkResult<()> {
    if mechanism != CKM_AES_GCM {
        return Err(Rv::MECHANISM_INVALID);
    }
    if param_len != 0 && param_len != MESSAGE_PARAMS_LEN {
        return Err(Rv::MECHANISM_PARAM_INVALID);
    }
    with_module(|m| {
        m.sessions.with(session, |sess| {
            if !matches!(sess.op, Operation::None) {
                return Err(Rv::OPERATION_ACTIVE);
            }
            let index = sess.slot;
            let (key, key_name, label) =
                m.with_key(&m.slots[index], index, key, Rv::KEY_HANDLE_INVALID, |e| {
                    let label = match e.audit_name {
                        Some(_) => KeyLabel::new(),
                        None => KeyLabel::from_slice(&e.label),
                    };
                    (e.key, e.audit_name, label)
                })?;
            let op = MessageOp {
                key_name,
                label,
                key,
                pending: None,
            };
            sess.op = if encrypt {
                Operation::MessageEncrypt(op)
            } else {
                Operation::MessageDecrypt(op)
            };
            Ok(())
        })?
    })
}

/// `C_MessageEncryptFinal` / `C_MessageDecryptFinal`: ends the process (and any message
/// begun and not finished).
pub fn message_final(session: u64, encrypt: bool) -> CkResult<()> {
    let ended = with_module(|m| {
        m.sessions.with(session, |sess| {
            sess.message_op(encrypt)?;
            Ok(std::mem::take(&mut sess.op))
        })?
    })?;
    // Dropped outside the session lock (it may hold a buffered message).
    drop(ended);
    Ok(())
}

/// The output length of one message of `input_len` bytes (ciphertext and plaintext are the
/// same length in GCM: the tag travels in the parameters), checking that a process is active
/// and, for a whole message, that none was begun.
pub fn message_len(session: u64, encrypt: bool, input_len: usize) -> CkResult<usize> {
    with_module(|m| {
        m.sessions.with(session, |sess| {
            let op = sess.message_op(encrypt)?;
            if op.pending.is_some() {
                return Err(Rv::OPERATION_ACTIVE);
            }
            Ok(input_len)
        })?
    })
}

/// The key of the active process, checked for a new message: (slot, key, audit names).
struct MessageKey {
    slot: usize,
    key: crate::backend::BackendKey,
    key_name: Option<crate::audit::names::NameId>,
    label: KeyLabel,
}

fn message_key(
    m: &Module,
    session: u64,
    encrypt: bool,
    begin: Option<PendingMessage>,
) -> CkResult<MessageKey> {
    m.sessions.with(session, |sess| {
        let slot = sess.slot;
        let op = sess.message_op(encrypt)?;
        if op.pending.is_some() {
            return Err(Rv::OPERATION_ACTIVE);
        }
        let found = MessageKey {
            slot,
            key: op.key,
            key_name: op.key_name,
            label: op.label.clone(),
        };
        op.pending = begin;
        Ok(found)
    })?
}

/// Check one message's parameters against the policy and the slot's backend; a refusal is
/// logged with why.
fn check_params(
    s: &SlotState,
    params: &GcmMessageParams,
    aad: &[u8],
    encrypt: bool,
) -> CkResult<MessageIv> {
    if aad.len() > crate::mechanism::GCM_MAX_AAD {
        return Err(Rv::MECHANISM_PARAM_INVALID);
    }
    let caller_iv_ok = !encrypt || s.slot.backend.accepts_caller_iv();
    policy::gcm_message_params(params, encrypt, caller_iv_ok).map_err(|(rv, why)| {
        log::warn!(
            "slot {:?}: message-based GCM {} refused: {why}",
            s.slot.label,
            if encrypt { "encryption" } else { "decryption" }
        );
        rv
    })
}

/// Run one message on the backend (no lock held) and record it in the audit log.
fn run_message(
    m: &Module,
    k: &MessageKey,
    encrypt: bool,
    params: &GcmMessageParams,
    aad: &[u8],
    data: &[u8],
) -> CkResult<Output> {
    let s = &m.slots[k.slot];
    let backend = &s.slot.backend;
    let result = check_params(s, params, aad, encrypt).and_then(|source| {
        if data.len() > MAX_MULTIPART {
            return Err(if encrypt {
                Rv::DATA_LEN_RANGE
            } else {
                Rv::ENCRYPTED_DATA_LEN_RANGE
            });
        }
        if !encrypt {
            let mut input = Vec::with_capacity(data.len() + GCM_TAG_LEN);
            input.extend_from_slice(data);
            input.extend_from_slice(&params.tag);
            return backend
                .gcm_decrypt(k.key, &params.iv, aad, &input)
                .map(Output::Plaintext);
        }
        let (iv, mut ciphertext) = match source {
            MessageIv::Generated => {
                let g = backend.gcm_encrypt_generated_iv(k.key, aad, data)?;
                if g.iv.len() != params.iv.len() {
                    log::error!(
                        "slot {:?}: the token generated a {}-byte IV for a {}-byte pIv",
                        s.slot.label,
                        g.iv.len(),
                        params.iv.len()
                    );
                    return Err(Rv::FUNCTION_FAILED);
                }
                (Some(g.iv), g.ciphertext_and_tag)
            }
            MessageIv::Caller => (None, backend.gcm_encrypt(k.key, &params.iv, aad, data)?),
        };
        let split = ciphertext
            .len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or(Rv::GENERAL_ERROR)?;
        let mut tag = [0u8; GCM_TAG_LEN];
        tag.copy_from_slice(&ciphertext[split..]);
        ciphertext.truncate(split);
        Ok(Output::Ciphertext(MessageEncryption {
            ciphertext,
            generated_iv: iv,
            tag,
        }))
    });
    let bytes_out = match &result {
        Ok(Output::Ciphertext(e)) => e.ciphertext.len() + GCM_TAG_LEN,
        Ok(Output::Plaintext(p)) => p.len(),
        Err(_) => 0,
    };
    audit::record_crypt(
        audit::CryptRecord {
            encrypt,
            slot: &s.slot.label,
            slot_name: s.audit_name,
            key: &k.label,
            key_name: k.key_name,
            bytes_in: data.len(),
            bytes_out,
        },
        result,
    )
}

/// What one message produced.
enum Output {
    Ciphertext(MessageEncryption),
    Plaintext(Plaintext),
}

/// `C_EncryptMessage` proper (after the boundary's length check): one whole message.
pub fn encrypt_message(
    session: u64,
    params: &GcmMessageParams,
    aad: &[u8],
    plaintext: &[u8],
) -> CkResult<MessageEncryption> {
    let m = module()?;
    let k = message_key(&m, session, true, None)?;
    match run_message(&m, &k, true, params, aad, plaintext)? {
        Output::Ciphertext(e) => Ok(e),
        Output::Plaintext(_) => Err(Rv::GENERAL_ERROR),
    }
}

/// `C_DecryptMessage` proper: one whole message; the tag is `params.tag`. No plaintext on
/// failure.
pub fn decrypt_message(
    session: u64,
    params: &GcmMessageParams,
    aad: &[u8],
    ciphertext: &[u8],
) -> CkResult<Plaintext> {
    let m = module()?;
    let k = message_key(&m, session, false, None)?;
    match run_message(&m, &k, false, params, aad, ciphertext)? {
        Output::Plaintext(p) => Ok(p),
        Output::Ciphertext(_) => Err(Rv::GENERAL_ERROR),
    }
}

/// `C_EncryptMessageBegin` / `C_DecryptMessageBegin`: checks the parameters and starts
/// buffering a message.
pub fn message_begin(
    session: u64,
    encrypt: bool,
    params: GcmMessageParams,
    aad: &[u8],
) -> CkResult<()> {
    let m = module()?;
    let index = m.sessions.with(session, |sess| sess.slot)?;
    check_params(&m.slots[index], &params, aad, encrypt)?;
    let pending = PendingMessage {
        params,
        aad: Aad::from_slice(aad),
        data: SecretBytes::default(),
    };
    message_key(&m, session, encrypt, Some(pending)).map(drop)
}

/// The output length of a `*MessageNext` with `part_len` bytes: 0 before the last part, the
/// whole message at the last.
pub fn message_next_len(
    session: u64,
    encrypt: bool,
    part_len: usize,
    last: bool,
) -> CkResult<usize> {
    with_module(|m| {
        m.sessions.with(session, |sess| {
            let op = sess.message_op(encrypt)?;
            let pending = op.pending.as_ref().ok_or(Rv::OPERATION_NOT_INITIALIZED)?;
            Ok(if last {
                pending.data.len() + part_len
            } else {
                0
            })
        })?
    })
}

/// What the last part of a multi-part message produced.
pub enum MessageEnd {
    /// An encryption: the ciphertext of the whole message, IV and tag.
    Encrypted(MessageEncryption),
    /// A decryption whose tag verified: the whole plaintext.
    Decrypted(Plaintext),
}

/// `C_EncryptMessageNext` / `C_DecryptMessageNext` proper (after the boundary's length
/// check). Before the last part: buffers it, outputs nothing (`None`). At the last part
/// (`last_tag`: `Some`, with the tag from that call's parameters for a decryption): runs the
/// message and ends it, success or not.
pub fn message_next(
    session: u64,
    encrypt: bool,
    part: &[u8],
    last_tag: Option<[u8; GCM_TAG_LEN]>,
) -> CkResult<Option<MessageEnd>> {
    let m = module()?;
    let too_long = if encrypt {
        Rv::DATA_LEN_RANGE
    } else {
        Rv::ENCRYPTED_DATA_LEN_RANGE
    };
    let taken = m.sessions.with(session, |sess| {
        let slot = sess.slot;
        let op = sess.message_op(encrypt)?;
        let pending = op.pending.as_mut().ok_or(Rv::OPERATION_NOT_INITIALIZED)?;
        if pending.data.len() + part.len() > MAX_MULTIPART {
            op.pending = None;
            return Err(too_long);
        }
        pending.data.extend_wiping(part);
        if last_tag.is_none() {
            return Ok(None);
        }
        let key = MessageKey {
            slot,
            key: op.key,
            key_name: op.key_name,
            label: op.label.clone(),
        };
        Ok(op.pending.take().map(|p| (key, p)))
    })??;
    let Some((k, mut pending)) = taken else {
        return Ok(None);
    };
    if let Some(tag) = last_tag.filter(|_| !encrypt) {
        pending.params.tag = tag;
    }
    let output = run_message(
        &m,
        &k,
        encrypt,
        &pending.params,
        &pending.aad,
        &pending.data,
    )?;
    Ok(Some(match output {
        Output::Ciphertext(e) => MessageEnd::Encrypted(e),
        Output::Plaintext(p) => MessageEnd::Decrypted(p),
    }))
}
