//! Vendor quirk normalisation: the ONE place where a vendor's deviation from the PKCS#11
//! return-code contract is turned into the code the module promises its callers.
//!
//! Quirks are chosen per library by `CK_INFO.manufacturerID` at open time and applied only to
//! the exact step they concern, so a genuine fault elsewhere is never disguised.
//!
//! | Library (manufacturerID) | Step | Vendor answer | Normalised to | Evidence |
//! |---|---|---|---|---|
//! | `SoftHSM` (SoftHSM2 2.6) | `C_Decrypt` (single part, the step that checks the tag) of `CKM_AES_GCM` | `CKR_GENERAL_ERROR` on a failed tag check (wrong tag, AAD, IV or key) | `CKR_ENCRYPTED_DATA_INVALID` | `tests/backend_pkcs11.rs::gcm_bad_tag_aad_iv_is_encrypted_data_invalid` |
//! | `SoftHSM` (SoftHSM2 2.6) | `C_GetAttributeValue` of a *private* object that has a non-empty `CKA_START_DATE`/`CKA_END_DATE` | `CKR_GENERAL_ERROR` (dates are stored in clear but decrypted on read: upstream issues softhsm/SoftHSMv2#655, #804, still open) | writing a non-empty date is refused with `CKR_ATTRIBUTE_TYPE_INVALID` (it would make every later read of the key fail); a key already carrying one is read without its dates | `tests/backend_pkcs11.rs::set_attributes_disable_encrypt_and_dates` |
//! | `SoftHSM` (SoftHSM2 2.6, file object store) | any call on a key while another session runs `C_SetAttributeValue` on it; `C_GenerateKey` while another object is rewritten | `CKR_OBJECT_HANDLE_INVALID` / `CKR_KEY_HANDLE_INVALID` for a valid handle (the object reads as invalid while its file is rewritten and reloaded); now and then `CKR_GENERAL_ERROR` from `C_GenerateKey` | object writes (generate, set attributes, destroy) run alone: a process-wide lock lets reads and crypto run together but never beside a write (`calls.rs`) | `tests/module_concurrent_changes.rs` |
//! | `SoftHSM` (SoftHSM2 2.6.1, file object store) | every call while its token directory is gone (moved away, unreadable) or the process is out of file descriptors | `C_FindObjects` answers `CKR_OK` with **no objects**; a known key's handle is `CKR_OBJECT_HANDLE_INVALID`; `C_GetTokenInfo` is `CKR_GENERAL_ERROR`; the slot list and `C_GetSlotInfo` do not change (token still "present"). Once the directory is back, the token stays like that (and `C_Login` answers `CKR_GENERAL_ERROR`) until the library is finalized and initialised again | any "no such key" answer (empty or shrunken listing, handle error) is confirmed with `C_GetTokenInfo`; when that fails the backend is out of service with `CKR_DEVICE_ERROR` (for every library: `outage.rs`); recovery re-initialises the library (`reinit_to_recover`, only an initialisation we own), then logs in and finds the keys again | `tests/module_outage.rs` |
//! | `SoftHSM` (SoftHSM2 2.6) | `C_SetAttributeValue` of `CKA_VALUE` on an existing `CKO_DATA` object (a key's state record) | `CKR_ATTRIBUTE_READ_ONLY` | any library answering so gets the record replaced: new object created first, old destroyed after; the record's generation picks the newer if a crash leaves both (`companion.rs`, `keystate::newest`) | `tests/module_keystate.rs::status_and_usage_are_independent_and_enforced_by_the_hsm`, `proxy/tests/keystate.rs::crash_at_every_step_softhsm2` |
//! | any (SoftHSM2 2.6 seen) | `C_EncryptInit` / `C_DecryptInit` with a handle that names no key | `CKR_OBJECT_HANDLE_INVALID` | `CKR_KEY_HANDLE_INVALID` (what the specification lists for these functions) | `tests/backend_pkcs11.rs::gcm_bad_tag_aad_iv_is_encrypted_data_invalid` |
//!
//! GCM IVs for encryption (the `gcm_iv = "auto"` choice, `iv_mode.rs`), one row per vendor:
//!
//! | Library (manufacturerID) | What the HSM wants for a GCM encryption IV | `auto` picks | Source | Evidence |
//! |---|---|---|---|---|
//! | `SafeNet, Inc.` (Thales Luna 7) | outside FIPS mode: the caller's IV; in FIPS mode (HSM policy 12) the IV is generated in the HSM and appended to the output, a caller IV is refused | `caller`, switching to `append` on the first caller IV refused with `CKR_MECHANISM_PARAM_INVALID` (FIPS mode is not visible through PKCS#11) | Thales Luna 7 SDK reference, CKM_AES_GCM: <https://thalesdocs.com/gphsm/luna/7/docs/network/Content/sdk/mechanisms/CKM_AES_GCM.htm> | emulated (`luna`, `luna-fips`): `tests/module_vendor_iv.rs` |
//! | `Marvell Semiconductors, Inc.` (AWS CloudHSM) | the HSM generates the IV and writes it into `CK_GCM_PARAMS.pIv` (12 zero bytes in); any other IV is refused | `write-back` | AWS CloudHSM user guide, supported PKCS#11 mechanisms, AES-GCM note: <https://docs.aws.amazon.com/cloudhsm/latest/userguide/pkcs11-mechanisms.html> | emulated (`cloudhsm`): `tests/module_vendor_iv.rs` |
//! | `nCipher Corp. Ltd` (Entrust nShield, FIPS 140 Level 3 Security World) | as CloudHSM: the module generates the IV and the library writes it into `pIv` | `write-back` | nShield Security World PKCS#11 developer guide, mechanisms: <https://nshielddocs.entrust.com/security-world-docs/v12.80/api-generic/pkcs11.html> | emulated (`nshield`): `tests/module_vendor_iv.rs` |
//! | any other | a caller IV, or the PKCS#11 3.0 message API when the library offers it for `CKM_AES_GCM` | `message` if offered, else `caller` | PKCS#11 3.0 §5.13 (message-based encryption) | SoftHSM2 (caller), kryoptic (message) |
//!
//! Other libraries are assumed to follow the specification (`CKR_ENCRYPTED_DATA_INVALID`) until
//! a test against them shows otherwise; add a row here (and a test) when one does not.

