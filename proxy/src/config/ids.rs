//! Identifier charsets: external key ids, access key ids, secrets and URI path prefixes.
//! The config checks them at load, the request path checks key ids again per request.

/// `[A-Za-z0-9._-]{1,128}`: the external key id charset of the spec.
pub fn valid_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 20-30 chars of the base32 alphabet A-Z2-7.
pub fn valid_access_key_id(s: &str) -> bool {
    (20..=30).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// 43-64 chars of `[A-Za-z0-9+/=]`.
pub fn valid_secret(s: &str) -> bool {
    (43..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// A prefix is empty or `/seg[/seg...]` of `[A-Za-z0-9_-]`, no trailing slash, <= 64 chars
/// (the whole URI path must stay within 128 chars).
pub fn validate_prefix_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if !p.starts_with('/') || p.ends_with('/') || p.contains("//") {
        return Err("must be empty or start with '/', without trailing or double '/'");
    }
    if p.len() > 64 {
        return Err("must be at most 64 characters");
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err("only [A-Za-z0-9/_-] allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets() {
        assert!(valid_key_id("a.b_c-D9"));
        assert!(!valid_key_id("a/b"));
        assert!(!valid_key_id(""));
        assert!(valid_access_key_id("ABCDEFGHIJKLMNOPQRS2"));
        assert!(!valid_access_key_id("ABCDEFGHIJKLMNOPQRS1"));
        assert!(valid_secret(&"A".repeat(43)));
        assert!(!valid_secret(&"A".repeat(42)));
    }
}
