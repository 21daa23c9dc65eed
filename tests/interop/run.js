#!/usr/bin/env node
"use strict";
// Interop harness: real tool-db 2.6.x clients (and a real JS Tool Db server)
// against a Tool Db server given with --server ws://127.0.0.1:PORT.
//
//   node tests/interop/run.js <scenario> --server ws://127.0.0.1:PORT [options]
//
// Prints exactly ONE line of JSON on stdout (the observed results), logs to
// stderr. Exit 0 when the scenario ran (whatever it observed), 2 on harness errors
// (bad arguments, exceptions in the harness itself). Every wait has a deadline
// (--timeout ms, default 10000), so a broken server yields a timeout result.
// See README.md for scenarios and output shapes.

// Libraries may print with console.log: keep stdout for the one JSON line.
const realStdoutWrite = process.stdout.write.bind(process.stdout);
console.log = console.error;
console.info = console.error;
console.debug = console.error;
console.warn = console.error;

const crypto = require("crypto");
const {
  ToolDb,
  EcdsaUser,
  Web3User,
  MemoryStore,
  WsAdapter,
  log,
  sleep,
  withDeadline,
  waitUntil,
  parseWsUrl,
  makeTmpDir,
} = require("./lib");
const { MapCrdt, textRandom, proofOfWork } = require("tool-db");
const LeveldbStore = require("@tool-db/leveldb-store").default;

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
      else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) out[a.slice(2)] = argv[++i];
      else out[a.slice(2)] = true;
    } else out._.push(a);
  }
  return out;
}

const USAGE = `usage: node run.js <scenario> --server ws://127.0.0.1:PORT [options]
scenarios: put-get subscribe user-namespace tampered crdt-map query js-server js-server-only raw-observe
options:
  --timeout MS      deadline of every wait (default 10000)
  --key K           key (default random)          --value V   value, JSON or plain text (default random)
  --prefix P        query prefix (default random) --count N   keys to put for query (default 3)
  --updates N       puts after subscribe (default 2)
  --js-port P       port of the JS Tool Db server (js-server, js-server-only)
  --topic T         Tool Db topic (default tool-db-default)
  --user ecdsa|web3 user adapter of the harness clients (default ecdsa)
  --frames          include every raw frame in the JSON output
  --keep-dir        keep the JS server's leveldb temp dir (removed at exit by default)
  --quiet           do not log frames to stderr       --debug   tool-db debug logging`;

const args = parseArgs(process.argv.slice(2));
const scenario = args._[0];
const TIMEOUT = Number(args.timeout || 10000);
const TOPIC = typeof args.topic === "string" ? args.topic : "tool-db-default";
const SETTLE = 300; // ms to let a fire-and-forget frame (put has no ack) reach the server

