//! Buffered audit records of key uses carry the slot and key as numbered names
//! (`src/audit/names.rs`): a record written after the key was renamed still names the key as
//! it was called when it was used. One process, its own config.

mod support;

use support::module_fixture::*;

/// A buffered record names the key as it was called when it was used, even if the key is
/// renamed before the flusher writes the record (key uses carry numbered names, see
/// `src/audit/names.rs`). Both slots; records checked whole, label escaping included.
#[test]
fn buffered_records_keep_the_label_of_their_time() {
    use cryptoki::object::Attribute;
    let (dir, ctx) = bare_module_with(Options {
        audit_flush_ms: 60000,
        ..Options::default()
    });
    let audit = dir.path().join("audit.log");
    for (i, slot) in ctx.get_slots_with_token().unwrap().into_iter().enumerate() {
        let session = ctx.open_rw_session(slot).unwrap();
        login(&session);
        let before = format!("before-rename-{i}");
        let key = session
            .generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &secure_template(&before),
            )
            .unwrap();
        round_trips(&session, EncryptIv::of_slot(i), key, 3, b"named");
        let after = format!("after \"rename\" {i}");
        session
            .update_attributes(key, &[Attribute::Label(after.as_bytes().to_vec())])
            .unwrap();
        round_trips(&session, EncryptIv::of_slot(i), key, 2, b"named");
    }
    // Nothing written yet (one-minute interval, a few hundred bytes buffered): C_Finalize
    // writes it all.
    ctx.finalize().expect("C_Finalize");
    for i in 0..2 {
        let before = format!("key=\"before-rename-{i}\" mechanism=CKM_AES_GCM");
        let after = format!("key=\"after\\x20\\x22rename\\x22\\x20{i}\" mechanism=CKM_AES_GCM");
        for op in ["op=encrypt", "op=decrypt"] {
            let with = |label: &str| {
                std::fs::read_to_string(&audit)
                    .unwrap()
                    .lines()
                    .filter(|l| l.contains(op) && l.contains(label) && l.contains("result=CKR_OK"))
                    .count()
            };
            assert_eq!(with(&before), 3, "slot {i}, {op} before the rename");
            assert_eq!(with(&after), 2, "slot {i}, {op} after the rename");
        }
    }
}
