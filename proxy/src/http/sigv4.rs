//! AWS Signature Version 4 verification for service `kms-xks-proxy`.
//!
//! Written on hmac + sha2 (RustCrypto) rather than a crate: the verifier side is ~150 lines,
//! the available SigV4 crates are signers (they would still leave parsing, scope, skew and
//! constant-time checks to us) and pull in much larger dependency trees.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::hsm::Date;
use crate::tenants::Tenant;

type HmacSha256 = Hmac<Sha256>;

/// Service name in the credential scope.
pub const SERVICE: &str = "kms-xks-proxy";
/// Accepted clock skew (the replay window), seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Access key id that signed.
    pub access_key_id: String,
    /// Region in the credential scope.
    pub region: String,
}

/// Why verification failed (logged; the client sees only AuthenticationFailedException).
pub type Reason = String;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The SigV4 signing key: HMAC chain over the secret, the day, the region, the service and
/// `aws4_request` (every intermediate wiped).
fn signing_key(secret: &str, date: &str, region: &str) -> zeroize::Zeroizing<[u8; 32]> {
    let mut k_secret = zeroize::Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = zeroize::Zeroizing::new(hmac(&k_secret, date.as_bytes()));
    let k_region = zeroize::Zeroizing::new(hmac(&*k_date, region.as_bytes()));
    let k_service = zeroize::Zeroizing::new(hmac(&*k_region, SERVICE.as_bytes()));
    zeroize::Zeroizing::new(hmac(&*k_service, b"aws4_request"))
}

/// `YYYYMMDDTHHMMSSZ` -> seconds since the epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = Date {
        y: y as i32,
        m: mo,
        d,
    }
    .to_days();
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se))
}

struct AuthHeader<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(v: &str) -> Result<AuthHeader<'_>, Reason> {
    let rest = v
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?
        .trim_start();
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let cred = cred.ok_or("Authorization lacks Credential")?;
    let mut it = cred.split('/');
    let mut next = || {
        it.next()
            .ok_or_else(|| "malformed Credential scope".to_string())
    };
    let h = AuthHeader {
        access_key_id: next()?,
        date: next()?,
        region: next()?,
        service: next()?,
        terminator: next()?,
        signed_headers: signed.ok_or("Authorization lacks SignedHeaders")?,
        signature: sig.ok_or("Authorization lacks Signature")?,
    };
    if it.next().is_some() {
        return Err("malformed Credential scope".into());
    }
    Ok(h)
}

/// Canonical header value: all values joined by ',', each trimmed, inner spaces collapsed.
fn canonical_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?;
        if any {
            out.push(',');
        }
        any = true;
        let mut first = true;
        for w in s.split_ascii_whitespace() {
            if !first {
                out.push(' ');
            }
            out.push_str(w);
            first = false;
        }
    }
    any.then_some(out)
}

fn canonical_query(q: &str) -> String {
    if q.is_empty() {
        return String::new();
    }
    let mut parts: Vec<String> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('=') {
                p.to_string()
            } else {
                format!("{p}=")
            }
        })
        .collect();
    parts.sort();
    parts.join("&")
}

