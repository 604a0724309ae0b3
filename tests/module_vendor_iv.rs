//! GCM IV modes through the built module over the TEST-ONLY vendor emulator
//! (`tests/vendor-emu`: SoftHSM2 behind the GCM IV, login and manufacturer-ID conventions of
//! Luna, Luna in FIPS mode, AWS CloudHSM and nShield; emulation, not certification).
//!
//! One module, one SoftHSM2 token, one slot per emulated vendor mode with `gcm_iv = "auto"`,
//! a replica group over two generating members, and a slot whose backend is configured with a
//! mode its library does not follow. Checked per mode: the mode `auto` chose (start-up log),
//! message-based encryption with `CKG_GENERATE_RANDOM` (IV returned, decryptable through the
//! module and by SoftHSM2 used directly), `CKG_NO_GENERATE`, the classic `C_EncryptInit` with
//! a caller IV and with the zero-IV convention, and decryption with the caller's IV.

mod support;

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::{GcmMessageParams, GcmParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MessageParam};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use once_cell::sync::Lazy;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use support::module_fixture::*;

/// Slot labels, in config order.
const LUNA: &str = "v-luna";
const LUNA_FIPS: &str = "v-luna-fips";
const CLOUDHSM: &str = "v-cloudhsm";
const NSHIELD: &str = "v-nshield";
const GROUP: &str = "v-group";
const WRONG: &str = "v-wrong";
/// A second Luna FIPS slot whose first encryption is a classic zero-IV one.
const LUNA_FIPS_FRESH: &str = "v-luna-fips-fresh";
const SLOTS: [&str; 7] = [
    LUNA,
    LUNA_FIPS,
    CLOUDHSM,
    NSHIELD,
    GROUP,
    WRONG,
    LUNA_FIPS_FRESH,
];

/// The emulated slots run on one SoftHSM2 token without SoftHSM2's object-write quirk
/// handling (their manufacturer IDs are the vendors'): the tests here run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Vendors {
    dir: tempfile::TempDir,
    ctx: Pkcs11,
    direct: Pkcs11,
    slots: Vec<Slot>,
}

/// The built emulator (a dev-dependency, so cargo builds its cdylib next to this binary).
fn built_emulator() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let fresh = deps.join("libxki_vendor_emu.so");
    if fresh.exists() {
        return fresh;
    }
    let up = deps
        .parent()
        .expect("target/<profile>")
        .join("libxki_vendor_emu.so");
    assert!(
        up.exists(),
        "build the emulator: cargo build -p xki-vendor-emu"
    );
    up
}

/// A copy (not a link: one instance per file) named for its mode.
fn mode_copy(dir: &Path, mode: &str) -> PathBuf {
    let dest = dir.join(format!("libxki-emu-{mode}.so"));
    std::fs::copy(built_emulator(), &dest).expect("copy the emulator");
    dest
}

