//! TEMPORARY stubs (replaced by the real core in this same session).
#![allow(unused_variables)]
use crate::api::*;
use crate::mechanism::Mechanism;
use crate::rv::CkResult;
pub fn initialize(args: Option<InitArgs>) -> CkResult<()> {
    todo!()
}
pub fn finalize() -> CkResult<()> {
    todo!()
}
pub fn get_info() -> CkResult<ModuleInfo> {
    todo!()
}
pub fn get_slot_list(token_present: bool) -> CkResult<Vec<u64>> {
    todo!()
}
pub fn get_slot_info(slot: u64) -> CkResult<SlotInfo> {
    todo!()
}
pub fn get_token_info(slot: u64) -> CkResult<TokenInfo> {
    todo!()
}
pub fn get_mechanism_list(slot: u64) -> CkResult<Vec<u64>> {
    todo!()
}
pub fn get_mechanism_info(slot: u64, mechanism: u64) -> CkResult<crate::backend::MechanismInfo> {
    todo!()
}
pub fn open_session(slot: u64, flags: u64) -> CkResult<u64> {
    todo!()
}
pub fn close_session(session: u64) -> CkResult<()> {
    todo!()
}
pub fn close_all_sessions(slot: u64) -> CkResult<()> {
    todo!()
}
pub fn get_session_info(session: u64) -> CkResult<SessionInfo> {
    todo!()
}
pub fn login(session: u64, user_type: u64, pin: &[u8]) -> CkResult<()> {
    todo!()
}
pub fn logout(session: u64) -> CkResult<()> {
    todo!()
}
pub fn create_object(session: u64, template: &[Attribute]) -> CkResult<u64> {
    todo!()
}
pub fn copy_object(session: u64, object: u64, template: &[Attribute]) -> CkResult<u64> {
    todo!()
}
pub fn destroy_object(session: u64, object: u64) -> CkResult<()> {
    todo!()
}
pub fn get_object_size(session: u64, object: u64) -> CkResult<u64> {
    todo!()
}
pub fn get_attribute_value(
    session: u64,
    object: u64,
    types: &[u64],
) -> CkResult<Vec<AttributeAnswer>> {
    todo!()
}
pub fn set_attribute_value(session: u64, object: u64, template: &[Attribute]) -> CkResult<()> {
    todo!()
}
pub fn find_objects_init(session: u64, template: &[Attribute]) -> CkResult<()> {
    todo!()
}
pub fn find_objects(session: u64, max: usize) -> CkResult<Vec<u64>> {
    todo!()
}
pub fn find_objects_final(session: u64) -> CkResult<()> {
    todo!()
}
pub fn encrypt_init(session: u64, mechanism: &Mechanism, key: u64) -> CkResult<()> {
    todo!()
}
pub fn encrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    todo!()
}
pub fn encrypt(session: u64, data: &[u8]) -> CkResult<Vec<u8>> {
    todo!()
}
pub fn encrypt_update(session: u64, part: &[u8]) -> CkResult<Vec<u8>> {
    todo!()
}
pub fn encrypt_update_len(session: u64, part_len: usize) -> CkResult<usize> {
    todo!()
}
pub fn encrypt_final_len(session: u64) -> CkResult<usize> {
    todo!()
}
pub fn encrypt_final(session: u64) -> CkResult<Vec<u8>> {
    todo!()
}
pub fn decrypt_init(session: u64, mechanism: &Mechanism, key: u64) -> CkResult<()> {
    todo!()
}
pub fn decrypt_len(session: u64, data_len: usize) -> CkResult<usize> {
    todo!()
}
pub fn decrypt(session: u64, data: &[u8]) -> CkResult<Plaintext> {
    todo!()
}
pub fn decrypt_update(session: u64, part: &[u8]) -> CkResult<Plaintext> {
    todo!()
}
pub fn decrypt_update_len(session: u64, part_len: usize) -> CkResult<usize> {
    todo!()
}
pub fn decrypt_final_len(session: u64) -> CkResult<usize> {
    todo!()
}
pub fn decrypt_final(session: u64) -> CkResult<Plaintext> {
    todo!()
}
pub fn generate_key(session: u64, mechanism: &Mechanism, template: &[Attribute]) -> CkResult<u64> {
    todo!()
}
pub fn generate_random(session: u64, len: usize) -> CkResult<Vec<u8>> {
    todo!()
}
pub fn seed_random(session: u64, seed: &[u8]) -> CkResult<()> {
    todo!()
}
pub fn wrap_key(session: u64, mechanism: &Mechanism, wrapping_key: u64, key: u64) -> CkResult<()> {
    todo!()
}
pub fn unwrap_key(
    session: u64,
    mechanism: &Mechanism,
    unwrapping_key: u64,
    template: &[Attribute],
) -> CkResult<()> {
    todo!()
}
pub fn derive_key(
    session: u64,
    mechanism: &Mechanism,
    base_key: u64,
    template: &[Attribute],
) -> CkResult<()> {
    todo!()
}
pub fn digest_key(session: u64, key: u64) -> CkResult<()> {
    todo!()
}
pub fn get_operation_state(session: u64) -> CkResult<()> {
    todo!()
}
pub fn set_operation_state(session: u64) -> CkResult<()> {
    todo!()
}
pub fn not_supported(function: &'static str) -> CkResult<()> {
    todo!()
}
