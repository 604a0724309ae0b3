//! `allow_destroy = true` slots: C_DestroyObject removes the key from the HSM; the handle
//! becomes invalid; a RO session cannot destroy; CKA_DESTROYABLE reads true.
//! (Deletion protection with the default config is tested in module_keys.rs.)

mod support;

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType};
use support::module_fixture::*;

#[test]
fn destroy_is_allowed_when_configured() {
    let fx = fixture_with(Options {
        allow_destroy: true,
        ..Default::default()
    });
    for_each_token_of(fx, |t| {
        let s = &t.session;
        let label = t.label("destroy-me");
        let id = label.clone().into_bytes();
        let key = t.keygen(&label, &[Attribute::Id(id.clone())]);
        assert_eq!(
            attr(s, key, AttributeType::Destroyable),
            Attribute::Destroyable(true)
        );
        let ro = t.fx.ctx.open_ro_session(t.slot).unwrap();
        expect_rv(ro.destroy_object(key), RvError::SessionReadOnly);

        s.destroy_object(key).unwrap();
        assert!(find(s, &[Attribute::Label(label.clone().into_bytes())]).is_empty());
        let mut iv = [0u8; 12];
        expect_rv(
            s.encrypt(&gcm(&mut iv, b""), key, b"x"),
            RvError::KeyHandleInvalid,
        );
        expect_rv(s.destroy_object(key), RvError::ObjectHandleInvalid);
        if t.index == 0 {
            // Gone from the HSM itself.
            let d = t.fx.direct_session();
            assert!(
                find(&d, &[Attribute::Id(id)]).is_empty(),
                "still in SoftHSM2"
            );
        }
        // The label is free again.
        let again = t.keygen(&label, &[]);
        assert_ne!(again, key, "a new key gets a new handle");
    });
}
