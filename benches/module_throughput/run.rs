//! One measurement: `threads` threads, each on its own session, doing AES-GCM round trips
//! (`Session::encrypt` then `Session::decrypt`, i.e. C_EncryptInit + C_Encrypt (length query
//! and call) + C_DecryptInit + C_Decrypt (likewise)) for a fixed wall-clock time; or, for the
//! find-per-operation rows, a find by label then one `Session::encrypt`.

use crate::targets::{Api, Target};
use cryptoki::mechanism::aead::{GcmMessageParams, GcmParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MessageParam};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Additional authenticated data of every operation (XKS requests carry some).
pub const AAD: &[u8] = b"xki-bench aad 16";

/// One encrypt + decrypt with a fresh 12-byte IV; checks the plaintext came back.
fn round_trip(
    s: &Session,
    key: ObjectHandle,
    counter: u64,
    plaintext: &[u8],
) -> Result<(), String> {
    let mut iv = [0u8; 12];
    iv[4..].copy_from_slice(&counter.to_be_bytes());
    let ciphertext = {
        let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(|e| e.to_string())?;
        s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(|e| format!("encrypt: {e}"))?
    };
    let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(|e| e.to_string())?;
    let back = s
        .decrypt(&Mechanism::AesGcm(params), key, &ciphertext)
        .map_err(|e| format!("decrypt: {e}"))?;
    if back != plaintext {
        return Err("decrypt returned different bytes".into());
    }
    Ok(())
}

/// The find-per-operation pattern: C_FindObjectsInit(class, label) + C_FindObjects +
/// C_FindObjectsFinal, then `Session::encrypt` (C_EncryptInit + length query + C_Encrypt) with
/// the key found. Checks the find returned exactly the expected key.
fn find_then_encrypt(
    s: &Session,
    label: &[u8],
    key: ObjectHandle,
    counter: u64,
    plaintext: &[u8],
) -> Result<(), String> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.to_vec()),
        ])
        .map_err(|e| format!("find: {e}"))?;
    if found[..] != [key] {
        return Err(format!("find returned {found:?}, expected [{key:?}]"));
    }
    let mut iv = [0u8; 12];
    iv[4..].copy_from_slice(&counter.to_be_bytes());
    let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(|e| e.to_string())?;
    let ciphertext = s
        .encrypt(&Mechanism::AesGcm(params), key, plaintext)
        .map_err(|e| format!("encrypt: {e}"))?;
    if ciphertext.len() != plaintext.len() + 16 {
        return Err("ciphertext of the wrong length".into());
    }
    Ok(())
}

/// One message-API round trip: C_MessageEncryptInit, C_EncryptMessage (CKG_GENERATE_RANDOM:
/// the token generates the IV), C_MessageEncryptFinal, then the same three for decryption
/// with the IV and tag it returned. cryptoki adds a length query to each message call, as it
/// does to C_Encrypt/C_Decrypt on the classic rows.
#[inline(never)] // a frame of its own for callgrind (benches/README.md)
fn message_round_trip(s: &Session, key: ObjectHandle, plaintext: &[u8]) -> Result<(), String> {
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let ciphertext = {
        let p = GcmMessageParams::new(
            &mut iv,
            0.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag,
        )
        .map_err(|e| e.to_string())?;
        s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
            .map_err(|e| format!("message encrypt init: {e}"))?;
        let ct = s.encrypt_message(&MessageParam::AesGcmMessage(p), AAD, plaintext);
        s.message_encrypt_final()
            .map_err(|e| format!("message encrypt final: {e}"))?;
        ct.map_err(|e| format!("encrypt message: {e}"))?
    };
    let p = GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)
        .map_err(|e| e.to_string())?;
    s.message_decrypt_init(&Mechanism::AesGcmMessage(p), key)
        .map_err(|e| format!("message decrypt init: {e}"))?;
    let back = s.decrypt_message(&MessageParam::AesGcmMessage(p), AAD, &ciphertext);
    s.message_decrypt_final()
        .map_err(|e| format!("message decrypt final: {e}"))?;
    if back.map_err(|e| format!("decrypt message: {e}"))? != plaintext {
        return Err("decrypt returned different bytes".into());
    }
    Ok(())
}

