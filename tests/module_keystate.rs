//! Key state apart from usage through the built module, on both slots (SoftHSM2, embedded):
//! the `CKA_XKI_*` vendor attributes of `include/xki_pkcs11.h`, what the HSM enforces, and
//! every refusal. The companion record itself is never visible to callers.

mod support;

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use support::module_fixture::*;
use xki_pkcs11::keystate::{
    CKA_XKI_DELETION_DATE, CKA_XKI_KEY_STATUS, CKA_XKI_KEY_USAGE, XKI_KEY_DISABLED, XKI_KEY_ENABLED,
};

const CKF_ENCRYPT: u64 = pkcs11_sys::CKF_ENCRYPT;
const CKF_DECRYPT: u64 = pkcs11_sys::CKF_DECRYPT;

fn vendor(t: u64, v: Vec<u8>) -> Attribute {
    Attribute::VendorDefined((AttributeType::VendorDefined(t), v))
}

fn ulong(t: u64, v: u64) -> Attribute {
    vendor(t, v.to_ne_bytes().to_vec())
}

/// (status, usage flags, deletion date, CKA_ENCRYPT, CKA_DECRYPT).
fn state(s: &Session, key: ObjectHandle) -> (u64, u64, Vec<u8>, bool, bool) {
    let attrs = s
        .get_attributes(
            key,
            &[
                AttributeType::VendorDefined(CKA_XKI_KEY_STATUS),
                AttributeType::VendorDefined(CKA_XKI_KEY_USAGE),
                AttributeType::VendorDefined(CKA_XKI_DELETION_DATE),
                AttributeType::Encrypt,
                AttributeType::Decrypt,
            ],
        )
        .unwrap();
    let mut out = (0, 0, Vec::new(), false, false);
    for a in attrs {
        match a {
            Attribute::VendorDefined((t, v)) => match u64::from(t) {
                CKA_XKI_KEY_STATUS => out.0 = u64::from_ne_bytes(v.try_into().unwrap()),
                CKA_XKI_KEY_USAGE => out.1 = u64::from_ne_bytes(v.try_into().unwrap()),
                CKA_XKI_DELETION_DATE => out.2 = v,
                _ => {}
            },
            Attribute::Encrypt(b) => out.3 = b,
            Attribute::Decrypt(b) => out.4 = b,
            _ => {}
        }
    }
    out
}

#[test]
fn status_and_usage_are_independent_and_enforced_by_the_hsm() {
    for_each_token(|t| {
        let label = t.label("ks-indep");
        // Generated with its final usage (encrypt only) in one call.
        let mut template = secure_template(&label);
        template.retain(|a| !matches!(a, Attribute::Decrypt(_)));
        template.push(Attribute::Decrypt(false));
        let s = &t.session;
        let key = s
            .generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
            .unwrap();
        // No record yet: ENABLED with the key's own flags.
        assert_eq!(
            state(s, key),
            (XKI_KEY_ENABLED, CKF_ENCRYPT, vec![], true, false)
        );

        s.update_attributes(key, &[ulong(CKA_XKI_KEY_STATUS, XKI_KEY_DISABLED)])
            .unwrap();
        assert_eq!(
            state(s, key),
            (XKI_KEY_DISABLED, CKF_ENCRYPT, vec![], false, false)
        );
        expect_rv(
            t.encrypt(key, 1, b"", b"x"),
            RvError::KeyFunctionNotPermitted,
        );
        // Usage may change while DISABLED; the HSM still refuses.
        s.update_attributes(key, &[ulong(CKA_XKI_KEY_USAGE, CKF_ENCRYPT | CKF_DECRYPT)])
            .unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_DISABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                vec![],
                false,
                false
            )
        );
        // Turning a flag on directly would bypass the state: refused.
        expect_rv(
            s.update_attributes(key, &[Attribute::Encrypt(true)]),
            RvError::ActionProhibited,
        );
        // Enabling restores the saved usage exactly.
        s.update_attributes(key, &[ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED)])
            .unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_ENABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                vec![],
                true,
                true
            )
        );
        round_trips(s, t.iv_mode(), key, 1, b"back");

        // The record is no object a caller can find, list or open.
        let data = find(s, &[Attribute::Class(ObjectClass::DATA)]);
        assert!(data.is_empty(), "{data:?}");
        assert_eq!(
            find(s, &[Attribute::Label(label.as_bytes().to_vec())]),
            vec![key]
        );
        s.destroy_object(key).ok();
    });
}

