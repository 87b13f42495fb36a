//! Who may open a WebSocket: subprotocol, Origin allow-list and connection limits
//! (docs/protocol.md#2-connecting). Checked before the upgrade, so a refused client gets an
//! HTTP status and a JSON body, never a half-open WebSocket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::header::{HeaderMap, ORIGIN, SEC_WEBSOCKET_PROTOCOL};

use crate::metrics::RefusedReason;
use crate::protocol::SUBPROTOCOL;
use crate::session::ratelimit::TokenBucket;

/// What the client asked for in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subprotocol {
    /// Nothing offered: served `herald.v1.json` without echoing it.
    NoneOffered,
    /// `herald.v1.json` among the offers: echoed back.
    Herald,
    /// Only protocols Herald does not speak: refused with 400.
    Unsupported,
}

/// Reads the client's subprotocol offers (one header or several, comma-separated).
pub(crate) fn subprotocol(headers: &HeaderMap) -> Subprotocol {
    let mut offered = false;
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else {
            offered = true;
            continue;
        };
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            if p == SUBPROTOCOL {
                return Subprotocol::Herald;
            }
        }
    }
    if offered {
        Subprotocol::Unsupported
    } else {
        Subprotocol::NoneOffered
    }
}

/// Whether the request's `Origin` may connect. No list, or no `Origin` header (not a
/// browser): allowed.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .map(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
            .unwrap_or(false),
    }
}

/// Counts open connections, globally and per client IP.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    max: usize,
    max_per_ip: usize,
    /// `server.max_upgrades_per_s` (none when 0): new connections a second, with a
    /// second's worth of burst.
    upgrades: Option<Mutex<TokenBucket>>,
    total: AtomicUsize,
    /// Touched on connect and disconnect only, never on the event path.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Arc<ConnectionLimiter>,
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    /// `0` means unlimited, for every bound.
    pub(crate) fn new(max: usize, max_per_ip: usize, max_upgrades_per_s: u32) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max,
            max_per_ip,
            upgrades: (max_upgrades_per_s > 0)
                .then(|| Mutex::new(TokenBucket::new(max_upgrades_per_s, max_upgrades_per_s))),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which bound is reached.
    pub(crate) fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, RefusedReason> {
        if let Some(bucket) = &self.upgrades {
            let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
            if !bucket.take_at(std::time::Instant::now()) {
                return Err(RefusedReason::UpgradeRate);
            }
        }
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max > 0 && prev >= self.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(RefusedReason::Capacity);
        }
        if let (Some(ip), true) = (ip, self.max_per_ip > 0) {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(RefusedReason::CapacityPerIp);
            }
            *n += 1;
        }
        Ok(Permit {
            limiter: self.clone(),
            ip: if self.max_per_ip > 0 { ip } else { None },
        })
    }

    /// Connections currently held.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = self
                .limiter
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                actix_web::http::header::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            );
        }
        h
    }

    #[test]
    fn subprotocol_negotiation() {
        assert_eq!(subprotocol(&headers(&[])), Subprotocol::NoneOffered);
        assert_eq!(
            subprotocol(&headers(&[("sec-websocket-protocol", "herald.v1.json")])),
            Subprotocol::Herald
        );
        assert_eq!(
            subprotocol(&headers(&[(
                "sec-websocket-protocol",
                "mqtt, herald.v1.json"
            )])),
            Subprotocol::Herald
        );
        assert_eq!(
            subprotocol(&headers(&[
                ("sec-websocket-protocol", "mqtt"),
                ("sec-websocket-protocol", "herald.v1.json")
            ])),
            Subprotocol::Herald
        );
        assert_eq!(
            subprotocol(&headers(&[("sec-websocket-protocol", "mqtt, wamp")])),
            Subprotocol::Unsupported
        );
    }

    #[test]
    fn origin_list() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&headers(&[]), &allowed));
        assert!(origin_allowed(
            &headers(&[("origin", "https://app.example")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://evil.example")]),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(&[("origin", "https://evil.example")]),
            &[]
        ));
    }

    #[test]
    fn limits_global_and_per_ip_and_release_on_drop() {
        let l = ConnectionLimiter::new(3, 2, 0);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let p1 = l.acquire(Some(a)).expect("1");
        let _p2 = l.acquire(Some(a)).expect("2");
        assert_eq!(l.acquire(Some(a)).err(), Some(RefusedReason::CapacityPerIp));
        let _p3 = l.acquire(Some(b)).expect("3");
        assert_eq!(l.acquire(Some(b)).err(), Some(RefusedReason::Capacity));
        assert_eq!(l.open(), 3);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.acquire(Some(a)).expect("slot freed");
    }
}
