//! The only symbols the shared object exports: `C_GetFunctionList` (PKCS#11 2.x discovery) and
//! `C_GetInterfaceList` / `C_GetInterface` (PKCS#11 3.0 discovery). All three work before
//! `C_Initialize` and never touch module state.

use super::args::c_str_is;
use super::buffers::{Out, OutList};
use super::function_list::{interface_version, FUNCTION_LIST_2_40, INTERFACES, INTERFACE_NAME};
use super::guard::guard;
use super::status::STATUS_INTERFACE_NAME;
use crate::rv::{CkResult, Rv};
use pkcs11_sys::{
    CK_FLAGS, CK_FUNCTION_LIST_PTR_PTR, CK_INTERFACE, CK_INTERFACE_PTR, CK_INTERFACE_PTR_PTR,
    CK_RV, CK_ULONG_PTR, CK_UTF8CHAR_PTR, CK_VERSION, CK_VERSION_PTR,
};
use std::ffi::CStr;
use std::ptr;

/// `C_GetFunctionList`: the PKCS#11 2.40 function table.
///
/// # Safety
/// `ppFunctionList` must be NULL (answered with `CKR_ARGUMENTS_BAD`) or valid for writing one
/// pointer. The table handed out is read-only and must not be modified.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    guard("C_GetFunctionList", || {
        // SAFETY: a non-NULL ppFunctionList is writable (contract above).
        let out = unsafe { Out::new(ppFunctionList) }?;
        out.write(ptr::addr_of!(FUNCTION_LIST_2_40).cast_mut());
        Ok(())
    })
}

/// `C_GetInterfaceList`: two interfaces named "PKCS 11", version 3.0 first, then 2.40, then
/// the vendor interface "XKI Status" (version 1.0, `include/xki_pkcs11.h`), under
/// the two-call convention (NULL list: count only; too small: `CKR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `pulCount` must be NULL (`CKR_ARGUMENTS_BAD`) or valid for reading and writing a
/// `CK_ULONG`; a non-NULL `pInterfacesList` must be writable for `*pulCount` `CK_INTERFACE`s.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    pInterfacesList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetInterfaceList", || {
        // SAFETY: two-call contract (above).
        let out = unsafe { OutList::new(pInterfacesList, pulCount) }?;
        out.answer(&INTERFACES.0)
    })
}

/// `C_GetInterface`: the interface with the given name ("PKCS 11" or NULL for the default;
/// "XKI Status" for the vendor status interface), version (NULL for the default, else exactly
/// 3.0 or 2.40 for "PKCS 11"; 1.0 or 1.1 for "XKI Status", whose 1.1 table begins with the
/// 1.0 one), and all of `flags` (ours have none). No match is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// `pInterfaceName` must be NULL or a NUL-terminated string; `pVersion` NULL or a readable
/// `CK_VERSION`; `ppInterface` NULL (`CKR_ARGUMENTS_BAD`) or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        // SAFETY: a non-NULL ppInterface is writable (contract above).
        let out = unsafe { Out::new(ppInterface) }?;
        // SAFETY (both calls): a non-NULL name is NUL-terminated (contract above).
        let is = |want: &CStr| unsafe { c_str_is(pInterfaceName, want.to_bytes()) };
        let name = if pInterfaceName.is_null() || is(INTERFACE_NAME) {
            INTERFACE_NAME
        } else if is(STATUS_INTERFACE_NAME) {
            STATUS_INTERFACE_NAME
        } else {
            return Err(Rv::ARGUMENTS_BAD);
        };
        let version = if pVersion.is_null() {
            None
        } else {
            // SAFETY: non-NULL pVersion is readable (contract above).
            Some(unsafe { pVersion.read_unaligned() })
        };
        let found = select(&INTERFACES.0, name, version, flags)?;
        out.write(ptr::from_ref(found).cast_mut());
        Ok(())
    })
}

