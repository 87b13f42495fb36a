//! The cluster backplane: with `[cluster] backplane = "<nats bridge>"`, HTTP and
//! WebSocket publishes go to NATS (subject = `subject_prefix` + topic) and reach every
//! node, this one included, through each node's NATS bridge. There is no local
//! short-circuit, so every subscriber on every node gets each publish exactly once.
//! The event's `source` and `key` travel as `Herald-Source` / `Herald-Key` headers.
//!
//! While the bridge is disconnected, publishes fail at once (HTTP 503, `internal`
//! error reply) instead of being buffered by the NATS client and maybe lost later.

use std::str::FromStr as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_bridges::nats::{async_nats, ClientSlot, KEY_HEADER, SOURCE_HEADER};
use herald_bridges::{BridgeCounters, BridgeEvent};

use crate::registry::PublishError;

/// Publishing through a NATS bridge's connection.
pub struct Backplane {
    /// The bridge whose connection carries publishes.
    pub bridge: String,
    pub client: ClientSlot,
    pub counters: Arc<BridgeCounters>,
    /// `cluster.subject_prefix`.
    pub prefix: String,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backplane")
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

impl Backplane {
    /// Checks what NATS itself would refuse, before anything of a batch is sent:
    /// header names and values NATS cannot carry, and payloads over the server's
    /// `max_payload`.
    pub fn check(&self, event: &BridgeEvent) -> Result<(), PublishError> {
        self.headers(event).map(drop)?;
        if let Some(client) = self.client.get() {
            let max = client.server_info().max_payload;
            if max > 0 && event.payload.len() > max {
                return Err(PublishError::TooLarge(format!(
                    "data is {} bytes; the NATS server accepts at most {max}",
                    event.payload.len()
                )));
            }
        }
        Ok(())
    }

    /// The NATS headers of `event`. User headers named like Herald's own are left
    /// out, so a publisher cannot forge `Herald-Source` or `Herald-Key`.
    fn headers(&self, event: &BridgeEvent) -> Result<async_nats::HeaderMap, PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            if name.eq_ignore_ascii_case(SOURCE_HEADER) || name.eq_ignore_ascii_case(KEY_HEADER) {
                continue;
            }
            // Parsed, not `insert(&str)`: that asserts, and these come from users.
            let parsed = async_nats::HeaderName::from_str(name).map_err(|_| {
                PublishError::InvalidHeader(format!("header name `{name}` is not valid for NATS"))
            })?;
            headers.insert(parsed, header_value(name, value)?);
        }
        headers.insert(SOURCE_HEADER, event.source.as_str());
        if let Some(key) = &event.key {
            headers.insert(KEY_HEADER, header_value(KEY_HEADER, key)?);
        }
        Ok(headers)
    }

    /// Publishes `event` to NATS. `Ok` means handed to a connected NATS client.
    pub async fn publish(&self, event: BridgeEvent) -> Result<(), PublishError> {
        let down =
            |why: String| PublishError::BackplaneDown(format!("bridge {}: {why}", self.bridge));
        if !self.counters.connected.load(Ordering::Relaxed) {
            return Err(down("disconnected from NATS".into()));
        }
        let client = self
            .client
            .get()
            .ok_or_else(|| down("not connected yet".into()))?;
        self.check(&event)?;
        let headers = self.headers(&event)?;
        let subject = format!("{}{}", self.prefix, event.topic);
        client
            .publish_with_headers(subject, headers, event.payload)
            .await
            .map_err(|e| down(e.to_string()))
    }
}

fn header_value(name: &str, value: &str) -> Result<async_nats::HeaderValue, PublishError> {
    async_nats::HeaderValue::from_str(value).map_err(|_| {
        PublishError::InvalidHeader(format!(
            "the value of header `{name}` is not valid for NATS"
        ))
    })
}
