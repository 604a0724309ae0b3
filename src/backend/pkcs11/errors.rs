//! cryptoki errors -> [`Rv`] carrying the raw `CK_RV` the library returned.
//!
//! cryptoki 0.12 decodes every `CK_RV` into an `RvError` enum but has no way back, so the
//! table below restores the code. It was generated from cryptoki's own `From<CK_RV>` table;
//! the match is exhaustive, so a cryptoki upgrade that adds a variant fails to compile here.

use crate::rv::Rv;
use cryptoki::error::{Error, RvError};
use pkcs11_sys::*;

/// Map any cryptoki error to the closest PKCS#11 return value.
pub(crate) fn rv_of(err: &Error) -> Rv {
    match err {
        Error::Pkcs11(rv, _) => Rv(code_of(*rv)),
        // A length that does not fit a CK_ULONG: the caller's arguments are at fault.
        Error::TryFromInt(_) | Error::TryFromSlice(_) => Rv::ARGUMENTS_BAD,
        Error::NullFunctionPointer | Error::MissingSymbol(_) | Error::NotSupported => {
            Rv::FUNCTION_NOT_SUPPORTED
        }
        // Conversion of what the library returned failed: the library misbehaved.
        _ => Rv::GENERAL_ERROR,
    }
}

/// The `CK_RV` behind a cryptoki `RvError`.
pub(crate) fn code_of(rv: RvError) -> CK_RV {
    match rv {
        RvError::Cancel => CKR_CANCEL,
        RvError::HostMemory => CKR_HOST_MEMORY,
        RvError::SlotIdInvalid => CKR_SLOT_ID_INVALID,
        RvError::GeneralError => CKR_GENERAL_ERROR,
        RvError::FunctionFailed => CKR_FUNCTION_FAILED,
        RvError::ArgumentsBad => CKR_ARGUMENTS_BAD,
        RvError::NoEvent => CKR_NO_EVENT,
        RvError::NeedToCreateThreads => CKR_NEED_TO_CREATE_THREADS,
        RvError::CantLock => CKR_CANT_LOCK,
        RvError::AttributeReadOnly => CKR_ATTRIBUTE_READ_ONLY,
        RvError::AttributeSensitive => CKR_ATTRIBUTE_SENSITIVE,
        RvError::AttributeTypeInvalid => CKR_ATTRIBUTE_TYPE_INVALID,
        RvError::AttributeValueInvalid => CKR_ATTRIBUTE_VALUE_INVALID,
        RvError::ActionProhibited => CKR_ACTION_PROHIBITED,
        RvError::DataInvalid => CKR_DATA_INVALID,
        RvError::DataLenRange => CKR_DATA_LEN_RANGE,
        RvError::DeviceError => CKR_DEVICE_ERROR,
        RvError::DeviceMemory => CKR_DEVICE_MEMORY,
        RvError::DeviceRemoved => CKR_DEVICE_REMOVED,
        RvError::EncryptedDataInvalid => CKR_ENCRYPTED_DATA_INVALID,
        RvError::EncryptedDataLenRange => CKR_ENCRYPTED_DATA_LEN_RANGE,
        RvError::FunctionCanceled => CKR_FUNCTION_CANCELED,
        RvError::FunctionNotParallel => CKR_FUNCTION_NOT_PARALLEL,
        RvError::FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
        RvError::CurveNotSupported => CKR_CURVE_NOT_SUPPORTED,
        RvError::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
        RvError::KeySizeRange => CKR_KEY_SIZE_RANGE,
        RvError::KeyTypeInconsistent => CKR_KEY_TYPE_INCONSISTENT,
        RvError::KeyNotNeeded => CKR_KEY_NOT_NEEDED,
        RvError::KeyChanged => CKR_KEY_CHANGED,
        RvError::KeyNeeded => CKR_KEY_NEEDED,
        RvError::KeyIndigestible => CKR_KEY_INDIGESTIBLE,
        RvError::KeyFunctionNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
        RvError::KeyNotWrappable => CKR_KEY_NOT_WRAPPABLE,
        RvError::KeyUnextractable => CKR_KEY_UNEXTRACTABLE,
        RvError::MechanismInvalid => CKR_MECHANISM_INVALID,
        RvError::MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
        RvError::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
        RvError::OperationActive => CKR_OPERATION_ACTIVE,
        RvError::OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
        RvError::PinIncorrect => CKR_PIN_INCORRECT,
        RvError::PinInvalid => CKR_PIN_INVALID,
        RvError::PinLenRange => CKR_PIN_LEN_RANGE,
        RvError::PinExpired => CKR_PIN_EXPIRED,
        RvError::PinLocked => CKR_PIN_LOCKED,
        RvError::SessionClosed => CKR_SESSION_CLOSED,
        RvError::SessionCount => CKR_SESSION_COUNT,
        RvError::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
        RvError::SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
        RvError::SessionReadOnly => CKR_SESSION_READ_ONLY,
        RvError::SessionExists => CKR_SESSION_EXISTS,
        RvError::SessionReadOnlyExists => CKR_SESSION_READ_ONLY_EXISTS,
        RvError::SessionReadWriteSoExists => CKR_SESSION_READ_WRITE_SO_EXISTS,
        RvError::SignatureInvalid => CKR_SIGNATURE_INVALID,
        RvError::SignatureLenRange => CKR_SIGNATURE_LEN_RANGE,
        RvError::TemplateIncomplete => CKR_TEMPLATE_INCOMPLETE,
        RvError::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
        RvError::TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
        RvError::TokenNotRecognized => CKR_TOKEN_NOT_RECOGNIZED,
        RvError::TokenWriteProtected => CKR_TOKEN_WRITE_PROTECTED,
        RvError::UnwrappingKeyHandleInvalid => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        RvError::UnwrappingKeySizeRange => CKR_UNWRAPPING_KEY_SIZE_RANGE,
        RvError::UserAlreadyLoggedIn => CKR_USER_ALREADY_LOGGED_IN,
        RvError::UserNotLoggedIn => CKR_USER_NOT_LOGGED_IN,
        RvError::UserPinNotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
        RvError::UserTypeInvalid => CKR_USER_TYPE_INVALID,
        RvError::UserAnotherAlreadyLoggedIn => CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        RvError::UserTooManyTypes => CKR_USER_TOO_MANY_TYPES,
        RvError::WrappedKeyInvalid => CKR_WRAPPED_KEY_INVALID,
        RvError::WrappedKeyLenRange => CKR_WRAPPED_KEY_LEN_RANGE,
        RvError::WrappingKeyHandleInvalid => CKR_WRAPPING_KEY_HANDLE_INVALID,
        RvError::WrappingKeySizeRange => CKR_WRAPPING_KEY_SIZE_RANGE,
        RvError::WrappingKeyTypeInconsistent => CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        RvError::RandomSeedNotSupported => CKR_RANDOM_SEED_NOT_SUPPORTED,
        RvError::RandomNoRng => CKR_RANDOM_NO_RNG,
        RvError::DomainParamsInvalid => CKR_DOMAIN_PARAMS_INVALID,
        RvError::BufferTooSmall => CKR_BUFFER_TOO_SMALL,
        RvError::SavedStateInvalid => CKR_SAVED_STATE_INVALID,
        RvError::InformationSensitive => CKR_INFORMATION_SENSITIVE,
        RvError::StateUnsaveable => CKR_STATE_UNSAVEABLE,
        RvError::CryptokiNotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
        RvError::CryptokiAlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
        RvError::MutexBad => CKR_MUTEX_BAD,
        RvError::MutexNotLocked => CKR_MUTEX_NOT_LOCKED,
        RvError::NewPinMode => CKR_NEW_PIN_MODE,
        RvError::NextOtp => CKR_NEXT_OTP,
        RvError::ExceededMaxIterations => CKR_EXCEEDED_MAX_ITERATIONS,
        RvError::FipsSelfTestFailed => CKR_FIPS_SELF_TEST_FAILED,
        RvError::LibraryLoadFailed => CKR_LIBRARY_LOAD_FAILED,
        RvError::PinTooWeak => CKR_PIN_TOO_WEAK,
        RvError::PublicKeyInvalid => CKR_PUBLIC_KEY_INVALID,
        RvError::FunctionRejected => CKR_FUNCTION_REJECTED,
        RvError::UnwrappingKeyTypeInconsistent => CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        RvError::VendorDefined(code) | RvError::UnknownErrorCode(code) => code,
    }
}
