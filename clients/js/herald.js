/**
 * Herald client: one dependency-free ES module for browsers and Node 20+.
 *
 * It speaks the Herald wire protocol v1 (`herald.v1.json`, see docs/protocol.md) and
 * hides the parts every application would otherwise write again: request ids and
 * promise replies, resubscribing with `resume` after a reconnect, answering heartbeats
 * and noticing a dead connection, reconnecting without a retry storm, and refreshing a
 * token function's token on the open connection before it expires.
 *
 * Two transports carry the same session: WebSocket, and Server-Sent Events
 * (`GET /sse`, docs/protocol.md section 10) where a proxy refuses upgrades. Over SSE
 * the subscriptions are in the stream's URL, so a change of them reopens the stream
 * with the positions seen so far (`?resume=`), and `publish` is `POST /api/publish`.
 * With `transport: "auto"` the client falls back to SSE after two failed upgrades in
 * a row and tries WebSocket again later.
 *
 * What it cannot hide: delivery is best-effort, at-most-once. Events can be lost, and
 * the client tells you whenever it can know (`gap`, `lagged`, `reset` events). It
 * never invents, repeats or reorders an event of a topic for one subscription.
 *
 * Layout: pure helpers (`backoffDelay`, `topicMatches`), `HeraldError`, the
 * `HeraldClient` class (connection lifecycle, requests and their timeouts, token
 * refresh, message dispatch, subscriptions), then `Subscription` and the iterator
 * behind `for await`.
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
 * How long a request waits for its reply unless told otherwise. A healthy broker
 * answers in milliseconds; ten seconds is long enough for a loaded one and short
 * enough that a user still waiting for a spinner gets an answer.
 */
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/** Events an iterator holds for a loop that has not caught up yet. */
const DEFAULT_BUFFER_SIZE = 1_000;

/**
 * With `transport: "auto"`, how long the client stays on Server-Sent Events before it
 * checks whether a WebSocket upgrade gets through again (`websocketRetryMs`).
 */
const DEFAULT_WEBSOCKET_RETRY_MS = 60_000;

/**
 * When a stream is replaced, how long the old one goes on delivering after the new
 * one's subscriptions are in effect (see `#reopen`). Events published before that
 * point can still be on their way on the old stream; a second is far more than a
 * healthy path needs to bring them.
 */
const STREAM_OVERLAP_MS = 1_000;

/** The most events a new stream holds back during an overlap; past it, it ends early. */
const MAX_HELD_EVENTS = 10_000;

/** Failed attempts in a row, before any `welcome`, after which "auto" changes transport. */
const FAILURES_BEFORE_SWITCH = 2;

/**
 * The most a stream URL's `resume` may take, as encoded. Proxies refuse longer request
 * lines (nginx's default limit is 8 KB); positions past it cannot be carried, and
 * their topics are reset instead.
 */
const MAX_RESUME_CHARS = 6_000;

/** setTimeout fires at once for longer delays, so anything above counts as "never". */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long before its `exp` a token function's token is refreshed in place, at most
 * (`refreshMarginMs`). A minute leaves room for a slow token endpoint and a few
 * retries, and for a clock that is a little behind the broker's.
 */
const DEFAULT_REFRESH_MARGIN_MS = 60_000;

/**
 * A short-lived token is refreshed when this share of its remaining lifetime is left,
 * when that is less than the margin: a 4 s token 1 s before its `exp`, not at once.
 */
const REFRESH_SHARE = 0.25;

/**
 * Refreshes come at least this far apart, even for a token that looks expired already
 * (a clock far ahead of the broker's), so that a skewed clock cannot make a loop.
 */
const MIN_REFRESH_DELAY_MS = 1_000;

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
 * request the client could not make: `not_open` (publish or ping while not
 * connected), `disconnected` (the connection was lost, or the client closed, before
 * the reply), `unsubscribed` (unsubscribed before the broker confirmed), `timeout`
 * (no reply within the request's timeout), `refresh_failed` (an in-place token
 * refresh failed; `cause` holds why).
 */
export class HeraldError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {string | number} [id] the request's id: the one the broker answered, or
   *   the one that went unanswered (`timeout`)
   */
  constructor(code, message, id) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    if (id !== undefined) this.id = id;
  }
}

/**
 * Opens a client. It starts connecting at once, unless `options.autoConnect` is
 * false. See README.md for the options.
 *
 * @param {string} url `ws://host/ws`, `wss://…`; in a browser also `/ws` or `https://…`
 * @param {object} [options]
 */
export function connect(url, options) {
  return new HeraldClient(url, options);
}

/** A connection to one Herald broker that reconnects by itself. */
export class HeraldClient {
  /** The URL as given, kept until it can be resolved (see `#prepare`). */
  #rawUrl;
  /** The resolved ws(s):// URL; null until the first connection attempt. */
  #url = null;
  #options;
  #WebSocket = null;
  #EventSource = null;
  #state = "connecting";
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /** The current socket, or null while waiting to reconnect (or on SSE). */
  #ws = null;
  /**
   * "websocket" | "sse": the transport of the current connection or attempt. With
   * `transport: "auto"` it changes after failed attempts (see `#lost`).
   */
  #transport;
  /** The current event stream (an EventSource), or null. */
  #stream = null;
  /** The patterns the current stream was opened with, in order. */
  #streamTopics = [];
  /** Whether the current connection got its `welcome` (an attempt that did not failed). */
  #welcomed = false;
  /** Attempts on the current transport that failed before a `welcome`, in a row. */
  #failures = 0;
  /**
   * True while the stream is being replaced for a subscription change or a fresh
   * token (or the transport switched back to WebSocket): the session goes on, so the
   * state stays "open" and no `close` or `open` is emitted for it.
   */
  #quiet = false;
  /** True while a quiet reopen carries a fresh token: its `welcome` emits `refresh`. */
  #refreshing = false;
  /**
   * The stream being replaced, while it still delivers (see `#reopen`): the
   * EventSource, its patterns, the new stream's events of those patterns held back
   * meanwhile, and the timer that ends the overlap.
   */
  #draining = null;
  /** A reopen planned for the end of the current task (several calls, one reopen). */
  #reopenQueued = false;
  /** A reopen asked for during an overlap, made when it ends (see `#queueReopen`). */
  #reopenAfterDrain = false;
  /**
   * Unsubscribes over SSE, resolved when the stream that held their patterns is let
   * go (replaced, or lost): from then on it delivers nothing to the application.
   */
  #streamWaiters = [];
  /**
   * On SSE with "auto": the WebSocket probe under way, and the timer of the next one
   * (or, while one runs, of giving up on it).
   */
  #probeTimer = null;
  #probe = null;
  /** The token this connection's credentials came from: Bearer for `POST /api/publish`. */
  #httpToken = null;
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
  /** Bounds an attempt until its `welcome` (see `#open`). */
  #handshakeTimer = null;

  /**
   * The token sent on the current connection, when it came from a token function:
   * its `exp` says when to refresh (see `#scheduleRefresh`).
   */
  #connectionToken = null;
  /** When the next in-place refresh (or retry) runs; null when none is planned. */
  #refreshTimer = null;
  /** The `exp` of the session's current token, in ms since the epoch (or null). */
  #expiresAt = null;
  /** Failed refreshes since the last accepted one: drives their backoff. */
  #refreshAttempt = 0;

