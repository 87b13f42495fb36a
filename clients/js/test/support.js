// Test helpers: start the real herald binary on a chosen port (alone, or as a node of
// a cluster on a private nats-server), a TCP proxy that can cut or stall connections
// or move them to another node, HS256 JWTs signed with node:crypto, and small waits.
//
// The broker binary is $HERALD_BIN, or target/debug/herald of this repository.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/** The broker binary under test. */
export const HERALD_BIN = process.env.HERALD_BIN
  ? path.resolve(process.env.HERALD_BIN)
  : path.resolve(here, "../../../target/debug/herald");

/** How long a test waits for something that should take milliseconds (the machine may be loaded). */
export const WAIT_MS = 20_000;

/** Every broker started by this process, so none outlives a crashed test file. */
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** A port that was free a moment ago (the kernel picked it). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts herald on 127.0.0.1:`port` with `HERALD_<SECTION>__<KEY>` overrides in
 * `env`, and waits until /readyz answers 200. Inherited HERALD_* variables are
 * dropped so the developer's environment cannot change what a test runs against.
 */
export async function startHerald({ port, env = {} } = {}) {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(`no broker binary at ${HERALD_BIN}: run \`cargo build -p herald-broker\` or set HERALD_BIN`);
  }
  port ??= await freePort();
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
  const child = spawn(HERALD_BIN, ["--listen", `127.0.0.1:${port}`], {
    env: { ...childEnv, RUST_LOG: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const logs = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => logs.push(...chunk.split("\n").filter(Boolean)));
  }
  const exited = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  const broker = {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    logs,
    exited,
    /** SIGKILL: the broker vanishes without closing anything. */
    async kill() {
      child.kill("SIGKILL");
      return exited;
    },
    /** SIGTERM: graceful shutdown, sessions are closed with 1001. */
    async terminate() {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
      const status = await exited;
      clearTimeout(timer);
      return status;
    },
  };
  const deadline = Date.now() + WAIT_MS;
  let gone = false;
  exited.then(() => (gone = true));
  for (;;) {
    if (gone) throw new Error(`herald exited during start; it logged:\n${logs.join("\n")}`);
    try {
      const res = await fetch(`${broker.http}/readyz`);
      if (res.status === 200) return broker;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await broker.kill();
      throw new Error(`herald not ready within ${WAIT_MS} ms; it logged:\n${logs.join("\n")}`);
    }
    await sleep(50);
  }
}

/**
 * A private nats-server with JetStream on a free port (`nats-server` must be on PATH:
 * scripts/test installs it; a missing one fails the test). Stopped by `stop()` and
 * when the process exits.
 */
