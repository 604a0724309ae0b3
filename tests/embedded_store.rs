//! The embedded token's store as a file other processes and crashes can touch.
//!
//! Multi-process tests re-run this test binary as a child (`--exact <child test> --ignored`)
//! with `XKI_EMB_CHILD_DIR` telling the ignored child test what to do; without that variable
//! the child tests return at once, so running `--ignored` by hand is harmless.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use xki_pkcs11::backend::embedded::{EmbeddedBackend, KdfParams, FAULT_ENV};
use xki_pkcs11::backend::{Backend, BackendKey, NewKey};
use xki_pkcs11::config::{BackendConfig, BackendKind, Secret};
use xki_pkcs11::rv::Rv;
use zeroize::Zeroizing;

const CHILD_DIR_ENV: &str = "XKI_EMB_CHILD_DIR";
const CHILD_TAG_ENV: &str = "XKI_EMB_CHILD_TAG";

fn key_file_cfg(dir: &Path) -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Embedded,
        store: Some(dir.join("store/token.store")),
        key_file: Some(dir.join("store/token.key")),
        create: true,
        ..Default::default()
    }
}

fn pin_cfg(dir: &Path) -> BackendConfig {
    BackendConfig {
        key_file: None,
        pin_env: Some("XKI_EMB_TEST_PIN_UNUSED".into()),
        ..key_file_cfg(dir)
    }
}

fn pin(p: &str) -> Option<Secret> {
    Some(Zeroizing::new(p.as_bytes().to_vec()))
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("store/token.store")
}

fn spec(label: &str) -> NewKey {
    NewKey {
        id: label.as_bytes().to_vec(),
        label: label.as_bytes().to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    }
}

fn open_kf(dir: &Path) -> EmbeddedBackend {
    EmbeddedBackend::open_with_kdf("emb", &key_file_cfg(dir), None, KdfParams::FAST).unwrap()
}

fn labels(b: &EmbeddedBackend) -> Vec<String> {
    let mut l: Vec<String> = b
        .list_secret_keys()
        .unwrap()
        .into_iter()
        .map(|k| String::from_utf8(k.label).unwrap())
        .collect();
    l.sort();
    l
}

/// Run the ignored test `name` of this binary as a child process.
fn spawn_child(
    name: &str,
    dir: &Path,
    tag: &str,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR_ENV, dir)
    .env(CHILD_TAG_ENV, tag)
    .env_remove(FAULT_ENV)
    // The child's harness chatter is noise; its panics (stderr) stay visible.
    .stdout(std::process::Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR_ENV).map(PathBuf::from)
}

#[test]
fn gcm_round_trips_and_authentication_failures() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_kf(dir.path());
    let k = b.generate_aes_key(&spec("xki-gcm")).unwrap().handle;
    for iv_len in [12usize, 16] {
        let iv: Vec<u8> = (0..iv_len as u8).collect();
        for aad in [&b""[..], b"aws:kms:context"] {
            for pt in [&b""[..], b"x", &[0x5a; 1000][..]] {
                let ct = b.gcm_encrypt(k, &iv, aad, pt).unwrap();
                assert_eq!(ct.len(), pt.len() + 16);
                assert_eq!(&b.gcm_decrypt(k, &iv, aad, &ct).unwrap()[..], pt);

                let mut bad_tag = ct.clone();
                *bad_tag.last_mut().unwrap() ^= 0x80;
                assert_eq!(
                    b.gcm_decrypt(k, &iv, aad, &bad_tag).unwrap_err(),
                    Rv::ENCRYPTED_DATA_INVALID
                );
                assert_eq!(
                    b.gcm_decrypt(k, &iv, b"other aad", &ct).unwrap_err(),
                    Rv::ENCRYPTED_DATA_INVALID
                );
                let mut other_iv = iv.clone();
                other_iv[0] ^= 1;
                assert_eq!(
                    b.gcm_decrypt(k, &other_iv, aad, &ct).unwrap_err(),
                    Rv::ENCRYPTED_DATA_INVALID
                );
            }
        }
    }
    // The same IV bytes under 12 and 16 bytes are different J0s: different ciphertexts.
    let c12 = b.gcm_encrypt(k, &[0; 12], b"", b"same").unwrap();
    let c16 = b.gcm_encrypt(k, &[0; 16], b"", b"same").unwrap();
    assert_ne!(c12, c16);
    assert_eq!(
        b.gcm_encrypt(k, &[0; 13], b"", b"x").unwrap_err(),
        Rv::MECHANISM_PARAM_INVALID
    );
    assert_eq!(
        b.gcm_decrypt(k, &[0; 12], b"", &[0; 10]).unwrap_err(),
        Rv::ENCRYPTED_DATA_LEN_RANGE
    );
    assert_eq!(
        b.gcm_encrypt(BackendKey(4242), &[0; 12], b"", b"x")
            .unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_kf(dir.path());
    b.generate_aes_key(&spec("xki-mode")).unwrap();
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store_path(dir.path())), 0o600);
    assert_eq!(mode(dir.path().join("store/token.key")), 0o600);
    assert_eq!(mode(dir.path().join("store/token.store.lock")), 0o600);
    assert_eq!(
        mode(dir.path().join("store")),
        0o700,
        "created store dir is 0700"
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("store/token.key"))
            .unwrap()
            .len(),
        32
    );

    // A key file others can read is refused.
    drop(b);
    let kf = dir.path().join("store/token.key");
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = EmbeddedBackend::open("emb", &key_file_cfg(dir.path()), None)
        .err()
        .unwrap();
    assert_eq!(e.key, "key_file");
    assert!(e.problem.contains("0640"), "{}", e.problem);
}

