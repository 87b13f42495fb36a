// The JavaScript client (clients/js/herald.js) in a real headless Chromium against a
// real herald process: `for await` over a subscription with its own gap and lagged
// events, reconnecting at once when the browser comes back online, and Server-Sent
// Events through the browser's own EventSource behind a proxy that refuses upgrades. Every test
// fails on a console error or an uncaught exception in the page, except the
// browser's own reports of the connection failures a test provokes.
//
// The page lives on the broker's origin and imports /herald.js, as a page without a
// build step does. The broker embeds that file when it is compiled, so a binary built
// before the last edit of the client would serve an older one: the test serves the
// checkout's clients/js/herald.js at that path instead, so that it always tests the
// client under review. The WebSockets go to the real broker.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { UpgradeRefusingProxy } from "../../clients/js/test/support.js";
import { ROOT, WAIT_MS, browserTests, eventually } from "./harness.mjs";

const TEST_TIMEOUT = 240_000;
const CLIENT = path.join(ROOT, "clients/js/herald.js");
/** The browser's own console errors when a WebSocket cannot connect. */
const CONNECTION_ERRORS = /WebSocket connection to .* failed|net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|EMPTY_RESPONSE|INTERNET_DISCONNECTED)/;
/** The browser's own console error when a proxy answers an upgrade with 403. */
const REFUSED_UPGRADE = /WebSocket connection to .* failed: Error during WebSocket handshake: Unexpected response code: 403/;

// One Chromium for the file; each test's pages and brokers go away when it ends.
const { browser, cleanup, herald } = browserTests();

/**
 * A page on the broker's origin with the client imported as `window.herald`.
 * Console errors and uncaught exceptions are collected in `problems`; `allow(re)`
 * accepts the ones a test provokes on purpose.
 */
async function clientPage(broker) {
  const context = await browser().newContext();
  cleanup(() => context.close());
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const problems = [];
  const allowed = [];
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    if (!allowed.some((re) => re.test(text))) problems.push(`console error: ${text}`);
  });
  page.on("pageerror", (err) => problems.push(`uncaught exception: ${err.stack || err.message}`));
  await page.route(`${broker.url}herald.js`, (route) =>
    route.fulfill({ contentType: "text/javascript", body: readFileSync(CLIENT, "utf8") }));
  // The broker has no favicon, and Chromium logs the 404 of its request as an error.
  await page.route(`${broker.url}favicon.ico`, (route) => route.fulfill({ status: 204 }));
  // A document the broker itself serves: Chromium lets a page reach a loopback
  // address only when the page came from one too (a document made up by the test
  // would be refused with ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
  await page.goto(`${broker.url}healthz`);
  await page.evaluate(async () => {
    window.herald = await import("/herald.js");
  });
  return { page, context, problems, allow: (re) => allowed.push(re) };
}

/** Connections holding `pattern` at the broker. */
async function patternSubscribers(broker, pattern) {
  const res = await fetch(new URL("api/topics", broker.url));
  return (await res.json()).patterns.find((p) => p.pattern === pattern)?.subscribers ?? 0;
}

/**
 * A TCP relay in front of the broker that the test can take down: `down()` drops
 * every connection and refuses new ones (at once, as a lost network does), `up()`
 * lets them through again. The broker keeps running, so reconnecting is as quick as
 * the client makes it.
 */
