//! The module's C ABI (src/abi/) driven with arbitrary sequences of calls over the embedded
//! token, through the function table exactly as a C caller gets it, with well-formed pointers:
//! sessions opened and closed, logins with arbitrary user types and PINs, find / generate /
//! set with arbitrary templates, get-attribute with arbitrary types and buffer lengths (NULL
//! for length queries), GCM init with arbitrary parameters, single- and multi-part
//! encrypt/decrypt with arbitrary lengths and short or absent output buffers, the refused
//! export paths (wrap, copy, digest-key), random numbers, info calls.
//!
//! Checked on every input: no panic (libFuzzer's hook aborts on one, also inside the module's
//! panic guard), and no 8-byte window of any key ever appears in any buffer the module wrote.
//! The harness knows the keys: the store is sealed with a key file the harness wrote, so it
//! opens the store file itself with the crate's own format code after each change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkcs11_sys::*;
use std::collections::HashSet;
use std::path::PathBuf;
use std::ptr;
use std::sync::{Mutex, OnceLock};
use xki_pkcs11::backend::embedded::format;
use xki_pkcs11::backend::embedded::records::Contents;
use zeroize::Zeroizing;

const PIN: &[u8] = b"fuzz-user-pin";
const KEK: [u8; 32] = [0x5a; 32];
const BASE_LABELS: [&[u8]; 2] = [b"base-0", b"base-1"];

struct Harness {
    f: &'static CK_FUNCTION_LIST,
    store: PathBuf,
    /// Every 8-byte window of every key the store has held.
    windows: HashSet<[u8; 8]>,
    /// The store file as last read (re-read only when it changed).
    last_store: Vec<u8>,
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(Harness::new()))
}

impl Harness {
    fn new() -> Harness {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("xki-fuzz-abi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)
                .unwrap();
            std::io::Write::write_all(&mut f, &KEK).unwrap();
        }
        std::fs::write(dir.join("user.pin"), PIN).unwrap();
        let store = dir.join("store");
        let conf = dir.join("pkcs11.toml");
        std::fs::write(
            &conf,
            format!(
                "log_level = \"error\"\nlog_file = \"/dev/null\"\naudit_file = \"/dev/null\"\n\
                 audit_flush_ms = 0\n\
                 [[slot]]\nlabel = \"fuzz\"\nbackends = [\"emb\"]\nallow_destroy = true\n\
                 max_pin_attempts = 0\nuser_pin_file = {:?}\n\
                 [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {:?}\nkey_file = {:?}\n",
                dir.join("user.pin").display().to_string(),
                store.display().to_string(),
                key.display().to_string()
            ),
        )
        .unwrap();
        std::env::set_var("XKI_PKCS11_CONF", &conf);
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let rv = unsafe { xki_pkcs11::abi::exports::C_GetFunctionList(&mut list) };
        assert_eq!(rv, CKR_OK);
        // SAFETY: the module's static function table.
        let f: &'static CK_FUNCTION_LIST = unsafe { &*list };
        // SAFETY: NULL arguments.
        assert_eq!(unsafe { f.C_Initialize.unwrap()(ptr::null_mut()) }, CKR_OK);
        let mut h = Harness {
            f,
            store,
            windows: HashSet::new(),
            last_store: Vec::new(),
        };
        h.reset_keys();
        // The check below has something to look for: both base keys, 25 windows each.
        assert!(h.windows.len() >= 40, "the harness does not know the keys");
        h
    }

    /// Log in on a fresh session; the caller closes it.
    fn admin_session(&self) -> CK_SESSION_HANDLE {
        let mut s = 0;
        // SAFETY: valid out-pointer; the PIN buffer outlives the call.
        unsafe {
            assert_eq!(
                self.f.C_OpenSession.unwrap()(
                    0,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    ptr::null_mut(),
                    None,
                    &mut s
                ),
                CKR_OK
            );
            let rv = self.f.C_Login.unwrap()(s, CKU_USER, PIN.as_ptr() as *mut _, PIN.len() as _);
            assert!(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN, "{rv:#x}");
        }
        s
    }

