// The Server-Sent Events transport against a real broker: `transport: "sse"` (the
// stream carries the subscriptions, a change reopens it with `resume`, publish is
// POST /api/publish), credentials as tickets, a refused stream explained, and
// `transport: "auto"` falling back through a proxy that refuses upgrades and coming
// back once upgrades get through. Node 20 has no EventSource: the `eventsource`
// package's follows the WHATWG one.

import assert from "node:assert/strict";
import { test } from "node:test";

import { EventSource } from "eventsource";

import { connect, HeraldError } from "../herald.js";
import {
  freePort,
  httpPublish,
  Proxy,
  record,
  signJwt,
  sleep,
  startHerald,
  startJwtHerald,
  until,
  UpgradeRefusingProxy,
} from "./support.js";

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

/**
 * A broker that pings every second. A stream whose client went away is found when a
 * write to it fails, at the latest at a ping: tests that count the broker's streams
 * after the client replaced some do not wait the default 25 s.
 */
const startPinging = () =>
  startHerald({ env: { HERALD_SESSION__HEARTBEAT_INTERVAL_MS: "1000", HERALD_SESSION__HEARTBEAT_TIMEOUT_MS: "1000" } });

/** A client over SSE (`options` added) that the test closes when it ends. */
function sseClient(t, url, options) {
  const h = connect(url, { transport: "sse", EventSource, ...options });
  t.after(() => h.close());
  return h;
}

/**
 * Publishes to `topic` without pause (one request at a time, `pauseMs` apart) until
 * `stop()`, which resolves with how many were sent: events flow through whatever the
 * test does meanwhile.
 */
function keepPublishing(broker, topic, pauseMs) {
  let sent = 0;
  let publishing = true;
  const done = (async () => {
    while (publishing) {
      await httpPublish(broker, { topic, data: ++sent });
      await sleep(pauseMs);
    }
  })();
  return {
    async stop() {
      publishing = false;
      await done;
      return sent;
    },
  };
}

