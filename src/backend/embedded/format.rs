//! The sealed key-store file: a clear header, then AES-256-GCM over the key records.
//!
//! ```text
//! offset len  field
//!  0      8   magic "XKIEMB01"
//!  8      2   format version, u16 LE (= 1)
//! 10      1   KDF id (1 = Argon2id over a PIN, 2 = raw key file)
//! 11      1   reserved, 0
//! 12      4   Argon2id m_cost in KiB, u32 LE   (0 for a key file)
//! 16      4   Argon2id t_cost, u32 LE          (0 for a key file)
//! 20      4   Argon2id p_cost, u32 LE          (0 for a key file)
//! 24     16   Argon2id salt                    (random per store, kept across writes)
//! 40     16   token id                         (random per store; the token serial)
//! 56     12   GCM nonce                        (random per write)
//! 68      4   body length, u32 LE              (sealed records + 16-byte tag)
//! 72      *   body = AES-256-GCM(KEK, nonce, AAD = bytes 0..72, records) || tag
//! ```
//! The whole header is the AAD, so any change to it (KDF parameters, token id, length) fails
//! the tag check just like a change to the body. The file must be exactly `72 + body length`
//! bytes long; anything else is a corrupt store.

use super::kdf::{KdfKind, KdfParams, Kek, SALT_LEN};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// The file magic.
pub const MAGIC: &[u8; 8] = b"XKIEMB01";
/// The only format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 72;
/// Length of the token id.
pub const TOKEN_ID_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Largest body accepted (64 MiB is far beyond any plausible dev token).
const MAX_BODY: u32 = 64 * 1024 * 1024;

/// What stays the same for the life of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// How the KEK is derived.
    pub kdf: KdfKind,
    /// Argon2id parameters (zero for a key file).
    pub params: KdfParams,
    /// Argon2id salt (zero for a key file).
    pub salt: [u8; SALT_LEN],
    /// Random token id; its hex is the token serial.
    pub token_id: [u8; TOKEN_ID_LEN],
}

impl Identity {
    /// A fresh identity for a new store sealed with `kdf`/`params`.
    pub fn generate(kdf: KdfKind, params: KdfParams) -> Result<Identity, getrandom::Error> {
        let mut salt = [0u8; SALT_LEN];
        if kdf == KdfKind::Argon2id {
            getrandom::getrandom(&mut salt)?;
        }
        let mut token_id = [0u8; TOKEN_ID_LEN];
        getrandom::getrandom(&mut token_id)?;
        Ok(Identity {
            kdf,
            params,
            salt,
            token_id,
        })
    }
}

/// Why a file is not a readable store (before any decryption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

/// A parsed, not yet authenticated, store file.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The identity fields of the header.
    pub identity: Identity,
    header: &'a [u8],
    nonce: [u8; NONCE_LEN],
    body: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Check the framing of a store file: magic, version, KDF, lengths.
pub fn parse(file: &[u8]) -> Result<Parsed<'_>, Corrupt> {
    if file.len() < HEADER_LEN {
        if file.len() >= MAGIC.len() && &file[..MAGIC.len()] != MAGIC {
            return Err(Corrupt("not an xki embedded key store (bad magic)".into()));
        }
        return Err(Corrupt(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            file.len()
        )));
    }
    let (header, body) = file.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err(Corrupt("not an xki embedded key store (bad magic)".into()));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(Corrupt(format!(
            "unsupported format version {version} (this build reads {VERSION})"
        )));
    }
    let kdf = KdfKind::from_id(header[10])
        .ok_or_else(|| Corrupt(format!("unknown KDF id {}", header[10])))?;
    if header[11] != 0 {
        return Err(Corrupt("reserved header byte is not zero".into()));
    }
    let params = KdfParams {
        m_cost_kib: u32_at(header, 12),
        t_cost: u32_at(header, 16),
        p_cost: u32_at(header, 20),
    };
    params.check(kdf).map_err(Corrupt)?;
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&header[24..40]);
    let mut token_id = [0u8; TOKEN_ID_LEN];
    token_id.copy_from_slice(&header[40..56]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header[56..68]);
    let body_len = u32_at(header, 68);
    if !(TAG_LEN as u32..=MAX_BODY).contains(&body_len) {
        return Err(Corrupt(format!("implausible body length {body_len}")));
    }
    if body.len() != body_len as usize {
        return Err(Corrupt(format!(
            "length mismatch: header says {body_len} sealed bytes, file has {} (truncated or extended)",
            body.len()
        )));
    }
    Ok(Parsed {
        identity: Identity {
            kdf,
            params,
            salt,
            token_id,
        },
        header,
        nonce,
        body,
    })
}

