// Refreshing a token in place ({"op":"auth"} on the open connection) against a broker
// with auth.mode = "jwt": a token function's token is refreshed before its exp, the
// session and its subscriptions carry on, failures are retried and reported, and a
// string token is never refreshed.
//
// Tokens live a few seconds. The broker closes a session at the first tick of its
// timer (every 250 ms here) at or after exp, so a refresh that came too late shows as
// a 4001 close; the tests only ever bound things from one side with generous limits.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { connect, HeraldError } from "../herald.js";
import { recordingWebSocket, record, signJwt, sleep, startHerald, startJwtHerald, until } from "./support.js";

const SECRET = "herald-js-client-refresh-tests-0123456789"; // HS256 needs >= 32 bytes
const GRANTS = { subscribe: [">"], publish: ["refresh.>"] };

/** A token for `sub` that expires `seconds` from now (whole seconds, as JWTs count). */
function token(seconds, sub = "alice") {
  return signJwt(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + seconds, herald: GRANTS });
}

/** The `exp` of a token made by `token`, in ms. */
const expMs = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString()).exp * 1000;

/** The `auth` messages among what a client sent. */
const auths = (sent) => sent.filter((s) => s.message.op === "auth").map((s) => s.message);

/** @type {Awaited<ReturnType<typeof startHerald>>} */
let broker;
before(async () => {
  broker = await startJwtHerald(SECRET);
});
after(() => broker?.kill());

const opened = (h) => new Promise((resolve) => h.on("open", resolve));

