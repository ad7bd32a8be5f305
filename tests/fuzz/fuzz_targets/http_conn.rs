//! Raw bytes as one HTTP client connection to the real, in-process server
//! (request lines, headers, Content-Length, pipelining, an upgrade and the
//! frames after it). See `src/lib.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskcast_fuzz::{CloseRule, after_input, check_http, exchange};

fuzz_target!(|data: &[u8]| {
    let ex = exchange(data);
    if let Err(e) = check_http(&ex, None, CloseRule::Any) {
        panic!("{e}\nclient: {:?}\nserver: {:?}", String::from_utf8_lossy(data), String::from_utf8_lossy(&ex.bytes));
    }
    after_input();
});
