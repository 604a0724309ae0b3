//! The api's info structs as their C layouts (`CK_INFO`, `CK_SLOT_INFO`, ...): strings
//! blank-padded, versions split into bytes.

use super::buffers::padded;
use crate::api::{ModuleInfo, SessionInfo, SlotInfo, TokenInfo};
use crate::backend::MechanismInfo;
use pkcs11_sys::{
    CK_INFO, CK_MECHANISM_INFO, CK_SESSION_INFO, CK_SLOT_INFO, CK_TOKEN_INFO, CK_VERSION,
};

fn version((major, minor): (u8, u8)) -> CK_VERSION {
    CK_VERSION { major, minor }
}

/// `CK_INFO` (`flags` is reserved and zero).
pub(crate) fn ck_info(i: &ModuleInfo) -> CK_INFO {
    CK_INFO {
        cryptokiVersion: version(i.cryptoki_version),
        manufacturerID: padded(&i.manufacturer),
        flags: 0,
        libraryDescription: padded(&i.description),
        libraryVersion: version(i.library_version),
    }
}

/// `CK_SLOT_INFO`.
pub(crate) fn ck_slot_info(i: &SlotInfo) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: padded(&i.description),
        manufacturerID: padded(&i.manufacturer),
        flags: i.flags,
        hardwareVersion: version(i.hardware_version),
        firmwareVersion: version(i.firmware_version),
    }
}

/// `CK_TOKEN_INFO` (an empty `utc_time` becomes blanks).
pub(crate) fn ck_token_info(i: &TokenInfo) -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: padded(&i.label),
        manufacturerID: padded(&i.manufacturer),
        model: padded(&i.model),
        serialNumber: padded(&i.serial),
        flags: i.flags,
        ulMaxSessionCount: i.max_session_count,
        ulSessionCount: i.session_count,
        ulMaxRwSessionCount: i.max_rw_session_count,
        ulRwSessionCount: i.rw_session_count,
        ulMaxPinLen: i.max_pin_len,
        ulMinPinLen: i.min_pin_len,
        ulTotalPublicMemory: i.total_public_memory,
        ulFreePublicMemory: i.free_public_memory,
        ulTotalPrivateMemory: i.total_private_memory,
        ulFreePrivateMemory: i.free_private_memory,
        hardwareVersion: version(i.hardware_version),
        firmwareVersion: version(i.firmware_version),
        utcTime: padded(&i.utc_time),
    }
}

/// `CK_SESSION_INFO`.
pub(crate) fn ck_session_info(i: &SessionInfo) -> CK_SESSION_INFO {
    CK_SESSION_INFO {
        slotID: i.slot_id,
        state: i.state,
        flags: i.flags,
        ulDeviceError: i.device_error,
    }
}

/// `CK_MECHANISM_INFO`.
pub(crate) fn ck_mechanism_info(i: &MechanismInfo) -> CK_MECHANISM_INFO {
    CK_MECHANISM_INFO {
        ulMinKeySize: i.min_key_size,
        ulMaxKeySize: i.max_key_size,
        flags: i.flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_info_is_padded() {
        let info = ck_info(&ModuleInfo {
            cryptoki_version: (3, 0),
            manufacturer: "xki-bridge".into(),
            description: "a description that is much longer than thirty-two bytes".into(),
            library_version: (0, 1),
        });
        assert_eq!(info.cryptokiVersion.major, 3);
        assert_eq!(&info.manufacturerID[..12], b"xki-bridge  ");
        assert_eq!(info.manufacturerID[31], b' ');
        assert_eq!(
            &info.libraryDescription,
            b"a description that is much longe"
        );
        assert_eq!(info.libraryVersion.minor, 1);
        assert_eq!(info.flags, 0);
    }

    #[test]
    fn token_info_strings_and_counts() {
        let t = ck_token_info(&TokenInfo {
            label: "hyök".into(),
            manufacturer: "m".into(),
            model: "model-name-too-long-for-16".into(),
            serial: "0001".into(),
            flags: 0x40d,
            max_session_count: 0,
            session_count: pkcs11_sys::CK_UNAVAILABLE_INFORMATION,
            max_rw_session_count: 0,
            rw_session_count: 1,
            max_pin_len: 255,
            min_pin_len: 4,
            total_public_memory: 1,
            free_public_memory: 2,
            total_private_memory: 3,
            free_private_memory: 4,
            hardware_version: (1, 2),
            firmware_version: (3, 4),
            utc_time: String::new(),
        });
        assert_eq!(&t.label[..6], "hyök ".as_bytes());
        assert_eq!(&t.model, b"model-name-too-l");
        assert_eq!(&t.serialNumber, b"0001            ");
        assert_eq!(&t.utcTime, b"                ");
        assert_eq!(t.ulSessionCount, pkcs11_sys::CK_UNAVAILABLE_INFORMATION);
        assert_eq!(t.ulMinPinLen, 4);
        assert_eq!((t.firmwareVersion.major, t.firmwareVersion.minor), (3, 4));
    }
}
