//! TEMPORARY placeholder until the real backend is merged.
#![allow(unused_variables, missing_docs)]
use super::*;
pub struct Pkcs11Backend;
impl Pkcs11Backend {
    pub fn open(
        name: &str,
        cfg: &crate::config::BackendConfig,
        pin: Option<crate::config::Secret>,
    ) -> Result<Pkcs11Backend, OpenError> {
        Err(OpenError {
            key: "type",
            rv: Rv::GENERAL_ERROR,
            problem: "not merged yet".into(),
        })
    }
}
impl Backend for Pkcs11Backend {
    fn name(&self) -> &str {
        unimplemented!()
    }
    fn describe(&self) -> CkResult<TokenDescription> {
        unimplemented!()
    }
    fn mechanism_info(&self, m: u64) -> CkResult<MechanismInfo> {
        unimplemented!()
    }
    fn list_secret_keys(&self) -> CkResult<Vec<KeyInfo>> {
        unimplemented!()
    }
    fn key_info(&self, key: BackendKey) -> CkResult<KeyInfo> {
        unimplemented!()
    }
    fn generate_aes_key(&self, spec: &NewKey) -> CkResult<KeyInfo> {
        unimplemented!()
    }
    fn set_key_attributes(&self, key: BackendKey, c: &KeyChanges) -> CkResult<()> {
        unimplemented!()
    }
    fn destroy_key(&self, key: BackendKey) -> CkResult<()> {
        unimplemented!()
    }
    fn gcm_encrypt(&self, key: BackendKey, iv: &[u8], aad: &[u8], p: &[u8]) -> CkResult<Vec<u8>> {
        unimplemented!()
    }
    fn gcm_decrypt(
        &self,
        key: BackendKey,
        iv: &[u8],
        aad: &[u8],
        c: &[u8],
    ) -> CkResult<Zeroizing<Vec<u8>>> {
        unimplemented!()
    }
    fn generate_random(&self, out: &mut [u8]) -> CkResult<()> {
        unimplemented!()
    }
    fn shutdown(&self) {}
}
