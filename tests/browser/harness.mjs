// Helpers for the dashboard tests: a real `herald` process on a free port, a real
// headless Chromium (Debian's /usr/bin/chromium driven by playwright-core), HS256 JWTs
// signed with node:crypto, and a page wrapper that records every console error and
// uncaught exception so a test can fail on them.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, afterEach, before } from "node:test";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** The broker under test; the caller builds it (`cargo build -p herald-broker`). */
export const HERALD_BIN = process.env.HERALD_BIN || path.join(ROOT, "target/debug/herald");
/** Debian's Chromium; `npx playwright install` cannot download browsers here. */
export const CHROMIUM = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
export const ARTIFACTS = path.join(ROOT, "target/artifacts");

/** How long to wait for anything that should happen "soon" (the machine is loaded). */
export const WAIT_MS = 30_000;

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts the real broker with only environment overrides (defaults otherwise) and
 * waits for GET /readyz (or `readyUrl`, for a broker with an admin listener). The
 * parent's own HERALD_* settings are not passed on, so a developer's environment
 * cannot change what is tested.
 */
export async function startHerald({ env = {}, port, readyUrl, args = [] } = {}) {
  port ??= await freePort();
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !(k.startsWith("HERALD_") && (k.includes("__") || k === "HERALD_CONFIG"))),
  );
  const url = `http://127.0.0.1:${port}/`;
  const herald = await startProcess("herald", HERALD_BIN, args, async () => {
    const res = await fetch(readyUrl ?? new URL("readyz", url));
    return res.status === 200;
  // Compression on, as a production deployment would have it: every page connects
  // with permessage-deflate (the client test checks that it was negotiated).
  }, { ...base, RUST_LOG: "info", HERALD_SERVER__LISTEN: `127.0.0.1:${port}`, HERALD_SESSION__COMPRESSION: "deflate", ...env });
  return {
    ...herald,
    url,
    port,
    /** POST api/publish with one event or an array; resolves to the parsed 202 body. */
    async publish(events, { token } = {}) {
      const res = await fetch(new URL("api/publish", url), {
        method: "POST",
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(events),
      });
      const body = await res.text();
      if (res.status !== 202) throw new Error(`POST api/publish: ${res.status} ${body}`);
      return JSON.parse(body);
    },
  };
}

/**
 * Registers the hooks of a browser test file: one headless Chromium for the file,
 * and cleanups that run when each test ends, passed or failed, newest first.
 * Returns `browser()`, `cleanup(fn)`, and `herald(options)`: `startHerald`, with the
 * broker stopped when the test ends.
 */
export function browserTests() {
  let browser;
  const cleanups = [];
  before(async () => {
    browser = await launchBrowser();
  });
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => {});
  });
  after(async () => {
    await browser?.close();
  });
  return {
    browser: () => browser,
    cleanup: (fn) => cleanups.push(fn),
    async herald(options) {
      const broker = await startHerald(options);
      cleanups.push(() => broker.stop());
      return broker;
    },
  };
}

/**
 * Starts a child process, kept in `children` (killed when the test process exits),
 * with `env` as its whole environment (the parent's when not given); resolves once
 * `ready()` does. Its output is collected in `logs`. `kill()` is SIGKILL (a crash);
 * `stop()` is SIGTERM, then SIGKILL if it takes more than 15 s; both resolve to how
 * it exited.
 */
async function startProcess(name, command, args, ready, env = process.env) {
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const logs = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => logs.push(...chunk.split("\n").filter(Boolean)));
  }
  let exited = null;
  const exit = new Promise((resolve) => child.on("exit", (code, signal) => {
    exited = { code, signal };
    children.delete(child);
    resolve(exited);
  }));
  child.on("error", (err) => logs.push(`spawn ${command}: ${err.message}`));
  const deadline = Date.now() + WAIT_MS;
  while (!(await ready().catch(() => false))) {
    if (exited) throw new Error(`${name} exited (${JSON.stringify(exited)}) before it was ready:\n${logs.join("\n")}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${name} was not ready within ${WAIT_MS} ms:\n${logs.join("\n")}`);
    }
    await sleep(100);
  }
  return {
    logs,
    async kill() {
      if (exited) return exited;
      child.kill("SIGKILL");
      await exit;
      return exited;
    },
    async stop() {
      if (exited) return exited;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exit;
      clearTimeout(timer);
      return exited;
    },
  };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port) {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.on("connect", () => { socket.destroy(); resolve(true); });
    socket.on("error", () => resolve(false));
  });
}

