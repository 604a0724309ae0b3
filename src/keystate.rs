//! Key state apart from key usage, kept in the HSM beside each key.
//!
//! A key's **usage** (what it may do when enabled) and its **status** (ENABLED / DISABLED,
//! with an optional scheduled deletion date) are independent. The HSM itself enforces only
//! `CKA_ENCRYPT` / `CKA_DECRYPT`, so:
//! - ENABLED: the key's live flags *are* its usage; no state record is needed (keys made by
//!   older versions, which have none, are ENABLED with the usage their flags show).
//! - DISABLED: both flags are false on the key (the HSM refuses every operation) and a small
//!   **state record** beside the key remembers the usage to restore and the deletion date.
//!
//! The record is a non-secret object the module owns (design.md: "Non-secret objects the
//! module itself owns to keep key state in the HSM"): on a vendor token a private `CKO_DATA`
//! object (`CKA_APPLICATION` "xki-key-state", found by the key's `CKA_ID`), on the embedded
//! token a field of the key's sealed record. Its format is defined here and nowhere else;
//! callers never see it: they read and write the vendor attributes `CKA_XKI_KEY_STATUS`,
//! `CKA_XKI_KEY_USAGE` and `CKA_XKI_DELETION_DATE` of the key (`include/xki_pkcs11.h`).
//!
//! Every change is a short sequence of writes ([`plan`]) ordered so that a crash between two
//! writes never leaves the key more usable than before or after the change, and never loses
//! the usage to restore: the record is written before usage is taken away, and written back
//! to ENABLED only after usage is given back. An interrupted change shows as a DISABLED key
//! whose HSM flags still allow something ([`View::incomplete`]); repeating the change
//! completes it.
//!
//! ```text
//! record (CKA_VALUE of the companion object), all integers little-endian:
//!  0  4  magic "XKIS"
//!  4  1  format version (1)
//!  5  4  generation: one more than the record it replaces
//!  9  1  status: 1 ENABLED, 2 DISABLED
//! 10  1  usage to restore: bit 0 encrypt, bit 1 decrypt
//! 11  8  deletion date "YYYYMMDD", or 8 zero bytes for none
//! 19  1  n = length of the key's CKA_ID
//! 20  n  the key's CKA_ID (binds the record to its key)
//! 20+n 4 FNV-1a 32 of bytes 0..20+n (catches accidental damage, not an attacker: only a
//!        logged-in user can write the private object)
//! ```
//! The generation lets a token that cannot rewrite an object's value in place (SoftHSM2:
//! `CKA_VALUE` of a data object is read-only) replace it by creating the new object before
//! destroying the old one: if a crash leaves both, the newer one is the record ([`newest`]).

use crate::rv::{CkResult, Rv};
use crate::types::{Attribute, AttributeAnswer};
use pkcs11_sys::{CKA_VENDOR_DEFINED, CKF_DECRYPT, CKF_ENCRYPT, CK_ULONG};

/// The tag of XKI vendor-defined values (`XKI_VENDOR_TAG`, "XKI\0").
const XKI_VENDOR_TAG: u64 = 0x584B_4900;
/// `CKA_XKI_KEY_STATUS` (CK_ULONG): [`XKI_KEY_ENABLED`], [`XKI_KEY_DISABLED`] or, read only,
/// [`XKI_KEY_STATE_DAMAGED`].
pub const CKA_XKI_KEY_STATUS: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 1;
/// `CKA_XKI_KEY_USAGE` (CK_FLAGS: `CKF_ENCRYPT` | `CKF_DECRYPT`): what the key may do when
/// ENABLED, whatever its status.
pub const CKA_XKI_KEY_USAGE: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 2;
/// `CKA_XKI_DELETION_DATE` (CK_DATE, empty for none): scheduled deletion; implies DISABLED.
pub const CKA_XKI_DELETION_DATE: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 3;
/// Status value: the key may do what its usage allows.
pub const XKI_KEY_ENABLED: u64 = 1;
/// Status value: the HSM refuses every operation with the key.
pub const XKI_KEY_DISABLED: u64 = 2;
/// Status value (read only): the state record is unreadable; treat the key as DISABLED.
pub const XKI_KEY_STATE_DAMAGED: u64 = 3;

/// `CKA_APPLICATION` of companion objects on vendor tokens.
pub const COMPANION_APPLICATION: &[u8] = b"xki-key-state";

const MAGIC: &[u8; 4] = b"XKIS";
const VERSION: u8 = 1;
const NO_DATE: [u8; 8] = [0; 8];

/// Is this one of the key-state vendor attributes?
pub fn is_state_attribute(kind: u64) -> bool {
    matches!(
        kind,
        CKA_XKI_KEY_STATUS | CKA_XKI_KEY_USAGE | CKA_XKI_DELETION_DATE
    )
}

