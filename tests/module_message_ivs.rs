//! 1 000 000 token-generated IVs under one key through the module's message API contain no
//! repeat. Its own binary so the audit file can be buffered (`audit_flush_ms = 100`): every
//! message is an audit record, and a million synchronous writes would dominate the run.

mod support;

use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
use cryptoki::mechanism::Mechanism;
use pkcs11_sys::*;
use std::collections::HashSet;
use support::module_fixture::*;

/// 1 000 000 IVs generated for one key on the embedded slot, over two threads: no repeat.
/// (The embedded token's own RNG; each is a full C_EncryptMessage of an empty message.)
#[test]
fn a_million_generated_ivs_under_one_key_never_repeat() {
    let fx = fixture_with(Options {
        audit_flush_ms: 100,
        ..Options::default()
    });
    let slot = fx.slots()[1];
    let s = fx.ctx.open_rw_session(slot).unwrap();
    login(&s);
    let key = s
        .generate_key(&Mechanism::AesKeyGen, &secure_template("msg-million"))
        .unwrap();
    const TOTAL: usize = 1_000_000;
    const THREADS: usize = 2;
    let started = std::time::Instant::now();
    let ivs: Vec<Vec<[u8; 12]>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let s = fx.ctx.open_rw_session(slot).unwrap();
                    let mut iv = [0u8; 12];
                    let mut tag = [0u8; 16];
                    let p = GcmMessageParams::new(
                        &mut iv,
                        0.into(),
                        GeneratorFunction::GenerateRandom,
                        &mut tag,
                    )
                    .unwrap();
                    s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
                        .unwrap();
                    let mut seen = Vec::with_capacity(TOTAL / THREADS);
                    let f = support::module_fixture::raw::table();
                    let mut params = CK_GCM_MESSAGE_PARAMS {
                        pIv: std::ptr::null_mut(),
                        ulIvLen: 12,
                        ulIvFixedBits: 0,
                        ivGenerator: CKG_GENERATE_RANDOM,
                        pTag: std::ptr::null_mut(),
                        ulTagBits: 128,
                    };
                    let mut iv = [0u8; 12];
                    let mut tag = [0u8; 16];
                    params.pIv = iv.as_mut_ptr();
                    params.pTag = tag.as_mut_ptr();
                    let mut out = [0u8; 1];
                    for _ in 0..TOTAL / THREADS {
                        let mut len: CK_ULONG = 1;
                        // SAFETY: live locals of the stated lengths; empty plaintext.
                        let rv = unsafe {
                            f.C_EncryptMessage.unwrap()(
                                s.handle(),
                                (&mut params as *mut CK_GCM_MESSAGE_PARAMS).cast(),
                                std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as _,
                                std::ptr::null_mut(),
                                0,
                                std::ptr::null_mut(),
                                0,
                                out.as_mut_ptr(),
                                &mut len,
                            )
                        };
                        assert_eq!(rv, CKR_OK);
                        seen.push(iv);
                    }
                    s.message_encrypt_final().unwrap();
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::with_capacity(TOTAL);
    for iv in ivs.into_iter().flatten() {
        assert!(all.insert(iv), "IV repeated: {iv:02x?}");
    }
    assert_eq!(all.len(), TOTAL);
    eprintln!("{TOTAL} generated IVs in {:?}", started.elapsed());
}
