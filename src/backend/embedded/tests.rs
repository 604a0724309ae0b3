//! Unit tests of the embedded token through its `Backend` verbs.

use super::{EmbeddedBackend, KdfParams};
use crate::backend::{Backend, BackendKey, KeyChanges, NewKey};
use crate::config::{BackendConfig, BackendKind};
use crate::rv::Rv;
use std::path::Path;
use zeroize::Zeroizing;

fn cfg(dir: &Path) -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Embedded,
        store: Some(dir.join("t.store")),
        key_file: Some(dir.join("t.key")),
        create: true,
        ..Default::default()
    }
}

fn pin_cfg(dir: &Path) -> BackendConfig {
    BackendConfig {
        key_file: None,
        pin_file: Some(dir.join("pin")),
        ..cfg(dir)
    }
}

fn pin(p: &str) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(p.as_bytes().to_vec()))
}

fn open(c: &BackendConfig) -> EmbeddedBackend {
    EmbeddedBackend::open_with_kdf("t", c, None, KdfParams::FAST).unwrap()
}

fn new_key(label: &str) -> NewKey {
    NewKey {
        id: label.as_bytes().to_vec(),
        label: label.as_bytes().to_vec(),
        value_len: 32,
        encrypt: true,
        decrypt: true,
    }
}

#[test]
fn generate_list_and_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let b = open(&c);
    assert!(b.list_secret_keys().unwrap().is_empty());
    let k1 = b.generate_aes_key(&new_key("xki-a")).unwrap();
    let k2 = b.generate_aes_key(&new_key("xki-b")).unwrap();
    assert_ne!(k1.handle, k2.handle);
    assert_eq!(k1.handle, BackendKey(1), "record numbers start at 1");
    let ct = b
        .gcm_encrypt(k1.handle, &[1; 12], b"aad", b"secret")
        .unwrap();
    let serial = b.describe().unwrap().serial;
    drop(b);

    let b = open(&c);
    let keys = b.list_secret_keys().unwrap();
    assert_eq!(keys, vec![k1.clone(), k2]);
    assert_eq!(
        b.describe().unwrap().serial,
        serial,
        "serial is stored in the header"
    );
    assert_eq!(serial.len(), 16);
    let pt = b.gcm_decrypt(k1.handle, &[1; 12], b"aad", &ct).unwrap();
    assert_eq!(&pt[..], b"secret");
}

#[test]
fn key_info_reports_a_locked_down_aes_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&cfg(dir.path()));
    let k = b.generate_aes_key(&new_key("xki-info")).unwrap();
    assert_eq!(b.key_info(k.handle).unwrap(), k);
    assert_eq!(k.key_type, pkcs11_sys::CKK_AES);
    assert_eq!(k.value_len, 32);
    assert!(k.token && k.private && k.sensitive && !k.extractable && k.modifiable);
    assert_eq!(
        (k.always_sensitive, k.never_extractable, k.local),
        (Some(true), Some(true), Some(true))
    );
    assert!(k.encrypt && k.decrypt && !k.wrap && !k.unwrap && !k.sign && !k.verify && !k.derive);
    assert!(k.start_date.is_empty() && k.end_date.is_empty());
    assert_eq!(
        b.key_info(BackendKey(99)).unwrap_err(),
        Rv::OBJECT_HANDLE_INVALID
    );
}

#[test]
fn attributes_change_and_persist_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let b = open(&c);
    let k = b.generate_aes_key(&new_key("xki-attr")).unwrap();
    let changes = KeyChanges {
        label: Some(b"xki-renamed".to_vec()),
        encrypt: Some(false),
        end_date: Some(b"20301231".to_vec()),
        ..Default::default()
    };
    b.set_key_attributes(k.handle, &changes).unwrap();
    assert_eq!(
        b.gcm_encrypt(k.handle, &[0; 12], b"", b"x").unwrap_err(),
        Rv::KEY_FUNCTION_NOT_PERMITTED
    );
    let bad = KeyChanges {
        start_date: Some(b"2030-1-1".to_vec()),
        ..Default::default()
    };
    assert_eq!(
        b.set_key_attributes(k.handle, &bad).unwrap_err(),
        Rv::ATTRIBUTE_VALUE_INVALID
    );
    assert_eq!(
        b.set_key_attributes(BackendKey(77), &changes).unwrap_err(),
        Rv::OBJECT_HANDLE_INVALID
    );
    drop(b);
    let b = open(&c);
    let info = b.key_info(k.handle).unwrap();
    assert_eq!(info.label, b"xki-renamed");
    assert!(!info.encrypt && info.decrypt);
    assert_eq!(info.end_date, b"20301231");
    assert!(info.start_date.is_empty());
}