/// `CKA_LABEL` of the companion object of the key whose `CKA_ID` is `id`.
pub fn companion_label(id: &[u8]) -> Vec<u8> {
    let mut l = COMPANION_APPLICATION.to_vec();
    l.push(b':');
    for b in id {
        l.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    l
}

/// Encrypt / decrypt permission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
}

impl Usage {
    /// Neither operation.
    pub const NONE: Usage = Usage {
        encrypt: false,
        decrypt: false,
    };

    fn bits(self) -> u8 {
        u8::from(self.encrypt) | (u8::from(self.decrypt) << 1)
    }

    /// As `CK_FLAGS`.
    pub fn ck_flags(self) -> u64 {
        (if self.encrypt { CKF_ENCRYPT } else { 0 }) | (if self.decrypt { CKF_DECRYPT } else { 0 })
    }

    fn from_ck_flags(f: u64) -> CkResult<Usage> {
        if f & !(CKF_ENCRYPT | CKF_DECRYPT) != 0 {
            return Err(Rv::ATTRIBUTE_VALUE_INVALID);
        }
        Ok(Usage {
            encrypt: f & CKF_ENCRYPT != 0,
            decrypt: f & CKF_DECRYPT != 0,
        })
    }
}

/// The status part of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// ENABLED.
    Enabled,
    /// DISABLED.
    Disabled,
}

