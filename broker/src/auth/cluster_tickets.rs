//! Cluster-wide tickets: with a cluster backplane and `auth.mode = "jwt"`, tickets
//! live in a JetStream key-value bucket on the backplane's NATS
//! (`cluster.tickets_bucket`), so a ticket issued by any node is accepted by every
//! node sharing that backplane, and only once.
//!
//! - The key is the SHA-256 of the ticket (hex): whoever may read the bucket learns
//!   identities, not tickets it could present.
//! - The value is the identity the ticket carries and when the ticket expires. The
//!   bucket keeps entries for `auth.ticket_ttl_ms` (`max_age`) and at most
//!   [`MAX_BYTES`] in all (memory storage; a full bucket refuses new tickets: 503).
//! - Redeeming reads the entry and then marks it spent with a revision-checked update:
//!   of several nodes presented the same ticket at the same moment, exactly one
//!   update succeeds, and the others answer 401.
//!
//! The bucket is created (or updated) once the backplane's connection exists. A NATS
//! server without JetStream keeps tickets node-local, and the node says so once in its
//! log. Until the bucket is known (at most [`READY_WAIT`] after a request arrives),
//! requests wait; past that they get 503.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use herald_bridges::nats::{async_nats, ClientSlot};
use tokio::sync::watch;
use tracing::{info, warn};

use super::tickets::{new_ticket, Tickets};
use super::{AuthError, Identity, Via};

/// Most bytes the bucket holds; past it new tickets are refused (503).
const MAX_BYTES: i64 = 64 * 1024 * 1024;
/// Largest entry: an identity with its grants.
const MAX_VALUE_BYTES: i32 = 64 * 1024;
/// How long a ticket request waits for the bucket to be known.
const READY_WAIT: Duration = Duration::from_secs(2);
/// The value of a spent ticket's entry.
const SPENT: &[u8] = b"spent";

/// Where the tickets are, once the backplane has answered.
#[derive(Clone)]
enum Mode {
    /// Waiting for the backplane's connection.
    Pending,
    /// In the bucket (shared: a store handle is large, and every request uses it).
    Bucket(Arc<kv::Store>),
    /// The backplane has no JetStream: in this node's memory.
    NodeLocal,
}

/// A ticket's entry in the bucket.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    identity: Identity,
    /// When the ticket expires, in milliseconds since the Unix epoch.
    expires_ms: u64,
}

/// The cluster-wide ticket store.
pub(crate) struct ClusterTickets {
    ttl: Duration,
    mode: watch::Receiver<Mode>,
    /// Used when the backplane has no JetStream.
    local: Tickets,
}

