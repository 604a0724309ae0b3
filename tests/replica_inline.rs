//! Replica group members whose reads and crypto run on the caller's thread (`inline_calls`,
//! the embedded token's default) next to members behind workers: the same answers as the
//! member's own backend, changes still on workers, failover, and the deadline kept for a
//! member that can hang.
//!
//! Run with: `cargo test --features fault-injection --test replica_inline` (the config checks
//! also run without the feature).

mod support;
use std::path::Path;
use support::group_store::embedded_store;
use xki_pkcs11::config::Config;

fn config_text(dir: &Path, group: bool, inline: &str) -> String {
    let (store_a, kf_a) = embedded_store(&dir.join("a"));
    let (store_b, kf_b) = embedded_store(&dir.join("b"));
    let backends = if group { r#""a", "b""# } else { r#""a""# };
    format!(
        r#"
[[slot]]
label = "s"
backends = [{backends}]
user_pin_file = "/nonexistent/pin"

[backend.a]
type = "embedded"
store = "{}"
key_file = "{}"
{inline}

[backend.b]
type = "embedded"
store = "{}"
key_file = "{}"
"#,
        store_a.display(),
        kf_a.display(),
        store_b.display(),
        kf_b.display(),
    )
}

#[test]
fn inline_calls_is_accepted_for_group_members_only() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["true", "false"] {
        let text = config_text(dir.path(), true, &format!("inline_calls = {value}"));
        let c = Config::from_toml(&text, "t.toml").unwrap();
        assert_eq!(c.backends["a"].inline_calls, Some(value == "true"));
        assert_eq!(c.backends["b"].inline_calls, None);
    }
    let text = config_text(dir.path(), false, "inline_calls = true");
    let e = Config::from_toml(&text, "t.toml").unwrap_err();
    assert_eq!(e.key, "backend.a.inline_calls", "{e}");
    assert!(e.problem.contains("replica group"), "{e}");
    let text = config_text(dir.path(), true, "inline_calls = \"yes\"");
    let e = Config::from_toml(&text, "t.toml").unwrap_err();
    assert!(e.to_string().contains("inline_calls"), "{e}");
}

#[cfg(feature = "fault-injection")]
mod groups {
    use super::embedded_store;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use xki_pkcs11::backend::embedded::EmbeddedBackend;
    use xki_pkcs11::backend::fault::{FaultBackend, FaultMode};
    use xki_pkcs11::backend::replicas::health::MemberState;
    use xki_pkcs11::backend::replicas::{GroupSettings, MemberSpec, ReplicaGroup};
    use xki_pkcs11::backend::{
        Backend, BackendKey, KeyChanges, KeyInfo, MechanismInfo, NewKey, TokenDescription,
    };
    use xki_pkcs11::config::{BackendConfig, BackendKind};
    use xki_pkcs11::rv::{CkResult, Rv};
    use xki_pkcs11::secret::SecretBytes;

    /// A member backend that passes every call through and records which thread made it.
    struct Recorder {
        inner: Arc<dyn Backend>,
        threads: Mutex<Vec<(&'static str, String)>>,
    }

    impl Recorder {
        fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
            Arc::new(Recorder {
                inner,
                threads: Mutex::new(Vec::new()),
            })
        }

        fn note(&self, verb: &'static str) {
            let t = std::thread::current();
            let name = t.name().unwrap_or("?").to_string();
            self.threads.lock().push((verb, name));
        }

        /// The names of the threads that made calls of `verb`.
        fn threads_of(&self, verb: &str) -> Vec<String> {
            self.threads
                .lock()
                .iter()
                .filter(|(v, _)| *v == verb)
                .map(|(_, t)| t.clone())
                .collect()
        }
    }

