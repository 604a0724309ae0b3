//! SigV4 (proxy/src/http/sigv4.rs): the Authorization header parser, X-Amz-Date, the
//! canonical query/header steps, and the whole `verify` over arbitrary method, path, query,
//! headers and body. Two properties beyond "no panic":
//! - a request signed by `sign` (the client side) with the tenant's secret verifies, whatever
//!   the path and body (within what `sign` covers);
//! - an unsigned or tampered request never verifies.
#![no_main]

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};
use xki_proxy::http::sigv4::{self, fuzzing};
use xki_proxy::tenants::{Tenant, Tenants};

const ACCESS_KEY: &str = "AKIAFUZZFUZZFUZZFUZZ";
const SECRET: &str = "fuzzSecretfuzzSecretfuzzSecretfuzzSecret1234";
const REGION: &str = "us-east-1";

/// One tenant on prefix "" with the fuzz credential (its secret file in a temp dir).
fn tenant() -> &'static Tenant {
    static T: OnceLock<Tenants> = OnceLock::new();
    let tenants = T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("xki-fuzz-sigv4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[hsm]\nmodule = \"/nonexistent.so\"\ntoken_label = \"t\"\n\
             pin_env = \"PIN\"\n[[prefix]]\npath = \"\"\nkeys = \"all\"\n\
             [[prefix.credential]]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        );
        let cfg: xki_proxy::config::Config = toml::from_str(&text).expect("fuzz proxy config");
        let t = Tenants::from_config(&cfg).expect("fuzz tenant");
        let _ = std::fs::remove_dir_all(&dir);
        t
    });
    tenants.get("").expect("tenant on the empty prefix")
}

/// Split the input into NUL-separated fields.
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0).collect()
}

fuzz_target!(|data: &[u8]| {
    let tenant = tenant();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fields(rest);
    let s = |i: usize| {
        f.get(i)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    // The parsing steps on their own.
    let _ = fuzzing::parse_authorization(&s(0));
    let _ = fuzzing::canonical_query(&s(1));
    let _ = sigv4::parse_amz_date(&s(2));
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(mode) * 997);
    match mode % 3 {
        // Arbitrary headers: field 0 = Authorization, 2 = X-Amz-Date, then name/value pairs.
        0 => {
            let mut headers = HeaderMap::new();
            for (name, value) in [("authorization", 0usize), ("x-amz-date", 2)] {
                if let Ok(v) = HeaderValue::from_bytes(f.get(value).copied().unwrap_or_default()) {
                    headers.insert(name, v);
                }
            }
            for pair in f.get(5..).unwrap_or_default().chunks(2) {
                if let [n, v] = pair {
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v))
                    {
                        headers.append(n, v);
                    }
                }
            }
            for name in ["host", "x-amz-date", "content-type"] {
                let _ = fuzzing::canonical_value(&headers, name);
            }
            let body = f.get(4).copied().unwrap_or_default();
            let verdict = sigv4::verify("POST", &s(3), &s(1), &headers, body, now, tenant);
            // Without the secret, a valid signature over this input is out of reach.
            assert!(verdict.is_err(), "verified an unsigned request");
        }
        // Signed by the client side: must verify; then tampered: must not.
        _ => {
            let path = format!("/{}", s(0).replace(['?', '#', ' '], ""));
            let host = "xks.example";
            let body = f.get(1).copied().unwrap_or_default();
            let at = now - Duration::from_secs(u64::from(mode) % 200);
            let (date, auth) = sigv4::sign(host, &path, body, ACCESS_KEY, SECRET, REGION, at);
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static(host));
            headers.insert("x-amz-date", HeaderValue::from_str(&date).unwrap());
            headers.insert("authorization", HeaderValue::from_str(&auth).unwrap());
            let ok = sigv4::verify("POST", &path, "", &headers, body, now, tenant);
            assert!(
                ok.is_ok(),
                "a correctly signed request failed: {ok:?} ({path:?})"
            );
            // Tamper with one thing chosen by the input.
            let mut body2 = body.to_vec();
            let (mut p2, mut q2) = (path.clone(), String::new());
            match f.get(2).map_or(0, |b| b.len()) % 4 {
                0 => body2.push(mode),
                1 => p2.push('x'),
                2 => q2 = format!("a={}", s(2)),
                _ => {
                    headers.insert("x-amz-date", HeaderValue::from_static("20000101T000000Z"));
                }
            }
            let bad = sigv4::verify("POST", &p2, &q2, &headers, &body2, now, tenant);
            assert!(bad.is_err(), "a tampered request verified");
        }
    }
});
