#!/usr/bin/env node
"use strict";
// The JS side of DHT interop: npm `bittorrent-dht` and `discovery-channel`
// (what JS Tool Db servers use to find each other) on a private DHT on
// 127.0.0.1. Never touches the public DHT: `bootstrap` runs with
// `bootstrap: false`, `channel` only with the --bootstrap nodes given.
//
//   node dht.js bootstrap --port P
//     A bittorrent-dht node on 127.0.0.1:P (0 = any free port), the storage
//     node of a private DHT. Prints {"ready":true,"port":P} once listening,
//     then runs until SIGTERM/SIGINT (or --timeout MS, if given).
//
//   node dht.js channel --bootstrap 127.0.0.1:P[,HOST:PORT...] --topic T
//                       [--announce PORT] [--interval MS] [--lookup-every MS]
//                       --timeout MS
//     A discovery-channel (dns: false) joining topic T, announcing PORT if
//     given (lookup only otherwise). Prints {"host","port"} once per distinct
//     peer found, then {"done":true} when --timeout expires (or on SIGTERM).
//
// Stdout carries only those JSON lines; diagnostics go to stderr (--verbose).
// Exit 0 when it ran, 2 on bad arguments or a harness error.

const realStdoutWrite = process.stdout.write.bind(process.stdout);
console.log = console.error;

const USAGE = `usage:
  node dht.js bootstrap --port P [--timeout MS] [--verbose]
  node dht.js channel --bootstrap 127.0.0.1:P[,...] --topic T [--announce PORT]
                      [--interval MS] [--lookup-every MS] --timeout MS [--verbose]`;

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

function fail(msg) {
  process.stderr.write(`dht.js: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function emit(obj) {
  realStdoutWrite(JSON.stringify(obj) + "\n");
}

function intArg(args, name, { min = 0, max = Number.MAX_SAFE_INTEGER, dflt } = {}) {
  const v = args[name];
  if (v === undefined) {
    if (dflt === undefined) fail(`--${name} is required`);
    return dflt;
  }
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) fail(`--${name} must be an integer in [${min}, ${max}]`);
  return n;
}

const LOOPBACK = /^127\.\d+\.\d+\.\d+$/;

function parseBootstrap(value) {
  if (typeof value !== "string" || !value) fail("--bootstrap HOST:PORT is required");
  return value.split(",").map((s) => {
    const m = /^([^:]+):(\d+)$/.exec(s.trim());
    if (!m) fail(`bad --bootstrap address ${s}`);
    // A private DHT only: refuse anything but loopback, so a typo never
    // joins the public DHT.
    if (!LOOPBACK.test(m[1])) fail(`--bootstrap must be a 127.x.x.x address, not ${m[1]}`);
    return `${m[1]}:${m[2]}`;
  });
}

const args = parseArgs(process.argv.slice(2));
const verbose = !!args.verbose;
const log = (...a) => verbose && console.error("dht.js:", ...a);
const cmd = args._[0];

process.on("uncaughtException", (e) => {
  process.stderr.write(`dht.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});

if (cmd === "bootstrap") bootstrap();
else if (cmd === "channel") channel();
else fail(cmd ? `unknown command ${cmd}` : "a command is required");

function onStop(stop) {
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

function bootstrap() {
  const DHT = require("bittorrent-dht");
  const port = intArg(args, "port", { max: 65535 });
  const timeout = intArg(args, "timeout", { min: 1, dflt: 0 });
  const dht = new DHT({ bootstrap: false });
  dht.on("error", (e) => {
    process.stderr.write(`dht.js: bootstrap node: ${e.message}\n`);
    process.exit(2);
  });
  dht.on("warning", (e) => log("warning", e && e.message));
  dht.listen(port, "127.0.0.1", () => {
    emit({ ready: true, port: dht.address().port });
    log("bootstrap node", dht.nodeId.toString("hex"), "on", dht.address());
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    // Exit even if destroy never calls back.
    setTimeout(() => process.exit(0), 1000).unref();
    dht.destroy(() => process.exit(0));
  };
  onStop(stop);
  if (timeout) setTimeout(stop, timeout);
}

function channel() {
  const DC = require("discovery-channel");
  const bootstrap = parseBootstrap(args.bootstrap);
  const topic = args.topic;
  if (typeof topic !== "string" || !topic) fail("--topic T is required");
  const timeout = intArg(args, "timeout", { min: 1 });
  const announce = args.announce === undefined ? null : intArg(args, "announce", { min: 1, max: 65535 });
  // discovery-channel re-runs its DHT announce/lookup every `dht.interval` ms
  // (default 10 to 15 minutes); a test needs seconds.
  const interval = intArg(args, "interval", { min: 100, dflt: 1000 });
  // An announcing channel re-announces from bittorrent-dht's 5-minute cache
  // of closest nodes, without a lookup, so it sees no peer that appears
  // later until that cache expires. --lookup-every adds plain lookups (what
  // a JS Tool Db server does NOT do); off by default.
  const lookupEvery = intArg(args, "lookup-every", { min: 100, dflt: 0 });

  const ch = DC({ dns: false, dht: { bootstrap, interval } });
  // Bind the channel's DHT socket to loopback before anything is sent
  // (otherwise k-rpc binds 0.0.0.0 on first send).
  ch.dht.listen(0, "127.0.0.1");
  const seen = new Set();
  ch.on("peer", (id, peer, type) => {
    const key = `${peer.host}:${peer.port}`;
    log("peer", key, "via", type);
    if (seen.has(key)) return;
    seen.add(key);
    emit({ host: peer.host, port: peer.port });
  });
  ch.on("warn", (e) => log("warn", e && e.message));
  ch.on("error", (e) => log("error", e && e.message));

  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    emit({ done: true });
    setTimeout(() => process.exit(0), 1000).unref();
    ch.destroy(() => process.exit(0));
  };
  onStop(finish);
  setTimeout(finish, timeout);

  ch.dht.once("listening", () => {
    log("channel DHT on", ch.dht.address(), "bootstrap", bootstrap);
    const cb = (err) => log("first", announce ? "announce" : "lookup", "done", err ? err.message : "ok");
    if (announce) ch.join(topic, announce, {}, cb);
    else ch.join(topic, null, {}, cb);
    if (lookupEvery) {
      // discovery-channel maps the hash back to the topic and emits `peer`.
      const hash = require("crypto").createHash("sha1").update(Buffer.from(topic)).digest();
      setInterval(() => done || ch.dht.lookup(hash), lookupEvery).unref();
    }
  });
}
