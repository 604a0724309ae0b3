use super::*;
use crate::backend::BackendKey;

fn aes_key() -> KeyInfo {
    KeyInfo::generated_aes(BackendKey(1), b"id".to_vec(), b"xki-1".to_vec(), 32)
}

fn attr(kind: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Attribute {
    Attribute {
        kind,
        value: value.to_vec(),
    }
}

fn ul(kind: CK_ATTRIBUTE_TYPE, v: u64) -> Attribute {
    attr(kind, &(v as CK_ULONG).to_ne_bytes())
}

#[test]
fn only_strong_aes256_keys_are_admissible() {
    assert!(key_is_admissible(&aes_key()));
    let weaker: Vec<fn(&mut KeyInfo)> = vec![
        |k| k.extractable = true,
        |k| k.sensitive = false,
        |k| k.token = false,
        |k| k.value_len = 16,
        |k| k.key_type = CKK_DES3,
        |k| k.always_sensitive = Some(false),
        |k| k.never_extractable = Some(false),
    ];
    for weaken in weaker {
        let mut k = aes_key();
        weaken(&mut k);
        assert!(!key_is_admissible(&k), "{k:?}");
    }
    let mut unreported = aes_key();
    unreported.always_sensitive = None;
    unreported.never_extractable = None;
    assert!(key_is_admissible(&unreported));
}

#[test]
fn value_is_sensitive_and_public_attributes_answer() {
    let k = aes_key();
    assert_eq!(
        public_attribute(&k, CKA_VALUE, false),
        AttributeAnswer::Sensitive
    );
    assert_eq!(
        public_attribute(&k, CKA_LABEL, false),
        AttributeAnswer::Value(b"xki-1".to_vec())
    );
    assert_eq!(
        public_attribute(&k, CKA_EXTRACTABLE, false),
        AttributeAnswer::Value(vec![0])
    );
    assert_eq!(
        public_attribute(&k, CKA_CHECK_VALUE, false),
        AttributeAnswer::Invalid
    );
    assert_eq!(
        public_attribute(&k, 0xdead_beef, false),
        AttributeAnswer::Invalid
    );
    assert!(template_matches(
        &k,
        &[ul(CKA_CLASS, CKO_SECRET_KEY), attr(CKA_ID, b"id")],
        false
    ));
    assert!(!template_matches(&k, &[attr(CKA_VALUE, &[0; 32])], false));
    assert!(!template_matches(&k, &[ul(CKA_CLASS, CKO_DATA)], false));
}

#[test]
fn only_label_usage_and_dates_can_be_set() {
    let c = attribute_changes(&[
        attr(CKA_ENCRYPT, &[0]),
        attr(CKA_LABEL, b"n"),
        attr(CKA_END_DATE, b"20301231"),
    ])
    .unwrap();
    assert_eq!(c.encrypt, Some(false));
    assert_eq!(c.label.as_deref(), Some(&b"n"[..]));
    assert_eq!(c.end_date.as_deref(), Some(&b"20301231"[..]));
    for kind in [
        CKA_EXTRACTABLE,
        CKA_SENSITIVE,
        CKA_VALUE,
        CKA_WRAP,
        CKA_ID,
        CKA_TOKEN,
        CKA_DERIVE,
    ] {
        assert_eq!(
            attribute_changes(&[attr(kind, &[1])]),
            Err(Rv::ATTRIBUTE_READ_ONLY),
            "{kind:#x}"
        );
    }
    assert_eq!(
        attribute_changes(&[attr(0x8000_1234, &[1])]),
        Err(Rv::ATTRIBUTE_TYPE_INVALID)
    );
    assert_eq!(
        attribute_changes(&[attr(CKA_ENCRYPT, &[1, 0])]),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        attribute_changes(&[attr(CKA_END_DATE, b"2030")]),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
}

#[test]
fn generation_accepts_secure_templates_and_rejects_weaker_ones() {
    let base = vec![
        ul(CKA_CLASS, CKO_SECRET_KEY),
        ul(CKA_KEY_TYPE, CKK_AES),
        ul(CKA_VALUE_LEN, 32),
        attr(CKA_TOKEN, &[1]),
    ];
    let req = generation_request(&Mechanism::AesKeyGen, &base).unwrap();
    assert!(req.encrypt && req.decrypt);
    assert_eq!(req.id, None);
    let mut t = base.clone();
    t.extend([
        attr(CKA_SENSITIVE, &[1]),
        attr(CKA_EXTRACTABLE, &[0]),
        attr(CKA_DECRYPT, &[0]),
    ]);
    assert!(
        !generation_request(&Mechanism::AesKeyGen, &t)
            .unwrap()
            .decrypt
    );
    for (weaker, rv) in [
        (attr(CKA_TOKEN, &[0]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_SENSITIVE, &[0]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_EXTRACTABLE, &[1]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_WRAP, &[1]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_DERIVE, &[1]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_PRIVATE, &[0]), Rv::TEMPLATE_INCONSISTENT),
        (attr(CKA_VALUE, &[7; 32]), Rv::TEMPLATE_INCONSISTENT),
        (ul(CKA_KEY_TYPE, CKK_DES3), Rv::TEMPLATE_INCONSISTENT),
        (ul(CKA_CLASS, CKO_PRIVATE_KEY), Rv::TEMPLATE_INCONSISTENT),
    ] {
        let mut t = vec![ul(CKA_VALUE_LEN, 32)];
        t.push(weaker.clone());
        assert_eq!(
            generation_request(&Mechanism::AesKeyGen, &t),
            Err(rv),
            "{weaker:?}"
        );
    }
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &[ul(CKA_VALUE_LEN, 16)]),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &[]),
        Err(Rv::TEMPLATE_INCOMPLETE)
    );
    // No CKA_TOKEN: PKCS#11 asks for a session key, which is refused, not made permanent.
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &base[..3]),
        Err(Rv::TEMPLATE_INCOMPLETE)
    );
    assert!(!template_names_token(&base[..3]) && template_names_token(&base));
    // An explicit empty CKA_ID is kept (never replaced) when a label can be the identity, and
    // refused without one; a non-empty one is kept.
    let mut t = base.clone();
    t.push(attr(CKA_ID, &[]));
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &t),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
    t.push(attr(CKA_LABEL, b""));
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &t),
        Err(Rv::ATTRIBUTE_VALUE_INVALID)
    );
    t.pop();
    t.push(attr(CKA_LABEL, b"named"));
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &t).unwrap().id,
        Some(Vec::new())
    );
    t.pop();
    t.pop();
    t.push(attr(CKA_ID, b"k1"));
    assert_eq!(
        generation_request(&Mechanism::AesKeyGen, &t).unwrap().id,
        Some(b"k1".to_vec())
    );
    let gcm = Mechanism::Other {
        kind: CKM_DES3_KEY_GEN,
        param_len: 0,
    };
    assert_eq!(generation_request(&gcm, &base), Err(Rv::MECHANISM_INVALID));
}

