//! `credentials new`: mint a SigV4 access key id + secret from the OS RNG.
//!
//! The secret goes only to the secret file (mode 0600) and the console JSON file (0600), or,
//! without `--out`, to stdout as the console JSON the operator asked for — never to the log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use zeroize::Zeroizing;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A freshly minted credential.
pub struct NewCredential {
    /// 24 chars of A-Z2-7.
    pub access_key_id: String,
    /// 64 base64 chars (384 bits of entropy).
    pub secret: Zeroizing<String>,
}

/// Generate one credential.
pub fn generate() -> Result<NewCredential, String> {
    let mut raw = Zeroizing::new([0u8; 24 + 48]);
    getrandom::getrandom(raw.as_mut()).map_err(|e| format!("OS RNG: {e}"))?;
    // 256 is a multiple of 32, so `b % 32` is unbiased.
    let access_key_id = raw[..24]
        .iter()
        .map(|b| BASE32[(b % 32) as usize] as char)
        .collect();
    let secret = Zeroizing::new(base64_simd::STANDARD.encode_to_string(&raw[24..]));
    Ok(NewCredential {
        access_key_id,
        secret,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConsoleCredential<'a> {
    access_key_id: &'a str,
    raw_secret_access_key: &'a str,
}

#[derive(Serialize)]
struct ConsoleJson<'a> {
    #[serde(rename = "XksProxyUriPath")]
    uri_path: String,
    #[serde(rename = "XksProxyAuthenticationCredential")]
    credential: ConsoleCredential<'a>,
}

/// The JSON the KMS console imports.
pub fn console_json(prefix: &str, c: &NewCredential) -> Zeroizing<String> {
    let j = ConsoleJson {
        uri_path: format!("{prefix}/kms/xks/v1"),
        credential: ConsoleCredential {
            access_key_id: &c.access_key_id,
            raw_secret_access_key: &c.secret,
        },
    };
    Zeroizing::new(serde_json::to_string_pretty(&j).unwrap_or_default())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `credentials new --prefix P [--out FILE]`.
pub fn run_new(prefix: &str, out: Option<&Path>) -> Result<(), String> {
    crate::config::validate_prefix_path(prefix).map_err(|e| format!("--prefix: {e}"))?;
    let c = generate()?;
    let json = console_json(prefix, &c);
    match out {
        None => {
            eprintln!("note: the console JSON below contains the secret; store it safely");
            println!("{}", json.as_str());
        }
        Some(path) => {
            let mut json_path: PathBuf = path.to_path_buf().into_os_string().into();
            json_path.as_mut_os_string().push(".json");
            let mut secret_line = Zeroizing::new(c.secret.as_bytes().to_vec());
            secret_line.push(b'\n');
            write_private(path, &secret_line)?;
            write_private(&json_path, json.as_bytes())?;
            println!("Access key id:  {}", c.access_key_id);
            println!("Secret file:    {} (mode 0600)", path.display());
            println!(
                "Console JSON:   {} (mode 0600, contains the secret)",
                json_path.display()
            );
            println!();
            println!("Add to the [[prefix]] with path = {prefix:?}:");
            println!("[[prefix.credential]]");
            println!("access_key_id = \"{}\"", c.access_key_id);
            println!("secret_file = {:?}", path.display().to_string());
        }
    }
    Ok(())
}

/// `credentials list`: every configured SigV4 credential, per prefix: access key id, prefix,
/// when its secret file was created (its modification time: `credentials new` writes it once,
/// never in place), the secret file and whether it holds a valid secret. Never the secret.
/// Fails (after printing all) when a secret file is missing or invalid.
pub fn run_list(config: &Path) -> Result<(), String> {
    let cfg = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    println!(
        "{:<30} {:<24} {:<20} {:<8} SECRET_FILE",
        "ACCESS_KEY_ID", "PREFIX", "CREATED (UTC)", "SECRET"
    );
    let mut bad = 0;
    for (i, p) in cfg.prefix.iter().enumerate() {
        for (j, c) in p.credential.iter().enumerate() {
            let created = std::fs::metadata(&c.secret_file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or("-".to_string(), |d| utc(d.as_secs() as i64));
            let state = match c.load(&format!("prefix[{i}].credential[{j}]")) {
                Ok(_) => "ok",
                Err(e) => {
                    bad += 1;
                    eprintln!("{}: {e}", c.access_key_id);
                    "INVALID"
                }
            };
            let prefix = if p.path.is_empty() { "\"\"" } else { &p.path };
            println!(
                "{:<30} {:<24} {:<20} {:<8} {}",
                c.access_key_id,
                prefix,
                created,
                state,
                c.secret_file.display()
            );
        }
    }
    if bad > 0 {
        return Err(format!("{bad} credential(s) without a valid secret file"));
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` for Unix seconds.
fn utc(secs: i64) -> String {
    let d = crate::hsm::Date::from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!("{d} {:02}:{:02}:{:02}", r / 3600, (r / 60) % 60, r % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{valid_access_key_id, valid_secret};

    #[test]
    fn generated_credentials_are_valid() {
        let c = generate().unwrap();
        assert!(valid_access_key_id(&c.access_key_id));
        assert!(valid_secret(&c.secret));
        assert_eq!(c.secret.len(), 64);
        let j = console_json("/t", &c);
        assert!(j.contains("\"XksProxyUriPath\": \"/t/kms/xks/v1\""));
        assert!(j.contains("RawSecretAccessKey"));
    }
}
