//! The one home of the integration tests' shared helpers. A test file declares `mod support;`
//! and uses what it needs; every test binary compiles all of them (a few hundred lines), so
//! none carries a `#[path]` of its own.
//!
//! - [`module_fixture`]: the BUILT `libxki_pkcs11.so` over two slots (a token of the run's
//!   backend kind and the embedded token), for the `module_*` suites; `module_fixture::raw`
//!   calls its function table directly.
//! - [`itest_backend`]: which token kind slot 0 runs on (`XKI_ITEST_BACKEND`).
//! - [`built_module`]: where the built `.so` is.
//! - [`softhsm_tokens`]: throwaway SoftHSM2 tokens and backend configs for the
//!   `backend_pkcs11*` tests.
//! - [`at_exit`]: temp directories of fixtures kept in statics, removed at process exit.
//! - [`group_store`]: embedded stores holding the same key material, for replica groups.
//! - [`replica_fixture`]: replica-group members behind the fault injector (only with the
//!   `fault-injection` feature).

#![allow(dead_code, unused_imports)]

pub mod at_exit;
pub mod built_module;
pub mod group_store;
pub mod itest_backend;
pub mod module_fixture;
#[cfg(feature = "fault-injection")]
pub mod replica_fixture;
pub mod softhsm_tokens;
