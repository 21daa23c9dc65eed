"use strict";
// Loads a node's status page in headless Chromium (Debian's /usr/bin/chromium
// driven by playwright-core), fails on any console or page error, checks that
// it shows the node's address and a connected server, and drives the page's
// tool-db panel: put a value, read it back, subscribe to the key, and see an
// update that `tooldb-node put` (TOOLDB_BIN, through PEER, another server of
// the network) makes.
// usage: node status-page.js URL ADDRESS PEER_ADDRESS KEY VALUE SCREENSHOT
// env: TOOLDB_BIN (the tooldb-node binary), TOOLDB_PEER (HOST:PORT to put through)
// prints one JSON line: {"ok":true,"screenshot":PATH} or {"ok":false,"errors":[...]}
const { chromium } = require("playwright-core");
const { execFileSync } = require("child_process");

const [url, address, peerAddress, key, value, shot] = process.argv.slice(2);
const TIMEOUT = 20000;

(async () => {
  const errors = [];
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  let ok = false;
  let step = "launch";
  let page = null;
  try {
    page = await browser.newPage({ viewport: { width: 412, height: 915 } });
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()}`);
    });
    if (process.env.STATUS_PAGE_DEBUG) {
      page.on("console", (m) => console.error(`console.${m.type()}: ${m.text()}`));
      page.on("websocket", (ws) => {
        ws.on("framesent", (f) => console.error(`sent: ${String(f.payload).slice(0, 300)}`));
        ws.on("framereceived", (f) => console.error(`received: ${String(f.payload).slice(0, 300)}`));
      });
    }
    page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
    page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (u.host !== new URL(url).host) errors.push(`request to elsewhere: ${r.url()}`);
    });
    step = "load";
    await page.goto(url, { waitUntil: "load" });
    step = "address shown";
    await page.waitForFunction((a) => document.getElementById("address").textContent === a, address, { timeout: TIMEOUT });
    step = "connected server shown";
    await page.waitForFunction(
      (p) => {
        const t = document.getElementById("servers").textContent;
        return t.includes(p) && t.includes("connected");
      },
      peerAddress,
      { timeout: TIMEOUT }
    );
    step = "panel connected";
    await page.waitForFunction(() => window.__panelConnected === true, null, { timeout: TIMEOUT });
    step = "put";
    await page.fill("#key", key);
    await page.fill("#value", value);
    await page.click("#put");
    await page.waitForFunction((k) => window.__lastPut && window.__lastPut.key === k, key, { timeout: TIMEOUT });
    // Read it back through the panel's client.
    const outHas = (text) =>
      page.waitForFunction((t) => document.getElementById("out").textContent.includes(t), text, { timeout: TIMEOUT });
    step = "get";
    await page.click("#get");
    await outHas(`get ${key} → ${JSON.stringify(value)}`);
    // Subscribe to a second key, then another writer (our CLI, through the
    // other server) puts it: the update reaches the page. (A second key, so
    // the first one keeps the page's value for the caller to read.)
    const subKey = `${key}-sub`;
    step = "subscribe";
    await page.fill("#key", subKey);
    await page.click("#sub");
    await outHas(`subscribed to ${subKey}`);
    step = "update from the CLI";
    const update = `${value} (from the CLI)`;
    // P-256: the panel verifies as @tool-db/ecdsa-user does, which knows no secp256k1.
    const put = ["put", subKey, update, "--key-scheme", "p256", "--peer", process.env.TOOLDB_PEER, "--no-lan"];
    execFileSync(process.env.TOOLDB_BIN, put, {
      stdio: ["ignore", "ignore", "inherit"],
      timeout: TIMEOUT,
    });
    await outHas(`update ${subKey} → ${JSON.stringify(update)}`);
    // The page's own client counter shows at least the panel.
    step = "client count";
    await page.waitForFunction(() => Number(document.getElementById("nclients").textContent) >= 1, null, { timeout: TIMEOUT });
    await page.screenshot({ path: shot, fullPage: true });
    ok = errors.length === 0;
  } catch (e) {
    errors.push(`test, at ${step}: ${e.message}`);
    if (page) {
      const out = await page.evaluate(() => document.getElementById("out").textContent).catch(() => "");
      errors.push(`panel output: ${out}`);
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify({ ok, screenshot: shot, errors }));
  process.exit(ok ? 0 : 1);
})();
