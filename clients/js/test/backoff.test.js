// Backoff: the pure delay function, and a real client retrying against a closed port.

import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, connect, topicMatches } from "../herald.js";
import { countingWebSocket, freePort, record, sleep, until } from "./support.js";

test("backoffDelay is random() * min(maxMs, initialMs * 2^attempt), floored", () => {
  const backoff = { initialMs: 100, maxMs: 5000 };
  for (let attempt = 0; attempt <= 40; attempt++) {
    const cap = Math.min(5000, 100 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, backoff, () => 0), 0);
    assert.equal(backoffDelay(attempt, backoff, () => 0.5), Math.floor(cap / 2));
    const top = backoffDelay(attempt, backoff, () => 1 - Number.EPSILON);
    assert.ok(top < cap && top >= cap - 1, `attempt ${attempt}: ${top} vs cap ${cap}`);
  }
  // A huge attempt count (or Infinity, used after 4029) stays bounded by maxMs.
  assert.equal(backoffDelay(Infinity, backoff, () => 0.5), 2500);
  assert.equal(backoffDelay(1e6, backoff, () => 0.5), 2500);
  // Defaults: 500 ms initial, 30 s max.
  assert.equal(backoffDelay(0, undefined, () => 0.5), 250);
  assert.equal(backoffDelay(20, {}, () => 0.5), 15000);
});

test("backoffDelay draws from the random source it is given, once per call", () => {
  let calls = 0;
  const values = [0.1, 0.9, 0.3];
  const random = () => values[calls++ % values.length];
  const got = [0, 1, 2].map((attempt) => backoffDelay(attempt, { initialMs: 1000, maxMs: 10_000 }, random));
  assert.equal(calls, 3);
  assert.deepEqual(got, [100, 1800, 1200]);
});

test("backoffDelay with Math.random spreads clients out", () => {
  const delays = Array.from({ length: 200 }, () => backoffDelay(10, { initialMs: 500, maxMs: 30_000 }));
  assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d < 30_000));
  // 200 draws from 30,000 values: nearly all distinct, and spread over the range.
  assert.ok(new Set(delays).size > 150, `only ${new Set(delays).size} distinct delays`);
  assert.ok(Math.max(...delays) - Math.min(...delays) > 15_000);
});

test("topicMatches follows the protocol's wildcards", () => {
  assert.ok(topicMatches("orders.*", "orders.eu"));
  assert.ok(!topicMatches("orders.*", "orders"));
  assert.ok(!topicMatches("orders.*", "orders.eu.created"));
  assert.ok(topicMatches("orders.>", "orders.eu"));
  assert.ok(topicMatches("orders.>", "orders.eu.created"));
  assert.ok(!topicMatches("orders.>", "orders"));
  assert.ok(topicMatches(">", "a"));
  assert.ok(topicMatches("a.*.c", "a.b.c"));
  assert.ok(!topicMatches("a.*.c", "a.b.d"));
  assert.ok(topicMatches("news", "news"));
  assert.ok(!topicMatches("news", "news.eu"));
});

test("a client retrying a closed port waits within the backoff bounds, then stops on close()", { timeout: 60_000 }, async () => {
  const port = await freePort(); // nothing listens here
  const attempts = [];
  const initialMs = 50;
  const maxMs = 400;
  const h = connect(`ws://127.0.0.1:${port}/ws`, {
    WebSocket: countingWebSocket(attempts),
    backoff: { initialMs, maxMs },
  });
  const rec = record(h);
  assert.equal(h.state, "connecting");
  await until(() => rec.closes.length >= 9, "9 failed attempts");
  h.close();
  const closes = rec.closes.slice(0, 8);
  closes.forEach((close, i) => {
    assert.equal(close.code, 1006);
    assert.equal(close.willReconnect, true);
    const cap = Math.min(maxMs, initialMs * 2 ** i);
    assert.ok(Number.isInteger(close.delayMs) && close.delayMs >= 0 && close.delayMs < cap, `retry ${i}: ${close.delayMs} ms, cap ${cap}`);
    // The next attempt came no sooner than announced. Measured from the failed
    // attempt: Node starts a timer from the event loop's cached clock, which may lag
    // the moment the close was handled, but never precedes the attempt itself
    // (timers may also round by 1 ms).
    const next = attempts[i + 1];
    assert.ok(next, `attempt ${i + 1} happened`);
    const waited = next.at - attempts[i].at;
    assert.ok(waited >= close.delayMs - 2, `retry ${i}: ${waited} ms between attempts, announced ${close.delayMs}`);
  });
  assert.ok(new Set(closes.map((c) => c.delayMs)).size > 1, "delays are randomized");
  assert.deepEqual(rec.states.slice(0, 1), ["reconnecting"]);
  assert.equal(h.state, "closed");
  // Closed means closed: no attempt after the largest possible delay has passed.
  const count = attempts.length;
  await sleep(maxMs + 300);
  assert.equal(attempts.length, count);
});

test("close() from a close listener stops the retries", { timeout: 60_000 }, async () => {
  const attempts = [];
  const h = connect(`ws://127.0.0.1:${await freePort()}/ws`, {
    WebSocket: countingWebSocket(attempts),
    backoff: { initialMs: 10, maxMs: 20 },
  });
  const rec = record(h);
  h.on("close", () => h.close());
  await until(() => h.state === "closed", "state closed");
  await sleep(300);
  assert.equal(attempts.length, 1);
  assert.deepEqual(rec.states, ["closed"], "never shown as reconnecting");
});