    impl Backend for Recorder {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn describe(&self) -> CkResult<TokenDescription> {
            self.inner.describe()
        }
        fn mechanism_info(&self, mechanism: u64) -> CkResult<MechanismInfo> {
            self.inner.mechanism_info(mechanism)
        }
        fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
            self.note("list");
            self.inner.list_secret_keys()
        }
        fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
            self.inner.key_info(key)
        }
        fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
            self.inner.generate_aes_key(spec)
        }
        fn set_key_attributes(&self, key: BackendKey, changes: &KeyChanges) -> CkResult<()> {
            self.note("change");
            self.inner.set_key_attributes(key, changes)
        }
        fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
            self.inner.destroy_key(key)
        }
        fn gcm_encrypt(
            &self,
            key: BackendKey,
            iv: &[u8],
            aad: &[u8],
            plaintext: &[u8],
        ) -> CkResult<Vec<u8>> {
            self.note("crypto");
            self.inner.gcm_encrypt(key, iv, aad, plaintext)
        }
        fn gcm_decrypt(
            &self,
            key: BackendKey,
            iv: &[u8],
            aad: &[u8],
            ciphertext_and_tag: &[u8],
        ) -> CkResult<SecretBytes> {
            self.note("crypto");
            self.inner.gcm_decrypt(key, iv, aad, ciphertext_and_tag)
        }
        fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
            self.inner.generate_random(out)
        }
        fn reads_cannot_hang(&self) -> bool {
            self.inner.reads_cannot_hang()
        }
        fn shutdown(&self) {
            self.inner.shutdown()
        }
    }

    fn embedded(dir: &std::path::Path, name: &str) -> Arc<dyn Backend> {
        let (store, key_file) = embedded_store(&dir.join(name));
        let cfg = BackendConfig {
            kind: BackendKind::Embedded,
            store: Some(store),
            key_file: Some(key_file),
            ..Default::default()
        };
        Arc::new(EmbeddedBackend::open(name, &cfg, None).unwrap())
    }

    fn spec(b: Arc<dyn Backend>, deadline_ms: u64, inline: Option<bool>) -> MemberSpec {
        MemberSpec {
            inline,
            ..MemberSpec::open(b, Duration::from_millis(deadline_ms), 4)
        }
    }

    fn group(members: Vec<MemberSpec>) -> ReplicaGroup {
        let settings = GroupSettings {
            probe_interval: Duration::from_millis(50),
            ..GroupSettings::default()
        };
        ReplicaGroup::new("inline-test", members, settings).expect("group")
    }

    fn the_key(g: &ReplicaGroup) -> BackendKey {
        let keys = g.list_secret_keys().unwrap();
        assert_eq!(keys.len(), 1);
        keys[0].handle
    }

    fn iv(n: u64) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&n.to_le_bytes());
        iv
    }

    fn round_trip(g: &ReplicaGroup, key: BackendKey, n: u64) -> bool {
        let pt = n.to_be_bytes();
        let Ok(ct) = g.gcm_encrypt(key, &iv(n), b"aad", &pt) else {
            return false;
        };
        matches!(g.gcm_decrypt(key, &iv(n), b"aad", &ct), Ok(back) if back[..] == pt[..])
    }

    /// The group's `gcm_*_into` (the module's path) give what `member` gives: the same
    /// ciphertext into the caller's buffer, the plaintext back.
    fn assert_into_same(
        g: &ReplicaGroup,
        key: BackendKey,
        member: &dyn Backend,
        n: u64,
        pt: &[u8],
    ) {
        let mut out = vec![0u8; pt.len() + 16];
        let len = g
            .gcm_encrypt_into(key, &iv(n), b"ad", pt, &mut out)
            .unwrap();
        assert_eq!(len, pt.len() + 16);
        let own = member
            .gcm_encrypt(BackendKey(1), &iv(n), b"ad", pt)
            .unwrap();
        assert_eq!(out, own);
        let mut back = vec![0u8; out.len()];
        let len = g
            .gcm_decrypt_into(key, &iv(n), b"ad", &out, &mut back)
            .unwrap();
        assert_eq!(&back[..len], pt);
        out[3] ^= 1;
        assert_eq!(
            g.gcm_decrypt_into(key, &iv(n), b"ad", &out, &mut back)
                .err(),
            Some(Rv::ENCRYPTED_DATA_INVALID)
        );
    }

    fn states(g: &ReplicaGroup) -> Vec<MemberState> {
        g.status().iter().map(|s| s.state).collect()
    }

    fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn is_worker(thread: &str) -> bool {
        thread.starts_with("xki-")
    }

    #[test]
    fn embedded_members_answer_on_the_callers_thread_exactly_as_the_backend_does() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (embedded(dir.path(), "a"), embedded(dir.path(), "b"));
        let (ra, rb) = (Recorder::new(a.clone()), Recorder::new(b.clone()));
        let g = group(vec![
            spec(ra.clone(), 300, None),
            spec(rb.clone(), 300, None),
        ]);
        let key = the_key(&g);
        let me = std::thread::current().name().unwrap().to_string();
        for n in 0..64u64 {
            let pt = vec![n as u8; 100 + n as usize];
            let ct = g.gcm_encrypt(key, &iv(n), b"aad", &pt).unwrap();
            // Byte for byte what each member's own backend produces (same key, same IV).
            assert_eq!(
                ct,
                a.gcm_encrypt(BackendKey(1), &iv(n), b"aad", &pt).unwrap()
            );
            assert_eq!(
                ct,
                b.gcm_encrypt(BackendKey(1), &iv(n), b"aad", &pt).unwrap()
            );
            assert_eq!(
                &g.gcm_decrypt(key, &iv(n), b"aad", &ct).unwrap()[..],
                &pt[..]
            );
            assert_into_same(&g, key, a.as_ref(), n, &pt);
            // A request error is the caller's answer, and takes no member out.
            let mut bad = ct.clone();
            bad[0] ^= 1;
            assert_eq!(
                g.gcm_decrypt(key, &iv(n), b"aad", &bad).err(),
                Some(Rv::ENCRYPTED_DATA_INVALID)
            );
            let mut out = [0u8; 24];
            g.generate_random(&mut out).unwrap();
            let info = g.key_info(key).unwrap();
            assert_eq!((info.handle, &info.id[..]), (key, &b"grp"[..]));
        }
        assert_eq!(states(&g), vec![MemberState::Active; 2]);
        // Both members served, always on this thread (no worker was involved).
        for r in [&ra, &rb] {
            let threads = r.threads_of("crypto");
            assert!(threads.len() > 20, "{} calls", threads.len());
            assert!(threads.iter().all(|t| *t == me), "{threads:?}");
        }
        // Changes still go to a worker (the embedded store's writes take a file lock that
        // another process can hold).
        let changes = KeyChanges {
            label: Some(b"renamed".to_vec()),
            ..Default::default()
        };
        g.set_key_attributes(key, &changes).unwrap();
        for r in [&ra, &rb] {
            let threads = r.threads_of("change");
            assert_eq!(threads.len(), 1);
            assert!(is_worker(&threads[0]), "{threads:?}");
        }
        assert_eq!(g.key_info(key).unwrap().label, b"renamed");
        g.shutdown();
    }

    #[test]
    fn inline_calls_false_and_members_that_can_hang_use_workers() {
        let dir = tempfile::tempdir().unwrap();
        // `inline_calls = false` on an embedded member; a fault-injected member (it can hang,
        // so it never says its reads cannot).
        let ra = Recorder::new(embedded(dir.path(), "a"));
        let (fb, _switch) = FaultBackend::new("b", embedded(dir.path(), "b"));
        let rb = Recorder::new(Arc::new(fb));
        let g = group(vec![
            spec(ra.clone(), 300, Some(false)),
            spec(rb.clone(), 300, None),
        ]);
        let key = the_key(&g);
        let a = embedded(dir.path(), "a2");
        for n in 0..40 {
            assert!(round_trip(&g, key, n));
            assert_into_same(&g, key, a.as_ref(), n, &[n as u8; 33]);
        }
        for r in [&ra, &rb] {
            let threads = r.threads_of("crypto");
            assert!(threads.len() > 10, "{} calls", threads.len());
            assert!(threads.iter().all(|t| is_worker(t)), "{threads:?}");
        }
        g.shutdown();
    }

    /// The deadline guarantee with an inline member beside one that hangs: no call fails,
    /// and no call waits much longer than one deadline.
    #[test]
    fn a_hanging_member_beside_an_inline_one_costs_at_most_one_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let a = embedded(dir.path(), "a");
        let (fb, switch) = FaultBackend::new("b", embedded(dir.path(), "b"));
        let deadline = Duration::from_millis(200);
        let g = Arc::new(group(vec![
            spec(a, 200, None),
            spec(Arc::new(fb), 200, None),
        ]));
        let key = the_key(&g);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, worst_us) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads: Vec<_> = (0..3u64)
            .map(|th| {
                let (g, stop, ok, failed, worst_us) = (
                    g.clone(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    worst_us.clone(),
                );
                std::thread::spawn(move || {
                    let mut n = th << 40;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // One call at a time, so the worst is per call, not per round trip.
                        let pt = n.to_be_bytes();
                        let t = Instant::now();
                        let ct = g.gcm_encrypt(key, &iv(n), b"aad", &pt);
                        worst_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        let Ok(ct) = ct else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let t = Instant::now();
                        let back = g.gcm_decrypt(key, &iv(n), b"aad", &ct);
                        worst_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        match back {
                            Ok(p) if p[..] == pt[..] => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        switch.set(FaultMode::Hang);
        wait_for("b out of service", Duration::from_secs(3), || {
            states(&g)[1] == MemberState::Unavailable
        });
        let done = ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        assert!(ok.load(Ordering::Relaxed) > done, "traffic stopped");
        let b = &g.status()[1];
        assert!(b.stuck_calls >= 1, "{b:?}");
        assert!(
            b.last_error_text.contains("no answer within 200 ms"),
            "{b:?}"
        );
        assert_eq!(states(&g)[0], MemberState::Active);
        switch.set(FaultMode::Ok);
        wait_for("b back", Duration::from_secs(3), || {
            states(&g)[1] == MemberState::Active
        });
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let worst = Duration::from_micros(worst_us.load(Ordering::Relaxed));
        println!(
            "hang beside an inline member: {} round trips, worst call {worst:?} (deadline {deadline:?})",
            ok.load(Ordering::Relaxed)
        );
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        assert!(worst >= deadline, "no call met the hang: {worst:?}");
        // Target: deadline + 50 ms; the margin here is for a loaded test machine.
        assert!(worst < deadline + Duration::from_millis(150), "{worst:?}");
        g.shutdown();
    }

    /// `inline_calls = true` on a member that fails or answers late: calls are failed over
    /// like a worker's, and a late member stays out of service while it is late.
    #[test]
    fn an_inline_member_that_fails_or_is_late_is_failed_over() {
        let dir = tempfile::tempdir().unwrap();
        let a = embedded(dir.path(), "a");
        let control = dir.path().join("control");
        std::fs::write(&control, "ok").unwrap();
        let fb = FaultBackend::with_control_file("b", embedded(dir.path(), "b"), control.clone());
        let rb = Recorder::new(Arc::new(fb));
        let g = group(vec![spec(a, 60, None), spec(rb.clone(), 60, Some(true))]);
        let key = the_key(&g);
        let me = std::thread::current().name().unwrap().to_string();
        for n in 0..20 {
            assert!(round_trip(&g, key, n));
        }
        let threads = rb.threads_of("crypto");
        assert!(!threads.is_empty() && threads.iter().all(|t| *t == me));

        // Failing: every call still answered (by a), b out of service.
        std::fs::write(&control, "fail").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        for n in 20..60 {
            assert!(round_trip(&g, key, n));
        }
        assert_eq!(states(&g)[1], MemberState::Unavailable);
        std::fs::write(&control, "ok").unwrap();
        wait_for("b back after failing", Duration::from_secs(3), || {
            states(&g)[1] == MemberState::Active
        });

        // Late (120 ms per call against a 60 ms deadline): still every call answered right,
        // b out of service, and the probe (its canary is late too) keeps it out.
        std::fs::write(&control, "delay 120000").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        for n in 60..80 {
            assert!(round_trip(&g, key, n));
        }
        let b = &g.status()[1];
        assert_eq!(b.state, MemberState::Unavailable, "{b:?}");
        assert!(
            b.last_error_text.contains("past its 60 ms deadline"),
            "{b:?}"
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(400) {
            assert_eq!(
                states(&g)[1],
                MemberState::Unavailable,
                "a late probe put b back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::write(&control, "ok").unwrap();
        wait_for("b back after being late", Duration::from_secs(3), || {
            states(&g)[1] == MemberState::Active
        });
        for n in 80..100 {
            assert!(round_trip(&g, key, n));
        }
        g.shutdown();
    }
}
