//! The audit trail on a disk that fills up, a file that is rotated, a store path that does not
//! exist, and JSON lines: the BUILT module through cryptoki, on the embedded token.
//!
//! The full disk is real: a 256 KiB tmpfs each test mounts (root; the test command runs as
//! root) on a directory of its own, filled with a filler file until `ENOSPC`, then freed. Each
//! scenario runs in a child process of this binary (the module is process-global and each
//! needs its own config); the parent only starts it and reports its output.

mod support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use pkcs11_sys::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCENARIO_ENV: &str = "XKI_AUDIT_DISK_SCENARIO";
const PIN: &str = "1234";

/// Run the calling test's scenario in a child process (`true`), or tell the child to run it
/// (`false`).
fn in_child(name: &str) -> bool {
    if std::env::var(SCENARIO_ENV).as_deref() == Ok(name) {
        return false;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO_ENV, name)
        .env("XKI_EMBEDDED_TEST_KDF", "fast")
        .env_remove("XKI_LOG_FORMAT")
        .env_remove("XKI_EMBEDDED_CREATE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// A tmpfs of `kib` KiB mounted on `dir` until dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, kib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a small tmpfs on {} (the test needs root, as tests/run-all.sh runs): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fill every free byte with a filler file.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = [0x55u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Smaller pieces, down to the last byte.
        let _ = f.write_all(&[0x55; 1]);
        while f.write(&[0x55; 1]).is_ok_and(|n| n == 1) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: the module may still hold its audit file open here.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A module config with one embedded slot `audit` (store created here) and `extra` lines at
/// the top (audit_file, audit_flush_ms, ...).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let pin = dir.join("user.pin");
    std::fs::write(&pin, PIN).unwrap();
    let conf = dir.join("pkcs11.toml");
    std::fs::write(
        &conf,
        format!(
            "log_level = \"info\"\n{extra}\n\
             [[slot]]\nlabel = \"audit\"\nbackends = [\"emb\"]\n\
             [backend.emb]\ntype = \"embedded\"\ncreate = true\nstore = {store:?}\npin_file = {pin:?}\n",
            store = dir.join("emb.store").display().to_string(),
            pin = pin.display().to_string(),
        ),
    )
    .unwrap();
    conf
}

fn load(conf: &Path) -> Pkcs11 {
    std::env::set_var("XKI_PKCS11_CONF", conf);
    let ctx = Pkcs11::new(support::built_module::built_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    ctx
}

fn session_with_key(ctx: &Pkcs11, label: &str) -> (Session, ObjectHandle) {
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(PIN))).unwrap();
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &support::module_fixture::secure_template(label),
        )
        .unwrap();
    (s, key)
}

fn encrypt(s: &Session, key: ObjectHandle, i: u32) -> Result<Vec<u8>, Error> {
    let mut iv = [0u8; 12];
    iv[..4].copy_from_slice(&i.to_be_bytes());
    let m = Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).unwrap());
    s.encrypt(&m, key, b"audited")
}

fn is_device_error(e: &Error) -> bool {
    matches!(e, Error::Pkcs11(RvError::DeviceError, _))
}

/// `XKI_AUDIT_STATUS` as the header lays it out.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct AuditStatus {
    flags: CK_ULONG,
    lost: CK_ULONG,
    refused: CK_ULONG,
    write_errors: CK_ULONG,
    retained: CK_ULONG,
}

const FAILING: CK_ULONG = 0x2;
const FAIL_OPEN: CK_ULONG = 0x4;

/// The first entries of `XKI_STATUS_FUNCTION_LIST` 1.1 (as the header lays them out).
#[repr(C)]
struct StatusList {
    version: CK_VERSION,
    count: *const std::ffi::c_void,
    status: *const std::ffi::c_void,
    audit: unsafe extern "C" fn(*mut AuditStatus) -> CK_RV,
    reopen: unsafe extern "C" fn() -> CK_RV,
}

