/*
 * xki_pkcs11.h - what C callers need to know about libxki_pkcs11.so beyond pkcs11.h.
 *
 * libxki_pkcs11.so is a PKCS#11 module (soname libxki_pkcs11.so.0). It exports exactly three
 * symbols; every other function is reached through a function table:
 *
 *   C_GetFunctionList   -> CK_FUNCTION_LIST, version 2.40
 *   C_GetInterfaceList  -> three CK_INTERFACEs, flags 0, the standard ones first:
 *                            [0] "PKCS 11" CK_FUNCTION_LIST_3_0, version 3.0 (the default)
 *                            [1] "PKCS 11" CK_FUNCTION_LIST,     version 2.40
 *                            [2] "XKI Status" XKI_STATUS_FUNCTION_LIST, version 1.0
 *   C_GetInterface      -> name NULL or "PKCS 11"; version NULL (3.0), {3,0} or {2,40};
 *                          or name "XKI Status", version NULL or {1,0};
 *                          flags must be 0 (the module claims no interface flags).
 *                          Anything else: CKR_ARGUMENTS_BAD.
 *
 * Every slot of both tables is filled. Functions the module does not implement (digest,
 * sign/verify, key pairs, token/PIN administration, slot events, the 3.0 message-based
 * sign/verify, C_LoginUser, C_SessionCancel) return CKR_FUNCTION_NOT_SUPPORTED once initialized;
 * C_GetFunctionStatus/C_CancelFunction return CKR_FUNCTION_NOT_PARALLEL.
 *
 * Key policy: only AES-256 secret keys that are token, sensitive and non-extractable are
 * visible. C_WrapKey, C_DeriveKey, C_DigestKey, C_CopyObject, operation-state export and key
 * import are refused; mechanisms are CKM_AES_GCM (data) and CKM_AES_KEY_GEN.
 *
 * AES-GCM encryption IVs. Some HSMs (FIPS-mode AWS CloudHSM, nShield, Luna) generate every
 * encryption IV themselves and refuse a caller's; the module's backends know how each one
 * does it ([backend.NAME] gcm_iv, README "HSM vendors"). For callers:
 *
 * - PKCS#11 3.0 message-based AES-GCM (3.0 table; CK_MECHANISM_INFO of CKM_AES_GCM has
 *   CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT on every slot, whatever HSM is behind it):
 *     C_MessageEncryptInit / C_MessageDecryptInit: CKM_AES_GCM with no parameter or a
 *       CK_GCM_MESSAGE_PARAMS (ignored there). Other mechanism: CKR_MECHANISM_INVALID; a
 *       parameter of another size: CKR_MECHANISM_PARAM_INVALID; an active operation on the
 *       session: CKR_OPERATION_ACTIVE.
 *     C_EncryptMessage / C_DecryptMessage: pParameter is a CK_GCM_MESSAGE_PARAMS with
 *       ulTagBits = 128, pTag (16 bytes) and pIv (ulIvLen 12 or 16) non-NULL. Ciphertext and
 *       plaintext are the same length; the tag travels in pTag (written by an encryption,
 *       read by a decryption). Output follows the two-call rule (NULL: length, nothing
 *       consumed; short: CKR_BUFFER_TOO_SMALL with the length).
 *     ivGenerator (encryption):
 *       CKG_GENERATE_RANDOM, ulIvLen 12, ulIvFixedBits 0: the IV is generated inside the
 *         slot's HSM (its own IV generation, or its C_GenerateRandom) and written to pIv.
 *       CKG_NO_GENERATE: pIv is the caller's IV; CKR_MECHANISM_PARAM_INVALID on a slot whose
 *         HSM generates IVs.
 *       CKG_GENERATE, CKG_GENERATE_COUNTER, CKG_GENERATE_COUNTER_XOR, fixed IV bits:
 *         CKR_MECHANISM_PARAM_INVALID (a counter cannot be kept unique across replicas and
 *         processes; the log says why).
 *     Decryption always takes pIv as the IV, whatever ivGenerator says.
 *     C_EncryptMessageBegin/Next, C_DecryptMessageBegin/Next: the message is buffered (up to
 *       16 MiB) and run at the *MessageNext with CKF_END_OF_MESSAGE; earlier parts output 0
 *       bytes (a NULL output there is a length query and buffers nothing). The last part
 *       outputs the whole message; its pParameter receives the IV and tag (encryption) or
 *       brings the tag (decryption). No plaintext leaves before the tag verified.
 *     A failing message ends that message only; C_MessageEncryptFinal /
 *       C_MessageDecryptFinal end the process. Every message is an audit record.
 * - Classic C_EncryptInit(CKM_AES_GCM, CK_GCM_PARAMS): on a slot whose HSM takes caller IVs
 *   the caller's IV is used as given (an all-zero IV too). On a slot whose HSM generates IVs
 *   a caller IV is CKR_MECHANISM_PARAM_INVALID (logged, pointing at the message API), except
 *   the zero-IV convention (as AWS CloudHSM's library): pIv = 12 zero bytes, ulIvLen = 12
 *   means "generate": the IV the HSM used is written into that pIv when C_Encrypt /
 *   C_EncryptFinal has run, so the pIv buffer must stay valid until then. Decryption always
 *   takes the caller's IV.
 *
 * Vendor-defined constants live at CKx_VENDOR_DEFINED | XKI_VENDOR_TAG and are defined here:
 * the key-state attributes CKA_XKI_* (below). Return values are standard PKCS#11 only.
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

/*
 * The "XKI Status" vendor interface: health of the tokens ("members") behind each slot.
 * A slot over one backend has one member (a vendor token is UNAVAILABLE while the module has
 * taken it out of service because it stopped answering, else ACTIVE); a replica group slot
 * ([[slot]] backends = ["hsm-a", "hsm-b", ...]) has one member per backend, in config order.
 * Both functions need C_Initialize first (else CKR_CRYPTOKI_NOT_INITIALIZED); a NULL out
 * pointer or an index past the last member is CKR_ARGUMENTS_BAD; an unknown slot is
 * CKR_SLOT_ID_INVALID. Requires pkcs11.h (CK_RV, CK_ULONG, CK_SLOT_ID, CK_VERSION) first.
 *
 *   CK_INTERFACE *i;
 *   C_GetInterface((CK_UTF8CHAR *)XKI_STATUS_INTERFACE_NAME, NULL, &i, 0);
 *   XKI_STATUS_FUNCTION_LIST *st = i->pFunctionList;
 *   st->XKI_GetMemberCount(slot, &n); st->XKI_GetMemberStatus(slot, 0, &status);
 *
 * Version 1.1 adds, after those two (a request for version 1.0 gets the 1.1 table, whose
 * beginning is the 1.0 table; check version.minor >= 1 before using them):
 *   XKI_GetAuditStatus: the audit trail's state and counters (process-wide; works before
 *     C_Initialize too). NULL pStatus is CKR_ARGUMENTS_BAD.
 *   XKI_ReopenLogs: open log_file and audit_file again by their paths (log rotation, e.g.
 *     after logrotate moved them; the proxy calls it on SIGHUP). Always CKR_OK; a file that
 *     cannot be opened keeps being written where it was (logged).
 */