/** A private nats-server with JetStream (Debian's, installed by scripts/test). */
export async function startNats() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "herald-nats-"));
  const nats = await startProcess("nats-server", "nats-server",
    ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], () => listening(port));
  return { ...nats, url: `nats://127.0.0.1:${port}` };
}

/**
 * nginx (Debian's, installed by scripts/test) running the repository's
 * docker/nginx.conf as it is, but for the addresses: it listens on a free local port
 * instead of 80, and its upstream servers are `upstreams` instead of the compose
 * services. Every other line is the file's own, so what the compose stack's
 * load balancer does is what is tested.
 */
export async function startNginx(upstreams) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "herald-nginx-"));
  let conf = readFileSync(path.join(ROOT, "docker/nginx.conf"), "utf8");
  const servers = [...conf.matchAll(/^\s*server herald-\d+:8080 .*$/gm)];
  if (servers.length === 0) throw new Error("docker/nginx.conf lists no herald-N:8080 upstream");
  const template = servers[0][0];
  conf = conf.replace(/^\s*server herald-\d+:8080 .*\n/gm, "");
  conf = conf.replace(/^(\s*keepalive \d+;)$/m, (line) =>
    upstreams.map((u) => template.replace(/herald-\d+:8080/, u)).join("\n") + "\n" + line);
  conf = conf.replace(/^(\s*)listen 80;$/m, `$1listen 127.0.0.1:${port};`);
  conf = conf.replace(/^pid .*$/m, `pid ${dir}/nginx.pid;`);
  // Node's child-process pipes are sockets, which /dev/stdout cannot open: the access
  // log goes to a file (in the same format), read through `accessLog()`.
  conf = conf.replace(/^(\s*access_log) \/dev\/stdout (\w+);$/m, `$1 ${dir}/access.log $2;`);
  if (!conf.includes(`listen 127.0.0.1:${port};`)) throw new Error("docker/nginx.conf has no `listen 80;`");
  // Temporary files in the test's own directory (Debian's defaults need /var/lib/nginx).
  conf = conf.replace(/^http \{$/m, `http {\n    client_body_temp_path ${dir}/body;\n    proxy_temp_path ${dir}/proxy;`);
  writeFileSync(path.join(dir, "nginx.conf"), conf);
  const nginx = await startProcess("nginx", NGINX,
    ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
    () => listening(port));
  return {
    ...nginx,
    url: `http://127.0.0.1:${port}/`,
    /** The access log's lines so far. */
    accessLog: () => readFileSync(path.join(dir, "access.log"), "utf8").split("\n").filter(Boolean),
  };
}

/** Debian's nginx binary. */
export const NGINX = process.env.HERALD_NGINX || "/usr/sbin/nginx";

/** Retries an assertion until it holds, or fails with its last error. */
export async function eventually(check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

/** Waits for the connection badge; on a timeout, says what the page showed and logged. */
export async function expectState(page, state) {
  try {
    await page.waitForSelector(`#state[data-state="${state}"]`);
  } catch (err) {
    const shown = await page.textContent("#state").catch(() => "?");
    const logged = page.problems?.length ? `; the page logged:\n${page.problems.join("\n")}` : "";
    throw new Error(`the badge says "${shown}", not "${state}"${logged}`, { cause: err });
  }
}

/** Debian's Chromium, headless. Playwright gives every launch a fresh, temporary
 *  user-data dir (and removes it on close), so no profile state leaks between runs. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 60_000,
  });
}

/**
 * Opens the dashboard in a fresh browser context (empty sessionStorage) at laptop
 * size. Every console error and uncaught exception is recorded; `allow(regex)` lets a
 * test accept the browser's own network errors it provokes on purpose (a 401 while
 * auth is on, connection refused while the broker restarts).
 */
export async function openDashboard(browser, url, { colorScheme = "light" } = {}) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, colorScheme });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const problems = [];
  const allowed = [];
  page.problems = problems;
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    if (!allowed.some((re) => re.test(text))) problems.push(`console error: ${text} (${msg.location().url})`);
  });
  page.on("pageerror", (err) => problems.push(`uncaught exception: ${err.stack || err.message}`));
  await page.goto(url);
  return {
    page,
    context,
    problems,
    allow(re) {
      allowed.push(re);
    },
    async close() {
      await context.close();
    },
  };
}

/** A compact HS256 JWT, as an identity provider would issue it. */
export function hs256(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}