function fail(msg) {
  process.stderr.write(`run.js: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let printed = false;
function printResult(obj) {
  if (printed) return;
  printed = true;
  realStdoutWrite(JSON.stringify(obj) + "\n");
}

// ---------------------------------------------------------------- frames
const t0 = Date.now();
const frames = [];
function frameLogger(label) {
  return (dir, text, info) => {
    const entry = { client: label, dir, at_ms: Date.now() - t0, peer: info.clientId || null };
    if (dir === "close") {
      entry.code = info.code;
      entry.reason = info.reason;
    } else {
      try {
        entry.frame = JSON.parse(text);
      } catch (e) {
        entry.text = text;
      }
    }
    frames.push(entry);
    if (!args.quiet) {
      const s = dir === "close" ? `close code=${info.code} ${info.reason || ""}` : text;
      log(`[${label} ${dir}${info.url ? " " + info.url : ""}] ${s.length > 600 ? s.slice(0, 600) + "..." : s}`);
    }
  };
}

// ---------------------------------------------------------------- clients
const instances = [];
const timeouts = [];
const tmpDirs = [];

function parseValue(v) {
  if (v === undefined || v === true) return undefined;
  try {
    return JSON.parse(v);
  } catch (e) {
    return v;
  }
}

function randomValue() {
  return {
    n: crypto.randomInt(1, 1e9),
    s: "interop ü ☃ \"q\" " + textRandom(6),
    arr: [1, 2.5, true, null, { x: "y" }],
  };
}

/**
 * Start a real tool-db client dialling `url`, wait for its keys and for the
 * server's pong (a tool-db client cannot send anything before the remote's
 * ping/pong told it the remote's client id). Returns {db, label, connected}.
 */
async function makeClient(label, url, opts = {}) {
  const userAdapter = (opts.user || args.user) === "web3" ? Web3User : EcdsaUser;
  const db = new ToolDb({
    peers: url ? [parseWsUrl(url)] : [],
    server: false,
    topic: TOPIC,
    networkAdapter: WsAdapter,
    storageAdapter: MemoryStore,
    userAdapter,
    storageName: `client-${label}`,
    debug: !!args.debug,
    maxRetries: 3,
    wait: 500,
    onFrame: frameLogger(label),
  });
  instances.push(db);
  const ready = await withDeadline(db.ready.then(() => true), TIMEOUT, false);
  if (!ready) timeouts.push(`${label}: keys`);
  const connected = !!(await waitUntil(
    () => Object.keys(db.network.clientToSend).some((id) => db.network.isConnected(id)),
    TIMEOUT
  ));
  if (!connected) timeouts.push(`${label}: connect/pong`);
  log(`client ${label} address=${db.userAccount.getAddress()} connected=${connected}`);
  return { db, label, connected, address: db.userAccount.getAddress() };
}

async function closeClient(c) {
  try {
    await c.db.network.close();
  } catch (e) {
    /* ignore */
  }
}

/** getData until a non-null value or the deadline; each try waits up to `per` ms. */
async function getUntil(c, key, { ns = false, per = 2000, deadline = TIMEOUT, retry = true } = {}) {
  const start = Date.now();
  let attempts = 0;
  let got = null;
  while (Date.now() - start < deadline) {
    attempts++;
    const left = deadline - (Date.now() - start);
    got = await withDeadline(c.db.getData(key, ns, Math.max(50, Math.min(per, left))), left + 500, null);
    if (got !== null && got !== undefined) break;
    if (!retry) break;
  }
  if (got === undefined) got = null;
  const elapsed = Date.now() - start;
  if (got === null && retry) timeouts.push(`${c.label}: getData ${key}`);
  return { got, attempts, elapsed_ms: elapsed };
}

/** getCrdt into a fresh MapCrdt until its value is `expected` (or TIMEOUT). */
async function crdtUntil(c, key, expected) {
  const start = Date.now();
  let attempts = 0;
  let doc;
  while (Date.now() - start < TIMEOUT) {
    attempts++;
    doc = new MapCrdt(c.address);
    const left = TIMEOUT - (Date.now() - start);
    await withDeadline(c.db.getCrdt(key, doc, false, Math.max(50, Math.min(2000, left))), left + 500, null);
    if (JSON.stringify(doc.value) === JSON.stringify(expected)) break;
  }
  return { value: doc.value, changes: doc.getChanges().length, attempts };
}

/** Build a record with the real library (toolDbPut) without sending it. */
async function craftRecord(db, key, value, ns = false) {
  const net = db.network;
  const orig = net.sendToAll;
  net.sendToAll = () => {};
  try {
    const msg = await db.putData(key, value, ns);
    return msg.data;
  } finally {
    net.sendToAll = orig;
    if (db.store.map) db.store.map.clear();
  }
}

/** Build a record for any key/author with tool-db's own hashing and the client's signing key. */
async function signRecord(db, { k, a, v, t, c = null }) {
  const author = a || db.userAccount.getAddress();
  const ts = t || Date.now();
  const { hash, nonce } = await proofOfWork(`${JSON.stringify(v)}${author}${ts}`, 0);
  const s = await db.userAccount.signData(hash);
  return { k, a: author, n: nonce, t: ts, h: hash, s, v, c };
}

/** Send a put frame through the client's real adapter (same framing as putData). */
function sendRawPut(db, data, type = "put") {
  db.network.sendToAll({ type, id: textRandom(10), to: [], data });
}

// ---------------------------------------------------------------- JS server
async function startJsServer(port, peerUrl, label = "jsserver") {
  const dir = makeTmpDir("tooldb-js-server-");
  if (!args["keep-dir"]) tmpDirs.push(dir);
  process.chdir(dir); // leveldb-store also creates "_____peer_<storageName>" relative to cwd
  const db = new ToolDb({
    server: true,
    host: "127.0.0.1",
    port: Number(port),
    peers: peerUrl ? [parseWsUrl(peerUrl)] : [],
    topic: TOPIC,
    networkAdapter: WsAdapter,
    storageAdapter: LeveldbStore,
    userAdapter: EcdsaUser,
    storageName: "tooldb-js",
    debug: !!args.debug,
    maxRetries: 5,
    wait: 1000,
    onFrame: frameLogger(label),
  });
  db.addServerFunction("echo", (a) => Promise.resolve(a));
  instances.push(db);
  const listening = await withDeadline(db.network.listening.then(() => true, (e) => String(e)), TIMEOUT, false);
  if (listening !== true) timeouts.push(`${label}: listen (${listening})`);
  const ready = await withDeadline(db.ready.then(() => true), TIMEOUT, false);
  if (!ready) timeouts.push(`${label}: keys`);
  log(`JS server on 127.0.0.1:${port} dir=${dir} address=${db.peerAccount.getAddress()}`);
  return { db, dir, label, listening: listening === true, address: db.peerAccount.getAddress() };
}

// ---------------------------------------------------------------- scenarios
const scenarios = {};

scenarios["put-get"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "interop-" + textRandom(8);
  const value = parseValue(args.value) ?? randomValue();
  const A = await makeClient("A", server);
  const msg = await A.db.putData(key, value);
  await sleep(SETTLE);
  await closeClient(A);
  const B = await makeClient("B", server);
  const r = await getUntil(B, key);
  return { key, put: value, got: r.got, attempts: r.attempts, elapsed_ms: r.elapsed_ms, record: msg.data, connected: { A: A.connected, B: B.connected } };
};

scenarios["get-only"] = async (server) => {
  if (typeof args.key !== "string") fail("get-only needs --key");
  const B = await makeClient("B", server);
  const r = await getUntil(B, args.key);
  return { key: args.key, got: r.got, attempts: r.attempts, elapsed_ms: r.elapsed_ms, connected: { B: B.connected } };
};

scenarios["subscribe"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "sub-" + textRandom(8);
  const n = Number(args.updates || 2);
  const base = parseValue(args.value);
  const values = [];
  for (let i = 0; i < n; i++) values.push(base !== undefined ? (i === 0 ? base : { update: i, base }) : { update: i, r: textRandom(6) });
  const A = await makeClient("A", server);
  const received = [];
  A.db.addKeyListener(key, (rec) => {
    log(`A listener fired: ${JSON.stringify(rec)}`);
    received.push(rec);
  });
  await A.db.subscribeData(key);
  await sleep(SETTLE);
  const B = await makeClient("B", server);
  const sent = [];
  const start = Date.now();
  for (let i = 0; i < n; i++) {
    if (i > 0) await sleep(500); // > tool-db's 100 ms listener debounce
    const m = await B.db.putData(key, values[i]);
    sent.push(m.data);
  }
  // first update: full deadline; the rest: up to 3 s more
  await waitUntil(() => received.length > 0, TIMEOUT);
  if (received.length === 0) timeouts.push("A: first subscription update");
  else await waitUntil(() => received.some((r) => JSON.stringify(r.v) === JSON.stringify(values[n - 1])), Math.min(3000, Math.max(0, TIMEOUT - (Date.now() - start))));
  await sleep(200);
  return {
    key,
    put: values,
    got: received.length ? received[0].v : null,
    received: received.map((r) => r.v),
    received_records: received,
    connected: { A: A.connected, B: B.connected },
  };
};

scenarios["user-namespace"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "ns" + textRandom(8);
  const value = parseValue(args.value) ?? randomValue();
  const A = await makeClient("A", server);
  const fullKey = `:${A.address}.${key}`;
  await A.db.putData(key, value, true);
  await sleep(SETTLE);
  // read back through the server: drop A's local copy first
  A.db.store.map.clear();
  const own = await withDeadline(A.db.getData(key, true, Math.min(2000, TIMEOUT)), TIMEOUT, null);

  // another real user's address
  const other = new EcdsaUser({ logger: () => {}, options: {} });
  await waitUntil(() => other.getAddress(), TIMEOUT);
  const otherAddr = other.getAddress();
  const forgedKey = `:${otherAddr}.${key}f`;
  const forged = await signRecord(A.db, { k: forgedKey, v: { forged: true } }); // a = A, signed by A
  sendRawPut(A.db, forged);
  const forgedKey2 = `:${otherAddr}.${key}g`;
  const forged2 = await signRecord(A.db, { k: forgedKey2, a: otherAddr, v: { forged: 2 } }); // a = other, signed by A
  sendRawPut(A.db, forged2);
  await sleep(SETTLE);
  await closeClient(A);

  const C = await makeClient("C", server);
  const fresh = await getUntil(C, fullKey);
  const gotForged = await getUntil(C, forgedKey, { retry: false, per: Math.min(2000, TIMEOUT) });
  const gotForged2 = await getUntil(C, forgedKey2, { retry: false, per: Math.min(2000, TIMEOUT) });
  return {
    key,
    full_key: fullKey,
    put: value,
    got: own,
    got_fresh: fresh.got,
    forged: { key: forgedKey, record: forged, got: gotForged.got, expect: "AddressMismatch" },
    forged_other_author: { key: forgedKey2, record: forged2, got: gotForged2.got, expect: "InvalidSignature" },
    connected: { A: A.connected, C: C.connected },
  };
};

scenarios["tampered"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "tamp" + textRandom(8);
  const A = await makeClient("A", server);
  // control: a valid record sent the same raw way
  const control = await craftRecord(A.db, key + "ok", { control: textRandom(6) });
  sendRawPut(A.db, control);
  // tampered v, h and s kept
  const rec = await craftRecord(A.db, key, { original: true });
  const tampered = { ...rec, v: { original: false, tampered: true } };
  sendRawPut(A.db, tampered);
  // bad signature (one byte flipped)
  const rec2 = await craftRecord(A.db, key + "sig", { sig: true });
  const flip = (rec2.s.slice(0, 2) === "00" ? "01" : "00") + rec2.s.slice(2);
  const badSig = { ...rec2, s: flip };
  sendRawPut(A.db, badSig);
  // timestamp 60 s in the future, otherwise valid (tool-db allows 30 s)
  const future = await signRecord(A.db, { k: key + "fut", v: { future: true }, t: Date.now() + 60000 });
  sendRawPut(A.db, future);
  await sleep(SETTLE);
  await closeClient(A);

  const B = await makeClient("B", server);
  const ctl = await getUntil(B, key + "ok");
  const one = (k) => getUntil(B, k, { retry: false, per: Math.min(2000, TIMEOUT) }).then((r) => r.got);
  const got = await one(key);
  return {
    key,
    original: rec.v,
    sent: tampered.v,
    got,
    control: { key: key + "ok", put: control.v, got: ctl.got },
    bad_signature: { key: key + "sig", got: await one(key + "sig") },
    future_timestamp: { key: key + "fut", t: future.t, got: await one(key + "fut") },
    records: { tampered, bad_signature: badSig, future_timestamp: future, control },
    connected: { A: A.connected, B: B.connected },
  };
};

scenarios["crdt-map"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "crdt" + textRandom(8);
  const A = await makeClient("A", server);
  const B = await makeClient("B", server);
  const ca = new MapCrdt(A.address);
  ca.SET("fromA", "a-value");
  ca.SET("shared", "A");
  const ma = await A.db.putCrdt(key, ca);
  await sleep(SETTLE);
  const cb = new MapCrdt(B.address);
  cb.SET("fromB", 2);
  cb.SET("shared", "B");
  cb.DEL("fromB");
  cb.SET("fromB", 3);
  const mb = await B.db.putCrdt(key, cb);
  await sleep(SETTLE);
  const expected = new MapCrdt("x", [...ca.getChanges(), ...cb.getChanges()]).value;

  const ra = await crdtUntil(A, key, expected);
  const rb = await crdtUntil(B, key, expected);
  return {
    key,
    put_a: ca.value,
    put_b: cb.value,
    expected,
    got_a: ra.value,
    got_b: rb.value,
    changes_a: ra.changes,
    changes_b: rb.changes,
    attempts: [ra.attempts, rb.attempts],
    records: { a: ma.data, b: mb.data },
    connected: { A: A.connected, B: B.connected },
  };
};

scenarios["query"] = async (server) => {
  const prefix = typeof args.prefix === "string" ? args.prefix : "q" + textRandom(6) + "-";
  const n = Number(args.count || 3);
  const A = await makeClient("A", server);
  const put = [];
  for (let i = 0; i < n; i++) {
    const k = `${prefix}${i}`;
    await A.db.putData(k, { i });
    put.push(k);
  }
  const outside = prefix.slice(0, -1) + "~outside"; // shares all but the last char
  await A.db.putData(outside, { outside: true });
  await sleep(SETTLE);
  await closeClient(A);
  const B = await makeClient("B", server);
  const start = Date.now();
  let got = [];
  let attempts = 0;
  while (Date.now() - start < TIMEOUT) {
    attempts++;
    const left = TIMEOUT - (Date.now() - start);
    got = (await withDeadline(B.db.queryKeys(prefix, false, Math.max(50, Math.min(1000, left))), left + 500, [])) || [];
    if (put.every((k) => got.includes(k))) break;
  }
  if (!put.every((k) => got.includes(k))) timeouts.push("B: queryKeys");
  return { prefix, put, outside_key: outside, got: [...got].sort(), attempts, elapsed_ms: Date.now() - start, connected: { A: A.connected, B: B.connected } };
};

scenarios["js-server"] = async (server) => {
  const jsPort = Number(args["js-port"]);
  if (!jsPort) fail("js-server needs --js-port");
  const js = await startJsServer(jsPort, server);
  // wait until the JS server has our server as a peer (its ping answered)
  const peered = !!(await waitUntil(
    () => Object.keys(js.db.network.clientToSend).some((id) => js.db.network.isConnected(id) && js.db.network.isServer(id)),
    TIMEOUT
  ));
  if (!peered) timeouts.push("jsserver: peering with --server (pong with isServer:true)");
  const CJ = await makeClient("CJ", `ws://127.0.0.1:${jsPort}`);
  const CR = await makeClient("CR", server);
  await sleep(200);
  const k1 = (typeof args.key === "string" ? args.key : "js" + textRandom(8)) + "a";
  const v1 = { via: "js-server", r: textRandom(6) };
  await CJ.db.putData(k1, v1);
  await sleep(SETTLE);
  const a = await getUntil(CR, k1);
  const k2 = k1.slice(0, -1) + "b";
  const v2 = { via: "our-server", r: textRandom(6) };
  await CR.db.putData(k2, v2);
  await sleep(SETTLE);
  const b = await getUntil(CJ, k2);
  // CRDT changes put on each side: both servers end with the union (the
  // JS server relays each client's list as it came; ours relays a list).
  const kc = k1.slice(0, -1) + "c";
  const dj = new MapCrdt(CJ.address);
  dj.SET("viaJs", 1);
  await CJ.db.putCrdt(kc, dj);
  await sleep(SETTLE);
  const dr = new MapCrdt(CR.address);
  dr.SET("viaOurs", 2);
  await CR.db.putCrdt(kc, dr);
  await sleep(SETTLE);
  const expected = new MapCrdt("x", [...dj.getChanges(), ...dr.getChanges()]).value;
  const cr = await crdtUntil(CR, kc, expected);
  const cj = await crdtUntil(CJ, kc, expected);
  return {
    crdt: { key: kc, expected, got_ours: cr.value, got_js: cj.value, attempts: [cr.attempts, cj.attempts] },
    js_port: jsPort,
    js_address: js.address,
    peered,
    server_peers_known_by_js: js.db.serverPeers.map((p) => ({ host: p.host, port: p.port, address: p.address })),
    a: { key: k1, put: v1, got: a.got, attempts: a.attempts, elapsed_ms: a.elapsed_ms, path: "client of JS server -> client of --server" },
    b: { key: k2, put: v2, got: b.got, attempts: b.attempts, elapsed_ms: b.elapsed_ms, path: "client of --server -> client of JS server" },
    connected: { CJ: CJ.connected, CR: CR.connected },
  };
};

scenarios["js-server-only"] = async (server) => {
  const jsPort = Number(args["js-port"]);
  if (!jsPort) fail("js-server-only needs --js-port");
  const js = await startJsServer(jsPort, server || null);
  printResult({
    scenario: "js-server-only",
    ready: js.listening,
    js_port: jsPort,
    address: js.address,
    client_id: js.db.network.getClientAddress(),
    dir: js.dir,
    peer: server || null,
    timeouts,
  });
  await new Promise((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  log("js-server-only: signal received, closing");
  return null;
};

scenarios["raw-observe"] = async (server) => {
  const key = typeof args.key === "string" ? args.key : "obs" + textRandom(8);
  const A = await makeClient("A", server);
  const steps = [];
  const step = async (name, fn) => {
    const at = Date.now() - t0;
    let result;
    try {
      result = await withDeadline(fn(), TIMEOUT, "timeout");
    } catch (e) {
      result = "error: " + e.message;
    }
    steps.push({ step: name, at_ms: at, result });
    await sleep(250);
  };
  A.db.addKeyListener(key, (rec) => steps.push({ step: "keyListener fired", at_ms: Date.now() - t0, result: rec.v }));
  await step("putData", () => A.db.putData(key, { hello: "world" }).then((m) => m.data.v));
  A.db.store.map.clear();
  await step("getData", () => A.db.getData(key, false, 1000));
  await step("getData missing", () => A.db.getData(key + "missing", false, 1000));
  await step("subscribeData", () => A.db.subscribeData(key).then(() => "sent"));
  await step("putData again", () => A.db.putData(key, { hello: "again" }).then((m) => m.data.v));
  await step("queryKeys", () => A.db.queryKeys(key.slice(0, 5), false, 1000));
  const doc = new MapCrdt(A.address);
  doc.SET("m", 1);
  await step("putCrdt", () => A.db.putCrdt(key + "crdt", doc).then((m) => m.data.v));
  await step("getCrdt", () => {
    const d = new MapCrdt(A.address);
    return A.db.getCrdt(key + "crdt", d, false, 1000).then(() => d.value);
  });
  await step("doFunction echo", () => A.db.doFunction("echo", ["hi"], 2000));
  await step("doFunction missing", () => A.db.doFunction("nope", [], 2000));
  await sleep(300);
  return { key, address: A.address, client_id: A.db.network.getClientAddress(), steps, frames };
};

// ---------------------------------------------------------------- main
async function main() {
  if (!scenario || args.help || !scenarios[scenario]) fail(scenario ? `unknown scenario ${scenario}` : "no scenario");
  const server = typeof args.server === "string" ? args.server : null;
  if (!server && scenario !== "js-server-only") fail("--server ws://HOST:PORT is required");
  if (server) {
    const { hostname } = new URL(server);
    if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(hostname)) fail("only loopback servers are allowed");
  }
  // hard watchdog: never hang, whatever happens
  const hard = setTimeout(() => {
    printResult({ scenario, server, error: "harness watchdog expired", timeout: true, timeouts: [...timeouts, "watchdog"] });
    process.exit(0);
  }, scenario === "js-server-only" ? 2 ** 31 - 1 : TIMEOUT * 8 + 20000);
  hard.unref();

  const result = await scenarios[scenario](server);
  if (result) {
    const out = { scenario, server, ...result, timeout: timeouts.length > 0, timeouts };
    if (args.frames && !out.frames) out.frames = frames;
    printResult(out);
  }
  for (const db of instances) {
    try {
      await withDeadline(db.network.close(), 2000, null);
      await withDeadline(db.close(), 2000, null);
    } catch (e) {
      /* ignore */
    }
  }
  process.chdir(__dirname);
  for (const d of tmpDirs) {
    try {
      require("fs").rmSync(d, { recursive: true, force: true });
    } catch (e) {
      /* ignore */
    }
  }
  process.exit(0);
}

process.on("unhandledRejection", (e) => log("unhandledRejection:", String(e && e.stack ? e.stack : e)));
main().catch((e) => {
  log("harness error:", e && e.stack ? e.stack : String(e));
  process.exit(2);
});