/// One decoded state record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Status.
    pub status: Status,
    /// Usage to restore when enabled.
    pub usage: Usage,
    /// Deletion date, `YYYYMMDD`, or empty.
    pub deletion: Vec<u8>,
    /// Generation (see the module docs); [`plan`] leaves it 0, the writer sets it.
    pub generation: u32,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl Record {
    /// Encode for the key whose `CKA_ID` is `id`.
    pub fn encode(&self, id: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + id.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.push(match self.status {
            Status::Enabled => 1,
            Status::Disabled => 2,
        });
        out.push(self.usage.bits());
        if self.deletion.len() == 8 {
            out.extend_from_slice(&self.deletion);
        } else {
            out.extend_from_slice(&NO_DATE);
        }
        // CKA_IDs the module generates are 16 bytes; longer ones are cut to 255 for binding.
        let id = &id[..id.len().min(255)];
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decode the record of the key whose `CKA_ID` is `id`; the error says what is wrong.
    pub fn decode(bytes: &[u8], id: &[u8]) -> Result<Record, String> {
        if bytes.len() < 24 {
            return Err(format!("{} bytes, shorter than any record", bytes.len()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if fnv1a(body).to_le_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        if &body[..4] != MAGIC {
            return Err("bad magic".into());
        }
        if body[4] != VERSION {
            return Err(format!("unknown format version {}", body[4]));
        }
        let generation = u32::from_le_bytes([body[5], body[6], body[7], body[8]]);
        let status = match body[9] {
            1 => Status::Enabled,
            2 => Status::Disabled,
            s => return Err(format!("unknown status {s}")),
        };
        if body[10] & !3 != 0 {
            return Err(format!("unknown usage bits {:#x}", body[10]));
        }
        let usage = Usage {
            encrypt: body[10] & 1 != 0,
            decrypt: body[10] & 2 != 0,
        };
        let date = &body[11..19];
        let deletion = if date == NO_DATE {
            Vec::new()
        } else if date.iter().all(u8::is_ascii_digit) {
            date.to_vec()
        } else {
            return Err("deletion date is not YYYYMMDD".into());
        };
        let n = body[19] as usize;
        if body.len() != 20 + n {
            return Err("length does not match the key id length".into());
        }
        if body[20..] != id[..id.len().min(255)] {
            return Err("record belongs to another key (CKA_ID differs)".into());
        }
        Ok(Record {
            status,
            usage,
            deletion,
            generation,
        })
    }
}

/// Of several stored values for one key (a replace interrupted between its create and its
/// destroy, or an HSM that replicated an object the group also wrote), the record: the one
/// of the highest generation that decodes. `None` when none decodes or two different values
/// claim the highest generation (then the state reads as damaged).
pub fn newest(values: &[Vec<u8>], id: &[u8]) -> Option<Vec<u8>> {
    let mut best: Option<(u32, &Vec<u8>)> = None;
    let mut tie = false;
    for v in values {
        let Ok(r) = Record::decode(v, id) else {
            continue;
        };
        match best {
            Some((g, b)) if g == r.generation => tie |= b != v,
            Some((g, _)) if g > r.generation => {}
            _ => {
                best = Some((r.generation, v));
                tie = false;
            }
        }
    }
    match best {
        Some((_, v)) if !tie => Some(v.clone()),
        _ => None,
    }
}

/// What is stored beside a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// No record (ENABLED; every key of older versions).
    Nothing,
    /// A readable record.
    Record(Record),
    /// A record that cannot be read, and why.
    Damaged(String),
}

impl Stored {
    /// Decode what a backend returned for the key whose `CKA_ID` is `id`.
    pub fn from_backend(bytes: Option<&[u8]>, id: &[u8]) -> Stored {
        match bytes {
            None => Stored::Nothing,
            Some(b) => match Record::decode(b, id) {
                Ok(r) => Stored::Record(r),
                Err(why) => Stored::Damaged(why),
            },
        }
    }
}

impl Stored {
    /// What an older version left: a key with no record whose `CKA_END_DATE` is set and whose
    /// flags are both false was scheduled for deletion by an older proxy (which kept the date
    /// on the key and restored both usages on enable). It reads as that: DISABLED, pending
    /// deletion on that date, usage both; the first change writes a real record.
    pub fn with_legacy(self, end_date: &[u8], live: Usage) -> Stored {
        let legacy_date = end_date.len() == 8 && end_date.iter().all(u8::is_ascii_digit);
        match self {
            Stored::Nothing if legacy_date && live == Usage::NONE => Stored::Record(Record {
                status: Status::Disabled,
                usage: Usage {
                    encrypt: true,
                    decrypt: true,
                },
                deletion: end_date.to_vec(),
                generation: 0,
            }),
            other => other,
        }
    }

    /// The generation a new record replacing this one gets.
    pub fn next_generation(&self) -> u32 {
        match self {
            Stored::Record(r) => r.generation.wrapping_add(1),
            _ => 1,
        }
    }

    /// A readable record saying DISABLED.
    pub fn is_disabled(&self) -> bool {
        matches!(self, Stored::Record(r) if r.status == Status::Disabled)
    }
}

/// A key's state as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// `XKI_KEY_ENABLED`, `XKI_KEY_DISABLED` or `XKI_KEY_STATE_DAMAGED`.
    pub status: u64,
    /// The key's usage (live flags when ENABLED or damaged, the saved usage when DISABLED).
    pub usage: Usage,
    /// Deletion date or empty.
    pub deletion: Vec<u8>,
    /// DISABLED, but the HSM flags still allow something: a change was interrupted.
    pub incomplete: bool,
}

/// The view of a key with live flags `live` and `stored` state.
pub fn view(stored: &Stored, live: Usage) -> View {
    match stored {
        Stored::Record(r) if r.status == Status::Disabled => View {
            status: XKI_KEY_DISABLED,
            usage: r.usage,
            deletion: r.deletion.clone(),
            incomplete: live != Usage::NONE,
        },
        Stored::Damaged(_) => View {
            status: XKI_KEY_STATE_DAMAGED,
            usage: live,
            deletion: Vec::new(),
            incomplete: false,
        },
        _ => View {
            status: XKI_KEY_ENABLED,
            usage: live,
            deletion: Vec::new(),
            incomplete: false,
        },
    }
}

fn ulong(v: u64) -> Vec<u8> {
    (v as CK_ULONG).to_ne_bytes().to_vec()
}

/// Answer one key-state attribute from a view.
pub fn state_attribute(v: &View, kind: u64) -> AttributeAnswer {
    match kind {
        CKA_XKI_KEY_STATUS => AttributeAnswer::Value(ulong(v.status)),
        CKA_XKI_KEY_USAGE => AttributeAnswer::Value(ulong(v.usage.ck_flags())),
        CKA_XKI_DELETION_DATE => AttributeAnswer::Value(v.deletion.clone()),
        _ => AttributeAnswer::Invalid,
    }
}

/// A requested state change (`C_SetAttributeValue` of the vendor attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// New status.
    pub status: Option<Status>,
    /// New usage.
    pub usage: Option<Usage>,
    /// New deletion date (`YYYYMMDD`, or empty to cancel).
    pub deletion: Option<Vec<u8>>,
}

fn as_ulong(a: &Attribute) -> CkResult<u64> {
    let bytes: [u8; std::mem::size_of::<CK_ULONG>()] = a
        .value
        .as_slice()
        .try_into()
        .map_err(|_| Rv::ATTRIBUTE_VALUE_INVALID)?;
    Ok(CK_ULONG::from_ne_bytes(bytes))
}

/// Parse a template of key-state attributes only (mixing them with other attributes is
/// `CKR_TEMPLATE_INCONSISTENT`: a state change is its own call, with its own write order).
pub fn parse_change(template: &[Attribute]) -> CkResult<Change> {
    let mut c = Change::default();
    for a in template {
        match a.kind {
            CKA_XKI_KEY_STATUS => {
                c.status = Some(match as_ulong(a)? {
                    XKI_KEY_ENABLED => Status::Enabled,
                    XKI_KEY_DISABLED => Status::Disabled,
                    _ => return Err(Rv::ATTRIBUTE_VALUE_INVALID),
                })
            }
            CKA_XKI_KEY_USAGE => c.usage = Some(Usage::from_ck_flags(as_ulong(a)?)?),
            CKA_XKI_DELETION_DATE => {
                c.deletion = Some(match a.value.len() {
                    0 => Vec::new(),
                    8 if a.value.iter().all(|b| *b == 0) => Vec::new(),
                    8 if a.value.iter().all(u8::is_ascii_digit) => a.value.clone(),
                    _ => return Err(Rv::ATTRIBUTE_VALUE_INVALID),
                })
            }
            _ => return Err(Rv::TEMPLATE_INCONSISTENT),
        }
    }
    Ok(c)
}

/// One write of a state change, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store this record beside the key.
    Record(Record),
    /// Set the key's `CKA_ENCRYPT` / `CKA_DECRYPT`.
    Flags(Usage),
}