static VENDORS: Lazy<Vendors> = Lazy::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    // A static is never dropped: its directory goes at exit.
    support::at_exit::remove_at_exit(dir.path());
    let softhsm_conf = new_softhsm_token(dir.path(), SOFTHSM_TOKEN);
    let pin = dir.path().join("user.pin");
    std::fs::write(&pin, PIN).unwrap();
    // CloudHSM's PIN is `<crypto user>:<password>`; the emulator checks the form.
    let cu_pin = dir.path().join("cu.pin");
    std::fs::write(&cu_pin, format!("crypto_user:{PIN}")).unwrap();
    let lib = |mode: &str| mode_copy(dir.path(), mode).display().to_string();
    let (luna, fips, cloudhsm, nshield) = (
        lib("luna"),
        lib("luna-fips"),
        lib("cloudhsm"),
        lib("nshield"),
    );
    let backend = |name: &str, module: &str, pin: &Path, extra: &str| {
        format!(
            "[backend.{name}]\nmodule = \"{module}\"\ntoken_label = \"{SOFTHSM_TOKEN}\"\npin_file = \"{}\"\n{extra}\n",
            pin.display()
        )
    };
    // The module's own user PIN is the same on every slot (the CloudHSM backends log in to
    // their HSM with `crypto_user:PIN`).
    let slot = |label: &str, backends: &str, extra: &str| {
        format!(
            "[[slot]]\nlabel = \"{label}\"\nbackends = [{backends}]\nuser_pin_file = \"{}\"\n{extra}\n",
            pin.display()
        )
    };
    let mut text = format!(
        "log_level = \"info\"\nlog_file = \"{}\"\naudit_file = \"{}\"\n\n",
        dir.path().join("module.log").display(),
        dir.path().join("audit.log").display()
    );
    text += &slot(LUNA, "\"luna\"", "");
    text += &slot(LUNA_FIPS, "\"lunafips\"", "");
    text += &slot(CLOUDHSM, "\"cloudhsm\"", "");
    text += &slot(NSHIELD, "\"nshield\"", "");
    text += &slot(
        GROUP,
        "\"cloudhsm2\", \"nshield2\"",
        "replication = \"hsm\"",
    );
    text += &slot(WRONG, "\"wrong\"", "");
    text += &slot(LUNA_FIPS_FRESH, "\"lunafipsfresh\"", "");
    text += &backend("luna", &luna, &pin, "");
    text += &backend("lunafips", &fips, &pin, "");
    text += &backend("lunafipsfresh", &fips, &pin, "");
    text += &backend("cloudhsm", &cloudhsm, &cu_pin, "");
    text += &backend("nshield", &nshield, &pin, "");
    text += &backend("cloudhsm2", &cloudhsm, &cu_pin, "");
    text += &backend("nshield2", &nshield, &pin, "");
    // The Luna library (caller IVs) configured as if it wrote IVs back: never swapped.
    text += &backend("wrong", &luna, &pin, "gcm_iv = \"write-back\"");
    let config = dir.path().join("pkcs11.toml");
    std::fs::write(&config, &text).unwrap();
    // This file always runs over SoftHSM2 behind the emulator (XKI_ITEST_BACKEND is not used).
    std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
    std::env::set_var("XKI_PKCS11_CONF", &config);
    std::env::set_var("XKI_EMBEDDED_TEST_KDF", "fast");
    let ctx = Pkcs11::new(so_path()).expect("load the module");
    init_ctx(&ctx);
    let slots = ctx.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), SLOTS.len(), "config:\n{text}");
    let direct = Pkcs11::new(SOFTHSM).expect("SoftHSM2 directly");
    init_ctx(&direct);
    Vendors {
        dir,
        ctx,
        direct,
        slots,
    }
});

impl Vendors {
    fn session(&self, label: &str) -> Session {
        let i = SLOTS.iter().position(|l| *l == label).unwrap();
        let s = self.ctx.open_rw_session(self.slots[i]).unwrap();
        login(&s);
        s
    }

    /// A logged-in session on the SoftHSM2 token used directly.
    fn direct_session(&self) -> Session {
        let slot = self
            .direct
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                self.direct
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == SOFTHSM_TOKEN)
            })
            .unwrap();
        let s = self.direct.open_rw_session(slot).unwrap();
        login(&s);
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("module.log")).unwrap_or_default()
    }
}

fn keygen(s: &Session, label: &str) -> ObjectHandle {
    s.generate_key(&Mechanism::AesKeyGen, &secure_template(label))
        .unwrap_or_else(|e| panic!("generate {label}: {e}"))
}

fn message_encrypt(
    s: &Session,
    key: ObjectHandle,
    generator: GeneratorFunction,
    iv: &[u8],
    pt: &[u8],
) -> cryptoki::error::Result<(Vec<u8>, Vec<u8>, [u8; 16])> {
    let mut iv = iv.to_vec();
    let mut tag = [0u8; 16];
    let p = GcmMessageParams::new(&mut iv, 0.into(), generator, &mut tag)?;
    s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)?;
    let ct = s.encrypt_message(&MessageParam::AesGcmMessage(p), b"aad", pt);
    s.message_encrypt_final()?;
    let ct = ct?;
    Ok((ct, iv, tag))
}

fn message_decrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    tag: &[u8],
    ct: &[u8],
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = iv.to_vec();
    let mut tag: [u8; 16] = tag.try_into().unwrap();
    let p = GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag)?;
    s.message_decrypt_init(&Mechanism::AesGcmMessage(p), key)?;
    let pt = s.decrypt_message(&MessageParam::AesGcmMessage(p), b"aad", ct);
    s.message_decrypt_final()?;
    pt
}

