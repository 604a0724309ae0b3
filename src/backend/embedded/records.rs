//! The key records inside the sealed body, and their small binary encoding.
//!
//! A hand-written encoding (rather than serde) so that key bytes go straight from the
//! zeroizing plaintext buffer into zeroizing record fields, with no intermediate copies.
//!
//! ```text
//! u64 next_record  u32 count  then per record:
//!   u64 record number  u8 flags (bit 0 encrypt, bit 1 decrypt, bit 2 has state)
//!   u16 len + id   u16 len + label   u8 len + value   u8 len + start date   u8 len + end date
//!   [u8 len + key-state record, only with flag bit 2 (`crate::keystate`)]
//! ```
//! Stores without key-state records are written exactly as before (bit 2 clear), so a store
//! only becomes unreadable to older builds once a key in it has been disabled.
//! All integers are little-endian.

use zeroize::Zeroizing;

/// Largest `CKA_ID` / `CKA_LABEL` stored (the u16 length prefix).
pub const MAX_ATTR_LEN: usize = u16::MAX as usize;

/// One AES key on the embedded token.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The record number: the backend handle. Never reused within a store.
    pub record: u64,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: Vec<u8>,
    /// The key bytes (16, 24 or 32).
    pub value: Zeroizing<Vec<u8>>,
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
    /// `CKA_START_DATE` (`YYYYMMDD` or empty).
    pub start_date: Vec<u8>,
    /// `CKA_END_DATE` (`YYYYMMDD` or empty).
    pub end_date: Vec<u8>,
    /// The key-state record the module keeps beside the key (empty: none).
    pub state: Vec<u8>,
}

impl std::fmt::Debug for KeyRecord {
    // Hand-written so that a debug print can never show key bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("record", &self.record)
            .field("id", &self.id)
            .field("label", &String::from_utf8_lossy(&self.label))
            .field("value_len", &self.value.len())
            .field("encrypt", &self.encrypt)
            .field("decrypt", &self.decrypt)
            .finish_non_exhaustive()
    }
}

/// Everything in the sealed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// The record number the next new key gets (starts at 1; 0 is never a handle).
    pub next_record: u64,
    /// The keys, in record order.
    pub keys: Vec<KeyRecord>,
}

impl Default for Contents {
    fn default() -> Self {
        Contents {
            next_record: 1,
            keys: Vec::new(),
        }
    }
}

impl Contents {
    /// Encode into a zeroizing buffer (allocated once at its exact size).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let size = 12
            + self
                .keys
                .iter()
                .map(|k| {
                    9 + 2
                        + k.id.len()
                        + 2
                        + k.label.len()
                        + 3
                        + k.value.len()
                        + k.start_date.len()
                        + k.end_date.len()
                        + if k.state.is_empty() {
                            0
                        } else {
                            1 + k.state.len()
                        }
                })
                .sum::<usize>();
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        out.extend_from_slice(&self.next_record.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.record.to_le_bytes());
            out.push(
                u8::from(k.encrypt)
                    | (u8::from(k.decrypt) << 1)
                    | (u8::from(!k.state.is_empty()) << 2),
            );
            // Lengths were validated when the fields were set; `as` cannot truncate here.
            out.extend_from_slice(&(k.id.len() as u16).to_le_bytes());
            out.extend_from_slice(&k.id);
            out.extend_from_slice(&(k.label.len() as u16).to_le_bytes());
            out.extend_from_slice(&k.label);
            for field in [&k.value[..], &k.start_date, &k.end_date] {
                out.push(field.len() as u8);
                out.extend_from_slice(field);
            }
            if !k.state.is_empty() {
                out.push(k.state.len() as u8);
                out.extend_from_slice(&k.state);
            }
        }
        debug_assert_eq!(out.len(), size);
        out
    }

    /// Decode; an error describes the first inconsistency.
    pub fn decode(bytes: &[u8]) -> Result<Contents, String> {
        let mut r = Reader { bytes, at: 0 };
        let next_record = r.u64()?;
        let count = r.u32()? as usize;
        // Each record takes at least 18 bytes: bound the allocation by what the input can hold.
        if count > bytes.len() / 18 {
            return Err(format!("record count {count} exceeds the data"));
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let record = r.u64()?;
            let flags = r.take(1)?[0];
            if flags & !7 != 0 {
                return Err(format!("record {record}: unknown flags {flags:#x}"));
            }
            let n = r.u16()? as usize;
            let id = r.take(n)?.to_vec();
            let n = r.u16()? as usize;
            let label = r.take(n)?.to_vec();
            let n = r.take(1)?[0] as usize;
            let value = Zeroizing::new(r.take(n)?.to_vec());
            let n = r.take(1)?[0] as usize;
            let start_date = r.take(n)?.to_vec();
            let n = r.take(1)?[0] as usize;
            let end_date = r.take(n)?.to_vec();
            let state = if flags & 4 != 0 {
                let n = r.take(1)?[0] as usize;
                if n == 0 {
                    return Err(format!("record {record}: empty key-state record"));
                }
                r.take(n)?.to_vec()
            } else {
                Vec::new()
            };
            if record == 0 || record >= next_record {
                return Err(format!("record number {record} out of range"));
            }
            if keys.iter().any(|k: &KeyRecord| k.record == record) {
                return Err(format!("record number {record} appears twice"));
            }
            keys.push(KeyRecord {
                record,
                id,
                label,
                value,
                encrypt: flags & 1 != 0,
                decrypt: flags & 2 != 0,
                start_date,
                end_date,
                state,
            });
        }
        if r.at != bytes.len() {
            return Err("trailing bytes after the last record".into());
        }
        Ok(Contents { next_record, keys })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("records truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Contents {
        Contents {
            next_record: 5,
            keys: vec![
                KeyRecord {
                    record: 1,
                    id: b"id-1".to_vec(),
                    label: b"xki-one".to_vec(),
                    value: Zeroizing::new(vec![0xAA; 32]),
                    encrypt: true,
                    decrypt: false,
                    start_date: b"20260101".to_vec(),
                    end_date: Vec::new(),
                    state: Vec::new(),
                },
                KeyRecord {
                    record: 4,
                    id: Vec::new(),
                    label: Vec::new(),
                    value: Zeroizing::new(vec![0x55; 16]),
                    encrypt: false,
                    decrypt: true,
                    start_date: Vec::new(),
                    end_date: b"20301231".to_vec(),
                    state: b"XKIS-state".to_vec(),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(Contents::decode(&c.encode()).unwrap(), c);
        let empty = Contents::default();
        assert_eq!(Contents::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                Contents::decode(&bytes[..n]).is_err(),
                "prefix {n} accepted"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(Contents::decode(&long).is_err());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("170"), "{s}");
        assert!(!s.to_lowercase().contains("aa, "), "{s}");
    }
}