#[test]
fn disabled_directions_are_not_permitted() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&cfg(dir.path()));
    let enc_only = b
        .generate_aes_key(&NewKey {
            decrypt: false,
            ..new_key("xki-enc")
        })
        .unwrap();
    let ct = b.gcm_encrypt(enc_only.handle, &[0; 12], b"", b"x").unwrap();
    assert_eq!(
        b.gcm_decrypt(enc_only.handle, &[0; 12], b"", &ct)
            .unwrap_err(),
        Rv::KEY_FUNCTION_NOT_PERMITTED
    );
    let dec_only = b
        .generate_aes_key(&NewKey {
            encrypt: false,
            ..new_key("xki-dec")
        })
        .unwrap();
    assert_eq!(
        b.gcm_encrypt(dec_only.handle, &[0; 12], b"", b"x")
            .unwrap_err(),
        Rv::KEY_FUNCTION_NOT_PERMITTED
    );
}

#[test]
fn destroy_removes_the_record_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let b = open(&c);
    let k1 = b.generate_aes_key(&new_key("xki-1")).unwrap();
    b.destroy_key(k1.handle).unwrap();
    assert_eq!(
        b.destroy_key(k1.handle).unwrap_err(),
        Rv::OBJECT_HANDLE_INVALID
    );
    assert_eq!(
        b.gcm_encrypt(k1.handle, &[0; 12], b"", b"x").unwrap_err(),
        Rv::KEY_HANDLE_INVALID
    );
    let k2 = b.generate_aes_key(&new_key("xki-2")).unwrap();
    assert_ne!(k2.handle, k1.handle, "record numbers are never reused");
    drop(b);
    let keys = open(&c).list_secret_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].handle, k2.handle);
}

#[test]
fn key_sizes_and_mechanisms() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&cfg(dir.path()));
    for len in [16, 24, 32] {
        let k = b
            .generate_aes_key(&NewKey {
                value_len: len,
                ..new_key("xki-len")
            })
            .unwrap();
        assert_eq!(k.value_len, len);
        let ct = b.gcm_encrypt(k.handle, &[2; 16], b"a", b"data").unwrap();
        assert_eq!(
            &b.gcm_decrypt(k.handle, &[2; 16], b"a", &ct).unwrap()[..],
            b"data"
        );
    }
    for len in [0, 8, 31, 64] {
        let spec = NewKey {
            value_len: len,
            ..new_key("xki-bad")
        };
        assert_eq!(b.generate_aes_key(&spec).unwrap_err(), Rv::KEY_SIZE_RANGE);
    }
    use pkcs11_sys::*;
    let gcm = b.mechanism_info(CKM_AES_GCM).unwrap();
    assert_eq!((gcm.min_key_size, gcm.max_key_size), (16, 32));
    assert_eq!(gcm.flags, CKF_ENCRYPT | CKF_DECRYPT);
    let gen = b.mechanism_info(CKM_AES_KEY_GEN).unwrap();
    assert_eq!(
        (gen.min_key_size, gen.max_key_size, gen.flags),
        (16, 32, CKF_GENERATE)
    );
    for m in [CKM_AES_CBC, CKM_AES_ECB, CKM_SHA256] {
        assert_eq!(b.mechanism_info(m).unwrap_err(), Rv::MECHANISM_INVALID);
    }
    let d = b.describe().unwrap();
    assert_eq!(
        (d.manufacturer.as_str(), d.model.as_str()),
        ("xki-bridge", "embedded (dev)")
    );
    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    b.generate_random(&mut r1).unwrap();
    b.generate_random(&mut r2).unwrap();
    assert_ne!(r1, r2);
}

#[test]
fn pin_sealed_store_and_wrong_pin() {
    let dir = tempfile::tempdir().unwrap();
    let c = pin_cfg(dir.path());
    let b = EmbeddedBackend::open_with_kdf("t", &c, pin("1234"), KdfParams::FAST).unwrap();
    let k = b.generate_aes_key(&new_key("xki-pin")).unwrap();
    drop(b);
    let before = std::fs::read(c.store.as_ref().unwrap()).unwrap();

    let e = EmbeddedBackend::open("t", &c, pin("9999")).err().unwrap();
    assert_eq!((e.key, e.rv), ("pin_file", Rv::PIN_INCORRECT));
    assert!(!e.problem.contains("9999"), "errors never contain the PIN");
    let env_cfg = BackendConfig {
        pin_file: None,
        pin_env: Some("XKI_TEST_UNUSED".into()),
        ..c.clone()
    };
    let e = EmbeddedBackend::open("t", &env_cfg, pin("0000"))
        .err()
        .unwrap();
    assert_eq!((e.key, e.rv), ("pin_env", Rv::PIN_INCORRECT));
    let e = EmbeddedBackend::open("t", &c, None).err().unwrap();
    assert_eq!(e.key, "pin_file");

    let b = EmbeddedBackend::open("t", &c, pin("1234")).unwrap();
    assert_eq!(b.list_secret_keys().unwrap(), vec![k]);
    drop(b);
    // Failed opens never touched the file; the successful one only read it.
    assert_eq!(std::fs::read(c.store.as_ref().unwrap()).unwrap(), before);
}

