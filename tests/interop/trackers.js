"use strict";
// WebTorrent tracker discovery against tooldb-node (tests/trackers.rs).
// usage: node trackers.js <command> [--option value]...
//   tracker                 a local websocket tracker (npm bittorrent-tracker's
//                           server) on 127.0.0.1; prints {"port":N}, runs until
//                           stdin closes
//   find-raw                joins as the hybrid adapter's findServer(--name) does,
//                           by hand, on --tracker; checks the offer (fields, the
//                           signature of host by pubKey), dials what it names with
//                           a signed Tool Db ping, puts --key/--value and gets it
//                           back; prints what it saw
//   tooldb-client           a real tool-db client (P-256 user) whose network
//                           adapter is ./tracker-adapter.js finding --name on
//                           --tracker; puts --key/--value, then a second fresh
//                           client finds the server the same way and gets it
//   browser                 the same in headless Chromium: the vendored tool-db
//                           browser bundle (--bundle) and ./tracker-adapter.js on a
//                           page served from 127.0.0.1, a WebCrypto P-256 user;
//                           finds --name, gets --read-key (written by the test
//                           beforehand), puts --key/--value
// Every wait has a deadline (--timeout ms, default 20000). Prints one JSON line.
const http = require("http");
const path = require("path");
const WebSocket = require("ws");
const { Wallet, verifyMessage } = require("ethers");
const { sha256 } = require("tool-db");
const { ToolDb, EcdsaUser, MemoryStore, log, sleep, withDeadline, waitUntil } = require("./lib");
const TrackerAdapter = require("./tracker-adapter");

function parseArgs(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) out[a.slice(2)] = argv[++i];
      else out[a.slice(2)] = true;
    } else out._.push(a);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const TIMEOUT = Number(args.timeout || 20000);
const TOPIC = args.topic || "tool-db-default";

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function tracker() {
  const { default: Server } = await import("bittorrent-tracker/server");
  const server = new Server({ udp: false, http: false, ws: true, stats: false });
  server.on("warning", (e) => log(`tracker warning: ${e.message}`));
  server.on("error", (e) => log(`tracker error: ${e.message}`));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  print({ port: server.ws.address().port });
  process.stdin.resume();
  process.stdin.on("end", () => server.close(() => process.exit(0)));
}

function textRandom(n) {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(Math.random() * abc.length)];
  return s;
}

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/** Resolves with the first message matching pred, or null at the deadline. */
function next(ws, pred, ms = TIMEOUT) {
  return withDeadline(
    new Promise((resolve) => {
      const on = (data) => {
        let m;
        try {
          m = JSON.parse(String(data));
        } catch (e) {
          return;
        }
        if (pred(m)) {
          ws.off("message", on);
          resolve(m);
        }
      };
      ws.on("message", on);
    }),
    ms,
    null
  );
}

async function findRaw() {
  const wallet = Wallet.createRandom();
  const peerId = wallet.address.slice(-20);
  const infoHash = sha256(args.name).slice(-20);
  const t = await open(args.tracker);
  const offered = next(t, (m) => m.offer && m.offer_id && m.info_hash === infoHash);
  t.send(JSON.stringify({ action: "announce", info_hash: infoHash, peer_id: peerId, numwant: 1 }));
  const m = await offered;
  t.close();
  if (!m) return print({ ok: false, step: "no offer from the tracker" });
  const server = JSON.parse(m.offer.sdp);
  let signatureOk = false;
  try {
    signatureOk = verifyMessage(server.host, server.signature) === server.pubKey;
  } catch (e) {
    /* a P-256 node's signature is not an Ethereum one */
  }
  const url = server.ssl ? "wss://" + server.host : "ws://" + server.host + ":" + server.port;
  const ws = await open(url);
  const timestamp = Date.now();
  const host = "127.0.0.1";
  const port = 8080;
  const sig = wallet.signMessageSync(sha256(`${TOPIC}-${timestamp}-${host}:${port}`));
  const peer = { topic: TOPIC, timestamp, host, port, address: wallet.address, sig };
  const pingId = textRandom(10);
  const ponged = next(ws, (x) => x.type === "pong" && x.id === pingId);
  ws.send(
    JSON.stringify({ type: "ping", id: pingId, to: [peerId], clientId: peerId, isServer: false, peer })
  );
  const pong = await ponged;
  if (!pong) return print({ ok: false, step: "no pong", server });
  const v = args.value;
  const rec = { k: args.key, a: wallet.address, n: 0, t: Date.now(), c: null, v };
  rec.h = sha256(JSON.stringify(v) + rec.a + rec.t + rec.n);
  rec.s = wallet.signMessageSync(rec.h);
  ws.send(JSON.stringify({ type: "put", id: textRandom(10), to: [peerId], data: rec }));
  let got = null;
  const end = Date.now() + TIMEOUT;
  while (!got && Date.now() < end) {
    const id = textRandom(10);
    const answer = next(ws, (x) => x.type === "put" && x.id === id, 1000);
    ws.send(JSON.stringify({ type: "get", id, to: [peerId], key: args.key }));
    const a = await answer;
    if (a && a.data && a.data.h === rec.h) got = a.data;
  }
  ws.close();
  print({
    ok: !!got,
    server,
    url,
    signatureOk,
    offerPeerId: m.peer_id,
    pongClientId: pong.clientId,
    pongServers: pong.servers,
    got,
  });
}

async function toolDbClient(label) {
  const db = new ToolDb({
    peers: [],
    server: false,
    topic: TOPIC,
    networkAdapter: TrackerAdapter,
    storageAdapter: MemoryStore,
    userAdapter: EcdsaUser,
    storageName: `tracker-${label}`,
    trackers: [args.tracker],
    findServers: [args.name],
  });
  await withDeadline(db.ready, TIMEOUT, null);
  const connected = !!(await waitUntil(
    () => Object.keys(db.network.clientToSend).some((id) => db.network.isConnected(id)),
    TIMEOUT
  ));
  return { db, connected };
}