/// Verify a request's SigV4 signature against the tenant's credentials.
pub fn verify(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    tenant: &Tenant,
) -> Result<Verified, Reason> {
    let auth = headers
        .get("authorization")
        .ok_or("missing Authorization header")?
        .to_str()
        .map_err(|_| "Authorization header is not ASCII")?;
    let a = parse_authorization(auth)?;
    if a.service != SERVICE || a.terminator != "aws4_request" {
        return Err(format!(
            "credential scope must end in /{SERVICE}/aws4_request"
        ));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Amz-Date header")?;
    let ts = parse_amz_date(amz_date).ok_or("malformed X-Amz-Date")?;
    if &amz_date[..8] != a.date {
        return Err("credential scope date differs from X-Amz-Date".into());
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(format!(
            "X-Amz-Date is {}s away from the proxy clock",
            now - ts
        ));
    }
    if let Some(regions) = &tenant.regions {
        if !regions.iter().any(|r| r == a.region) {
            return Err(format!("region {} not allowed on this prefix", a.region));
        }
    }
    let cred = tenant
        .credential(a.access_key_id)
        .ok_or_else(|| format!("unknown access key id {}", a.access_key_id))?;

    let signed: Vec<&str> = a.signed_headers.split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&"x-amz-date") {
        return Err("SignedHeaders must include host and x-amz-date".into());
    }
    if signed.windows(2).any(|w| w[0] >= w[1])
        || signed
            .iter()
            .any(|h| h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err("SignedHeaders must be lowercase, sorted and unique".into());
    }
    let payload_hash = hex::encode(Sha256::digest(body));
    if let Some(v) = headers.get("x-amz-content-sha256") {
        if v.as_bytes() != payload_hash.as_bytes() {
            return Err("x-amz-content-sha256 does not match the body".into());
        }
    }
    let mut canonical = String::with_capacity(256 + path.len());
    canonical.push_str(method);
    canonical.push('\n');
    canonical.push_str(path);
    canonical.push('\n');
    canonical.push_str(&canonical_query(query));
    canonical.push('\n');
    for h in &signed {
        let v =
            canonical_value(headers, h).ok_or_else(|| format!("signed header {h} is missing"))?;
        canonical.push_str(h);
        canonical.push(':');
        canonical.push_str(&v);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(a.signed_headers);
    canonical.push('\n');
    canonical.push_str(&payload_hash);

    let scope = format!("{}/{}/{}/aws4_request", a.date, a.region, SERVICE);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let cached = tenant.signing_key(a.access_key_id, a.date, a.region);
    let k_signing = match &cached {
        Some(k) => k.clone(),
        None => signing_key(&cred.secret, a.date, a.region),
    };
    let expected = hmac(&*k_signing, string_to_sign.as_bytes());
    let given = hex::decode(a.signature).map_err(|_| "Signature is not hex")?;
    if given.len() != expected.len() || !bool::from(given.ct_eq(&expected)) {
        return Err("signature mismatch".into());
    }
    if cached.is_none() {
        tenant.keep_signing_key(a.access_key_id, a.date, a.region, &k_signing);
    }
    Ok(Verified {
        access_key_id: a.access_key_id.to_string(),
        region: a.region.to_string(),
    })
}

/// Client side (for `bench`): the `X-Amz-Date` and `Authorization` values for a POST signed
/// over `host` and `x-amz-date`.
pub fn sign(
    host: &str,
    path: &str,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    region: &str,
    now: SystemTime,
) -> (String, String) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = Date::from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    let amz_date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        d.y,
        d.m,
        d.d,
        r / 3600,
        (r / 60) % 60,
        r % 60
    );
    let day = &amz_date[..8];
    let canonical = format!(
        "POST\n{path}\n\nhost:{host}\nx-amz-date:{amz_date}\n\nhost;x-amz-date\n{}",
        hex::encode(Sha256::digest(body))
    );
    let scope = format!("{day}/{region}/{SERVICE}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = signing_key(secret, day, region);
    let sig = hex::encode(hmac(&*k, sts.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders=host;x-amz-date, Signature={sig}"
    );
    (amz_date, auth)
}

/// The private parsing steps, for the fuzz harnesses in `fuzz/` (not an API; no behaviour of
/// its own).
#[doc(hidden)]
pub mod fuzzing {
    use super::Reason;

    /// The `Authorization` header's fields, in order: access key id, date, region, service,
    /// terminator, signed headers, signature.
    pub fn parse_authorization(v: &str) -> Result<[&str; 7], Reason> {
        let a = super::parse_authorization(v)?;
        Ok([
            a.access_key_id,
            a.date,
            a.region,
            a.service,
            a.terminator,
            a.signed_headers,
            a.signature,
        ])
    }

    /// The canonical query string.
    pub fn canonical_query(q: &str) -> String {
        super::canonical_query(q)
    }

    /// The canonical value of one header.
    pub fn canonical_value(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
        super::canonical_value(headers, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_date() {
        assert_eq!(parse_amz_date("19700101T000001Z"), Some(1));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("2015-8-30T12360Z"), None);
    }

    #[test]
    fn signing_key_matches_aws_example() {
        // From the AWS SigV4 documentation (service iam, 20150830, us-east-1).
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k = hmac(format!("AWS4{secret}").as_bytes(), b"20150830");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(
            hex::encode(k),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    /// A verified request's signing key is kept per tenant and reused; a wrong signature is
    /// refused whether or not a key is kept, and never fills the cache; another tenant (a
    /// reload with a rotated secret) starts without it.
    #[test]
    fn signing_keys_are_kept_only_after_a_verified_signature() {
        use crate::config::Credential;
        let tenant = |secret: &str| {
            Tenant::with_credentials(vec![Credential {
                access_key_id: "AKIDAAAAAAAAAAAAAAAA".into(),
                secret: zeroize::Zeroizing::new(secret.into()),
            }])
        };
        let now = SystemTime::now();
        let request = |secret: &str| {
            let body = b"{}";
            let (date, auth) = sign("h", "/p", body, "AKIDAAAAAAAAAAAAAAAA", secret, "r1", now);
            let mut h = HeaderMap::new();
            h.insert("host", "h".parse().unwrap());
            h.insert("x-amz-date", date.parse().unwrap());
            h.insert("authorization", auth.parse().unwrap());
            (h, date[..8].to_string())
        };
        let verify_with = |t: &Tenant, h: &HeaderMap| verify("POST", "/p", "", h, b"{}", now, t);

        let t = tenant("right");
        let (wrong, day) = request("wrong");
        assert_eq!(verify_with(&t, &wrong).unwrap_err(), "signature mismatch");
        assert!(t.signing_key("AKIDAAAAAAAAAAAAAAAA", &day, "r1").is_none());

        let (good, _) = request("right");
        verify_with(&t, &good).unwrap();
        let kept = t.signing_key("AKIDAAAAAAAAAAAAAAAA", &day, "r1").unwrap();
        assert_eq!(*kept, *signing_key("right", &day, "r1"));
        verify_with(&t, &good).unwrap();
        assert_eq!(verify_with(&t, &wrong).unwrap_err(), "signature mismatch");

        let rotated = tenant("rotated");
        assert_eq!(
            verify_with(&rotated, &good).unwrap_err(),
            "signature mismatch"
        );
        assert!(rotated
            .signing_key("AKIDAAAAAAAAAAAAAAAA", &day, "r1")
            .is_none());
    }
}
