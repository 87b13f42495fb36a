//! Authentication seam and permissions (PROTOCOL.md sections 2 and 9).
//!
//! Every connection and HTTP call gets an [`Identity`] from an [`Authenticator`]. This
//! build has one, [`NoAuth`] (`auth.mode = "none"`): everyone may subscribe to and
//! publish on every topic. JWT and tickets plug in behind the same trait, so sessions
//! and handlers already ask the identity before they act.

use actix_web::HttpRequest;

use crate::pattern;

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
}

/// Who is on the other end, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, when there is one (never logged with the token).
    pub subject: Option<String>,
    /// Patterns the holder may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns the holder may publish to.
    pub publish: Vec<String>,
}

impl Identity {
    /// Anyone, allowed everything: the identity when auth is off.
    pub fn anonymous() -> Self {
        Identity {
            subject: None,
            subscribe: vec![">".into()],
            publish: vec![">".into()],
        }
    }

    /// Whether every topic `pattern` can match is granted for subscribing.
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|g| pattern::covers(g, pattern))
    }

    /// Whether publishing to `topic` is granted.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|g| pattern::covers(g, topic))
    }
}

/// Decides who a WebSocket upgrade or an API call comes from.
pub trait Authenticator: Send + Sync + 'static {
    /// Credentials on the upgrade request. `Ok(None)` means the client must send
    /// `{"op":"auth"}` first; `Err` refuses the upgrade with 401.
    fn upgrade(&self, req: &HttpRequest) -> Result<Option<Identity>, AuthError>;

    /// A token sent in `{"op":"auth"}`.
    fn token(&self, token: &str) -> Result<Identity, AuthError>;

    /// Credentials on an `/api/*` request.
    fn api(&self, req: &HttpRequest) -> Result<Identity, AuthError>;

    /// Whether authentication is on (`welcome` waits for it, `auth` ops matter).
    fn enabled(&self) -> bool;
}

/// `auth.mode = "none"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn upgrade(&self, _req: &HttpRequest) -> Result<Option<Identity>, AuthError> {
        Ok(Some(Identity::anonymous()))
    }

    fn token(&self, _token: &str) -> Result<Identity, AuthError> {
        Ok(Identity::anonymous())
    }

    fn api(&self, _req: &HttpRequest) -> Result<Identity, AuthError> {
        Ok(Identity::anonymous())
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