/// Classic C_EncryptInit + C_Encrypt; returns (output, the IV buffer afterwards).
fn classic_encrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    pt: &[u8],
) -> cryptoki::error::Result<(Vec<u8>, Vec<u8>)> {
    let mut iv = iv.to_vec();
    let out = {
        let p = GcmParams::new(&mut iv, b"aad", 128.into())?;
        s.encrypt(&Mechanism::AesGcm(p), key, pt)?
    };
    Ok((out, iv))
}

fn classic_decrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    ct: &[u8],
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = iv.to_vec();
    let p = GcmParams::new(&mut iv, b"aad", 128.into())?;
    s.decrypt(&Mechanism::AesGcm(p), key, ct)
}

/// SoftHSM2 itself decrypts what the module produced under `iv`.
fn direct_decrypt(v: &Vendors, label: &str, iv: &[u8], ct_and_tag: &[u8]) -> Vec<u8> {
    let d = v.direct_session();
    let key = d
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()[0];
    classic_decrypt(&d, key, iv, ct_and_tag).expect("SoftHSM2 decrypts it")
}

#[test]
fn auto_chooses_from_the_vendor_rows_and_logs_it() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = &*VENDORS;
    let log = v.log();
    for line in [
        "backend luna: GCM IV mode caller (vendor row",
        "backend lunafips: GCM IV mode caller (vendor row",
        "backend cloudhsm: GCM IV mode write-back (vendor row",
        "backend nshield: GCM IV mode write-back (vendor row",
        "backend wrong: GCM IV mode write-back (set in the config",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
}

/// Every mode, step by step (the Luna FIPS slot learns `append` at its first refusal, so the
/// order of the steps is fixed).
#[test]
fn every_vendor_mode_encrypts_with_token_generated_ivs() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = &*VENDORS;
    for (label, generates) in [
        (LUNA, false),
        (LUNA_FIPS, true),
        (CLOUDHSM, true),
        (NSHIELD, true),
        (GROUP, true),
    ] {
        let s = v.session(label);
        let key_label = format!("{label}-key");
        let key = keygen(&s, &key_label);
        let pt = b"vendor mode plaintext";

        // Message API, token-generated IV: returned, decryptable here and by SoftHSM2.
        let (ct, iv, tag) =
            message_encrypt(&s, key, GeneratorFunction::GenerateRandom, &[0; 12], pt)
                .unwrap_or_else(|e| panic!("{label}: C_EncryptMessage: {e}"));
        assert_ne!(iv, vec![0u8; 12], "{label}: IV returned in pIv");
        assert_eq!(
            message_decrypt(&s, key, &iv, &tag, &ct).unwrap(),
            pt,
            "{label}"
        );
        let mut joined = ct.clone();
        joined.extend_from_slice(&tag);
        assert_eq!(direct_decrypt(v, &key_label, &iv, &joined), pt, "{label}");
        assert_eq!(
            classic_decrypt(&s, key, &iv, &joined).unwrap(),
            pt,
            "{label}"
        );

        // Caller IVs for encryption: only where the HSM takes them.
        let caller = message_encrypt(&s, key, GeneratorFunction::NoGenerate, &[3; 12], pt);
        let classic = classic_encrypt(&s, key, &[3; 12], pt);
        if generates {
            expect_rv(caller, RvError::MechanismParamInvalid);
            expect_rv(classic, RvError::MechanismParamInvalid);
        } else {
            let (c, _, t) = caller.unwrap();
            let (o, _) = classic.unwrap();
            assert_eq!([c, t.to_vec()].concat(), o, "{label}");
        }

        // The zero-IV convention of the classic path.
        let (out, iv_after) = classic_encrypt(&s, key, &[0; 12], pt).unwrap();
        if generates {
            assert_ne!(
                iv_after,
                vec![0u8; 12],
                "{label}: generated IV written back"
            );
        } else {
            assert_eq!(
                iv_after,
                vec![0u8; 12],
                "{label}: a caller-IV HSM uses it as given"
            );
        }
        assert_eq!(
            direct_decrypt(v, &key_label, &iv_after, &out),
            pt,
            "{label}"
        );

        // Decryption takes the caller's IV in every mode: SoftHSM2 encrypts, the slot decrypts.
        let d = v.direct_session();
        let dkey = d
            .find_objects(&[Attribute::Label(key_label.as_bytes().to_vec())])
            .unwrap()[0];
        let (theirs, _) = classic_encrypt(&d, dkey, &[9; 12], pt).unwrap();
        assert_eq!(
            classic_decrypt(&s, key, &[9; 12], &theirs).unwrap(),
            pt,
            "{label}"
        );
        let (body, t) = theirs.split_at(pt.len());
        assert_eq!(
            message_decrypt(&s, key, &[9; 12], t, body).unwrap(),
            pt,
            "{label}"
        );

        // Multi-part message with a generated IV.
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let p = GcmMessageParams::new(
            &mut iv,
            0.into(),
            GeneratorFunction::GenerateRandom,
            &mut tag,
        )
        .unwrap();
        s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
            .unwrap();
        s.encrypt_message_begin(MessageParam::AesGcmMessage(p), b"aad")
            .unwrap();
        assert!(s
            .encrypt_message_next(MessageParam::AesGcmMessage(p), &pt[..5], false)
            .unwrap()
            .is_empty());
        let ct = s
            .encrypt_message_next(MessageParam::AesGcmMessage(p), &pt[5..], true)
            .unwrap();
        s.message_encrypt_final().unwrap();
        assert_eq!(
            message_decrypt(&s, key, &iv, &tag, &ct).unwrap(),
            pt,
            "{label}"
        );
    }
    let log = v.log();
    assert!(
        log.contains("backend lunafips: the HSM refused a caller GCM IV")
            && log.contains("GCM IV mode is now append"),
        "the Luna FIPS slot says it switched to append:\n{log}"
    );
}