    /// Back to the two base keys (destroy everything else, make missing ones), then learn the
    /// keys from the store.
    fn reset_keys(&mut self) {
        let s = self.admin_session();
        let f = self.f;
        // SAFETY: every pointer is a live local with the length passed.
        unsafe {
            assert_eq!(f.C_FindObjectsInit.unwrap()(s, ptr::null_mut(), 0), CKR_OK);
            let mut found = [0 as CK_OBJECT_HANDLE; 64];
            let mut n = 0;
            f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 64, &mut n);
            f.C_FindObjectsFinal.unwrap()(s);
            let mut present = Vec::new();
            for &h in &found[..n as usize] {
                let mut label = [0u8; 64];
                let mut a = CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: label.as_mut_ptr().cast(),
                    ulValueLen: 64,
                };
                f.C_GetAttributeValue.unwrap()(s, h, &mut a, 1);
                let l = &label[..(a.ulValueLen as usize).min(64)];
                if BASE_LABELS.contains(&l) && !present.contains(&l.to_vec()) {
                    present.push(l.to_vec());
                } else {
                    f.C_DestroyObject.unwrap()(s, h);
                }
            }
            for label in BASE_LABELS {
                if present.iter().any(|p| p == label) {
                    continue;
                }
                let mut len: CK_ULONG = 32;
                let mut yes: CK_BBOOL = CK_TRUE;
                let mut l = label.to_vec();
                let mut tpl = [
                    CK_ATTRIBUTE {
                        type_: CKA_VALUE_LEN,
                        pValue: (&mut len as *mut CK_ULONG).cast(),
                        ulValueLen: std::mem::size_of::<CK_ULONG>() as _,
                    },
                    CK_ATTRIBUTE {
                        type_: CKA_TOKEN,
                        pValue: (&mut yes as *mut CK_BBOOL).cast(),
                        ulValueLen: 1,
                    },
                    CK_ATTRIBUTE {
                        type_: CKA_LABEL,
                        pValue: l.as_mut_ptr().cast(),
                        ulValueLen: l.len() as _,
                    },
                ];
                let mut mech = CK_MECHANISM {
                    mechanism: CKM_AES_KEY_GEN,
                    pParameter: ptr::null_mut(),
                    ulParameterLen: 0,
                };
                let mut k = 0;
                let rv = f.C_GenerateKey.unwrap()(s, &mut mech, tpl.as_mut_ptr(), 3, &mut k);
                assert_eq!(rv, CKR_OK, "base key");
            }
            f.C_CloseSession.unwrap()(s);
        }
        self.learn_keys();
    }

    /// Read the store (when it changed) and add every key's windows.
    fn learn_keys(&mut self) {
        let Ok(file) = std::fs::read(&self.store) else {
            return;
        };
        if file == self.last_store {
            return;
        }
        let parsed = format::parse(&file).expect("the module's store parses");
        let plain = parsed
            .open(&Zeroizing::new(KEK))
            .expect("the store opens with the harness's key file");
        let contents = Contents::decode(&plain).expect("the module's records decode");
        for k in &contents.keys {
            assert_eq!(k.value.len(), 32);
            for w in k.value.windows(8) {
                self.windows.insert(w.try_into().unwrap());
            }
        }
        self.last_store = file;
    }

    fn check(&self, outputs: &[Vec<u8>]) {
        for out in outputs {
            for w in out.windows(8) {
                assert!(
                    !self.windows.contains(<&[u8; 8]>::try_from(w).unwrap()),
                    "key bytes in an output buffer"
                );
            }
        }
    }
}

/// Reads the fuzz input as a stream of choices (zeros once it runs out).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a.to_vec()
    }
    fn len(&mut self, max: usize) -> usize {
        let v = usize::from(self.byte()) | usize::from(self.byte()) << 8;
        v % (max + 1)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            None
        } else {
            Some(from[usize::from(self.byte()) % from.len()])
        }
    }
    fn done(&self) -> bool {
        self.data.is_empty()
    }
}

