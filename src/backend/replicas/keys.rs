//! Key identity across the members of a group.
//!
//! The members are separate HSMs holding the same keys under different object handles. A key
//! is the same key on every member when it has the same identity there: its `CKA_ID`, or its
//! `CKA_LABEL` when the ID is empty ([`crate::backend::KeyInfo::identity`]). The group hands the module
//! its own stable `BackendKey` per identity and maps it to each member's handle.
//!
//! Mismatches: a key missing on a member that listed its keys, or present there more than once
//! (two objects with one identity: which one is "the" key is unknowable). Both are logged as
//! errors (once per key and member) and counted in the member's health. Such a key keeps
//! being served, but only from the members that hold exactly one copy of it: refusing it
//! everywhere would turn one HSM's missing replica into an outage, and a member without the
//! key could not answer for it anyway.

use crate::backend::{BackendKey, KeyInfo};
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap};

/// How a member holds one group key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Never listed on this member (it was out of service every time the group looked).
    Unknown,
    /// Exactly one object: the member's handle for it.
    One(BackendKey),
    /// The member listed its keys and this one was not among them.
    Missing,
    /// Several objects share the identity on this member.
    Duplicate,
}

struct GroupKey {
    identity: Vec<u8>,
    /// One entry per member, by member index.
    holdings: Vec<Holding>,
}

/// The mapping between group keys and member keys.
pub struct KeyMap {
    members: usize,
    by_identity: HashMap<Vec<u8>, u64>,
    /// By group key number: numbers the group hands out itself (sequential), looked up on
    /// every call, so a fast hash without flood resistance.
    keys: FxHashMap<u64, GroupKey>,
    next: u64,
    /// (group key, member) pairs already logged as a mismatch, so the log is not flooded.
    reported: BTreeSet<(u64, usize)>,
}

/// A mismatch found while merging a member's listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Member index.
    pub member: usize,
    /// Printable identity of the key.
    pub key: String,
    /// `missing` or `duplicate`.
    pub kind: &'static str,
}

impl KeyMap {
    /// An empty map for a group of `members` members.
    pub fn new(members: usize) -> Self {
        KeyMap {
            members,
            by_identity: HashMap::new(),
            keys: FxHashMap::default(),
            next: 0,
            reported: BTreeSet::new(),
        }
    }

    fn group_key(&mut self, ident: &[u8]) -> u64 {
        if let Some(k) = self.by_identity.get(ident) {
            return *k;
        }
        self.next += 1;
        let k = self.next;
        self.by_identity.insert(ident.to_vec(), k);
        self.keys.insert(
            k,
            GroupKey {
                identity: ident.to_vec(),
                holdings: vec![Holding::Unknown; self.members],
            },
        );
        k
    }

    /// Merge what member `member` listed: every identity it holds, how often, and every group
    /// key it lacks. Returns the mismatches not reported before (for the caller to log).
    pub fn merge_listing(&mut self, member: usize, listed: &[KeyInfo]) -> Vec<Mismatch> {
        let mut seen: HashMap<Vec<u8>, Vec<BackendKey>> = HashMap::new();
        for k in listed {
            seen.entry(k.identity()).or_default().push(k.handle);
        }
        for ident in seen.keys() {
            self.group_key(ident);
        }
        let mut fresh = Vec::new();
        let mut group_keys: Vec<u64> = self.keys.keys().copied().collect();
        group_keys.sort_unstable();
        for gk in group_keys {
            let Some(entry) = self.keys.get_mut(&gk) else {
                continue;
            };
            let holding = match seen.get(&entry.identity).map(Vec::as_slice) {
                Some([one]) => Holding::One(*one),
                Some(_) => Holding::Duplicate,
                None => Holding::Missing,
            };
            entry.holdings[member] = holding;
            let bad = matches!(holding, Holding::Missing | Holding::Duplicate);
            if bad && self.reported.insert((gk, member)) {
                fresh.push(Mismatch {
                    member,
                    key: printable(&entry.identity),
                    kind: if holding == Holding::Missing {
                        "missing"
                    } else {
                        "duplicate"
                    },
                });
            } else if !bad {
                self.reported.remove(&(gk, member));
            }
        }
        fresh
    }

