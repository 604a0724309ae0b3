//! `libxki_pkcs11.so`: a PKCS#11 module that drives real HSM tokens and never lets key bytes
//! leave them.
//!
//! To its caller this is an ordinary PKCS#11 token (one virtual slot per `[[slot]]` of the
//! config). Behind it, each slot sits on one or more backends ([`backend`]): vendor PKCS#11
//! libraries loaded through `cryptoki`, or the embedded software token. The module adds the
//! never-export policy (`policy`), key allow-listing, session pooling, uniform error codes,
//! and an audit trail.
//!
//! Layout: `abi/` is the C boundary and holds no logic; everything else is safe Rust.

pub mod abi;
pub(crate) mod api;
pub(crate) mod audit;
pub mod backend;
pub mod config;
pub mod keystate;
pub mod lineformat;
pub(crate) mod logging;
pub mod mechanism;
pub(crate) mod module;
pub(crate) mod object;
pub mod pin_attempts;
pub(crate) mod policy;
mod process;
pub mod rv;
pub mod secret;
pub(crate) mod session;
pub(crate) mod slot;
pub mod timefmt;
pub(crate) mod types;
