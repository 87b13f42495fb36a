// `for await (const event of subscription)` against a real broker: order, replay,
// what ends a loop (break, unsubscribe, close, a refused subscription), and the
// bounded buffer of a loop that falls behind.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect, HeraldError } from "../herald.js";
import { httpPublish, record, sleep, startHerald, until } from "./support.js";

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  broker = await startHerald();
});
after(() => broker?.kill());

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

async function open(t) {
  const h = connect(broker.ws);
  t.after(() => h.close());
  await opened(h);
  return h;
}

/** Connections holding `pattern` at the broker. */
async function patternSubscribers(pattern) {
  const res = await fetch(`${broker.http}/api/topics`);
  return (await res.json()).patterns.find((p) => p.pattern === pattern)?.subscribers ?? 0;
}

/** A promise and the function that resolves it. */
function gate() {
  let open;
  const promise = new Promise((resolve) => (open = resolve));
  return { promise, open };
}

test("for await yields the replay, then live events in order; break unsubscribes", async (t) => {
  await httpPublish(broker, [1, 2, 3].map((n) => ({ topic: "it.a", data: n })));
  const h = await open(t);
  const seen = [];
  // No handler: the loop is how this subscription is read.
  const sub = h.subscribe("it.*", { last: 2 });
  const loop = (async () => {
    for await (const ev of sub) {
      seen.push([ev.topic, ev.seq, ev.data, ev.replay ?? false]);
      if (seen.length === 5) break;
    }
    return "left";
  })();
  await sub.ready;
  await until(() => seen.length === 2, "the replay");
  assert.equal(await patternSubscribers("it.*"), 1);
  // Order holds per topic only, so the other topic's event goes first, alone.
  await httpPublish(broker, { topic: "it.b", data: 4 });
  await until(() => seen.length === 3, "the event of it.b");
  await httpPublish(broker, [5, 6, 7].map((n) => ({ topic: "it.a", data: n })));
  assert.equal(await loop, "left");
  assert.deepEqual(seen, [
    ["it.a", 2, 2, true],
    ["it.a", 3, 3, true],
    ["it.b", 1, 4, false],
    ["it.a", 4, 5, false],
    ["it.a", 5, 6, false],
  ]);

  // Leaving the loop unsubscribed: the broker drops the pattern, and a new loop over
  // the subscription ends at once.
  await until(async () => (await patternSubscribers("it.*")) === 0, "the broker to drop it.*");
  const again = sub[Symbol.asyncIterator]();
  assert.deepEqual(await again.next(), { value: undefined, done: true });
});

test("next() calls made ahead are answered in order", async (t) => {
  const h = await open(t);
  const sub = h.subscribe("ahead.a");
  await sub.ready;
  const it = sub[Symbol.asyncIterator]();
  const pending = [it.next(), it.next(), it.next()];
  await httpPublish(broker, [1, 2].map((n) => ({ topic: "ahead.a", data: n })));
  assert.deepEqual((await pending[0]).value.seq, 1);
  assert.deepEqual((await pending[1]).value.seq, 2);
  // return() ends the iteration: the third call is answered with done, and the
  // subscription is gone.
  assert.deepEqual(await it.return(), { value: undefined, done: true });
  assert.deepEqual(await pending[2], { value: undefined, done: true });
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await until(async () => (await patternSubscribers("ahead.a")) === 0, "the broker to drop ahead.a");
});