#[test]
fn sealing_mismatch_and_missing_key_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    open(&c).generate_aes_key(&new_key("xki-k")).unwrap();
    let store = c.store.clone().unwrap();
    let before = std::fs::read(&store).unwrap();

    let e = EmbeddedBackend::open("t", &pin_cfg(dir.path()), pin("1234"))
        .err()
        .unwrap();
    assert_eq!(e.key, "pin_file");
    assert!(e.problem.contains("key file"), "{}", e.problem);

    std::fs::rename(c.key_file.as_ref().unwrap(), dir.path().join("moved.key")).unwrap();
    let e = EmbeddedBackend::open("t", &c, None).err().unwrap();
    assert_eq!(e.key, "key_file");
    assert!(
        e.problem.contains("cannot be opened without"),
        "{}",
        e.problem
    );
    assert!(
        !c.key_file.as_ref().unwrap().exists(),
        "no new key over an existing store"
    );

    // A different (valid) key file does not unseal the store.
    let other = tempfile::tempdir().unwrap();
    let other_cfg = cfg(other.path());
    drop(open(&other_cfg));
    std::fs::copy(
        other_cfg.key_file.as_ref().unwrap(),
        c.key_file.as_ref().unwrap(),
    )
    .unwrap();
    let e = EmbeddedBackend::open("t", &c, None).err().unwrap();
    assert_eq!((e.key, e.rv), ("key_file", Rv::DEVICE_ERROR));
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn default_key_file_sits_next_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = BackendConfig {
        key_file: None,
        ..cfg(dir.path())
    };
    let b = open(&c);
    b.generate_aes_key(&new_key("xki-d")).unwrap();
    assert!(dir.path().join(super::DEFAULT_KEY_FILE_NAME).exists());
    drop(b);
    assert_eq!(open(&c).list_secret_keys().unwrap().len(), 1);
}

#[test]
fn two_instances_see_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let a = open(&c);
    let b = open(&c);
    let ka = a.generate_aes_key(&new_key("xki-from-a")).unwrap();
    // b never listed: its crypto path finds the new key by one re-read on the miss.
    let ct = b.gcm_encrypt(ka.handle, &[5; 12], b"", b"shared").unwrap();
    assert_eq!(
        &a.gcm_decrypt(ka.handle, &[5; 12], b"", &ct).unwrap()[..],
        b"shared"
    );
    let kb = b.generate_aes_key(&new_key("xki-from-b")).unwrap();
    assert_ne!(ka.handle, kb.handle);
    assert_eq!(a.list_secret_keys().unwrap().len(), 2);
    a.destroy_key(kb.handle).unwrap();
    assert_eq!(b.list_secret_keys().unwrap(), vec![ka]);
}

#[test]
fn shutdown_drops_keys() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&cfg(dir.path()));
    let k = b.generate_aes_key(&new_key("xki-s")).unwrap();
    b.shutdown();
    assert!(b.state.read().keys.is_empty());
    // Not used after shutdown in practice; if it is, it re-reads rather than misbehaving.
    assert_eq!(b.list_secret_keys().unwrap().len(), 1);
    let _ = k;
}

#[test]
fn threads_and_instances_writing_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let a = std::sync::Arc::new(open(&c));
    let b = std::sync::Arc::new(open(&c));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let backend = if t % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                for n in 0..10 {
                    let k = backend
                        .generate_aes_key(&new_key(&format!("xki-t{t}-{n}")))
                        .unwrap();
                    let ct = backend.gcm_encrypt(k.handle, &[0; 12], b"", b"p").unwrap();
                    assert_eq!(
                        &backend.gcm_decrypt(k.handle, &[0; 12], b"", &ct).unwrap()[..],
                        b"p"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(a.list_secret_keys().unwrap().len(), 40);
    assert_eq!(b.list_secret_keys().unwrap(), a.list_secret_keys().unwrap());
}

#[test]
fn crypto_path_never_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let b = open(&c);
    let k = b.generate_aes_key(&new_key("xki-hot")).unwrap();
    std::fs::remove_file(c.store.as_ref().unwrap()).unwrap();
    // Listing needs the file and says so; encrypt/decrypt run from memory alone.
    assert_eq!(b.list_secret_keys().unwrap_err(), Rv::DEVICE_ERROR);
    let ct = b.gcm_encrypt(k.handle, &[3; 16], b"a", b"memory").unwrap();
    assert_eq!(
        &b.gcm_decrypt(k.handle, &[3; 16], b"a", &ct).unwrap()[..],
        b"memory"
    );
    // Nothing recreates a vanished store behind the operator's back.
    assert_eq!(
        b.generate_aes_key(&new_key("xki-x")).unwrap_err(),
        Rv::DEVICE_ERROR
    );
    assert!(!c.store.as_ref().unwrap().exists());
}
