//! Keys changing while other threads list, generate and use them: finds, key generation,
//! attribute reads and GCM must never fail because another thread renamed or toggled a key.

mod support;

use cryptoki::object::{Attribute, AttributeType};
use std::sync::atomic::{AtomicBool, Ordering};
use support::module_fixture::*;

#[test]
fn finds_reads_and_generation_survive_concurrent_renames() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("cc-flip"), &[]);
        let short = t.label("cc-flip");
        let long = format!("{short}-now-with-a-considerably-longer-label-than-before");
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let renamer = t.open();
            let (stop, short, long) = (&stop, &short, &long);
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let label = if i % 2 == 0 { long } else { short };
                    renamer
                        .update_attributes(
                            key,
                            &[
                                Attribute::Label(label.clone().into_bytes()),
                                Attribute::Encrypt(i % 4 < 2),
                            ],
                        )
                        .unwrap_or_else(|e| panic!("rename {i}: {e}"));
                    i += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            let readers: Vec<_> = (0..3)
                .map(|r| {
                    let s = t.open();
                    let prefix = t.label(&format!("cc-new-{r}"));
                    scope.spawn(move || {
                        for i in 0..150 {
                            s.find_objects(&[])
                                .unwrap_or_else(|e| panic!("reader {r} find {i}: {e}"));
                            // Fixed-size attributes only: a caller's own two-call read of a
                            // label that grows in between fails by design.
                            s.get_attributes(
                                key,
                                &[AttributeType::ValueLen, AttributeType::Encrypt],
                            )
                            .unwrap_or_else(|e| panic!("reader {r} attrs {i}: {e}"));
                            if i % 30 == 0 {
                                let label = format!("{prefix}-{i}");
                                s.generate_key(
                                    &cryptoki::mechanism::Mechanism::AesKeyGen,
                                    &secure_template(&label),
                                )
                                .unwrap_or_else(|e| panic!("reader {r} generate {i}: {e}"));
                            }
                        }
                    })
                })
                .collect();
            for r in readers {
                if let Err(p) = r.join() {
                    stop.store(true, Ordering::Relaxed);
                    std::panic::resume_unwind(p);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
}

#[test]
fn a_key_stays_usable_while_another_attribute_is_toggled() {
    for_each_token(|t| {
        let key = t.keygen(&t.label("cc-toggle"), &[]);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let toggler = t.open();
            let stop = &stop;
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    toggler
                        .update_attributes(key, &[Attribute::Decrypt(i % 2 == 0)])
                        .unwrap_or_else(|e| panic!("toggle {i}: {e}"));
                    i += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            let mode = t.iv_mode();
            let users: Vec<_> = (0..3)
                .map(|u| {
                    let s = t.open();
                    scope.spawn(move || {
                        for i in 0..300 {
                            encrypt_gcm(&s, mode, key, u as u8, b"", b"busy")
                                .unwrap_or_else(|e| panic!("user {u} encrypt {i}: {e}"));
                            s.get_attributes(key, &[AttributeType::Encrypt])
                                .unwrap_or_else(|e| panic!("user {u} attrs {i}: {e}"));
                        }
                    })
                })
                .collect();
            for u in users {
                if let Err(p) = u.join() {
                    stop.store(true, Ordering::Relaxed);
                    std::panic::resume_unwind(p);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
}