#[test]
fn a_configured_mode_the_library_does_not_follow_fails_loudly_and_stays() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = &*VENDORS;
    let s = v.session(WRONG);
    let key = keygen(&s, "wrong-key");
    for _ in 0..2 {
        expect_rv(
            message_encrypt(&s, key, GeneratorFunction::GenerateRandom, &[0; 12], b"x"),
            RvError::FunctionFailed,
        );
    }
    // Classic caller IVs are refused in a generating mode (it was configured so).
    expect_rv(
        classic_encrypt(&s, key, &[3; 12], b"x"),
        RvError::MechanismParamInvalid,
    );
    let log = v.log();
    assert!(
        log.contains("set backend.wrong.gcm_iv"),
        "the error names the key to change:\n{log}"
    );
    assert!(
        !log.contains("backend wrong: GCM IV mode caller"),
        "never swapped"
    );
}

/// The first encryption an `auto` Luna in FIPS mode sees is a classic zero-IV one: the HSM
/// refuses the zero IV as a caller IV, which teaches the backend `append`, and that same call
/// then succeeds under the zero-IV convention (the first call is not the one that fails).
#[test]
fn a_first_zero_iv_encryption_on_a_luna_in_fips_mode_succeeds() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = &*VENDORS;
    let s = v.session(LUNA_FIPS_FRESH);
    let key = keygen(&s, "fips-fresh-key");
    let pt = b"first encryption on this slot";
    let (out, iv_after) = classic_encrypt(&s, key, &[0; 12], pt)
        .expect("the slot's first encryption, with the zero-IV convention");
    assert_ne!(iv_after, vec![0u8; 12], "generated IV written back");
    assert_eq!(direct_decrypt(v, "fips-fresh-key", &iv_after, &out), pt);
    assert_eq!(classic_decrypt(&s, key, &iv_after, &out).unwrap(), pt);
    let log = v.log();
    assert!(
        log.contains("backend lunafipsfresh: the HSM refused a caller GCM IV"),
        "the slot learnt append from that call:\n{log}"
    );
    // From now on a caller IV is refused before it reaches the HSM.
    expect_rv(
        classic_encrypt(&s, key, &[3; 12], pt),
        RvError::MechanismParamInvalid,
    );
}
