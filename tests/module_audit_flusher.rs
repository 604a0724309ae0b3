//! Buffered audit writes: a buffer that reaches 64 KiB is written out by the flusher thread at
//! once (the caller that filled it only wakes it), long before the (here one-minute) interval.
//! One process, its own config.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::module_fixture::*;

fn records(audit: &Path) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" INFO  xki_audit: op=encrypt") || l.contains("op=decrypt"))
        .count()
}

#[test]
fn a_full_buffer_reaches_the_file_without_waiting_for_the_interval() {
    let (dir, ctx) = bare_module_with(Options {
        audit_flush_ms: 60000,
        ..Options::default()
    });
    let audit = dir.path().join("audit.log");
    // The embedded slot: fast, so the records pile up quickly.
    let slot = ctx.get_slots_with_token().unwrap()[1];
    let session = ctx.open_rw_session(slot).unwrap();
    login(&session);
    let key = session
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &secure_template("audit-flusher"),
        )
        .unwrap();
    // 1 200 round trips = 2 400 records of 34 bytes in the buffer (key uses carry numbered
    // names, see src/audit/names.rs): past the 64 KiB mark (after ~1 900 records), far below
    // the 256 KiB at which a caller would write the buffer itself.
    for i in 0..1200u32 {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&i.to_be_bytes());
        let ct = session
            .encrypt(&gcm(&mut iv, b"aad"), key, b"flusher")
            .unwrap();
        session.decrypt(&gcm(&mut iv, b"aad"), key, &ct).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while records(&audit) < 1800 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let written = records(&audit);
    assert!(
        written >= 1800,
        "a 64 KiB buffer should reach the file within seconds, not at the 60 s interval; \
         found {written} records"
    );
    // (How much of the tail below the mark rides along depends on when the flusher wakes: the
    // caller may well have finished all 2 400 by then. Not asserted.)
    drop(session);
    ctx.finalize().expect("C_Finalize");
    assert_eq!(
        records(&audit),
        2400,
        "C_Finalize writes the rest, each record once"
    );
}
