// Compile-time checks of herald.d.ts (`tsc -p test/tsconfig.json`, run by `npm test`).
// Each @ts-expect-error line must fail to type-check: if the declarations grow too
// loose, tsc reports the unused directive.
import herald, {
  backoffDelay,
  connect,
  HeraldError,
  topicMatches,
  type CloseInfo,
  type GapInfo,
  type HeraldClient,
  type HeraldEvent,
  type OnlineTarget,
  type RefreshInfo,
  type ResetInfo,
  type State,
  type Subscription,
  type SubscriptionLagged,
  type Transport,
  type Welcome,
} from "../herald.js";

const h = connect("ws://127.0.0.1:8080/ws", {
  token: async () => "jwt",
  getTicket: () => Promise.resolve("ticket"),
  WebSocket, // the DOM constructor fits the option
  backoff: { initialMs: 100, maxMs: 5000 },
  goingAwayMaxMs: 2000,
  autoConnect: false,
  requestTimeoutMs: 5000,
  refreshMarginMs: 30_000,
  onlineTarget: window, // the DOM window fits the option, and so does any EventTarget
});
const chained: HeraldClient = h.connect();
connect("/ws", { onlineTarget: new EventTarget(), requestTimeoutMs: Infinity });
connect("/ws", { onlineTarget: null });
const fakeOnline: OnlineTarget = { addEventListener() {}, removeEventListener() {} };
connect("/ws", { onlineTarget: fakeOnline });
// Server-Sent Events: the DOM EventSource fits the option.
const overSse = connect("/ws", { transport: "sse", EventSource, sseUrl: "/sse", websocketRetryMs: 30_000 });
const now: Transport = overSse.transport;
overSse.on("transport", (to: Transport, from: Transport) => console.log(now, to, from));
// @ts-expect-error not a transport
connect("/ws", { transport: "polling" });
const same = herald.connect("ws://x/ws", { token: "jwt" });
same.close();

const s: State = h.state;
h.on("state", (state: State, prev: State) => void [state, prev]);
h.on("open", (w: Welcome) => void w.heartbeat.interval_ms.toFixed());
h.on("close", ({ code, willReconnect, delayMs }: CloseInfo) => void [code, willReconnect, delayMs ?? 0]);
h.on("lagged", ({ dropped }) => void dropped.toFixed());
h.on("reset", ({ topic, reason }: ResetInfo) => void (reason === "epoch_changed" ? topic : topic.length));
h.on("gap", ({ expected, got, prev }: GapInfo) => void (got - (prev ?? expected)));
h.on("error", (e: HeraldError) => void [e.code, e.message, e.id]);
h.on("refresh", ({ exp }: RefreshInfo) => void (exp === null ? 0 : exp.toFixed()));
h.on("error", (e) => {
  if (e.code === "refresh_failed" && e.cause instanceof HeraldError) void e.cause.code;
});
h.off("gap", () => {});

const sub = h.subscribe<{ id: number }>("orders.*", { last: 20 }, (ev: HeraldEvent<{ id: number }>) => {
  const n: number = ev.seq + ev.ts + (ev.data?.id ?? 0);
  const r: true | undefined = ev.replay;
  const cluster: number | undefined = ev.prev;
  const local: true | undefined = ev.local;
  void [cluster, local];
  void [n, r, ev.source === "kafka", ev.headers?.["trace"], ev.key];
});
const sub2 = h.subscribe(["a", "b.>"], (ev) => void ev.topic);
const ready: Promise<void> = sub.ready;
const done: Promise<void> = sub2.unsubscribe();
const published: Promise<void> = h.publish("chat.room1", { text: "hi" }, { key: "k", headers: { a: "b" } });
const quick: Promise<void> = h.publish("chat.room1", null, { timeoutMs: 500 });
const rtt: Promise<number> = h.ping({ timeoutMs: 1000 });
h.reconnect();

// Subscriptions: their own events, and async iteration.
const orders: Subscription<{ id: number }> = h.subscribe<{ id: number }>("orders.*", { last: 5, bufferSize: 100, timeoutMs: 2000 });
orders
  .on("event", (ev) => void ev.data?.id.toFixed())
  .on("gap", ({ topic, expected, got }) => void [topic, got - expected])
  .on("reset", ({ topic, reason }) => void (reason === "history_expired" ? topic : 0))
  .on("lagged", ({ dropped, reason }: SubscriptionLagged) => void (reason === "buffer_full" ? dropped : -dropped))
  .on("error", (e) => void (e.code === "timeout" || e.code === "forbidden"))
  .off("gap", () => {});
async function consume(): Promise<number> {
  let total = 0;
  for await (const ev of orders) {
    const id: number | undefined = ev.data?.id;
    total += ev.seq + (id ?? 0);
    if (total > 100) break;
  }
  for await (const ev of h.subscribe("plain")) void (ev.data satisfies unknown);
  return total;
}
const unsubscribed: Promise<void> = orders.unsubscribe({ timeoutMs: 100 });
h.subscribe("no.handler");
h.subscribe("options.only", { last: 1 });
try {
  await orders.ready;
} catch (e) {
  if (e instanceof HeraldError && e.code === "timeout") void e.id;
}
const code: HeraldError["code"] = "timeout";
const futureCode: HeraldError["code"] = "some_future_code"; // newer brokers may add codes
void [chained, quick, rtt, consume, unsubscribed, code, futureCode];
const delay: number = backoffDelay(3, { initialMs: 10 }, () => 0.5);
const m: boolean = topicMatches("a.*", "a.b");
void [s, ready, done, published, delay, m];

// @ts-expect-error: no such event
h.on("message", () => {});
// @ts-expect-error: a state listener gets states, not numbers
h.on("state", (state: number) => void state);
// @ts-expect-error: unknown state
const bad: State = "failed";
// @ts-expect-error: the token is a string or a function
connect("ws://x/ws", { token: 42 });
// @ts-expect-error: last is a number
h.subscribe("x", { last: "10" }, () => {});
// @ts-expect-error: no such subscription event
orders.on("state", () => {});
// @ts-expect-error: a subscription's event listener gets events, not strings
orders.on("event", (ev: string) => void ev);
// @ts-expect-error: a subscription's lagged has a reason from a fixed set
orders.on("lagged", ({ reason }) => void (reason === "slow"));
// @ts-expect-error: autoConnect is a boolean
connect("ws://x/ws", { autoConnect: "no" });
// @ts-expect-error: requestTimeoutMs is a number
connect("ws://x/ws", { requestTimeoutMs: "10s" });
// @ts-expect-error: refreshMarginMs is a number
connect("ws://x/ws", { refreshMarginMs: "1m" });
// @ts-expect-error: a refresh listener gets the new exp, not a token
h.on("refresh", (token: string) => void token);
// @ts-expect-error: an online target needs removeEventListener too, so that close() can detach
connect("ws://x/ws", { onlineTarget: { addEventListener() {} } });
// @ts-expect-error: ping resolves with a number
const notRtt: Promise<string> = h.ping();
// @ts-expect-error: the iterator yields typed events
for await (const ev of orders) void (ev.data?.id satisfies string);
void notRtt;
// @ts-expect-error: state is read-only
h.state = "open";
void bad;
