//! Authentication seam and permissions (docs/protocol.md#authentication).
//!
//! Every connection and HTTP call gets an [`Identity`] from an [`Authenticator`]:
//! [`NoAuth`] (`auth.mode = "none"`: everyone may subscribe to and publish on every
//! topic) or [`crate::auth::jwt::JwtAuth`] (`auth.mode = "jwt"`: JWTs, API keys and
//! tickets). Sessions and handlers ask the identity before they act, whichever it is.

#[cfg(feature = "nats")]
pub(crate) mod cluster_tickets;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod ticket_rate;
pub(crate) mod tickets;

use actix_web::HttpRequest;
use futures_util::future::BoxFuture;

use crate::topic;

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    #[error("credentials expired")]
    Expired,
    /// Signed with a key id the JWKS does not hold (after fetching it again).
    #[error("invalid credentials: signed with a key this server does not know")]
    UnknownKey,
    /// `auth.jwks_url` has not been fetched successfully yet.
    #[error("the identity provider's signing keys (auth.jwks_url) could not be fetched yet")]
    NoKeysYet,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// Whether fetching the signing keys again could change the answer.
    pub(crate) fn wants_fresh_keys(&self) -> bool {
        matches!(self, AuthError::UnknownKey | AuthError::NoKeysYet)
    }
}

/// Runs `check` and, when it refused a token signed with a key this node has not
/// fetched, refreshes the keys ([`Authenticator::refresh_keys`]) and runs it once
/// more: a provider may sign with a key the moment it publishes it.
pub(crate) async fn with_fresh_keys<T>(
    auth: &dyn Authenticator,
    check: impl Fn(&dyn Authenticator) -> Result<T, AuthError>,
) -> Result<T, AuthError> {
    match check(auth) {
        Err(e) if e.wants_fresh_keys() => {
            auth.refresh_keys().await;
            check(auth)
        }
        done => done,
    }
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Via {
    /// Auth is off.
    Anonymous,
    /// A verified JWT (upgrade header, `{"op":"auth"}` or `/api/*` Bearer).
    Jwt,
    /// A one-time ticket, carrying the identity of the JWT that requested it.
    Ticket,
    /// An API key: a trusted backend on `/api/*`.
    ApiKey,
}

/// Who is on the other end, and what they may do. Serializable: a cluster-wide
/// ticket carries it through the backplane's key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Identity {
    /// The token's `sub`, when there is one (never logged with the token).
    pub subject: Option<String>,
    /// Patterns the holder may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns the holder may publish to.
    pub publish: Vec<String>,
    /// When the credentials expire (the JWT's `exp`, Unix seconds): a session is
    /// closed with 4001 then, unless a new `{"op":"auth"}` extends it.
    pub expires: Option<u64>,
    /// How the identity was established.
    pub via: Via,
}

impl Identity {
    /// Anyone, allowed everything: the identity when auth is off.
    pub(crate) fn anonymous() -> Self {
        Identity {
            subject: None,
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            expires: None,
            via: Via::Anonymous,
        }
    }

    /// Whether every topic `pattern` can match is granted for subscribing.
    pub(crate) fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|g| topic::covers(g, pattern))
    }

    /// Whether publishing to `topic` is granted.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|g| topic::covers(g, topic))
    }
}

/// Decides who a WebSocket upgrade or an API call comes from.
pub(crate) trait Authenticator: Send + Sync + 'static {
    /// Credentials on the upgrade request; `Err` refuses the upgrade with 401.
    fn upgrade(&self, req: &HttpRequest) -> Result<Upgrade, AuthError>;

    /// A token sent in `{"op":"auth"}`.
    fn token(&self, token: &str) -> Result<Identity, AuthError>;

    /// Credentials on an `/api/*` request.
    fn api(&self, req: &HttpRequest) -> Result<Identity, AuthError>;

    /// Whether `identity` may request a one-time ticket (`POST /api/tickets`); the
    /// ticket store ([`tickets::TicketStore`]) issues it.
    fn may_request_ticket(&self, identity: &Identity) -> Result<(), AuthError>;

    /// Whether authentication is on (`welcome` waits for it, `auth` ops matter).
    fn enabled(&self) -> bool;

    /// Fetches the signing keys again after a refusal that
    /// [`AuthError::wants_fresh_keys`]; see [`with_fresh_keys`]. Nothing to fetch by
    /// default.
    fn refresh_keys(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// What the credentials on an upgrade request say.
#[derive(Debug)]
pub(crate) enum Upgrade {
    /// Who the client is (a verified JWT, or anyone with auth off).
    Identified(Identity),
    /// A one-time ticket, to redeem with the ticket store.
    Ticket(String),
    /// None: the client must send `{"op":"auth"}` first.
    Later,
}

/// `auth.mode = "none"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoAuth;

impl Authenticator for NoAuth {
    fn upgrade(&self, _req: &HttpRequest) -> Result<Upgrade, AuthError> {
        Ok(Upgrade::Identified(Identity::anonymous()))
    }

    fn token(&self, _token: &str) -> Result<Identity, AuthError> {
        Ok(Identity::anonymous())
    }

    fn api(&self, _req: &HttpRequest) -> Result<Identity, AuthError> {
        Ok(Identity::anonymous())
    }

    /// With auth off a ticket is a formality (every connection is anonymous
    /// anyway), so a client that always asks for one works in both modes.
    fn may_request_ticket(&self, _identity: &Identity) -> Result<(), AuthError> {
        Ok(())
    }

    fn enabled(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_follow_pattern_coverage() {
        let id = Identity {
            subject: Some("u1".into()),
            subscribe: vec!["orders.*".into(), "news.>".into()],
            publish: vec!["chat.*".into()],
            expires: None,
            via: Via::Jwt,
        };
        assert!(id.may_subscribe("orders.eu"));
        assert!(id.may_subscribe("orders.*"));
        assert!(!id.may_subscribe("orders.>"));
        assert!(id.may_subscribe("news.a.b"));
        assert!(!id.may_subscribe("admin.>"));
        assert!(id.may_publish("chat.room1"));
        assert!(!id.may_publish("orders.eu"));
        assert!(Identity::anonymous().may_subscribe(">"));
        assert!(Identity::anonymous().may_publish("x.y.z"));
    }
}
