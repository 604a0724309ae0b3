//! The shared object's dynamic interface: exactly three PKCS#11 symbols, and the soname.
//!
//! Runs `nm`/`readelf` on the `libxki_pkcs11.so` that cargo built next to this test binary
//! (cargo builds the library's cdylib form before running integration tests).

mod support;
use std::process::Command;
use support::built_module::built_module as shared_object;

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(out.status.success(), "{tool} failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 tool output")
}

#[test]
fn only_the_three_discovery_functions_are_exported() {
    let so = shared_object();
    let symbols = run("nm", &["-D", "--defined-only", so.to_str().unwrap()]);
    let mut exported: Vec<&str> = symbols
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter(|name| name.starts_with("C_"))
        .collect();
    exported.sort_unstable();
    assert_eq!(
        exported,
        ["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"],
        "exported C_ symbols: {exported:?}"
    );
    // and they are functions (text symbols)
    for name in exported {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" T {name}"))),
            "{name} is not a text symbol"
        );
    }
}

#[test]
fn soname_is_versioned() {
    let so = shared_object();
    let dynamic = run("readelf", &["-d", so.to_str().unwrap()]);
    assert!(
        dynamic.contains("Library soname: [libxki_pkcs11.so.0]"),
        "dynamic section: {dynamic}"
    );
}
