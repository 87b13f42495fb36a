// Options for the life around a connection: autoConnect: false (server-side
// rendering), the request timeout (requests, credentials, the handshake), and
// reconnecting at once when the network comes back (`online`).

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import net from "node:net";
import { after, before, test } from "node:test";

import { connect, HeraldClient, HeraldError } from "../herald.js";
import { countingWebSocket, httpPublish, Proxy, record, sleep, startHerald, until } from "./support.js";

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  broker = await startHerald();
});
after(() => broker?.kill());

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

/** A stand-in for `window` that counts its `online` listeners. */
class OnlineTarget extends EventTarget {
  listeners = 0;
  addEventListener(type, fn) {
    if (type === "online") this.listeners++;
    super.addEventListener(type, fn);
  }
  removeEventListener(type, fn) {
    if (type === "online") this.listeners--;
    super.removeEventListener(type, fn);
  }
  goOnline() {
    this.dispatchEvent(new Event("online"));
  }
}

/**
 * A server that accepts TCP connections and then says nothing; with `upgrade`, it
 * completes the WebSocket handshake first (so the socket opens), then says nothing.
 */
async function silentServer(t, { upgrade = false } = {}) {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    if (!upgrade) return;
    let head = "";
    socket.on("data", (chunk) => {
      head += chunk.toString("latin1");
      if (!head.includes("\r\n\r\n") || socket.upgraded) return;
      socket.upgraded = true;
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)[1];
      const accept = createHash("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
      socket.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: herald.v1.json\r\n\r\n`,
      );
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return `ws://127.0.0.1:${server.address().port}/ws`;
}

test("autoConnect: false opens nothing until connect(); what was subscribed before is sent then", async (t) => {
  await httpPublish(broker, [1, 2].map((n) => ({ topic: "ac.a", data: n })));
  const attempts = [];
  const online = new OnlineTarget();
  const h = new HeraldClient(broker.ws, {
    autoConnect: false,
    WebSocket: countingWebSocket(attempts),
    onlineTarget: online,
    requestTimeoutMs: 200,
  });
  t.after(() => h.close());
  const rec = record(h);
  assert.equal(h.state, "idle");

  const events = [];
  const sub = h.subscribe("ac.*", { last: 5 }, (ev) => events.push(ev.seq));
  await assert.rejects(h.publish("ac.a", 3), { name: "HeraldError", code: "not_open", message: "cannot publish while idle" });
  await assert.rejects(h.ping(), { code: "not_open" });
  // Twice the request timeout: a subscribe's timeout runs from when it is sent, and
  // nothing is sent yet.
  await sleep(400);
  assert.deepEqual(attempts, []);
  assert.deepEqual(rec.log, []);
  assert.equal(online.listeners, 0, "no listener on the window before connect()");

  assert.equal(h.connect(), h);
  assert.equal(h.state, "connecting");
  h.connect(); // a second call while connecting does nothing
  await sub.ready;
  await until(() => events.length === 2, "the replay asked for before connect()");
  assert.deepEqual(events, [1, 2]);
  h.connect(); // nor while open
  await sleep(100);
  assert.equal(attempts.length, 1);
  assert.deepEqual(rec.states, ["connecting", "open"]);
  assert.equal(online.listeners, 1);
  assert.equal(typeof (await h.ping()), "number");

  // connect() after close() connects again, like reconnect().
  h.close();
  assert.equal(online.listeners, 0, "close() lets go of the window");
  h.connect();
  await until(() => h.state === "open", "open again");
  assert.equal(attempts.length, 2);
});

test("autoConnect: false is safe without WebSocket, window or location (server-side rendering)", async (t) => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  delete globalThis.WebSocket;
  t.after(() => Object.defineProperty(globalThis, "WebSocket", saved));
  assert.equal(typeof globalThis.WebSocket, "undefined");
  assert.equal(typeof globalThis.location, "undefined");

  // A relative URL waits for a page to resolve it against.
  const relative = connect("/ws", { autoConnect: false });
  relative.subscribe("ssr.*");
  assert.equal(relative.state, "idle");
  assert.throws(() => relative.connect(), (err) => err instanceof TypeError && /relative URL needs a page/.test(err.message));
  assert.equal(relative.state, "idle");

  const later = connect(broker.ws, { autoConnect: false });
  assert.throws(() => later.connect(), (err) => err instanceof TypeError && /no WebSocket implementation/.test(err.message));
  assert.equal(later.state, "idle");
  // Without autoConnect: false the constructor says so at once, as before.
  assert.throws(() => connect(broker.ws), /no WebSocket implementation/);
  // A URL that can never work is refused at once either way.
  assert.throws(() => connect("ftp://x/ws", { autoConnect: false }), /not a WebSocket URL/);

  // Once there is a WebSocket, the same client connects.
  Object.defineProperty(globalThis, "WebSocket", saved);
  t.after(() => later.close());
  later.connect();
  await opened(later);
  relative.close();
});

test("a request with no reply rejects with a timeout; a lost connection rejects what is in flight", { timeout: 60_000 }, async (t) => {
  const proxy = await new Proxy(broker.port).listen();
  t.after(() => proxy.close());
  const h = connect(proxy.ws, { requestTimeoutMs: 500, backoff: { initialMs: 50, maxMs: 200 } });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  const kept = h.subscribe("to.kept");
  await kept.ready;

  proxy.stall(); // the broker's replies no longer get through
  let start = performance.now();
  await assert.rejects(h.publish("to.a", 1), (err) => {
    assert.ok(err instanceof HeraldError);
    assert.equal(err.code, "timeout");
    assert.equal(err.message, "publish to to.a: no reply within 500 ms");
    assert.equal(typeof err.id, "number");
    return true;
  });
  let took = performance.now() - start;
  assert.ok(took >= 495 && took < 5000, `timed out after ${took} ms`);

  // A per-call timeout overrides the client's (the message says which one ran out).
  start = performance.now();
  await assert.rejects(h.ping({ timeoutMs: 100 }), { code: "timeout", message: "ping: no reply within 100 ms" });
  took = performance.now() - start;
  assert.ok(took >= 95 && took < 5000, `timed out after ${took} ms`);

  // A subscribe that times out is gone, as a refused one is: ready and its loop say why.
  const late = h.subscribe("to.late", { timeoutMs: 200 });
  await assert.rejects(late.ready, { code: "timeout", message: "subscribe to to.late: no reply within 200 ms" });
  await assert.rejects(async () => {
    for await (const ev of late) assert.fail(`no event expected, got ${ev.topic}`);
  }, { code: "timeout" });
  // An unsubscribe that times out says so to whoever awaits it.
  await assert.rejects(kept.unsubscribe({ timeoutMs: 100 }), { code: "timeout" });
  assert.equal(h.state, "open", "a timeout alone does not end the connection");
  assert.deepEqual(rec.closes, []);

  // The connection is lost with a request in flight: it is rejected at once.
  const inFlight = h.publish("to.b", 1, { timeoutMs: 60_000 });
  proxy.cut();
  await assert.rejects(inFlight, { code: "disconnected", message: "connection lost before the reply" });
  await until(() => rec.opens.length === 2, "a new connection");

  // And close() with a request in flight.
  proxy.stall();
  const closing = h.publish("to.c", 1, { timeoutMs: 60_000 });
  h.close();
  await assert.rejects(closing, { code: "disconnected", message: "the client closed before the reply" });

  assert.throws(() => h.publish("to.d", 1, { timeoutMs: 0 }), /timeoutMs must be a number of milliseconds above 0/);
  assert.throws(() => connect(broker.ws, { requestTimeoutMs: -1 }), /requestTimeoutMs must be/);
  assert.throws(() => h.subscribe("to.e", { bufferSize: 0 }), /bufferSize must be a positive integer/);
});

test("a connection attempt that gets no welcome is abandoned after the request timeout, and retried", { timeout: 60_000 }, async (t) => {
  const url = await silentServer(t); // TCP accepted, the upgrade never answered
  const attempts = [];
  const h = connect(url, { requestTimeoutMs: 300, backoff: { initialMs: 20, maxMs: 50 }, WebSocket: countingWebSocket(attempts) });
  t.after(() => h.close());
  const rec = record(h);
  await until(() => rec.closes.length >= 2, "two abandoned attempts");
  h.close();
  rec.closes.slice(0, 2).forEach((close, i) => {
    assert.deepEqual([close.code, close.reason, close.willReconnect], [4008, "handshake timeout", true]);
    const waited = close.at - attempts[i].at;
    assert.ok(waited >= 295, `attempt ${i} abandoned after ${waited} ms`);
  });
  assert.deepEqual(rec.opens, []);
});

test("after the upgrade, the auth request waits for its welcome no longer than the request timeout", { timeout: 60_000 }, async (t) => {
  const url = await silentServer(t, { upgrade: true }); // the socket opens, then silence
  const withToken = connect(url, { token: "jwt", requestTimeoutMs: 300, backoff: { initialMs: 1000, maxMs: 1000 } });
  t.after(() => withToken.close());
  const withTokenRec = record(withToken);
  // Without a token, a broker with auth on closes with 4001 after its own auth
  // timeout: the client must not cut that short.
  const noToken = connect(url, { requestTimeoutMs: 300 });
  t.after(() => noToken.close());
  const noTokenRec = record(noToken);

  await until(() => withTokenRec.closes.length === 1, "the auth request to time out");
  assert.deepEqual([withTokenRec.closes[0].code, withTokenRec.closes[0].reason], [4008, "handshake timeout"]);
  await sleep(600);
  assert.deepEqual(noTokenRec.closes, []);
  assert.equal(noToken.state, "connecting");
});

test("token and getTicket functions that never answer are given up after the request timeout", { timeout: 60_000 }, async (t) => {
  const hung = () => new Promise(() => {});
  for (const [option, name] of [[{ token: hung }, "token"], [{ getTicket: hung }, "getTicket"]]) {
    const attempts = [];
    const h = connect(broker.ws, { ...option, requestTimeoutMs: 200, backoff: { initialMs: 20, maxMs: 50 }, WebSocket: countingWebSocket(attempts) });
    t.after(() => h.close());
    const rec = record(h);
    await until(() => rec.closes.length >= 2, `two ${name} timeouts`);
    h.close();
    assert.deepEqual(
      rec.closes.slice(0, 2).map(({ code, reason, willReconnect }) => ({ code, reason, willReconnect })),
      Array(2).fill({ code: 1006, reason: `could not get credentials: ${name}: no answer within 200 ms`, willReconnect: true }),
    );
    assert.deepEqual(attempts, [], "no socket without credentials");
  }
});

test("online while waiting to reconnect skips the rest of the backoff", { timeout: 120_000 }, async (t) => {
  const proxy = await new Proxy(broker.port).listen();
  t.after(() => proxy.close());
  const online = new OnlineTarget();
  const attempts = [];
  // Up to a minute between attempts: only `online` can make the next one come soon.
  const h = connect(proxy.ws, { onlineTarget: online, backoff: { initialMs: 60_000, maxMs: 60_000 }, WebSocket: countingWebSocket(attempts) });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  assert.equal(online.listeners, 1);
  const events = [];
  await h.subscribe("on.a", (ev) => events.push(ev.seq)).ready;
  await h.publish("on.a", 1);

  online.goOnline(); // while open: nothing to hurry
  await sleep(200);
  assert.equal(attempts.length, 1);

  proxy.down = true;
  proxy.cut();
  // A short delay only leads to another refused attempt; wait for a long one.
  const close = await until(() => {
    const last = rec.closes.at(-1);
    return last && last.delayMs >= 5_000 && h.state === "reconnecting" ? last : null;
  }, "a backoff delay of 5 s or more", 60_000);
  assert.equal(close.code, 1006);
  const before = attempts.length;
  await httpPublish(broker, { topic: "on.a", data: 2 }); // missed while away

  proxy.down = false;
  const onlineAt = performance.now();
  online.goOnline();
  assert.equal(attempts.length, before + 1, "an attempt at once");
  assert.ok(attempts.at(-1).at - onlineAt < 1000, "within the event's dispatch, not after a delay");
  await until(() => rec.opens.length === 2, "open again", 10_000);
  assert.ok(performance.now() < close.at + close.delayMs, "long before the backoff would have retried");
  await until(() => events.length === 2, "the missed event, resumed");
  assert.deepEqual(events, [1, 2]);
  assert.equal(attempts.length, before + 1);

  h.close();
  assert.equal(online.listeners, 0, "close() removes the listener");
  online.goOnline();
  await sleep(200);
  assert.equal(attempts.length, before + 1);
  assert.equal(h.state, "closed");
});
