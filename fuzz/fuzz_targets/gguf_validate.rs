//! Feeds arbitrary bytes to the GGUF validator: it must return `Ok` or `Err`, never panic, abort,
//! or allocate more than the input holds.
//!
//! Run from `fuzz/` with `cargo +nightly fuzz run gguf_validate`. A good seed corpus is a small
//! valid file (see the crate's tests) plus prefixes of the real model's first few megabytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(error) = sepchat_gguf::validate_bytes(bytes) {
        // Formatting every error exercises the Display impls too, which print untrusted names.
        let message = error.to_string();
        assert!(!message.contains('\n'), "error message spans lines: {message}");
    }
});