async function toolDbClients() {
  const writer = await toolDbClient("writer");
  if (!writer.connected) return print({ ok: false, step: "writer found no server" });
  const offer = writer.db.network.offers[0];
  const put = await withDeadline(writer.db.putData(args.key, args.value, false), TIMEOUT, null);
  if (!put) return print({ ok: false, step: "put", offer });
  const reader = await toolDbClient("reader");
  if (!reader.connected) return print({ ok: false, step: "reader found no server", offer });
  let got = null;
  const end = Date.now() + TIMEOUT;
  while (got === null && Date.now() < end) {
    got = await withDeadline(reader.db.getData(args.key, false, 2000), 3000, null);
    if (got === null) await sleep(100);
  }
  writer.db.network.close();
  reader.db.network.close();
  print({ ok: got === args.value, offer, got, writer: writer.db.userAccount.getAddress() });
}

async function browser() {
  const { chromium } = require("playwright-core");
  const page0 = "<!doctype html><meta charset=utf-8><title>tracker finder</title><body>finder</body>";
  const web = http.createServer((req, res) => {
    if (req.url === "/favicon.ico") {
      res.writeHead(204);
      return res.end();
    }
    res.writeHead(200, { "content-type": "text/html" });
    res.end(page0);
  });
  await new Promise((r) => web.listen(0, "127.0.0.1", r));
  const pageUrl = `http://127.0.0.1:${web.address().port}/`;
  const b = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  const errors = [];
  let result = { ok: false };
  try {
    const page = await b.newPage();
    page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()}`);
    });
    await page.goto(pageUrl, { waitUntil: "load" });
    await page.addScriptTag({ path: args.bundle });
    await page.addScriptTag({ path: path.join(__dirname, "tracker-adapter.js") });
    result = await page.evaluate(
      async ({ tracker, name, topic, readKey, key, value, timeout }) => {
        const T = window.tooldb;
        const ALG = { name: "ECDSA", namedCurve: "P-256" };
        const SIG = { name: "ECDSA", hash: { name: "SHA-256" } };
        const bytes = (s) => new Uint8Array(T.stringToArrayBuffer(s));
        const keys = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
        const jwk = await crypto.subtle.exportKey("jwk", keys.publicKey);
        const address = jwk.x + jwk.y;
        class User extends T.ToolDbUserAdapter {
          anonUser() {
            return Promise.resolve();
          }
          signData(data) {
            return crypto.subtle.sign(SIG, keys.privateKey, bytes(data)).then(T.arrayBufferToHex);
          }
          async verifySignature(m) {
            if (!m.h || !m.a || !m.s) return false;
            try {
              const k = await crypto.subtle.importKey(
                "jwk",
                { kty: "EC", crv: "P-256", x: m.a.slice(0, 43), y: m.a.slice(43), ext: true },
                ALG,
                true,
                ["verify"]
              );
              return await crypto.subtle.verify(SIG, k, new Uint8Array(T.hexToArrayBuffer(m.s)), bytes(m.h));
            } catch (e) {
              return false;
            }
          }
          getAddress() {
            return address;
          }
          getUsername() {
            return "tracker-finder";
          }
        }
        class Store extends T.ToolDbStorageAdapter {
          constructor(db, n) {
            super(db, n);
            this.map = new Map();
          }
          put(k, d) {
            this.map.set(k, d);
            return Promise.resolve(true);
          }
          get(k) {
            return this.map.has(k) ? Promise.resolve(this.map.get(k)) : Promise.reject(new Error("not found"));
          }
          query(k) {
            return Promise.resolve([...this.map.keys()].filter((x) => x.startsWith(k)).sort());
          }
        }
        const db = new T.ToolDb({
          peers: [],
          server: false,
          topic,
          networkAdapter: window.ToolDbTrackerAdapter,
          storageAdapter: Store,
          userAdapter: User,
          storageName: "tracker-finder",
          trackers: [tracker],
          findServers: [name],
        });
        const end = Date.now() + timeout;
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        const connected = () =>
          Object.keys(db.network.clientToSend).some((id) => db.network.isConnected(id));
        while (!connected() && Date.now() < end) await sleep(50);
        if (!connected()) return { ok: false, step: "no server found" };
        const offer = db.network.offers[0];
        let read = null;
        while (read === null && Date.now() < end) {
          read = await db.getData(readKey, false, 2000);
          if (read === null) await sleep(100);
        }
        const put = await db.putData(key, value, false);
        await sleep(300);
        return { ok: read !== null && !!put, offer, read, put: !!put, address, origin: location.origin };
      },
      {
        tracker: args.tracker,
        name: args.name,
        topic: TOPIC,
        readKey: args["read-key"],
        key: args.key,
        value: args.value,
        timeout: TIMEOUT,
      }
    );
  } catch (e) {
    errors.push(`harness: ${e.message}`);
  } finally {
    await b.close();
    web.close();
  }
  print({ ...result, ok: result.ok && errors.length === 0, errors });
}

const commands = {
  tracker,
  "find-raw": findRaw,
  "tooldb-client": toolDbClients,
  browser,
};
const cmd = commands[args._[0]];
if (!cmd) {
  process.stderr.write(`trackers.js: unknown command ${args._[0]}\n`);
  process.exit(2);
}
cmd().then(
  () => {
    if (args._[0] !== "tracker") process.exit(0);
  },
  (e) => {
    print({ ok: false, error: String((e && e.stack) || e) });
    process.exit(1);
  }
);
