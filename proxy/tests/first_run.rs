//! Zero-setup first run: the built binary with no config at all (fresh HOME and XDG dirs),
//! our module's embedded token, the printed curl commands run as printed, and a second start
//! that reuses the same key and credential.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_xki-proxy");

struct Run {
    child: Child,
    stdout: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &Path) -> Run {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        // Port 8000 may be taken on a shared machine; the demo config still says 8000.
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(home)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(home.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    loop {
        let Some(Ok(l)) = lines.next() else {
            let log = std::fs::read_to_string(home.join("stderr.log")).unwrap_or_default();
            panic!("server exited early: {stdout}\n{log}");
        };
        stdout.push_str(&l);
        stdout.push('\n');
        if l.starts_with("Manage keys:") {
            break;
        }
    }
    // Keep reading so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Run { child, stdout }
}

/// The value after `name :` in the printed summary.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|r| r.trim_start().strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name} not printed: {out}"))
        .trim()
        .to_string()
}

/// The shell snippet printed after the line starting with `marker`, up to the blank line.
fn snippet(out: &str, marker: &str) -> String {
    out.lines()
        .skip_while(|l| !l.starts_with(marker))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn bash(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn first_run_demo_round_trip_and_reuse() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data/xki");

    let first = start(home.path());
    let out = first.stdout.clone();
    assert!(out.contains("LOCAL DEMO ONLY: plain HTTP"), "{out}");
    let key = field(&out, "External key id");
    let akid = field(&out, "Access key id");
    assert_eq!(key, "xki-demo-key");
    // A non-empty prefix: clients that always insert a prefix segment can express it.
    assert!(
        field(&out, "URI path").starts_with("/demo/kms/xks/v1"),
        "{out}"
    );
    let secret_file = data.join("proxy-demo.secret");
    assert!(field(&out, "Secret").contains(&secret_file.display().to_string()));
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(secret.len() >= 43);
    let conf = std::fs::read_to_string(data.join("proxy-demo.toml")).unwrap();
    assert!(
        conf.contains("listen = \"127.0.0.1:8000\"")
            && conf.contains("path = \"/demo\"")
            && conf.contains(&akid),
        "{conf}"
    );
    for f in ["proxy-demo.secret", "proxy-demo.toml", "user.pin"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // Run the printed commands exactly as printed.
    let enc = bash(home.path(), &snippet(&out, "# Encrypt"));
    let v: serde_json::Value = serde_json::from_str(&enc).unwrap();
    assert!(v["ciphertext"].is_string(), "{enc}");
    let dec = bash(home.path(), &snippet(&out, "# Decrypt"));
    assert_eq!(dec.trim_end(), "hello, HYOK!");
    drop(first);
    let log = std::fs::read_to_string(home.path().join("stderr.log")).unwrap();
    assert!(log.contains("libxki_pkcs11.so"), "{log}");
    assert!(
        !out.contains(&secret) && !log.contains(&secret),
        "secret leaked"
    );

    // Second start: same key, same credential, nothing regenerated.
    let second = start(home.path());
    assert_eq!(field(&second.stdout, "External key id"), key);
    assert_eq!(field(&second.stdout, "Access key id"), akid);
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap().trim(),
        secret
    );
    assert!(!second.stdout.contains("created a local demo setup"));
    // The ciphertext from the first run still decrypts (same key in the embedded token).
    let dec = bash(home.path(), &snippet(&second.stdout, "# Decrypt"));
    assert_eq!(dec.trim_end(), "hello, HYOK!");
    drop(second);
    let log = std::fs::read_to_string(home.path().join("stderr.log")).unwrap();
    assert!(!log.contains("generated the demo key"), "{log}");

    // Admin commands find the demo config on their own.
    let list = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .args(["keys", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("xki-demo-key") && l.contains("ENABLED")),
        "{text}"
    );
}