/// The module's "XKI Status" table, through `C_GetInterface` of the same loaded library.
fn status_list() -> &'static StatusList {
    let so = support::built_module::built_module();
    let path = std::ffi::CString::new(so.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: dlopen/dlsym with NUL-terminated strings; the symbol has PKCS#11 3.0's
    // C_GetInterface signature; the handle is never closed, so the table stays valid.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        assert!(!lib.is_null(), "the module is loaded");
        let sym = libc::dlsym(lib, c"C_GetInterface".as_ptr());
        let get: CK_C_GetInterface = std::mem::transmute(sym);
        let mut iface: CK_INTERFACE_PTR = std::ptr::null_mut();
        let name = c"XKI Status".as_ptr().cast_mut().cast();
        assert_eq!(
            get.unwrap()(name, std::ptr::null_mut(), &mut iface, 0),
            CKR_OK
        );
        let list = &*(*iface).pFunctionList.cast::<StatusList>();
        assert_eq!((list.version.major, list.version.minor), (1, 1));
        list
    }
}

fn audit_status() -> AuditStatus {
    let mut s = AuditStatus::default();
    // SAFETY: a live out-struct of the header's layout.
    assert_eq!(unsafe { (status_list().audit)(&mut s) }, CKR_OK);
    s
}

/// Complete encrypt records in an audit file (a line cut by a full disk is not one).
fn encrypt_records(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("xki_audit: op=encrypt") && l.ends_with("result=CKR_OK"))
        .count()
}

/// Every line of an audit file is a whole record (no torn or merged lines).
fn assert_whole_lines(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'));
    for l in text.lines() {
        assert_eq!(
            l.matches(" INFO  xki_audit: op=").count(),
            1,
            "torn line {l:?}"
        );
        assert!(l.contains(" result=CKR_"), "torn line {l:?}");
    }
}