// The tests wait for tokens to expire, not for the CPU: they run side by side.
describe("token refresh in place", { concurrency: true }, () => {
  test("a token function's token is refreshed before each exp: one session, its subscription intact", { timeout: 90_000 }, async (t) => {
    const issued = [];
    const sent = [];
    const h = connect(broker.ws, {
      token: () => {
        issued.push(token(4));
        return issued.at(-1);
      },
      WebSocket: recordingWebSocket(sent),
    });
    t.after(() => h.close());
    const rec = record(h);
    const welcome = await opened(h);
    const openedAt = performance.now();
    const events = [];
    await h.subscribe("refresh.a", (ev) => events.push(ev)).ready;

    // An event before the first refresh and one after each, until the first three
    // tokens have all expired (plus two ticks of the broker's timer).
    let published = 0;
    await h.publish("refresh.a", ++published);
    for (let i = 1; i <= 3; i++) {
      await until(() => rec.refreshes.length >= i, `refresh ${i}`);
      await h.publish("refresh.a", ++published);
    }
    await until(() => Date.now() > expMs(issued[2]) + 500, "the third token's exp to pass");
    await h.publish("refresh.a", ++published);
    await until(() => events.length === published, "every event");

    assert.deepEqual(rec.closes, [], "never disconnected");
    assert.deepEqual(rec.opens, [welcome], "one welcome: the same session throughout");
    assert.deepEqual(rec.states, ["open"]);
    assert.deepEqual(rec.errors, []);
    assert.equal(h.state, "open");
    assert.deepEqual(
      events.map((e) => [e.seq, e.data, e.replay]),
      Array.from({ length: published }, (_, i) => [i + 1, i + 1, undefined]),
      "every event once, in order, live",
    );

    // The function: once for the connection, then once per accepted refresh.
    const refreshes = rec.refreshes;
    assert.ok(refreshes.length >= 3);
    assert.equal(issued.length, 1 + refreshes.length);
    assert.deepEqual(
      refreshes.map((r) => r.exp * 1000),
      issued.slice(1, refreshes.length + 1).map(expMs),
      "each refresh event carries the new token's exp",
    );
    // No refresh storm: a 4 s token is refreshed when about a quarter of it is left.
    let previous = openedAt;
    for (const { at } of refreshes) {
      assert.ok(at - previous >= 1000, `refreshes ${Math.round(at - previous)} ms apart`);
      previous = at;
    }
    // On the wire: the first-message auth, then one refresh (with an id) per token.
    const sentAuths = auths(sent);
    assert.deepEqual(
      sentAuths.map((m) => m.token),
      issued.slice(0, sentAuths.length),
    );
    assert.equal(sentAuths[0].id, undefined);
    assert.ok(sentAuths.slice(1).every((m) => typeof m.id === "number"));
    assert.equal(sent.filter((s) => s.message.op === "subscribe").length, 1, "never resubscribed");
  });

  test("a refresh token of another sub is refused and reported; at exp the broker closes with 4001 and the client reconnects", { timeout: 90_000 }, async (t) => {
    let sub = "alice";
    let calls = 0;
    const h = connect(broker.ws, {
      token: () => {
        calls++;
        return token(4, sub);
      },
      backoff: { initialMs: 50, maxMs: 200 },
    });
    t.after(() => h.close());
    const rec = record(h);
    const callsAtOpen = [];
    h.on("open", () => callsAtOpen.push(calls));
    const first = await opened(h);
    sub = "bob"; // from now on the token function hands out another user's tokens
    const events = [];
    await h.subscribe("refresh.b", (ev) => events.push(ev)).ready;
    await h.publish("refresh.b", 1);

    await until(() => rec.closes.length === 1, "the broker to close the session at exp");
    const [close] = rec.closes;
    assert.deepEqual(
      { code: close.code, reason: close.reason, willReconnect: close.willReconnect },
      { code: 4001, reason: "token expired", willReconnect: true },
      "README: with a token function, a 4001 gets a fresh token and one more try",
    );
    const errors = rec.errors;
    assert.ok(errors.length >= 1, "the refused refresh is reported");
    for (const err of errors) {
      assert.ok(err instanceof HeraldError);
      assert.equal(err.code, "refresh_failed");
      assert.ok(err.cause instanceof HeraldError);
      assert.equal(err.cause.code, "forbidden");
      assert.match(err.message, /forbidden: a refresh token must have the session's subject/);
      assert.match(err.message, /retrying in \d+ ms|giving up/);
    }
    assert.ok(
      rec.log.findIndex((e) => e.name === "error") < rec.log.findIndex((e) => e.name === "close"),
      "reported before the close",
    );
    assert.deepEqual(rec.refreshes, []);

    // The new connection is bob's own session: first-message auth takes any valid
    // token. The subscription resumes on it, and bob's tokens refresh in place.
    await until(() => rec.opens.length === 2, "a second connection");
    const second = rec.opens[1];
    assert.notEqual(second.session, first.session);
    await h.publish("refresh.b", 2);
    await until(() => events.length === 2, "the event on the new connection");
    assert.deepEqual(
      events.map((e) => [e.seq, e.data, e.replay]),
      [
        [1, 1, undefined],
        [2, 2, undefined],
      ],
    );
    assert.deepEqual(rec.resets, []);
    await until(() => rec.refreshes.length >= 1, "a refresh of the new session");
    assert.equal(rec.closes.length, 1);
    assert.equal(calls, callsAtOpen[1] + rec.refreshes.length, "once for the connection, once per refresh");
    assert.deepEqual(rec.states, ["open", "reconnecting", "open"]);
  });

  test("a refresh whose token function throws, then does not answer in time, is retried while the token lasts", { timeout: 90_000 }, async (t) => {
    const results = []; // what the function did, per call
    const h = connect(broker.ws, {
      token: () => {
        const call = results.length;
        if (call === 1) {
          results.push("threw");
          throw new Error("token endpoint said 503");
        }
        if (call === 2) {
          results.push("hung");
          return new Promise(() => {});
        }
        results.push("token");
        return token(12);
      },
      // The function gets this long; the token leaves 3 s or more for the retries.
      requestTimeoutMs: 1500,
      backoff: { initialMs: 50, maxMs: 100 },
    });
    t.after(() => h.close());
    const rec = record(h);
    const welcome = await opened(h);
    const events = [];
    await h.subscribe("refresh.c", (ev) => events.push(ev)).ready;

    await until(() => rec.refreshes.length === 1, "the third try to succeed", 30_000);
    assert.deepEqual(results, ["token", "threw", "hung", "token"]);
    const errors = rec.errors;
    assert.deepEqual(
      errors.map((e) => e.code),
      ["refresh_failed", "refresh_failed"],
    );
    assert.equal(errors[0].cause.message, "token endpoint said 503");
    assert.match(errors[0].message, /token endpoint said 503.*retrying in \d+ ms/);
    assert.ok(errors[1].cause instanceof HeraldError);
    assert.equal(errors[1].cause.code, "timeout");
    assert.match(errors[1].message, /no answer within 1500 ms/);

    await h.publish("refresh.c", "after");
    await until(() => events.length === 1, "an event after the refresh");
    assert.deepEqual(rec.closes, []);
    assert.deepEqual(rec.opens, [welcome]);
  });

  test("a string token is never refreshed: it expires with 4001 and the client stops", { timeout: 60_000 }, async (t) => {
    const sent = [];
    const jwt = token(3);
    const h = connect(broker.ws, { token: jwt, WebSocket: recordingWebSocket(sent) });
    t.after(() => h.close());
    const rec = record(h);
    await opened(h);
    await until(() => h.state === "unauthorized", "state unauthorized after exp");
    assert.deepEqual(auths(sent), [{ op: "auth", token: jwt }], "only the first-message auth");
    assert.deepEqual(
      rec.closes.map((c) => [c.code, c.reason, c.willReconnect]),
      [[4001, "token expired", false]],
    );
    assert.deepEqual(rec.refreshes, []);
    assert.deepEqual(rec.errors, []);
  });

  test("getTicket with a token function: the ticket opens the connection, the token refreshes it in place", { timeout: 90_000 }, async (t) => {
    let tickets = 0;
    const getTicket = async () => {
      const res = await fetch(`${broker.http}/api/tickets`, {
        method: "POST",
        headers: { authorization: `Bearer ${token(4)}` },
      });
      assert.equal(res.status, 201);
      tickets++;
      return (await res.json()).ticket;
    };
    const issued = [];
    const h = connect(broker.ws, {
      getTicket,
      token: () => {
        issued.push(token(4));
        return issued.at(-1);
      },
    });
    t.after(() => h.close());
    const rec = record(h);
    const welcome = await opened(h);
    const events = [];
    await h.subscribe("refresh.d", (ev) => events.push(ev)).ready;
    await until(() => rec.refreshes.length >= 2, "two refreshes");
    await until(() => Date.now() > expMs(issued[1]) + 500, "the second token's exp to pass");
    await h.publish("refresh.d", 1);
    await until(() => events.length === 1, "the event");
    assert.deepEqual(rec.closes, []);
    assert.deepEqual(rec.opens, [welcome]);
    assert.deepEqual(rec.errors, []);
    assert.equal(tickets, 1, "one connection, one ticket");
  });

  test("close() cancels a planned refresh", { timeout: 60_000 }, async (t) => {
    let calls = 0;
    const h = connect(broker.ws, {
      token: () => {
        calls++;
        return token(3);
      },
    });
    t.after(() => h.close());
    await opened(h);
    h.close();
    await sleep(4000); // past the token's exp, when its refresh was due
    assert.equal(calls, 1);
    assert.equal(h.state, "closed");
  });
});
