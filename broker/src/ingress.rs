//! Where a bridge's events enter the topic layer: one `Ingress` actor per bridge.
//!
//! A bridge hands events to its ingress with `try_send` on a bounded mailbox
//! (`server.ingest_capacity`), so a slow broker never makes a bridge buffer without
//! bound: overflow is dropped and counted by the bridge. The ingress then routes each
//! event to its topic's shard (itself a bounded `try_send`). One ingress per bridge
//! keeps any single actor off the path of every event.

use actix::prelude::*;
use herald_bridges::BridgeEvent;

use crate::registry::Registry;

/// The hand-off from one bridge to the registry.
pub struct Ingress {
    registry: Registry,
    capacity: usize,
}

impl Ingress {
    pub fn new(registry: Registry, capacity: usize) -> Self {
        Ingress { registry, capacity }
    }
}

impl Actor for Ingress {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<BridgeEvent> for Ingress {
    type Result = ();

    fn handle(&mut self, event: BridgeEvent, _ctx: &mut Self::Context) {
        // Invalid topics and a full shard are counted by the registry
        // (herald_events_dropped_total{reason="invalid_topic"|"topic_busy"}).
        let _ = self.registry.publish(event);
    }
}
