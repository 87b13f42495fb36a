// Type declarations for herald.js, the Herald client (protocol herald.v1.json, over
// WebSocket or Server-Sent Events).

/** The subprotocol offered on every upgrade. */
export declare const PROTOCOL: "herald.v1.json";

/**
 * The client's connection state. "idle": made with `autoConnect: false`, `connect()`
 * not called yet.
 */
export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed" | "unauthorized";

/** What carries the session: a WebSocket, or a Server-Sent Events stream (`GET /sse`). */
export type Transport = "websocket" | "sse";

/** The first message of every connection. */
export interface Welcome {
  type: "welcome";
  session: string;
  node: string;
  /** Identifies the broker process's history; changes on every restart. */
  epoch: string;
  protocol: string;
  delivery: string;
  heartbeat: { interval_ms: number; timeout_ms: number };
  limits: { max_message_bytes: number; max_subscriptions: number };
}

/** An event, exactly as the broker sent it. */
export interface HeraldEvent<T = unknown> {
  type: "event";
  topic: string;
  /**
   * The event's position in its topic: +1 per event from 1 on a single node; with
   * cluster history (`cluster.history = "jetstream"`), the history stream's
   * sequence, the same on every node, with `prev` naming the one before.
   */
  seq: number;
  /**
   * Cluster history: the `seq` of the topic's previous event. A gap is `prev` (when
   * present, else `seq - 1`) differing from the last `seq` seen of the topic.
   */
  prev?: number;
  /**
   * Cluster history: an event that did not come through the history stream (a
   * bridge's); its `seq` counts on the connection's node only and is never resumed.
   */
  local?: true;
  /** Milliseconds since the Unix epoch when the broker received (or stored) the event. */
  ts: number;
  source: "nats" | "kafka" | "http" | "ws";
  /** The payload as JSON (or a string); absent when the payload is binary. */
  data?: T;
  /** Standard base64 of a payload that is not UTF-8; then `data` is absent. */
  data_b64?: string;
  key?: string;
  headers?: Record<string, string>;
  /** Present on events sent from history (`last` or `resume`). */
  replay?: true;
}

export interface CloseInfo {
  /**
   * WebSocket close code; 1006 when the connection failed without one, 4008 when the
   * client declared it dead (reason "heartbeat timeout" or "handshake timeout").
   */
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Delay before the next attempt, when `willReconnect`; otherwise null. */
  delayMs: number | null;
}

export type ResetReason = "epoch_changed" | "history_expired";

/** A `reset`: the history of `topic` that a resume needed is gone; refetch its state. */
export interface ResetInfo {
  topic: string;
  reason: ResetReason;
}

/**
 * A `seq` jump: events `expected` to `got - 1` of `topic` never arrived (dropped for
 * this connection, or lost before they reached the topic). Refetch the topic's state.
 * With cluster history positions are not contiguous: the events missed lie between
 * `expected` and `prev` (which is one of them).
 */
export interface GapInfo {
  topic: string;
  expected: number;
  got: number;
  /** Cluster history: the `prev` of the event that showed the gap. */
  prev?: number;
}

/**
 * A token refresh the broker accepted: the session now lasts until `exp` (Unix
 * seconds, from the new token; null when the new token has none), with the new
 * token's grants, and keeps its subscriptions.
 */
export interface RefreshInfo {
  exp: number | null;
}

/** The events of a client and their listeners' arguments. */
export interface ClientEvents {
  state: (state: State, prev: State) => void;
  open: (welcome: Welcome) => void;
  close: (info: CloseInfo) => void;
  lagged: (info: { dropped: number }) => void;
  reset: (info: ResetInfo) => void;
  gap: (info: GapInfo) => void;
  /**
   * A fresh token from the `token` function was accepted on the open connection (on
   * SSE: a stream opened with it replaced the old one).
   */
  refresh: (info: RefreshInfo) => void;
  /** With `transport: "auto"`: the client moved to the other transport. */
  transport: (transport: Transport, prev: Transport) => void;
  /**
   * An error reply tied to no pending request, a resubscribe that failed, or an
   * in-place token refresh that failed (code `"refresh_failed"`, the reason in `cause`).
   */
  error: (error: HeraldError) => void;
}

/**
 * A subscription's `lagged`. `"queue_full"`: the broker dropped `dropped` events for
 * this connection, of any of its topics (every subscription is told). `"buffer_full"`:
 * a `for await` loop over this subscription fell `dropped` events behind its buffer,
 * which dropped the oldest.
 */
export interface SubscriptionLagged {
  dropped: number;
  reason: "queue_full" | "buffer_full";
}

