//! Build script: stamps the shared object's soname and keeps `include/xki_pkcs11.h` honest
//! (its version macros must match the crate version).

use std::env;
use std::fs;

/// Major ABI version: bump when the C interface changes incompatibly.
const SONAME: &str = "libxki_pkcs11.so.0";
const HEADER: &str = "include/xki_pkcs11.h";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={HEADER}");

    // Only the cdylib gets the soname; the rlib and test binaries are unaffected.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{SONAME}");
    println!("cargo:rustc-env=XKI_PKCS11_SONAME={SONAME}");

    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets CARGO_PKG_VERSION_MINOR");
    let header = fs::read_to_string(HEADER).unwrap_or_else(|e| panic!("cannot read {HEADER}: {e}"));
    for (name, want) in [
        ("XKI_PKCS11_VERSION_MAJOR", &major),
        ("XKI_PKCS11_VERSION_MINOR", &minor),
    ] {
        let found = define(&header, name);
        if found.as_deref() != Some(want.as_str()) {
            panic!(
                "{HEADER}: #define {name} is {found:?}, but the crate version says {want}; \
                 update the header together with Cargo.toml"
            );
        }
    }
    if define(&header, "XKI_PKCS11_SONAME").as_deref() != Some(&format!("\"{SONAME}\"")) {
        panic!("{HEADER}: XKI_PKCS11_SONAME must be \"{SONAME}\"");
    }
}

/// The value of `#define NAME value` in `text`, if present.
fn define(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("#define") && words.next() == Some(name))
            .then(|| words.next().map(str::to_string))
            .flatten()
    })
}
