//! A replica-group test store: an embedded store holding one known AES-256 key (id and label
//! "grp", test-only value 0x42..), built with the store's own format code. Included with
//! `#[path]` by the replica tests that need two members holding the same key.

use std::path::{Path, PathBuf};
use xki_pkcs11::backend::embedded::format::{self, Identity};
use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams};
use xki_pkcs11::backend::embedded::records::{Contents, KeyRecord};
use zeroize::Zeroizing;

/// An embedded store in `dir` holding one known AES-256 key (id "grp"), built with the store's
/// own format code, sealed by a key file (test-only key material). Returns (store, key file).
pub fn embedded_store(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let kek = Zeroizing::new([0x24u8; 32]);
    let key_file = dir.join("k.key");
    std::fs::write(&key_file, *kek).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let contents = Contents {
        next_record: 2,
        keys: vec![KeyRecord {
            record: 1,
            id: b"grp".to_vec(),
            label: b"grp".to_vec(),
            value: Zeroizing::new(vec![0x42; 32]),
            encrypt: true,
            decrypt: true,
            start_date: Vec::new(),
            end_date: Vec::new(),
            state: Vec::new(),
        }],
    };
    let identity = Identity::generate(KdfKind::KeyFile, KdfParams::NONE).unwrap();
    let file = format::seal(&identity, &kek, &contents.encode()).unwrap();
    let store = dir.join("t.store");
    std::fs::write(&store, file).unwrap();
    (store, key_file)
}
