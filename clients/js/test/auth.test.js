// Authentication against a broker with auth.mode = "jwt": first-message tokens,
// tickets, expiry (close 4001) and what the client does about it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect } from "../herald.js";
import { countingWebSocket, httpPublish, record, signJwt, sleep, startHerald, startJwtHerald, until } from "./support.js";

const SECRET = "herald-js-client-tests-0123456789abcdef"; // HS256 needs >= 32 bytes

/** A token for `sub` that expires `seconds` from now (whole seconds, as JWTs count). */
function token(seconds, grants = { subscribe: [">"], publish: ["auth.>"] }, sub = "alice") {
  return signJwt(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + seconds, herald: grants });
}

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  broker = await startJwtHerald(SECRET);
});
after(() => broker?.kill());

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

test("a string token that expires ends in 'unauthorized', with no further attempts", { timeout: 60_000 }, async (t) => {
  const attempts = [];
  const h = connect(broker.ws, { token: token(3), WebSocket: countingWebSocket(attempts), backoff: { initialMs: 50, maxMs: 200 } });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  await until(() => h.state === "unauthorized", "state unauthorized after exp");
  assert.deepEqual(
    rec.closes.map(({ at, ...c }) => c),
    [{ code: 4001, reason: "token expired", willReconnect: false, delayMs: null }],
  );
  assert.deepEqual(rec.states, ["open", "unauthorized"]);
  await sleep(1500); // several backoff periods
  assert.equal(attempts.length, 1, "no attempt after 4001 without a way to get a new token");
  assert.equal(h.state, "unauthorized");
});

test("a token function is asked again after 4001; the subscription carries on", { timeout: 60_000 }, async (t) => {
  let calls = 0;
  // The first token is about to expire, and cannot be refreshed in place: while the
  // connection is open the function fails. The token for a new connection is good
  // for an hour.
  const h = connect(broker.ws, {
    token: async () => {
      if (h.state === "open") throw new Error("token endpoint unavailable");
      return ++calls === 1 ? token(3) : token(3600);
    },
  });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  const events = [];
  await h.subscribe("auth.a", (ev) => events.push(ev)).ready;
  await h.publish("auth.a", 1);

  await until(() => rec.opens.length === 2, "a second connection after the token expired");
  const [close] = rec.closes;
  assert.equal(close.code, 4001);
  assert.equal(close.willReconnect, true);
  assert.equal(calls, 2, "a fresh token for the new connection");
  assert.equal(h.state, "open");

  await h.publish("auth.a", 2);
  await until(() => events.length === 2, "events on both connections");
  assert.deepEqual(
    events.map((e) => [e.seq, e.data, e.replay]),
    [
      [1, 1, undefined],
      [2, 2, undefined],
    ],
  );
  assert.deepEqual(rec.resets, [], "same broker: the resume succeeded");
  assert.deepEqual(rec.states, ["open", "reconnecting", "open"]);
  assert.ok(rec.errors.length >= 1 && rec.errors.every((e) => e.code === "refresh_failed"), "failed refreshes are reported");
});

test("refused again after a fresh token: 'unauthorized' until reconnect()", { timeout: 60_000 }, async (t) => {
  let next = () => token(3);
  let calls = 0; // for a new connection; the refreshes before exp are refused too
  const h = connect(broker.ws, {
    token: () => {
      if (h.state !== "open") calls++;
      return next();
    },
    backoff: { initialMs: 50, maxMs: 200 },
  });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  next = () => signJwt("another-secret-of-at-least-32-bytes!!", { sub: "alice", exp: 9_999_999_999 });
  await until(() => h.state === "unauthorized", "state unauthorized");
  assert.deepEqual(
    rec.closes.map((c) => [c.code, c.willReconnect]),
    [
      [4001, true], // the first token expired: try once with a fresh one
      [4001, false], // that one was refused too: stop
    ],
  );
  assert.equal(calls, 2);
  await sleep(1000);
  assert.equal(calls, 2, "no retry while unauthorized");

  next = () => token(3600);
  h.reconnect();
  assert.equal(h.state, "connecting");
  await until(() => h.state === "open", "open after reconnect() with a good token");
  assert.equal(calls, 3);
});

test("a resubscribe refused after reconnect is reported as an error event", { timeout: 60_000 }, async (t) => {
  let grants = { subscribe: [">"], publish: [] };
  const h = connect(broker.ws, { token: () => token(3600, grants) });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  const sub = h.subscribe("admin.x", () => {});
  const subErrors = [];
  sub.on("error", (e) => subErrors.push(e));
  await sub.ready;
  grants = { subscribe: ["auth.>"], publish: [] };
  h.reconnect();
  await until(() => rec.errors.length === 1, "the error event");
  const [err] = rec.errors;
  assert.equal(err.code, "forbidden");
  assert.equal(typeof err.id, "number");
  assert.equal(h.state, "open", "an error reply does not close the connection");
  assert.deepEqual(subErrors, [err], "the subscription is told too");
});

test("getTicket: a fresh one-time ticket from POST /api/tickets for every connection", { timeout: 60_000 }, async (t) => {
  const attempts = [];
  let jwtSeconds = 3; // the first ticket carries a token about to expire
  const tickets = [];
  const getTicket = async () => {
    const res = await fetch(`${broker.http}/api/tickets`, {
      method: "POST",
      headers: { authorization: `Bearer ${token(jwtSeconds)}` },
    });
    assert.equal(res.status, 201);
    const { ticket } = await res.json();
    tickets.push(ticket);
    jwtSeconds = 3600;
    return ticket;
  };
  const h = connect(broker.ws, { getTicket, WebSocket: countingWebSocket(attempts) });
  t.after(() => h.close());
  const rec = record(h);
  await opened(h);
  assert.equal(new URL(attempts[0].url).searchParams.get("ticket"), tickets[0]);

  // The session ends at the ticket's JWT exp (4001); the client gets a new ticket.
  await until(() => rec.opens.length === 2, "a second connection after 4001");
  assert.equal(rec.closes[0].code, 4001);
  h.reconnect(); // and another: tickets are one-time, so each needs its own
  await until(() => rec.opens.length === 3, "a third connection");
  assert.equal(tickets.length, 3);
  assert.equal(new Set(tickets).size, 3);
  assert.deepEqual(
    attempts.map((a) => new URL(a.url).searchParams.get("ticket")),
    tickets,
  );

  // Publishing over HTTP needs the JWT too; the ticket's session receives it.
  const events = [];
  await h.subscribe("auth.t", (ev) => events.push(ev)).ready;
  assert.equal((await httpPublish(broker, { topic: "auth.t", data: "x" }, token(60))).status, 202);
  await until(() => events.length === 1, "the event");
});

test("a refused ticket fails the attempt (HTTP 401 on the upgrade) and is retried with backoff", { timeout: 60_000 }, async (t) => {
  let calls = 0;
  const h = connect(broker.ws, { getTicket: () => `bogus-${++calls}`, backoff: { initialMs: 50, maxMs: 200 } });
  t.after(() => h.close());
  const rec = record(h);
  await until(() => rec.closes.length >= 3, "three failed attempts");
  h.close();
  assert.deepEqual(rec.opens, []);
  assert.ok(rec.closes.slice(0, 3).every((c) => c.code === 1006 && c.willReconnect));
  assert.ok(calls >= 3, "a ticket per attempt");
});
