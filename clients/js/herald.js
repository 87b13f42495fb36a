/**
 * Herald client: one dependency-free ES module for browsers and Node 20+.
 *
 * It speaks the Herald wire protocol v1 (`herald.v1.json`, see docs/protocol.md) and
 * hides the parts every application would otherwise write again: request ids and
 * promise replies, resubscribing with `resume` after a reconnect, answering heartbeats
 * and noticing a dead connection, and reconnecting without a retry storm.
 *
 * What it cannot hide: delivery is best-effort, at-most-once. Events can be lost, and
 * the client tells you whenever it can know (`gap`, `lagged`, `reset` events). It
 * never invents, repeats or reorders an event of a topic for one subscription.
 *
 * Layout: pure helpers (`backoffDelay`, `topicMatches`), `HeraldError`, then the
 * `HeraldClient` class: connection lifecycle, message dispatch, subscriptions.
 *
 * @module herald
 */

/** The only subprotocol Herald speaks; offered on every upgrade. */
export const PROTOCOL = "herald.v1.json";

/** Close codes that mean the client itself is broken: retrying would fail again. */
const CLIENT_BUGS = new Set([1002, 1003, 1007, 1009]);

/**
 * Silence allowed before the first `welcome` tells us the server's heartbeat: the
 * protocol defaults (25 s interval + 10 s timeout). It also bounds a connect attempt
 * that hangs (a blackholed TCP handshake), which the WebSocket API never times out.
 */
const DEFAULT_SILENCE_MS = 35_000;

/**
 * Reconnect delay for the given attempt (0 for the first retry), "full jitter":
 * a uniformly random value in [0, min(maxMs, initialMs * 2^attempt)).
 *
 * Full jitter rather than a fixed exponential delay so that many clients cut off at
 * the same moment (a broker restart, a network blip) spread their reconnects out
 * instead of arriving together at every step.
 *
 * @param {number} attempt consecutive failed attempts so far
 * @param {{initialMs?: number, maxMs?: number}} [backoff]
 * @param {() => number} [random] a source of numbers in [0, 1), Math.random by default
 * @returns {number} whole milliseconds
 */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 30_000 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * 2 ** attempt);
  return Math.floor(random() * cap);
}

/**
 * Whether a topic matches a subscription pattern, with NATS-style wildcards: `*` is
 * exactly one token, a final `>` one or more tokens. Events do not say which
 * subscription they are for, so the client routes them with the same rule the
 * broker used.
 *
 * @param {string} pattern
 * @param {string} topic
 */
export function topicMatches(pattern, topic) {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return t.length > i;
    if (i >= t.length || (p[i] !== "*" && p[i] !== t[i])) return false;
  }
  return p.length === t.length;
}

/**
 * An error reply from the broker (`code` is one of the protocol's error codes), or a
 * request the client could not make: `not_open` (publish while not connected),
 * `disconnected` (the connection was lost before the reply), `unsubscribed`.
 */
export class HeraldError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {string | number} [id] the request id the broker answered
   */
  constructor(code, message, id) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    if (id !== undefined) this.id = id;
  }
}

/**
 * Opens a client and starts connecting at once. See README.md for the options.
 *
 * @param {string} url `ws://host/ws`, `wss://…`; in a browser also `/ws` or `https://…`
 * @param {object} [options]
 */
export function connect(url, options) {
  return new HeraldClient(url, options);
}

/** A connection to one Herald broker that reconnects by itself. */
export class HeraldClient {
  #url;
  #options;
  #WebSocket;
  #state = "connecting";
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /** The current socket, or null while waiting to reconnect. */
  #ws = null;
  /**
   * Bumped when an attempt starts or is abandoned, so that an attempt still awaiting
   * its credentials, or code that just ran a listener (which may have called
   * close() or reconnect()), can tell that it is no longer in charge.
   */
  #generation = 0;
  /** Failed attempts since the last `welcome`: drives the backoff. */
  #attempt = 0;
  #retryTimer = null;
  /** True between a 4001 and the next `welcome`: a second 4001 means stop. */
  #authRetry = false;