/// One classic round trip under an IV from the token's C_GenerateRandom.
#[inline(never)] // a frame of its own for callgrind (benches/README.md)
fn random_iv_round_trip(s: &Session, key: ObjectHandle, plaintext: &[u8]) -> Result<(), String> {
    let mut iv = [0u8; 12];
    s.generate_random_slice(&mut iv)
        .map_err(|e| format!("generate random: {e}"))?;
    let ciphertext = {
        let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(|e| e.to_string())?;
        s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(|e| format!("encrypt: {e}"))?
    };
    let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(|e| e.to_string())?;
    let back = s
        .decrypt(&Mechanism::AesGcm(params), key, &ciphertext)
        .map_err(|e| format!("decrypt: {e}"))?;
    if back != plaintext {
        return Err("decrypt returned different bytes".into());
    }
    Ok(())
}

/// What one measurement found.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// Round trips per second: the sum of the per-thread rates.
    pub rate: f64,
    /// Round trips done (all threads).
    pub ops: u64,
    /// CPU time the threads used (user + system), all threads. Unlike wall time it does not
    /// grow when other processes take the CPU, so it is the steadier measure on a shared box.
    pub cpu_secs: f64,
    /// CPU time of the whole process over the measurement (user + system). Unlike
    /// `cpu_secs` it includes threads the module runs for the caller: a replica group's
    /// member workers (and the audit flusher, for every path through the module).
    pub proc_cpu_secs: f64,
}

impl Sample {
    /// CPU microseconds per round trip.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu_secs * 1e6 / self.ops.max(1) as f64
    }

    /// Process CPU microseconds per round trip.
    pub fn proc_cpu_us_per_op(&self) -> f64 {
        self.proc_cpu_secs * 1e6 / self.ops.max(1) as f64
    }
}

/// CPU time used so far by the calling thread.
fn thread_cpu_secs() -> f64 {
    cpu_secs(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time used so far by `clock` (a thread or the process CPU-time clock).
fn cpu_secs(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the CPU-time clocks need nothing else.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Round trips per second of `target` with `threads` threads and `payload`-byte plaintexts,
/// measured for `duration`. Each thread counts its own operations and time.
pub fn measure(
    target: &mut Target,
    threads: usize,
    payload: usize,
    duration: Duration,
) -> Result<Sample, String> {
    if target.sessions.len() < threads {
        return Err(format!(
            "{}: {threads} threads but only {} sessions",
            target.name,
            target.sessions.len()
        ));
    }
    let plaintext: Vec<u8> = (0..payload).map(|i| (i * 31 + 7) as u8).collect();
    let key = target.key;
    let find_label = target.find_label.clone();
    let api = target.api;
    let start = Barrier::new(threads);
    let proc_begin = cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID);
    let results: Vec<Result<Sample, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = target
            .sessions
            .iter_mut()
            .take(threads)
            .enumerate()
            .map(|(t, session)| {
                let (plaintext, start, find_label) = (&plaintext, &start, &find_label);
                scope.spawn(move || {
                    let session: &Session = session;
                    start.wait();
                    let begin = Instant::now();
                    let cpu_begin = thread_cpu_secs();
                    let mut ops = 0u64;
                    // Distinct IVs per thread and operation (the key is shared).
                    let base = (t as u64) << 48;
                    loop {
                        match (find_label, api) {
                            (Some(label), _) => {
                                find_then_encrypt(session, label, key, base + ops, plaintext)?
                            }
                            (None, Api::Classic) => {
                                round_trip(session, key, base + ops, plaintext)?
                            }
                            (None, Api::Message) => message_round_trip(session, key, plaintext)?,
                            (None, Api::RandomIvClassic) => {
                                random_iv_round_trip(session, key, plaintext)?
                            }
                        }
                        ops += 1;
                        let elapsed = begin.elapsed();
                        if elapsed >= duration {
                            return Ok(Sample {
                                rate: ops as f64 / elapsed.as_secs_f64(),
                                ops,
                                cpu_secs: thread_cpu_secs() - cpu_begin,
                                proc_cpu_secs: 0.0,
                            });
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let proc_cpu_secs = cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID) - proc_begin;
    let init = Sample {
        proc_cpu_secs,
        ..Sample::default()
    };
    results.into_iter().try_fold(init, |acc, r| {
        let s = r.map_err(|e| format!("{}: {e}", target.name))?;
        Ok(Sample {
            rate: acc.rate + s.rate,
            ops: acc.ops + s.ops,
            cpu_secs: acc.cpu_secs + s.cpu_secs,
            proc_cpu_secs: acc.proc_cpu_secs,
        })
    })
}
