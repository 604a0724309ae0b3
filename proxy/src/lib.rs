//! xki-proxy: the XKS Proxy API v1 server a cloud KMS calls for external-key operations,
//! backed by any PKCS#11 module (ours, `libxki_pkcs11.so`, by default).

pub mod admin;
pub mod api;
pub mod check;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod discover;
pub mod fdlimit;
pub mod health;
pub mod hsm;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod module_path;
pub mod ops;
pub mod server;
pub mod state;
pub mod tenants;
pub mod test_pki;
pub mod tuning;