  /** Epoch of the broker process we are connected to (from `welcome`). */
  #epoch = null;
  #silenceMs = DEFAULT_SILENCE_MS;
  #lastHeard = 0;
  #watchdog = null;

  #nextId = 1;
  /** Requests awaiting their reply, by id. Ids are never reused across connections. */
  #pending = new Map();
  /** Public Subscription → its internal record. */
  #subs = new Map();

  constructor(url, options = {}) {
    this.#url = websocketUrl(url);
    this.#options = {
      backoff: { initialMs: 500, maxMs: 30_000, ...options.backoff },
      goingAwayMaxMs: options.goingAwayMaxMs ?? 5_000,
      token: options.token,
      getTicket: options.getTicket,
    };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "herald: no WebSocket implementation; on Node 20 run with --experimental-websocket or pass { WebSocket }",
      );
    }
    this.#open();
  }

  /** "connecting" | "open" | "reconnecting" | "closed" | "unauthorized" */
  get state() {
    return this.#state;
  }

  on(name, fn) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    this.#listeners.get(name).add(fn);
    return this;
  }

  off(name, fn) {
    this.#listeners.get(name)?.delete(fn);
    return this;
  }

  /**
   * Subscribes to one pattern (or several, all or nothing). The subscription lives
   * until `unsubscribe()`: it is sent again, with `resume`, after every reconnect.
   *
   * @param {string | string[]} topics
   * @param {{last?: number} | Function} [options]
   * @param {(event: object) => void} [handler]
   */
  subscribe(topics, options, handler) {
    if (typeof options === "function") [options, handler] = [{}, options];
    const list = Object.freeze(Array.isArray(topics) ? [...topics] : [topics]);
    let settle;
    const ready = new Promise((resolve, reject) => (settle = { resolve, reject }));
    // The application may never look at `ready`; a rejection must not crash Node.
    ready.catch(() => {});
    const sub = Object.freeze({
      topics: list,
      ready,
      unsubscribe: () => this.#unsubscribe(sub),
    });
    this.#subs.set(sub, {
      topics: list,
      last: options?.last ?? 0,
      handler: handler ?? (() => {}),
      settle,
      settled: false,
      /** topic → {epoch, seq} of the newest event this subscription delivered. */
      seen: new Map(),
      /** Epoch of the newest entry in `seen`: the one a resume is valid for. */
      epoch: null,
      /** Whether the subscribe on this connection asked for `last` replay. */
      wantsReplay: false,
    });
    if (this.#state === "open") this.#sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes over the WebSocket. Resolves on `ok` ("accepted for fan-out", not
   * "delivered"); rejects with a HeraldError on an error reply, at once when not
   * open, and when the connection is lost before the reply.
   *
   * @param {string} topic
   * @param {unknown} data any JSON value
   * @param {{key?: string, headers?: Record<string, string>}} [extra]
   */
  publish(topic, data, extra = {}) {
    if (this.#state !== "open") {
      return Promise.reject(new HeraldError("not_open", `cannot publish while ${this.#state}`));
    }
    return this.#request({ op: "publish", topic, data, ...extra }, "reject");
  }

  /** Closes with 1000 and stays closed (until `reconnect()`). */
  close() {
    const hadSocket = this.#abandon(1000, "client closed");
    const generation = this.#generation;
    if (hadSocket) this.#emit("close", { code: 1000, reason: "client closed", willReconnect: false, delayMs: null });
    if (generation === this.#generation) this.#setState("closed");
  }

  /**
   * Drops the current connection, if any, and connects again now with a fresh
   * credential: for use after "unauthorized" or "closed", or when the application
   * knows better than the backoff.
   */
  reconnect() {
    const hadSocket = this.#abandon(1000, "client reconnect");
    this.#attempt = 0;
    this.#authRetry = false;
    const generation = this.#generation;
    if (hadSocket) this.#emit("close", { code: 1000, reason: "client reconnect", willReconnect: true, delayMs: 0 });
    if (generation === this.#generation) this.#setState("connecting");
    if (generation === this.#generation) this.#open();
  }

  // ---- connection lifecycle -------------------------------------------------------

  async #open() {
    const generation = ++this.#generation;
    let url = this.#url;
    let token;
    try {
      const { token: tokenOption, getTicket } = this.#options;
      if (getTicket) {
        const u = new URL(url);
        u.searchParams.set("ticket", await getTicket());
        url = u.href;
      }
      token = typeof tokenOption === "function" ? await tokenOption() : tokenOption;
    } catch (err) {
      if (generation !== this.#generation) return;
      // A credential we cannot get after a 4001 means the user must act; otherwise
      // treat it like an unreachable broker (the token endpoint may be down too).
      return this.#lost(this.#authRetry ? 4001 : 1006, `could not get credentials: ${err?.message ?? err}`);
    }
    if (generation !== this.#generation) return;
    let ws;
    try {
      ws = new this.#WebSocket(url, PROTOCOL);
    } catch (err) {
      return this.#lost(1006, `could not open a WebSocket: ${err?.message ?? err}`);
    }
    this.#ws = ws;
    this.#silenceMs = DEFAULT_SILENCE_MS;
    this.#heard();
    // Browsers cannot set headers on the upgrade, so the token is the first message.
    ws.onopen = () => token && this.#send({ op: "auth", token });
    ws.onmessage = (e) => this.#onMessage(e.data);
    ws.onclose = (e) => this.#lost(e.code, e.reason ?? "");
    // A failed handshake (refused, or an HTTP 401/503 instead of 101) should fire
    // error then close; Node 20's WebSocket fires only the error and stays
    // CONNECTING forever. Either way the attempt is over. Later errors are followed
    // by a close event, which carries the code.
    ws.onerror = () => ws.readyState === 0 && this.#lost(1006, "");
  }

  /**
   * The current connection is gone (or never came up). Decides, from the close code,
   * whether and when to try again. Every socket ends here exactly once.
   */
  #lost(code, reason) {
    this.#dropSocket(null, "");
    if (CLIENT_BUGS.has(code)) return this.#giveUp("closed", code, reason);
    if (code === 4001) {
      const { token, getTicket } = this.#options;
      const canRefresh = typeof token === "function" || typeof getTicket === "function";
      if (!canRefresh || this.#authRetry) return this.#giveUp("unauthorized", code, reason);
      this.#authRetry = true;
    }
    let delayMs;
    if (code === 1001) {
      // The broker is going away and every client heard it at the same instant.
      delayMs = Math.floor(Math.random() * this.#options.goingAwayMaxMs);
    } else {
      // 4029 ("reconnect later") skips straight to the largest delays.
      const attempt = code === 4029 ? Infinity : this.#attempt++;
      delayMs = backoffDelay(attempt, this.#options.backoff);
    }
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, delayMs);
    const generation = this.#generation;
    this.#emit("close", { code, reason, willReconnect: true, delayMs });
    // A listener may have called close() or reconnect(): then that is the state.
    if (generation === this.#generation) this.#setState("reconnecting");
  }

  #giveUp(state, code, reason) {
    const generation = this.#generation;
    this.#emit("close", { code, reason, willReconnect: false, delayMs: null });
    if (generation === this.#generation) this.#setState(state);
  }

  /**
   * Abandons whatever is under way (socket, credential fetch or retry timer) and
   * says whether there was a socket.
   */
  #abandon(code, reason) {
    this.#generation++;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const hadSocket = this.#ws !== null;
    this.#dropSocket(code, reason);
    return hadSocket;
  }

  /**
   * Detaches the current socket (its late events are ignored from now on), closes it
   * when `code` is given, and settles the requests that can no longer be answered.
   */
  #dropSocket(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    clearTimeout(this.#watchdog);
    this.#watchdog = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (code !== null) {
        try {
          ws.close(code, reason);
        } catch {
          // already closing
        }
      }
    }
    for (const [id, request] of this.#pending) {
      this.#pending.delete(id);
      // Subscribes are sent again on the next welcome; the others cannot be.
      if (request.drop === "resolve") request.resolve();
      else if (request.drop === "reject") request.reject(new HeraldError("disconnected", "connection lost before the reply"));
    }
  }

  /**
   * Notes a sign of life from the server and keeps one timer that fires when the
   * server has been silent for too long. One timer re-armed lazily, rather than one
   * per message, keeps a busy stream cheap; comparing with the real time of the last
   * message keeps throttled timers (background tabs) from declaring a live
   * connection dead.
   */
  #heard() {
    this.#lastHeard = performance.now();
    if (this.#watchdog === null) this.#armWatchdog(this.#silenceMs);
  }

  #armWatchdog(ms) {
    this.#watchdog = setTimeout(() => {
      const idle = performance.now() - this.#lastHeard;
      if (idle < this.#silenceMs) return this.#armWatchdog(this.#silenceMs - idle);
      // The server's pings stopped: the path is dead even if TCP has not noticed.
      // Our close frame may never be answered, so do not wait for it.
      this.#dropSocket(4008, "heartbeat timeout");
      this.#lost(4008, "heartbeat timeout");
    }, ms);
  }

  #setState(state) {
    const prev = this.#state;
    if (state === prev) return;
    this.#state = state;
    this.#emit("state", state, prev);
  }

  #emit(name, ...args) {
    for (const fn of [...(this.#listeners.get(name) ?? [])]) callSafely(fn, ...args);
  }

  #send(message) {
    this.#ws?.send(JSON.stringify(message));
  }

  /**
   * Sends a request with a fresh id. `drop` says what happens to the promise if the
   * connection is lost before the reply: "reject" or "resolve".
   */
  #request(message, drop) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, drop });
      this.#send({ ...message, id });
    });
  }

  // ---- messages from the server ---------------------------------------------------

  #onMessage(data) {
    this.#heard();
    if (typeof data !== "string") return; // Herald sends text frames only
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "event":
        return this.#onEvent(msg);
      case "welcome":
        return this.#onWelcome(msg);
      case "ping":
        return this.#send({ op: "pong" });
      case "subscribed":
      case "unsubscribed":
      case "ok":
      case "pong":
        return this.#onReply(msg);
      case "error":
        return this.#onError(msg);
      case "lagged":
        return this.#emit("lagged", { dropped: msg.dropped });
      case "reset":
        for (const s of this.#subs.values()) s.seen.delete(msg.topic);
        return this.#emit("reset", { topic: msg.topic, reason: msg.reason });
    }
  }

  #onWelcome(welcome) {
    this.#epoch = welcome.epoch;
    const hb = welcome.heartbeat;
    if (hb) {
      this.#silenceMs = hb.interval_ms + hb.timeout_ms;
      clearTimeout(this.#watchdog);
      this.#armWatchdog(this.#silenceMs);
    }
    this.#attempt = 0;
    this.#authRetry = false;
    // Snapshot first: a "state" or "open" handler that subscribes sends its own.
    const subs = [...this.#subs.keys()];
    const generation = this.#generation;
    this.#setState("open");
    if (generation !== this.#generation) return; // a listener closed or reconnected
    for (const sub of subs) if (this.#subs.has(sub)) this.#sendSubscribe(sub);
    this.#emit("open", welcome);
  }

  #onReply(msg) {
    const request = this.#pending.get(msg.id);
    if (!request) return; // e.g. the `ok` answering a first-message auth with auth off
    this.#pending.delete(msg.id);
    if (request.sub) {
      const s = this.#subs.get(request.sub);
      if (s && !s.settled) {
        s.settled = true;
        s.settle.resolve();
      }
    } else {
      request.resolve();
    }
  }

  #onError(msg) {
    const err = new HeraldError(msg.code, msg.message, msg.id);
    const request = msg.id === undefined ? undefined : this.#pending.get(msg.id);
    if (!request) return this.#emit("error", err);
    this.#pending.delete(msg.id);
    if (!request.sub) return request.reject(err);
    const s = this.#subs.get(request.sub);
    if (s && !s.settled) {
      // The first subscribe failed: nothing was subscribed (all or nothing).
      this.#subs.delete(request.sub);
      s.settled = true;
      s.settle.reject(err);
    } else {
      this.#emit("error", err); // a resubscribe after reconnect failed
    }
  }

  /**
   * Routes an event to every subscription whose pattern matches it, keeping per
   * subscription the last seq delivered for each topic. That position serves three
   * purposes: `resume` after a reconnect, detecting gaps, and dropping events a
   * subscription already had (history replayed for an overlapping subscription).
   */
  #onEvent(ev) {
    let gapReported = false;
    for (const s of this.#subs.values()) {
      if (!s.topics.some((p) => topicMatches(p, ev.topic))) continue;
      const pos = s.seen.get(ev.topic);
      if (pos && pos.epoch === this.#epoch) {
        if (ev.seq <= pos.seq) continue;
        if (ev.seq !== pos.seq + 1 && !gapReported) {
          gapReported = true;
          this.#emit("gap", { topic: ev.topic, expected: pos.seq + 1, got: ev.seq });
        }
      } else if (ev.replay && !s.wantsReplay) {
        continue; // history another subscription asked for
      }
      s.seen.set(ev.topic, { epoch: this.#epoch, seq: ev.seq });
      s.epoch = this.#epoch;
      callSafely(s.handler, ev);
    }
  }

  // ---- subscriptions --------------------------------------------------------------

  #sendSubscribe(sub) {
    const s = this.#subs.get(sub);
    const message = { op: "subscribe", topics: s.topics };
    const resume = this.#resumeOf(s);
    if (resume) message.resume = resume;
    else if (s.last > 0) message.last = s.last;
    s.wantsReplay = !resume && s.last > 0;
    const id = this.#nextId++;
    this.#pending.set(id, { sub });
    this.#send({ ...message, id });
  }

  /**
   * The `resume` position of a subscription: every topic it has seen, with the epoch
   * those seqs belong to. Positions from an older epoch whose `reset` never arrived
   * (the connection dropped first) cannot be resumed under the newer epoch; they are
   * reset here so the application still learns about them.
   */
  #resumeOf(s) {
    const topics = {};
    let any = false;
    for (const [topic, pos] of s.seen) {
      if (pos.epoch === s.epoch) {
        topics[topic] = pos.seq;
        any = true;
      } else {
        s.seen.delete(topic);
        this.#emit("reset", { topic, reason: "epoch_changed" });
      }
    }
    return any ? { epoch: s.epoch, topics } : null;
  }

  #unsubscribe(sub) {
    const s = this.#subs.get(sub);
    if (!s) return Promise.resolve();
    this.#subs.delete(sub);
    if (!s.settled) {
      s.settled = true;
      s.settle.reject(new HeraldError("unsubscribed", "unsubscribed before the broker confirmed"));
    }
    // The broker holds one subscription per pattern per connection: keep those that
    // another subscription of this client still uses.
    const inUse = new Set([...this.#subs.values()].flatMap((o) => o.topics));
    const topics = s.topics.filter((t) => !inUse.has(t));
    if (topics.length === 0 || this.#state !== "open") return Promise.resolve();
    // Once the connection is gone, so is the broker's subscription: resolve then.
    return this.#request({ op: "unsubscribe", topics }, "resolve");
  }
}

/**
 * Resolves a relative URL against the page (browsers) and maps http(s) to ws(s), so
 * `connect("/ws")` works from a page served by Herald.
 */
function websocketUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`herald: not a WebSocket URL: ${url}`);
  }
  return u.href;
}

/**
 * Calls an application callback so that its exception cannot break the client's
 * state machine, yet still surfaces as an uncaught error where the developer sees it.
 */
function callSafely(fn, ...args) {
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

export default { connect, backoffDelay, topicMatches, HeraldClient, HeraldError, PROTOCOL };