test("unsubscribe() ends a waiting loop; close() ends every loop but keeps the subscription", async (t) => {
  const h = await open(t);
  const a = h.subscribe("ie.a");
  const handled = [];
  const b = h.subscribe("ie.b", (ev) => handled.push(ev.seq));
  await Promise.all([a.ready, b.ready]);

  const loopA = (async () => {
    for await (const ev of a) assert.fail(`no event expected, got ${ev.seq}`);
    return "ended";
  })();
  const seenB = [];
  const loopB = (async () => {
    for await (const ev of b) seenB.push(ev.seq);
    return "ended";
  })();
  await sleep(50);
  await a.unsubscribe();
  assert.equal(await loopA, "ended");

  await h.publish("ie.b", 1);
  await until(() => seenB.length === 1, "event 1 in the loop");
  h.close();
  assert.equal(await loopB, "ended");
  // A loop started while the client is closed ends at once.
  assert.deepEqual(await b[Symbol.asyncIterator]().next(), { value: undefined, done: true });

  // The subscription itself outlives close(): after reconnect() it resumes, its
  // handler gets events again, and a new loop reads them.
  h.reconnect();
  await opened(h);
  await b.ready;
  const seenAgain = [];
  const loopC = (async () => {
    for await (const ev of b) {
      seenAgain.push(ev.seq);
      break;
    }
  })();
  await h.publish("ie.b", 2);
  await loopC;
  assert.deepEqual(seenAgain, [2]);
  assert.deepEqual(handled, [1, 2]);
  assert.deepEqual(seenB, [1]);
});

test("a refused subscription makes its loop throw the broker's error", async (t) => {
  const h = await open(t);
  const sub = h.subscribe("bad..topic");
  const looped = (async () => {
    for await (const ev of sub) assert.fail(`no event expected, got ${ev.topic}`);
  })();
  await assert.rejects(looped, (err) => err instanceof HeraldError && err.code === "invalid_topic");
  // A loop started after the refusal throws the same error.
  await assert.rejects(async () => {
    for await (const ev of sub) assert.fail(`no event expected, got ${ev.topic}`);
  }, { name: "HeraldError", code: "invalid_topic" });
  assert.equal(h.state, "open");
});

test("a loop that falls behind keeps the newest bufferSize events and is told how many it lost", async (t) => {
  const h = await open(t);
  const client = record(h);
  const handled = [];
  const sub = h.subscribe("slow.a", { bufferSize: 5 }, (ev) => handled.push(ev.seq));
  const got = [];
  const lagged = [];
  sub.on("lagged", (info) => lagged.push({ ...info, seenSoFar: got.length }));
  await sub.ready;

  const busy = gate();
  const loop = (async () => {
    for await (const ev of sub) {
      got.push(ev.seq);
      if (ev.seq === 1) await busy.promise; // a slow step
      if (got.length === 6) break;
    }
  })();
  await httpPublish(broker, { topic: "slow.a", data: 1 });
  await until(() => got.length === 1, "the loop busy with event 1");
  await httpPublish(broker, Array.from({ length: 20 }, (_, i) => ({ topic: "slow.a", data: i + 2 })));
  await until(() => handled.length === 21, "all 21 events at the client");
  assert.deepEqual(lagged, [], "reported when the loop takes its next event, not before");

  busy.open();
  await loop;
  // The buffer kept the newest 5 (17–21); 2–16 were dropped for this loop only.
  assert.deepEqual(got, [1, 17, 18, 19, 20, 21]);
  assert.deepEqual(lagged, [{ dropped: 15, reason: "buffer_full", seenSoFar: 1 }], "once, before the first event after the drops");
  assert.deepEqual(handled, Array.from({ length: 21 }, (_, i) => i + 1), "the handler missed nothing");
  assert.deepEqual(client.lagged, [], "the connection lost nothing");
  assert.deepEqual(client.gaps, []);
});

test("events still buffered when the subscription ends are discarded", async (t) => {
  const h = await open(t);
  const handled = [];
  const sub = h.subscribe("disc.a", (ev) => handled.push(ev.seq));
  await sub.ready;
  const busy = gate();
  const got = [];
  const loop = (async () => {
    for await (const ev of sub) {
      got.push(ev.seq);
      await busy.promise;
    }
    return "ended";
  })();
  await httpPublish(broker, [1, 2, 3].map((n) => ({ topic: "disc.a", data: n })));
  await until(() => handled.length === 3, "three events at the client");
  assert.deepEqual(got, [1]);
  await sub.unsubscribe();
  busy.open();
  assert.equal(await loop, "ended");
  assert.deepEqual(got, [1], "2 and 3 were not yielded after unsubscribe()");
});