export async function startNats() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "herald-nats-"));
  const child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  running.add(child);
  const failed = new Promise((_, reject) => child.once("error", (e) => reject(new Error(`nats-server: ${e.message} (scripts/test installs it)`))));
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const up = await Promise.race([
      failed,
      new Promise((resolve) => {
        const socket = net.connect(port, "127.0.0.1", () => resolve(socket.destroy() || true));
        socket.on("error", () => resolve(false));
      }),
    ]);
    if (up) break;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await sleep(50);
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    stop() {
      child.kill("SIGKILL");
      running.delete(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A node of a cluster with cluster history on `natsUrl` (stream `stream`, backplane
 * subjects `herald.>`): the environment for `startHerald`, through a config file.
 */
export function clusterNodeEnv(natsUrl, stream) {
  const dir = mkdtempSync(path.join(tmpdir(), "herald-node-"));
  const file = path.join(dir, "herald.toml");
  writeFileSync(
    file,
    `[cluster]\nbackplane = "bus"\nsubject_prefix = "herald."\nhistory = "jetstream"\nhistory_stream = "${stream}"\n` +
      `[[bridge.nats]]\nname = "bus"\nurl = "${natsUrl}"\nsubjects = ["herald.>"]\nstrip_prefix = "herald."\n`,
  );
  return { HERALD_CONFIG: file };
}

/** POST /api/publish with one event or an array; returns the parsed answer and status. */
/**
 * A broker with JWT auth (HS256 with `secret`) that enforces `exp` promptly: its
 * session timer ticks every min(interval, timeout) / 4, 250 ms here, while the
 * client allows 6 s of silence.
 */
export function startJwtHerald(secret) {
  return startHerald({
    env: {
      HERALD_AUTH__MODE: "jwt",
      HERALD_AUTH__JWT_SECRET: secret,
      HERALD_SESSION__HEARTBEAT_INTERVAL_MS: "5000",
      HERALD_SESSION__HEARTBEAT_TIMEOUT_MS: "1000",
    },
  });
}

export async function httpPublish(broker, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${broker.http}/api/publish`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

/** An HS256 JWT, signed the way any issuer would. */
export function signJwt(secret, claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/**
 * A TCP proxy between clients and a broker that a test can break on purpose:
 * `cut()` drops every connection (the broker keeps running), `down` refuses new
 * ones, and `stall()` keeps the current connections open but stops forwarding the
 * server's bytes, and hides the server closing them: a path that died silently.
 */
export class Proxy {
  /** performance.now() when server bytes were last forwarded to a client. */
  lastForwardedAt = 0;
  /** While true, new connections are accepted and closed at once. */
  down = false;
  #target;
  #server = net.createServer((client) => this.#accept(client));
  #pairs = new Set();

  constructor(targetPort) {
    this.#target = targetPort;
  }

  /** Sends new connections to another broker, as a load balancer moves clients. */
  retarget(port) {
    this.#target = port;
  }

  async listen() {
    await new Promise((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    this.port = this.#server.address().port;
    this.ws = `ws://127.0.0.1:${this.port}/ws`;
    return this;
  }

  #accept(client) {
    if (this.down) return client.destroy();
    const upstream = net.connect(this.#target, "127.0.0.1");
    const pair = { client, upstream, stalled: false };
    this.#pairs.add(pair);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (pair.stalled) return;
      this.lastForwardedAt = performance.now();
      client.write(chunk);
    });
    const end = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", () => pair.stalled || end());
    client.on("error", () => {});
    upstream.on("error", () => {});
  }

  /** Drops every current connection, as a network failure would. */
  cut() {
    for (const { client, upstream } of this.#pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.#pairs.clear();
  }

  /** From now on, the current connections forward nothing from the server. */
  stall() {
    for (const pair of this.#pairs) pair.stalled = true;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}

/**
 * An HTTP proxy in front of a broker, as corporate proxies are: it forwards plain
 * requests (an event stream included, chunk by chunk) and, while `refuseUpgrades`,
 * answers every WebSocket upgrade with 403. `upgrades` counts the upgrades asked for.
 */
export class UpgradeRefusingProxy {
  refuseUpgrades = true;
  upgrades = 0;
  #target;
  #sockets = new Set();
  #server = http.createServer((req, res) => this.#forward(req, res));

  constructor(targetPort) {
    this.#target = targetPort;
    this.#server.on("upgrade", (req, socket, head) => this.#upgrade(req, socket, head));
    this.#server.on("connection", (socket) => {
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
    });
  }

  async listen() {
    await new Promise((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    this.port = this.#server.address().port;
    this.ws = `ws://127.0.0.1:${this.port}/ws`;
    this.http = `http://127.0.0.1:${this.port}`;
    return this;
  }

  #forward(req, res) {
    const upstream = http.request(
      { host: "127.0.0.1", port: this.#target, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  }

  #upgrade(req, socket, head) {
    this.upgrades++;
    socket.on("error", () => {});
    if (this.refuseUpgrades) {
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const upstream = net.connect(this.#target, "127.0.0.1", () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
  }

  /** Drops every connection through the proxy, as a network failure would. */
  cut() {
    for (const socket of this.#sockets) socket.destroy();
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `cond` until it is truthy, failing with `what` after `timeoutMs`. */
export async function until(cond, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Records everything a client reports, with the time it happened: `log` holds
 * `{name, args, at}` in order. `closes`, `states`, `resets`, `gaps`, `lagged`,
 * `errors`, `refreshes` and `transports` are shortcuts into it.
 */
export function record(client) {
  const rec = { log: [] };
  for (const name of ["state", "open", "close", "lagged", "reset", "gap", "error", "refresh", "transport"]) {
    client.on(name, (...args) => rec.log.push({ name, args, at: performance.now() }));
  }
  const of = (name) => rec.log.filter((e) => e.name === name);
  Object.defineProperties(rec, {
    opens: { get: () => of("open").map((e) => e.args[0]) },
    closes: { get: () => of("close").map((e) => ({ ...e.args[0], at: e.at })) },
    states: { get: () => of("state").map((e) => e.args[0]) },
    resets: { get: () => of("reset").map((e) => e.args[0]) },
    gaps: { get: () => of("gap").map((e) => e.args[0]) },
    lagged: { get: () => of("lagged").map((e) => e.args[0]) },
    errors: { get: () => of("error").map((e) => e.args[0]) },
    refreshes: { get: () => of("refresh").map((e) => ({ ...e.args[0], at: e.at })) },
    transports: { get: () => of("transport").map((e) => e.args[0]) },
  });
  return rec;
}

/**
 * A WebSocket class for the `WebSocket` option that notes the time of every
 * connection attempt in `attempts` (and the URL, which shows the ticket was sent).
 */
export function countingWebSocket(attempts) {
  return class extends globalThis.WebSocket {
    constructor(url, protocols) {
      attempts.push({ at: performance.now(), url: String(url) });
      super(url, protocols);
    }
  };
}

/**
 * A WebSocket class for the `WebSocket` option that keeps every message the client
 * sends, parsed, in `sent` (`{at, message}`), on whichever connection.
 */
export function recordingWebSocket(sent) {
  return class extends globalThis.WebSocket {
    send(data) {
      sent.push({ at: performance.now(), message: JSON.parse(data) });
      super.send(data);
    }
  };
}
