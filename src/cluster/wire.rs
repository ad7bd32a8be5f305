//! What travels through Redis, and how a history answer becomes a replay.
//!
//! A pub/sub message is `<offset> <epoch> <type length> <type><payload>`:
//! three space-separated ASCII fields, then the type's bytes (its length is
//! given, so a type may hold any character, spaces included), then the
//! payload, which is the rest of the message. The payload is raw JSON text
//! and travels as it is: no escaping on the way in, no parsing on the way
//! out. `publish.lua` writes it; the broadcast to everyone (no offset, no
//! epoch) is written by [`encode_broadcast`] as `0 - <type length> ...`.

/// One pub/sub message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    /// 0 for the broadcast to everyone.
    pub offset: u64,
    /// Empty for the broadcast to everyone.
    pub epoch: String,
    pub kind: String,
    pub payload: String,
}

/// The epoch field of a broadcast to everyone (an epoch is never `-`: it is
/// hex, see [`super::Rng::epoch`]).
const NO_EPOCH: &str = "-";

pub fn encode_broadcast(kind: &str, payload: &str) -> Vec<u8> {
    let mut out = format!("0 {NO_EPOCH} {} ", kind.len()).into_bytes();
    out.reserve(kind.len() + payload.len());
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

/// Decodes a pub/sub message; the error says what is wrong with it (a
/// message from something that is not taskcast, on one of our names).
pub fn decode(msg: &[u8]) -> Result<Wire, String> {
    let mut rest = msg;
    let mut field = |what: &str| -> Result<&[u8], String> {
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| format!("no {what} field"))?;
        let f = &rest[..sp];
        rest = &rest[sp + 1..];
        Ok(f)
    };
    let offset = ascii_u64(field("offset")?).ok_or("offset is not a number")?;
    let epoch = field("epoch")?;
    let kind_len = ascii_u64(field("type length")?).ok_or("type length is not a number")?;
    let kind_len = usize::try_from(kind_len).ok().filter(|&n| n <= rest.len()).ok_or("type length past the end")?;
    let (kind, payload) = rest.split_at(kind_len);
    let utf8 = |b: &[u8], what: &str| String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"));
    let epoch = match epoch {
        b"-" => String::new(),
        e if !e.is_empty() && e.iter().all(u8::is_ascii_alphanumeric) => utf8(e, "epoch")?,
        _ => return Err("bad epoch".into()),
    };
    if epoch.is_empty() != (offset == 0) {
        return Err("offset 0 must go with epoch - and only with it".into());
    }
    Ok(Wire { offset, epoch, kind: utf8(kind, "type")?, payload: utf8(payload, "payload")? })
}

/// Digits only (no sign, no spaces), at most u64.
fn ascii_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The replay for a subscriber that last saw `since`, given the channel's
/// current `(epoch, latest)` and the stream entries read after `since`
/// (ascending by offset). `Some` only when `entries` is exactly the whole gap
/// `since.offset+1 ..= latest` of the same epoch; anything else (another
/// epoch, a trimmed or expired stream, an offset from the future, a read cut
/// short) is `None`: never a partial replay.
pub fn replay<T>(since: (&str, u64), epoch: &str, latest: u64, entries: Vec<(u64, T)>) -> Option<Vec<(u64, T)>> {
    let (since_epoch, since) = since;
    if since_epoch != epoch || since > latest {
        return None;
    }
    let want = latest - since;
    if entries.len() as u64 != want {
        return None;
    }
    let contiguous = entries.iter().zip(since + 1..).all(|((o, _), want)| *o == want);
    contiguous.then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(offset: u64, epoch: &str, kind: &str, payload: &str) -> Wire {
        Wire { offset, epoch: epoch.into(), kind: kind.into(), payload: payload.into() }
    }

    #[test]
    fn decodes_what_publish_lua_writes() {
        // The exact bytes the script's string.format produces.
        assert_eq!(
            decode(b"17 9f3a 12 task_updated{\"id\":1}").unwrap(),
            wire(17, "9f3a", "task_updated", "{\"id\":1}")
        );
        // A type with spaces and digits, a payload with spaces and newlines.
        assert_eq!(decode(b"1 e 5 a 1 b[1, \n 2]").unwrap(), wire(1, "e", "a 1 b", "[1, \n 2]"));
        assert_eq!(decode(b"3 e 0 null").unwrap(), wire(3, "e", "", "null"));
    }

    #[test]
    fn broadcast_round_trip() {
        let b = encode_broadcast("hello world", "{\"x\":\"y z\"}");
        assert_eq!(b, b"0 - 11 hello world{\"x\":\"y z\"}");
        assert_eq!(decode(&b).unwrap(), wire(0, "", "hello world", "{\"x\":\"y z\"}"));
    }

    #[test]
    fn refuses_what_taskcast_never_writes() {
        for bad in [
            &b""[..],
            b"17",
            b"17 e",
            b"17 e 3",
            b"x e 1 ab",
            b"-1 e 1 ab",
            b"17 e 9 ab",
            b"17 e 99999999999999999999999 ab",
            b"17  1 ab",
            b"17 e-f 1 ab",
            b"0 e 1 ab",
            b"5 - 1 ab",
            b"1 e 1 \xff{}",
            b"1 e 1 a\xff",
        ] {
            assert!(decode(bad).is_err(), "{:?} should be refused", String::from_utf8_lossy(bad));
        }
    }

    fn entries(r: std::ops::RangeInclusive<u64>) -> Vec<(u64, ())> {
        r.map(|o| (o, ())).collect()
    }

    #[test]
    fn replay_only_the_whole_gap_of_the_same_epoch() {
        // (since, latest, entries read, replay length or none)
        type Row = ((&'static str, u64), u64, Vec<(u64, ())>, Option<usize>);
        let table: &[Row] = &[
            (("e", 5), 8, entries(6..=8), Some(3)),
            (("e", 8), 8, vec![], Some(0)),
            (("e", 0), 3, entries(1..=3), Some(3)),
            (("x", 5), 8, entries(6..=8), None),                  // another epoch
            (("e", 5), 8, entries(7..=8), None),                  // trimmed: 6 is gone
            (("e", 5), 8, vec![], None),                          // expired stream
            (("e", 5), 8, entries(6..=7), None),                  // read cut short
            (("e", 9), 8, vec![], None),                          // from the future
            (("e", 5), 8, vec![(6, ()), (8, ()), (9, ())], None), // a hole
        ];
        for (since, latest, read, want) in table {
            let got = replay(*since, "e", *latest, read.clone()).map(|v| v.len());
            assert_eq!(got, *want, "since {since:?} latest {latest} read {read:?}");
        }
    }
}
