//! The probe thread: returns members to service once they work again.
//!
//! Every `probe_interval` (and right after a member fails, so a short outage is noticed on the
//! next round) each member out of service is checked with real work: list its keys (this also
//! refreshes its key handles, which re-login may have changed) and, when it holds a group key,
//! encrypt and decrypt a block with it under a fresh random IV. The key is the one labelled
//! `canary_label` when configured, else the lowest-numbered group key the member holds. A
//! member whose HSM answers a probe with an error about the request (say the key may not
//! encrypt) is working, so it returns too. Re-login and session re-creation are the member
//! backend's own job.

use super::member::Outcome;
use super::Inner;
use crate::rv::Rv;
use std::sync::Arc;

pub(super) fn run(inner: Arc<Inner>) {
    loop {
        {
            let mut stop = inner.stop.lock();
            if *stop {
                return;
            }
            inner
                .wake
                .wait_for(&mut stop, inner.settings.probe_interval);
            if *stop {
                return;
            }
        }
        for i in 0..inner.members.len() {
            if !inner.members[i].is_up() && probe(&inner, i) {
                inner.members[i].mark_up();
            }
        }
    }
}

/// One probe of member `i`; true when it works.
fn probe(inner: &Inner, i: usize) -> bool {
    if !inner.members[i].ensure_open() {
        return false;
    }
    let Some(listed) = inner.refresh_member(i) else {
        return false;
    };
    let canary = match &inner.settings.canary_label {
        Some(label) => listed.iter().find(|k| &k.label == label).map(|k| k.handle),
        None => inner.keys.read().any_key_on(i),
    };
    let Some(key) = canary else {
        // Nothing to encrypt with: the listing proved the session and login work.
        return true;
    };
    let mut iv = [0u8; 12];
    if getrandom::getrandom(&mut iv).is_err() {
        return false;
    }
    let m = &inner.members[i];
    let block = [0x5au8; 16];
    let out = m.attempt_read(move |b| {
        let ct = b.gcm_encrypt(key, &iv, b"xki-probe", &block)?;
        let pt = b.gcm_decrypt(key, &iv, b"xki-probe", &ct)?;
        if pt[..] != block[..] {
            return Err(Rv::DEVICE_ERROR);
        }
        Ok(())
    });
    match out {
        Outcome::Answer(Ok(())) => true,
        // Working, just not allowed to do this with that key.
        Outcome::Answer(Err(rv)) => rv != Rv::DEVICE_ERROR,
        Outcome::Failed(_) => false,
    }
}