use super::errors;
use crate::rv::Rv;
use cryptoki::context::Function;
use cryptoki::error::Error;

/// The quirks of one vendor library.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Quirks {
    /// What the library returns from the GCM decrypt step when the tag does not verify,
    /// if that is not `CKR_ENCRYPTED_DATA_INVALID`.
    pub gcm_tag_failure: Option<Rv>,
    /// The library cannot read back non-empty dates of private objects.
    pub private_dates_unreadable: bool,
    /// While one session writes an object, calls in other sessions fail spuriously (valid
    /// handles read as invalid, generation fails): writes must run alone.
    pub object_writes_exclusive: bool,
    /// How the vendor's HSM takes GCM encryption IVs (for `gcm_iv = "auto"`).
    pub gcm_iv: VendorIv,
    /// A token that lost its store comes back only after `C_Finalize` + `C_Initialize` of the
    /// library. Implies `object_writes_exclusive` (that lock keeps calls out of the library
    /// while it is re-initialised).
    pub reinit_to_recover: bool,
}

/// A vendor row's GCM encryption IV behaviour (see the table above).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum VendorIv {
    /// No row: the library's functions decide.
    #[default]
    Unlisted,
    /// The HSM writes the IV it generated into `pIv` (CloudHSM, nShield).
    WriteBack,
    /// Caller IVs, unless the HSM is in FIPS mode and appends its own (Luna).
    CallerOrAppend,
}

/// `CK_INFO.manufacturerID` of the Thales (SafeNet) Luna library.
const LUNA_MANUFACTURER: &str = "SafeNet, Inc.";
/// `CK_INFO.manufacturerID` of the AWS CloudHSM library.
const CLOUDHSM_MANUFACTURER: &str = "Marvell Semiconductors, Inc.";
/// `CK_INFO.manufacturerID` of the nShield library.
const NSHIELD_MANUFACTURER: &str = "nCipher Corp. Ltd";

/// The manufacturer ID SoftHSM2 reports in `CK_INFO` (space padded; compared trimmed).
const SOFTHSM_MANUFACTURER: &str = "SoftHSM";

