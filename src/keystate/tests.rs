use super::*;

const ID: &[u8] = b"0123456789abcdef";
const BOTH: Usage = Usage {
    encrypt: true,
    decrypt: true,
};
const ENC: Usage = Usage {
    encrypt: true,
    decrypt: false,
};

fn disabled(usage: Usage, deletion: &[u8]) -> Stored {
    Stored::Record(Record {
        status: Status::Disabled,
        usage,
        deletion: deletion.to_vec(),
        generation: 7,
    })
}

#[test]
fn record_round_trips_and_damage_is_detected() {
    let r = Record {
        status: Status::Disabled,
        usage: ENC,
        deletion: b"20270101".to_vec(),
        generation: 3,
    };
    let bytes = r.encode(ID);
    assert_eq!(Record::decode(&bytes, ID), Ok(r.clone()));
    assert!(Record::decode(&bytes, b"other-id").is_err());
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(Record::decode(&b, ID).is_err(), "flip at {i} accepted");
    }
    for n in 0..bytes.len() {
        assert!(Record::decode(&bytes[..n], ID).is_err());
    }
    assert!(matches!(
        Stored::from_backend(Some(b"garbage"), ID),
        Stored::Damaged(_)
    ));
    assert_eq!(Stored::from_backend(None, ID), Stored::Nothing);
}

#[test]
fn views() {
    let v = view(&Stored::Nothing, ENC);
    assert_eq!((v.status, v.usage), (XKI_KEY_ENABLED, ENC));
    let v = view(&disabled(BOTH, b""), Usage::NONE);
    assert_eq!(
        (v.status, v.usage, v.incomplete),
        (XKI_KEY_DISABLED, BOTH, false)
    );
    let v = view(&disabled(BOTH, b""), ENC);
    assert!(v.incomplete);
    let v = view(&Stored::Damaged("x".into()), ENC);
    assert_eq!((v.status, v.usage), (XKI_KEY_STATE_DAMAGED, ENC));
}

#[test]
fn disable_writes_the_record_before_taking_usage_away() {
    let change = Change {
        status: Some(Status::Disabled),
        ..Default::default()
    };
    let steps = plan(&Stored::Nothing, ENC, &change).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Record(Record {
                status: Status::Disabled,
                usage: ENC,
                deletion: vec![],
                generation: 0
            }),
            Step::Flags(Usage::NONE)
        ]
    );
    // Disabling again keeps the saved usage (the live flags are already gone).
    let steps = plan(&disabled(ENC, b""), Usage::NONE, &change).unwrap();
    assert_eq!(
        steps[0],
        Step::Record(Record {
            status: Status::Disabled,
            usage: ENC,
            deletion: vec![],
            generation: 0
        })
    );
}

#[test]
fn enable_gives_usage_back_before_the_record_says_enabled() {
    let change = Change {
        status: Some(Status::Enabled),
        ..Default::default()
    };
    let steps = plan(&disabled(ENC, b""), Usage::NONE, &change).unwrap();
    assert_eq!(steps[0], Step::Flags(ENC));
    assert!(matches!(&steps[1], Step::Record(r) if r.status == Status::Enabled));
    // Keys without a record need none.
    assert_eq!(
        plan(&Stored::Nothing, ENC, &change).unwrap(),
        vec![Step::Flags(ENC)]
    );
}

#[test]
fn refusals() {
    let enable = Change {
        status: Some(Status::Enabled),
        ..Default::default()
    };
    assert_eq!(
        plan(&disabled(BOTH, b"20270101"), Usage::NONE, &enable),
        Err(Rv::ACTION_PROHIBITED)
    );
    assert_eq!(
        plan(&Stored::Damaged("x".into()), Usage::NONE, &enable),
        Err(Rv::TEMPLATE_INCOMPLETE)
    );
    let with_usage = Change {
        usage: Some(ENC),
        ..enable.clone()
    };
    assert!(plan(&Stored::Damaged("x".into()), Usage::NONE, &with_usage).is_ok());
    let bad = Change {
        deletion: Some(b"20270101".to_vec()),
        ..enable
    };
    assert_eq!(
        plan(&Stored::Nothing, BOTH, &bad),
        Err(Rv::TEMPLATE_INCONSISTENT)
    );
}

