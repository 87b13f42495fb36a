// Type declarations for herald.js, the Herald WebSocket client (protocol herald.v1.json).

/** The subprotocol offered on every upgrade. */
export declare const PROTOCOL: "herald.v1.json";

/** The client's connection state. */
export type State = "connecting" | "open" | "reconnecting" | "closed" | "unauthorized";

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
  /** Per-topic sequence on the broker node, +1 per event, starting at 1. */
  seq: number;
  /** Milliseconds since the Unix epoch when the broker received the event. */
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
  /** WebSocket close code; 1006 when the connection failed without one, 4008 when the client declared it dead. */
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Delay before the next attempt, when `willReconnect`; otherwise null. */
  delayMs: number | null;
}

export type ResetReason = "epoch_changed" | "history_expired";

/** The events of a client and their listeners' arguments. */
export interface ClientEvents {
  state: (state: State, prev: State) => void;
  open: (welcome: Welcome) => void;
  close: (info: CloseInfo) => void;
  lagged: (info: { dropped: number }) => void;
  reset: (info: { topic: string; reason: ResetReason }) => void;
  gap: (info: { topic: string; expected: number; got: number }) => void;
  error: (error: HeraldError) => void;
}

/**
 * An error reply of the broker (`code`: bad_request, unknown_op, invalid_topic,
 * forbidden, unauthorized, too_many_subscriptions, rate_limited, payload_too_large,
 * publish_disabled, internal), or one of the client's own: not_open, disconnected,
 * unsubscribed.
 */
export declare class HeraldError extends Error {
  constructor(code: string, message: string, id?: string | number);
  readonly code: string;
  /** The id of the request the broker answered, when there was one. */
  readonly id?: string | number;
}

export interface BackoffOptions {
  /** Cap of the first retry's delay, in ms (default 500). */
  initialMs?: number;
  /** Largest cap, in ms (default 30000). */
  maxMs?: number;
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

export interface ConnectOptions {
  /** A JWT, or a function returning a fresh one; sent as the first message on every connection. */
  token?: string | (() => string | Promise<string>);
  /** Returns a one-time ticket (from POST /api/tickets); called for every connection. */
  getTicket?: () => string | Promise<string>;
  /** Defaults to globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** After close 1001, reconnect after a random delay below this, in ms (default 5000). */
  goingAwayMaxMs?: number;
}

export interface SubscribeOptions {
  /** Replay up to this many recent events per matching topic before live events. */
  last?: number;
}

export interface Subscription {
  /** The patterns of this subscription. */
  readonly topics: readonly string[];
  /** Resolves when the broker confirmed; rejects with a HeraldError on an error reply. */
  readonly ready: Promise<void>;
  /** Stops delivery at once; resolves when the broker confirmed (or at once when not connected). */
  unsubscribe(): Promise<void>;
}

export declare class HeraldClient {
  constructor(url: string, options?: ConnectOptions);
  readonly state: State;
  on<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this;
  off<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this;
  subscribe<T = unknown>(
    topics: string | string[],
    options: SubscribeOptions,
    handler: (event: HeraldEvent<T>) => void,
  ): Subscription;
  subscribe<T = unknown>(topics: string | string[], handler: (event: HeraldEvent<T>) => void): Subscription;
  /** Resolves when the broker accepted the event for fan-out (not when delivered). */
  publish(topic: string, data: unknown, extra?: { key?: string; headers?: Record<string, string> }): Promise<void>;
  /** Closes with 1000; no reconnect until `reconnect()`. */
  close(): void;
  /** Connects again now, with fresh credentials. */
  reconnect(): void;
}

/** Opens a client; it starts connecting at once. */
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
