//! `http::parse_head` directly: no panic, and its answers are consistent
//! with how the server calls it (again on a growing buffer as bytes arrive).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskcast::http::{MAX_HEAD_BYTES, parse_head};

fuzz_target!(|data: &[u8]| {
    // First byte: the body limit (0..=65535 in coarse steps).
    let Some((&limit, buf)) = data.split_first() else { return };
    let max_body = limit as usize * 257;
    match parse_head(buf, max_body) {
        Ok(None) => assert!(buf.len() <= MAX_HEAD_BYTES, "an over-long head must be refused, not awaited"),
        Ok(Some(head)) => {
            assert!(head.head_len <= buf.len() && head.head_len <= MAX_HEAD_BYTES);
            assert!(head.content_length <= max_body);
            assert!(!head.path.contains('?'), "the query is split off the path");
            // The head alone parses the same (the body does not matter).
            let alone = parse_head(&buf[..head.head_len], max_body).expect("head alone").expect("complete");
            assert_eq!(format!("{alone:?}"), format!("{head:?}"));
            // Arriving in pieces, every prefix is "read more", never an
            // error: else a request would be refused or accepted depending
            // on how TCP split it.
            let n = head.head_len;
            let cuts = [0, 1, n / 4, n / 2, 3 * n / 4, n.saturating_sub(2), n - 1];
            for cut in cuts.into_iter().filter(|&c| c < n) {
                match parse_head(&buf[..cut], max_body) {
                    Ok(None) => {}
                    other => panic!("prefix of {cut}/{n} bytes gave {other:?}"),
                }
            }
        }
        Err(reject) => assert!([400, 411, 413, 431].contains(&reject.status), "{reject:?}"),
    }
});