const ATTR_TYPES: [CK_ATTRIBUTE_TYPE; 20] = [
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_VALUE_LEN,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_WRAP,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_MODIFIABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_CHECK_VALUE,
    CKA_LOCAL,
];

/// An attribute template with its value buffers (kept alive by the owner).
struct Template {
    values: Vec<Vec<u8>>,
    attrs: Vec<CK_ATTRIBUTE>,
}

fn template(inp: &mut Input) -> Template {
    let n = usize::from(inp.byte() % 8);
    let mut values = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    for _ in 0..n {
        let sel = inp.byte();
        let kind = if sel < 240 {
            ATTR_TYPES[usize::from(sel) % ATTR_TYPES.len()]
        } else {
            u64::from_le_bytes(inp.bytes(8).try_into().unwrap_or([0xff; 8])) as CK_ATTRIBUTE_TYPE
        };
        let value = match inp.byte() % 6 {
            0 => vec![CK_TRUE],
            1 => vec![CK_FALSE],
            2 => (32 as CK_ULONG).to_ne_bytes().to_vec(),
            3 => match kind {
                CKA_CLASS => (CKO_SECRET_KEY as CK_ULONG).to_ne_bytes().to_vec(),
                CKA_KEY_TYPE => (CKK_AES as CK_ULONG).to_ne_bytes().to_vec(),
                _ => b"base-0".to_vec(),
            },
            _ => {
                let len = usize::from(inp.byte() % 48);
                inp.bytes(len)
            }
        };
        kinds.push(kind);
        values.push(value);
    }
    let attrs = kinds
        .iter()
        .zip(values.iter_mut())
        .map(|(k, v)| CK_ATTRIBUTE {
            type_: *k,
            pValue: if v.is_empty() {
                ptr::null_mut()
            } else {
                v.as_mut_ptr().cast()
            },
            ulValueLen: v.len() as _,
        })
        .collect();
    Template { values, attrs }
}

/// A GCM (or other) mechanism with its parameter buffers.
struct Mech {
    _iv: Vec<u8>,
    _aad: Vec<u8>,
    params: Box<CK_GCM_PARAMS>,
    raw: Vec<u8>,
    mech: CK_MECHANISM,
}

fn mechanism(inp: &mut Input, last_iv: &[u8]) -> Mech {
    let sel = inp.byte();
    let mut iv = if sel & 0x80 != 0 && !last_iv.is_empty() {
        last_iv.to_vec()
    } else {
        let n = usize::from(inp.byte() % 20);
        let mut v = inp.bytes(n);
        v.resize(n, 0);
        v
    };
    let n = usize::from(inp.byte() % 40);
    let mut aad = inp.bytes(n);
    let tag_bits = match inp.byte() % 5 {
        0..=2 => 128,
        3 => 96,
        _ => CK_ULONG::from(inp.byte()),
    };
    let iv_bits = if inp.byte() % 4 == 0 {
        CK_ULONG::from(inp.byte())
    } else {
        (iv.len() * 8) as CK_ULONG
    };
    let mut params = Box::new(CK_GCM_PARAMS {
        pIv: if iv.is_empty() {
            ptr::null_mut()
        } else {
            iv.as_mut_ptr()
        },
        ulIvLen: iv.len() as _,
        ulIvBits: iv_bits,
        pAAD: if aad.is_empty() {
            ptr::null_mut()
        } else {
            aad.as_mut_ptr()
        },
        ulAADLen: aad.len() as _,
        ulTagBits: tag_bits,
    });
    let raw_len = usize::from(inp.byte() % 16);
    let mut raw = inp.bytes(raw_len);
    let mech = match sel % 8 {
        // GCM with a full CK_GCM_PARAMS.
        0..=4 => CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut *params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as _,
        },
        // GCM with a parameter of another size (raw bytes, never read past their length).
        5 => CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: if raw.is_empty() {
                ptr::null_mut()
            } else {
                raw.as_mut_ptr().cast()
            },
            ulParameterLen: raw.len() as _,
        },
        6 => CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        },
        _ => CK_MECHANISM {
            mechanism: CK_ULONG::from(inp.byte()) | CK_ULONG::from(inp.byte()) << 8,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        },
    };
    Mech {
        _iv: iv,
        _aad: aad,
        params,
        raw,
        mech,
    }
}

