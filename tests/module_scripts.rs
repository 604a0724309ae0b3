//! Runs the consumer scripts of tests/scripts/ (pkcs11-tool and python-pkcs11) against the .so
//! this test run built, so `cargo test` covers them too. Each script makes its own token.

mod support;

use support::module_fixture::{repo, run_script, so_path};

#[test]
fn pkcs11_tool_script() {
    let out = run_script(
        &repo("tests/scripts/pkcs11-tool.sh"),
        &[so_path().as_os_str()],
    );
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn python_pkcs11_script() {
    let out = run_script(
        &repo("tests/scripts/python-pkcs11.sh"),
        &[so_path().as_os_str()],
    );
    assert!(out.contains("all checks passed"), "{out}");
}
