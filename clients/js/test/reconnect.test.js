// Reconnecting: broker restart (new epoch), dropped connection (resume), dead path
// (heartbeat watchdog), graceful shutdown (1001 jitter).

import assert from "node:assert/strict";
import { test } from "node:test";

import { connect } from "../herald.js";
import { countingWebSocket, freePort, httpPublish, Proxy, record, sleep, startHerald, until, WAIT_MS } from "./support.js";

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

test("after a broker restart the client reconnects, is told each topic's history is gone, and receives new events", { timeout: 120_000 }, async (t) => {
  const port = await freePort();
  let broker = await startHerald({ port });
  t.after(() => broker.kill());
  const h = connect(broker.ws, { backoff: { initialMs: 100, maxMs: 1000 } });
  t.after(() => h.close());
  const rec = record(h);
  const first = await opened(h);
  const events = [];
  await h.subscribe("rs.*", (ev) => events.push(ev)).ready;
  await httpPublish(broker, [
    { topic: "rs.a", data: 1 },
    { topic: "rs.a", data: 2 },
    { topic: "rs.b", data: 3 },
  ]);
  await until(() => events.length === 3, "three events before the restart");

  await broker.kill();
  await until(() => h.state === "reconnecting", "state reconnecting");
  broker = await startHerald({ port });
  await until(() => rec.opens.length === 2, "a second welcome");
  const second = rec.opens[1];
  assert.notEqual(second.epoch, first.epoch);
  await until(() => rec.resets.length === 2, "a reset for each topic seen");
  assert.deepEqual(
    rec.resets.sort((x, y) => x.topic.localeCompare(y.topic)),
    [
      { topic: "rs.a", reason: "epoch_changed" },
      { topic: "rs.b", reason: "epoch_changed" },
    ],
  );

  await httpPublish(broker, { topic: "rs.a", data: 4 });
  await until(() => events.length === 4, "an event after the restart");
  assert.deepEqual([events[3].topic, events[3].seq, events[3].data, events[3].replay], ["rs.a", 1, 4, undefined]);
  assert.deepEqual(rec.gaps, [], "a new epoch's seq 1 is not a gap");
  assert.ok(rec.closes.every((c) => c.code === 1006 && c.willReconnect));
  // connecting → open → reconnecting (however many attempts) → open
  assert.deepEqual(rec.states, ["open", "reconnecting", "open"]);
});

test("after a dropped connection the events missed meanwhile are replayed, without loss, duplicate or gap", { timeout: 120_000 }, async (t) => {
  const broker = await startHerald();
  t.after(() => broker.kill());
  const proxy = await new Proxy(broker.port).listen();
  t.after(() => proxy.close());
  const h = connect(proxy.ws, { backoff: { initialMs: 100, maxMs: 500 } });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  const events = [];
  await h.subscribe("drop.a", (ev) => events.push(ev)).ready;
  for (const n of [1, 2, 3]) await httpPublish(broker, { topic: "drop.a", data: n });
  await until(() => events.length === 3, "three events before the cut");

  proxy.down = true; // the client cannot come back until we say so
  proxy.cut();
  await until(() => h.state === "reconnecting", "state reconnecting");
  for (const n of [4, 5, 6, 7, 8]) await httpPublish(broker, { topic: "drop.a", data: n });
  await sleep(300);
  assert.equal(events.length, 3, "nothing arrives while disconnected");

  proxy.down = false;
  await until(() => events.length === 8, "the missed events after reconnecting");
  await h.publish("drop.a", 9);
  await until(() => events.length === 9, "a live event after the replay");

  assert.deepEqual(
    events.map((e) => [e.seq, e.data, e.replay]),
    [
      [1, 1, undefined],
      [2, 2, undefined],
      [3, 3, undefined],
      [4, 4, true],
      [5, 5, true],
      [6, 6, true],
      [7, 7, true],
      [8, 8, true],
      [9, 9, undefined],
    ],
  );
  assert.deepEqual(rec.gaps, []);
  assert.deepEqual(rec.resets, []);
  assert.equal(new Set(rec.opens.map((w) => w.epoch)).size, 1, "same broker process throughout");
});

