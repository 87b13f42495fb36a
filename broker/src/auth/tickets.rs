//! One-time connection tickets (`POST /api/tickets`, then `/ws?ticket=…`).
//!
//! A browser cannot set an `Authorization` header on a WebSocket upgrade, and a
//! long-lived JWT in a URL ends up in proxy logs and browser history. So the page's
//! own backend, holding the user's JWT, asks Herald for a ticket: 32 random bytes,
//! valid once, for `auth.ticket_ttl_ms`, carrying the JWT's identity. A leaked ticket
//! is worth one connection for a few seconds.
//!
//! Tickets are node-local (in this process's memory): behind a load balancer the
//! ticket request and the upgrade must reach the same node (sticky routing by client
//! address, or request the ticket through the same connection-pinned host name).
//! The store is bounded (`MAX_OUTSTANDING`); expired tickets are purged as new ones
//! are issued.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::auth::{AuthError, Identity, Via};

/// Outstanding (issued, unused, unexpired) tickets per node. A client that asks for
/// more than this within one ticket lifetime gets 503.
pub(crate) const MAX_OUTSTANDING: usize = 100_000;

/// A fresh random ticket: 32 bytes from the OS generator, base64url.
pub(crate) fn new_ticket() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The node's outstanding tickets.
#[derive(Debug)]
pub(crate) struct Tickets {
    ttl: Duration,
    open: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl Tickets {
    pub(crate) fn new(ttl: Duration) -> Self {
        Tickets {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a ticket carrying `identity`; returns it and its lifetime in ms.
    pub(crate) fn issue(&self, identity: &Identity) -> Result<(String, u64), AuthError> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_OUTSTANDING {
            open.retain(|_, (_, expires)| *expires > now);
            if open.len() >= MAX_OUTSTANDING {
                return Err(AuthError::Unavailable(format!(
                    "too many outstanding tickets ({MAX_OUTSTANDING}); retry shortly"
                )));
            }
        }
        let ticket = new_ticket();
        let mut carried = identity.clone();
        carried.via = Via::Ticket;
        open.insert(ticket.clone(), (carried, now + self.ttl));
        Ok((ticket, self.ttl.as_millis() as u64))
    }

    /// Redeems `ticket`: valid once, before it expires.
    pub(crate) fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.remove(ticket) {
            Some((identity, expires)) if expires > Instant::now() => Ok(identity),
            Some(_) => Err(AuthError::Invalid("ticket expired".into())),
            None => Err(AuthError::Invalid(
                "unknown ticket (already used, expired, or issued by another node)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_valid_once_and_only_before_it_expires() {
        let t = Tickets::new(Duration::from_millis(50));
        let (ticket, ttl) = t.issue(&Identity::anonymous()).expect("issued");
        assert_eq!(ttl, 50);
        assert_eq!(ticket.len(), 43, "32 bytes, base64url without padding");
        assert_eq!(t.redeem(&ticket).map(|i| i.via), Ok(Via::Ticket));
        assert!(t.redeem(&ticket).is_err(), "reused");
        let (late, _) = t.issue(&Identity::anonymous()).expect("issued");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            t.redeem(&late),
            Err(AuthError::Invalid("ticket expired".into()))
        );
        assert_ne!(new_ticket(), new_ticket());
    }
}
