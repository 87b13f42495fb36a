// The live dashboard (GET /) in a real headless Chromium against a real herald
// process: connection badge, subscriptions, the event stream with filter and pause,
// the topics table, the rate chart, loss notices (lagged, gap, reset after a
// restart), the token flow, and Server-Sent Events (behind a proxy that refuses
// upgrades, or asked for in the page's URL). Every test fails on a console error or
// an uncaught exception in the page. Run by scripts/browser-test (`node --test`).

import assert from "node:assert/strict";
import { copyFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { UpgradeRefusingProxy } from "../../clients/js/test/support.js";
import {
  ROOT, artifactPath, browserTests, eventually, expectState, freePort, hs256, openDashboard,
  sleep,
} from "./harness.mjs";

const TEST_TIMEOUT = 240_000;
// One Chromium for the file; each test's pages and brokers go away when it ends.
const { browser, cleanup, herald } = browserTests();

async function dashboard(broker, options) {
  const dash = await openDashboard(browser(), broker.url, options);
  cleanup(() => dash.close());
  return dash;
}

async function subscribe(page, pattern, last) {
  await page.fill("#pattern", pattern);
  await page.fill("#last", last ? String(last) : "");
  await page.click("#subscribe button[type=submit]");
  await page.waitForSelector(`#subs li[data-pattern="${pattern}"][data-status="active"]`);
}

/** The event rows of the stream, newest first, as the user sees them. */
function eventRows(page) {
  return page.$$eval("#stream tr.event", (rows) => rows.map((r) => ({
    topic: r.dataset.topic,
    seq: Number(r.dataset.seq),
    source: r.querySelector("td.source").textContent,
    key: r.querySelector("td.key").textContent,
    data: r.querySelector("td.data").textContent,
    visible: !r.hidden && r.getClientRects().length > 0,
  })));
}

function notices(page, kind) {
  return page.$$eval(`#stream tr.notice[data-kind="${kind}"]`, (rows) => rows.map((r) => r.textContent));
}

function topicRow(page, topic) {
  return page.$eval(`#topics tr[data-topic="${topic}"]`, (r) => ({
    subscribers: r.querySelector("td.subs").textContent,
    seq: r.querySelector("td.seq").textContent,
    rate: r.querySelector("td.rate").textContent,
  })).catch(() => null);
}

function chart(page) {
  return page.$eval("#chart", (c) => ({
    draws: Number(c.dataset.draws),
    rates: JSON.parse(c.dataset.rates),
    legend: [...document.querySelectorAll("#legend li[data-topic]")].map((li) => li.dataset.topic),
  }));
}

function assertNoProblems(dash) {
  assert.deepEqual(dash.problems, [], "the page logged errors or threw");
}

test("live stream, topics table, rate chart, filter and pause", { timeout: TEST_TIMEOUT }, async () => {
  const broker = await herald();
  const dash = await dashboard(broker);
  const { page } = dash;

  await expectState(page, "open");
  assert.match(await page.textContent("#node"), /\S/);
  // The nodes panel (the cluster view; one node here, with this page's connection).
  const node = (await page.textContent("#node")).trim();
  await eventually(async () => {
    const nodes = await page.$$eval("#nodes li", (lis) => lis.map((li) => [li.dataset.node, li.className, li.textContent]));
    assert.equal(nodes.length, 1, JSON.stringify(nodes));
    assert.ok(node.includes(nodes[0][0]), `${node} / ${nodes[0][0]}`);
    assert.match(nodes[0][2], /· 1 conn ·/);
    assert.equal(nodes[0][1], "");
  });
  assert.match(await page.getAttribute("#epoch", "title"), /^[0-9a-f]{32}$/, "full epoch in the title");

  // Overlapping subscriptions: the pattern and one exact topic.
  await subscribe(page, "orders.>");
  await subscribe(page, "orders.eu");

  const orders = [1, 2, 3].map((i) => ({ topic: "orders.eu", key: `order-${i}`, data: { id: i, amount: 10 * i, currency: "EUR" } }));
  await broker.publish([
    ...orders,
    { topic: "orders.us", data: { id: 100, amount: 5.5 } },
    { topic: "metrics.api.latency", data: { p99_ms: 87 } },
    { topic: "orders.us", data: { id: 101, amount: 7 } },
    { topic: "metrics.api.latency", data: { p99_ms: 91 } },
  ]);

  // The stream: the right topics, seqs, keys and data, newest first, each event once
  // although two subscriptions match orders.eu, and nothing from metrics.*.
  await eventually(async () => assert.equal((await eventRows(page)).length, 5));
  // The broker has taken the metrics events (seq 2) by the time the table shows it;
  // give a wrongly delivered one a moment to show up too.
  await eventually(async () => assert.equal((await topicRow(page, "metrics.api.latency"))?.seq, "2"));
  await sleep(500);
  const rows = await eventRows(page);
  assert.equal(rows.length, 5, `exactly the 5 orders events: ${JSON.stringify(rows)}`);
  assert.deepEqual(
    rows.filter((r) => r.topic === "orders.eu").map(({ seq, key, data, source }) => ({ seq, key, data, source })),
    [3, 2, 1].map((i) => ({ seq: i, key: `order-${i}`, data: JSON.stringify(orders[i - 1].data), source: "http" })),
  );
  assert.deepEqual(rows.filter((r) => r.topic === "orders.us").map((r) => [r.seq, r.data]),
    [[2, '{"id":101,"amount":7}'], [1, '{"id":100,"amount":5.5}']]);
  assert.equal((await page.textContent('#subs li[data-pattern="orders.eu"] .n')).trim(), "3 ev");
  assert.equal((await page.textContent('#subs li[data-pattern="orders.>"] .n')).trim(), "5 ev");

  // The topics table: the connections that receive each topic (this page's one,
  // counted once although two of its subscriptions match orders.eu), patterns
  // listed apart.
  await eventually(async () => {
    const eu = await topicRow(page, "orders.eu");
    assert.deepEqual([eu?.subscribers, eu?.seq], ["1", "3"]);
    assert.equal((await topicRow(page, "orders.us"))?.subscribers, "1");
    assert.equal((await topicRow(page, "metrics.api.latency"))?.subscribers, "0");
    const patterns = await page.$$eval("#patterns tbody tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    assert.deepEqual(patterns, [["orders.>", "1"]]);
  });

  // The chart: redrawn every second, with a line for a topic that receives events.
  const before = await chart(page);
  let publishing = true;
  let ticks = 0;
  const background = (async () => {
    for (; publishing; ticks++) {
      await broker.publish([{ topic: "orders.eu", data: { tick: ticks } }, { topic: "orders.us", data: { tick: ticks } }]);
      await sleep(200);
    }
  })();
  try {
    await eventually(async () => {
      const now = await chart(page);
      assert.ok(now.draws >= before.draws + 2, `chart redrawn (${before.draws} → ${now.draws})`);
      assert.ok(now.rates["orders.eu"] > 0, `orders.eu charted with a rate: ${JSON.stringify(now)}`);
      assert.ok(now.legend.includes("orders.eu") && now.legend.includes("orders.us"), `legend: ${now.legend}`);
      assert.ok(!now.legend.includes("metrics.api.latency") || now.rates["metrics.api.latency"] >= 0);
      assert.notEqual(Number((await topicRow(page, "orders.eu")).rate), 0, "events/s in the topics table");
    });
  } finally {
    publishing = false;
    await background;
  }
  // Order holds per topic: once the last tick of both topics is shown, no event of
  // the background traffic is still on its way (the pause check below counts them).
  const lastTick = JSON.stringify({ tick: ticks - 1 });
  await eventually(async () => {
    const shown = (await eventRows(page)).filter((r) => r.data === lastTick).map((r) => r.topic).sort();
    assert.deepEqual(shown, ["orders.eu", "orders.us"]);
  });
  // Some pixels of the plot are drawn in the first palette colour or another: the
  // canvas is not blank.
  const painted = await page.$eval("#chart", (c) => {
    const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
    return n;
  });
  assert.ok(painted > 500, `chart has drawn pixels (${painted})`);

  // Event data is shown as text, never parsed as HTML.
  const hostile = '<img src=x onerror="window.__xss=1"><b>bold</b>';
  await broker.publish({ topic: "orders.eu", key: "<i>k</i>", data: hostile, headers: { h: "<script>window.__xss=2</script>" } });
  await eventually(async () => assert.ok((await eventRows(page)).some((r) => r.data === JSON.stringify(hostile) && r.key === "<i>k</i>")));
  await page.click(`#stream tr.event[data-topic="orders.eu"]:first-child`); // expands data and headers
  assert.match(await page.textContent("#stream tr.event.open td.data"), /headers: .*<script>/);
  assert.deepEqual(await page.evaluate(() => [window.__xss, document.querySelectorAll("#stream img, #stream b, #stream i, #stream script").length]),
    [undefined, 0]);

  // Filter by topic, then by data; clearing it shows every row again.
  await broker.publish({ topic: "orders.eu", data: { note: "needle-42" } });
  await eventually(async () => assert.ok((await eventRows(page)).some((r) => r.data.includes("needle-42"))));
  await page.fill("#filter", "orders.us");
  await eventually(async () => {
    const all = await eventRows(page);
    assert.ok(all.some((r) => r.visible) && all.filter((r) => r.visible).every((r) => r.topic === "orders.us"));
    assert.ok(all.some((r) => !r.visible && r.topic === "orders.eu"), "orders.eu rows hidden");
  });
  await page.fill("#filter", "NEEDLE-42");
  await eventually(async () => {
    const visible = (await eventRows(page)).filter((r) => r.visible);
    assert.deepEqual(visible.map((r) => r.data), ['{"note":"needle-42"}']);
  });
  await page.fill("#filter", "");
  await eventually(async () => assert.ok((await eventRows(page)).every((r) => r.visible)));

  // Pause: events keep arriving (counted) but no row is added; resume shows them.
  await page.click("#pause");
  assert.equal(await page.getAttribute("#pause", "aria-pressed"), "true");
  const countBefore = (await eventRows(page)).length;
  await broker.publish([0, 1, 2].map((n) => ({ topic: "orders.us", data: { phase: "paused", n } })));
  await eventually(async () => assert.match(await page.textContent("#stream-info"), /paused, 3 new/));
  const whilePaused = await eventRows(page);
  assert.equal(whilePaused.length, countBefore, "no row added while paused");
  assert.ok(!whilePaused.some((r) => r.data.includes("paused")));
  await page.click("#pause");
  await eventually(async () => {
    const top = (await eventRows(page)).slice(0, 3).map((r) => r.data);
    assert.deepEqual(top, [2, 1, 0].map((n) => JSON.stringify({ phase: "paused", n })), "resumed rows, newest first");
  });

  // Unsubscribing from the exact topic shows in the list; the page still receives
  // orders.eu through orders.>, and the topics table says so.
  await page.click('#subs li[data-pattern="orders.eu"] button');
  await eventually(async () => {
    assert.equal(await page.$('#subs li[data-pattern="orders.eu"]'), null);
    assert.equal((await topicRow(page, "orders.eu"))?.subscribers, "1");
  });
  await page.click('#subs li[data-pattern="orders.>"] button');
  await eventually(async () => assert.equal((await topicRow(page, "orders.eu"))?.subscribers, "0"));

  assertNoProblems(dash);
});

test("lagged and gap notices when the connection falls behind", { timeout: TEST_TIMEOUT }, async () => {
  // A 1 KiB outbound queue holds about one of these events: a burst overflows it.
  const broker = await herald({ env: { HERALD_SESSION__QUEUE_MAX_BYTES: "1024" } });
  const dash = await dashboard(broker);
  const { page } = dash;
  await expectState(page, "open");
  await subscribe(page, "flood");

  const blob = "x".repeat(600);
  for (let round = 0; round < 50 && (await notices(page, "lagged")).length === 0; round++) {
    await broker.publish(Array.from({ length: 200 }, (_, i) => ({ topic: "flood", data: { round, i, blob } })));
    await sleep(200);
  }
  await eventually(async () => assert.ok((await notices(page, "lagged")).length > 0, "a lagged notice"));
  const lagged = await notices(page, "lagged");
  assert.match(lagged[0], /Dropped [1-9]\d* events?/);

  // The next event that gets through has a seq past the dropped ones: a gap.
  await broker.publish({ topic: "flood", data: { last: true } });
  await eventually(async () => {
    const gaps = await notices(page, "gap");
    assert.ok(gaps.length > 0, "a gap notice");
    assert.match(gaps[0], /Missed [1-9]\d* events? on flood \(expected seq \d+, got \d+\)/);
  });
  await eventually(async () => assert.equal((await eventRows(page))[0].data, '{"last":true}'));
  assertNoProblems(dash);
});

test("a broker restart shows the close, the reconnect and a reset notice", { timeout: TEST_TIMEOUT }, async () => {
  const port = await freePort();
  let broker = await herald({ port });
  const dash = await dashboard(broker);
  const { page } = dash;
  await expectState(page, "open");
  const epoch = await page.getAttribute("#epoch", "title");
  await subscribe(page, "orders.>");
  await broker.publish({ topic: "orders.eu", data: { before: "restart" } });
  await eventually(async () => assert.equal((await eventRows(page)).length, 1));

  // While the broker goes down and is down, the browser itself logs the topics polls
  // and WebSocket attempts that fail.
  dash.allow(/net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|EMPTY_RESPONSE)|WebSocket connection to .* failed/);
  await broker.stop();
  await eventually(async () => {
    const closes = await notices(page, "close");
    assert.ok(closes.some((t) => /Connection closed: 1001 \(broker going away\).*reconnecting in/.test(t)), `close notices: ${closes}`);
  });
  assert.notEqual(await page.getAttribute("#state", "data-state"), "open");

  broker = await herald({ port });
  await expectState(page, "open");
  await eventually(async () => assert.notEqual(await page.getAttribute("#epoch", "title"), epoch, "new epoch shown"));
  // The subscription resumed with the old epoch: the broker answers with a reset.
  await eventually(async () => {
    const resets = await notices(page, "reset");
    assert.ok(resets.some((t) => t.includes("Reset orders.eu: epoch_changed")), `reset notices: ${resets}`);
  });
  assert.ok((await notices(page, "open")).some((t) => t.includes("restarted")), "reconnect notice");

  // New history: seq starts at 1 again, and no gap is claimed for it.
  await broker.publish({ topic: "orders.eu", data: { after: "restart" } });
  await eventually(async () => {
    const [top] = await eventRows(page);
    assert.deepEqual([top.topic, top.seq, top.data], ["orders.eu", 1, '{"after":"restart"}']);
  });
  assert.deepEqual(await notices(page, "gap"), []);
  assertNoProblems(dash);
});

test("behind a proxy that refuses upgrades the dashboard streams over Server-Sent Events", { timeout: TEST_TIMEOUT }, async () => {
  const broker = await herald();
  const proxy = await new UpgradeRefusingProxy(broker.port).listen();
  cleanup(() => proxy.close());
  const dash = await openDashboard(browser(), `${proxy.http}/`);
  cleanup(() => dash.close());
  dash.allow(/WebSocket connection to .* failed: Error during WebSocket handshake: Unexpected response code: 403/);
  const { page } = dash;
  await expectState(page, "open");
  await eventually(async () => assert.equal(await page.textContent("#transport"), "SSE"));
  assert.ok((await notices(page, "open")).some((t) => t.includes("Switched to Server-Sent Events")));
  await subscribe(page, "sse.>");
  await broker.publish({ topic: "sse.a", data: { over: "sse" } });
  await eventually(async () => {
    const [top] = await eventRows(page);
    assert.deepEqual([top?.topic, top?.seq, top?.data], ["sse.a", 1, '{"over":"sse"}']);
  });
  // A second pattern reopens the stream; the first one loses nothing meanwhile.
  await subscribe(page, "other.*");
  await broker.publish([{ topic: "sse.a", data: 2 }, { topic: "other.x", data: 3 }]);
  await eventually(async () => assert.equal((await eventRows(page)).length, 3));
  assert.deepEqual(await notices(page, "gap"), []);
  assert.equal(proxy.upgrades, 2, "no upgrade after the two refused ones (the next probe is a minute away)");
  assertNoProblems(dash);

  // ?transport=sse asks for it directly, without trying WebSocket first.
  const direct = await dashboard(broker);
  await direct.page.goto(`${broker.url}?transport=sse`);
  await expectState(direct.page, "open");
  assert.equal(await direct.page.textContent("#transport"), "SSE");
  assert.deepEqual(await notices(direct.page, "close"), []);
  assertNoProblems(direct);
});

test("a broker with auth asks for a token and connects with it", { timeout: TEST_TIMEOUT }, async () => {
  const secret = "dashboard-test-secret-0123456789abcdef";
  const broker = await herald({ env: { HERALD_AUTH__MODE: "jwt", HERALD_AUTH__JWT_SECRET: secret } });
  const dash = await dashboard(broker);
  const { page } = dash;
  // The page probes api/topics without a token: Chromium logs the 401 itself.
  dash.allow(/status of 401 \(Unauthorized\)/);

  await expectState(page, "unauthorized");
  await page.waitForSelector("#auth:not([hidden]) #token");

  const exp = Math.floor(Date.now() / 1000) + 600;
  const claims = { sub: "dashboard-test", exp, herald: { subscribe: [">"], publish: [">"] } };
  // A token signed with another key is refused; the page says so and stays put.
  await page.fill("#token", hs256("not-the-secret-not-the-secret-xxxx", claims));
  await page.click("#auth button[type=submit]");
  await eventually(async () => assert.match(await page.textContent("#auth-message"), /refused the token: invalid credentials/));
  assert.equal(await page.getAttribute("#state", "data-state"), "unauthorized");

  const token = hs256(secret, claims);
  await page.fill("#token", token);
  await page.click("#auth button[type=submit]");
  await expectState(page, "open");
  assert.ok(await page.$eval("#auth", (f) => f.hidden), "token form hidden once connected");

  await subscribe(page, "chat.>");
  await broker.publish({ topic: "chat.room1", data: { text: "hello" } }, { token });
  await eventually(async () => {
    const [row] = await eventRows(page);
    assert.deepEqual([row?.topic, row?.data], ["chat.room1", '{"text":"hello"}']);
  });
  // The topics poll sends the token too.
  await eventually(async () => assert.equal((await topicRow(page, "chat.room1"))?.seq, "1"));

  // The WebSocket used a one-time ticket; the token is in no URL and no log line.
  assert.ok(broker.logs.some((l) => l.includes("ticket issued")), "a ticket was issued");
  assert.ok(!page.url().includes(token.split(".")[2]));
  const signature = token.split(".")[2];
  assert.ok(!broker.logs.some((l) => l.includes(signature)), "the token never reaches the broker's logs");

  // The token lives in this tab's sessionStorage: a reload connects without asking.
  await page.reload();
  await expectState(page, "open");
  assert.ok(await page.$eval("#auth", (f) => f.hidden));
  assertNoProblems(dash);
});

test("with server.admin_listen the page streams events and says where the topic list is", { timeout: TEST_TIMEOUT }, async () => {
  const adminPort = await freePort();
  const broker = await herald({
    env: { HERALD_SERVER__ADMIN_LISTEN: `127.0.0.1:${adminPort}` },
    readyUrl: `http://127.0.0.1:${adminPort}/readyz`,
  });
  const dash = await dashboard(broker);
  const { page } = dash;
  // The one probe of api/topics on this port: Chromium logs the 404 itself.
  dash.allow(/status of 404 \(Not Found\)/);

  await expectState(page, "open");
  await eventually(async () => assert.match(await page.textContent("#topics-status"), /admin address \(server\.admin_listen\)/));
  // The event stream does not need the topic list.
  await subscribe(page, "orders.*");
  await broker.publish([{ topic: "orders.eu", data: { id: 1 } }]);
  await eventually(async () => assert.deepEqual((await eventRows(page)).map((r) => r.topic), ["orders.eu"]));
  // It stopped polling: no request for api/topics once the page knows (the access
  // log has one line per request).
  const probes = () => broker.logs.filter((line) => line.includes("path=/api/topics")).length;
  const before = probes();
  assert.ok(before >= 1, "the page asked once");
  await sleep(2_500);
  assert.equal(probes(), before, "no polling after a 404");
  assertNoProblems(dash);
});

test("screenshot of a busy dashboard", { timeout: TEST_TIMEOUT }, async () => {
  const update = process.env.HERALD_UPDATE_SCREENSHOT === "1";
  const broker = await herald();
  const dash = await dashboard(broker);
  const { page } = dash;
  await expectState(page, "open");
  await subscribe(page, ">");
  await subscribe(page, "orders.eu", 20);
  await subscribe(page, "metrics.api.latency");

  // Several topics at different, wandering rates, with realistic payloads, published
  // in the background until the screenshots are taken.
  const customers = ["c_1932", "c_2210", "c_0871", "c_3345", "c_1207"];
  const routes = ["/api/checkout", "/api/cart", "/api/search", "/api/login"];
  let n = 0;
  const pick = (list) => list[n % list.length];
  const money = (min, max) => Math.round(100 * (min + (max - min) * Math.random())) / 100;
  const order = (topic, base, currency) => () => {
    const id = `ord_${(base + n).toString(16)}`;
    return { topic, key: id, data: { order_id: id, customer: pick(customers), amount: money(10, 140), currency, items: 1 + (n % 4) } };
  };
  const topics = [
    { rate: 7, wobble: 4, make: order("orders.eu", 0x8f3a21, "EUR") },
    { rate: 4, wobble: 2, make: order("orders.us", 0x5c1d40, "USD") },
    { rate: 1.2, wobble: 1, make: order("orders.apac", 0x21b7e0, "JPY") },
    { rate: 12, wobble: 5, make: () => ({ topic: "metrics.api.latency", data: { route: pick(routes), p50_ms: Math.round(80 + 60 * Math.random()) / 10, p99_ms: Math.round(600 + 500 * Math.random()) / 10, count: 90 + (n % 60) } }) },
    { rate: 2, wobble: 1.5, make: () => ({ topic: "payments.captured", key: `pay_${1000 + n}`, data: { payment_id: `pay_${1000 + n}`, amount: money(20, 100), method: n % 3 ? "card" : "sepa" } }) },
    { rate: 0.8, wobble: 0.6, make: () => ({ topic: "users.signup", key: `u_${5000 + n}`, data: { user_id: `u_${5000 + n}`, plan: n % 2 ? "pro" : "free", country: ["DE", "US", "FR", "JP"][n % 4] } }) },
    { rate: 0.5, wobble: 0.4, make: () => ({ topic: "inventory.sku-1042", data: { sku: "sku-1042", warehouse: pick(["FRA1", "AMS2"]), on_hand: 40 + (n % 17) } }) },
    { rate: 0.3, wobble: 0.3, make: () => ({ topic: "chat.support", data: { from: pick(["ana", "bo", "chen"]), text: pick(["hi, my order is late", "checking now", "thanks!"]) } }) },
  ];
  let running = true;
  const traffic = (async () => {
    const start = Date.now();
    const debt = topics.map(() => 0);
    while (running) {
      const t = (Date.now() - start) / 1000;
      const batch = [];
      topics.forEach((topic, i) => {
        debt[i] += Math.max(0, topic.rate + topic.wobble * Math.sin(t / (4 + i) + i)) * 0.2;
        for (; debt[i] >= 1; debt[i]--, n++) batch.push(topic.make());
      });
      if (batch.length) await broker.publish(batch);
      await sleep(200);
    }
  })();
  try {
    await sleep(update ? 45_000 : 8_000);
    await eventually(async () => {
      const { legend } = await chart(page);
      for (const topic of ["orders.eu", "orders.us", "metrics.api.latency"]) assert.ok(legend.includes(topic), `legend: ${legend}`);
      const shown = new Set((await eventRows(page)).map((r) => r.topic));
      for (const topic of ["orders.eu", "orders.us", "metrics.api.latency", "payments.captured"]) assert.ok(shown.has(topic), topic);
    });
    const file = artifactPath("dashboard.png");
    await page.screenshot({ path: file });
    if (update) {
      const docs = path.join(ROOT, "docs/images");
      mkdirSync(docs, { recursive: true });
      copyFileSync(file, path.join(docs, "dashboard.png"));
    }
    // The dark theme, for a look (the chart takes its colours from the theme).
    await page.emulateMedia({ colorScheme: "dark" });
    const { draws } = await chart(page);
    await eventually(async () => assert.ok((await chart(page)).draws > draws + 1));
    await page.screenshot({ path: artifactPath("dashboard-dark.png") });
  } finally {
    running = false;
    await traffic;
  }
  assertNoProblems(dash);
});
