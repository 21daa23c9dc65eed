"use strict";
// Loads a node's status page in headless Chromium (Debian's /usr/bin/chromium
// driven by playwright-core), fails on any console or page error, checks that
// it shows the node's address and a connected server, and puts a value from
// the page's tool-db panel.
// usage: node status-page.js URL ADDRESS PEER_ADDRESS KEY VALUE SCREENSHOT
// prints one JSON line: {"ok":true,"screenshot":PATH} or {"ok":false,"errors":[...]}
const { chromium } = require("playwright-core");

const [url, address, peerAddress, key, value, shot] = process.argv.slice(2);
const TIMEOUT = 20000;

(async () => {
  const errors = [];
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  let ok = false;
  try {
    const page = await browser.newPage({ viewport: { width: 412, height: 915 } });
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
    page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (u.host !== new URL(url).host) errors.push(`request to elsewhere: ${r.url()}`);
    });
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction((a) => document.getElementById("address").textContent === a, address, { timeout: TIMEOUT });
    await page.waitForFunction(
      (p) => {
        const t = document.getElementById("servers").textContent;
        return t.includes(p) && t.includes("connected");
      },
      peerAddress,
      { timeout: TIMEOUT }
    );
    await page.waitForFunction(() => window.__panelConnected === true, null, { timeout: TIMEOUT });
    await page.fill("#key", key);
    await page.fill("#value", value);
    await page.click("#put");
    await page.waitForFunction((k) => window.__lastPut && window.__lastPut.key === k, key, { timeout: TIMEOUT });
    // The page's own client counter shows at least the panel.
    await page.waitForFunction(() => Number(document.getElementById("nclients").textContent) >= 1, null, { timeout: TIMEOUT });
    await page.screenshot({ path: shot, fullPage: true });
    ok = errors.length === 0;
  } catch (e) {
    errors.push(`test: ${e.message}`);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify({ ok, screenshot: shot, errors }));
  process.exit(ok ? 0 : 1);
})();
