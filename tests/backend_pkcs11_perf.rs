//! Throughput of the backend against SoftHSM2 used directly through cryptoki (same token,
//! same key, same thread count). Ignored by default; run with
//! `cargo test --release --test backend_pkcs11_perf -- --ignored --nocapture`.

mod support;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::UserType;
use cryptoki::types::RawAuthPin;
use std::sync::Arc;
use std::time::Instant;
use support::softhsm_tokens::{config, pin, tokens, MODULE, PIN};
use xki_pkcs11::backend::pkcs11::Pkcs11Backend;
use xki_pkcs11::backend::{Backend, NewKey};

const THREADS: usize = 4;
const OPS: usize = 5000;

#[test]
#[ignore]
fn gcm_throughput_backend_vs_direct() {
    tokens(&["perf"]);
    let b = Arc::new(Pkcs11Backend::open("perf", &config("perf"), pin()).unwrap());
    let spec = NewKey {
        id: b"perf".to_vec(),
        label: b"perf".to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    };
    let key = b.generate_aes_key(&spec).unwrap().handle;
    let pt = [0x42u8; 256];

    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for _ in 0..OPS {
                    let ct = b.gcm_encrypt(key, &[7u8; 12], b"aad", &pt).unwrap();
                    b.gcm_decrypt(key, &[7u8; 12], b"aad", &ct).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let ours = (THREADS * OPS * 2) as f64 / start.elapsed().as_secs_f64();

    // Direct: one session per thread, the same single-part cryptoki calls.
    let direct = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = cryptoki::slot::Slot::try_from(b.slot_id()).unwrap();
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let direct = direct.clone();
            std::thread::spawn(move || {
                let s = direct.open_rw_session(slot).unwrap();
                let _ = s.login_with_raw(UserType::User, &RawAuthPin::new(Box::new(PIN.to_vec())));
                // SAFETY: the handle the backend reported for this token.
                let h = unsafe { ObjectHandle::new_from_raw(key.0) };
                for _ in 0..OPS {
                    let mut iv = [7u8; 12];
                    let p = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
                    let ct = s.encrypt(&Mechanism::AesGcm(p), h, &pt).unwrap();
                    let mut iv = [7u8; 12];
                    let p = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
                    s.decrypt(&Mechanism::AesGcm(p), h, &ct).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let base = (THREADS * OPS * 2) as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "gcm ops/s with {THREADS} threads: backend {ours:.0}, direct cryptoki {base:.0} ({:.1}%)",
        100.0 * ours / base
    );
    b.shutdown();
}