/// Open must fail with `key`/`rv`, name the store file, and leave the bytes alone.
fn assert_refused(cfg: &BackendConfig, pin: Option<Secret>, bytes: &[u8], key: &str, rv: Rv) {
    let store = cfg.store.clone().unwrap();
    std::fs::write(&store, bytes).unwrap();
    let e = EmbeddedBackend::open("emb", cfg, pin).err().unwrap();
    assert_eq!((e.key, e.rv), (key, rv), "{}", e.problem);
    assert!(
        e.problem.contains(&store.display().to_string()),
        "error must name the file: {}",
        e.problem
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bytes,
        "a bad store is never rewritten"
    );
}

#[test]
fn corrupt_or_truncated_store_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = key_file_cfg(dir.path());
    open_kf(dir.path())
        .generate_aes_key(&spec("xki-c"))
        .unwrap();
    let good = std::fs::read(store_path(dir.path())).unwrap();

    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    assert_refused(&cfg, None, &bad_magic, "store", Rv::DEVICE_ERROR);
    assert_refused(
        &cfg,
        None,
        &good[..good.len() - 1],
        "store",
        Rv::DEVICE_ERROR,
    );
    assert_refused(&cfg, None, &good[..40], "store", Rv::DEVICE_ERROR);
    assert_refused(&cfg, None, b"", "store", Rv::DEVICE_ERROR);
    let mut longer = good.clone();
    longer.push(0);
    assert_refused(&cfg, None, &longer, "store", Rv::DEVICE_ERROR);
    // A flipped body byte parses but fails the tag: with a key file that is reported on
    // key_file (wrong key file or corrupt store), still naming the store.
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 1;
    assert_refused(&cfg, None, &flipped, "key_file", Rv::DEVICE_ERROR);
    // A flipped header byte (the token id) is authenticated too.
    let mut flipped = good.clone();
    flipped[45] ^= 1;
    assert_refused(&cfg, None, &flipped, "key_file", Rv::DEVICE_ERROR);

    // The intact store still opens with its key.
    std::fs::write(store_path(dir.path()), &good).unwrap();
    assert_eq!(labels(&open_kf(dir.path())), ["xki-c"]);
}

#[test]
fn pin_store_tamper_looks_like_wrong_pin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pin_cfg(dir.path());
    let b = EmbeddedBackend::open_with_kdf("emb", &cfg, pin("123456"), KdfParams::FAST).unwrap();
    b.generate_aes_key(&spec("xki-p")).unwrap();
    drop(b);
    let good = std::fs::read(store_path(dir.path())).unwrap();
    let mut flipped = good.clone();
    flipped[80] ^= 1;
    // Documented: with a PIN, a modified body cannot be told from a wrong PIN.
    assert_refused(&cfg, pin("123456"), &flipped, "pin_env", Rv::PIN_INCORRECT);
    assert_refused(&cfg, pin("654321"), &good, "pin_env", Rv::PIN_INCORRECT);
    std::fs::write(store_path(dir.path()), &good).unwrap();
    let b = EmbeddedBackend::open("emb", &cfg, pin("123456")).unwrap();
    assert_eq!(labels(&b), ["xki-p"]);
}