impl Quirks {
    /// The quirks of the library whose `CK_INFO.manufacturerID` is `manufacturer`.
    pub(crate) fn for_library(manufacturer: &str) -> Quirks {
        match manufacturer.trim() {
            // SoftHSM2 maps every failure of its GCM final step (OpenSSL's tag check) to
            // CKR_GENERAL_ERROR (SoftHSM.cpp SymDecrypt: `decryptFinal` failed).
            SOFTHSM_MANUFACTURER => Quirks {
                gcm_tag_failure: Some(Rv::GENERAL_ERROR),
                private_dates_unreadable: true,
                object_writes_exclusive: true,
                reinit_to_recover: true,
                gcm_iv: VendorIv::Unlisted,
            },
            LUNA_MANUFACTURER => Quirks {
                gcm_iv: VendorIv::CallerOrAppend,
                ..Quirks::default()
            },
            CLOUDHSM_MANUFACTURER | NSHIELD_MANUFACTURER => Quirks {
                gcm_iv: VendorIv::WriteBack,
                ..Quirks::default()
            },
            _ => Quirks::default(),
        }
    }

    /// Normalise an error of the single-part GCM encrypt.
    pub(crate) fn gcm_encrypt_error(&self, err: &Error) -> Rv {
        init_key_handle(err)
    }

    /// Normalise an error of the single-part GCM decrypt. Only the `C_Decrypt` step (where the
    /// tag is checked) is mapped; errors of `C_DecryptInit` pass through unchanged.
    pub(crate) fn gcm_decrypt_error(&self, err: &Error) -> Rv {
        let rv = init_key_handle(err);
        match (err, self.gcm_tag_failure) {
            (Error::Pkcs11(_, Function::Decrypt), Some(tag_rv)) if rv == tag_rv => {
                Rv::ENCRYPTED_DATA_INVALID
            }
            _ => rv,
        }
    }
}

/// `C_EncryptInit`/`C_DecryptInit` report a bad key as `CKR_KEY_HANDLE_INVALID` (spec), not
/// `CKR_OBJECT_HANDLE_INVALID` (SoftHSM2).
fn init_key_handle(err: &Error) -> Rv {
    let rv = errors::rv_of(err);
    match err {
        Error::Pkcs11(_, Function::EncryptInit | Function::DecryptInit)
            if rv == Rv::OBJECT_HANDLE_INVALID =>
        {
            Rv::KEY_HANDLE_INVALID
        }
        _ => rv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::error::RvError;

    #[test]
    fn softhsm_tag_failure_only_on_decrypt_step() {
        let q = Quirks::for_library("SoftHSM                         ");
        let tag = Error::Pkcs11(RvError::GeneralError, Function::Decrypt);
        assert_eq!(q.gcm_decrypt_error(&tag), Rv::ENCRYPTED_DATA_INVALID);
        let init = Error::Pkcs11(RvError::GeneralError, Function::DecryptInit);
        assert_eq!(q.gcm_decrypt_error(&init), Rv::GENERAL_ERROR);
        let other = Error::Pkcs11(RvError::DeviceError, Function::Decrypt);
        assert_eq!(q.gcm_decrypt_error(&other), Rv::DEVICE_ERROR);
        let key = Error::Pkcs11(RvError::ObjectHandleInvalid, Function::DecryptInit);
        assert_eq!(q.gcm_decrypt_error(&key), Rv::KEY_HANDLE_INVALID);
        let key = Error::Pkcs11(RvError::ObjectHandleInvalid, Function::EncryptInit);
        assert_eq!(q.gcm_encrypt_error(&key), Rv::KEY_HANDLE_INVALID);
    }

    #[test]
    fn vendor_iv_rows() {
        let padded = |m: &str| format!("{m:<32}");
        assert_eq!(
            Quirks::for_library(&padded("SafeNet, Inc.")).gcm_iv,
            VendorIv::CallerOrAppend
        );
        for m in ["Marvell Semiconductors, Inc.", "nCipher Corp. Ltd"] {
            assert_eq!(Quirks::for_library(&padded(m)).gcm_iv, VendorIv::WriteBack);
        }
        for m in ["SoftHSM", "Kryoptic Project", "Acme HSM"] {
            assert_eq!(Quirks::for_library(&padded(m)).gcm_iv, VendorIv::Unlisted);
        }
    }

    #[test]
    fn unknown_vendor_passes_through() {
        let q = Quirks::for_library("Acme HSM");
        let tag = Error::Pkcs11(RvError::GeneralError, Function::Decrypt);
        assert_eq!(q.gcm_decrypt_error(&tag), Rv::GENERAL_ERROR);
        let spec = Error::Pkcs11(RvError::EncryptedDataInvalid, Function::Decrypt);
        assert_eq!(q.gcm_decrypt_error(&spec), Rv::ENCRYPTED_DATA_INVALID);
    }
}
