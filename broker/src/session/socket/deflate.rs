//! permessage-deflate (RFC 7692), when `session.compression = "deflate"` and the
//! client offers it.
//!
//! Herald always answers with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 section 7.1.1 lets a server add both to any
//! offer it accepts). That is what makes compression cheap here:
//! - every message is compressed on its own, so an event is compressed once and the
//!   same compressed frame goes to every subscriber that negotiated the same window
//!   ([`crate::protocol::event::Frame::deflated`]), never once per subscriber;
//! - every client message is inflated on its own, so no connection keeps an inflate
//!   window (32 KiB) or a deflate state (256 KiB): each worker thread has one of each,
//!   reset per message.
//!
//! Inflating is bounded: past `session.max_message_bytes` of output it stops, and
//! the connection closes with 1009 (a "zip bomb" costs the limit, not its ratio).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The bytes RFC 7692 section 7.2.1 strips from the end of every compressed message.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compression level. Measured on a 351-byte JSON event (zlib-rs, release build):
/// level 1 (static Huffman codes only) saves 15% in 5 µs, level 2 saves 32% in
/// 10 µs, and levels up to 6 save no more on events of this size. The time is
/// mostly resetting the compressor's tables, paid once per event, not per subscriber.
const LEVEL: u32 = 2;

/// Window bits Herald compresses with unless the client asks for fewer.
pub(crate) const MAX_WINDOW_BITS: u8 = 15;

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The LZ77 window the server compresses with (`server_max_window_bits`, 9–15).
    pub window_bits: u8,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` response header's value.
    pub(crate) fn response(&self) -> String {
        let mut out = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_bits < MAX_WINDOW_BITS {
            out.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        out
    }
}

/// The first permessage-deflate offer among the `Sec-WebSocket-Extensions` values
/// that Herald can accept; `None` when there is none (the connection then runs
/// uncompressed). An offer with an unknown or repeated parameter, or a window size
/// out of range, is declined (RFC 7692 section 5), and so is one asking the server
/// for an 8-bit window, which zlib cannot produce.
pub(crate) fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<Deflate> {
    offers
        .flat_map(|value| value.split(','))
        .find_map(|offer| accept(offer.trim()))
}

fn accept(offer: &str) -> Option<Deflate> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut window_bits = MAX_WINDOW_BITS;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match name {
            "server_no_context_takeover" | "client_no_context_takeover" if value.is_none() => {}
            "server_max_window_bits" => {
                window_bits = bits(value)?;
                if window_bits < 9 {
                    return None;
                }
            }
            // With or without a value: Herald inflates with a 15-bit window, which
            // reads any smaller one, so it needs no answer.
            "client_max_window_bits" => {
                if value.is_some() {
                    bits(value)?;
                }
            }
            _ => return None,
        }
    }
    Some(Deflate { window_bits })
}

/// Why a compressed client message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the limit (1009).
    TooBig,
    /// It is not a deflate stream (1002).
    Corrupt,
}

thread_local! {
    /// The worker's inflater, reset per message (see the module doc).
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    /// The worker's compressors, one per window size in use, reset per message.
    static DEFLATERS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
}

/// Inflates one client message (its frames' payloads joined), stopping past `max`
/// bytes of output.
pub(crate) fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = cell.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let result = inflate_with(d, data, max);
        if result.is_err() {
            d.reset(false);
        }
        result
    })
}

fn inflate_with(d: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let limit = max.saturating_add(1);
    let mut out = Vec::with_capacity(data.len().saturating_mul(2).max(64).min(limit));
    for input in [data, &TRAILER[..]] {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(InflateError::TooBig);
                }
                let more = out.len().max(1024).min(limit - out.len());
                out.reserve_exact(more);
            }
            let before = d.total_in();
            let status = d
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            at += (d.total_in() - before) as usize;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            let output_room = out.len() < out.capacity();
            if status == Status::StreamEnd || (at == input.len() && output_room) {
                break;
            }
            if status == Status::BufError && output_room {
                // No progress with room to spare: the input is cut short.
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

/// Compresses one server message with a `window_bits` window: the payload of a frame
/// with RSV1 set (`None` only if the compressor fails, which zlib does not).
///
/// Every data frame is compressed once negotiated, even a short one that grows by a
/// few bytes: RFC 7692 allows sending such a message uncompressed, but some clients
/// mishandle uncompressed text on a compressed connection (the Autobahn runner
/// kosoku does), and events, the frames that matter, always shrink.
pub(crate) fn compress(data: &[u8], window_bits: u8) -> Option<Bytes> {
    let slot = usize::from(window_bits.clamp(9, MAX_WINDOW_BITS) - 9);
    DEFLATERS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let c = cell[slot].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, slot as u8 + 9)
        });
        c.reset();
        let mut out = Vec::with_capacity(data.len() + 16);
        let mut at = 0;
        loop {
            let before = c.total_in();
            let status = c
                .compress_vec(&data[at..], &mut out, FlushCompress::Sync)
                .ok()?;
            at += (c.total_in() - before) as usize;
            // A sync flush is complete once it leaves room in the output.
            if at == data.len() && out.len() < out.capacity() {
                break;
            }
            if status == Status::BufError && out.len() < out.capacity() {
                return None;
            }
            out.reserve(1024);
        }
        if !out.ends_with(&TRAILER) {
            return None;
        }
        out.truncate(out.len() - TRAILER.len());
        Some(out.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Deflate> {
        negotiate(std::iter::once(v))
    }

    #[test]
    fn accepts_what_it_can_and_declines_the_rest() {
        let fifteen = Some(Deflate { window_bits: 15 });
        assert_eq!(offer("permessage-deflate"), fifteen);
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), fifteen);
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
            fifteen
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=10"),
            Some(Deflate { window_bits: 10 })
        );
        assert_eq!(offer("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(offer("permessage-deflate; server_max_window_bits=16"), None);
        assert_eq!(offer("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(offer("permessage-deflate; client_max_window_bits=7"), None);
        assert_eq!(offer("permessage-deflate; foo"), None);
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            None
        );
        assert_eq!(offer("x-webkit-deflate-frame"), None);
        // The next offer is taken when the first is declined.
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12"),
            Some(Deflate { window_bits: 12 })
        );
        assert_eq!(
            Deflate { window_bits: 12 }.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
        );
    }

    #[test]
    fn round_trips_and_bounds_what_it_inflates() {
        let json = r#"{"type":"event","topic":"orders.created","seq":42,"data":{"id":7,"status":"created","items":[1,2,3]}}"#.repeat(20);
        for bits in 9..=15 {
            let packed = compress(json.as_bytes(), bits).expect("JSON compresses");
            assert!(packed.len() < json.len(), "{} bytes", packed.len());
            if bits == 15 {
                assert!(packed.len() < json.len() / 4, "{} bytes", packed.len());
            }
            assert_eq!(
                inflate(&packed, json.len()).expect("inflates"),
                json.as_bytes()
            );
            assert_eq!(inflate(&packed, json.len() - 1), Err(InflateError::TooBig));
        }
        for short in [&b""[..], b"x", b"short"] {
            let packed = compress(short, 15).expect("compresses");
            assert_eq!(inflate(&packed, 10).expect("inflates"), short);
        }
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let packed = compress(&noise, 15).expect("compresses");
        assert_eq!(inflate(&packed, noise.len()).expect("inflates"), noise);
        assert_eq!(
            inflate(b"\xff\xff\xff\xff", 100),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 50 << 20];
        let packed = compress(&zeros, 15).expect("compresses");
        assert!(packed.len() < 100_000);
        assert_eq!(inflate(&packed, 1 << 20), Err(InflateError::TooBig));
        // The worker's inflater works again afterwards.
        let small = compress(&zeros[..1000], 15).expect("compresses");
        assert_eq!(inflate(&small, 1000).expect("inflates").len(), 1000);
    }
}