  /** Epoch of the broker process we are connected to (from `welcome`). */
  #epoch = null;
  /** Welcomes received: what `local` positions are compared within. */
  #connections = 0;
  #silenceMs = DEFAULT_SILENCE_MS;
  #lastHeard = 0;
  #watchdog = null;

  /** Where the browser's `online` event comes from (null: nowhere, as in Node). */
  #onlineTarget;
  #onlineListening = false;

  #nextId = 1;
  /** Requests awaiting their reply, by id. Ids are never reused across connections. */
  #pending = new Map();
  /** Public Subscription → its internal record. */
  #subs = new Map();

  constructor(url, options = {}) {
    this.#rawUrl = url;
    this.#options = {
      backoff: { initialMs: 500, maxMs: 30_000, ...options.backoff },
      goingAwayMaxMs: options.goingAwayMaxMs ?? 5_000,
      token: options.token,
      getTicket: options.getTicket,
      requestTimeoutMs: timeoutOption(options.requestTimeoutMs, "requestTimeoutMs") ?? DEFAULT_REQUEST_TIMEOUT_MS,
      refreshMarginMs: timeoutOption(options.refreshMarginMs, "refreshMarginMs") ?? DEFAULT_REFRESH_MARGIN_MS,
      WebSocket: options.WebSocket,
      EventSource: options.EventSource,
      transport: transportOption(options.transport),
      websocketRetryMs:
        timeoutOption(options.websocketRetryMs, "websocketRetryMs") ?? DEFAULT_WEBSOCKET_RETRY_MS,
      sseUrl: options.sseUrl,
    };
    this.#transport = this.#options.transport === "sse" ? "sse" : "websocket";
    this.#onlineTarget = options.onlineTarget === undefined ? browserGlobal() : options.onlineTarget;
    if (options.autoConnect ?? true) {
      this.#prepare();
      this.#open();
      return;
    }
    // Server-side rendering: no socket, no WebSocket class, no page to resolve a
    // relative URL against, and no listener on anything, until connect(). A URL that
    // can be checked now still is, so that a typo fails where it was written.
    this.#state = "idle";
    if (globalThis.location?.href || /^[a-z][a-z0-9+.-]*:/i.test(url)) this.#url = websocketUrl(url);
  }

  /**
   * "idle" | "connecting" | "open" | "reconnecting" | "closed" | "unauthorized"
   * ("idle" only with `autoConnect: false`, before `connect()`).
   */
  get state() {
    return this.#state;
  }

  /**
   * "websocket" | "sse": the transport of the current connection, or of the next
   * attempt while there is none.
   */
  get transport() {
    return this.#transport;
  }

  on(name, fn) {
    addListener(this.#listeners, name, fn);
    return this;
  }

  off(name, fn) {
    this.#listeners.get(name)?.delete(fn);
    return this;
  }

  /**
   * Starts connecting, when the client is not connected or trying to be: after
   * `autoConnect: false`, `close()`, or `"unauthorized"`. Otherwise it does nothing,
   * so that a component that mounts twice (React's StrictMode) can call it freely.
   *
   * @returns {this}
   * @throws {TypeError} when there is no WebSocket implementation, or the URL is
   *   relative and there is no page to resolve it against
   */
  connect() {
    if (this.#state === "idle" || this.#state === "closed" || this.#state === "unauthorized") this.reconnect();
    return this;
  }

  /**
   * Subscribes to one pattern (or several, all or nothing). The subscription lives
   * until `unsubscribe()`: it is sent again, with `resume`, after every reconnect.
   * Without a handler, read its events with `for await`, or `sub.on("event", …)`.
   *
   * @param {string | string[]} topics
   * @param {{last?: number, bufferSize?: number, timeoutMs?: number} | Function} [options]
   * @param {(event: object) => void} [handler]
   */
  subscribe(topics, options, handler) {
    if (typeof options === "function") [options, handler] = [{}, options];
    const list = Object.freeze(Array.isArray(topics) ? [...topics] : [topics]);
    const bufferSize = options?.bufferSize ?? DEFAULT_BUFFER_SIZE;
    if (!Number.isInteger(bufferSize) || bufferSize < 1) {
      throw new TypeError(`herald: bufferSize must be a positive integer, got ${bufferSize}`);
    }
    const timeoutMs = timeoutOption(options?.timeoutMs, "timeoutMs");
    let settle;
    const ready = new Promise((resolve, reject) => (settle = { resolve, reject }));
    // The application may never look at `ready`; a rejection must not crash Node.
    ready.catch(() => {});
    const listeners = new Map();
    /** The internal record of a subscription; `Subscription` is its public face. */
    const s = {
      topics: list,
      last: options?.last ?? 0,
      bufferSize,
      timeoutMs,
      handler: handler ?? (() => {}),
      ready,
      settle,
      settled: false,
      listeners,
      emit: (name, ...args) => emitTo(listeners, name, args),
      /** The live iterators (`for await` loops) over this subscription. */
      iterators: new Set(),
      /** Null while the subscription lives; `{ error }` once it is gone for good. */
      ended: null,
      clientClosed: () => this.#state === "closed",
      /** topic → {epoch, seq} of the newest event this subscription delivered. */
      seen: new Map(),
      /** The same for `local` events (cluster history): {connection, seq}. */
      localSeen: new Map(),
      /** Epoch of the newest entry in `seen`: the one a resume is valid for. */
      epoch: null,
      /** Whether the subscribe on this connection asked for `last` replay. */
      wantsReplay: false,
      /** Topics whose position the last subscribe sent in `resume`, until reset. */
      resumed: new Set(),
    };
    const sub = new Subscription(s, (unsubscribeOptions) => this.#unsubscribe(sub, unsubscribeOptions));
    this.#subs.set(sub, s);
    if (this.#state === "open") this.#sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes over the WebSocket, or with `POST /api/publish` on SSE. Resolves on
   * `ok` (or `202`: "accepted for fan-out", not "delivered"); rejects with a
   * HeraldError on an error reply, at once when not open, when the connection is lost
   * before the reply (over HTTP: when the request fails), and after the timeout.
   *
   * @param {string} topic
   * @param {unknown} data any JSON value
   * @param {{key?: string, headers?: Record<string, string>, timeoutMs?: number}} [extra]
   */
  publish(topic, data, extra) {
    const { key, headers, timeoutMs } = extra ?? {};
    timeoutOption(timeoutMs, "timeoutMs");
    if (this.#state !== "open") {
      return Promise.reject(new HeraldError("not_open", `cannot publish while ${this.#state}`));
    }
    const message = { op: "publish", topic, data };
    if (key !== undefined) message.key = key;
    if (headers !== undefined) message.headers = headers;
    const what = `publish to ${topic}`;
    if (this.#transport === "sse") {
      const { op: _, ...event } = message;
      return this.#post("api/publish", event, { timeoutMs, what }).then(() => undefined);
    }
    return this.#request(message, { drop: "reject", timeoutMs, what });
  }

  /**
   * Asks the broker for a `pong`: proof that the connection works end to end right
   * now, which an open socket alone does not give. Resolves with the round trip in
   * milliseconds; rejects like `publish`.
   *
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<number>}
   */
  ping(options) {
    const timeoutMs = timeoutOption(options?.timeoutMs, "timeoutMs");
    if (this.#state !== "open") {
      return Promise.reject(new HeraldError("not_open", `cannot ping while ${this.#state}`));
    }
    if (this.#transport === "sse") {
      // A stream carries nothing from the client: there is no round trip to time.
      return Promise.reject(new HeraldError("not_supported", "ping needs the WebSocket transport, not Server-Sent Events"));
    }
    const sentAt = performance.now();
    return this.#request({ op: "ping" }, { drop: "reject", timeoutMs, what: "ping" }).then(() => performance.now() - sentAt);
  }

  /**
   * Closes with 1000 and stays closed (until `connect()` or `reconnect()`). Every
   * `for await` loop over a subscription ends; the subscriptions themselves stay, and
   * are sent again if the client connects again.
   */
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
   *
   * @throws {TypeError} like `connect()`
   */
  reconnect() {
    this.#prepare();
    const hadSocket = this.#abandon(1000, "client reconnect");
    this.#attempt = 0;
    this.#authRetry = false;
    const generation = this.#generation;
    if (hadSocket) this.#emit("close", { code: 1000, reason: "client reconnect", willReconnect: true, delayMs: 0 });
    if (generation === this.#generation) this.#setState("connecting");
    if (generation === this.#generation) this.#open();
  }

  // ---- connection lifecycle -------------------------------------------------------

  /**
   * Resolves what a connection needs and starts listening for `online`. Done at the
   * first connection rather than in the constructor, so that a client made with
   * `autoConnect: false` during server-side rendering touches nothing of the browser.
   */
  #prepare() {
    this.#url ??= websocketUrl(this.#rawUrl);
    const WebSocketClass = this.#options.WebSocket ?? globalThis.WebSocket;
    const EventSourceClass = this.#options.EventSource ?? globalThis.EventSource;
    this.#WebSocket = typeof WebSocketClass === "function" ? WebSocketClass : null;
    this.#EventSource = typeof EventSourceClass === "function" ? EventSourceClass : null;
    const mode = this.#options.transport;
    if (mode === "sse" && !this.#EventSource) {
      throw new TypeError('herald: transport "sse" needs an EventSource implementation; pass { EventSource }');
    }
    if (mode !== "sse" && !this.#WebSocket && !(mode === "auto" && this.#EventSource)) {
      throw new TypeError(
        "herald: no WebSocket implementation; on Node 20 run with --experimental-websocket or pass { WebSocket }",
      );
    }
    if (!this.#WebSocket) this.#setTransport("sse");
    if (this.#onlineTarget && !this.#onlineListening) {
      this.#onlineTarget.addEventListener("online", this.#onOnline);
      this.#onlineListening = true;
    }
  }

  /**
   * The browser says the network is back. If the client is waiting out a backoff
   * delay, that delay was chosen for a network that was down: try now. A user who
   * reopens a laptop then sees live data within a round trip, not after up to
   * `backoff.maxMs`. In any other state there is nothing to hurry.
   */
  #onOnline = () => {
    if (this.#retryTimer === null) return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#open();
  };

  #stopListeningOnline() {
    if (!this.#onlineListening) return;
    this.#onlineTarget.removeEventListener("online", this.#onOnline);
    this.#onlineListening = false;
  }

  async #open() {
    const generation = ++this.#generation;
    this.#welcomed = false;
    const sse = this.#transport === "sse";
    // No await when there is nothing to wait for: an attempt starts within the call
    // that asked for it (an `online` event, `reconnect()`).
    let credentials = this.#credentials(sse);
    try {
      if (credentials instanceof Promise) credentials = await credentials;
    } catch (err) {
      if (generation !== this.#generation) return;
      // A credential we cannot get after a 4001 means the user must act, and so does
      // a token the broker refused a ticket for; otherwise treat it like an
      // unreachable broker (the token endpoint may be down too).
      const refused = err instanceof HeraldError && err.code === "unauthorized";
      return this.#lost(this.#authRetry || refused ? 4001 : 1006, `could not get credentials: ${err?.message ?? err}`);
    }
    if (generation !== this.#generation) return;
    if (sse) {
      // The stream's URL holds the subscriptions: those made in the same task as
      // connect() or reconnect() go in the first one.
      await null;
      if (generation !== this.#generation) return;
    }
    const { ticket, token } = credentials;
    this.#httpToken = token ?? null;
    if (sse) return this.#openStream(generation, ticket, token);
    let url = this.#url;
    if (ticket !== undefined) {
      const u = new URL(url);
      u.searchParams.set("ticket", ticket);
      url = u.href;
    }
    let ws;
    try {
      ws = new this.#WebSocket(url, PROTOCOL);
    } catch (err) {
      return this.#lost(1006, `could not open a WebSocket: ${err?.message ?? err}`);
    }
    this.#ws = ws;
    this.#connectionToken = typeof this.#options.token === "function" ? token : null;
    this.#startHandshake();
    ws.onopen = () => {
      // Browsers cannot set headers on the upgrade, so the token is the first message.
      if (token) return this.#send({ op: "auth", token });
      // Without a token the broker either welcomes at once or, with auth on, closes
      // with 4001 after its own auth timeout; that close must not be pre-empted.
      clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = null;
    };
    ws.onmessage = (e) => this.#onMessage(e.data);
    ws.onclose = (e) => this.#lost(e.code, e.reason ?? "");
    // A failed handshake (refused, or an HTTP 401/503 instead of 101) should fire
    // error then close; Node 20's WebSocket fires only the error and stays
    // CONNECTING forever. Either way the attempt is over. Later errors are followed
    // by a close event, which carries the code.
    ws.onerror = () => ws.readyState === 0 && this.#lost(1006, "");
  }

  /**
   * The credentials of one attempt: a ticket from `getTicket`, and the token (a
   * string, or the token function's answer). A stream cannot carry a token (an
   * `EventSource` sets no header, and a JWT never goes in a URL), so over SSE a token
   * without `getTicket` is exchanged for a ticket with `POST /api/tickets`.
   */
  #credentials(sse) {
    const { token: tokenOption, getTicket } = this.#options;
    const wait = getTicket || typeof tokenOption === "function" || (sse && tokenOption);
    return wait ? this.#fetchCredentials(sse) : { ticket: undefined, token: tokenOption };
  }

  async #fetchCredentials(sse) {
    const { token: tokenOption, getTicket } = this.#options;
    let ticket = getTicket ? await this.#bounded(() => getTicket(), "getTicket") : undefined;
    const token = typeof tokenOption === "function" ? await this.#bounded(() => tokenOption(), "token") : tokenOption;
    if (sse && ticket === undefined && token) {
      const answer = await this.#post("api/tickets", undefined, { token, what: "POST /api/tickets" });
      ticket = answer.ticket;
    }
    return { ticket, token };
  }

  /**
   * Bounds an attempt until its `welcome`, with the request timeout: a handshake
   * that hangs (a blackholed address, a proxy that never answers) would otherwise
   * hold the client in "connecting" for the 35 s of the watchdog.
   */
  #startHandshake() {
    this.#silenceMs = DEFAULT_SILENCE_MS;
    this.#heard();
    const ms = this.#options.requestTimeoutMs;
    if (ms <= MAX_TIMER_MS) {
      this.#handshakeTimer = setTimeout(() => {
        this.#dropSocket(4008, "handshake timeout");
        this.#lost(4008, "handshake timeout");
      }, ms);
    }
  }

  /**
   * Opens the event stream of every subscription's patterns, resuming from the
   * positions seen so far. Everything else (welcome, events, resets, pings) goes
   * through the same handlers as over WebSocket; a `close` message ends it like a
   * close frame.
   */
  #openStream(generation, ticket, token) {
    const url = this.#streamUrl(ticket);
    let es;
    try {
      es = new this.#EventSource(url);
    } catch (err) {
      return this.#lost(1006, `could not open an EventSource: ${err?.message ?? err}`);
    }
    this.#stream = es;
    this.#connectionToken = typeof this.#options.token === "function" ? token : null;
    this.#startHandshake();
    es.onmessage = (e) => {
      if (this.#stream !== es) return;
      const msg = parseJson(e.data);
      if (msg === undefined) return this.#heard();
      if (msg?.type === "close") return this.#lost(msg.code, msg.reason ?? "");
      const d = this.#draining;
      if (d && msg?.type === "event" && d.topics.some((p) => topicMatches(p, msg.topic))) {
        // The old stream still delivers this topic: hold it until the overlap ends.
        this.#heard();
        d.queue.push(msg);
        if (d.queue.length >= MAX_HELD_EVENTS) this.#finishDrain(true);
        return;
      }
      this.#onMessage(e.data, msg);
    };
    es.onerror = () => {
      if (this.#stream !== es) return;
      // An EventSource reconnects by itself, with the same URL: its ticket is spent,
      // and the backoff would not be ours. The client decides instead. A stream
      // refused before it opened (an HTTP error: the EventSource gives up, CLOSED)
      // says why only to a request that can read the answer.
      if (this.#welcomed || es.readyState !== 2) return this.#lost(1006, "");
      // Refused: a stream being replaced goes on delivering while the client finds
      // out why.
      this.#stream = null;
      closeQuietly(es);
      clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = null;
      this.#diagnose(generation);
    };
  }

  /** The URL of a stream of the current subscriptions, with `resume` and `last`. */
  #streamUrl(ticket) {
    const u = new URL(this.#options.sseUrl ?? "sse", httpUrl(this.#url));
    const topics = [];
    for (const s of this.#subs.values()) for (const t of s.topics) if (!topics.includes(t)) topics.push(t);
    this.#streamTopics = topics;
    u.searchParams.set("topics", topics.join(","));
    const { resume, last } = this.#streamResume();
    if (resume) u.searchParams.set("resume", JSON.stringify(resume));
    if (last > 0) u.searchParams.set("last", String(last));
    if (ticket !== undefined) u.searchParams.set("ticket", ticket);
    return u.href;
  }

  /**
   * One `resume` for the whole stream, from every subscription's positions (the
   * lowest `seq` where two hold the same topic: each drops what it already had), and
   * the stream's `last`: the largest of the subscriptions that want history. The
   * broker replays `last` only for patterns no resumed topic matches, so a topic that
   * such a subscription's patterns match is left out of the resume: it gets history
   * (`replay`), and the subscriptions that hold a position in it take only what is
   * new to them, or see the `gap`. Positions that do not fit in a URL are reset.
   */
  #streamResume() {
    let last = 0;
    const wanting = [];
    for (const s of this.#subs.values()) {
      s.resumed = new Set();
      s.wantsReplay = s.seen.size === 0 && s.last > 0;
      if (s.wantsReplay) {
        last = Math.max(last, s.last);
        wanting.push(...s.topics);
      }
    }
    const topics = {};
    const holders = new Map();
    let epoch = null;
    let size = 0;
    for (const s of this.#subs.values()) {
      const r = this.#resumeOf(s);
      if (!r) continue;
      if (epoch === null) epoch = r.epoch;
      for (const [topic, seq] of Object.entries(r.topics)) {
        if (wanting.some((p) => topicMatches(p, topic))) continue;
        if (r.epoch !== epoch) {
          this.#forget(s, topic, "epoch_changed");
          continue;
        }
        if (!(topic in topics)) {
          const cost = encodeURIComponent(JSON.stringify(topic)).length + 24;
          if (size + cost > MAX_RESUME_CHARS) {
            this.#forget(s, topic, "history_expired");
            continue;
          }
          size += cost;
          topics[topic] = seq;
          holders.set(topic, []);
        }
        topics[topic] = Math.min(topics[topic], seq);
        holders.get(topic).push(s);
      }
    }
    for (const [topic, subs] of holders) for (const s of subs) s.resumed.add(topic);
    return { resume: holders.size > 0 ? { epoch, topics } : null, last };
  }

  /** A position the client cannot resume: forgotten, and the subscription told. */
  #forget(s, topic, reason) {
    s.seen.delete(topic);
    this.#emit("reset", { topic, reason });
    s.emit("reset", { topic, reason });
  }

  /**
   * A stream was refused before it opened. The EventSource cannot say why, so the
   * same request is made once more with `fetch`, whose status and JSON body can be
   * read (a stream that opens this time is closed at once): `401` counts as 4001, a
   * `400` or `403` refuses the subscriptions not confirmed yet (the rest go on
   * without them), and anything else is retried like a lost connection.
   */
  async #diagnose(generation) {
    let status = 0;
    let error = null;
    try {
      const { ticket } = await this.#fetchCredentials(true);
      if (generation !== this.#generation) return;
      const answer = await this.#fetch(this.#streamUrl(ticket), { method: "GET" }, undefined, "GET /sse");
      status = answer.status;
      error = answer.error;
    } catch (err) {
      error = { message: err?.message ?? String(err) };
    }
    if (generation !== this.#generation) return;
    if (status === 401) return this.#lost(4001, error?.message ?? "unauthorized");
    if ((status === 400 || status === 403) && error?.code) {
      const err = new HeraldError(error.code, error.message);
      const fresh = [...this.#subs].filter(([, s]) => !s.settled);
      const named = fresh.filter(([, s]) => s.topics.some((t) => error.message?.includes(t)));
      for (const [sub] of named.length > 0 ? named : fresh) this.#subscribeFailed(sub, err);
      if (fresh.length > 0) return this.#open();
      this.#emit("error", err);
    }
    this.#lost(status === 503 ? 1013 : 1006, error?.message ?? "");
  }

  /**
   * POST `path` (relative to the broker's URL) with a JSON body, or none, and the
   * token as Bearer; resolves with the JSON answer of a 2xx, rejects with a
   * HeraldError: the broker's error, `timeout`, or `disconnected` when the request
   * failed.
   */
  async #post(path, body, { token = this.#httpToken, timeoutMs, what }) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    const init = { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) };
    const answer = await this.#fetch(new URL(path, httpUrl(this.#url)).href, init, timeoutMs, what);
    if (answer.status >= 200 && answer.status < 300) return answer.body;
    const error = answer.error ?? { code: "internal", message: `HTTP ${answer.status}` };
    throw new HeraldError(error.code, `${what}: ${error.message}`);
  }

  /**
   * One HTTP request, bounded by the request timeout: `{status, body, error}`, where
   * `error` is the broker's `{code, message}`. The body of a stream is not read.
   */
  async #fetch(url, init, timeoutMs, what) {
    const ms = timeoutMs ?? this.#options.requestTimeoutMs;
    const abort = new AbortController();
    const timer = ms > MAX_TIMER_MS ? null : setTimeout(() => abort.abort(), ms);
    try {
      const res = await fetch(url, { ...init, signal: abort.signal, credentials: "same-origin" });
      if (res.headers.get("content-type")?.startsWith("text/event-stream")) {
        abort.abort();
        return { status: res.status, body: null, error: null };
      }
      const body = await res.json().catch(() => null);
      return { status: res.status, body, error: body?.error ?? null };
    } catch (err) {
      if (abort.signal.aborted) throw new HeraldError("timeout", `${what}: no answer within ${ms} ms`);
      throw new HeraldError("disconnected", `${what} failed: ${err?.message ?? err}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Awaits an application callback (a credential function) for at most the request
   * timeout: a token endpoint that never answers must not stall reconnecting forever.
   */
  #bounded(call, what) {
    const ms = this.#options.requestTimeoutMs;
    const result = Promise.resolve().then(call);
    if (ms > MAX_TIMER_MS) return result;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new HeraldError("timeout", `${what}: no answer within ${ms} ms`)), ms);
    });
    return Promise.race([result, timeout]).finally(() => clearTimeout(timer));
  }

  /**
   * The current connection is gone (or never came up). Decides, from the close code,
   * whether and when to try again. Every socket ends here exactly once.
   */
  #lost(code, reason) {
    this.#dropSocket(null, "");
    this.#quiet = false;
    this.#refreshing = false;
    // An attempt that got no answer at all: with "auto", the second in a row on one
    // transport moves to the other (a proxy that refuses upgrades looks like this in
    // a browser, and so does a broker that is down, where both fail in turn).
    if (!this.#welcomed && (code === 1006 || code === 4008) && this.#canSwitch()) {
      if (++this.#failures >= FAILURES_BEFORE_SWITCH) {
        this.#failures = 0;
        this.#setTransport(this.#transport === "sse" ? "websocket" : "sse");
      }
    }
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

  /** Whether `transport: "auto"` has both transports to move between. */
  #canSwitch() {
    return this.#options.transport === "auto" && this.#WebSocket !== null && this.#EventSource !== null;
  }

  #setTransport(transport) {
    const prev = this.#transport;
    if (transport === prev) return;
    this.#transport = transport;
    this.#emit("transport", transport, prev);
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
    if (this.#stream) closeQuietly(this.#stream);
    this.#stream = null;
    this.#stopProbe();
    this.#finishDrain(false);
    // The stream's session ends with it, and so do the patterns it held.
    for (const resolve of this.#streamWaiters.splice(0)) resolve();
    clearTimeout(this.#watchdog);
    this.#watchdog = null;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    this.#connectionToken = null;
    this.#expiresAt = null;
    if (ws && code === null) detach(ws);
    else if (ws) closeQuietly(ws, code, reason);
    // close() and reconnect() drop the socket with 1000; anything else lost it.
    const why =
      code === 1000
        ? `the client ${reason === "client closed" ? "closed" : "reconnected"} before the reply`
        : "connection lost before the reply";
    for (const [id, request] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(request.timer);
      // Subscribes are sent again on the next welcome; the others cannot be.
      if (request.drop === "resolve") request.resolve();
      else if (request.drop === "reject") request.reject(new HeraldError("disconnected", why, id));
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
    if (state === "closed") {
      // Nothing will come any more: end the loops rather than leave them waiting,
      // and let go of the window so a closed client can be garbage-collected.
      this.#stopListeningOnline();
      for (const s of this.#subs.values()) for (const it of [...s.iterators]) it.end(null);
    }
    this.#emit("state", state, prev);
  }

  #emit(name, ...args) {
    emitTo(this.#listeners, name, args);
  }

  #send(message) {
    this.#ws?.send(JSON.stringify(message));
  }

  /** A timer for a request's timeout; null when the timeout is infinite. */
  #timer(timeoutMs, fn) {
    const ms = timeoutMs ?? this.#options.requestTimeoutMs;
    return ms > MAX_TIMER_MS ? null : setTimeout(() => fn(ms), ms);
  }

  /**
   * Sends a request with a fresh id. `drop` says what happens to the promise if the
   * connection is lost before the reply: "reject" or "resolve". The timeout runs from
   * now; a reply that comes after it is ignored.
   */
  #request(message, { drop, timeoutMs, what }) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const request = { resolve, reject, drop, timer: null };
      request.timer = this.#timer(timeoutMs, (ms) => {
        if (this.#pending.get(id) !== request) return;
        this.#pending.delete(id);
        reject(new HeraldError("timeout", `${what}: no reply within ${ms} ms`, id));
      });
      this.#pending.set(id, request);
      this.#send({ ...message, id });
    });
  }

  // ---- refreshing the token in place ---------------------------------------------

  /**
   * Plans the in-place refresh of `token`, the session's current token: a while before
   * its `exp` (`refreshMarginMs`, or a quarter of what is left of a short-lived token),
   * minus up to a tenth of the wait at random, so that the tabs of a deployment that
   * got their tokens together do not all ask the token endpoint in the same second.
   * Nothing is planned for a token without a readable `exp`, or one from a string
   * option: a string cannot give a fresher token.
   */
  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const exp = token ? jwtExp(token) : null;
    this.#expiresAt = exp === null ? null : exp * 1000;
    if (this.#expiresAt === null) return;
    const left = this.#expiresAt - Date.now();
    const margin = Math.min(this.#options.refreshMarginMs, left * REFRESH_SHARE);
    const wait = Math.max(MIN_REFRESH_DELAY_MS, (left - margin) * (1 - 0.1 * Math.random()));
    this.#armRefresh(Date.now() + wait);
  }

  /** Runs `#refresh` at `at` (ms since the epoch), in steps timers can take. */
  #armRefresh(at) {
    this.#refreshTimer = setTimeout(
      () => {
        this.#refreshTimer = null;
        if (Date.now() < at) return this.#armRefresh(at);
        this.#refresh();
      },
      Math.min(Math.max(0, at - Date.now()), MAX_TIMER_MS),
    );
  }

  /**
   * Asks the token function for a fresh token and sends it on the open connection
   * (`{"op":"auth"}`): the session takes its `exp` and grants, and keeps its
   * subscriptions. Any failure is retried (see `#refreshFailed`). Whatever happens to
   * the connection meanwhile wins: a refresh for a socket that is gone stops silently.
   */
  async #refresh() {
    if (this.#transport === "sse") {
      // A stream cannot take a token: a new one, with a ticket of the fresh token,
      // replaces it and resumes where it stopped.
      if (this.#stream === null || this.#state !== "open") return;
      this.#refreshing = true;
      return this.#reopen();
    }
    const ws = this.#ws;
    if (ws === null || this.#state !== "open") return;
    let token;
    let exp;
    try {
      const tokenOption = this.#options.token;
      token = await this.#bounded(() => tokenOption(), "token");
      if (this.#ws !== ws) return;
      if (typeof token !== "string" || token === "") {
        throw new TypeError(`the token function returned ${token === "" ? "an empty string" : typeof token}, not a JWT`);
      }
      exp = jwtExp(token);
      if (exp !== null && this.#expiresAt !== null && exp * 1000 <= this.#expiresAt) {
        throw new Error("the token function returned a token that expires no later than the current one");
      }
      await this.#request({ op: "auth", token }, { drop: "reject", what: "token refresh" });
    } catch (err) {
      if (this.#ws !== ws) return; // the connection is gone; a new one gets a new token
      return this.#refreshFailed(err);
    }
    if (this.#ws !== ws) return;
    this.#refreshAttempt = 0;
    this.#scheduleRefresh(token);
    this.#emit("refresh", { exp });
  }

  /**
   * A refresh failed: the token function threw or did not answer in time, or the
   * broker refused the token (`unauthorized`, or `forbidden` for another `sub`) or did
   * not answer. The session goes on with its current token, so try again with backoff
   * while that one lasts. Once it has expired the broker closes with 4001, and the
   * reconnect rules for 4001 take over (a fresh token, a new connection, `resume`).
   */
  #refreshFailed(cause) {
    const wait = backoffDelay(this.#refreshAttempt++, this.#options.backoff);
    const retry = this.#expiresAt !== null && Date.now() + wait < this.#expiresAt;
    if (retry) this.#armRefresh(Date.now() + wait);
    const why = cause instanceof HeraldError ? `${cause.code}: ${cause.message}` : (cause?.message ?? String(cause));
    const next = retry
      ? `retrying in ${wait} ms`
      : "giving up: the broker closes the connection (4001) when the current token expires";
    const err = new HeraldError("refresh_failed", `token refresh failed (${why}); ${next}`, cause?.id);
    err.cause = cause;
    this.#emit("error", err);
  }

  // ---- messages from the server ---------------------------------------------------

  /** A message from the server: `data` as received, or `msg` already parsed. */
  #onMessage(data, msg) {
    this.#heard();
    // Herald sends text frames only.
    msg ??= typeof data === "string" ? parseJson(data) : undefined;
    if (msg == null) return;
    switch (msg.type) {
      case "event":
        return this.#onEvent(msg);
      case "welcome":
        return this.#onWelcome(msg);
      case "ping":
        return this.#send({ op: "pong" });
      case "subscribed":
        if (msg.id === undefined) return this.#onStreamSubscribed(msg);
      // falls through
      case "unsubscribed":
      case "ok":
      case "pong":
        return this.#onReply(msg);
      case "error":
        return this.#onError(msg);
      case "lagged":
        return this.#onLagged(msg);
      case "reset":
        return this.#onReset(msg);
    }
  }

  #onWelcome(welcome) {
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
    this.#epoch = welcome.epoch;
    this.#connections++;
    const hb = welcome.heartbeat;
    if (hb) {
      this.#silenceMs = hb.interval_ms + hb.timeout_ms;
      clearTimeout(this.#watchdog);
      this.#armWatchdog(this.#silenceMs);
    }
    this.#attempt = 0;
    this.#authRetry = false;
    this.#refreshAttempt = 0;
    this.#welcomed = true;
    this.#failures = 0;
    this.#scheduleRefresh(this.#connectionToken);
    // A quiet reopen replaced the stream (or the transport) of a session that went
    // on: the application saw no close, so it gets no second `open`.
    const quiet = this.#quiet;
    const refreshed = this.#refreshing;
    this.#quiet = this.#refreshing = false;
    // Snapshot first: a "state" or "open" handler that subscribes sends its own.
    const subs = [...this.#subs.keys()];
    const generation = this.#generation;
    this.#setState("open");
    if (generation !== this.#generation) return; // a listener closed or reconnected
    if (this.#transport === "sse") {
      // The subscriptions are in the stream's URL; those made or dropped while it
      // opened need another.
      const wanted = new Set([...this.#subs.values()].flatMap((s) => s.topics));
      const held = new Set(this.#streamTopics);
      if (wanted.size !== held.size || [...wanted].some((t) => !held.has(t))) this.#queueReopen();
      this.#armProbe();
    } else {
      for (const sub of subs) if (this.#subs.has(sub)) this.#sendSubscribe(sub);
    }
    if (refreshed) this.#emit("refresh", { exp: this.#expiresAt === null ? null : this.#expiresAt / 1000 });
    if (!quiet) this.#emit("open", welcome);
  }

  /**
   * A stream's `subscribed` (it has no id): the subscriptions whose patterns it
   * holds are confirmed.
   */
  #onStreamSubscribed(msg) {
    const held = new Set(msg.topics);
    for (const s of this.#subs.values()) {
      if (s.settled || !s.topics.every((t) => held.has(t))) continue;
      s.settled = true;
      s.settle.resolve();
    }
    const d = this.#draining;
    if (d && d.timer === null) d.timer = setTimeout(() => this.#finishDrain(true), STREAM_OVERLAP_MS);
  }

  // ---- Server-Sent Events: reopening the stream, and trying WebSocket again -------

  /**
   * Reopens the stream at the end of the current task, once however often asked. A
   * stream still overlapping with the one it replaces is not replaced before the
   * overlap ends: changes made meanwhile wait for it, and then share one reopen.
   */
  #queueReopen() {
    if (this.#reopenQueued) return;
    this.#reopenQueued = true;
    queueMicrotask(() => {
      this.#reopenQueued = false;
      if (this.#transport !== "sse" || this.#state !== "open" || this.#stream === null || !this.#welcomed) return;
      if (this.#draining !== null) this.#reopenAfterDrain = true;
      else this.#reopen();
    });
  }

  /**
   * Replaces the connection without ending the session for the application: a new
   * stream (or a WebSocket, after a probe) with fresh credentials and the positions
   * seen so far. If it fails, that is a lost connection like any other.
   */
  #reopen() {
    // A stream still being replaced hands over now: what the current one held back
    // comes first, in order, before the current one becomes the old one.
    this.#finishDrain(true);
    // Only a stream replaced by a stream overlaps; anything else is dropped here.
    const old = this.#transport === "sse" && this.#welcomed ? this.#stream : null;
    const topics = this.#streamTopics;
    if (old) this.#stream = null;
    this.#dropSocket(null, "");
    if (old) this.#drain(old, topics);
    this.#quiet = true;
    this.#open();
  }

  /**
   * Keeps a replaced stream delivering until the new one is subscribed and then
   * `STREAM_OVERLAP_MS` longer. The two overlap, so that no event falls between
   * them: not even one of a topic the client has no position in yet, which no
   * `resume` could bring back. The new stream's events of the old one's patterns
   * wait meanwhile, then go through the same handler, which drops what the old one
   * already delivered (by `seq`).
   */
  #drain(es, topics) {
    if (topics.length === 0) return closeQuietly(es);
    this.#draining = { es, topics, queue: [], timer: null };
    es.onmessage = (e) => {
      const msg = parseJson(e.data);
      if (msg?.type === "event") this.#onEvent(msg);
      else if (msg?.type === "close") this.#finishDrain(true);
    };
    es.onerror = () => this.#finishDrain(true);
    // A new stream of no pattern has no `subscribed` to wait for.
    if (this.#subs.size === 0) this.#finishDrain(true);
  }

  /** Ends the overlap: closes the old stream, then delivers what the new one held. */
  #finishDrain(deliver) {
    const d = this.#draining;
    if (d === null) return;
    this.#draining = null;
    clearTimeout(d.timer);
    closeQuietly(d.es);
    const reopen = this.#reopenAfterDrain;
    this.#reopenAfterDrain = false;
    if (!deliver) return;
    for (const ev of d.queue) this.#onEvent(ev);
    if (reopen) this.#queueReopen();
  }

  /** With "auto" on SSE: check now and then whether a WebSocket gets through again. */
  #armProbe() {
    this.#stopProbe();
    if (!this.#canSwitch()) return;
    this.#probeTimer = setTimeout(() => this.#runProbe(), Math.min(this.#options.websocketRetryMs, MAX_TIMER_MS));
  }

  /**
   * Opens a WebSocket that only checks the upgrade (no credentials, closed at once).
   * If it opens, the session moves back to WebSocket (resuming as after any
   * reconnect); if not, the next check comes after another `websocketRetryMs`.
   */
  #runProbe() {
    this.#probeTimer = null;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, PROTOCOL);
    } catch {
      return this.#armProbe();
    }
    this.#probe = ws;
    const settle = (upgraded) => {
      this.#stopProbe();
      if (!upgraded) return this.#armProbe();
      if (this.#transport !== "sse" || this.#state !== "open") return;
      this.#setTransport("websocket");
      this.#reopen();
    };
    // While a probe runs, its timer is the one that gives up on it.
    this.#probeTimer = setTimeout(() => settle(false), Math.min(this.#options.requestTimeoutMs, MAX_TIMER_MS));
    ws.onopen = () => settle(true);
    ws.onerror = ws.onclose = () => settle(false);
  }

  /** Cancels the next probe, or gives up on the one under way. */
  #stopProbe() {
    clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
    if (this.#probe) closeQuietly(this.#probe, 1000, "probe");
    this.#probe = null;
  }

  #onReply(msg) {
    const request = this.#pending.get(msg.id);
    if (!request) return; // e.g. the `ok` answering a first-message auth with auth off
    this.#pending.delete(msg.id);
    clearTimeout(request.timer);
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
    clearTimeout(request.timer);
    if (!request.sub) return request.reject(err);
    this.#subscribeFailed(request.sub, err);
  }

  /**
   * A subscribe failed. The first one: nothing was subscribed (all or nothing), so
   * the subscription is gone, and `ready` and its loops say why. A resubscribe after
   * a reconnect: the subscription stays (the next connection tries again), and the
   * error is reported where someone may listen.
   */
  #subscribeFailed(sub, err) {
    const s = this.#subs.get(sub);
    if (s && !s.settled) {
      this.#subs.delete(sub);
      s.settled = true;
      s.settle.reject(err);
      s.ended = { error: err };
      for (const it of [...s.iterators]) it.end(err);
      return;
    }
    this.#emit("error", err);
    if (s) s.emit("error", err);
  }

  /**
   * `lagged` is per connection: the broker cannot say which topics lost events, so
   * every subscription is told, each of which may show any of them.
   */
  #onLagged(msg) {
    this.#emit("lagged", { dropped: msg.dropped });
    for (const s of [...this.#subs.values()]) s.emit("lagged", { dropped: msg.dropped, reason: "queue_full" });
  }

  /**
   * A `resume` position could not be honoured. It concerns the subscriptions that
   * sent that topic's position, and each of them once: after a reconnect, two
   * subscriptions covering a topic may each cause a reset of it.
   */
  #onReset(msg) {
    const info = { topic: msg.topic, reason: msg.reason };
    const affected = [];
    for (const s of this.#subs.values()) {
      if (!s.resumed.delete(msg.topic)) continue;
      s.seen.delete(msg.topic);
      affected.push(s);
    }
    this.#emit("reset", info);
    for (const s of affected) s.emit("reset", { ...info });
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
      // A node-local event under cluster history counts on this connection's node
      // only: compared with its own kind, never resumed.
      const seen = ev.local ? s.localSeen : s.seen;
      const epoch = ev.local ? this.#connections : this.#epoch;
      const pos = seen.get(ev.topic);
      let gap = null;
      if (pos && pos.epoch === epoch) {
        if (ev.seq <= pos.seq) continue;
        // Cluster positions are not contiguous: `prev` names the one before.
        const expected = ev.prev !== undefined ? ev.prev : ev.seq - 1;
        if (expected !== pos.seq) {
          gap = { topic: ev.topic, expected: pos.seq + 1, got: ev.seq };
          if (ev.prev !== undefined) gap.prev = ev.prev;
        }
      } else if (ev.replay && !s.wantsReplay) {
        continue; // history another subscription asked for
      }
      seen.set(ev.topic, { epoch, seq: ev.seq });
      if (!ev.local) s.epoch = this.#epoch;
      if (gap) {
        // The client-level event comes once per lost stretch, however many
        // subscriptions saw it; each subscription hears of it for itself.
        if (!gapReported) this.#emit("gap", { ...gap });
        gapReported = true;
        s.emit("gap", gap);
      }
      // A callback may unsubscribe; from then on this subscription gets nothing.
      callSafely(s.handler, ev);
      if (!s.ended) s.emit("event", ev);
      if (!s.ended) for (const it of s.iterators) it.push(ev);
    }
  }

  // ---- subscriptions --------------------------------------------------------------

  #sendSubscribe(sub) {
    if (this.#transport === "sse") return this.#queueReopen();
    const s = this.#subs.get(sub);
    const message = { op: "subscribe", topics: s.topics };
    const resume = this.#resumeOf(s);
    if (resume) message.resume = resume;
    else if (s.last > 0) message.last = s.last;
    s.wantsReplay = !resume && s.last > 0;
    s.resumed = new Set(resume ? Object.keys(resume.topics) : []);
    const id = this.#nextId++;
    const request = { sub, timer: null };
    request.timer = this.#timer(s.timeoutMs, (ms) => {
      if (this.#pending.get(id) !== request) return;
      this.#pending.delete(id);
      const err = new HeraldError("timeout", `subscribe to ${s.topics.join(", ")}: no reply within ${ms} ms`, id);
      // The broker may still subscribe late: undo that, so that it does not send
      // events nobody reads. A resubscribe stays, so its patterns stay too.
      if (!s.settled) this.#unsubscribeUnused(s.topics, sub);
      this.#subscribeFailed(sub, err);
    });
    this.#pending.set(id, request);
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
        s.emit("reset", { topic, reason: "epoch_changed" });
      }
    }
    return any ? { epoch: s.epoch, topics } : null;
  }

  #unsubscribe(sub, options) {
    const timeoutMs = timeoutOption(options?.timeoutMs, "timeoutMs");
    const s = this.#subs.get(sub);
    if (!s) return Promise.resolve();
    this.#subs.delete(sub);
    s.ended = { error: null };
    if (!s.settled) {
      s.settled = true;
      s.settle.reject(new HeraldError("unsubscribed", "unsubscribed before the broker confirmed"));
    }
    for (const it of [...s.iterators]) it.end(null);
    const topics = this.#unused(s.topics);
    if (topics.length === 0 || this.#state !== "open") return Promise.resolve();
    if (this.#transport === "sse") {
      // The stream is reopened without them; its end ends their delivery.
      const done = new Promise((resolve) => this.#streamWaiters.push(resolve));
      this.#queueReopen();
      return done;
    }
    // Once the connection is gone, so is the broker's subscription: resolve then.
    const what = `unsubscribe from ${topics.join(", ")}`;
    const done = this.#request({ op: "unsubscribe", topics }, { drop: "resolve", timeoutMs, what });
    // Often called from a cleanup that ignores the result (a React effect): a
    // timeout must not become an unhandled rejection. Whoever awaits it sees it.
    done.catch(() => {});
    return done;
  }

  /**
   * The broker holds one subscription per pattern per connection: of `topics`, those
   * that no other subscription of this client (besides `except`) still uses.
   */
  #unused(topics, except) {
    const inUse = new Set();
    for (const [sub, o] of this.#subs) if (sub !== except) for (const t of o.topics) inUse.add(t);
    return topics.filter((t) => !inUse.has(t));
  }

  /** Sends an unsubscribe whose reply nobody waits for (it has no id). */
  #unsubscribeUnused(topics, except) {
    const unused = this.#unused(topics, except);
    if (unused.length > 0) this.#send({ op: "unsubscribe", topics: unused });
  }
}

/**
 * What `subscribe` returns: the subscription's patterns, its `ready` promise, its own
 * events (`event`, `gap`, `reset`, `lagged`, `error`), `unsubscribe()`, and async
 * iteration over its events.
 */
class Subscription {
  #s;
  #unsubscribe;

  constructor(s, unsubscribe) {
    this.#s = s;
    this.#unsubscribe = unsubscribe;
    /** The patterns of this subscription. */
    this.topics = s.topics;
    /** Resolves when the broker confirmed; rejects with a HeraldError. */
    this.ready = s.ready;
    Object.freeze(this);
  }

  on(name, fn) {
    addListener(this.#s.listeners, name, fn);
    return this;
  }

  off(name, fn) {
    this.#s.listeners.get(name)?.delete(fn);
    return this;
  }

  /**
   * Stops delivery at once and ends every loop over this subscription. Resolves when
   * the broker confirmed (at once when not connected, or when another subscription of
   * this client still uses the patterns).
   *
   * @param {{timeoutMs?: number}} [options]
   */
  unsubscribe(options) {
    return this.#unsubscribe(options);
  }

  /**
   * An iterator over the events that arrive from now on (see `EventIterator`).
   * Leaving a `for await` loop (break, return, throw) unsubscribes.
   */
  [Symbol.asyncIterator]() {
    return new EventIterator(this.#s, () => this.#unsubscribe());
  }
}

/**
 * The iterator behind `for await (const event of subscription)`.
 *
 * It holds up to `bufferSize` events that arrived while the loop was busy. When an
 * event arrives and the buffer is full, the oldest one is dropped: a live view wants
 * the newest state, and a loop that has fallen that far behind should refetch rather
 * than replay a backlog. Drops are reported on the subscription as
 * `lagged` `{dropped, reason: "buffer_full"}`, once per stretch, when the loop takes
 * its next event: the same remedy as the broker's own `lagged`.
 *
 * It ends (done) when the subscription is unsubscribed or the client is closed, and
 * throws the subscription's error when the broker refused it (or did not answer).
 */
class EventIterator {
  #s;
  #leave;
  /** A queue: `#buffer[#head…]` are the events not taken yet. */
  #buffer = [];
  #head = 0;
  /** Pending `next()` calls, oldest first (only while the buffer is empty). */
  #waiters = [];
  #done = false;
  /** The error to throw once, at the next `next()`, if the subscription failed. */
  #error = null;
  #dropped = 0;

  constructor(s, leave) {
    this.#s = s;
    this.#leave = leave;
    if (s.ended) this.end(s.ended.error);
    else if (s.clientClosed()) this.end(null);
    else s.iterators.add(this);
  }

  get #size() {
    return this.#buffer.length - this.#head;
  }

  /** Hands an event to a waiting `next()`, or buffers it. */
  push(event) {
    if (this.#done) return;
    if (this.#waiters.length > 0) return this.#waiters.shift().resolve({ value: event, done: false });
    if (this.#size >= this.#s.bufferSize) {
      this.#take();
      this.#dropped++;
    }
    this.#buffer.push(event);
  }

  #take() {
    const event = this.#buffer[this.#head];
    this.#buffer[this.#head++] = undefined;
    // Compact now and then, so that a long-lived loop does not keep a growing array.
    if (this.#head >= 1024 && this.#head * 2 >= this.#buffer.length) {
      this.#buffer = this.#buffer.slice(this.#head);
      this.#head = 0;
    }
    return event;
  }

  /** Ends the iteration; buffered events are discarded. `error`: thrown once. */
  end(error) {
    if (this.#done) return;
    this.#done = true;
    this.#s.iterators.delete(this);
    this.#buffer = [];
    this.#head = 0;
    const waiters = this.#waiters.splice(0);
    if (error && waiters.length > 0) waiters.shift().reject(error);
    else if (error) this.#error = error;
    for (const w of waiters) w.resolve({ value: undefined, done: true });
  }

  next() {
    if (this.#size > 0) {
      const value = this.#take();
      if (this.#dropped > 0) {
        const dropped = this.#dropped;
        this.#dropped = 0;
        this.#s.emit("lagged", { dropped, reason: "buffer_full" });
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.#error) {
      const error = this.#error;
      this.#error = null;
      return Promise.reject(error);
    }
    if (this.#done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Called when a `for await` loop is left early. The loop owned the subscription
   * (`for await (const e of h.subscribe(…))` leaves no other handle to it), so this
   * unsubscribes. It does not wait for the broker's reply.
   */
  return() {
    this.end(null);
    this.#leave();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/**
 * The `exp` claim of a JWT (Unix seconds), or null when it has none or the token is
 * not a JWT whose payload can be read. Nothing is verified: the broker does that; the
 * client only needs to know when to ask for a fresh token.
 */
function jwtExp(token) {
  try {
    const payload = token.split(".")[1];
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return typeof claims?.exp === "number" && Number.isFinite(claims.exp) ? claims.exp : null;
  } catch {
    return null;
  }
}

/**
 * Checks a timeout option: undefined (use the default), or a number of milliseconds
 * above 0; `Infinity` means no timeout.
 */
function timeoutOption(value, name) {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !(value > 0)) {
    throw new TypeError(`herald: ${name} must be a number of milliseconds above 0 (or Infinity), got ${value}`);
  }
  return value;
}

/**
 * The object that fires the browser's `online` event: `window`, or the global scope
 * of a worker. Elsewhere (Node, Deno, Bun) there is no such event: null.
 */
function browserGlobal() {
  const g = globalThis;
  return typeof g.addEventListener === "function" && "ononline" in g ? g : null;
}

function addListener(listeners, name, fn) {
  if (typeof fn !== "function") throw new TypeError(`herald: the listener for "${name}" is not a function`);
  if (!listeners.has(name)) listeners.set(name, new Set());
  listeners.get(name).add(fn);
}

/** Calls every listener of `name`; a snapshot, so listeners may add or remove others. */
function emitTo(listeners, name, args) {
  for (const fn of [...(listeners.get(name) ?? [])]) callSafely(fn, ...args);
}

/** The value of a JSON text, or undefined when it is not JSON. */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Stops listening to a WebSocket or an EventSource: its late events are ignored. */
function detach(conn) {
  conn.onopen = conn.onmessage = conn.onclose = conn.onerror = null;
}

/** Detaches and closes a WebSocket (with `code`) or an EventSource, closing or not. */
function closeQuietly(conn, code, reason) {
  detach(conn);
  try {
    conn.close(code, reason);
  } catch {
    // already closing
  }
}

/** Checks the `transport` option: "websocket", "sse" or "auto" (the default). */
function transportOption(value) {
  if (value === undefined) return "auto";
  if (value !== "websocket" && value !== "sse" && value !== "auto") {
    throw new TypeError(`herald: transport must be "websocket", "sse" or "auto", got ${value}`);
  }
  return value;
}

/** The http(s) URL of the broker behind a ws(s) URL, for `/sse` and `/api/…`. */
function httpUrl(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.search = "";
  u.hash = "";
  return u.href;
}

/**
 * Resolves a relative URL against the page (browsers) and maps http(s) to ws(s), so
 * `connect("/ws")` works from a page served by Herald.
 */
function websocketUrl(url) {
  let u;
  try {
    u = new URL(url, globalThis.location?.href);
  } catch {
    const hint = globalThis.location ? "" : " (a relative URL needs a page to resolve it against)";
    throw new TypeError(`herald: not a WebSocket URL: ${url}${hint}`);
  }
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
