//! The other order of shared ownership: the module initialises SoftHSM2 first, the host loads
//! and initialises it afterwards in the same process. The host's `C_Initialize` answers
//! `CKR_CRYPTOKI_ALREADY_INITIALIZED` (the module owns the initialisation) and both work side
//! by side. If the host then calls `C_Finalize` on the vendor library, it ends the module's
//! backend sessions under it: the module's calls on that slot fail with a clear error instead
//! of misbehaving, and a module `C_Finalize` + `C_Initialize` recovers. One test: it
//! finalizes libraries of the process.

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use support::module_fixture::*;

#[test]
fn host_initialising_the_vendor_library_after_the_module_shares_it() {
    let (_dir, ctx) = bare_module();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(PIN))).unwrap();
    let key = s
        .generate_key(&Mechanism::AesKeyGen, &secure_template("second-host"))
        .unwrap();
    round_trips(&s, EncryptIv::of_slot(0), key, 1, b"before");

    // The host loads SoftHSM2 after the module (kryoptic on kryoptic; the emulated vendors sit
    // on SoftHSM2): the module owns the initialisation.
    let host = Pkcs11::new(reference_library()).unwrap();
    match host.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        other => panic!("host C_Initialize after the module: {other:?}"),
    }
    let host_slot = host
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|x| host.get_token_info(*x).unwrap().label().trim_end() == SOFTHSM_TOKEN)
        .unwrap();
    let hs = host.open_rw_session(host_slot).unwrap();
    let mut r = [0u8; 8];
    hs.generate_random_slice(&mut r).expect("the host works");
    round_trips(&s, EncryptIv::of_slot(0), key, 1, b"side by side");
    drop(hs);

    // The host finalizes the library it did not initialise: the module's backend sessions
    // are gone with it.
    host.finalize().expect("SoftHSM2 lets the host finalize");
    // The token stops answering for the module: that slot is out of service (a device error,
    // as for any token that goes away), never an answer about the key. (A generating HSM gets
    // the zero-IV convention: a caller IV would be refused before the token is asked.)
    expect_rv(
        encrypt_gcm(&s, EncryptIv::of_slot(0), key, 3, b"", b"after"),
        RvError::DeviceError,
    );
    // The embedded slot does not depend on SoftHSM2.
    let emb = ctx.get_slots_with_token().unwrap()[1];
    let e = ctx.open_rw_session(emb).unwrap();
    login(&e);
    let ek = e
        .generate_key(&Mechanism::AesKeyGen, &secure_template("second-host-emb"))
        .unwrap();
    round_trips(&e, EncryptIv::of_slot(1), ek, 1, b"embedded");
    drop((s, e));

    // Recovery: the module's own C_Finalize + C_Initialize initialises SoftHSM2 again.
    ctx.finalize().expect("module C_Finalize");
    let ctx = Pkcs11::new(so_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("module C_Initialize again");
    let s = ctx.open_rw_session(slot).unwrap();
    login(&s);
    let key = find_label(&s, "second-host");
    round_trips(&s, EncryptIv::of_slot(0), key, 1, b"recovered");
}
