// Subscribe, publish, replies and replay against a real broker.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect, HeraldError } from "../herald.js";
import { httpPublish, record, startHerald, until } from "./support.js";

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  // A 1 KiB outbound queue can never hold a 2 KB event: a real way to lose one.
  broker = await startHerald({ env: { HERALD_SESSION__QUEUE_MAX_BYTES: "1024" } });
});
after(() => broker?.kill());

/** A connected client; closed when the test ends. */
async function open(t, options = {}) {
  const h = connect(broker.ws, options);
  t.after(() => h.close());
  const welcome = await new Promise((resolve) => h.on("open", resolve));
  return { h, welcome };
}

test("subscribe, then events published over WebSocket and HTTP arrive in the protocol's shape", async (t) => {
  const { h, welcome } = await open(t);
  assert.equal(h.state, "open");
  assert.equal(welcome.type, "welcome");
  assert.equal(welcome.protocol, "herald.v1.json");
  assert.match(welcome.epoch, /^[0-9a-f]{32}$/, "an opaque id: a UUIDv7 in hex");
  assert.equal(typeof welcome.heartbeat.interval_ms, "number");

  const events = [];
  const sub = h.subscribe("basic.*", (ev) => events.push(ev));
  assert.deepEqual(sub.topics, ["basic.*"]);
  assert.equal(await sub.ready, undefined);

  assert.equal(await h.publish("basic.ws", { text: "hi" }), undefined);
  const sent = await httpPublish(broker, { topic: "basic.http", data: [1, 2], key: "k1", headers: { trace: "abc" } });
  assert.deepEqual(sent, { status: 202, body: { accepted: 1 } });
  await until(() => events.length === 2, "two events");

  const [ws, http] = events;
  assert.ok(Math.abs(ws.ts - Date.now()) < 60_000, "ts is milliseconds since the epoch");
  assert.deepEqual({ ...ws, ts: 0 }, { type: "event", topic: "basic.ws", seq: 1, ts: 0, source: "ws", data: { text: "hi" } });
  assert.deepEqual(
    { ...http, ts: 0 },
    { type: "event", topic: "basic.http", seq: 1, ts: 0, source: "http", data: [1, 2], key: "k1", headers: { trace: "abc" } },
  );
});

test("error replies reject the request's promise and leave the connection open", async (t) => {
  const { h } = await open(t);
  const rec = record(h);

  const bad = h.subscribe("bad..topic", () => assert.fail("no event for a refused subscription"));
  await assert.rejects(bad.ready, (err) => err instanceof HeraldError && err.code === "invalid_topic" && err.message.length > 0);
  await assert.rejects(h.publish("basic.*", 1), { name: "HeraldError", code: "invalid_topic" });

  assert.equal(h.state, "open");
  assert.deepEqual(rec.closes, []);
  assert.deepEqual(rec.errors, [], "errors tied to a promise are not also emitted");
  await h.publish("basic.ok", 1); // still usable
});

test("publish rejects at once when the client is not open", async (t) => {
  const h = connect(broker.ws);
  assert.equal(h.state, "connecting");
  await assert.rejects(h.publish("basic.early", 1), { code: "not_open" });
  await new Promise((resolve) => h.on("open", resolve));
  const rec = record(h);
  h.close();
  assert.equal(h.state, "closed");
  assert.deepEqual(rec.states, ["closed"]);
  assert.deepEqual(
    rec.closes.map(({ at, ...c }) => c),
    [{ code: 1000, reason: "client closed", willReconnect: false, delayMs: null }],
  );
  await assert.rejects(h.publish("basic.late", 1), { code: "not_open" });
});

test("last: N replays history flagged replay, to that subscription only, then live events follow", async (t) => {
  const batch = [1, 2, 3, 4, 5].map((n) => ({ topic: "hist.a", data: { n } }));
  assert.deepEqual(await httpPublish(broker, batch), { status: 202, body: { accepted: 5 } });

  const { h } = await open(t);
  const plain = [];
  const withLast = [];
  // Both are registered before any reply: the replay for the first reaches the
  // client while the second, which asked for no history, also matches it.
  const first = h.subscribe("hist.a", { last: 3 }, (ev) => withLast.push(ev));
  const second = h.subscribe("hist.*", (ev) => plain.push(ev));
  await Promise.all([first.ready, second.ready]);
  await until(() => withLast.length === 3, "three replayed events");
  await httpPublish(broker, { topic: "hist.a", data: { n: 6 } });
  await until(() => withLast.length === 4 && plain.length === 1, "the live event on both subscriptions");

  assert.deepEqual(
    withLast.map((e) => [e.seq, e.data.n, e.replay]),
    [
      [3, 3, true],
      [4, 4, true],
      [5, 5, true],
      [6, 6, undefined],
    ],
  );
  // The overlapping subscription asked for no history and got none.
  assert.deepEqual(
    plain.map((e) => [e.seq, e.replay]),
    [[6, undefined]],
  );
});

test("unsubscribe stops delivery, and keeps the broker subscription another subscription still uses", async (t) => {
  const { h } = await open(t);
  const got = { a: [], b: [], wide: [] };
  const a = h.subscribe("un.x", (ev) => got.a.push(ev.seq));
  const b = h.subscribe("un.x", (ev) => got.b.push(ev.seq));
  const wide = h.subscribe("un.>", (ev) => got.wide.push(ev.seq));
  await Promise.all([a.ready, b.ready, wide.ready]);
  // Connections subscribed to exactly un.x at the broker (`un.>` keeps the
  // connection receiving it either way).
  const subscribers = async () => {
    const res = await fetch(`${broker.http}/api/topics`);
    return (await res.json()).topics.find((x) => x.topic === "un.x")?.exact ?? 0;
  };

  await h.publish("un.x", 1);
  await until(() => got.wide.length === 1, "event 1");
  assert.equal(await subscribers(), 1);

  await a.unsubscribe();
  await h.publish("un.x", 2);
  await until(() => got.wide.length === 2, "event 2");
  assert.equal(await subscribers(), 1, "b still needs the broker's subscription");

  await b.unsubscribe();
  await until(async () => (await subscribers()) === 0, "the broker to drop un.x");
  await h.publish("un.x", 3);
  await until(() => got.wide.length === 3, "event 3");

  // Events reach the wildcard subscription and the matching one together, so by
  // now any event delivered to a removed subscription would be here.
  assert.deepEqual(got, { a: [1], b: [1, 2], wide: [1, 2, 3] });
  assert.equal(await a.unsubscribe(), undefined, "unsubscribing twice is harmless");
});

test("an event lost for this connection is reported as lagged and as a seq gap", async (t) => {
  const { h } = await open(t);
  const rec = record(h);
  const seqs = [];
  await h.subscribe("gap.a", (ev) => seqs.push(ev.seq)).ready;
  await httpPublish(broker, { topic: "gap.a", data: 1 });
  await httpPublish(broker, { topic: "gap.a", data: "x".repeat(2000) }); // larger than the queue
  await httpPublish(broker, { topic: "gap.a", data: 3 });
  await until(() => seqs.length === 2 && rec.lagged.length === 1, "events 1 and 3, and the lagged notice");
  assert.deepEqual(seqs, [1, 3]);
  assert.deepEqual(rec.lagged, [{ dropped: 1 }]);
  assert.deepEqual(rec.gaps, [{ topic: "gap.a", expected: 2, got: 3 }]);
});
