// The compose `cluster` profile's setup, with real processes instead of containers:
// three Herald nodes running docker/herald.toml with the profile's backplane
// settings and auth on, a nats-server with JetStream, and nginx running
// docker/nginx.conf (addresses aside). A real Chromium opens the dashboard through
// nginx: it connects every time (its ticket comes from whichever node nginx picks for
// POST /api/tickets, its WebSocket from whichever node nginx picks for the upgrade),
// shows the three nodes in the nodes panel, and a killed node in red. With the
// profile's cluster history, it rides a rolling restart of every node: each event
// once, no reset, no gap. Run by scripts/browser-test (`node --test`).

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  ROOT, eventually, expectState, hs256, launchBrowser, openDashboard, startHerald, startNats, startNginx,
} from "./harness.mjs";

const TEST_TIMEOUT = 240_000;
const SECRET = "cluster-test-secret-0123456789abcdef";
const NODES = 3;
let browser;
let nats;
let nginx;
const nodes = [];

/** A node as docker/compose.yaml runs herald-1 and herald-2 (the `cluster-env`
 *  anchor), pointed at the local nats-server, with the Kafka bridge left out (no
 *  Kafka here) and JWT auth on. */
function nodeEnv(i) {
  // tests/examples.rs runs the same settings read from docker/compose.yaml itself.
  return {
    HERALD_SERVER__NODE_ID: `herald-${i}`,
    // The profile trusts nginx's fixed address; here nginx is on this machine.
    HERALD_SERVER__TRUSTED_PROXIES: '["127.0.0.1"]',
    HERALD_CLUSTER__BACKPLANE: "bus",
    HERALD_CLUSTER__SUBJECT_PREFIX: "herald.",
    HERALD_CLUSTER__HISTORY: "jetstream",
    HERALD_BRIDGE__NATS: `[{ name = "nats", url = "${nats.url}", subjects = ["metrics.>"] }, `
      + `{ name = "bus", url = "${nats.url}", subjects = ["herald.>"], strip_prefix = "herald." }]`,
    HERALD_BRIDGE__KAFKA: "[]",
    HERALD_AUTH__MODE: "jwt",
    HERALD_AUTH__JWT_SECRET: SECRET,
  };
}

before(async () => {
  nats = await startNats();
  for (let i = 1; i <= NODES; i++) {
    nodes.push(await startHerald({ env: nodeEnv(i), args: ["--config", path.join(ROOT, "docker/herald.toml")] }));
  }
  nginx = await startNginx(nodes.map((n) => `127.0.0.1:${n.port}`));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await nginx?.stop();
  for (const node of nodes) await node.stop();
  await nats?.stop();
});

function token() {
  const exp = Math.floor(Date.now() / 1000) + 600;
  return hs256(SECRET, { sub: "ops-dashboard", exp, herald: { subscribe: [">"], publish: [">"] } });
}

/** The nodes panel as the user sees it: [node, class] per line. */
function nodesPanel(page) {
  return page.$$eval("#nodes li", (lis) => lis.map((li) => [li.dataset.node, li.className]));
}

test("through nginx with auth on, the dashboard connects every time and shows every node", { timeout: TEST_TIMEOUT }, async () => {
  const dash = await openDashboard(browser, nginx.url);
  const { page } = dash;
  // The page probes api/topics without a token first: Chromium logs the 401 itself.
  dash.allow(/status of 401 \(Unauthorized\)/);
  await expectState(page, "unauthorized");
  const jwt = token();
  await page.fill("#token", jwt);
  await page.click("#auth button[type=submit]");
  await expectState(page, "open");

  // Every reload asks a node for a ticket and opens the WebSocket on a node nginx
  // picks (least_conn, no stickiness): each one must connect.
  const seen = new Set();
  for (let i = 0; i < 12; i++) {
    await page.reload();
    await expectState(page, "open");
    seen.add((await page.textContent("#node")).trim());
  }
  const issued = nodes.map((n) => n.logs.filter((l) => l.includes("ticket issued")).length);
  const redeemed = nodes.map((n) => n.logs.filter((l) => l.includes("session opened") && l.includes("ops-dashboard")).length);
  assert.equal(issued.reduce((a, b) => a + b), 13, `tickets issued per node: ${issued}`);
  assert.equal(redeemed.reduce((a, b) => a + b), 13, `sessions opened with a ticket per node: ${redeemed}`);
  assert.ok(seen.size >= 2, `the page was served by several nodes: ${[...seen]}`);
  // nginx's view: every upgrade succeeded (101), spread over the nodes (least_conn
  // falls back to round robin among equals), and no
  // ticket reached its log (the format leaves out query strings). nginx logs a
  // request when it ends: the 12 WebSockets the reloads closed, not the open one.
  const upgrades = nginx.accessLog().filter((l) => l.includes('"GET /ws '));
  assert.equal(upgrades.length, 12, upgrades.join("\n"));
  assert.ok(upgrades.every((l) => / 101 /.test(l)), upgrades.join("\n"));
  const upstreams = new Set(upgrades.map((l) => l.match(/upstream=(\S+)/)?.[1]));
  assert.ok(upstreams.size >= 2, `upgrades went to ${[...upstreams]}`);
  assert.ok(nginx.accessLog().some((l) => l.includes("POST /api/tickets")), "tickets came through nginx");
  assert.ok(!nginx.accessLog().some((l) => l.includes("ticket=")), "no ticket in nginx's log");

  // The cluster view: the three nodes, none missing.
  await eventually(async () => {
    const panel = await nodesPanel(page);
    assert.deepEqual(panel.map(([n]) => n).sort(), ["herald-1", "herald-2", "herald-3"], JSON.stringify(panel));
    assert.ok(panel.every(([, cls]) => cls === ""), JSON.stringify(panel));
  });

  // A node dies: until the others forget it, the panel shows it in red.
  const connectedTo = (await page.textContent("#node")).trim();
  const victim = nodes.findIndex((_, i) => !connectedTo.includes(`herald-${i + 1}`));
  await nodes[victim].kill();
  await eventually(async () => {
    const panel = await nodesPanel(page);
    assert.ok(panel.some(([n, cls]) => n === `herald-${victim + 1}` && cls === "missing"), JSON.stringify(panel));
  });
  // … and once it has been silent for three announcement periods, it is gone.
  await eventually(async () => {
    const panel = await nodesPanel(page);
    assert.deepEqual(panel.map(([n]) => n).sort(), ["herald-1", "herald-2", "herald-3"].filter((n) => n !== `herald-${victim + 1}`));
  });
  await expectState(page, "open");
  assert.deepEqual(dash.problems, [], "the page logged errors or threw");
  await dash.close();
});

