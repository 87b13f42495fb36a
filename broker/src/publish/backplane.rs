//! The cluster backplane: with `[cluster] backplane = "<nats bridge>"`, HTTP and
//! WebSocket publishes go to NATS (subject = `subject_prefix` + topic) and reach every
//! node, this one included, through each node's NATS bridge. There is no local
//! short-circuit, so every subscriber on every node gets each publish exactly once.
//! The event's `source` and `key` travel as `Herald-Source` / `Herald-Key` headers.
//!
//! While the bridge is disconnected, publishes fail at once (HTTP 503, `internal`
//! error reply) instead of being buffered by the NATS client and maybe lost later.
//!
//! With cluster history (`cluster.history = "jetstream"`) the subjects belong to the
//! history stream: a publish is stored there and `Ok` waits for the stream's
//! acknowledgement, so an accepted event has its position. Nodes read it back from
//! the stream ([`crate::history`]).

use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use herald_bridges::nats::{async_nats, ClientSlot, KEY_HEADER, SOURCE_HEADER};
use herald_bridges::BridgeCounters;

use super::PublishError;
use crate::topics::Event;

/// Publishing through a NATS bridge's connection.
pub(crate) struct Backplane {
    /// The bridge whose connection carries publishes.
    pub(crate) bridge: String,
    /// Its connection, once made.
    pub(crate) client: ClientSlot,
    /// Its counters: `connected` says whether a publish can go out now.
    pub(crate) counters: Arc<BridgeCounters>,
    /// `cluster.subject_prefix`.
    pub(crate) prefix: String,
    /// Set once the node stops its bridges (shutdown): publishes are refused from
    /// then on, as a draining client may drop them after this node said `202`.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Publishes are stored in the cluster history stream, acknowledged.
    pub(crate) stored: bool,
}

/// An event made ready for NATS: subject, headers and payload, built once.
#[derive(Debug)]
pub(crate) struct Outgoing {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backplane")
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

impl Backplane {
    /// Builds the NATS message of `event`, refusing what NATS itself would refuse,
    /// so a batch can be refused whole before anything of it is sent: header names
    /// and values NATS cannot carry, and payloads over the server's `max_payload`.
    pub(crate) fn prepare(&self, event: Event) -> Result<Outgoing, PublishError> {
        let headers = self.headers(&event)?;
        if let Some(client) = self.client.get() {
            let max = client.server_info().max_payload;
            if max > 0 && event.payload.len() > max {
                return Err(PublishError::TooLarge(format!(
                    "data is {} bytes; the NATS server accepts at most {max}",
                    event.payload.len()
                )));
            }
        }
        Ok(Outgoing {
            subject: format!("{}{}", self.prefix, event.topic),
            headers,
            payload: event.payload,
        })
    }

    /// The NATS headers of `event`. User headers named like Herald's own are left
    /// out, so a publisher cannot forge `Herald-Source` or `Herald-Key`.
    fn headers(&self, event: &Event) -> Result<async_nats::HeaderMap, PublishError> {
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

    /// The bridge's connection, when it is up: publishes fail at once while it is
    /// down rather than wait in the NATS client's buffer.
    pub(crate) fn connection(&self) -> Result<&async_nats::Client, PublishError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(self.down("this node is shutting down".into()));
        }
        if !self.counters.connected.load(Ordering::Relaxed) {
            return Err(self.down("disconnected from NATS".into()));
        }
        self.client
            .get()
            .ok_or_else(|| self.down("not connected yet".into()))
    }

    fn down(&self, why: String) -> PublishError {
        PublishError::BackplaneDown(format!("bridge {}: {why}", self.bridge))
    }

    /// Publishes a prepared event to NATS. `Ok` means handed to a connected NATS
    /// client; with cluster history, stored in the stream ([`Backplane::store`]).
    pub(crate) async fn send(&self, out: Outgoing) -> Result<(), PublishError> {
        if self.stored {
            return self.store(vec![out]).await.map_err(|(_, _, e)| e);
        }
        self.connection()?
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .map_err(|e| self.down(e.to_string()))
    }

    /// Publishes prepared events in order. `Err` carries the index of the first
    /// event that failed and how many were accepted in all (with the stream, events
    /// after a failed one may have been stored too).
    pub(crate) async fn send_all(
        &self,
        outs: Vec<Outgoing>,
    ) -> Result<(), (usize, usize, PublishError)> {
        if self.stored {
            return self.store(outs).await;
        }
        for (i, out) in outs.into_iter().enumerate() {
            self.send(out).await.map_err(|e| (i, i, e))?;
        }
        Ok(())
    }

    /// Stores events in the history stream, in order: every event is sent before
    /// any acknowledgement is awaited (a batch costs about one round trip, not one
    /// per event). Errors as [`Backplane::send_all`]'s.
    async fn store(&self, outs: Vec<Outgoing>) -> Result<(), (usize, usize, PublishError)> {
        let refused = |e: &dyn std::fmt::Display| self.down(format!("history stream: {e}"));
        let client = self.connection().map_err(|e| (0, 0, e))?;
        let js = async_nats::jetstream::new(client.clone());
        let mut acks = Vec::with_capacity(outs.len());
        let mut first = None;
        for (i, out) in outs.into_iter().enumerate() {
            match js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    first = Some((i, refused(&e)));
                    break;
                }
            }
        }
        let mut accepted = 0;
        for (i, ack) in futures_util::future::join_all(
            acks.into_iter().map(std::future::IntoFuture::into_future),
        )
        .await
        .into_iter()
        .enumerate()
        {
            match ack {
                Ok(_) => accepted += 1,
                Err(e) if first.as_ref().is_none_or(|(at, _)| i < *at) => {
                    first = Some((i, refused(&e)));
                }
                Err(_) => {}
            }
        }
        match first {
            None => Ok(()),
            Some((i, e)) => Err((i, accepted, e)),
        }
    }
}

fn header_value(name: &str, value: &str) -> Result<async_nats::HeaderValue, PublishError> {
    async_nats::HeaderValue::from_str(value).map_err(|_| {
        PublishError::InvalidHeader(format!(
            "the value of header `{name}` is not valid for NATS"
        ))
    })
}
