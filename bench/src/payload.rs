//! The stamp each published message carries, and finding it in a received frame.
//!
//! A payload is a JSON object, so Herald embeds it as `data` unchanged (it keeps the
//! publisher's bytes) and the other servers pass it through as is:
//!
//! ```text
//! {"hb":[SENT_US,SEQ,TOPIC],"p":"xxxx…"}
//! ```
//!
//! `SENT_US` is [`crate::clock::now_us`] when the message was built, `SEQ` counts the
//! messages of topic `TOPIC` from 1, and `p` pads the payload to the requested size.
//! The receiver only looks for the `"hb":[` marker and reads three integers after it:
//! no JSON parse per delivery, wherever the server puts the payload in its frame.

use std::io::Write as _;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// What precedes the three numbers of a stamp.
pub const MARKER: &[u8] = br#""hb":["#;

/// The searcher for [`MARKER`], built once.
static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(MARKER));

/// The smallest payload: a stamp with 20-digit numbers and an empty pad.
pub const MIN_SIZE: usize = r#"{"hb":[,,],"p":""}"#.len() + 3 * 20;

/// When and in which order a message was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// [`crate::clock::now_us`] when the message was built.
    pub sent_us: u64,
    /// Position of the message within its topic, from 1.
    pub seq: u64,
    /// Index of the topic (`t<topic>`).
    pub topic: u32,
}

/// Writes the payload for `stamp` into `out` (cleared first), padded with `x` to
/// `size` bytes when `size` is larger than the stamp itself.
pub fn encode(stamp: Stamp, size: usize, out: &mut Vec<u8>) {
    encode_padded(stamp, size, false, out);
}

/// [`encode`], padded with `x`, or with `realistic`, an order as escaped JSON text
/// whose numbers change with the stamp: what compression meets in real events (a run
/// of `x` compresses to almost nothing).
pub fn encode_padded(stamp: Stamp, size: usize, realistic: bool, out: &mut Vec<u8>) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"hb":[{},{},{}],"p":""#,
        stamp.sent_us, stamp.seq, stamp.topic
    );
    let closing = br#""}"#;
    let pad = size.saturating_sub(out.len() + closing.len());
    if realistic {
        let n = stamp.seq;
        let text = format!(
            r#"{{\"order\":{{\"id\":{},\"customer\":\"c-{}\",\"status\":\"{}\",\"total\":{{\"amount\":{}.{:02},\"currency\":\"EUR\"}},\"items\":[{{\"sku\":\"SKU-{}\",\"qty\":{},\"price\":{}.95}},{{\"sku\":\"SKU-{}\",\"qty\":1,\"price\":{}.00}}],\"shipping\":{{\"method\":\"standard\",\"country\":\"DE\"}}}}}}"#,
            7000 + n,
            (n * 7919) % 10_000,
            ["created", "paid", "shipped"][(n % 3) as usize],
            40 + n % 200,
            n % 100,
            (n * 31) % 9000 + 1000,
            1 + n % 4,
            10 + n % 90,
            (n * 17) % 9000 + 1000,
            5 + n % 50,
        );
        let start = out.len();
        while out.len() - start < pad {
            out.extend_from_slice(text.as_bytes());
        }
        // Cut at the pad's length, not inside an escape.
        let mut end = start + pad;
        while end > start && out[end - 1] == b'\\' {
            end -= 1;
        }
        out.truncate(end);
        out.resize(start + pad, b'x');
    } else {
        out.resize(out.len() + pad, b'x');
    }
    out.extend_from_slice(closing);
}

/// Finds the stamp in a received frame or payload; `None` when there is none (a
/// message somebody else published, or a reply).
pub fn find(frame: &[u8]) -> Option<Stamp> {
    let at = FINDER.find(frame)? + MARKER.len();
    let mut rest = &frame[at..];
    let sent_us = number(&mut rest, b',')?;
    let seq = number(&mut rest, b',')?;
    let topic = number(&mut rest, b']')?;
    Some(Stamp {
        sent_us,
        seq,
        topic: u32::try_from(topic).ok()?,
    })
}

/// Reads the decimal number at the start of `rest`, which must end with `end`, and
/// moves `rest` past `end`.
fn number(rest: &mut &[u8], end: u8) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            _ if b == end && i > 0 => {
                *rest = &rest[i + 1..];
                return Some(value);
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        sent_us: 1_234_567,
        seq: 42,
        topic: 7,
    };

    #[test]
    fn a_payload_has_the_requested_size_and_is_json() {
        let mut out = Vec::new();
        for size in [0, 10, MIN_SIZE, 200, 4096] {
            encode(STAMP, size, &mut out);
            if size >= MIN_SIZE {
                assert_eq!(out.len(), size);
            }
            let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(v["hb"], serde_json::json!([1_234_567, 42, 7]));
        }
    }

    #[test]
    fn the_stamp_is_found_raw_and_inside_a_herald_event() {
        let mut payload = Vec::new();
        encode(STAMP, 200, &mut payload);
        assert_eq!(find(&payload), Some(STAMP));
        let mut frame =
            br#"{"type":"event","topic":"t7","seq":9,"ts":1,"source":"nats","data":"#.to_vec();
        frame.extend_from_slice(&payload);
        frame.push(b'}');
        assert_eq!(find(&frame), Some(STAMP));
    }

    #[test]
    fn frames_without_a_whole_stamp_have_none() {
        for frame in [
            &br#"{"type":"ping"}"#[..],
            br#"{"hb":[1,2]}"#,
            br#"{"hb":[,2,3]}"#,
            br#"{"hb":[1,2,3"#,
            br#"{"hb":[1,2,99999999999]}"#,
            br#"{"hb":[99999999999999999999999,2,3]}"#,
        ] {
            assert_eq!(find(frame), None, "{}", String::from_utf8_lossy(frame));
        }
    }
}