/// Fail closed with the flusher (audit_flush_ms = `flush_ms`) or synchronous writes (0).
fn fail_closed(name: &str, flush_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 256);
    let audit = disk.dir.join("audit.log");
    let conf = write_config(
        dir.path(),
        &format!(
            "audit_file = {:?}\naudit_flush_ms = {flush_ms}",
            audit.display().to_string()
        ),
    );
    let ctx = load(&conf);
    let (s, key) = session_with_key(&ctx, name);
    let mut ok = 0u32;
    for i in 0..20 {
        encrypt(&s, key, i).unwrap();
        ok += 1;
    }
    disk.fill();
    // Refusal comes within a bound: the operations already past the check, plus those
    // whose records fill the last partly used page of the file (4 KiB: < 40 records) or
    // wait for the flusher's next round (`flush_ms`).
    let start = Instant::now();
    let first_refusal = loop {
        match encrypt(&s, key, ok) {
            Ok(_) => ok += 1,
            Err(e) if is_device_error(&e) => break ok,
            Err(e) => panic!("expected CKR_DEVICE_ERROR, got {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still serving {ok} operations after the disk filled"
        );
        if flush_ms > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    eprintln!(
        "{name}: {} operations succeeded after the disk filled",
        first_refusal - 20
    );
    for i in 0..25 {
        let e = encrypt(&s, key, 10_000 + i).unwrap_err();
        assert!(is_device_error(&e), "refused while the disk is full: {e}");
    }
    let st = audit_status();
    assert!(st.flags & FAILING != 0, "{st:?}");
    assert!(st.flags & FAIL_OPEN == 0, "{st:?}");
    assert!(st.refused >= 26, "{st:?}");
    assert!(st.write_errors >= 1, "{st:?}");
    assert_eq!(st.lost, 0, "fail-closed loses nothing: {st:?}");
    assert!(
        st.retained >= 1,
        "the records that could not be written wait: {st:?}"
    );
    // Key generation and the other key operations are refused too.
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s2 = ctx.open_rw_session(slot).unwrap();
    assert!(is_device_error(
        &s2.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"x".to_vec())
            ]
        )
        .unwrap_err()
    ));

    disk.free();
    // Space is back: the next operation (or the flusher) writes the retained records first.
    let back = Instant::now();
    loop {
        match encrypt(&s, key, 20_000) {
            Ok(_) => break,
            Err(e) if is_device_error(&e) => {
                assert!(back.elapsed() < Duration::from_secs(5), "no recovery");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    ok += 1;
    for i in 0..10 {
        encrypt(&s, key, 30_000 + i).unwrap();
        ok += 1;
    }
    let st = audit_status();
    assert!(st.flags & FAILING == 0, "{st:?}");
    assert_eq!((st.retained, st.lost), (0, 0), "{st:?}");
    drop(s);
    drop(s2);
    ctx.finalize().unwrap();
    // Every operation that succeeded has its record, exactly once; the refused ones have none.
    assert_eq!(encrypt_records(&audit), ok as usize);
    assert_whole_lines(&audit);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains("CKR_DEVICE_ERROR"),
        "refused operations left records"
    );
}

#[test]
fn fail_closed_buffered_refuses_until_space_returns_and_loses_nothing() {
    if in_child("fail_closed_buffered_refuses_until_space_returns_and_loses_nothing") {
        return;
    }
    fail_closed("buffered", 20);
}

#[test]
fn fail_closed_synchronous_refuses_until_space_returns_and_loses_nothing() {
    if in_child("fail_closed_synchronous_refuses_until_space_returns_and_loses_nothing") {
        return;
    }
    fail_closed("synchronous", 0);
}

#[test]
fn fail_open_serves_and_counts_every_lost_record() {
    if in_child("fail_open_serves_and_counts_every_lost_record") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 256);
    let audit = disk.dir.join("audit.log");
    let log = dir.path().join("module.log");
    let conf = write_config(
        dir.path(),
        &format!(
            "audit_file = {:?}\naudit_flush_ms = 0\naudit_on_failure = \"continue\"\nlog_file = {:?}",
            audit.display().to_string(),
            log.display().to_string()
        ),
    );
    let ctx = load(&conf);
    let (s, key) = session_with_key(&ctx, "open");
    disk.fill();
    for i in 0..300 {
        encrypt(&s, key, i).expect("fail-open keeps serving");
    }
    let st = audit_status();
    assert!(
        st.flags & FAIL_OPEN != 0 && st.flags & FAILING != 0,
        "{st:?}"
    );
    assert!(st.lost > 0 && st.refused == 0, "{st:?}");
    disk.free();
    for i in 0..5 {
        encrypt(&s, key, 1000 + i).unwrap();
    }
    let st = audit_status();
    assert!(st.flags & FAILING == 0, "{st:?}");
    drop(s);
    ctx.finalize().unwrap();
    // Every record is either in the file (whole) or counted as lost: 305 encryptions and the
    // key generation.
    let text = std::fs::read_to_string(&audit).unwrap();
    let whole = text
        .lines()
        .filter(|l| l.contains(" INFO  xki_audit: op=") && l.contains(" result=CKR_OK"))
        .count() as u64;
    assert_eq!(whole + st.lost, 306, "{st:?}, {whole} in the file");
    assert_eq!(encrypt_records(&audit) as u64 + st.lost, 305);
    // The last five came after space returned.
    assert!(text.lines().rev().take(5).all(|l| l.contains("op=encrypt")));
    // The loss was logged (rate-limited: one line here).
    let log = std::fs::read_to_string(&log).unwrap();
    let lines = log.lines().filter(|l| l.contains("record(s) lost")).count();
    assert!((1..=2).contains(&lines), "{log}");
}