/** The events of a subscription and their listeners' arguments. */
export interface SubscriptionEvents<T = unknown> {
  /** An event for this subscription, as the handler gets it. */
  event: (event: HeraldEvent<T>) => void;
  /** A seq jump in a topic this subscription receives. */
  gap: (info: GapInfo) => void;
  /** A reset of a topic whose position this subscription resumed. */
  reset: (info: ResetInfo) => void;
  lagged: (info: SubscriptionLagged) => void;
  /** A resubscribe after a reconnect was refused or timed out; the subscription stays. */
  error: (error: HeraldError) => void;
}

/** The error codes of the broker's error replies (docs/protocol.md). */
export type BrokerErrorCode =
  | "bad_request"
  | "unknown_op"
  | "invalid_topic"
  | "forbidden"
  | "unauthorized"
  | "too_many_subscriptions"
  | "rate_limited"
  | "payload_too_large"
  | "publish_disabled"
  | "internal";

/**
 * The client's own error codes. `not_open`: publish or ping while not open.
 * `disconnected`: the connection was lost, or the client closed, before the reply.
 * `unsubscribed`: unsubscribed before the broker confirmed. `timeout`: no reply
 * within the request's timeout (the broker may still have acted on it).
 * `refresh_failed`: refreshing the token in place failed (an `error` event; `cause`
 * says why); the client retries while the current token lasts. `not_supported`:
 * `ping` over Server-Sent Events.
 */
export type ClientErrorCode =
  | "not_open"
  | "disconnected"
  | "unsubscribed"
  | "timeout"
  | "refresh_failed"
  | "not_supported";

/**
 * An error reply of the broker, or one of the client's own. `code` may also be a code
 * that a newer broker added.
 */
export declare class HeraldError extends Error {
  constructor(code: string, message: string, id?: string | number);
  readonly name: "HeraldError";
  readonly code: BrokerErrorCode | ClientErrorCode | (string & {});
  /** The id of the request the broker answered, or of the one that timed out. */
  readonly id?: string | number;
  /**
   * For `refresh_failed`: what failed. A HeraldError (`unauthorized` or `forbidden`
   * from the broker, `timeout`), or whatever the token function threw.
   */
  readonly cause?: unknown;
}

export interface BackoffOptions {
  /** Cap of the first retry's delay, in ms (default 500). */
  initialMs?: number;
  /** Largest cap, in ms (default 30000). */
  maxMs?: number;
}

/** A constructor compatible with the WHATWG EventSource (browsers, the `eventsource` package). */
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** A constructor compatible with the WHATWG WebSocket (browsers, Node 22+, undici, `ws`). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** What fires the browser's `online` event: `window`, a worker's global scope, or a stand-in. */
export interface OnlineTarget {
  addEventListener(type: "online", listener: () => void): void;
  removeEventListener(type: "online", listener: () => void): void;
}

export interface ConnectOptions {
  /**
   * A JWT, or a function returning a fresh one; sent as the first message on every
   * connection. A function's token is also refreshed in place before its `exp` (see
   * `refreshMarginMs`); a string is never refreshed.
   */
  token?: string | (() => string | Promise<string>);
  /** Returns a one-time ticket (from POST /api/tickets); called for every connection. */
  getTicket?: () => string | Promise<string>;
  /** Defaults to globalThis.WebSocket, looked up when the client first connects. */
  WebSocket?: WebSocketConstructor;
  /**
   * Defaults to globalThis.EventSource (browsers; Node has none before 22: pass one,
   * such as the `eventsource` package's).
   */
  EventSource?: EventSourceConstructor;
  /**
   * "websocket", "sse" (Server-Sent Events: `GET /sse` to receive, `POST /api/publish`
   * to publish, no `ping`), or "auto" (default): WebSocket, and SSE after two failed
   * upgrades in a row when an EventSource exists, back to WebSocket once a probe
   * upgrade gets through (see `websocketRetryMs`).
   */
  transport?: "websocket" | "sse" | "auto";
  /** With "auto" on SSE: how often to check whether WebSocket works again, in ms (default 60000). */
  websocketRetryMs?: number;
  /** The event stream's URL; default `sse` beside the WebSocket path (`/ws` → `/sse`). */
  sseUrl?: string;
  backoff?: BackoffOptions;
  /** After close 1001, reconnect after a random delay below this, in ms (default 5000). */
  goingAwayMaxMs?: number;
  /**
   * Connect at once (default true). With false the client is "idle" and touches no
   * WebSocket, `window` or `location` until `connect()`: safe to make during
   * server-side rendering.
   */
  autoConnect?: boolean;
  /**
   * How long a request waits for its reply, in ms (default 10000; `Infinity`: no
   * limit). It bounds subscribe, unsubscribe, publish and ping (each can override
   * it), the `token` and `getTicket` functions, and a connection attempt until its
   * `welcome`.
   */
  requestTimeoutMs?: number;
  /**
   * With a `token` function: refresh the token on the open connection this long
   * before its `exp` at the latest, in ms (default 60000). A token with less than four
   * times this left is refreshed when a quarter of what is left remains. Up to a tenth
   * of the wait is taken off at random.
   */
  refreshMarginMs?: number;
  /**
   * Where the `online` event comes from: while the client waits to reconnect, it
   * reconnects at once when the network is back. Default: `window` (or a worker's
   * global scope) in a browser, nothing elsewhere; `null` turns it off.
   */
  onlineTarget?: OnlineTarget | null;
}

