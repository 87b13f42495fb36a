// Cluster history (`cluster.history = "jetstream"`): three real nodes on a private
// nats-server with JetStream. Positions are the stream's, so the client resumes on
// whichever node it reaches, through a rolling restart, without a reset, a gap or a
// duplicate; and `prev` shows a gap where there is one.

import assert from "node:assert/strict";
import { test } from "node:test";

import { connect } from "../herald.js";
import { clusterNodeEnv, httpPublish, Proxy, record, startHerald, startNats, until } from "./support.js";

test("a rolling restart moves the client from node to node with every event once, in order, and no reset", { timeout: 120_000 }, async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  const env = clusterNodeEnv(nats.url, "JSROLL");
  const nodes = [];
  for (let i = 0; i < 3; i++) nodes.push(await startHerald({ env }));
  t.after(() => Promise.all(nodes.map((n) => n.kill())));
  // The load balancer: node 0 first.
  const proxy = await new Proxy(nodes[0].port).listen();
  t.after(() => proxy.close());
  const h = connect(proxy.ws, { backoff: { initialMs: 50, maxMs: 200 } });
  t.after(() => h.close());
  const rec = record(h);
  const events = [];
  await h.subscribe("roll.*", (ev) => events.push(ev)).ready;

  let n = 0;
  const publish = (node) => httpPublish(node, { topic: `roll.t${n % 2}`, data: n++ });
  for (let i = 0; i < 4; i++) await publish(nodes[1]);
  await until(() => events.length === n, "events before the restart");
  // Restart each node in turn; clients on it move to the next one, and events are
  // published meanwhile through another node.
  for (let i = 0; i < 3; i++) {
    const next = (i + 1) % 3;
    proxy.retarget(nodes[next].port);
    const opens = rec.opens.length;
    await nodes[i].terminate();
    for (let k = 0; k < 5; k++) await publish(nodes[(i + 2) % 3]);
    await until(() => rec.opens.length === opens + 1, `a welcome from node ${next}`);
    nodes[i] = await startHerald({ env });
    for (let k = 0; k < 3; k++) await publish(nodes[i]);
    await until(() => events.length === n, `every event after restarting node ${i}`);
  }

  assert.deepEqual(rec.resets, [], "positions are the cluster's: nothing to reset");
  assert.deepEqual(rec.gaps, []);
  assert.equal(new Set(rec.opens.map((w) => w.epoch)).size, 1, "one epoch on every node");
  for (const topic of ["roll.t0", "roll.t1"]) {
    const of = events.filter((e) => e.topic === topic);
    assert.deepEqual(
      of.map((e) => e.data),
      [...Array(n).keys()].filter((d) => `roll.t${d % 2}` === topic),
      `${topic}: every event once, in order`,
    );
    for (let k = 1; k < of.length; k++) assert.equal(of[k].prev, of[k - 1].seq, `${topic}: prev chains`);
  }
});

test("an event lost for this connection shows as a gap through prev, and nothing else does", { timeout: 60_000 }, async (t) => {
  const nats = await startNats();
  t.after(() => nats.stop());
  // A queue smaller than one of the events below: that event is dropped for the
  // connection (deterministically), as for a slow consumer.
  const env = { ...clusterNodeEnv(nats.url, "JSGAP"), HERALD_SESSION__QUEUE_MAX_BYTES: "1024" };
  const node = await startHerald({ env });
  t.after(() => node.kill());
  const h = connect(node.ws);
  t.after(() => h.close());
  const rec = record(h);
  const events = [];
  await h.subscribe("gap.a", (ev) => events.push(ev)).ready;
  // Another topic in between: positions of gap.a are not contiguous, yet no gap.
  await httpPublish(node, { topic: "gap.a", data: 1 });
  await httpPublish(node, { topic: "gap.other", data: 0 });
  await httpPublish(node, { topic: "gap.a", data: 2 });
  await until(() => events.length === 2, "two events");
  assert.equal(events[1].prev, events[0].seq);
  assert.notEqual(events[1].seq, events[0].seq + 1);
  assert.deepEqual(rec.gaps, [], "no false gap");
  await httpPublish(node, { topic: "gap.a", data: "x".repeat(2000) }); // larger than the queue
  await httpPublish(node, { topic: "gap.a", data: 4 });
  await until(() => events.length === 3 && rec.lagged.length === 1, "event 4 and the lagged notice");
  const [, second, fourth] = events;
  assert.deepEqual(rec.gaps, [{ topic: "gap.a", expected: second.seq + 1, got: fourth.seq, prev: fourth.prev }]);
  assert.ok(fourth.prev > second.seq && fourth.prev < fourth.seq, "prev names the lost event");
});
