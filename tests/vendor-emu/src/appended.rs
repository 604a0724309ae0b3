//! Appended-IV mode (Luna in FIPS mode): the IV generated at `C_EncryptInit`, kept per
//! session until the operation's output is returned with the IV after it.

use crate::mode::GENERATED_IV_LEN;
use crate::sessions::PerSession;

/// The IV of each session's active appended-IV encryption.
pub static PENDING: PerSession<[u8; GENERATED_IV_LEN]> = PerSession::new();
