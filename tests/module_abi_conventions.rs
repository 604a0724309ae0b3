//! Behavioural checks of the C boundary of the BUILT module against the embedded token: the
//! two-call buffer convention (NULL output = length query, short buffer =
//! CKR_BUFFER_TOO_SMALL, both leaving the operation active), C_GetAttributeValue per PKCS#11
//! 2.40 section 5.7, blank-padded info strings, refused and unsupported functions, and loading
//! the .so through the cryptoki crate (C_GetInterface 3.0 path).
//!
//! The .so is dlopened and its function table fetched through its own C_GetInterface (no
//! symbols of the rlib are called). Everything runs in one test function because the module
//! is process-global (C_Initialize once per process).

mod support;

use pkcs11_sys::*;
use std::ptr;
use support::module_fixture::raw::{bool_attr, table, ulong_attr};

const PIN: &[u8] = b"draft-pin-1234";

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let pin_file = dir.join("store.pin");
    std::fs::write(&pin_file, PIN).unwrap();
    let conf = dir.join("pkcs11.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[slot]]
label = "draft"
backends = ["emb"]
keys = {{ label_prefix = "xki-" }}

[backend.emb]
type = "embedded"
create = true
store = "{}"
pin_file = "{}"
"#,
            dir.join("store.bin").display(),
            pin_file.display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn conventions_against_the_embedded_token() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("XKI_PKCS11_CONF", write_config(dir.path()));
    std::env::set_var("XKI_EMBEDDED_TEST_KDF", "fast");
    // PIN attempt counters next to the config, not in the user's data directory.
    std::env::set_var("XDG_DATA_HOME", dir.path().join("data"));
    let f = table();
    assert_eq!((f.version.major, f.version.minor), (3, 0));

    // SAFETY: every pointer passed below is a live local of the right type and size.
    unsafe {
        // Before C_Initialize.
        let mut info = CK_INFO::default();
        assert_eq!(
            f.C_GetInfo.unwrap()(&mut info),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        assert_eq!(
            f.C_Finalize.unwrap()(ptr::null_mut()),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
        assert_eq!(
            f.C_SignInit.unwrap()(1, ptr::null_mut(), 0),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );

        assert_eq!(f.C_Initialize.unwrap()(ptr::null_mut()), CKR_OK);
        assert_eq!(
            f.C_Initialize.unwrap()(ptr::null_mut()),
            CKR_CRYPTOKI_ALREADY_INITIALIZED
        );

        // CK_INFO: blank padded, no NUL anywhere.
        assert_eq!(f.C_GetInfo.unwrap()(&mut info), CKR_OK);
        assert!(!info.manufacturerID.contains(&0));
        assert!(!info.libraryDescription.contains(&0));
        assert_eq!(info.flags, 0);

        // Slot list, two-call.
        let mut count: CK_ULONG = 0;
        let get_slots = f.C_GetSlotList.unwrap();
        assert_eq!(get_slots(CK_TRUE, ptr::null_mut(), &mut count), CKR_OK);
        assert_eq!(count, 1);
        let mut slots = [CK_ULONG::MAX; 4];
        let mut short: CK_ULONG = 0;
        assert_eq!(
            get_slots(CK_TRUE, slots.as_mut_ptr(), &mut short),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(short, 1);
        count = 4;
        assert_eq!(get_slots(CK_TRUE, slots.as_mut_ptr(), &mut count), CKR_OK);
        assert_eq!(count, 1);
        let slot = slots[0];

        let mut token = std::mem::zeroed::<CK_TOKEN_INFO>();
        assert_eq!(f.C_GetTokenInfo.unwrap()(slot, &mut token), CKR_OK);
        assert_eq!(&token.label[..5], b"draft");
        assert!(token.label[5..].iter().all(|b| *b == b' '));

        // Mechanism list, two-call.
        let mut n: CK_ULONG = 0;
        assert_eq!(
            f.C_GetMechanismList.unwrap()(slot, ptr::null_mut(), &mut n),
            CKR_OK
        );
        let mut mechs = vec![0 as CK_MECHANISM_TYPE; n as usize];
        assert_eq!(
            f.C_GetMechanismList.unwrap()(slot, mechs.as_mut_ptr(), &mut n),
            CKR_OK
        );
        assert!(mechs.contains(&CKM_AES_GCM) && mechs.contains(&CKM_AES_KEY_GEN));

        // Session + login.
        let mut session: CK_SESSION_HANDLE = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let open = f.C_OpenSession.unwrap();
        assert_eq!(
            open(slot, flags, ptr::null_mut(), None, ptr::null_mut()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            open(slot, flags, ptr::null_mut(), None, &mut session),
            CKR_OK
        );
        let login = f.C_Login.unwrap();
        assert_eq!(
            login(session, CKU_USER, ptr::null_mut(), 4),
            CKR_ARGUMENTS_BAD
        );
        let pin = PIN.as_ptr().cast_mut();
        assert_eq!(login(session, CKU_USER, pin, PIN.len() as CK_ULONG), CKR_OK);

        // Generate an AES-256 key.
        let mut keygen = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut value_len: CK_ULONG = 32;
        let (mut yes, mut no) = (CK_TRUE, CK_FALSE);
        let mut label = *b"xki-draft";
        let mut template = [
            ulong_attr(CKA_VALUE_LEN, &mut value_len),
            bool_attr(CKA_TOKEN, &mut yes),
            bool_attr(CKA_EXTRACTABLE, &mut no),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        let mut key: CK_OBJECT_HANDLE = 0;
        let rv = f.C_GenerateKey.unwrap()(
            session,
            &mut keygen,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut key,
        );
        assert_eq!(rv, CKR_OK);
        assert_ne!(key, 0);

        // C_GetAttributeValue, 2.40 section 5.7: all entries processed, SENSITIVE wins.
        let mut small = [0u8; 2];
        let mut roomy = [0u8; 64];
        let mut len_buf = [0u8; 16];
        let mut attrs = [
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: roomy.as_mut_ptr().cast(),
                ulValueLen: 64,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: small.as_mut_ptr().cast(),
                ulValueLen: 2,
            },
            CK_ATTRIBUTE {
                type_: 0x7fff_fff0,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: CKA_VALUE_LEN,
                pValue: len_buf.as_mut_ptr().cast(),
                ulValueLen: 16,
            },
        ];
        let rv = f.C_GetAttributeValue.unwrap()(session, key, attrs.as_mut_ptr(), 5);
        assert_eq!(rv, CKR_ATTRIBUTE_SENSITIVE);
        assert_eq!(attrs[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert!(roomy.iter().all(|b| *b == 0), "no key bytes were written");
        assert_eq!(attrs[1].ulValueLen, label.len() as CK_ULONG);
        assert_eq!(attrs[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(attrs[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(
            attrs[4].ulValueLen,
            std::mem::size_of::<CK_ULONG>() as CK_ULONG
        );
        assert_eq!(
            CK_ULONG::from_ne_bytes(len_buf[..8].try_into().unwrap()),
            32
        );

        // AES-GCM encrypt: length query and short buffer leave the operation active.
        let mut iv = [7u8; 12];
        let mut aad = *b"context";
        let mut gcm = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: aad.len() as CK_ULONG,
            ulTagBits: 128,
        };
        // All later access to `gcm` goes through this pointer, which the mechanism holds.
        let gcm_ptr = &mut gcm as *mut CK_GCM_PARAMS;
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: gcm_ptr.cast(),
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        let mut plaintext = *b"attack at dawn";
        let pt_len = plaintext.len() as CK_ULONG;
        assert_eq!(f.C_EncryptInit.unwrap()(session, &mut mech, key), CKR_OK);
        let encrypt = f.C_Encrypt.unwrap();
        let mut ct_len: CK_ULONG = 0;
        let pt = plaintext.as_mut_ptr();
        assert_eq!(
            encrypt(session, pt, pt_len, ptr::null_mut(), &mut ct_len),
            CKR_OK
        );
        assert_eq!(ct_len, pt_len + 16);
        let mut ct = [0u8; 64];
        let mut short: CK_ULONG = 3;
        assert_eq!(
            encrypt(session, pt, pt_len, ct.as_mut_ptr(), &mut short),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(short, pt_len + 16);
        let mut roomy_len: CK_ULONG = 64;
        assert_eq!(
            encrypt(session, pt, pt_len, ct.as_mut_ptr(), &mut roomy_len),
            CKR_OK
        );
        assert_eq!(roomy_len, pt_len + 16);
        // the operation ended with the successful call
        assert_eq!(
            encrypt(session, pt, pt_len, ct.as_mut_ptr(), &mut roomy_len),
            CKR_OPERATION_NOT_INITIALIZED
        );

        // Decrypt in place (input and output the same buffer), after a length query.
        assert_eq!(f.C_DecryptInit.unwrap()(session, &mut mech, key), CKR_OK);
        let decrypt = f.C_Decrypt.unwrap();
        let mut out_len: CK_ULONG = 0;
        let ctp = ct.as_mut_ptr();
        assert_eq!(
            decrypt(session, ctp, roomy_len, ptr::null_mut(), &mut out_len),
            CKR_OK
        );
        assert!(out_len >= pt_len);
        out_len = 64;
        assert_eq!(decrypt(session, ctp, roomy_len, ctp, &mut out_len), CKR_OK);
        assert_eq!(&ct[..out_len as usize], b"attack at dawn");

        // GCM parameters with NULL IV but a length.
        (*gcm_ptr).pIv = ptr::null_mut();
        let rv = f.C_EncryptInit.unwrap()(session, &mut mech, key);
        assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);

        // Random: NULL output with a length.
        assert_eq!(
            f.C_GenerateRandom.unwrap()(session, ptr::null_mut(), 8),
            CKR_ARGUMENTS_BAD
        );
        let mut random = [0u8; 32];
        assert_eq!(
            f.C_GenerateRandom.unwrap()(session, random.as_mut_ptr(), 32),
            CKR_OK
        );

        // Refused and unsupported functions, after init.
        let mut wrapped_len: CK_ULONG = 0;
        let rv = f.C_WrapKey.unwrap()(
            session,
            &mut keygen,
            key,
            key,
            ptr::null_mut(),
            &mut wrapped_len,
        );
        assert_ne!(rv, CKR_OK);
        assert_eq!(
            f.C_SignInit.unwrap()(session, &mut keygen, key),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_MessageSignFinal.unwrap()(session),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_GetFunctionStatus.unwrap()(session),
            CKR_FUNCTION_NOT_PARALLEL
        );
        let mut ev_slot: CK_SLOT_ID = 0;
        let rv = f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut ev_slot, ptr::null_mut());
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);

        assert_eq!(f.C_CloseSession.unwrap()(session), CKR_OK);
        assert_eq!(
            f.C_Finalize.unwrap()((&mut info as *mut CK_INFO).cast()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(f.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
    }

    // The built .so through the cryptoki crate: exercises C_GetInterface(NULL, NULL, .., 0)
    // and the CK_FUNCTION_LIST_3_0 layout (the dynamic linker hands cryptoki the same copy).
    let so = support::module_fixture::so_path();
    let pkcs11 = cryptoki::context::Pkcs11::new(so).unwrap();
    pkcs11
        .initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
        .unwrap();
    let info = pkcs11.get_library_info().unwrap();
    // CK_INFO reports the 2.40 semantics the module implements; the 3.0 interface (checked
    // above through the table's version) only adds the 3.0 function-table layout.
    assert_eq!(
        (
            info.cryptoki_version().major(),
            info.cryptoki_version().minor()
        ),
        (2, 40)
    );
    assert_eq!(info.manufacturer_id(), "xki-bridge");
    let slots = pkcs11.get_slots_with_token().unwrap();
    assert_eq!(slots.len(), 1);
    let session = pkcs11.open_rw_session(slots[0]).unwrap();
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from("draft-pin-1234")),
        )
        .unwrap();
    let keys = session
        .find_objects(&[cryptoki::object::Attribute::Label(b"xki-draft".to_vec())])
        .unwrap();
    assert_eq!(keys.len(), 1, "the key survives finalize/initialize");
    drop(session);
    pkcs11.finalize().unwrap();
}