    /// The group key of a member's listed key, if known.
    pub fn group_key_of(&self, info: &KeyInfo) -> Option<u64> {
        self.by_identity.get(&info.identity()).copied()
    }

    /// Member `member`'s handle for group key `key`, when it holds exactly one copy.
    pub fn member_key(&self, key: u64, member: usize) -> Option<BackendKey> {
        held(self.holdings(key)?, member)
    }

    /// How each member holds `key` (by member index); `None` for a key the group does not know.
    pub fn holdings(&self, key: u64) -> Option<&[Holding]> {
        self.keys.get(&key).map(|k| &k.holdings[..])
    }

    /// Whether the group key exists at all.
    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains_key(&key)
    }

    /// Forget member `member`'s copy of `key` (it was destroyed there).
    pub fn set_missing(&mut self, key: u64, member: usize) {
        if let Some(e) = self.keys.get_mut(&key) {
            e.holdings[member] = Holding::Missing;
        }
    }

    /// Drop a key destroyed everywhere.
    pub fn remove(&mut self, key: u64) {
        if let Some(e) = self.keys.remove(&key) {
            self.by_identity.remove(&e.identity);
        }
        self.reported.retain(|(k, _)| *k != key);
    }

    /// Group keys that member `member` is missing or holds more than once.
    pub fn mismatches_of(&self, member: usize) -> u64 {
        self.keys
            .values()
            .filter(|e| {
                matches!(
                    e.holdings.get(member),
                    Some(Holding::Missing | Holding::Duplicate)
                )
            })
            .count() as u64
    }

    /// A group key member `member` holds exactly once (lowest number first), for probes.
    pub fn any_key_on(&self, member: usize) -> Option<BackendKey> {
        let mut keys: Vec<&u64> = self.keys.keys().collect();
        keys.sort_unstable();
        keys.into_iter().find_map(|k| self.member_key(*k, member))
    }
}

/// An identity for logs: the ID in hex, or the label (both are public attributes).
/// The member's handle for a key it holds exactly once.
pub fn held(holdings: &[Holding], member: usize) -> Option<BackendKey> {
    match holdings.get(member)? {
        Holding::One(h) => Some(*h),
        _ => None,
    }
}

fn printable(ident: &[u8]) -> String {
    match ident.split_first() {
        Some((b'i', id)) => format!(
            "id {}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        Some((_, label)) => format!("label {:?}", String::from_utf8_lossy(label)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(handle: u64, id: &[u8]) -> KeyInfo {
        KeyInfo {
            always_sensitive: None,
            never_extractable: None,
            local: None,
            ..KeyInfo::generated_aes(BackendKey(handle), id.to_vec(), b"l".to_vec(), 32)
        }
    }

    #[test]
    fn maps_identities_and_reports_mismatches_once() {
        let mut m = KeyMap::new(2);
        assert!(m
            .merge_listing(0, &[key(10, b"a"), key(11, b"b")])
            .is_empty());
        let found = m.merge_listing(1, &[key(20, b"a"), key(21, b"c"), key(22, b"c")]);
        let kinds: Vec<_> = found.iter().map(|x| (x.member, x.kind)).collect();
        // b missing on 1; c duplicate on 1; c missing on 0 is found on 0's next listing.
        assert_eq!(kinds, vec![(1, "missing"), (1, "duplicate")]);
        let ga = m.group_key_of(&key(0, b"a")).unwrap();
        assert_eq!(m.member_key(ga, 0), Some(BackendKey(10)));
        assert_eq!(m.member_key(ga, 1), Some(BackendKey(20)));
        assert!(m
            .merge_listing(1, &[key(20, b"a"), key(21, b"c"), key(22, b"c")])
            .is_empty());
        assert_eq!(m.mismatches_of(1), 2);
        assert_eq!(m.merge_listing(0, &[key(10, b"a"), key(11, b"b")]).len(), 1);
    }
}