export interface SubscribeOptions {
  /** Replay up to this many recent events per matching topic before live events. */
  last?: number;
  /**
   * Events a `for await` loop over this subscription may fall behind before the
   * oldest are dropped (default 1000); see `SubscriptionLagged`.
   */
  bufferSize?: number;
  /** Overrides `requestTimeoutMs` for this subscription's subscribe requests. */
  timeoutMs?: number;
}

export interface PublishOptions {
  key?: string;
  headers?: Record<string, string>;
  /** Overrides `requestTimeoutMs` for this request. */
  timeoutMs?: number;
}

export interface RequestOptions {
  /** Overrides `requestTimeoutMs` for this request. */
  timeoutMs?: number;
}

/**
 * What `subscribe` returns. It is also an async iterable of its events:
 * `for await (const event of sub)` yields the events that arrive from then on,
 * ends when the subscription is unsubscribed or the client is closed, throws the
 * HeraldError when the broker refused the subscription, and unsubscribes when the
 * loop is left early (break, return, throw).
 */
export interface Subscription<T = unknown> extends AsyncIterable<HeraldEvent<T>> {
  /** The patterns of this subscription. */
  readonly topics: readonly string[];
  /**
   * Resolves when the broker confirmed; rejects with a HeraldError on an error reply
   * or a timeout, and then the subscription is gone.
   */
  readonly ready: Promise<void>;
  on<K extends keyof SubscriptionEvents<T>>(name: K, fn: SubscriptionEvents<T>[K]): this;
  off<K extends keyof SubscriptionEvents<T>>(name: K, fn: SubscriptionEvents<T>[K]): this;
  /**
   * Stops delivery at once and ends its loops; resolves when the broker confirmed (or
   * at once when not connected). Rejects only on a timeout, and never unhandled.
   */
  unsubscribe(options?: RequestOptions): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterator<HeraldEvent<T>, undefined>;
}

export declare class HeraldClient {
  constructor(url: string, options?: ConnectOptions);
  readonly state: State;
  /** The transport of the current connection, or of the next attempt. */
  readonly transport: Transport;
  on<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this;
  off<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this;
  /**
   * Connects when "idle", "closed" or "unauthorized"; otherwise does nothing.
   * Throws a TypeError when there is no WebSocket or the URL cannot be resolved.
   */
  connect(): this;
  subscribe<T = unknown>(
    topics: string | string[],
    options?: SubscribeOptions,
    handler?: (event: HeraldEvent<T>) => void,
  ): Subscription<T>;
  subscribe<T = unknown>(topics: string | string[], handler: (event: HeraldEvent<T>) => void): Subscription<T>;
  /**
   * Resolves when the broker accepted the event for fan-out (not when delivered).
   * Over SSE it is `POST /api/publish`, with the token as Bearer.
   */
  publish(topic: string, data: unknown, extra?: PublishOptions): Promise<void>;
  /** Resolves with the round trip to the broker and back, in ms (WebSocket only). */
  ping(options?: RequestOptions): Promise<number>;
  /** Closes with 1000 and ends every loop over a subscription; no reconnect until `connect()` or `reconnect()`. */
  close(): void;
  /** Connects again now, with fresh credentials. */
  reconnect(): void;
}

/** Opens a client; it starts connecting at once unless `autoConnect` is false. */
export declare function connect(url: string, options?: ConnectOptions): HeraldClient;

/** Full-jitter backoff: random() * min(maxMs, initialMs * 2 ** attempt), floored. */
export declare function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;

/** NATS-style match: `*` one token, a final `>` one or more tokens. */
export declare function topicMatches(pattern: string, topic: string): boolean;

declare const herald: {
  connect: typeof connect;
  backoffDelay: typeof backoffDelay;
  topicMatches: typeof topicMatches;
  HeraldClient: typeof HeraldClient;
  HeraldError: typeof HeraldError;
  PROTOCOL: typeof PROTOCOL;
};
export default herald;