async function relay(targetPort) {
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      sockets.add(a);
      a.on("error", () => {});
      a.on("close", () => {
        sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const r = {
    ws: `ws://127.0.0.1:${server.address().port}/ws`,
    down() {
      refusing = true;
      for (const s of sockets) s.destroy();
    },
    up() {
      refusing = false;
    },
  };
  cleanup(async () => {
    r.down();
    await new Promise((resolve) => server.close(resolve));
  });
  return r;
}

test("for await over a subscription: replay, live events, its gap and lagged, and break unsubscribes", { timeout: TEST_TIMEOUT }, async () => {
  // A 1 KiB outbound queue never holds a 2 KB event: a real way to lose one.
  const broker = await herald({ env: { HERALD_SESSION__QUEUE_MAX_BYTES: "1024" } });
  await broker.publish([1, 2, 3].map((n) => ({ topic: "br.a", data: n })));
  const { page, problems } = await clientPage(broker);

  await page.evaluate(() => {
    const h = window.herald.connect("/ws");
    window.h = h;
    window.got = [];
    window.notes = [];
    const sub = h.subscribe("br.*", { last: 2 });
    sub.on("gap", (info) => window.notes.push(["gap", info]));
    sub.on("lagged", (info) => window.notes.push(["lagged", info]));
    window.loop = (async () => {
      for await (const ev of sub) {
        window.got.push([ev.topic, ev.seq, ev.replay === true, ev.data]);
        if (window.got.length === 5) break;
      }
      return "left";
    })();
    return sub.ready;
  });
  await page.waitForFunction(() => window.got.length === 2);
  assert.equal(await patternSubscribers(broker, "br.*"), 1);

  await broker.publish({ topic: "br.a", data: 4 });
  await broker.publish({ topic: "br.a", data: "x".repeat(2000) }); // seq 5, dropped
  await broker.publish({ topic: "br.a", data: 6 });
  // Order holds per topic only: the other topic's event waits for the last one of br.a.
  await page.waitForFunction(() => window.got.length === 4);
  await broker.publish({ topic: "br.b", data: { b: 1 } });
  assert.equal(await page.evaluate(() => window.loop), "left");
  assert.deepEqual(await page.evaluate(() => window.got), [
    ["br.a", 2, true, 2],
    ["br.a", 3, true, 3],
    ["br.a", 4, false, 4],
    ["br.a", 6, false, 6],
    ["br.b", 1, false, { b: 1 }],
  ]);
  await eventually(async () => {
    const notes = await page.evaluate(() => window.notes);
    assert.deepEqual(notes.sort(), [
      ["gap", { topic: "br.a", expected: 5, got: 6 }],
      ["lagged", { dropped: 1, reason: "queue_full" }],
    ]);
  });
  // Leaving the loop unsubscribed.
  await eventually(async () => assert.equal(await patternSubscribers(broker, "br.*"), 0));
  assert.equal(await page.evaluate(() => window.h.state), "open");
  // Chromium offers permessage-deflate and the harness turns it on: the page's
  // events above came compressed.
  assert.ok(
    broker.logs.some((l) => l.includes("session opened") && l.includes('compression="deflate"')),
    "the page's session negotiated permessage-deflate",
  );
  assert.deepEqual(problems, []);
});

test("when the browser comes back online, a client waiting to reconnect connects at once", { timeout: TEST_TIMEOUT }, async () => {
  const broker = await herald();
  const network = await relay(broker.port);
  const { page, context, problems, allow } = await clientPage(broker);
  allow(CONNECTION_ERRORS);

  await page.evaluate((url) => {
    window.log = [];
    const at = () => Math.round(performance.now());
    addEventListener("online", () => window.log.push({ name: "online", at: at() }));
    addEventListener("offline", () => window.log.push({ name: "offline", at: at() }));
    // Up to a minute between attempts: only `online` can make the next one come soon.
    const h = window.herald.connect(url, { backoff: { initialMs: 60_000, maxMs: 60_000 } });
    window.h = h;
    h.on("open", () => window.log.push({ name: "open", at: at() }));
    h.on("close", ({ code, delayMs }) => window.log.push({ name: "close", at: at(), code, delayMs }));
    window.events = [];
    return h.subscribe("on.*", (ev) => window.events.push(ev.seq)).ready;
  }, network.ws);
  await broker.publish({ topic: "on.a", data: 1 });
  await page.waitForFunction(() => window.events.length === 1);

  // The network goes away: the connection drops, and attempts fail at once.
  network.down();
  await context.setOffline(true);
  // A short delay only leads to another failed attempt; wait for a long one.
  const close = await page.waitForFunction(() => {
    const last = window.log.filter((e) => e.name === "close").at(-1);
    return last && last.delayMs >= 5_000 && window.h.state === "reconnecting" ? last : null;
  }, null, { timeout: 90_000 }).then((handle) => handle.jsonValue());
  await broker.publish({ topic: "on.a", data: 2 }); // missed while away

  network.up();
  await context.setOffline(false);
  try {
    await page.waitForFunction(() => window.log.filter((e) => e.name === "open").length === 2, null, { timeout: 10_000 });
  } catch (err) {
    const log = await page.evaluate(() => window.log);
    throw new Error(`no new connection within 10 s of going online (the backoff delay was ${close.delayMs} ms); the page's log: ${JSON.stringify(log)}`, { cause: err });
  }
  const log = await page.evaluate(() => window.log);
  const online = log.find((e) => e.name === "online");
  const reopened = log.filter((e) => e.name === "open")[1];
  assert.ok(online.at > close.at, "online came while waiting");
  assert.ok(reopened.at - online.at < 5_000, `open ${reopened.at - online.at} ms after online`);
  assert.ok(reopened.at < close.at + close.delayMs, "before the backoff delay was over");
  // The subscription resumed where it left off.
  await page.waitForFunction(() => window.events.length === 2);
  assert.deepEqual(await page.evaluate(() => window.events), [1, 2]);

  // After close(), online does nothing.
  await page.evaluate(() => window.h.close());
  await context.setOffline(true);
  await context.setOffline(false);
  await page.waitForFunction(() => window.log.filter((e) => e.name === "online").length === 2);
  await page.waitForTimeout(500);
  assert.equal(await page.evaluate(() => window.log.filter((e) => e.name === "open").length), 2);
  assert.equal(await page.evaluate(() => window.h.state), "closed");
  assert.deepEqual(problems, []);
});

test("behind a proxy that refuses upgrades the client falls back to EventSource, and moves back once upgrades pass", { timeout: TEST_TIMEOUT }, async () => {
  const broker = await herald();
  const proxy = await new UpgradeRefusingProxy(broker.port).listen();
  cleanup(() => proxy.close());
  // The page comes through the proxy too, as a corporate network would serve it.
  const { page, problems, allow } = await clientPage({ url: `${proxy.http}/` });
  allow(REFUSED_UPGRADE);
  await broker.publish([1, 2, 3].map((n) => ({ topic: "fb.a", data: n })));

  await page.evaluate(() => {
    // The default transport, "auto"; a probe upgrade every second once on SSE.
    const h = window.herald.connect("/ws", { websocketRetryMs: 1_000, backoff: { initialMs: 50, maxMs: 100 } });
    window.h = h;
    window.log = [];
    window.got = [];
    for (const name of ["transport", "close", "gap", "reset"]) h.on(name, (...args) => window.log.push([name, ...args]));
    return h.subscribe("fb.*", { last: 2 }, (ev) => window.got.push([ev.topic, ev.seq, ev.replay === true])).ready;
  });
  assert.equal(await page.evaluate(() => window.h.transport), "sse");
  assert.equal(proxy.upgrades, 2, "two upgrades refused, then the stream");
  await page.waitForFunction(() => window.got.length === 2);
  // Publishing goes through POST /api/publish; a ping cannot go over a stream.
  await page.evaluate(() => window.h.publish("fb.b", { via: "http" }));
  await page.waitForFunction(() => window.got.length === 3);
  assert.equal(await page.evaluate(() => window.h.ping().catch((err) => err.code)), "not_supported");
  // Another subscription reopens the stream, with the positions seen so far.
  await page.evaluate(() => window.h.subscribe("fb2.*", (ev) => window.got.push([ev.topic, ev.seq, ev.replay === true])).ready);
  await broker.publish([{ topic: "fb.a", data: 4 }, { topic: "fb2.x", data: 5 }]);
  await page.waitForFunction(() => window.got.length === 5);

  proxy.refuseUpgrades = false;
  await page.waitForFunction(() => window.h.transport === "websocket" && window.h.state === "open");
  await broker.publish({ topic: "fb.a", data: 6 });
  await page.waitForFunction(() => window.got.length === 6);
  // Every event once, in order per topic, across the fallback, a reopen and the move back.
  const got = await page.evaluate(() => window.got);
  const of = (topic) => got.filter(([t]) => t === topic).map(([, seq, replay]) => [seq, replay]);
  assert.deepEqual(of("fb.a").slice(0, 3), [[2, true], [3, true], [4, false]]);
  // Live, or from history if it came before the WebSocket's resubscribe.
  assert.deepEqual(of("fb.a")[3]?.[0], 5);
  assert.deepEqual(of("fb.b"), [[1, false]]);
  assert.deepEqual(of("fb2.x"), [[1, false]]);
  const log = await page.evaluate(() => window.log);
  assert.deepEqual(log.filter(([name]) => name === "transport").map(([, to]) => to), ["sse", "websocket"]);
  assert.deepEqual(log.filter(([name]) => name === "close").map(([, c]) => c.code), [1006, 1006]);
  assert.deepEqual(log.filter(([name]) => name === "gap" || name === "reset"), []);
  assert.equal(await page.evaluate(() => window.h.ping().then((ms) => ms >= 0)), true);
  assert.deepEqual(problems, []);
});
