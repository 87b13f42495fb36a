// A subscription's own events against a real broker: `event`, `gap` and `lagged` for
// the subscriptions they concern, `reset` for the subscriptions that resumed the
// topic, while the client-level events keep firing as before.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect } from "../herald.js";
import { freePort, httpPublish, record, startHerald, until } from "./support.js";

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  // A 1 KiB outbound queue can never hold a 2 KB event: a real way to lose one.
  broker = await startHerald({ env: { HERALD_SESSION__QUEUE_MAX_BYTES: "1024" } });
});
after(() => broker?.kill());

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

/** Records what one subscription reports about itself. */
function recordSub(sub) {
  const rec = { events: [], gaps: [], resets: [], lagged: [], errors: [] };
  sub
    .on("event", (ev) => rec.events.push(ev))
    .on("gap", (info) => rec.gaps.push(info))
    .on("reset", (info) => rec.resets.push(info))
    .on("lagged", (info) => rec.lagged.push(info))
    .on("error", (err) => rec.errors.push(err));
  return rec;
}

const byTopic = (list) => [...list].sort((x, y) => x.topic.localeCompare(y.topic));

test("a lost event: gap for each subscription that covers its topic, lagged for every subscription", async (t) => {
  const h = connect(broker.ws);
  t.after(() => h.close());
  const client = record(h);
  await opened(h);

  const handled = [];
  const wide = h.subscribe("ps.*", (ev) => handled.push(ev.seq));
  const exact = h.subscribe("ps.x");
  const other = h.subscribe("po.y"); // on the same connection, never sees ps.x
  const [w, e, o] = [wide, exact, other].map(recordSub);
  const removed = [];
  const removedListener = (ev) => removed.push(ev);
  wide.on("event", removedListener).off("event", removedListener);
  await Promise.all([wide.ready, exact.ready, other.ready]);

  await httpPublish(broker, { topic: "ps.x", data: 1 });
  await httpPublish(broker, { topic: "ps.x", data: "x".repeat(2000) }); // never fits the queue
  await httpPublish(broker, { topic: "ps.x", data: 3 });
  await until(
    () => w.events.length === 2 && e.events.length === 2 && client.lagged.length === 1,
    "events 1 and 3 on both subscriptions, and the lagged notice",
  );

  // The listener and the handler get the same events, in order.
  assert.deepEqual(handled, [1, 3]);
  assert.deepEqual(w.events.map((ev) => [ev.topic, ev.seq, ev.data]), [["ps.x", 1, 1], ["ps.x", 3, 3]]);
  assert.deepEqual(e.events.map((ev) => ev.seq), [1, 3]);
  assert.deepEqual(o.events, []);
  assert.deepEqual(removed, [], "a listener removed with off() gets nothing");

  // Each subscription that receives ps.x saw the jump; the other did not.
  assert.deepEqual(w.gaps, [{ topic: "ps.x", expected: 2, got: 3 }]);
  assert.deepEqual(e.gaps, [{ topic: "ps.x", expected: 2, got: 3 }]);
  assert.deepEqual(o.gaps, []);
  // lagged is per connection: the broker cannot say which topics lost events.
  for (const rec of [w, e, o]) assert.deepEqual(rec.lagged, [{ dropped: 1, reason: "queue_full" }]);

  // The client-level events are unchanged: one gap for the lost stretch, one lagged.
  assert.deepEqual(client.gaps, [{ topic: "ps.x", expected: 2, got: 3 }]);
  assert.deepEqual(client.lagged, [{ dropped: 1 }]);
  assert.deepEqual([...w.resets, ...e.resets, ...o.resets, ...w.errors, ...e.errors, ...o.errors], []);
});

test("after a broker restart each subscription gets a reset for each topic it had resumed, once", { timeout: 120_000 }, async (t) => {
  const port = await freePort();
  let b = await startHerald({ port });
  t.after(() => b.kill());
  const h = connect(b.ws, { backoff: { initialMs: 50, maxMs: 500 } });
  t.after(() => h.close());
  const client = record(h);
  await opened(h);

  const wide = h.subscribe("rr.*");
  const exact = h.subscribe("rr.a"); // overlaps `wide` on rr.a
  const other = h.subscribe("rq.z"); // never saw an event: nothing to reset
  const [w, e, o] = [wide, exact, other].map(recordSub);
  await Promise.all([wide.ready, exact.ready, other.ready]);
  await httpPublish(b, [
    { topic: "rr.a", data: 1 },
    { topic: "rr.b", data: 2 },
  ]);
  await until(() => w.events.length === 2 && e.events.length === 1, "the events before the restart");

  await b.kill();
  await until(() => h.state === "reconnecting", "state reconnecting");
  b = await startHerald({ port });
  // Both resubscribes carry an old position for rr.a, each with a newly subscribed
  // pattern, so the broker resets rr.a once per request: three resets in all.
  await until(() => client.resets.length === 3, "the broker's three resets");
  assert.deepEqual(byTopic(client.resets), [
    { topic: "rr.a", reason: "epoch_changed" },
    { topic: "rr.a", reason: "epoch_changed" },
    { topic: "rr.b", reason: "epoch_changed" },
  ]);
  // Per subscription, each position it lost is reported once.
  assert.deepEqual(byTopic(w.resets), [
    { topic: "rr.a", reason: "epoch_changed" },
    { topic: "rr.b", reason: "epoch_changed" },
  ]);
  assert.deepEqual(e.resets, [{ topic: "rr.a", reason: "epoch_changed" }]);
  assert.deepEqual(o.resets, []);

  // The new history starts at 1, and that is not a gap.
  await httpPublish(b, { topic: "rr.a", data: 3 });
  await until(() => w.events.length === 3 && e.events.length === 2, "an event after the restart");
  assert.deepEqual([w.events[2].seq, e.events[1].seq], [1, 1]);
  assert.deepEqual([...w.gaps, ...e.gaps, ...client.gaps], []);
  assert.deepEqual(client.resets.length, 3, "no further reset");
});
