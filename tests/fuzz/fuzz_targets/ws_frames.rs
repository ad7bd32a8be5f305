//! Structured WebSocket sessions: the fuzzer picks frames (opcode, FIN,
//! RSV, mask, length encoding, payloads including real tokens and close
//! codes); the harness encodes them and sends them after a real upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskcast_fuzz::WsSession;

fuzz_target!(|session: WsSession| {
    taskcast_fuzz::run_ws(&session.encode(), session.token_in_query);
});
