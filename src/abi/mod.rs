//! The C boundary of `libxki_pkcs11.so`. It converts and checks, and holds no logic:
//! arguments are copied or borrowed out of C memory (`args`), the safe [`crate::api`] is
//! called, and results are written back under the PKCS#11 buffer conventions (`buffers`).
//! Every entry point runs inside `guard::guard`, so no panic crosses into C.
//!
//! Only `C_GetFunctionList`, `C_GetInterfaceList` and `C_GetInterface` are exported
//! ([`exports`]); every other function is reached through the tables in `function_list`.
//!
//! Argument checks that the boundary can make alone (NULL pointers, impossible lengths) come
//! before the core is asked, so they answer `CKR_ARGUMENTS_BAD` even before `C_Initialize`;
//! everything else (including `CKR_CRYPTOKI_NOT_INITIALIZED`) is the core's answer.

// Entry points keep their PKCS#11 names and parameter names, so the code reads like the spec.
#![allow(non_snake_case)]
// Every unsafe operation gets its own block with a SAFETY comment, even inside `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]

pub(crate) mod args;
pub(crate) mod attribute_answers;
pub(crate) mod buffers;
pub(crate) mod crypto;
pub mod exports;
pub(crate) mod function_list;
pub(crate) mod general;
pub(crate) mod guard;
pub(crate) mod info;
pub(crate) mod message;
pub(crate) mod object;
pub(crate) mod refused;
pub(crate) mod session;
pub(crate) mod slot_token;
pub mod status;
pub(crate) mod unsupported;

#[cfg(test)]
mod boundary_tests;

/// The api speaks `u64` where C speaks `CK_ULONG`; this module is built for LP64 targets where
/// they are the same type. (Fails to compile, on purpose, where they differ.)
const _: fn(pkcs11_sys::CK_ULONG) -> u64 = |x| x;

/// The crate version, embedded in the shared object so `strings libxki_pkcs11.so` shows it.
#[used]
static VERSION_STAMP: &str = concat!("@(#)xki_pkcs11 ", env!("CARGO_PKG_VERSION"));