#define XKI_STATUS_INTERFACE_NAME "XKI Status"

/* XKI_MEMBER_STATUS.state */
#define XKI_MEMBER_ACTIVE      0UL /* in service, nothing wrong known */
#define XKI_MEMBER_DEGRADED    1UL /* in service, but key mismatches or calls stuck in it */
#define XKI_MEMBER_UNAVAILABLE 2UL /* out of service until the probe finds it working */

#ifdef CKR_OK
typedef struct XKI_MEMBER_STATUS {
    CK_UTF8CHAR name[64];           /* backend name, blank padded, not NUL-terminated */
    CK_ULONG    state;              /* XKI_MEMBER_* */
    CK_ULONG    inFlight;           /* calls running on the member now */
    CK_ULONG    stuckCalls;         /* abandoned (timed-out) calls still inside its library */
    CK_ULONG    keyMismatches;      /* group keys it is missing or holds more than once */
    CK_ULONG    failures;           /* times it was taken out of service */
    CK_RV       lastError;          /* last failure, CKR_OK if none (a timeout: CKR_DEVICE_ERROR) */
    CK_UTF8CHAR lastErrorText[128]; /* last failure or mismatch, blank padded, no NUL */
} XKI_MEMBER_STATUS;

/* XKI_AUDIT_STATUS.flags */
#define XKI_AUDIT_FILE      0x1UL /* an audit_file is configured */
#define XKI_AUDIT_FAILING   0x2UL /* its last write failed; none has succeeded since */
#define XKI_AUDIT_FAIL_OPEN 0x4UL /* audit_on_failure = "continue" (else "refuse") */