#[test]
fn gcm_parameters_are_checked() {
    let ok = |iv: usize, tag: u64, aad: usize| {
        gcm_params(&Mechanism::AesGcm(GcmParams {
            iv: crate::mechanism::Iv::from_elem(0, iv),
            iv_bits: 0,
            aad: crate::mechanism::Aad::from_elem(0, aad),
            tag_bits: tag,
        }))
        .map(|_| ())
    };
    assert_eq!(ok(12, 128, 0), Ok(()));
    assert_eq!(ok(16, 128, 65536), Ok(()));
    assert_eq!(ok(0, 128, 0), Err(Rv::MECHANISM_PARAM_INVALID));
    assert_eq!(ok(8, 128, 0), Err(Rv::MECHANISM_PARAM_INVALID));
    assert_eq!(ok(12, 96, 0), Err(Rv::MECHANISM_PARAM_INVALID));
    assert_eq!(ok(12, 128, 65537), Err(Rv::MECHANISM_PARAM_INVALID));
    assert_eq!(
        gcm_params(&Mechanism::Other {
            kind: CKM_AES_GCM,
            param_len: 3
        })
        .map(|_| ()),
        Err(Rv::MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        gcm_params(&Mechanism::AesKeyGen).map(|_| ()),
        Err(Rv::MECHANISM_INVALID)
    );
}

#[test]
fn message_params_allow_random_and_caller_ivs_only() {
    use crate::mechanism::{GcmMessageParams, Iv};
    let p = |generator, iv_len: usize, fixed, tag_bits| GcmMessageParams {
        generator,
        iv: Iv::from_elem(0, iv_len),
        iv_fixed_bits: fixed,
        tag_bits,
        tag: [0; 16],
    };
    let ok = |r: Result<MessageIv, (Rv, &str)>| r.map_err(|(rv, _)| rv);
    let invalid = Err(Rv::MECHANISM_PARAM_INVALID);
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_GENERATE_RANDOM, 12, 0, 128),
            true,
            true
        )),
        Ok(MessageIv::Generated)
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_GENERATE_RANDOM, 12, 0, 128),
            true,
            false
        )),
        Ok(MessageIv::Generated)
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_NO_GENERATE, 12, 0, 128),
            true,
            true
        )),
        Ok(MessageIv::Caller)
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_NO_GENERATE, 16, 0, 128),
            true,
            true
        )),
        Ok(MessageIv::Caller)
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_NO_GENERATE, 12, 0, 128),
            true,
            false
        )),
        invalid
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_GENERATE_RANDOM, 12, 32, 128),
            true,
            true
        )),
        invalid
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_GENERATE_RANDOM, 16, 0, 128),
            true,
            true
        )),
        invalid
    );
    for g in [
        CKG_GENERATE,
        CKG_GENERATE_COUNTER,
        CKG_GENERATE_COUNTER_XOR,
        99,
    ] {
        assert_eq!(
            ok(gcm_message_params(&p(g, 12, 0, 128), true, true)),
            invalid
        );
        // Decryption takes the caller's IV whatever the generator says.
        assert_eq!(
            ok(gcm_message_params(&p(g, 12, 0, 128), false, false)),
            Ok(MessageIv::Caller)
        );
    }
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_GENERATE_RANDOM, 12, 0, 96),
            true,
            true
        )),
        invalid
    );
    assert_eq!(
        ok(gcm_message_params(
            &p(CKG_NO_GENERATE, 8, 0, 128),
            false,
            true
        )),
        invalid
    );
}
