//! PKCS#11 conformance findings of third-party suites, through the BUILT module on both slots
//! (SoftHSM2 and embedded): what the module answers where it follows the specification, and
//! the exact code where it refuses by design.
//!
//! - an explicit empty `CKA_ID` in `C_GenerateKey` is kept, never replaced by a made-up ID
//!   (python-pkcs11 sends one by default); the label is then the key's identity, so without a
//!   label it is refused (`CKR_ATTRIBUTE_VALUE_INVALID`);
//! - a template without `CKA_TOKEN` (PKCS#11's default: a session key) is refused with
//!   `CKR_TEMPLATE_INCOMPLETE` and a log line saying how to ask for a token key; nothing is
//!   made (also for Java's SunPKCS11 `KeyGenerator`, which omits `CKA_TOKEN`);
//! - a session-key request in a read-only session gets the code of the real refusal, not
//!   `CKR_SESSION_READ_ONLY`;
//! - `C_Login(CKU_SO)` answers the session-state errors first, in SoftHSM2's order.
//!
//! The tests open read-only sessions and count keys, so they run one at a time ([`serial`]).

mod support;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use support::module_fixture::*;

/// One test at a time in this binary: read-only sessions change what `C_Login(CKU_SO)` answers.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `template` without the attributes of type `kind`.
fn without(template: Vec<Attribute>, kind: AttributeType) -> Vec<Attribute> {
    template
        .into_iter()
        .filter(|a| a.attribute_type() != kind)
        .collect()
}

/// Every key the session sees.
fn all_keys(s: &Session) -> usize {
    find(s, &[]).len()
}

#[test]
fn an_explicit_empty_cka_id_is_kept_never_substituted() {
    let _one = serial();
    for_each_token(|t| {
        let s = &t.session;
        let with_id = |label: Option<&str>, id: &[u8]| {
            let mut tpl = without(secure_template(""), AttributeType::Label);
            if let Some(l) = label {
                tpl.push(Attribute::Label(l.as_bytes().to_vec()));
            }
            tpl.push(Attribute::Id(id.to_vec()));
            s.generate_key(&Mechanism::AesKeyGen, &tpl)
        };
        // Kept as asked: empty. The label is the identity.
        let a = t.label("conf-empty-id-a");
        let key = with_id(Some(&a), b"").unwrap();
        assert_eq!(attr(s, key, AttributeType::Id), Attribute::Id(Vec::new()));
        assert_eq!(find_label(s, &a), key);
        // A second key with an empty ID and another label is another key, not a duplicate.
        let b = t.label("conf-empty-id-b");
        let other = with_id(Some(&b), b"").unwrap();
        assert_ne!(other, key);
        assert_eq!(find(s, &[Attribute::Id(Vec::new())]).len(), 2);
        // The same label again is a duplicate identity.
        expect_rv(with_id(Some(&a), b""), RvError::AttributeValueInvalid);
        // No ID and no label: no identity at all. Refused; nothing made.
        let before = all_keys(s);
        expect_rv(with_id(None, b""), RvError::AttributeValueInvalid);
        expect_rv(with_id(Some(""), b""), RvError::AttributeValueInvalid);
        assert_eq!(all_keys(s), before, "nothing was made");
        // A non-empty ID is kept exactly.
        let key = t.keygen(&t.label("conf-id"), &[Attribute::Id(b"conf-id".to_vec())]);
        assert_eq!(
            attr(s, key, AttributeType::Id),
            Attribute::Id(b"conf-id".to_vec())
        );
    });
}

#[test]
fn a_template_without_cka_token_is_refused_with_a_hint_and_makes_nothing() {
    let _one = serial();
    for_each_token(|t| {
        let s = &t.session;
        let label = t.label("conf-no-token");
        let before = all_keys(s);
        expect_rv(
            s.generate_key(
                &Mechanism::AesKeyGen,
                &without(secure_template(&label), AttributeType::Token),
            ),
            RvError::TemplateIncomplete,
        );
        // The smallest template a JCE KeyGenerator sends: class and length only.
        expect_rv(
            s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                    Attribute::ValueLen(32.into()),
                ],
            ),
            RvError::TemplateIncomplete,
        );
        assert_eq!(all_keys(s), before, "no key was made");
    });
    let log = std::fs::read_to_string(fixture().dir.path().join("module.log")).unwrap();
    assert!(
        log.contains("add CKA_TOKEN=true to the template"),
        "the refusal explains itself in the log:\n{log}"
    );
}