/** POST api/publish through nginx, again while nginx picks a node that is going away. */
async function publish(events) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const res = await fetch(new URL("api/publish", nginx.url), {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token()}` },
      body: JSON.stringify(events),
    }).catch((e) => ({ status: 0, text: async () => String(e) }));
    if (res.status === 202) return;
    const body = await res.text();
    if (Date.now() > deadline) throw new Error(`POST api/publish: ${res.status} ${body}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test("with cluster history, the dashboard rides a rolling restart of every node: each event once, no reset, no gap", { timeout: TEST_TIMEOUT }, async () => {
  const dash = await openDashboard(browser, nginx.url);
  const { page } = dash;
  dash.allow(/status of 401 \(Unauthorized\)/);
  // A node going away mid-request: nginx logs it, Chromium too.
  dash.allow(/status of 50[23]/);
  await expectState(page, "unauthorized");
  await page.fill("#token", token());
  await page.click("#auth button[type=submit]");
  await expectState(page, "open");
  await page.fill("#pattern", "roll.>");
  await page.click("#subscribe button[type=submit]");
  await page.waitForSelector('#subs li[data-pattern="roll.>"][data-status="active"]');

  let n = 0;
  const next = (k) => Array.from({ length: k }, () => ({ topic: `roll.t${n % 2}`, data: n++ }));
  await publish(next(4));
  const epoch = await page.getAttribute("#epoch", "title");
  const nodesSeen = new Set([(await page.textContent("#node")).trim()]);
  // Every node in turn (the one the test above killed comes back first), on its port.
  for (let i = 0; i < NODES; i++) {
    const name = `herald-${i + 1}`;
    const wasOn = (await page.textContent("#node")).trim() === name;
    await nodes[i].stop();
    await publish(next(3));
    if (wasOn) {
      // The page resumes on another node before this one comes back.
      await eventually(async () => {
        assert.equal(await page.getAttribute("#state", "data-state"), "open");
        assert.notEqual((await page.textContent("#node")).trim(), name);
      });
      nodesSeen.add((await page.textContent("#node")).trim());
    }
    nodes[i] = await startHerald({ env: nodeEnv(i + 1), port: nodes[i].port, args: ["--config", path.join(ROOT, "docker/herald.toml")] });
    await publish(next(3));
  }
  await eventually(async () => {
    const data = await page.$$eval("#stream tr.event td.data", (tds) => tds.map((td) => td.textContent));
    assert.deepEqual(data.map(Number).sort((a, b) => a - b), [...Array(n).keys()], "every event once");
  });
  const notices = await page.$$eval("#stream tr.notice", (rows) => rows.map((r) => [r.dataset.kind, r.textContent]));
  assert.deepEqual(notices.filter(([kind]) => kind === "reset" || kind === "gap"), [], JSON.stringify(notices));
  assert.equal(await page.getAttribute("#epoch", "title"), epoch, "one epoch on every node");
  assert.ok(nodesSeen.size >= 2, `the page moved to another node: ${[...nodesSeen]}`);
  assert.deepEqual(dash.problems, [], "the page logged errors or threw");
  await dash.close();
});