impl std::fmt::Debug for ClusterTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTickets")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ClusterTickets {
    /// A store in `bucket` on the backplane connection `slot`; the bucket is set up
    /// by a task on the current thread as soon as the connection exists.
    pub(crate) fn start(slot: ClientSlot, bucket: String, ttl: Duration) -> ClusterTickets {
        let (tx, rx) = watch::channel(Mode::Pending);
        actix_rt::spawn(async move {
            let client = herald_bridges::nats::connection(&slot).await;
            let mode = match create_bucket(&client, &bucket, ttl).await {
                Ok(store) => {
                    let store = Arc::new(store);
                    info!(bucket = %bucket, "tickets are cluster-wide: JetStream key-value bucket on the backplane");
                    Mode::Bucket(store)
                }
                Err(e) => {
                    warn!(bucket = %bucket, error = %e, "tickets are node-local: the backplane's NATS server offers no JetStream key-value bucket; a ticket works only on the node that issued it");
                    Mode::NodeLocal
                }
            };
            let _ = tx.send(mode);
        });
        ClusterTickets {
            ttl,
            mode: rx,
            local: Tickets::new(ttl),
        }
    }

    /// Where tickets are, waiting at most [`READY_WAIT`] for the backplane.
    async fn mode(&self) -> Result<Mode, AuthError> {
        let mut rx = self.mode.clone();
        let ready = tokio::time::timeout(READY_WAIT, rx.wait_for(|m| !matches!(m, Mode::Pending)))
            .await
            .map_err(|_| unavailable("the cluster ticket store is not ready yet"))?
            .map_err(|_| unavailable("the cluster ticket store is gone"))?
            .clone();
        Ok(ready)
    }

    /// Issues a ticket carrying `identity`; returns it and its lifetime in ms.
    pub(crate) async fn issue(&self, identity: &Identity) -> Result<(String, u64), AuthError> {
        let store = match self.mode().await? {
            Mode::Bucket(store) => store,
            _ => return self.local.issue(identity),
        };
        let ticket = new_ticket();
        let mut carried = identity.clone();
        carried.via = Via::Ticket;
        let entry = Entry {
            identity: carried,
            expires_ms: crate::clock::now_ms().saturating_add(ttl_ms(self.ttl)),
        };
        let value = serde_json::to_vec(&entry)
            .map_err(|_| unavailable("cannot encode the ticket's identity"))?;
        store
            .create(key(&ticket), value.into())
            .await
            .map_err(|e| {
                // Never the key or the ticket: only what went wrong.
                warn!(error = %e.kind(), "cluster ticket not stored");
                unavailable("the cluster ticket store refused the ticket; retry shortly")
            })?;
        Ok((ticket, ttl_ms(self.ttl)))
    }

    /// Redeems `ticket`, once in the whole cluster.
    pub(crate) async fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        let store = match self.mode().await? {
            Mode::Bucket(store) => store,
            _ => return self.local.redeem(ticket),
        };
        let unknown = || AuthError::Invalid("unknown ticket (already used or expired)".into());
        let key = key(ticket);
        let entry = store
            .entry(key.as_str())
            .await
            .map_err(|_| unavailable("the cluster ticket store does not answer"))?
            .filter(|e| e.operation == kv::Operation::Put && e.value.as_ref() != SPENT)
            .ok_or_else(unknown)?;
        let carried: Entry = serde_json::from_slice(&entry.value).map_err(|_| unknown())?;
        if carried.expires_ms <= crate::clock::now_ms() {
            return Err(AuthError::Invalid("ticket expired".into()));
        }
        // Only one node's update of this revision succeeds.
        match store
            .update(key.as_str(), SPENT.into(), entry.revision)
            .await
        {
            Ok(_) => Ok(carried.identity),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(AuthError::Invalid("ticket already used".into()))
            }
            Err(_) => Err(unavailable("the cluster ticket store does not answer")),
        }
    }
}

/// The bucket, created or brought to this configuration. Its stream is set up
/// directly, as async-nats' own key-value creation would, because that first asks for
/// the account's limits in a form older servers (2.9) answer differently.
async fn create_bucket(
    client: &async_nats::Client,
    bucket: &str,
    ttl: Duration,
) -> Result<kv::Store, async_nats::Error> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    let js = async_nats::jetstream::new(client.clone());
    js.create_or_update_stream(Config {
        name: format!("KV_{bucket}"),
        description: Some("Herald one-time tickets (keys are SHA-256 of the tickets)".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        // A key-value bucket keeping one revision per key.
        max_messages_per_subject: 1,
        max_age: ttl,
        max_bytes: MAX_BYTES,
        max_message_size: MAX_VALUE_BYTES,
        storage: StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(bucket).await?)
}

/// The bucket key of `ticket`: its SHA-256, in hex.
fn key(ticket: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ticket.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(why: &str) -> AuthError {
    AuthError::Unavailable(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_digests_never_the_ticket() {
        let ticket = new_ticket();
        let k = key(&ticket);
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!k.contains(&ticket));
        assert_eq!(k, key(&ticket), "stable");
        assert_ne!(k, key(&new_ticket()));
    }
}
