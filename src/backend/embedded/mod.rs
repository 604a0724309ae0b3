//! The embedded software token: AES keys in a sealed file, AES-GCM in this process.
//!
//! **This is a development and test token, not an HSM.** Key bytes live in this process's
//! memory and, sealed, in a file on disk; anyone who gets both the store and its PIN or key
//! file gets the keys. It exists so the module works with zero setup and so tests have a fast
//! token. Use a real HSM (a `type = "pkcs11"` backend) for anything that matters.
//!
//! Layout:
//! - [`kdf`]: the key-encryption key (Argon2id over a PIN, or a key file);
//! - [`keyfile`]: reading / first-run creation of the key file;
//! - [`format`](mod@format): the sealed file (header + AES-256-GCM body);
//! - [`records`]: the key records inside the body;
//! - [`store`]: crash-safe writes, the cross-process lock, change detection;
//! - [`gcm`]: cached per-key GCM ciphers (12- and 16-byte IVs);
//! - [`fault`]: a test hook that crashes a write half-way.
//!
//! Every change (generate, set attributes, destroy) is a locked read-modify-write of the whole
//! store, re-read under the lock so concurrent processes never lose each other's keys. Listing
//! and `key_info` re-read the store only when its stat stamp changed. Encrypt and decrypt never
//! touch the file system: they clone an `Arc` out of a read-locked map and run the cached
//! cipher. Consequently a key destroyed or disabled by *another* process stays usable here
//! until this process next lists keys or reads that key's attributes.

pub mod fault;
pub mod format;
pub mod gcm;
pub mod kdf;
pub mod keyfile;
pub mod records;
pub mod store;

mod backend;
mod open;
mod state;
#[cfg(test)]
mod tests;

use self::format::Identity;
use self::gcm::GcmKey;
use self::kdf::Sealing;
use self::records::KeyRecord;
use self::store::{Stamp, StorePaths};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;

pub use self::kdf::{KdfParams, TEST_KDF_ENV};
pub use fault::FAULT_ENV;
pub use open::CREATE_ENV;

/// File name of the default store in [`crate::config::user_data_dir`].
pub const DEFAULT_STORE_NAME: &str = "embedded-token.store";
/// File name of the default key file, next to the store, used when the config names no
/// PIN and no key file (the zero-setup default).
pub const DEFAULT_KEY_FILE_NAME: &str = "embedded-token.key";

/// The embedded software token (development/test only, not an HSM; see the module docs).
pub struct EmbeddedBackend {
    name: String,
    paths: StorePaths,
    sealing: Sealing,
    /// Token id and KDF settings from the header as opened (the serial comes from here).
    identity: Identity,
    /// The keys as last read or written, with their ready ciphers.
    state: RwLock<State>,
    /// Serialises this process's writers (the flock serialises processes).
    writer: Mutex<()>,
}

/// The in-memory image of the store.
struct State {
    keys: HashMap<u64, Arc<KeyEntry>>,
    /// Stamp of the store file this image came from; `None` forces a re-read.
    stamp: Option<Stamp>,
}

/// One key: its record (metadata and bytes) and its initialised ciphers.
struct KeyEntry {
    record: KeyRecord,
    /// Shared between entries of the same key bytes, so a metadata change does not
    /// re-initialise ciphers.
    cipher: Arc<GcmKey>,
}
