//! Shared ownership of the backend library: the host process initialises SoftHSM2 itself
//! BEFORE the module does. The module must work on that shared initialisation, and its
//! C_Finalize must not finalize SoftHSM2 under the host: the host's context keeps working, and
//! the module can be initialised again afterwards. One test: it finalizes the module.

mod support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use pkcs11_sys::*;
use std::ptr;
use support::module_fixture::raw;
use support::module_fixture::*;

#[test]
fn module_shares_softhsm2_with_its_host_and_finalize_leaves_it_alone() {
    let fx = fixture_with(Options {
        direct_softhsm_first: true,
        ..Default::default()
    });
    let direct = fx.direct_session();
    let mut tpl = secure_template("shared-host-key");
    tpl.push(Attribute::Id(b"shared-host-key".to_vec()));
    let host_key = direct.generate_key(&Mechanism::AesKeyGen, &tpl).unwrap();
    let mut iv = [1u8; 12];
    let ct = direct
        .encrypt(&gcm(&mut iv, b""), host_key, b"host")
        .unwrap();

    // The module works on the shared initialisation (both slots).
    for_each_token_of(fx, |t| {
        let key = t.keygen(&t.label("shared"), &[]);
        let (c, mut iv) = t.encrypt(key, 2, b"", b"module").unwrap();
        assert_eq!(
            t.session.decrypt(&gcm(&mut iv, b""), key, &c).unwrap(),
            b"module"
        );
    });
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let k = find_label(&module, "shared-host-key");
    assert_eq!(module.decrypt(&gcm(&mut iv, b""), k, &ct).unwrap(), b"host");
    drop(module);

    // Finalize the module.
    let f = raw::table();
    // SAFETY: NULL is the only valid C_Finalize argument.
    assert_eq!(unsafe { f.C_Finalize.unwrap()(ptr::null_mut()) }, CKR_OK);
    let mut info = CK_INFO::default();
    // SAFETY: live out-struct.
    assert_eq!(
        unsafe { f.C_GetInfo.unwrap()(&mut info) },
        CKR_CRYPTOKI_NOT_INITIALIZED
    );

    // The host's SoftHSM2 session is still alive and logged in.
    assert_eq!(
        direct.decrypt(&gcm(&mut iv, b""), host_key, &ct).unwrap(),
        b"host",
        "the module's C_Finalize broke the host's SoftHSM2 context"
    );
    let again = fx.direct_session();
    assert_eq!(
        find(&again, &[Attribute::Id(b"shared-host-key".to_vec())]).len(),
        1
    );

    // The module initialises again and still shares.
    // SAFETY: NULL args = no callbacks.
    assert_eq!(unsafe { f.C_Initialize.unwrap()(ptr::null_mut()) }, CKR_OK);
    let module = fx.ctx.open_rw_session(fx.slots()[0]).unwrap();
    login(&module);
    let k = find_label(&module, "shared-host-key");
    assert_eq!(module.decrypt(&gcm(&mut iv, b""), k, &ct).unwrap(), b"host");
    // SAFETY: as above.
    assert_eq!(unsafe { f.C_Finalize.unwrap()(ptr::null_mut()) }, CKR_OK);
    assert_eq!(
        direct.decrypt(&gcm(&mut iv, b""), host_key, &ct).unwrap(),
        b"host"
    );
}