#[test]
fn schedule_and_cancel() {
    let schedule = Change {
        deletion: Some(b"20270101".to_vec()),
        ..Default::default()
    };
    let steps = plan(&Stored::Nothing, BOTH, &schedule).unwrap();
    assert!(
        matches!(&steps[0], Step::Record(r) if r.status == Status::Disabled && r.usage == BOTH && r.deletion == b"20270101")
    );
    assert_eq!(steps[1], Step::Flags(Usage::NONE));
    let cancel = Change {
        deletion: Some(vec![]),
        ..Default::default()
    };
    let steps = plan(&disabled(BOTH, b"20270101"), Usage::NONE, &cancel).unwrap();
    assert_eq!(
        steps,
        vec![Step::Record(Record {
            status: Status::Disabled,
            usage: BOTH,
            deletion: vec![],
            generation: 0
        })]
    );
}

#[test]
fn parse_change_refuses_mixed_templates() {
    let a = |kind, value: Vec<u8>| Attribute { kind, value };
    let status = a(CKA_XKI_KEY_STATUS, ulong(XKI_KEY_DISABLED));
    assert_eq!(
        parse_change(std::slice::from_ref(&status)).unwrap().status,
        Some(Status::Disabled)
    );
    assert_eq!(
        parse_change(&[status, a(pkcs11_sys::CKA_ENCRYPT, vec![1])]),
        Err(Rv::TEMPLATE_INCONSISTENT)
    );
    assert_eq!(
        parse_change(&[a(CKA_XKI_KEY_STATUS, ulong(XKI_KEY_STATE_DAMAGED))]),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        parse_change(&[a(CKA_XKI_KEY_USAGE, ulong(0x1))]),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
}

#[test]
fn newest_record_wins_and_ties_are_damage() {
    let rec = |g, usage| {
        Record {
            status: Status::Disabled,
            usage,
            deletion: vec![],
            generation: g,
        }
        .encode(ID)
    };
    let (old, new) = (rec(1, BOTH), rec(2, ENC));
    assert_eq!(newest(&[old.clone(), new.clone()], ID), Some(new.clone()));
    assert_eq!(newest(&[new.clone(), old.clone()], ID), Some(new.clone()));
    assert_eq!(newest(&[new.clone(), new.clone()], ID), Some(new.clone()));
    assert_eq!(newest(&[rec(2, BOTH), new.clone()], ID), None);
    assert_eq!(newest(&[b"junk".to_vec(), old.clone()], ID), Some(old));
    assert_eq!(newest(&[b"junk".to_vec()], ID), None);
}

#[test]
fn older_versions_scheduled_deletion_is_honoured() {
    let legacy = Stored::Nothing.with_legacy(b"20270101", Usage::NONE);
    let v = view(&legacy, Usage::NONE);
    assert_eq!(
        (v.status, v.usage, v.deletion),
        (XKI_KEY_DISABLED, BOTH, b"20270101".to_vec())
    );
    // A date on a usable key, or no date: an ordinary older key, ENABLED with its flags.
    assert_eq!(
        Stored::Nothing.with_legacy(b"20270101", ENC),
        Stored::Nothing
    );
    assert_eq!(
        Stored::Nothing.with_legacy(b"", Usage::NONE),
        Stored::Nothing
    );
    // Cancelling writes a real record (the key's own date is ignored from then on).
    let cancel = Change {
        deletion: Some(vec![]),
        ..Default::default()
    };
    assert!(
        matches!(&plan(&legacy, Usage::NONE, &cancel).unwrap()[0], Step::Record(r) if r.deletion.is_empty())
    );
}