/// The writes that carry out `change` on a key with `stored` state and live flags `live`.
///
/// Refusals: enabling a key pending deletion (`CKR_ACTION_PROHIBITED`: cancel first);
/// enabling a key whose record is damaged without naming the usage, or changing only the
/// usage of such a key (`CKR_TEMPLATE_INCOMPLETE`: the usage to restore is unknown);
/// ENABLED with a deletion date (`CKR_TEMPLATE_INCONSISTENT`).
pub fn plan(stored: &Stored, live: Usage, change: &Change) -> CkResult<Vec<Step>> {
    let disabled = match stored {
        Stored::Record(r) if r.status == Status::Disabled => Some(r),
        _ => None,
    };
    let damaged = matches!(stored, Stored::Damaged(_));
    let scheduling = change.deletion.as_ref().is_some_and(|d| !d.is_empty());
    match change.status {
        Some(Status::Enabled) => {
            if scheduling {
                return Err(Rv::TEMPLATE_INCONSISTENT);
            }
            let pending = disabled.is_some_and(|r| !r.deletion.is_empty());
            if pending && change.deletion.is_none() {
                return Err(Rv::ACTION_PROHIBITED);
            }
            let usage = match (change.usage, disabled) {
                (Some(u), _) => u,
                (None, Some(r)) => r.usage,
                (None, None) if damaged => return Err(Rv::TEMPLATE_INCOMPLETE),
                (None, None) => live,
            };
            let mut steps = vec![Step::Flags(usage)];
            if !matches!(stored, Stored::Nothing) {
                steps.push(Step::Record(Record {
                    status: Status::Enabled,
                    usage,
                    deletion: Vec::new(),
                    generation: 0,
                }));
            }
            Ok(steps)
        }
        Some(Status::Disabled) => Ok(disable_steps(disabled, live, change)),
        None if scheduling => Ok(disable_steps(disabled, live, change)),
        None => {
            let mut steps = Vec::new();
            if let Some(r) = disabled {
                // Usage change and/or cancelled deletion of a DISABLED key: the record only.
                steps.push(Step::Record(Record {
                    status: Status::Disabled,
                    usage: change.usage.unwrap_or(r.usage),
                    deletion: change
                        .deletion
                        .clone()
                        .unwrap_or_else(|| r.deletion.clone()),
                    generation: 0,
                }));
                if live != Usage::NONE {
                    // An interrupted disable is completed on the way.
                    steps.push(Step::Flags(Usage::NONE));
                }
            } else if let Some(u) = change.usage {
                if damaged {
                    return Err(Rv::TEMPLATE_INCOMPLETE);
                }
                steps.push(Step::Flags(u));
            }
            Ok(steps)
        }
    }
}

fn disable_steps(disabled: Option<&Record>, live: Usage, change: &Change) -> Vec<Step> {
    let usage = change.usage.or(disabled.map(|r| r.usage)).unwrap_or(live);
    let deletion = change
        .deletion
        .clone()
        .or(disabled.map(|r| r.deletion.clone()))
        .unwrap_or_default();
    vec![
        Step::Record(Record {
            status: Status::Disabled,
            usage,
            deletion,
            generation: 0,
        }),
        Step::Flags(Usage::NONE),
    ]
}

/// TEST BUILDS ONLY (`fault-injection` feature): abort the process right after write `step`
/// of a state change when `XKI_FAULT_ABORT_AFTER_STATE_STEP` equals `step`, to prove the
/// write order survives a crash (`abort` is as abrupt as `kill -9`: no destructor, no
/// flush). Production builds compile this to nothing.
pub fn crash_point(step: usize) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("XKI_FAULT_ABORT_AFTER_STATE_STEP").ok() == Some(step.to_string()) {
        log::error!("fault injection: aborting after key-state write {step}");
        std::process::abort();
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = step;
}

#[cfg(test)]
mod tests;
