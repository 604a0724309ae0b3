//! A narrowed key search: what a caller's `C_FindObjectsInit` template pins down exactly.

use super::KeyInfo;

/// The attributes of a key search a backend can match itself (exact byte equality), so it
/// reads only the keys that can match instead of every secret key on the token. `None` =
/// any value. The module still checks the caller's whole template on what comes back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQuery {
    /// `CKA_LABEL` exactly.
    pub label: Option<Vec<u8>>,
    /// `CKA_ID` exactly.
    pub id: Option<Vec<u8>>,
    /// Whether the caller needs `start_date`/`end_date` of the keys found. Without it a
    /// backend may leave them empty (reading them costs SoftHSM2 a decryption each).
    pub dates: bool,
    /// Whether the caller's template names an attribute that can change (usage flags,
    /// `CKA_MODIFIABLE`, `CKA_PRIVATE`, dates, ...) besides the label and ID: then every
    /// matching key's attributes are read fresh. Without it a backend may answer a key it
    /// has read before from what cannot change (class, type, length, token, sensitive once
    /// true, extractable once false, always-sensitive, never-extractable, local, ID) plus
    /// the label the token just matched, and report the other fields as last read.
    pub mutable: bool,
}

impl KeyQuery {
    /// Whether the query pins nothing down (a plain listing is just as good).
    pub fn is_empty(&self) -> bool {
        // `dates` only says what to read, not which keys.
        self.label.is_none() && self.id.is_none()
    }

    /// Whether `key` satisfies the query.
    pub fn matches(&self, key: &KeyInfo) -> bool {
        self.label.as_ref().is_none_or(|l| *l == key.label)
            && self.id.as_ref().is_none_or(|i| *i == key.id)
    }
}