/// The first interface named `name` matching `version` (any when `None`) that has every bit
/// of `flags`.
fn select<'a>(
    interfaces: &'a [CK_INTERFACE],
    name: &CStr,
    version: Option<CK_VERSION>,
    flags: CK_FLAGS,
) -> CkResult<&'a CK_INTERFACE> {
    interfaces
        .iter()
        // Names are compared by address: every record points at one of the two name statics.
        .filter(|i| ptr::eq(i.pInterfaceName.cast_const(), name.as_ptr().cast()))
        .find(|i| {
            let v = interface_version(i);
            // The vendor table only grows at its end: an older minor version is served by it.
            let vendor = ptr::eq(name.as_ptr(), STATUS_INTERFACE_NAME.as_ptr());
            let version_ok = version.is_none_or(|want| {
                (want.major, want.minor) == (v.major, v.minor)
                    || (vendor && want.major == v.major && want.minor <= v.minor)
            });
            version_ok && i.flags & flags == flags
        })
        .ok_or(Rv::ARGUMENTS_BAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::function_list::FUNCTION_LIST_3_0;
    use pkcs11_sys::{
        CKF_INTERFACE_FORK_SAFE, CKR_ARGUMENTS_BAD, CKR_BUFFER_TOO_SMALL, CKR_OK, CK_FUNCTION_LIST,
        CK_ULONG,
    };

    fn table_version(i: CK_INTERFACE_PTR) -> (u8, u8) {
        assert!(!i.is_null());
        // SAFETY: non-NULL pointers handed out point into INTERFACES.
        let v = interface_version(unsafe { &*i });
        (v.major, v.minor)
    }

    #[test]
    fn function_list() {
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: valid out-pointer / NULL under test.
        unsafe {
            assert_eq!(C_GetFunctionList(ptr::null_mut()), CKR_ARGUMENTS_BAD);
            assert_eq!(C_GetFunctionList(&mut list), CKR_OK);
            assert_eq!(((*list).version.major, (*list).version.minor), (2, 40));
            assert!((*list).C_GetFunctionList.is_some());
        }
    }

    #[test]
    fn interface_list_two_call() {
        let mut count: CK_ULONG = 0;
        let mut list = [CK_INTERFACE::default(); 4];
        // SAFETY: `count` and `list` are live locals; `list` holds `count` entries.
        unsafe {
            assert_eq!(
                C_GetInterfaceList(ptr::null_mut(), ptr::null_mut()),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(C_GetInterfaceList(ptr::null_mut(), &mut count), CKR_OK);
            assert_eq!(count, 3);
            count = 1;
            assert_eq!(
                C_GetInterfaceList(list.as_mut_ptr(), &mut count),
                CKR_BUFFER_TOO_SMALL
            );
            assert_eq!(count, 3);
            count = 4;
            assert_eq!(C_GetInterfaceList(list.as_mut_ptr(), &mut count), CKR_OK);
            assert_eq!(count, 3);
        }
        assert_eq!(table_version(&mut list[0]), (3, 0));
        assert_eq!(table_version(&mut list[1]), (2, 40));
        assert!(list[0].pFunctionList == ptr::addr_of!(FUNCTION_LIST_3_0).cast_mut().cast());
        // SAFETY: names are static NUL-terminated literals.
        unsafe {
            assert!(c_str_is(list[0].pInterfaceName, b"PKCS 11"));
            assert!(c_str_is(list[1].pInterfaceName, b"PKCS 11"));
            assert!(c_str_is(list[2].pInterfaceName, b"XKI Status"));
        }
        assert_eq!(table_version(&mut list[2]), (1, 1));
        assert_eq!((list[0].flags, list[1].flags), (0, 0));
    }

    #[test]
    fn get_interface_selection() {
        let mut iface: CK_INTERFACE_PTR = ptr::null_mut();
        let mut v3 = CK_VERSION { major: 3, minor: 0 };
        let mut v240 = CK_VERSION {
            major: 2,
            minor: 40,
        };
        let mut v31 = CK_VERSION { major: 3, minor: 1 };
        let name = c"PKCS 11".as_ptr().cast_mut().cast();
        let other = c"Vendor".as_ptr().cast_mut().cast();
        let null = ptr::null_mut();
        // SAFETY: all pointers are live locals or NUL-terminated literals.
        unsafe {
            // the cryptoki crate's path: NULL, NULL, 0 -> the 3.0 table
            assert_eq!(C_GetInterface(null, ptr::null_mut(), &mut iface, 0), CKR_OK);
            assert_eq!(table_version(iface), (3, 0));
            assert_eq!(C_GetInterface(name, ptr::null_mut(), &mut iface, 0), CKR_OK);
            assert_eq!(table_version(iface), (3, 0));
            assert_eq!(C_GetInterface(name, &mut v240, &mut iface, 0), CKR_OK);
            assert_eq!(table_version(iface), (2, 40));
            assert_eq!(C_GetInterface(null, &mut v3, &mut iface, 0), CKR_OK);
            assert_eq!(table_version(iface), (3, 0));
            let status = c"XKI Status".as_ptr().cast_mut().cast();
            assert_eq!(
                C_GetInterface(status, ptr::null_mut(), &mut iface, 0),
                CKR_OK
            );
            assert_eq!(table_version(iface), (1, 1));
            let mut v10 = CK_VERSION { major: 1, minor: 0 };
            assert_eq!(C_GetInterface(status, &mut v10, &mut iface, 0), CKR_OK);
            assert_eq!(table_version(iface), (1, 1));
            let mut v12 = CK_VERSION { major: 1, minor: 2 };
            assert_eq!(
                C_GetInterface(status, &mut v12, &mut iface, 0),
                CKR_ARGUMENTS_BAD
            );
            assert!(
                (*iface).pFunctionList
                    == ptr::addr_of!(crate::abi::status::STATUS_FUNCTION_LIST)
                        .cast_mut()
                        .cast()
            );
            // The vendor interface is never the default, whatever version is asked.
            let mut v1 = CK_VERSION { major: 1, minor: 0 };
            assert_eq!(
                C_GetInterface(null, &mut v1, &mut iface, 0),
                CKR_ARGUMENTS_BAD
            );
            for (n, v, f) in [
                (other, ptr::null_mut(), 0),
                (name, &mut v31 as *mut CK_VERSION, 0),
                (name, ptr::null_mut(), CKF_INTERFACE_FORK_SAFE),
            ] {
                assert_eq!(C_GetInterface(n, v, &mut iface, f), CKR_ARGUMENTS_BAD);
            }
            assert_eq!(
                C_GetInterface(name, ptr::null_mut(), ptr::null_mut(), 0),
                CKR_ARGUMENTS_BAD
            );
        }
    }
}
