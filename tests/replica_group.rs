//! Replica groups at the library level: real SoftHSM2 tokens holding the same key, each
//! wrapped in the test-only fault injector, grouped by `ReplicaGroup`.
//!
//! Run with: `cargo test --features fault-injection --test replica_group`
//! (the measurement harness: add `-- --ignored --nocapture`).

#![cfg(feature = "fault-injection")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::replica_fixture::*;
use xki_pkcs11::backend::fault::FaultMode;
use xki_pkcs11::backend::replicas::health::MemberState;
use xki_pkcs11::backend::replicas::ReplicaGroup;
use xki_pkcs11::backend::{Backend, BackendKey, KeyChanges, NewKey};
use xki_pkcs11::config::Replication;
use xki_pkcs11::rv::Rv;

fn shared_key(tokens: &[&str], id: &[u8]) {
    for t in tokens {
        import_key(
            t,
            id,
            &format!("key-{}", String::from_utf8_lossy(id)),
            &KEY_VALUE,
        );
    }
}

fn key_of(g: &ReplicaGroup, id: &[u8]) -> BackendKey {
    g.list_secret_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.id == id)
        .expect("key visible on the group")
        .handle
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn states(g: &ReplicaGroup) -> Vec<MemberState> {
    g.status().iter().map(|s| s.state).collect()
}

/// One encrypt + decrypt round trip; true when it worked.
fn round_trip(g: &ReplicaGroup, key: BackendKey, n: u64) -> bool {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&n.to_le_bytes());
    let pt = n.to_be_bytes();
    let Ok(ct) = g.gcm_encrypt(key, &iv, b"aad", &pt) else {
        return false;
    };
    matches!(g.gcm_decrypt(key, &iv, b"aad", &ct), Ok(back) if back[..] == pt[..])
}

struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Longest single round trip, in microseconds.
    worst_us: AtomicU64,
    stop: AtomicBool,
}

