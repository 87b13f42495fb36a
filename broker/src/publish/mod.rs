//! The way into the topic layer. Every event enters through here: HTTP, WebSocket
//! and embedded publishes through [`Publisher`] (straight to the local topic, or with
//! a backplane through NATS to every node), and each bridge's events through its
//! sink (`bridges.rs`), which also starts and stops the bridge tasks.

use herald_bridges::topic::TopicError;

#[cfg(feature = "nats")]
mod backplane;
pub(crate) mod bridges;

pub(crate) use bridges::Bridges;

use crate::metrics::{DropReason, METRICS};
use crate::topics::{Event, Registry};

/// Why a publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    #[error("the broker is overloaded (topic queue full); event dropped")]
    Busy,
    #[error("the cluster backplane is down ({0}); event not published")]
    BackplaneDown(String),
    #[error("{0}")]
    InvalidHeader(String),
    #[error("{0}")]
    TooLarge(String),
}

impl PublishError {
    /// The error code a client sees for it.
    pub fn code(&self) -> crate::protocol::ErrorCode {
        use crate::protocol::ErrorCode;
        match self {
            PublishError::InvalidTopic(_) => ErrorCode::InvalidTopic,
            PublishError::InvalidHeader(_) => ErrorCode::BadRequest,
            PublishError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            PublishError::Busy | PublishError::BackplaneDown(_) => ErrorCode::Internal,
        }
    }
}

/// An event ready to go: validated, and with a backplane, its NATS message built.
/// Made by [`Publisher::prepare`], so a batch can be refused whole before any of it
/// is sent, and nothing is built twice.
#[derive(Debug)]
pub(crate) struct Prepared(Route);

#[derive(Debug)]
enum Route {
    Local(Event),
    #[cfg(feature = "nats")]
    Backplane(backplane::Outgoing),
}

/// Where publishes go: the local registry, or the cluster backplane.
pub(crate) struct Publisher {
    registry: Registry,
    #[cfg(feature = "nats")]
    backplane: Option<backplane::Backplane>,
}

impl Publisher {
    /// A publisher into `registry`, through the backplane that `bridges` set up
    /// when `cluster.backplane` names one (subjects are `prefix` + topic).
    pub(crate) fn new(registry: Registry, bridges: &Bridges, prefix: &str) -> Self {
        #[cfg(not(feature = "nats"))]
        let _ = (bridges, prefix);
        Publisher {
            registry,
            #[cfg(feature = "nats")]
            backplane: bridges.backplane(prefix),
        }
    }

    /// The local registry.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Makes `event` ready to publish: with a backplane, checks and builds its NATS
    /// message (headers NATS cannot carry and payloads over its limit are refused).
    pub(crate) fn prepare(&self, event: Event) -> Result<Prepared, PublishError> {
        #[cfg(feature = "nats")]
        if let Some(backplane) = &self.backplane {
            return backplane
                .prepare(event)
                .map(|out| Prepared(Route::Backplane(out)));
        }
        Ok(Prepared(Route::Local(event)))
    }

    /// Publishes a prepared event: to its local topic, or to NATS (every node, this
    /// one included, receives it through its NATS bridge; counted in
    /// `herald_events_in_total` when it comes back). Best-effort: `Ok` means
    /// accepted for fan-out, not delivered.
    pub(crate) async fn send(&self, prepared: Prepared) -> Result<(), PublishError> {
        match prepared.0 {
            Route::Local(event) => self.registry.publish(event),
            #[cfg(feature = "nats")]
            Route::Backplane(out) => match &self.backplane {
                Some(backplane) => backplane.send(out).await,
                // Only a publisher with a backplane prepares for one.
                None => Err(PublishError::BackplaneDown("no backplane".into())),
            },
        }
    }

    /// Publishes prepared events in order (a batch of `POST /api/publish`). `Err`
    /// carries the index of the first event that failed and how many were accepted
    /// in all (see [`backplane::Backplane::send_all`]).
    pub(crate) async fn send_all(
        &self,
        prepared: Vec<Prepared>,
    ) -> Result<(), (usize, usize, PublishError)> {
        #[cfg(feature = "nats")]
        if let Some(backplane) = &self.backplane {
            let outs = prepared
                .into_iter()
                .filter_map(|p| match p.0 {
                    Route::Backplane(out) => Some(out),
                    // Only a publisher without a backplane prepares for the registry.
                    Route::Local(_) => None,
                })
                .collect();
            return backplane.send_all(outs).await;
        }
        for (i, p) in prepared.into_iter().enumerate() {
            self.send(p).await.map_err(|e| (i, i, e))?;
        }
        Ok(())
    }

    /// Prepares and sends one event. With a backplane that is down, the answer is
    /// `BackplaneDown` before anything else is checked.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), PublishError> {
        #[cfg(feature = "nats")]
        if let Some(backplane) = &self.backplane {
            backplane.connection()?;
        }
        let prepared = self.prepare(event)?;
        self.send(prepared).await
    }

    /// Validates an event from code that has not (an embedding application): an
    /// invalid topic is counted as `invalid_topic` and refused.
    pub(crate) fn validate(event: herald_bridges::BridgeEvent) -> Result<Event, PublishError> {
        Event::try_from(event).map_err(|e| {
            METRICS.dropped(DropReason::InvalidTopic, 1);
            PublishError::InvalidTopic(e)
        })
    }
}