typedef struct XKI_AUDIT_STATUS {
    CK_ULONG flags;             /* XKI_AUDIT_* */
    CK_ULONG lostRecords;       /* records dropped because they could not be written */
    CK_ULONG refusedOperations; /* key operations refused (CKR_DEVICE_ERROR): audit failing */
    CK_ULONG writeErrors;       /* failed writes of the audit file */
    CK_ULONG retainedRecords;   /* records kept in memory, written when space returns */
} XKI_AUDIT_STATUS;

typedef struct XKI_STATUS_FUNCTION_LIST {
    CK_VERSION version; /* {1, 1} */
    CK_RV (*XKI_GetMemberCount)(CK_SLOT_ID slotID, CK_ULONG *pulCount);
    CK_RV (*XKI_GetMemberStatus)(CK_SLOT_ID slotID, CK_ULONG ulIndex, XKI_MEMBER_STATUS *pStatus);
    /* version 1.1 */
    CK_RV (*XKI_GetAuditStatus)(XKI_AUDIT_STATUS *pStatus);
    CK_RV (*XKI_ReopenLogs)(void);
} XKI_STATUS_FUNCTION_LIST;
#endif /* CKR_OK */

/* Reserved tag ("XKI\0") for future vendor-defined values: CKA_VENDOR_DEFINED | tag | n. */
#define XKI_VENDOR_TAG 0x584B4900UL

/*
 * Key state, apart from key usage, kept by the module in the HSM beside each key (a private
 * CKO_DATA object on vendor tokens, part of the key's record on the embedded token; callers
 * never see that object, only these attributes of the KEY):
 *
 * CKA_XKI_KEY_STATUS    CK_ULONG  XKI_KEY_ENABLED / XKI_KEY_DISABLED; read-only value
 *                                 XKI_KEY_STATE_DAMAGED when the stored state is unreadable
 *                                 (treat as DISABLED; re-enable with an explicit usage).
 * CKA_XKI_KEY_USAGE     CK_FLAGS  CKF_ENCRYPT | CKF_DECRYPT: what the key may do when ENABLED,
 *                                 whatever its status (the HSM flags CKA_ENCRYPT/CKA_DECRYPT
 *                                 are both false while it is DISABLED).
 * CKA_XKI_DELETION_DATE CK_DATE   scheduled deletion, empty for none; setting one disables.
 *
 * C_GetAttributeValue reads them (a key without stored state is ENABLED with its flags).
 * C_SetAttributeValue with only these attributes changes the state; mixing them with other
 * attributes is CKR_TEMPLATE_INCONSISTENT. Enabling restores the saved usage (or the one
 * given); enabling a key pending deletion is CKR_ACTION_PROHIBITED (cancel with an empty
 * date first); setting CKA_ENCRYPT/CKA_DECRYPT true on a DISABLED key is CKR_ACTION_PROHIBITED.
 */
#define CKA_XKI_KEY_STATUS    (0x80000000UL | XKI_VENDOR_TAG | 0x01UL)
#define CKA_XKI_KEY_USAGE     (0x80000000UL | XKI_VENDOR_TAG | 0x02UL)
#define CKA_XKI_DELETION_DATE (0x80000000UL | XKI_VENDOR_TAG | 0x03UL)
#define XKI_KEY_ENABLED       1UL
#define XKI_KEY_DISABLED      2UL
#define XKI_KEY_STATE_DAMAGED 3UL

#endif /* XKI_PKCS11_H */