#[test]
fn store_corrupted_while_running_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_kf(dir.path());
    let k = b.generate_aes_key(&spec("xki-live")).unwrap().handle;
    let store = store_path(dir.path());
    let mut bytes = std::fs::read(&store).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&store, &bytes).unwrap();
    assert_eq!(
        b.generate_aes_key(&spec("xki-new")).unwrap_err(),
        Rv::DEVICE_ERROR
    );
    assert_eq!(b.destroy_key(k).unwrap_err(), Rv::DEVICE_ERROR);
    assert_eq!(b.list_secret_keys().unwrap_err(), Rv::DEVICE_ERROR);
    assert_eq!(std::fs::read(&store).unwrap(), bytes, "never overwritten");
    // Keys already in memory keep working: the hot path does not read the file.
    let ct = b.gcm_encrypt(k, &[0; 12], b"", b"still").unwrap();
    assert_eq!(&b.gcm_decrypt(k, &[0; 12], b"", &ct).unwrap()[..], b"still");
}

/// Child: open the store and try to add a key; `XKI_EMBEDDED_FAULT` makes the write abort.
#[test]
#[ignore = "child process of crash_between_write_and_rename_keeps_the_old_store"]
fn child_crashing_writer() {
    let Some(dir) = child_dir() else { return };
    let b = open_kf(&dir);
    let _ = b.generate_aes_key(&spec("xki-lost"));
    // Only reached if the fault hook did not fire.
    std::process::exit(3);
}

#[test]
fn crash_between_write_and_rename_keeps_the_old_store() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_kf(dir.path());
    b.generate_aes_key(&spec("xki-old-1")).unwrap();
    b.generate_aes_key(&spec("xki-old-2")).unwrap();
    drop(b);
    let before = std::fs::read(store_path(dir.path())).unwrap();

    let status = spawn_child(
        "child_crashing_writer",
        dir.path(),
        "crash",
        &[(FAULT_ENV, "after-write-before-rename")],
    )
    .wait()
    .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "child must abort: {status:?}"
    );
    assert_eq!(std::fs::read(store_path(dir.path())).unwrap(), before);
    let temps = || {
        std::fs::read_dir(dir.path().join("store"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("token.store.tmp-")
            })
            .count()
    };
    assert_eq!(temps(), 1, "the crashed writer left its complete temp file");

    let b = open_kf(dir.path());
    assert_eq!(labels(&b), ["xki-old-1", "xki-old-2"]);
    assert_eq!(temps(), 0, "open sweeps the leftover temp file");
    b.generate_aes_key(&spec("xki-after")).unwrap();
    drop(b);
    assert_eq!(
        labels(&open_kf(dir.path())),
        ["xki-after", "xki-old-1", "xki-old-2"]
    );
}

/// Child: add 10 keys labelled `<tag>-<n>` to a PIN-sealed store.
#[test]
#[ignore = "child process of concurrent_processes_never_lose_keys"]
fn child_adding_keys() {
    let Some(dir) = child_dir() else { return };
    let tag = std::env::var(CHILD_TAG_ENV).unwrap();
    let b = EmbeddedBackend::open("emb", &pin_cfg(&dir), pin("4321")).unwrap();
    for n in 0..10 {
        b.generate_aes_key(&spec(&format!("{tag}-{n}"))).unwrap();
    }
}

#[test]
fn concurrent_processes_never_lose_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pin_cfg(dir.path());
    drop(EmbeddedBackend::open_with_kdf("emb", &cfg, pin("4321"), KdfParams::FAST).unwrap());
    let children: Vec<_> = (0..4)
        .map(|i| spawn_child("child_adding_keys", dir.path(), &format!("p{i}"), &[]))
        .collect();
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "child failed: {status:?}");
    }
    let b = EmbeddedBackend::open("emb", &cfg, pin("4321")).unwrap();
    let keys = b.list_secret_keys().unwrap();
    assert_eq!(keys.len(), 40);
    let mut expect: Vec<String> = (0..4)
        .flat_map(|i| (0..10).map(move |n| format!("p{i}-{n}")))
        .collect();
    expect.sort();
    assert_eq!(labels(&b), expect);
    let mut handles: Vec<u64> = keys.iter().map(|k| k.handle.0).collect();
    handles.sort();
    assert_eq!(handles, (1..=40).collect::<Vec<u64>>());
}