#[test]
fn a_moved_audit_file_is_reopened_without_a_signal() {
    if in_child("a_moved_audit_file_is_reopened_without_a_signal") {
        return;
    }
    for flush_ms in [0u64, 50] {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.log");
        let conf = write_config(
            dir.path(),
            &format!(
                "audit_file = {:?}\naudit_flush_ms = {flush_ms}",
                audit.display().to_string()
            ),
        );
        let ctx = load(&conf);
        let (s, key) = session_with_key(&ctx, "rotate");
        for i in 0..4 {
            encrypt(&s, key, i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&audit, &rotated).unwrap();
        // Within a second of the move the module notices (at its next write) and reopens.
        std::thread::sleep(Duration::from_millis(1100));
        for i in 4..7 {
            encrypt(&s, key, i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        ctx.finalize().unwrap();
        assert_eq!(encrypt_records(&rotated), 4, "flush {flush_ms}");
        assert_eq!(encrypt_records(&audit), 3, "flush {flush_ms}: new file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&audit).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_missing_store_fails_initialize_naming_the_path() {
    if in_child("a_missing_store_fails_initialize_naming_the_path") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("user.pin");
    std::fs::write(&pin, PIN).unwrap();
    let store = dir.path().join("not-mounted/typo.store");
    let log = dir.path().join("module.log");
    let conf = dir.path().join("pkcs11.toml");
    let write = |create: &str| {
        std::fs::write(
            &conf,
            format!(
                "log_file = {log:?}\n[[slot]]\nlabel = \"s\"\nbackends = [\"emb\"]\n\
                 [backend.emb]\ntype = \"embedded\"\n{create}store = {store:?}\npin_file = {pin:?}\n",
                log = log.display().to_string(),
                store = store.display().to_string(),
                pin = pin.display().to_string(),
            ),
        )
        .unwrap()
    };
    write("");
    std::env::set_var("XKI_PKCS11_CONF", &conf);
    let ctx = Pkcs11::new(support::built_module::built_module()).unwrap();
    let e = ctx
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_err();
    assert!(matches!(e, Error::Pkcs11(_, _)), "{e}");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains(&store.display().to_string()) && logged.contains("does not exist"),
        "the log line names the path: {logged}"
    );
    assert!(
        !store.parent().unwrap().exists(),
        "nothing was created (not even the directory)"
    );
    // `create = true` (once) makes the new store; afterwards it is simply opened.
    write("create = true\n");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("created on request");
    assert!(store.exists());
    ctx.finalize().unwrap();
    write("");
    let ctx = Pkcs11::new(support::built_module::built_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("the existing store opens without create");
    ctx.finalize().unwrap();
}

#[test]
fn json_format_makes_every_module_line_json() {
    if in_child("json_format_makes_every_module_line_json") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("module.log");
    let audit = dir.path().join("audit.log");
    // Audit records to the log sink (no audit_file) and to an audit file: both JSON.
    for audit_line in [
        String::new(),
        format!("audit_file = {:?}", audit.display().to_string()),
    ] {
        let conf = write_config(
            dir.path(),
            &format!(
                "log_format = \"json\"\nlog_file = {:?}\n{audit_line}",
                log.display().to_string()
            ),
        );
        let ctx = load(&conf);
        let (s, key) = session_with_key(&ctx, &format!("json \"{}\"", audit_line.len()));
        encrypt(&s, key, 1).unwrap();
        let _ = s.decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut [9u8; 12], b"", 128.into()).unwrap()),
            key,
            &[0u8; 20],
        );
        drop(s);
        ctx.finalize().unwrap();
    }
    let mut audit_records = 0;
    for path in [&log, &audit] {
        for l in std::fs::read_to_string(path).unwrap().lines() {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            if v["target"] == "xki_audit" {
                audit_records += 1;
                if v["op"] == "generate" {
                    assert!(
                        v["key"].as_str().unwrap().starts_with("json\\x20\\x22"),
                        "{l}"
                    );
                }
                if v["op"] == "decrypt" {
                    assert_eq!(v["result"], "CKR_ENCRYPTED_DATA_INVALID", "{l}");
                }
            } else {
                assert!(v["message"].is_string(), "{l}");
            }
        }
    }
    // generate + encrypt + decrypt, twice.
    assert_eq!(audit_records, 6);
}
