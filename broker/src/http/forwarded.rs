//! The client's address behind trusted proxies (`server.trusted_proxies`).
//!
//! Behind nginx or a cloud load balancer every TCP peer is the proxy. Only when the
//! peer is one of the trusted proxies does Herald read who the proxy says the client
//! is: the `Forwarded` header (RFC 7239) when there is one, else `X-Forwarded-For`.
//! Each proxy appends the address it saw, so the list is walked from the right,
//! skipping trusted proxies; the first address that is not one is the client (what
//! the last trusted proxy saw, which no client can forge). A hop that does not parse
//! (`unknown`, an obfuscated name) ends the walk at the last trusted address. The
//! result serves the per-address limits, the ticket rate and the logs.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;

/// One trusted network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`127.0.0.1`).
    fn parse(text: &str) -> Option<Net> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, what a dual-stack listener
/// reports) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose forwarding headers Herald believes.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<Net>,
}

impl TrustedProxies {
    /// Parses `server.trusted_proxies`; the error is the index of the first entry
    /// that is neither an address nor a CIDR network.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, usize> {
        let nets = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Net::parse(e).ok_or(i))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client's address: `peer` itself unless it is a trusted proxy, else the
    /// right-most address of the forwarding headers that is not a trusted proxy.
    pub(crate) fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.map(canonical)?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for hop in hops(headers).iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.trusts(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }
}

/// The forwarding chain, left to right: `Forwarded`'s `for=` values when that header
/// is present, else `X-Forwarded-For`'s. `None` for a hop that is not an address.
fn hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| address(v))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(address)
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `"192.0.2.1:4711"`, `2001:db8::1`,
/// `"[2001:db8::1]:4711"`.
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
            .expect("valid")
    }

    #[test]
    fn networks_parse_and_match() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(t.trusts("10.1.2.3".parse().expect("ip")));
        assert!(t.trusts("192.0.2.7".parse().expect("ip")));
        assert!(!t.trusts("192.0.2.8".parse().expect("ip")));
        assert!(t.trusts("2001:db8:1::5".parse().expect("ip")));
        assert!(
            t.trusts("::ffff:10.9.9.9".parse().expect("ip")),
            "v4-mapped"
        );
        assert!(trusted(&["0.0.0.0/0"]).trusts("203.0.113.9".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nginx", "10.0.0/8", ""] {
            assert_eq!(
                TrustedProxies::parse(&["127.0.0.1".into(), bad.into()]).err(),
                Some(1),
                "{bad}"
            );
        }
    }

    #[test]
    fn headers_count_only_from_a_trusted_peer() {
        let h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(
            trusted(&[]).client(ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
        assert_eq!(
            trusted(&["10.0.0.0/8"]).client(ip("198.51.100.1"), &h),
            ip("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            trusted(&["10.0.0.0/8"]).client(ip("10.0.0.2"), &h),
            ip("203.0.113.5")
        );
        assert_eq!(
            trusted(&["10.0.0.0/8"]).client(ip("10.0.0.2"), &headers(&[])),
            ip("10.0.0.2"),
            "no header: the proxy itself"
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client_and_forgeries_left_of_it_are_ignored() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client forged "1.1.1.1"; nginx appended what it saw; an inner proxy too.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.5, 10.0.0.9")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("203.0.113.5"));
        // Several headers are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("203.0.113.5"));
        // All trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.9")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("10.0.0.7"));
        // Garbage where the client should be: the last trusted hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.5, unknown, 10.0.0.9")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_its_forms_parse() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            (
                "forwarded",
                r#"for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https, For="10.0.0.9:80";by=10.0.0.2"#,
            ),
        ]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("192.0.2.60"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }
}
