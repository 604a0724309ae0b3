//! How a copy finds its mode: `XKI_EMU_MODE`, else its own file name; neither is a loud
//! failure. One test: the environment is process-wide.

mod common;

use common::*;
use cryptoki::context::Pkcs11;

#[test]
fn the_mode_comes_from_the_environment_else_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    new_token(dir.path());
    std::env::remove_var("XKI_EMU_MODE");
    // Not named libxki-emu-<mode>.so and no environment: C_GetFunctionList fails.
    let plain = dir.path().join("libxki_vendor_emu.so");
    std::fs::copy(built_emulator(), &plain).unwrap();
    assert!(
        Pkcs11::new(&plain).is_err(),
        "no mode: the library refuses to load"
    );
    // By file name.
    let by_name = Pkcs11::new(mode_copy(dir.path(), "nshield")).expect("load nshield copy");
    init(&by_name);
    let info = by_name.get_library_info().unwrap();
    assert_eq!(info.manufacturer_id(), "nCipher Corp. Ltd");
    // The environment wins over the file name (a fresh copy: each copy decides once).
    let other = dir.path().join("sub");
    std::fs::create_dir(&other).unwrap();
    let luna_named = mode_copy(&other, "luna");
    std::env::set_var("XKI_EMU_MODE", "cloudhsm");
    let by_env = Pkcs11::new(&luna_named).expect("load with XKI_EMU_MODE");
    std::env::remove_var("XKI_EMU_MODE");
    init(&by_env);
    let info = by_env.get_library_info().unwrap();
    assert_eq!(info.manufacturer_id(), "Marvell Semiconductors, Inc.");
}