fn run_traffic(
    g: Arc<ReplicaGroup>,
    key: BackendKey,
    threads: u64,
) -> (Arc<Traffic>, Vec<std::thread::JoinHandle<()>>) {
    let t = Arc::new(Traffic {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        worst_us: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let handles = (0..threads)
        .map(|th| {
            let (g, t) = (g.clone(), t.clone());
            std::thread::spawn(move || {
                let mut n = th << 40;
                while !t.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let start = Instant::now();
                    let ok = round_trip(&g, key, n);
                    let us = start.elapsed().as_micros() as u64;
                    t.worst_us.fetch_max(us, Ordering::Relaxed);
                    if ok {
                        t.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        t.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (t, handles)
}

#[test]
fn traffic_survives_a_failure_a_hang_and_recovery() {
    Lazy_init();
    shared_key(&["tr-a", "tr-b"], b"tr");
    let (a, sa) = faulty("tr-a");
    let (b, sb) = faulty("tr-b");
    let deadline = Duration::from_millis(300);
    let g = Arc::new(group(vec![a, b], deadline, settings()));
    let key = key_of(&g, b"tr");
    let (t, handles) = run_traffic(g.clone(), key, 8);

    std::thread::sleep(Duration::from_millis(300));
    sa.set(FaultMode::Fail);
    wait_for("a out of service", Duration::from_secs(2), || {
        states(&g)[0] == MemberState::Unavailable
    });
    std::thread::sleep(Duration::from_millis(300));
    let calls_b = sb.calls();
    sa.set(FaultMode::Ok);
    wait_for("a back in service", Duration::from_secs(3), || {
        states(&g)[0] == MemberState::Active
    });
    assert!(sb.calls() > calls_b, "b served while a was down");
    let worst_before_hang = t.worst_us.swap(0, Ordering::Relaxed);

    std::thread::sleep(Duration::from_millis(300));
    sb.set(FaultMode::Hang);
    wait_for("b out of service", Duration::from_secs(3), || {
        states(&g)[1] == MemberState::Unavailable
    });
    let st = g.status();
    assert!(st[1].last_error_text.contains("no answer"), "{st:?}");
    std::thread::sleep(Duration::from_millis(300));
    sb.set(FaultMode::Ok);
    wait_for("b back in service", Duration::from_secs(3), || {
        states(&g)[1] == MemberState::Active
    });
    std::thread::sleep(Duration::from_millis(300));
    t.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let (ok, failed) = (
        t.ok.load(Ordering::Relaxed),
        t.failed.load(Ordering::Relaxed),
    );
    let worst_hang = t.worst_us.load(Ordering::Relaxed);
    println!(
        "traffic: {ok} round trips ok, {failed} failed; worst round trip: {} ms (failure phase), {} ms (hang phase, deadline {} ms)",
        worst_before_hang / 1000,
        worst_hang / 1000,
        deadline.as_millis()
    );
    // Another member was always in service, so every operation must have succeeded.
    assert_eq!(failed, 0, "operations lost during failover");
    assert!(ok > 100, "too little traffic: {ok}");
    // A round trip is two calls; only one of them can meet the hung member (it is out of
    // service after the first timeout), so the stall is one deadline plus work. The bound is
    // loose because this machine is small and shared.
    assert!(
        worst_hang < (deadline.as_micros() as u64) + 400_000,
        "caller stalled {worst_hang} us"
    );
    let st = g.status();
    assert_eq!(st[0].failures, 1);
    assert_eq!(st[1].failures, 1);
    assert_eq!(st[1].stuck_calls, 0, "stuck calls drained after release");
    g.shutdown();
}

#[test]
fn all_members_down_fails_fast_then_recovers() {
    Lazy_init();
    shared_key(&["ad-a", "ad-b"], b"ad");
    let (a, sa) = faulty("ad-a");
    let (b, sb) = faulty("ad-b");
    let deadline = Duration::from_millis(200);
    let g = group(vec![a, b], deadline, settings());
    let key = key_of(&g, b"ad");
    assert!(round_trip(&g, key, 1));

    // Both hang: calls in flight wait for the deadline, after which the members are out.
    sa.set(FaultMode::Hang);
    sb.set(FaultMode::Hang);
    let start = Instant::now();
    assert_eq!(
        g.gcm_encrypt(key, &[0; 12], b"", b"x").unwrap_err(),
        Rv::DEVICE_ERROR
    );
    let first = start.elapsed();
    assert!(first >= deadline, "{first:?}");
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let start = Instant::now();
        assert_eq!(
            g.gcm_encrypt(key, &[0; 12], b"", b"x").unwrap_err(),
            Rv::DEVICE_ERROR
        );
        worst = worst.max(start.elapsed());
    }
    println!("all down: first call {first:?} (deadline {deadline:?}), then worst {worst:?}");
    assert!(worst < Duration::from_millis(50), "not fast: {worst:?}");
    assert_eq!(states(&g), vec![MemberState::Unavailable; 2]);

    // One member returns: the probe puts it back and traffic flows again.
    sb.set(FaultMode::Ok);
    wait_for("b back", Duration::from_secs(3), || {
        states(&g)[1] == MemberState::Active
    });
    assert!(round_trip(&g, key, 2));
    assert_eq!(states(&g)[0], MemberState::Unavailable);
    // Release a's stuck calls before shutting down.
    sa.set(FaultMode::Ok);
    wait_for("a back", Duration::from_secs(3), || {
        states(&g)[0] == MemberState::Active
    });
    g.shutdown();
}

#[test]
fn key_mismatches_are_detected_and_reported() {
    Lazy_init();
    shared_key(&["mm-a", "mm-b"], b"both");
    import_key("mm-a", b"only-a", "only-a", &KEY_VALUE);
    import_key("mm-b", b"twice-b", "twice-b-1", &KEY_VALUE);
    import_key("mm-b", b"twice-b", "twice-b-2", &KEY_VALUE);
    let (a, sa) = faulty("mm-a");
    let (b, _sb) = faulty("mm-b");
    let g = group(vec![a, b.clone()], Duration::from_secs(2), settings());
    let listed = g.list_secret_keys().unwrap();
    let mut ids: Vec<&[u8]> = listed.iter().map(|k| k.id.as_slice()).collect();
    ids.sort();
    // twice-b is held by no member exactly once: not served at all.
    assert_eq!(ids, vec![&b"both"[..], b"only-a"]);
    let st = g.status();
    assert_eq!(st[0].key_mismatches, 1, "{st:?}"); // twice-b missing on a
    assert_eq!(st[1].key_mismatches, 2, "{st:?}"); // only-a missing, twice-b duplicated
    assert_eq!(st[0].state, MemberState::Degraded);
    assert_eq!(st[1].state, MemberState::Degraded);
    assert!(!st[1].last_error_text.is_empty());

    // A key missing on one member is served from the member holding it, and only from there.
    let only_a = key_of(&g, b"only-a");
    let both = key_of(&g, b"both");
    assert!(round_trip(&g, only_a, 1));
    sa.set(FaultMode::Fail);
    assert!(!round_trip(&g, only_a, 2));
    assert!(round_trip(&g, both, 3));
    sa.set(FaultMode::Ok);

    // A key destroyed on one member behind the group's back: served from the other one,
    // and reported as a mismatch of that member.
    wait_for("a back", Duration::from_secs(3), || {
        states(&g)[0] != MemberState::Unavailable
    });
    let on_b = b
        .list_secret_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.id == b"both")
        .unwrap()
        .handle;
    b.destroy_key(on_b).unwrap();
    for n in 10..20 {
        assert!(round_trip(&g, both, n));
    }
    assert_eq!(g.status()[1].key_mismatches, 3);
    g.shutdown();
}

#[test]
fn generation_needs_hsm_replication() {
    Lazy_init();
    let spec = NewKey {
        id: b"new".to_vec(),
        label: b"new".to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    };
    let (ra, rb) = (real("gen-a"), real("gen-b"));
    let g = group(
        vec![ra.clone(), rb.clone()],
        Duration::from_secs(2),
        settings(),
    );
    assert_eq!(g.generate_aes_key(&spec).unwrap_err(), Rv::FUNCTION_FAILED);
    assert!(ra.list_secret_keys().unwrap().is_empty());
    assert!(rb.list_secret_keys().unwrap().is_empty());
    g.shutdown();

    // replication = "hsm" but these tokens do not replicate: the key shows up on one member
    // only, so generation fails clearly after the wait.
    let hsm = xki_pkcs11::backend::replicas::GroupSettings {
        replication: Replication::Hsm,
        ..settings()
    };
    let g = group(
        vec![ra.clone(), rb.clone()],
        Duration::from_secs(2),
        hsm.clone(),
    );
    let start = Instant::now();
    assert_eq!(g.generate_aes_key(&spec).unwrap_err(), Rv::FUNCTION_FAILED);
    assert!(start.elapsed() >= hsm.replication_wait);
    let on_a = ra.list_secret_keys().unwrap().len();
    let on_b = rb.list_secret_keys().unwrap().len();
    assert_eq!(on_a + on_b, 1);
    g.shutdown();

    // Two members on one token replicate trivially: generation succeeds.
    let g = group(
        vec![real("rep-a"), real("rep-a")],
        Duration::from_secs(2),
        hsm,
    );
    let info = g.generate_aes_key(&spec).unwrap();
    assert!(round_trip(&g, info.handle, 1));
    g.shutdown();
}

#[test]
fn changes_and_destruction_reach_every_member() {
    Lazy_init();
    shared_key(&["ch-a", "ch-b"], b"ch");
    let (ra, rb) = (real("ch-a"), real("ch-b"));
    let g = group(
        vec![ra.clone(), rb.clone()],
        Duration::from_secs(2),
        settings(),
    );
    let key = key_of(&g, b"ch");
    g.set_key_attributes(
        key,
        &KeyChanges {
            label: Some(b"renamed".to_vec()),
            ..Default::default()
        },
    )
    .unwrap();
    for m in [&ra, &rb] {
        assert_eq!(m.list_secret_keys().unwrap()[0].label, b"renamed");
    }
    assert_eq!(g.key_info(key).unwrap().label, b"renamed");
    g.destroy_key(key).unwrap();
    assert!(ra.list_secret_keys().unwrap().is_empty());
    assert!(rb.list_secret_keys().unwrap().is_empty());
    assert_eq!(
        g.gcm_encrypt(key, &[0; 12], b"", b"x").unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
    g.shutdown();
}

/// Throughput harness (numbers for the report): 8 threads of round trips for 2 s on one
/// member, then on two. Not asserted beyond "both members served".
#[test]
#[ignore]
fn throughput_two_members_vs_one() {
    Lazy_init();
    shared_key(&["tp-a", "tp-b"], b"tp");
    let (a, sa) = faulty("tp-a");
    let (b, sb) = faulty("tp-b");
    let run = |g: Arc<ReplicaGroup>| {
        let key = key_of(&g, b"tp");
        let (t, handles) = run_traffic(g.clone(), key, 8);
        std::thread::sleep(Duration::from_secs(3));
        t.stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        g.shutdown();
        assert_eq!(t.failed.load(Ordering::Relaxed), 0);
        t.ok.load(Ordering::Relaxed) * 2 / 3
    };
    let direct = {
        let key = a.list_secret_keys().unwrap()[0].handle;
        let a2 = a.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..8u64)
            .map(|th| {
                let (a2, stop, count) = (a2.clone(), stop.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut n = th << 40;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let mut iv = [0u8; 12];
                        iv[..8].copy_from_slice(&n.to_le_bytes());
                        let ct = a2.gcm_encrypt(key, &iv, b"aad", b"12345678").unwrap();
                        a2.gcm_decrypt(key, &iv, b"aad", &ct).unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
        count.load(Ordering::Relaxed) / 3
    };
    let one = run(Arc::new(group(
        vec![a.clone()],
        Duration::from_secs(2),
        settings(),
    )));
    let (ca, cb) = (sa.calls(), sb.calls());
    let two = run(Arc::new(group(
        vec![a, b],
        Duration::from_secs(2),
        settings(),
    )));
    let (da, db) = (sa.calls() - ca, sb.calls() - cb);
    println!(
        "round trips/s (encrypt+decrypt, 8 threads): backend direct {direct}, group of one {one}, group of two {two}; calls a={da} b={db}"
    );
    assert!(da > 0 && db > 0);
}

#[allow(non_snake_case)]
fn Lazy_init() {
    // Creating the tokens and the host initialisation happen on first use; force them here so
    // every test starts from the same state.
    let _ = real as fn(&str) -> Arc<dyn Backend>;
}

#[test]
fn a_member_unreachable_at_start_is_opened_by_the_probe() {
    use xki_pkcs11::backend::replicas::MemberSpec;
    use xki_pkcs11::backend::OpenError;
    Lazy_init();
    shared_key(&["late-a", "late-b"], b"late");
    let (a, sa) = faulty("late-a");
    let reachable = Arc::new(AtomicBool::new(false));
    let r = reachable.clone();
    let late = MemberSpec {
        name: "late-b".into(),
        backend: None,
        reopen: Some(Arc::new(move || {
            if r.load(Ordering::SeqCst) {
                Ok(real("late-b"))
            } else {
                Err(OpenError {
                    key: "token_label",
                    rv: Rv::TOKEN_NOT_PRESENT,
                    problem: "not there yet".into(),
                })
            }
        })),
        deadline: Duration::from_secs(2),
        max_threads: 4,
        inline: None,
    };
    let g = ReplicaGroup::new(
        "late",
        vec![MemberSpec::open(a, Duration::from_secs(2), 4), late],
        settings(),
    )
    .unwrap();
    assert_eq!(
        states(&g),
        vec![MemberState::Active, MemberState::Unavailable]
    );
    let key = key_of(&g, b"late");
    assert!(round_trip(&g, key, 1));
    std::thread::sleep(Duration::from_millis(150));
    assert!(g.status()[1].last_error_text.contains("not there yet"));
    reachable.store(true, Ordering::SeqCst);
    wait_for("late-b opened", Duration::from_secs(3), || {
        states(&g)[1] == MemberState::Active
    });
    // Now b alone can serve.
    sa.set(FaultMode::Fail);
    assert!(round_trip(&g, key, 2));
    sa.set(FaultMode::Ok);
    g.shutdown();
}

#[test]
fn answers_about_the_request_never_take_a_member_out() {
    Lazy_init();
    shared_key(&["ce-a", "ce-b"], b"ce");
    import_key("ce-a", b"canary", "canary", &KEY_VALUE);
    import_key("ce-b", b"canary", "canary", &KEY_VALUE);
    let (a, sa) = faulty("ce-a");
    let (b, _sb) = faulty("ce-b");
    let cfg = xki_pkcs11::backend::replicas::GroupSettings {
        canary_label: Some(b"canary".to_vec()),
        ..settings()
    };
    let g = group(vec![a, b], Duration::from_secs(2), cfg);
    let key = key_of(&g, b"ce");
    let iv = [7u8; 12];
    let mut ct = g.gcm_encrypt(key, &iv, b"", b"secret").unwrap();
    ct[0] ^= 1;
    for _ in 0..4 {
        assert_eq!(
            g.gcm_decrypt(key, &iv, b"", &ct).unwrap_err(),
            Rv::ENCRYPTED_DATA_INVALID
        );
    }
    assert_eq!(
        g.gcm_encrypt(key, &[], b"", b"x").unwrap_err(),
        Rv::MECHANISM_PARAM_INVALID
    );
    assert_eq!(
        g.gcm_encrypt(BackendKey(9999), &iv, b"", b"x").unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
    let st = g.status();
    assert!(
        st.iter()
            .all(|m| m.state == MemberState::Active && m.failures == 0),
        "{st:?}"
    );

    // The probe (with the configured canary key) brings a failed member back.
    sa.set(FaultMode::Fail);
    assert!(round_trip(&g, key, 1));
    assert_eq!(states(&g)[0], MemberState::Unavailable);
    sa.set(FaultMode::Ok);
    wait_for("a back", Duration::from_secs(3), || {
        states(&g)[0] == MemberState::Active
    });
    g.shutdown();
}

/// Generated IVs in a group: the member that serves the encryption generates the IV; a call
/// that fails on one member is retried on the other, which generates a new one, and the
/// caller gets the IV of the encryption that answered (it decrypts, on either member).
#[test]
fn a_generated_iv_encryption_fails_over_and_returns_the_iv_used() {
    Lazy_init();
    shared_key(&["iv-a", "iv-b"], b"iv");
    let (a, sa) = faulty("iv-a");
    let (b, sb) = faulty("iv-b");
    let g = group(vec![a, b], Duration::from_millis(300), settings());
    let key = key_of(&g, b"iv");
    let mut seen = std::collections::HashSet::new();
    let mut made = Vec::new();
    let mut encrypt = |g: &ReplicaGroup| {
        let e = g
            .gcm_encrypt_generated_iv(key, b"aad", b"pt")
            .expect("encrypt");
        assert_eq!(e.iv.len(), 12);
        assert!(seen.insert(e.iv.to_vec()), "a fresh IV every call");
        made.push(e);
    };
    for _ in 0..10 {
        encrypt(&g);
    }
    sa.set(FaultMode::Fail);
    let b_before = sb.calls();
    for _ in 0..10 {
        encrypt(&g);
    }
    assert!(sb.calls() > b_before, "b served while a failed");
    assert!(
        g.status()[0].failures >= 1,
        "a call met the failing member and was retried"
    );
    sa.set(FaultMode::Ok);
    wait_for("a back in service", Duration::from_secs(3), || {
        states(&g)[0] == MemberState::Active
    });
    // Every IV returned is the one its ciphertext was made with, on either member's token.
    let direct_a = real("iv-a");
    let key_a = direct_a
        .list_secret_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.id == b"iv")
        .unwrap()
        .handle;
    for e in &made {
        assert_eq!(
            &g.gcm_decrypt(key, &e.iv, b"aad", &e.ciphertext_and_tag)
                .unwrap()[..],
            b"pt"
        );
        assert_eq!(
            &direct_a
                .gcm_decrypt(key_a, &e.iv, b"aad", &e.ciphertext_and_tag)
                .unwrap()[..],
            b"pt"
        );
    }
    direct_a.shutdown();
    g.shutdown();
}