test("a connection whose server falls silent is declared dead after interval + timeout, then replaced", { timeout: 120_000 }, async (t) => {
  // Pings every second; three seconds of silence allowed, so a loaded machine that
  // delays a ping by a second or two does not look like a dead path.
  const intervalMs = 1000;
  const timeoutMs = 2000;
  const broker = await startHerald({
    env: {
      HERALD_SESSION__HEARTBEAT_INTERVAL_MS: String(intervalMs),
      HERALD_SESSION__HEARTBEAT_TIMEOUT_MS: String(timeoutMs),
    },
  });
  t.after(() => broker.kill());
  const proxy = await new Proxy(broker.port).listen();
  t.after(() => proxy.close());
  const h = connect(proxy.ws, { backoff: { initialMs: 100, maxMs: 500 } });
  t.after(() => h.close());
  const rec = record(h);
  const welcome = await opened(h);
  assert.deepEqual(welcome.heartbeat, { interval_ms: intervalMs, timeout_ms: timeoutMs });
  const events = [];
  await h.subscribe("hb.a", (ev) => events.push(ev)).ready;

  // Healthy for twice the silence limit: pings keep the client's watchdog quiet, and
  // the client's pongs keep the broker's.
  await sleep(2 * (intervalMs + timeoutMs));
  assert.deepEqual(rec.closes, [], "a live connection is not declared dead");

  const stalledAt = performance.now();
  proxy.stall(); // TCP stays up; nothing from the server gets through any more
  const lastHeard = proxy.lastForwardedAt;
  await until(() => rec.closes.length === 1, "the watchdog to fire");
  const close = rec.closes[0];
  assert.equal(close.code, 4008);
  assert.equal(close.reason, "heartbeat timeout");
  assert.equal(close.willReconnect, true);
  const silent = close.at - lastHeard;
  assert.ok(silent >= intervalMs + timeoutMs - 5, `declared dead after only ${silent} ms of silence`);
  assert.ok(close.at - stalledAt < WAIT_MS, "declared dead in reasonable time");

  await until(() => rec.opens.length === 2, "a new connection");
  assert.notEqual(rec.opens[1].session, welcome.session);
  await httpPublish(broker, { topic: "hb.a", data: "after" });
  await until(() => events.length === 1, "an event on the new connection");
  assert.equal(events[0].data, "after");
  assert.deepEqual(rec.states, ["open", "reconnecting", "open"]);
});

test("after 1001 (graceful shutdown) clients reconnect after a jittered delay, not all at once", { timeout: 120_000 }, async (t) => {
  const port = await freePort();
  const env = { HERALD_SERVER__SHUTDOWN_GRACE_MS: "1000" };
  let broker = await startHerald({ port, env });
  t.after(() => broker.kill());
  const goingAwayMaxMs = 3000;
  const clients = Array.from({ length: 6 }, () => {
    const attempts = [];
    const h = connect(broker.ws, {
      WebSocket: countingWebSocket(attempts),
      goingAwayMaxMs,
      backoff: { initialMs: 200, maxMs: 1000 },
    });
    t.after(() => h.close());
    return { h, attempts, rec: record(h) };
  });
  await until(() => clients.every((c) => c.h.state === "open"), "every client open");

  const terminatedAt = performance.now();
  await broker.terminate();
  broker = await startHerald({ port, env });
  await until(() => clients.every((c) => c.rec.opens.length === 2), "every client back", 60_000);

  const delays = clients.map(({ attempts, rec }) => {
    const close = rec.closes[0];
    assert.equal(close.code, 1001);
    assert.equal(close.willReconnect, true);
    assert.ok(Number.isInteger(close.delayMs) && close.delayMs >= 0 && close.delayMs < goingAwayMaxMs, `delay ${close.delayMs}`);
    // The first attempt after the close waited for the announced delay (measured
    // from SIGTERM, which certainly came first; see the backoff test for why).
    const next = attempts.find((a) => a.at > close.at);
    const waited = next.at - terminatedAt;
    assert.ok(waited >= close.delayMs - 2, `waited ${waited} ms, announced ${close.delayMs}`);
    return close.delayMs;
  });
  // Six uniform draws below 3000 ms all within 100 ms of each other: odds ~1e-7.
  assert.ok(Math.max(...delays) - Math.min(...delays) > 100, `delays not spread: ${delays}`);
});
