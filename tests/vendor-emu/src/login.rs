//! The `C_Login` PIN formats of the emulated libraries (pure functions).

/// AWS CloudHSM (Client SDK 5): the PIN is `<HSM user name>:<password>`. Returns the
/// password part for the token, or `None` when there is no user name before the first colon
/// (the emulator then answers `CKR_PIN_INCORRECT`).
pub fn cloudhsm_password(pin: &[u8]) -> Option<&[u8]> {
    let colon = pin.iter().position(|b| *b == b':')?;
    (colon > 0).then(|| &pin[colon + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_colon_password_gives_the_password() {
        assert_eq!(cloudhsm_password(b"xki:1234"), Some(&b"1234"[..]));
        assert_eq!(cloudhsm_password(b"u:p:q"), Some(&b"p:q"[..]));
        assert_eq!(cloudhsm_password(b"u:"), Some(&b""[..]));
    }

    #[test]
    fn a_pin_without_user_name_is_refused() {
        assert_eq!(cloudhsm_password(b"1234"), None);
        assert_eq!(cloudhsm_password(b":1234"), None);
        assert_eq!(cloudhsm_password(b""), None);
    }
}
