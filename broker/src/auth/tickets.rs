//! One-time connection tickets (`POST /api/tickets`, then `/ws?ticket=…`).
//!
//! A browser cannot set an `Authorization` header on a WebSocket upgrade, and a
//! long-lived JWT in a URL ends up in proxy logs and browser history. So the page's
//! own backend, holding the user's JWT, asks Herald for a ticket: 32 random bytes,
//! valid once, for `auth.ticket_ttl_ms`, carrying the JWT's identity. A leaked ticket
//! is worth one connection for a few seconds.
//!
//! [`TicketStore`] is where tickets live:
//! - with a cluster backplane and auth on, in a JetStream key-value bucket on the
//!   backplane's NATS (`cluster_tickets.rs`), so a ticket from any node is accepted by
//!   every node, once;
//! - otherwise in this process's memory ([`Tickets`]): behind a load balancer the
//!   ticket request and the upgrade must then reach the same node. This store is
//!   bounded (`MAX_OUTSTANDING`); expired tickets are purged as new ones are issued.

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

/// Where this node's tickets live.
#[derive(Debug)]
pub(crate) enum TicketStore {
    /// Auth off: a ticket is a formality, never stored (the upgrade ignores it).
    Formal { ttl_ms: u64 },
    /// In this process's memory.
    Local(Tickets),
    /// In the backplane's JetStream key-value bucket, shared by every node.
    #[cfg(feature = "nats")]
    Cluster(super::cluster_tickets::ClusterTickets),
}

impl TicketStore {
    /// Issues a ticket carrying `identity`; returns it and its lifetime in ms.
    pub(crate) async fn issue(&self, identity: &Identity) -> Result<(String, u64), AuthError> {
        match self {
            TicketStore::Formal { ttl_ms } => Ok((new_ticket(), *ttl_ms)),
            TicketStore::Local(tickets) => tickets.issue(identity),
            #[cfg(feature = "nats")]
            TicketStore::Cluster(tickets) => tickets.issue(identity).await,
        }
    }

    /// Redeems `ticket`: valid once, before it expires, and not after the token it
    /// came from has expired.
    pub(crate) async fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        let identity = match self {
            TicketStore::Formal { .. } => Ok(Identity::anonymous()),
            TicketStore::Local(tickets) => tickets.redeem(ticket),
            #[cfg(feature = "nats")]
            TicketStore::Cluster(tickets) => tickets.redeem(ticket).await,
        }?;
        // The ticket outlived the token that requested it.
        if identity
            .expires
            .is_some_and(|exp| crate::clock::now_secs() >= exp)
        {
            return Err(AuthError::Expired);
        }
        Ok(identity)
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
