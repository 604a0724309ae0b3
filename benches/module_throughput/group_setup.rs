//! The replica-group fixture: two embedded stores holding the SAME AES-256 key under the same
//! `CKA_ID`, and the config for a one-member slot over the first and a group slot over both.
//!
//! Why embedded stores and not two SoftHSM2 tokens: a key put on SoftHSM2 with `CKA_VALUE` has
//! `CKA_ALWAYS_SENSITIVE = false`, which the never-export policy hides, and keys cannot be
//! copied between HSMs. So, like the module's own replica tests (`tests/replica_module.rs`,
//! `proxy/tests/replica_health.rs`), the stores are written with the embedded backend's own
//! format code, sealed by a key file (no Argon2 cost at start-up).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use xki_pkcs11::backend::embedded::format::{self, Identity};
use xki_pkcs11::backend::embedded::kdf::{KdfKind, KdfParams};
use xki_pkcs11::backend::embedded::records::{Contents, KeyRecord};
use zeroize::Zeroizing;

/// Virtual slot (token label) over the first member only.
pub const SINGLE_SLOT: &str = "bench-one";
/// Virtual slot (token label) of the two-member replica group.
pub const GROUP_SLOT: &str = "bench-group";
/// TEST-ONLY user PIN of both slots (`user_pin_file`; the stores are sealed by key files).
pub const GROUP_PIN: &str = "bench-group-pin";
/// `CKA_ID` (and label) of the shared key.
pub const GROUP_KEY_ID: &[u8] = b"xki-bench-grp";
/// Backend names of the two members; the failover run faults [`MEMBERS`]`[1]`.
pub const MEMBERS: [&str; 2] = ["grp-a", "grp-b"];
/// Per-call deadline of each member (`timeout_ms`).
pub const MEMBER_TIMEOUT_MS: u64 = 300;
/// How often the group re-checks a member out of service (`probe_interval_ms`).
pub const PROBE_INTERVAL_MS: u64 = 500;

/// One store per member, the same key value in each; returns the `[[slot]]` and
/// `[backend.*]` config text for both slots.
pub fn write(root: &Path) -> Result<String, String> {
    let mut value = Zeroizing::new(vec![0u8; 32]);
    getrandom::getrandom(&mut value).map_err(|e| format!("getrandom: {e}"))?;
    let pin = root.join("group.pin");
    std::fs::write(&pin, GROUP_PIN).map_err(|e| format!("cannot write {}: {e}", pin.display()))?;
    let mut text = format!(
        r#"
[[slot]]
label = "{SINGLE_SLOT}"
backends = ["{a}"]
user_pin_file = {pin:?}

[[slot]]
label = "{GROUP_SLOT}"
backends = ["{a}", "{b}"]
user_pin_file = {pin:?}
probe_interval_ms = {PROBE_INTERVAL_MS}
"#,
        a = MEMBERS[0],
        b = MEMBERS[1],
        pin = pin.display().to_string(),
    );
    // `XKI_BENCH_GROUP_INLINE=true|false` sets both members' `inline_calls` (`false`: every
    // call through a worker, as for a vendor library); unset: the module's default (inline
    // for embedded members) and no key written, so a module built before the key still loads.
    let inline = match std::env::var("XKI_BENCH_GROUP_INLINE") {
        Ok(v) if v == "true" || v == "false" => format!("inline_calls = {v}\n"),
        Ok(v) => return Err(format!("XKI_BENCH_GROUP_INLINE={v:?}: use true or false")),
        Err(_) => String::new(),
    };
    for name in MEMBERS {
        let (store, key_file) = store(&root.join(name), &value)?;
        text.push_str(&format!(
            "\n[backend.{name}]\ntype = \"embedded\"\ncreate = true\nstore = {:?}\nkey_file = {:?}\ntimeout_ms = {MEMBER_TIMEOUT_MS}\n{inline}",
            store.display().to_string(),
            key_file.display().to_string(),
        ));
    }
    Ok(text)
}

/// A store in `dir` holding `value` as the one key, sealed by a fresh random key file.
fn store(dir: &Path, value: &Zeroizing<Vec<u8>>) -> Result<(PathBuf, PathBuf), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("group store {what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| err("dir", &e))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut kek[..]).map_err(|e| err("key file", &e))?;
    let key_file = dir.join("seal.key");
    std::fs::write(&key_file, *kek).map_err(|e| err("key file", &e))?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("key file", &e))?;
    let contents = Contents {
        next_record: 2,
        keys: vec![KeyRecord {
            record: 1,
            id: GROUP_KEY_ID.to_vec(),
            label: GROUP_KEY_ID.to_vec(),
            value: value.clone(),
            encrypt: true,
            decrypt: true,
            start_date: Vec::new(),
            end_date: Vec::new(),
            state: Vec::new(),
        }],
    };
    let identity = Identity::generate(KdfKind::KeyFile, KdfParams::NONE)
        .map_err(|e| err("identity", &format!("{e:?}")))?;
    let file = format::seal(&identity, &kek, &contents.encode())
        .map_err(|e| err("seal", &format!("{e:?}")))?;
    let store = dir.join("token.store");
    std::fs::write(&store, file).map_err(|e| err("write", &e))?;
    Ok((store, key_file))
}