/** A gauge of the broker's /metrics, e.g. `herald_connections{transport="sse"}`. */
async function metric(broker, sample) {
  const text = await (await fetch(`${broker.http}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  return line === undefined ? 0 : Number(line.split(" ")[1]);
}

/** The seqs a list of events carries for `topic`, in order. */
const seqs = (events, topic) => events.filter((e) => e.topic === topic).map((e) => e.seq);

/** 1..n */
const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);

test("over SSE: history, live events, publish over HTTP, no ping, one stream on the broker", { timeout: 60_000 }, async (t) => {
  const broker = await startHerald();
  t.after(() => broker.kill());
  await httpPublish(broker, [
    { topic: "s.a", data: 1 },
    { topic: "s.a", data: 2 },
  ]);
  const h = sseClient(t, broker.ws);
  const rec = record(h);
  assert.equal(h.transport, "sse");
  const events = [];
  const sub = h.subscribe("s.*", { last: 5 }, (ev) => events.push(ev));
  const welcome = await opened(h);
  assert.equal(welcome.type, "welcome");
  await sub.ready;
  await until(() => events.length === 2, "the two events of history");
  assert.deepEqual(
    events.map((e) => [e.topic, e.seq, e.data, e.replay]),
    [
      ["s.a", 1, 1, true],
      ["s.a", 2, 2, true],
    ],
  );
  await h.publish("s.b", { n: 3 }, { key: "k", headers: { trace: "t1" } });
  await until(() => events.length === 3, "the published event, live");
  assert.deepEqual(
    [events[2].topic, events[2].seq, events[2].data, events[2].key, events[2].headers, events[2].source],
    ["s.b", 1, { n: 3 }, "k", { trace: "t1" }, "http"],
  );
  await assert.rejects(h.publish("s.*", 1), (err) => err instanceof HeraldError && err.code === "invalid_topic");
  await assert.rejects(h.ping(), (err) => err instanceof HeraldError && err.code === "not_supported");
  assert.equal(await metric(broker, 'herald_connections{transport="sse"}'), 1);
  assert.equal(await metric(broker, 'herald_connections{transport="websocket"}'), 0);
  assert.deepEqual(rec.states, ["open"]);
  assert.deepEqual(rec.closes, []);
});

test("over SSE, subscribing and unsubscribing reopen the stream quietly, with no event lost or repeated", { timeout: 60_000 }, async (t) => {
  const broker = await startPinging();
  t.after(() => broker.kill());
  const h = sseClient(t, broker.ws);
  const rec = record(h);
  const a = [];
  await h.subscribe("q.a", (ev) => a.push(ev)).ready;
  // Every reopen happens while events flow.
  const publisher = keepPublishing(broker, "q.a", 2);
  const b = [];
  const subB = h.subscribe("q.b", { last: 3 }, (ev) => b.push(ev));
  await subB.ready;
  const c = h.subscribe("q.c", () => {});
  await c.ready;
  await c.unsubscribe();
  await sleep(100);
  await subB.unsubscribe();
  await httpPublish(broker, { topic: "q.b", data: "after unsubscribe" });
  await sleep(100);
  const sent = await publisher.stop();
  await until(() => a.length === sent, `all ${sent} events of q.a`);
  assert.deepEqual(seqs(a, "q.a"), upTo(sent), "every event once, in order, across four reopens");
  assert.deepEqual(b, [], "q.b had no history and nothing was published to it while subscribed");
  assert.deepEqual(rec.gaps, []);
  assert.deepEqual(rec.resets, []);
  assert.deepEqual(rec.closes, [], "a reopen is no close for the application");
  assert.equal(rec.opens.length, 1, "nor a second open");
  await until(async () => (await metric(broker, 'herald_connections{transport="sse"}')) === 1, "one stream left");
});

test("over SSE, a subscription added to a running stream gets its history (last), the others only what is new", { timeout: 60_000 }, async (t) => {
  const broker = await startHerald();
  t.after(() => broker.kill());
  const h = sseClient(t, broker.ws);
  const rec = record(h);
  const x = [];
  await h.subscribe("l.x", (ev) => x.push(ev)).ready;
  await httpPublish(broker, [
    { topic: "l.x", data: 1 },
    { topic: "l.y", data: 2 },
    { topic: "l.y", data: 3 },
  ]);
  await until(() => x.length === 1, "l.x's live event");
  const y = [];
  await h.subscribe("l.y", { last: 10 }, (ev) => y.push(ev)).ready;
  await until(() => y.length === 2, "l.y's history");
  assert.deepEqual(
    y.map((e) => [e.seq, e.replay]),
    [
      [1, true],
      [2, true],
    ],
  );
  await httpPublish(broker, [
    { topic: "l.x", data: 4 },
    { topic: "l.y", data: 5 },
  ]);
  await until(() => y.length === 3 && x.length === 2, "the next events, once each");
  assert.deepEqual(seqs(x, "l.x"), [1, 2], "l.x got no repeat of what it had");
  assert.deepEqual(seqs(y, "l.y"), [1, 2, 3]);
  assert.deepEqual(rec.gaps, []);
});

test("over SSE, a dropped stream reconnects and resumes exactly; a broker restart resets", { timeout: 90_000 }, async (t) => {
  const broker = await startHerald();
  t.after(() => broker.kill());
  const proxy = await new Proxy(broker.port).listen();
  t.after(() => proxy.close());
  const h = sseClient(t, proxy.ws, { backoff: { initialMs: 100, maxMs: 300 } });
  const rec = record(h);
  const events = [];
  await h.subscribe("d.*", (ev) => events.push(ev)).ready;
  await httpPublish(broker, { topic: "d.a", data: 1 });
  await until(() => events.length === 1, "one event");
  proxy.down = true;
  proxy.cut();
  await until(() => h.state === "reconnecting", "reconnecting");
  await httpPublish(broker, [
    { topic: "d.a", data: 2 },
    { topic: "d.a", data: 3 },
  ]);
  proxy.down = false;
  await until(() => events.length === 3, "the two missed events");
  assert.deepEqual(
    events.map((e) => [e.topic, e.seq, e.replay]),
    [
      ["d.a", 1, undefined],
      ["d.a", 2, true],
      ["d.a", 3, true],
    ],
  );
  await httpPublish(broker, { topic: "d.a", data: 4 });
  await until(() => events.length === 4, "live again");
  assert.deepEqual(seqs(events, "d.a"), [1, 2, 3, 4]);
  assert.deepEqual(rec.gaps, []);
  assert.ok(rec.closes.length >= 1 && rec.closes.every((c) => c.code === 1006 && c.willReconnect));
});

test("over SSE, shutdown's close message (1001) and the new epoch after a restart", { timeout: 90_000 }, async (t) => {
  const port = await freePort();
  let broker = await startHerald({ port });
  t.after(() => broker.kill());
  const h = sseClient(t, broker.ws, { goingAwayMaxMs: 200, backoff: { initialMs: 100, maxMs: 300 } });
  const rec = record(h);
  const events = [];
  await h.subscribe("r.*", (ev) => events.push(ev)).ready;
  await httpPublish(broker, { topic: "r.a", data: 1 });
  await until(() => events.length === 1, "one event");
  await broker.terminate();
  await until(() => rec.closes.length >= 1, "a close");
  assert.equal(rec.closes[0].code, 1001, "the stream's last message says why it ends");
  broker = await startHerald({ port });
  await until(() => rec.opens.length === 2, "a second welcome");
  await until(() => rec.resets.length === 1, "a reset of r.a");
  assert.deepEqual(rec.resets, [{ topic: "r.a", reason: "epoch_changed" }]);
});

test("over SSE with tokens: a ticket for every stream, publish with the token, refresh by a new stream", { timeout: 60_000 }, async (t) => {
  const secret = "a secret of at least thirty-two bytes for HS256";
  const broker = await startJwtHerald(secret);
  t.after(() => broker.kill());
  let issued = 0;
  const token = () => {
    issued++;
    return signJwt(secret, {
      sub: "alice",
      exp: Math.floor(Date.now() / 1000) + 4,
      herald: { subscribe: ["t.>"], publish: ["t.>"] },
    });
  };
  const h = sseClient(t, broker.ws, { token, refreshMarginMs: 2_000 });
  const rec = record(h);
  const events = [];
  await h.subscribe("t.*", (ev) => events.push(ev)).ready;
  await h.publish("t.a", 1);
  await until(() => events.length === 1, "the event published with the token");
  await assert.rejects(h.publish("x.a", 1), (err) => err.code === "forbidden");
  await until(() => rec.refreshes.length >= 1, "a refresh before the 4 s token expires", 15_000);
  assert.ok(rec.refreshes[0].exp * 1000 > Date.now(), "the new stream lasts until the new token's exp");
  await h.publish("t.a", 2);
  await until(() => events.length === 2, "events after the refresh");
  assert.deepEqual(seqs(events, "t.a"), [1, 2]);
  assert.deepEqual(rec.closes, [], "no 4001: the stream was replaced before its token expired");
  assert.ok(issued >= 2);
  assert.ok(!broker.logs.some((l) => l.includes("eyJ")), "no token in the broker's log");
});

test("over SSE, a stream the broker refuses is explained: 403 and 400 reject the new subscription, the rest goes on", { timeout: 60_000 }, async (t) => {
  const secret = "a secret of at least thirty-two bytes for HS256";
  const broker = await startJwtHerald(secret);
  t.after(() => broker.kill());
  const token = signJwt(secret, { sub: "bob", exp: Math.floor(Date.now() / 1000) + 600, herald: { subscribe: ["ok.>"] } });
  const h = sseClient(t, broker.ws, { token });
  const rec = record(h);
  const events = [];
  await h.subscribe("ok.*", (ev) => events.push(ev)).ready;
  await assert.rejects(h.subscribe("secret.*").ready, (err) => err.code === "forbidden");
  await assert.rejects(h.subscribe("bad..pattern").ready, (err) => err.code === "invalid_topic");
  assert.equal(h.state, "open", "the session went on throughout");
  await httpPublish(broker, { topic: "ok.a", data: 1 }, signJwt(secret, { sub: "p", exp: Math.floor(Date.now() / 1000) + 60, herald: { publish: [">"] } }));
  await until(() => events.length === 1, "the granted subscription still receives");

  const stranger = sseClient(t, broker.ws, { token: signJwt("another secret", { sub: "x" }), backoff: { initialMs: 50, maxMs: 100 } });
  const strangerRec = record(stranger);
  stranger.subscribe("ok.*");
  await until(() => stranger.state === "unauthorized", "unauthorized: a 401 is a 4001");
  assert.ok(strangerRec.closes.every((c) => c.code === 4001 || c.code === 1006));
  assert.deepEqual(rec.closes.filter((c) => c.code === 4001), []);
});

test("auto: two refused upgrades move the client to SSE; once upgrades get through it moves back, losing nothing", { timeout: 90_000 }, async (t) => {
  const broker = await startPinging();
  t.after(() => broker.kill());
  const proxy = await new UpgradeRefusingProxy(broker.port).listen();
  t.after(() => proxy.close());
  const h = connect(proxy.ws, { EventSource, websocketRetryMs: 500, backoff: { initialMs: 50, maxMs: 100 } });
  t.after(() => h.close());
  const rec = record(h);
  assert.equal(h.transport, "websocket");
  const events = [];
  const sub = h.subscribe("f.a", (ev) => events.push(ev));
  await sub.ready;
  assert.equal(h.transport, "sse");
  assert.deepEqual(rec.transports, ["sse"]);
  assert.equal(proxy.upgrades, 2, "two upgrades refused, then the stream");
  assert.deepEqual(
    rec.closes.map((c) => c.code),
    [1006, 1006],
  );

  const publisher = keepPublishing(broker, "f.a", 5);
  await sleep(300);
  // Probes while upgrades are refused change nothing.
  await until(() => proxy.upgrades >= 3, "a probe");
  assert.equal(h.transport, "sse");
  proxy.refuseUpgrades = false;
  await until(() => h.transport === "websocket" && h.state === "open", "back on WebSocket");
  await sleep(300);
  const sent = await publisher.stop();
  await until(() => events.length === sent, `all ${sent} events`);
  assert.deepEqual(seqs(events, "f.a"), upTo(sent), "every event once, in order, across both switches");
  assert.deepEqual(rec.transports, ["sse", "websocket"]);
  assert.deepEqual(rec.gaps, []);
  assert.equal(rec.closes.length, 2, "the switch back is no close for the application");
  await until(async () => (await metric(broker, 'herald_connections{transport="sse"}')) === 0, "the stream closed");
  assert.equal(await metric(broker, 'herald_connections{transport="websocket"}'), 1);
  // Publishing goes over the WebSocket again (ping works there).
  assert.ok((await h.ping()) >= 0);
});
