//! The built module's raw PKCS#11 3.0 function table, for calls the cryptoki crate cannot
//! make (NULL pointers, short buffers, garbage parameters, pre-filled output structs).
//!
//! The .so is `dlopen`ed by path; when cryptoki already loaded it, the dynamic linker hands
//! back the same copy, so handles from cryptoki sessions are valid here too.

use once_cell::sync::Lazy;
use pkcs11_sys::*;
use std::path::Path;
use std::ptr;

/// A loaded copy of a PKCS#11 library and its 3.0 table.
pub struct Table {
    _lib: libloading::Library,
    list: *const CK_FUNCTION_LIST_3_0,
}

// SAFETY: the function table is static data in the loaded library, immutable and valid for as
// long as `_lib` stays loaded (the whole process, for the statics below).
unsafe impl Sync for Table {}
// SAFETY: as above.
unsafe impl Send for Table {}

impl Table {
    /// `dlopen` a PKCS#11 library and fetch its default interface through its own
    /// `C_GetInterface` (the PKCS#11 3.0 discovery path).
    pub fn load(path: &Path) -> Table {
        // SAFETY: loading the library runs its initialisers; the module under test and
        // SoftHSM2 are ordinary shared objects with no unusual init-time behaviour.
        let lib = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
        // SAFETY: C_GetInterface has this signature in PKCS#11 3.0.
        let get_interface: libloading::Symbol<
            unsafe extern "C" fn(
                CK_UTF8CHAR_PTR,
                CK_VERSION_PTR,
                *mut CK_INTERFACE_PTR,
                CK_FLAGS,
            ) -> CK_RV,
        > = unsafe { lib.get(b"C_GetInterface\0") }
            .unwrap_or_else(|e| panic!("{} has no C_GetInterface: {e}", path.display()));
        let mut iface: CK_INTERFACE_PTR = ptr::null_mut();
        // SAFETY: NULL name/version select the default interface; `iface` is a live out-ptr.
        let rv = unsafe { get_interface(ptr::null_mut(), ptr::null_mut(), &mut iface, 0) };
        assert_eq!(rv, CKR_OK, "C_GetInterface");
        assert!(!iface.is_null(), "C_GetInterface returned NULL");
        // SAFETY: C_GetInterface returned CKR_OK and a non-NULL interface pointer.
        let list = unsafe { (*iface).pFunctionList }.cast::<CK_FUNCTION_LIST_3_0>();
        assert!(!list.is_null(), "NULL function list");
        Table {
            _lib: lib,
            list: list.cast_const(),
        }
    }

    /// The function table.
    pub fn f(&self) -> &CK_FUNCTION_LIST_3_0 {
        // SAFETY: see the Sync impl: static, immutable, alive while `self` is.
        unsafe { &*self.list }
    }
}

static MODULE: Lazy<Table> = Lazy::new(|| Table::load(&super::so_path()));

/// The built module's function table (3.0).
pub fn table() -> &'static CK_FUNCTION_LIST_3_0 {
    MODULE.f()
}

/// A `CK_ULONG` attribute pointing at `v`.
pub fn ulong_attr(kind: CK_ATTRIBUTE_TYPE, v: &mut CK_ULONG) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: (v as *mut CK_ULONG).cast(),
        ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
    }
}

/// A `CK_BBOOL` attribute pointing at `v`.
pub fn bool_attr(kind: CK_ATTRIBUTE_TYPE, v: &mut CK_BBOOL) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: (v as *mut CK_BBOOL).cast(),
        ulValueLen: 1,
    }
}

/// A byte-string attribute pointing at `v`.
pub fn bytes_attr(kind: CK_ATTRIBUTE_TYPE, v: &mut [u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: v.as_mut_ptr().cast(),
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// `CK_GCM_PARAMS` over the given buffers (they must outlive every use of the result).
pub fn gcm_params(iv: &mut [u8], aad: &mut [u8], tag_bits: CK_ULONG) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: (iv.len() * 8) as CK_ULONG,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: tag_bits,
    }
}

/// A `CK_MECHANISM` for GCM pointing at `params`.
pub fn gcm_mechanism(params: &mut CK_GCM_PARAMS) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (params as *mut CK_GCM_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    }
}
