// Compile-time checks of herald.d.ts (`tsc -p test/tsconfig.json`, run by `npm test`).
// Each @ts-expect-error line must fail to type-check: if the declarations grow too
// loose, tsc reports the unused directive.
import herald, {
  backoffDelay,
  connect,
  HeraldError,
  topicMatches,
  type CloseInfo,
  type HeraldEvent,
  type State,
  type Welcome,
} from "../herald.js";

const h = connect("ws://127.0.0.1:8080/ws", {
  token: async () => "jwt",
  getTicket: () => Promise.resolve("ticket"),
  WebSocket, // the DOM constructor fits the option
  backoff: { initialMs: 100, maxMs: 5000 },
  goingAwayMaxMs: 2000,
});
const same = herald.connect("ws://x/ws", { token: "jwt" });
same.close();

const s: State = h.state;
h.on("state", (state: State, prev: State) => void [state, prev]);
h.on("open", (w: Welcome) => void w.heartbeat.interval_ms.toFixed());
h.on("close", ({ code, willReconnect, delayMs }: CloseInfo) => void [code, willReconnect, delayMs ?? 0]);
h.on("lagged", ({ dropped }) => void dropped.toFixed());
h.on("reset", ({ topic, reason }) => void (reason === "epoch_changed" ? topic : topic.length));
h.on("gap", ({ expected, got }) => void (got - expected));
h.on("error", (e: HeraldError) => void [e.code, e.message, e.id]);
h.off("gap", () => {});

const sub = h.subscribe<{ id: number }>("orders.*", { last: 20 }, (ev: HeraldEvent<{ id: number }>) => {
  const n: number = ev.seq + ev.ts + (ev.data?.id ?? 0);
  const r: true | undefined = ev.replay;
  void [n, r, ev.source === "kafka", ev.headers?.["trace"], ev.key];
});
const sub2 = h.subscribe(["a", "b.>"], (ev) => void ev.topic);
const ready: Promise<void> = sub.ready;
const done: Promise<void> = sub2.unsubscribe();
const published: Promise<void> = h.publish("chat.room1", { text: "hi" }, { key: "k", headers: { a: "b" } });
h.reconnect();
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
// @ts-expect-error: state is read-only
h.state = "open";
void bad;
