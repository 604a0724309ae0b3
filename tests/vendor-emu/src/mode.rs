//! The emulated vendor modes, how a copy of the library finds its own, and the facts each
//! mode reports (pure data, no I/O).

/// Prefix of the file name a copy of the library carries: `libxki-emu-<mode>.so`.
pub const FILE_PREFIX: &str = "libxki-emu-";
/// Suffix of that file name.
pub const FILE_SUFFIX: &str = ".so";
/// The environment variable that overrides the mode of every copy in the process.
pub const MODE_ENV: &str = "XKI_EMU_MODE";

/// How the emulated library treats the IV of a `CKM_AES_GCM` encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcmIv {
    /// The caller's IV is used (SoftHSM2 unchanged).
    Caller,
    /// `pIv` must be NULL and `ulIvLen` 0; the library generates the IV and appends it to the
    /// output (ciphertext ‖ tag ‖ IV).
    Appended,
    /// `pIv` must point to 12 zero bytes; the library generates the IV and writes it into
    /// `pIv` during `C_EncryptInit`.
    WrittenBack,
}

/// How `C_Login` expects the PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginPin {
    /// The token's PIN as is.
    Plain,
    /// `<user>:<password>`: the user name is checked to be present, the password goes to the
    /// token.
    UserColonPassword,
}

/// One emulated vendor library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Thales (SafeNet) Luna outside FIPS mode: caller IVs accepted.
    Luna,
    /// Thales (SafeNet) Luna in FIPS mode: the HSM appends the IV it generated.
    LunaFips,
    /// AWS CloudHSM (Client SDK 5, Marvell HSMs): zero IV in, generated IV written back.
    CloudHsm,
    /// Entrust nShield (FIPS Security World): zero IV in, generated IV written back.
    NShield,
}

/// Every mode, in the order the README's table lists them.
pub const ALL: [Mode; 4] = [Mode::Luna, Mode::LunaFips, Mode::CloudHsm, Mode::NShield];

/// Length of the IVs the emulator generates (96 bits, NIST SP 800-38D's recommended size).
pub const GENERATED_IV_LEN: usize = 12;

impl Mode {
    /// The mode's name: what `XKI_EMU_MODE` and the file name carry.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Luna => "luna",
            Mode::LunaFips => "luna-fips",
            Mode::CloudHsm => "cloudhsm",
            Mode::NShield => "nshield",
        }
    }

    /// The mode called `name`, if any.
    pub fn from_name(name: &str) -> Option<Mode> {
        ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mode encoded in a library file name (`/any/dir/libxki-emu-<mode>.so`).
    pub fn from_file_name(path: &str) -> Option<Mode> {
        let base = path.rsplit('/').next()?;
        let name = base.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
        Mode::from_name(name)
    }

    /// The mode chosen by `XKI_EMU_MODE` (`env`) when set, else by the library's own file
    /// name. `Err` says why there is none.
    pub fn select(env: Option<&str>, own_file: Option<&str>) -> Result<Mode, String> {
        if let Some(name) = env {
            return Mode::from_name(name)
                .ok_or_else(|| format!("{MODE_ENV}={name:?} is not one of {}", names()));
        }
        let file = own_file.ok_or_else(|| format!("{MODE_ENV} unset and own file name unknown"))?;
        Mode::from_file_name(file).ok_or_else(|| {
            format!(
                "{MODE_ENV} unset and {file:?} is not named {FILE_PREFIX}<mode>{FILE_SUFFIX} \
                 with mode one of {}",
                names()
            )
        })
    }

    /// `CK_INFO.manufacturerID` (and `CK_TOKEN_INFO.manufacturerID`) the vendor reports.
    pub fn manufacturer(self) -> &'static str {
        match self {
            Mode::Luna | Mode::LunaFips => "SafeNet, Inc.",
            Mode::CloudHsm => "Marvell Semiconductors, Inc.",
            Mode::NShield => "nCipher Corp. Ltd",
        }
    }

    /// `CK_INFO.libraryDescription`: says what this is, so a log line never passes it off as
    /// the vendor's library.
    pub fn library_description(self) -> String {
        format!("xki vendor emulation: {}", self.name())
    }

    /// The GCM IV convention of encryption.
    pub fn gcm_iv(self) -> GcmIv {
        match self {
            Mode::Luna => GcmIv::Caller,
            Mode::LunaFips => GcmIv::Appended,
            Mode::CloudHsm | Mode::NShield => GcmIv::WrittenBack,
        }
    }

    /// The PIN format of `C_Login`.
    pub fn login_pin(self) -> LoginPin {
        match self {
            Mode::CloudHsm => LoginPin::UserColonPassword,
            Mode::Luna | Mode::LunaFips | Mode::NShield => LoginPin::Plain,
        }
    }
}

fn names() -> String {
    ALL.map(Mode::name).join(", ")
}

/// Copy `text` into a space-padded PKCS#11 fixed-length string field.
pub fn pad_into(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in ALL {
            assert_eq!(Mode::from_name(m.name()), Some(m));
        }
        assert_eq!(Mode::from_name("thales"), None);
    }

    #[test]
    fn file_names_carry_the_mode() {
        assert_eq!(
            Mode::from_file_name("/tmp/x/libxki-emu-luna-fips.so"),
            Some(Mode::LunaFips)
        );
        assert_eq!(
            Mode::from_file_name("libxki-emu-cloudhsm.so"),
            Some(Mode::CloudHsm)
        );
        assert_eq!(Mode::from_file_name("/t/libxki_vendor_emu.so"), None);
        assert_eq!(Mode::from_file_name("/t/libxki-emu-acme.so"), None);
    }

    #[test]
    fn the_environment_wins_over_the_file_name() {
        let file = Some("/t/libxki-emu-luna.so");
        assert_eq!(Mode::select(Some("nshield"), file), Ok(Mode::NShield));
        assert_eq!(Mode::select(None, file), Ok(Mode::Luna));
        assert!(Mode::select(Some("acme"), file).is_err());
        assert!(Mode::select(None, Some("/t/libxki_vendor_emu.so")).is_err());
        assert!(Mode::select(None, None).is_err());
    }

    #[test]
    fn padding_fills_with_spaces_and_truncates() {
        let mut f = [0u8; 8];
        pad_into(&mut f, "abc");
        assert_eq!(&f, b"abc     ");
        pad_into(&mut f, "0123456789");
        assert_eq!(&f, b"01234567");
    }
}
