//! A key's state as the proxy reads it: status and usage apart, both from the HSM.
//!
//! Through our module the key carries the vendor attributes `CKA_XKI_KEY_STATUS`,
//! `CKA_XKI_KEY_USAGE` and `CKA_XKI_DELETION_DATE` (`include/xki_pkcs11.h`); the module keeps
//! them in the HSM beside the key. Any other PKCS#11 library does not know them: the proxy
//! then falls back to what standard attributes can say (DISABLED = both usage flags false,
//! deletion date in `CKA_END_DATE`), with status and usage folded together.
//!
//! Read by GetKeyMetadata, by the admin commands, and on the error path of Encrypt/Decrypt
//! (when the HSM refused, to name the error); never before an Encrypt/Decrypt.

use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::date::Date;
use super::keys::ck;
use super::HsmError;

const XKI_VENDOR_TAG: u64 = 0x584B_4900;
const CKA_VENDOR_DEFINED: u64 = 0x8000_0000;
/// `CKA_XKI_KEY_STATUS`.
pub(super) const CKA_XKI_KEY_STATUS: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 1;
/// `CKA_XKI_KEY_USAGE`.
pub(super) const CKA_XKI_KEY_USAGE: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 2;
/// `CKA_XKI_DELETION_DATE`.
pub(super) const CKA_XKI_DELETION_DATE: u64 = CKA_VENDOR_DEFINED | XKI_VENDOR_TAG | 3;
/// `XKI_KEY_ENABLED`.
pub(super) const XKI_KEY_ENABLED: u64 = 1;
/// `XKI_KEY_DISABLED`.
pub(super) const XKI_KEY_DISABLED: u64 = 2;
const CKF_ENCRYPT: u64 = 0x100;
const CKF_DECRYPT: u64 = 0x200;

/// A key's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The key may do what its usage allows.
    Enabled,
    /// The HSM refuses every operation with the key.
    Disabled,
    /// The stored state is unreadable: treated as DISABLED (fail safe).
    Damaged,
}

/// What a key may do when enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageFlags {
    /// ENCRYPT.
    pub encrypt: bool,
    /// DECRYPT.
    pub decrypt: bool,
}

impl UsageFlags {
    /// The wire list (`keyUsage`).
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.encrypt {
            v.push("ENCRYPT");
        }
        if self.decrypt {
            v.push("DECRYPT");
        }
        v
    }

    pub(super) fn ck_flags(self) -> u64 {
        (if self.encrypt { CKF_ENCRYPT } else { 0 }) | (if self.decrypt { CKF_DECRYPT } else { 0 })
    }
}

/// A key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// `CKA_ENCRYPT` now: what the HSM allows this moment.
    pub encrypt: bool,
    /// `CKA_DECRYPT` now.
    pub decrypt: bool,
    /// Status.
    pub status: KeyStatus,
    /// Usage (restored by enabling), whatever the status.
    pub usage: UsageFlags,
    /// Scheduled deletion.
    pub deletion: Option<Date>,
    /// The module keeps status apart from usage (`false`: a foreign PKCS#11 library).
    pub module_state: bool,
}

impl KeyState {
    /// Not ENABLED (DISABLED, pending deletion, or damaged state).
    pub fn disabled(&self) -> bool {
        self.status != KeyStatus::Enabled
    }

    /// DISABLED while the HSM still allows something: an admin change was interrupted.
    pub fn incomplete(&self) -> bool {
        self.status == KeyStatus::Disabled && (self.encrypt || self.decrypt)
    }
}

fn ulong(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

fn date(bytes: &[u8]) -> Option<Date> {
    if bytes.len() != 8 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let s = std::str::from_utf8(bytes).ok()?;
    let d = Date {
        y: s[0..4].parse().ok()?,
        m: s[4..6].parse().ok()?,
        d: s[6..8].parse().ok()?,
    };
    Some(d)
}

/// The date as `CKA_XKI_DELETION_DATE` takes it.
pub(super) fn date_bytes(d: Date) -> Vec<u8> {
    format!("{:04}{:02}{:02}", d.y, d.m, d.d).into_bytes()
}

/// CKA_END_DATE (the deletion date of foreign-module keys), `None` when absent or unreadable.
pub(super) fn read_end_date(s: &Session, h: ObjectHandle) -> Option<Date> {
    s.get_attributes(h, &[AttributeType::EndDate])
        .ok()
        .and_then(|attrs| {
            attrs.iter().find_map(|a| match a {
                Attribute::EndDate(d) => Date::from_ck(d),
                _ => None,
            })
        })
}

/// Read a key's state (one `C_GetAttributeValue`; a second for `CKA_END_DATE` on foreign
/// modules only).
pub(super) fn read_state(s: &Session, h: ObjectHandle) -> Result<KeyState, HsmError> {
    let attrs = s
        .get_attributes(
            h,
            &[
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::VendorDefined(CKA_XKI_KEY_STATUS),
                AttributeType::VendorDefined(CKA_XKI_KEY_USAGE),
                AttributeType::VendorDefined(CKA_XKI_DELETION_DATE),
            ],
        )
        .map_err(ck("C_GetAttributeValue"))?;
    let (mut encrypt, mut decrypt) = (false, false);
    let (mut status, mut usage, mut deletion) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Encrypt(b) => encrypt = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::VendorDefined((t, v)) => match u64::from(t) {
                CKA_XKI_KEY_STATUS => status = ulong(&v),
                CKA_XKI_KEY_USAGE => usage = ulong(&v),
                CKA_XKI_DELETION_DATE => deletion = date(&v),
                _ => {}
            },
            _ => {}
        }
    }
    let live = UsageFlags { encrypt, decrypt };
    let Some(status) = status else {
        // A library without the XKI attributes: the standard flags are all there is.
        return Ok(KeyState {
            encrypt,
            decrypt,
            status: if encrypt || decrypt {
                KeyStatus::Enabled
            } else {
                KeyStatus::Disabled
            },
            usage: live,
            deletion: read_end_date(s, h),
            module_state: false,
        });
    };
    Ok(KeyState {
        encrypt,
        decrypt,
        status: match status {
            XKI_KEY_ENABLED => KeyStatus::Enabled,
            XKI_KEY_DISABLED => KeyStatus::Disabled,
            _ => KeyStatus::Damaged,
        },
        usage: usage.map_or(live, |f| UsageFlags {
            encrypt: f & CKF_ENCRYPT != 0,
            decrypt: f & CKF_DECRYPT != 0,
        }),
        deletion,
        module_state: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_dates_parse_only_from_digits() {
        assert_eq!(
            date(b"20270301"),
            Some(Date {
                y: 2027,
                m: 3,
                d: 1
            })
        );
        assert_eq!(
            date_bytes(Date {
                y: 2027,
                m: 3,
                d: 1
            }),
            b"20270301"
        );
        for bad in [
            &b""[..],
            b"2027-3-1",
            b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
            b"2027030",
        ] {
            assert_eq!(date(bad), None);
        }
    }
}
