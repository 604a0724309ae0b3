/*
 * xki_pkcs11.h - what C callers need to know about libxki_pkcs11.so beyond pkcs11.h.
 *
 * libxki_pkcs11.so is a PKCS#11 module (soname libxki_pkcs11.so.0). It exports exactly three
 * symbols; every other function is reached through a function table:
 *
 *   C_GetFunctionList   -> CK_FUNCTION_LIST, version 2.40
 *   C_GetInterfaceList  -> two CK_INTERFACEs, both named "PKCS 11", flags 0:
 *                            [0] CK_FUNCTION_LIST_3_0, version 3.0  (the default interface)
 *                            [1] CK_FUNCTION_LIST,     version 2.40
 *   C_GetInterface      -> name NULL or "PKCS 11"; version NULL (3.0), {3,0} or {2,40};
 *                          flags must be 0 (the module claims no interface flags).
 *                          Anything else: CKR_ARGUMENTS_BAD.
 *
 * Every slot of both tables is filled. Functions the module does not implement (digest,
 * sign/verify, key pairs, token/PIN administration, slot events, the 3.0 message API,
 * C_LoginUser, C_SessionCancel) return CKR_FUNCTION_NOT_SUPPORTED once initialized;
 * C_GetFunctionStatus/C_CancelFunction return CKR_FUNCTION_NOT_PARALLEL.
 *
 * Key policy: only AES-256 secret keys that are token, sensitive and non-extractable are
 * visible. C_WrapKey, C_DeriveKey, C_DigestKey, C_CopyObject, operation-state export and key
 * import are refused; mechanisms are CKM_AES_GCM (data) and CKM_AES_KEY_GEN.
 *
 * Vendor-defined constants: none yet. The module defines no CKA_/CKR_/CKM_ extensions; it
 * only ever returns standard PKCS#11 values. Should it need some, they will live at
 * CKx_VENDOR_DEFINED | XKI_VENDOR_TAG and be defined here.
 */
#ifndef XKI_PKCS11_H
#define XKI_PKCS11_H

/* Module version (kept equal to the crate version by build.rs). */
#define XKI_PKCS11_VERSION_MAJOR 0
#define XKI_PKCS11_VERSION_MINOR 1

/* The shared object's soname. */
#define XKI_PKCS11_SONAME "libxki_pkcs11.so.0"

/* The interface name accepted by C_GetInterface and reported by C_GetInterfaceList. */
#define XKI_PKCS11_INTERFACE_NAME "PKCS 11"

/* Reserved tag ("XKI\0") for future vendor-defined values: CKA_VENDOR_DEFINED | tag | n. */
#define XKI_VENDOR_TAG 0x584B4900UL

#endif /* XKI_PKCS11_H */
