//! xki-proxy: the XKS Proxy API v1 server a cloud KMS calls for external-key operations,
//! backed by any PKCS#11 module (ours, `libxki_pkcs11.so`, by default).

pub mod config;
pub mod hsm;