#[test]
fn scheduled_deletion_and_refusals() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("ks-del"), &[]);
        let s = &t.session;
        let date = vendor(CKA_XKI_DELETION_DATE, b"20270131".to_vec());
        s.update_attributes(key, &[date]).unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_DISABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                b"20270131".to_vec(),
                false,
                false
            )
        );
        // Pending deletion: enabling is refused until cancelled.
        expect_rv(
            s.update_attributes(key, &[ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED)]),
            RvError::ActionProhibited,
        );
        // Bad templates change nothing.
        for bad in [
            vec![ulong(CKA_XKI_KEY_STATUS, 3)],
            vec![ulong(CKA_XKI_KEY_USAGE, 0x1)],
            vec![vendor(CKA_XKI_DELETION_DATE, b"2027-1-1".to_vec())],
        ] {
            expect_rv(
                s.update_attributes(key, &bad),
                RvError::AttributeValueInvalid,
            );
        }
        expect_rv(
            s.update_attributes(
                key,
                &[
                    ulong(CKA_XKI_KEY_STATUS, XKI_KEY_DISABLED),
                    Attribute::Encrypt(false),
                ],
            ),
            RvError::TemplateInconsistent,
        );
        expect_rv(
            s.update_attributes(
                key,
                &[
                    ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED),
                    vendor(CKA_XKI_DELETION_DATE, b"20270131".to_vec()),
                ],
            ),
            RvError::TemplateInconsistent,
        );
        assert_eq!(state(s, key).2, b"20270131".to_vec());
        // Cancel: still DISABLED, then enable.
        s.update_attributes(key, &[vendor(CKA_XKI_DELETION_DATE, Vec::new())])
            .unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_DISABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                vec![],
                false,
                false
            )
        );
        s.update_attributes(key, &[ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED)])
            .unwrap();
        assert_eq!(state(s, key).0, XKI_KEY_ENABLED);
        s.destroy_object(key).ok();
    });
}

/// The header defines the values the module answers.
#[test]
fn header_matches_the_module() {
    let h = std::fs::read_to_string(repo("include/xki_pkcs11.h")).unwrap();
    for (name, want) in [
        (
            "CKA_XKI_KEY_STATUS",
            "(0x80000000UL | XKI_VENDOR_TAG | 0x01UL)",
        ),
        (
            "CKA_XKI_KEY_USAGE",
            "(0x80000000UL | XKI_VENDOR_TAG | 0x02UL)",
        ),
        (
            "CKA_XKI_DELETION_DATE",
            "(0x80000000UL | XKI_VENDOR_TAG | 0x03UL)",
        ),
        ("XKI_KEY_ENABLED", "1UL"),
        ("XKI_KEY_DISABLED", "2UL"),
        ("XKI_KEY_STATE_DAMAGED", "3UL"),
    ] {
        let line = h
            .lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some("#define") && w.next() == Some(name)
            })
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(line.ends_with(want), "{line}");
    }
    assert_eq!(CKA_XKI_KEY_STATUS, 0x8000_0000 | 0x584B_4900 | 1);
}

/// A key an older proxy scheduled for deletion (flags false, `CKA_END_DATE` on the key; only
/// tokens that keep dates, so the embedded slot) reads as DISABLED pending deletion, with
/// both usages to restore; cancelling writes a real record.
#[test]
fn older_versions_scheduled_deletion_reads_as_pending() {
    for_each_token(|t| {
        if t.name != "embedded" {
            return;
        }
        let key = t.keygen(&t.label("ks-legacy"), &[]);
        let s = &t.session;
        s.update_attributes(
            key,
            &[
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::EndDate(cryptoki::types::Date::new(*b"2027", *b"03", *b"01")),
            ],
        )
        .unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_DISABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                b"20270301".to_vec(),
                false,
                false
            )
        );
        s.update_attributes(key, &[vendor(CKA_XKI_DELETION_DATE, Vec::new())])
            .unwrap();
        s.update_attributes(key, &[ulong(CKA_XKI_KEY_STATUS, XKI_KEY_ENABLED)])
            .unwrap();
        assert_eq!(
            state(s, key),
            (
                XKI_KEY_ENABLED,
                CKF_ENCRYPT | CKF_DECRYPT,
                vec![],
                true,
                true
            )
        );
        s.destroy_object(key).ok();
    });
}
