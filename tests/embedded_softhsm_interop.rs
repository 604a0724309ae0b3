//! The embedded token's AES-GCM against SoftHSM2's, byte for byte.
//!
//! TEST ONLY: a known AES key is imported into a throwaway SoftHSM2 token with `CKA_VALUE`, and
//! the same bytes are sealed into an embedded store built with the store's own format code.
//! Both then encrypt the same IV/AAD/plaintext; the ciphertexts and tags must be identical, for
//! 12-byte IVs (GCM fast path) and 16-byte IVs (GHASH-derived J0, as PKCS#11 specifies).
//!
//! This file is its own test binary with a single SoftHSM2 session owner, because
//! `SOFTHSM2_CONF` must be set in this process before the library initialises.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use xki_pkcs11::backend::embedded::format::{self, Identity};
use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams};
use xki_pkcs11::backend::embedded::records::{Contents, KeyRecord};
use xki_pkcs11::backend::embedded::EmbeddedBackend;
use xki_pkcs11::backend::{Backend, BackendKey};
use xki_pkcs11::config::{BackendConfig, BackendKind};
use zeroize::Zeroizing;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const USER_PIN: &str = "interop-1234";

/// Tests here each initialise (and on drop finalise) SoftHSM2 with their own config: one at a
/// time.
static SOFTHSM_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A throwaway SoftHSM2 token in `dir`, logged in as the user.
fn softhsm_session(dir: &Path) -> (Pkcs11, Session) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let status = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "xki-interop"])
        .args(["--pin", USER_PIN, "--so-pin", "interop-so"])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Only test in this binary that touches the environment, and before any thread of ours
    // reads it.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let p11 = Pkcs11::new(SOFTHSM).unwrap();
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p11.get_slots_with_token().unwrap()[0];
    let session = p11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();
    (p11, session)
}

fn import_softhsm(session: &Session, key: &[u8]) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(key.to_vec()),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ])
        .unwrap()
}

/// An embedded store in `dir` holding exactly `keys` (record numbers 1..), sealed with a key
/// file, built with the store's own format code.
fn embedded_with_keys(dir: &Path, keys: &[&[u8]]) -> EmbeddedBackend {
    std::fs::create_dir_all(dir).unwrap();
    let kek = Zeroizing::new([0x42u8; 32]);
    let key_file = dir.join("k.key");
    std::fs::write(&key_file, *kek).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let contents = Contents {
        next_record: keys.len() as u64 + 1,
        keys: keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyRecord {
                record: i as u64 + 1,
                id: vec![i as u8],
                label: format!("interop-{i}").into_bytes(),
                value: Zeroizing::new(k.to_vec()),
                encrypt: true,
                decrypt: true,
                start_date: Vec::new(),
                end_date: Vec::new(),
                state: Vec::new(),
            })
            .collect(),
    };
    let identity = Identity::generate(KdfKind::KeyFile, KdfParams::NONE).unwrap();
    let file = format::seal(&identity, &kek, &contents.encode()).unwrap();
    let store = dir.join("t.store");
    std::fs::write(&store, file).unwrap();
    let cfg = BackendConfig {
        kind: BackendKind::Embedded,
        store: Some(store),
        key_file: Some(key_file),
        ..Default::default()
    };
    EmbeddedBackend::open("interop", &cfg, None).unwrap()
}

fn softhsm_encrypt(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, aad, 128.into()).unwrap();
    s.encrypt(&Mechanism::AesGcm(params), key, pt).unwrap()
}

fn softhsm_decrypt(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, aad, 128.into()).unwrap();
    s.decrypt(&Mechanism::AesGcm(params), key, ct).unwrap()
}

#[test]
fn gcm_matches_softhsm2_for_12_and_16_byte_ivs() {
    let _one_at_a_time = SOFTHSM_USER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_p11, session) = softhsm_session(dir.path());
    let key256: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let key128: Vec<u8> = (0..16u8)
        .map(|i| i.wrapping_mul(91).wrapping_add(3))
        .collect();
    let emb = embedded_with_keys(&dir.path().join("emb"), &[&key256, &key128]);

    let mut checked = 0;
    for (handle, key) in [(1u64, &key256), (2, &key128)] {
        let hsm_key = import_softhsm(&session, key);
        for iv_len in [12usize, 16] {
            let iv: Vec<u8> = (0..iv_len as u8).map(|i| i ^ 0xa5).collect();
            for aad in [&b""[..], b"kms:EncryptionContext"] {
                for pt in [&b"x"[..], &[0x33u8; 17][..], &[0x77u8; 64][..]] {
                    let ours = emb.gcm_encrypt(BackendKey(handle), &iv, aad, pt).unwrap();
                    let theirs = softhsm_encrypt(&session, hsm_key, &iv, aad, pt);
                    assert_eq!(
                        ours,
                        theirs,
                        "key {} bytes, iv {iv_len}, aad {}, pt {}",
                        key.len(),
                        aad.len(),
                        pt.len()
                    );
                    let back = emb
                        .gcm_decrypt(BackendKey(handle), &iv, aad, &theirs)
                        .unwrap();
                    assert_eq!(&back[..], pt);
                    assert_eq!(softhsm_decrypt(&session, hsm_key, &iv, aad, &ours), pt);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 24);
}

/// Small-payload encrypt throughput, embedded vs SoftHSM2, one thread each. The embedded token
/// must be at least 10x faster. Run in release: `cargo test --release --test
/// embedded_softhsm_interop -- --ignored --nocapture` (debug AES is not representative).
#[test]
#[ignore = "throughput comparison; run with --release --ignored"]
fn small_payload_throughput_vs_softhsm2() {
    let _one_at_a_time = SOFTHSM_USER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_p11, session) = softhsm_session(dir.path());
    let key = [0x11u8; 32];
    let emb = embedded_with_keys(&dir.path().join("emb"), &[&key]);
    let hsm_key = import_softhsm(&session, &key);
    let (iv, aad, pt) = ([7u8; 12], [1u8; 32], [2u8; 32]);

    let rate = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(700) {
            for _ in 0..100 {
                f();
            }
            n += 100;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let ours = rate(&mut || {
        emb.gcm_encrypt(BackendKey(1), &iv, &aad, &pt).unwrap();
    });
    let theirs = rate(&mut || {
        softhsm_encrypt(&session, hsm_key, &iv, &aad, &pt);
    });
    println!(
        "32-byte AES-256-GCM encrypt: embedded {ours:.0} ops/s, SoftHSM2 {theirs:.0} ops/s ({:.1}x)",
        ours / theirs
    );
    assert!(
        ours >= 10.0 * theirs,
        "embedded {ours:.0}/s vs SoftHSM2 {theirs:.0}/s"
    );
}