impl Parsed<'_> {
    /// Decrypt and authenticate the body. `None` when the tag does not verify: a wrong KEK
    /// (wrong PIN or key file) or a modified file; GCM cannot tell the two apart.
    pub fn open(&self, kek: &Kek) -> Option<Zeroizing<Vec<u8>>> {
        let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).ok()?;
        let (ct, tag) = self.body.split_at(self.body.len() - TAG_LEN);
        let mut buf = Zeroizing::new(ct.to_vec());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&self.nonce),
                self.header,
                &mut buf,
                tag.into(),
            )
            .ok()?;
        Some(buf)
    }
}

fn encode_header(identity: &Identity, nonce: &[u8; NONCE_LEN], body_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10] = identity.kdf.id();
    h[12..16].copy_from_slice(&identity.params.m_cost_kib.to_le_bytes());
    h[16..20].copy_from_slice(&identity.params.t_cost.to_le_bytes());
    h[20..24].copy_from_slice(&identity.params.p_cost.to_le_bytes());
    h[24..40].copy_from_slice(&identity.salt);
    h[40..56].copy_from_slice(&identity.token_id);
    h[56..68].copy_from_slice(nonce);
    h[68..72].copy_from_slice(&body_len.to_le_bytes());
    h
}

/// Seal `records` into a complete store file under a fresh random nonce.
pub fn seal(identity: &Identity, kek: &Kek, records: &[u8]) -> Result<Vec<u8>, String> {
    let body_len = u32::try_from(records.len() + TAG_LEN)
        .ok()
        .filter(|n| *n <= MAX_BODY)
        .ok_or("key store too large")?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| format!("OS random generator failed: {e}"))?;
    let header = encode_header(identity, &nonce, body_len);
    // Zeroizing until sealed: the buffer briefly holds the plaintext records. The capacity is
    // exact, so no reallocation leaves a plaintext copy behind.
    let mut file = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body_len as usize));
    file.extend_from_slice(&header);
    file.extend_from_slice(records);
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| "bad KEK length")?;
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &header, &mut file[HEADER_LEN..])
        .map_err(|_| "sealing failed")?;
    file.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::generate(KdfKind::KeyFile, KdfParams::NONE).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_fresh_nonce() {
        let id = identity();
        let kek = Zeroizing::new([7u8; 32]);
        let a = seal(&id, &kek, b"records").unwrap();
        let b = seal(&id, &kek, b"records").unwrap();
        assert_ne!(a, b, "each write must use a new nonce");
        let p = parse(&a).unwrap();
        assert_eq!(p.identity, id);
        assert_eq!(&p.open(&kek).unwrap()[..], b"records");
        assert!(p.open(&Zeroizing::new([8u8; 32])).is_none());
    }

    #[test]
    fn header_is_authenticated() {
        let kek = Zeroizing::new([7u8; 32]);
        let file = seal(&identity(), &kek, b"records").unwrap();
        for i in [24, 40, 56, 67] {
            let mut bad = file.clone();
            bad[i] ^= 1;
            let p = parse(&bad).unwrap();
            assert!(
                p.open(&kek).is_none(),
                "flipping header byte {i} must fail the tag"
            );
        }
    }

    #[test]
    fn framing_errors_are_reported() {
        let kek = Zeroizing::new([7u8; 32]);
        let file = seal(&identity(), &kek, b"records").unwrap();
        assert!(parse(&file[..10]).unwrap_err().0.contains("truncated"));
        assert!(parse(&file[..file.len() - 1])
            .unwrap_err()
            .0
            .contains("length"));
        let mut bad = file.clone();
        bad[0] = b'Y';
        assert!(parse(&bad).unwrap_err().0.contains("magic"));
        let mut bad = file.clone();
        bad[8] = 9;
        assert!(parse(&bad).unwrap_err().0.contains("version"));
        let mut bad = file.clone();
        bad[10] = 7;
        assert!(parse(&bad).unwrap_err().0.contains("KDF"));
        assert!(parse(b"").unwrap_err().0.contains("truncated"));
    }
}