#[test]
fn a_session_key_in_a_read_only_session_gets_the_real_refusal() {
    let _one = serial();
    for_each_token(|t| {
        let ro = t.fx.ctx.open_ro_session(t.slot).unwrap();
        let label = t.label("conf-ro");
        // Session keys are refused for what they are, read-only session or not.
        expect_rv(
            ro.generate_key(
                &Mechanism::AesKeyGen,
                &without(secure_template(&label), AttributeType::Token),
            ),
            RvError::TemplateIncomplete,
        );
        let mut session_key = without(secure_template(&label), AttributeType::Token);
        session_key.push(Attribute::Token(false));
        expect_rv(
            ro.generate_key(&Mechanism::AesKeyGen, &session_key),
            RvError::TemplateInconsistent,
        );
        // An empty ID without a label too.
        let mut empty_id = without(secure_template(&label), AttributeType::Label);
        empty_id.push(Attribute::Id(Vec::new()));
        expect_rv(
            ro.generate_key(&Mechanism::AesKeyGen, &empty_id),
            RvError::AttributeValueInvalid,
        );
        // A token key is what a read-only session cannot make.
        expect_rv(
            ro.generate_key(&Mechanism::AesKeyGen, &secure_template(&label)),
            RvError::SessionReadOnly,
        );
        assert!(find(&ro, &[Attribute::Label(label.into_bytes())]).is_empty());
    });
}

/// `C_Login(CKU_SO)` with a read-only session open, then with only read-write sessions (the
/// user logged in): the two codes, in order.
fn so_login_codes(ro: Session, rw: &Session) -> (RvError, RvError) {
    let pin = AuthPin::from(PIN);
    let first = rv(ro.login(UserType::So, Some(&pin)).unwrap_err());
    drop(ro);
    let second = rv(rw.login(UserType::So, Some(&pin)).unwrap_err());
    (first, second)
}

#[test]
fn so_login_answers_session_state_first_like_softhsm() {
    let _one = serial();
    for_each_token(|t| {
        let ro = t.fx.ctx.open_ro_session(t.slot).unwrap();
        assert_eq!(
            so_login_codes(ro, &t.session),
            (
                RvError::SessionReadOnlyExists,
                RvError::UserAnotherAlreadyLoggedIn
            )
        );
        // CKU_CONTEXT_SPECIFIC needs an operation that asks for it; unknown types are invalid.
        let f = raw::table();
        let mut pin = PIN.as_bytes().to_vec();
        for (user, expected) in [
            (
                pkcs11_sys::CKU_CONTEXT_SPECIFIC,
                pkcs11_sys::CKR_OPERATION_NOT_INITIALIZED,
            ),
            (7, pkcs11_sys::CKR_USER_TYPE_INVALID),
        ] {
            // SAFETY: a live session and a PIN buffer of the given length.
            let code = unsafe {
                f.C_Login.unwrap()(t.raw_session(), user, pin.as_mut_ptr(), pin.len() as _)
            };
            assert_eq!(code, expected, "user type {user}");
        }
    });
    // SoftHSM2 itself, same token, same situation: the same two codes in the same order.
    let fx = fixture();
    let direct = fx.direct_session();
    let slot = direct.get_session_info().unwrap().slot_id();
    let ro = fx.direct().open_ro_session(slot).unwrap();
    assert_eq!(
        so_login_codes(ro, &direct),
        (
            RvError::SessionReadOnlyExists,
            RvError::UserAnotherAlreadyLoggedIn
        ),
        "SoftHSM2's own answers"
    );
}

/// A SunPKCS11 config for slot `index` of the module, with `extra` lines.
fn sunpkcs11_config(dir: &std::path::Path, index: usize, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("sunpkcs11-{index}-{}.cfg", extra.len()));
    std::fs::write(
        &path,
        format!(
            "name = xki{index}\nlibrary = {}\nslotListIndex = {index}\n{extra}\n",
            so_path().display()
        ),
    )
    .unwrap();
    path
}

/// Run tests/java/JceKeyGen.java (OpenJDK's single-file launcher) and return its verdict.
fn java_keygen(config: &std::path::Path) -> String {
    let out = Command::new("java")
        .arg(repo("tests/java/JceKeyGen.java"))
        .arg(config)
        .arg(PIN)
        .output()
        .expect("run java (OpenJDK 17: tests/run-all.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "java failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_string()
}

#[test]
fn java_sunpkcs11_keygenerator_gets_a_clear_refusal_and_leaves_no_key() {
    let _one = serial();
    for_each_token(|t| {
        let s = &t.session;
        let dir = t.fx.dir.path();
        let before = all_keys(s);
        // JCE's KeyGenerator as it comes: no CKA_TOKEN in the template.
        let verdict = java_keygen(&sunpkcs11_config(dir, t.index, ""));
        assert!(
            verdict.starts_with("REFUSED") && verdict.contains("CKR_TEMPLATE_INCOMPLETE"),
            "{verdict}"
        );
        assert_eq!(all_keys(s), before, "no permanent key was left");
        // The documented remedy: SunPKCS11 adds CKA_TOKEN=true, and a token key is made.
        let verdict = java_keygen(&sunpkcs11_config(
            dir,
            t.index,
            "attributes(generate, CKO_SECRET_KEY, CKK_AES) = {\n  CKA_TOKEN = true\n}",
        ));
        assert!(verdict.starts_with("GENERATED"), "{verdict}");
        assert_eq!(all_keys(s), before + 1, "exactly the key asked for");
    });
}
