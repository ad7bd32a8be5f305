//! Raw bytes as a client's frame stream after a real upgrade (real token,
//! real 101) to the in-process server. See `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: token in the query or in Authorization.
    let Some((&how, frames)) = data.split_first() else { return };
    taskcast_fuzz::run_ws(frames, how & 1 == 1);
});
