//! Buffered audit writes (`audit_flush_ms > 0`): records reach the file within the interval,
//! `C_Finalize` writes everything, and a forked child that exits normally does not write the
//! parent's buffered records a second time. One process, its own config.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::module_fixture::*;

fn count(audit: &Path, op: &str) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" INFO  xki_audit: ") && l.contains(op))
        .count()
}

#[test]
fn buffered_records_are_written_once_in_time_and_at_finalize() {
    let (dir, ctx) = bare_module_with(Options {
        audit_flush_ms: 300,
        ..Options::default()
    });
    let audit = dir.path().join("audit.log");
    let slots = ctx.get_slots_with_token().unwrap();
    for (index, slot) in slots.into_iter().enumerate() {
        let session = ctx.open_rw_session(slot).unwrap();
        login(&session);
        let key = session
            .generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &secure_template("audit-buffer"),
            )
            .unwrap();
        // Keep going until the key's records are in the file.
        round_trips(&session, EncryptIv::of_slot(index), key, 10, b"buffered");
    }
    let total = 2 * 10;
    // Within a few flush intervals every record is in the file, each once.
    let deadline = Instant::now() + Duration::from_secs(3);
    while count(&audit, "op=decrypt") < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&audit, "op=encrypt"), total);
    assert_eq!(count(&audit, "op=decrypt"), total);

    // More records, then fork while they are (most likely) still buffered: the child exits
    // normally (running exit handlers) and must not write them.
    let slot = ctx.get_slots_with_token().unwrap()[1];
    let session = ctx.open_rw_session(slot).unwrap();
    login(&session);
    let key = find_label(&session, "audit-buffer");
    round_trips(&session, EncryptIv::of_slot(1), key, 25, b"buffered");
    // SAFETY: the child only calls `exit`, which runs the registered exit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: ends the child process.
        unsafe { libc::exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    drop(session);
    ctx.finalize().expect("C_Finalize");
    // C_Finalize wrote everything, and nothing twice.
    assert_eq!(count(&audit, "op=encrypt"), total + 25);
    assert_eq!(count(&audit, "op=decrypt"), total + 25);
}