/// An output buffer: absent (length query), short, or roomy; `len` is what the caller says.
fn out_buffer(inp: &mut Input, needed: usize) -> (Option<Vec<u8>>, CK_ULONG) {
    match inp.byte() % 4 {
        0 => (None, 0),
        1 => {
            let n = needed.saturating_sub(1 + usize::from(inp.byte() % 17));
            (Some(vec![0; n]), n as CK_ULONG)
        }
        _ => {
            let n = needed + usize::from(inp.byte() % 32);
            (Some(vec![0; n]), n as CK_ULONG)
        }
    }
}

fn ptr_of(buf: &mut Option<Vec<u8>>) -> *mut u8 {
    match buf {
        Some(b) if !b.is_empty() => b.as_mut_ptr(),
        Some(b) => b.as_mut_ptr(), // dangling but non-null and never written (length 0)
        None => ptr::null_mut(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = harness().lock().unwrap_or_else(|p| p.into_inner());
    let f = h.f;
    let mut inp = Input { data };
    let mut sessions: Vec<CK_SESSION_HANDLE> = Vec::new();
    let mut handles: Vec<CK_OBJECT_HANDLE> = vec![1, 2, 0, 0xdead_beef];
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut last_ct: Vec<u8> = Vec::new();
    let mut last_iv: Vec<u8> = Vec::new();
    let mut changed = false;
    // SAFETY (for every call below): each pointer is either NULL where the API allows it, or
    // points to a live buffer of at least the length passed with it.
    unsafe {
        let mut ops = 0;
        while !inp.done() && ops < 48 {
            ops += 1;
            let s = inp.pick(&sessions).unwrap_or(u64::from(inp.byte()) as _);
            match inp.byte() % 22 {
                0 | 1 => {
                    if sessions.len() < 4 {
                        let flags = match inp.byte() % 4 {
                            0 => CKF_SERIAL_SESSION,
                            1 | 2 => CKF_SERIAL_SESSION | CKF_RW_SESSION,
                            _ => CK_FLAGS::from(inp.byte()),
                        };
                        let mut h = 0;
                        if f.C_OpenSession.unwrap()(0, flags, ptr::null_mut(), None, &mut h)
                            == CKR_OK
                        {
                            sessions.push(h);
                        }
                    }
                }
                2 => {
                    f.C_CloseSession.unwrap()(s);
                    sessions.retain(|x| *x != s);
                }
                3 | 4 => {
                    let user = match inp.byte() % 6 {
                        0..=2 => CKU_USER,
                        3 => CKU_SO,
                        4 => CKU_CONTEXT_SPECIFIC,
                        _ => CK_ULONG::from(inp.byte()),
                    };
                    let mut pin = if inp.byte() % 3 == 0 {
                        let n = usize::from(inp.byte() % 32);
                        inp.bytes(n)
                    } else {
                        PIN.to_vec()
                    };
                    let p = if pin.is_empty() {
                        ptr::null_mut()
                    } else {
                        pin.as_mut_ptr()
                    };
                    f.C_Login.unwrap()(s, user, p, pin.len() as _);
                }
                5 => {
                    f.C_Logout.unwrap()(s);
                }
                6 => {
                    let mut t = template(&mut inp);
                    let tp = if t.attrs.is_empty() {
                        ptr::null_mut()
                    } else {
                        t.attrs.as_mut_ptr()
                    };
                    f.C_FindObjectsInit.unwrap()(s, tp, t.attrs.len() as _);
                    let max = usize::from(inp.byte() % 9);
                    let mut found = vec![0 as CK_OBJECT_HANDLE; max.max(1)];
                    let mut n = 0;
                    if f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), max as _, &mut n) == CKR_OK {
                        assert!(n as usize <= max);
                        handles.extend_from_slice(&found[..n as usize]);
                    }
                    if inp.byte() % 4 != 0 {
                        f.C_FindObjectsFinal.unwrap()(s);
                    }
                    drop(t.values);
                }
                7 => {
                    let mut m = mechanism(&mut inp, &last_iv);
                    if inp.byte() % 2 == 0 {
                        m.mech.mechanism = CKM_AES_KEY_GEN;
                        m.mech.pParameter = ptr::null_mut();
                        m.mech.ulParameterLen = 0;
                    }
                    let mut t = template(&mut inp);
                    let tp = if t.attrs.is_empty() {
                        ptr::null_mut()
                    } else {
                        t.attrs.as_mut_ptr()
                    };
                    let mut k = 0;
                    if f.C_GenerateKey.unwrap()(s, &mut m.mech, tp, t.attrs.len() as _, &mut k)
                        == CKR_OK
                    {
                        handles.push(k);
                        changed = true;
                    }
                }
                8 | 9 => {
                    let key = inp.pick(&handles).unwrap_or(0);
                    let n = usize::from(inp.byte() % 5) + 1;
                    let mut bufs: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
                    let mut attrs = Vec::with_capacity(n);
                    for _ in 0..n {
                        let sel = inp.byte();
                        let kind = if sel < 250 {
                            ATTR_TYPES[usize::from(sel) % ATTR_TYPES.len()]
                        } else {
                            CK_ULONG::from(inp.byte()) << 8 | CK_ULONG::from(inp.byte())
                        };
                        let (buf, len) = out_buffer(&mut inp, 32);
                        bufs.push(buf);
                        attrs.push((kind, len));
                    }
                    let mut tpl: Vec<CK_ATTRIBUTE> = attrs
                        .iter()
                        .zip(bufs.iter_mut())
                        .map(|((kind, len), buf)| CK_ATTRIBUTE {
                            type_: *kind,
                            pValue: ptr_of(buf).cast(),
                            ulValueLen: *len,
                        })
                        .collect();
                    f.C_GetAttributeValue.unwrap()(s, key, tpl.as_mut_ptr(), n as _);
                    for (a, b) in tpl.iter().zip(bufs) {
                        if let Some(b) = b {
                            // What was written is bounded by the buffer; check all of it.
                            let _ = a.ulValueLen;
                            outputs.push(b);
                        }
                    }
                }
                10 => {
                    let key = inp.pick(&handles).unwrap_or(0);
                    let mut t = template(&mut inp);
                    let tp = if t.attrs.is_empty() {
                        ptr::null_mut()
                    } else {
                        t.attrs.as_mut_ptr()
                    };
                    if f.C_SetAttributeValue.unwrap()(s, key, tp, t.attrs.len() as _) == CKR_OK {
                        changed = true;
                    }
                }
                11 | 12 => {
                    let key = inp.pick(&handles).unwrap_or(0);
                    let mut m = mechanism(&mut inp, &last_iv);
                    let encrypt = inp.byte() % 2 == 0;
                    let rv = if encrypt {
                        f.C_EncryptInit.unwrap()(s, &mut m.mech, key)
                    } else {
                        f.C_DecryptInit.unwrap()(s, &mut m.mech, key)
                    };
                    if rv == CKR_OK && m.mech.mechanism == CKM_AES_GCM {
                        last_iv =
                            std::slice::from_raw_parts(m.params.pIv, m.params.ulIvLen as usize)
                                .to_vec();
                    }
                    drop(m.raw);
                }
                13..=15 => {
                    // Single-part, update or final; encrypt or decrypt.
                    let which = inp.byte();
                    let encrypt = which & 1 == 0;
                    let mut input = if !encrypt && which & 2 != 0 && !last_ct.is_empty() {
                        last_ct.clone()
                    } else {
                        let n = inp.len(600);
                        let mut v = inp.bytes(n);
                        v.resize(n, 0x41);
                        v
                    };
                    let needed = input.len() + 16;
                    let (mut out, mut out_len) = out_buffer(&mut inp, needed);
                    let ip = if input.is_empty() {
                        ptr::null_mut()
                    } else {
                        input.as_mut_ptr()
                    };
                    let op = ptr_of(&mut out);
                    let rv = match (encrypt, (which >> 2) % 3) {
                        (true, 0) => {
                            f.C_Encrypt.unwrap()(s, ip, input.len() as _, op, &mut out_len)
                        }
                        (true, 1) => {
                            f.C_EncryptUpdate.unwrap()(s, ip, input.len() as _, op, &mut out_len)
                        }
                        (true, _) => f.C_EncryptFinal.unwrap()(s, op, &mut out_len),
                        (false, 0) => {
                            f.C_Decrypt.unwrap()(s, ip, input.len() as _, op, &mut out_len)
                        }
                        (false, 1) => {
                            f.C_DecryptUpdate.unwrap()(s, ip, input.len() as _, op, &mut out_len)
                        }
                        (false, _) => f.C_DecryptFinal.unwrap()(s, op, &mut out_len),
                    };
                    if let Some(b) = out {
                        if rv == CKR_OK && encrypt && (out_len as usize) <= b.len() {
                            last_ct = b[..out_len as usize].to_vec();
                        }
                        outputs.push(b);
                    }
                }
                16 => {
                    let mut info = CK_TOKEN_INFO::default();
                    f.C_GetTokenInfo.unwrap()(CK_ULONG::from(inp.byte() % 2), &mut info);
                    let mut si = CK_SESSION_INFO::default();
                    f.C_GetSessionInfo.unwrap()(s, &mut si);
                    let mut mechs = [0 as CK_MECHANISM_TYPE; 8];
                    let mut n = 8;
                    f.C_GetMechanismList.unwrap()(0, mechs.as_mut_ptr(), &mut n);
                }
                17 => {
                    let key = inp.pick(&handles).unwrap_or(0);
                    if f.C_DestroyObject.unwrap()(s, key) == CKR_OK {
                        changed = true;
                    }
                }
                18 => {
                    let n = inp.len(256);
                    let mut buf = vec![0u8; n.max(1)];
                    f.C_GenerateRandom.unwrap()(s, buf.as_mut_ptr(), n as _);
                }
                19 => {
                    // The export paths: wrap (with an output buffer), copy, digest-key.
                    let key = inp.pick(&handles).unwrap_or(0);
                    let wrapping = inp.pick(&handles).unwrap_or(0);
                    let mut m = mechanism(&mut inp, &last_iv);
                    let (mut out, mut out_len) = out_buffer(&mut inp, 48);
                    f.C_WrapKey.unwrap()(
                        s,
                        &mut m.mech,
                        wrapping,
                        key,
                        ptr_of(&mut out),
                        &mut out_len,
                    );
                    if let Some(b) = out {
                        outputs.push(b);
                    }
                    let mut t = template(&mut inp);
                    let tp = if t.attrs.is_empty() {
                        ptr::null_mut()
                    } else {
                        t.attrs.as_mut_ptr()
                    };
                    let mut copy = 0;
                    f.C_CopyObject.unwrap()(s, key, tp, t.attrs.len() as _, &mut copy);
                    f.C_DigestKey.unwrap()(s, key);
                    let mut state_len: CK_ULONG = 0;
                    f.C_GetOperationState.unwrap()(s, ptr::null_mut(), &mut state_len);
                }
                20 => {
                    let mut mech = CK_MECHANISM_INFO::default();
                    let t = if inp.byte() % 2 == 0 {
                        CKM_AES_GCM
                    } else {
                        CK_ULONG::from(inp.byte())
                    };
                    f.C_GetMechanismInfo.unwrap()(0, t, &mut mech);
                }
                _ => {
                    f.C_CloseAllSessions.unwrap()(0);
                    sessions.clear();
                }
            }
        }
        f.C_CloseAllSessions.unwrap()(0);
    }
    // Learn keys made in this run before judging the outputs, then back to the base keys.
    if changed {
        h.learn_keys();
    }
    h.check(&outputs);
    if changed {
        h.reset_keys();
    }
});
