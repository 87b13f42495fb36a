// Helpers for the dashboard tests: a real `herald` process on a free port, a real
// headless Chromium (Debian's /usr/bin/chromium driven by playwright-core), HS256 JWTs
// signed with node:crypto, and a page wrapper that records every console error and
// uncaught exception so a test can fail on them.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** The broker under test; the caller builds it (`cargo build -p herald`). */
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
export async function startHerald({ env = {}, port, readyUrl } = {}) {
  port ??= await freePort();
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !(k.startsWith("HERALD_") && (k.includes("__") || k === "HERALD_CONFIG"))),
  );
  const child = spawn(HERALD_BIN, [], {
    env: { ...base, RUST_LOG: "info", HERALD_SERVER__LISTEN: `127.0.0.1:${port}`, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
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
  child.on("error", (err) => logs.push(`spawn ${HERALD_BIN}: ${err.message}`));

  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (exited) throw new Error(`herald exited (${JSON.stringify(exited)}) before it was ready:\n${logs.join("\n")}`);
    const res = await fetch(readyUrl ?? new URL("readyz", url)).catch(() => null);
    if (res?.status === 200) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`herald was not ready within ${WAIT_MS} ms:\n${logs.join("\n")}`);
    }
    await sleep(100);
  }

  return {
    url,
    port,
    logs,
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
    /** SIGTERM (sessions are closed with 1001), then SIGKILL if it takes too long. */
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
