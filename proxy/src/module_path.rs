//! Which PKCS#11 library to load when the config names none: our own `libxki_pkcs11.so`.
//!
//! Search order (first hit wins):
//! 1. `$XKI_PKCS11_MODULE` — an explicit choice: if it names a missing file, that is an error
//!    (silently falling back would hide a typo);
//! 2. next to the running executable (`<exe dir>/libxki_pkcs11.so`, an installed layout);
//! 3. `<exe dir>/deps/libxki_pkcs11.so` (where cargo leaves the cdylib it builds alongside the
//!    proxy, so `cargo run -p xki-proxy` works without installing anything). When both 2 and 3
//!    exist, the newer file wins: in a cargo target dir, `<exe dir>/libxki_pkcs11.so` is the
//!    copy of an earlier build of the module crate itself and goes stale when only the proxy
//!    (which rebuilds `deps/`) is built again;
//! 4. `/usr/local/lib/libxki_pkcs11.so`;
//! 5. `/usr/lib/<multiarch>/pkcs11/libxki_pkcs11.so` (Debian's PKCS#11 module directory, where
//!    the `libxki-pkcs11` package installs it, e.g. `/usr/lib/x86_64-linux-gnu/pkcs11/`);
//! 6. `/usr/lib/xki/libxki_pkcs11.so`.

use std::path::{Path, PathBuf};

/// Environment variable naming the PKCS#11 library explicitly.
pub const MODULE_ENV: &str = "XKI_PKCS11_MODULE";

/// File name of our module.
pub const MODULE_FILE: &str = "libxki_pkcs11.so";

/// The default search list after the environment variable, in order.
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(MODULE_FILE));
        out.push(dir.join("deps").join(MODULE_FILE));
    }
    out.push(PathBuf::from("/usr/local/lib").join(MODULE_FILE));
    out.push(debian_module_dir().join(MODULE_FILE));
    out.push(PathBuf::from("/usr/lib/xki").join(MODULE_FILE));
    out
}

/// Debian's PKCS#11 module directory for the architecture this binary was built for,
/// `/usr/lib/<multiarch tuple>/pkcs11` (the tuple as `dpkg-architecture -qDEB_HOST_MULTIARCH`
/// prints it).
pub fn debian_module_dir() -> PathBuf {
    let tuple = match std::env::consts::ARCH {
        "arm" => "arm-linux-gnueabihf".to_string(),
        "x86" => "i386-linux-gnu".to_string(),
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le-linux-gnu".to_string(),
        // x86_64, aarch64, riscv64, s390x, ...: the Rust arch name is Debian's CPU part.
        arch => format!("{arch}-linux-gnu"),
    };
    PathBuf::from("/usr/lib").join(tuple).join("pkcs11")
}

/// The library to load: `configured` (`hsm.module`) when set, else the default search.
/// The error lists every path tried.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(MODULE_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{MODULE_ENV}={} does not name a file (unset it to use the default search)",
                p.display()
            ))
        };
    }
    let tried = default_candidates();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let [beside, deps, ..] = tried.as_slice() {
        if beside.is_file() && deps.is_file() && mtime(deps) > mtime(beside) {
            return Ok(deps.clone());
        }
    }
    if let Some(hit) = tried.iter().find(|p| p.is_file()) {
        return Ok(hit.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "hsm.module is not set and {MODULE_FILE} was not found; tried ${MODULE_ENV} (unset), {}. \
         Build it with `cargo build --release -p xki-proxy` (it is built alongside the proxy), \
         set {MODULE_ENV}, or set hsm.module to any PKCS#11 library",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_wins_and_list_is_ordered() {
        let p = Path::new("/opt/vendor/lib.so");
        assert_eq!(resolve(Some(p)).unwrap(), p);
        let c = default_candidates();
        assert_eq!(c.len(), 5);
        assert!(c[1].ends_with("deps/libxki_pkcs11.so"));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            c[3],
            Path::new("/usr/lib/x86_64-linux-gnu/pkcs11/libxki_pkcs11.so")
        );
        assert_eq!(c[4], Path::new("/usr/lib/xki/libxki_pkcs11.so"));
    }
}
