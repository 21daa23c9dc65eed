#!/usr/bin/env node
"use strict";
// Regenerates tests/interop/vectors/*.json with the real libraries:
//   node tests/interop/vectors.js
// P-256 signatures are randomised by WebCrypto, so every run writes new P-256
// vectors (all equally valid); the secp256k1 ones use fixed keys and RFC 6979,
// so they come out the same apart from timestamps.

const fs = require("fs");
const path = require("path");
const { Wallet, verifyMessage, keccak256, toUtf8Bytes } = require("ethers");
const { ToolDb, ToolDbNetworkAdapter, MapCrdt, sha256, verifyPeer, proofOfWork } = require("tool-db");
const { EcdsaUser, Web3User, MemoryStore } = require("./lib");

console.log = console.error; // tool-db may log; keep stdout clean

const OUT = path.join(__dirname, "vectors");
const P256_N = BigInt("0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");

function flipByte(hexSig, byteIndex) {
  const prefix = hexSig.startsWith("0x") ? "0x" : "";
  const h = prefix ? hexSig.slice(2) : hexSig;
  const i = byteIndex * 2;
  const b = (parseInt(h.slice(i, i + 2), 16) ^ 0x01).toString(16).padStart(2, "0");
  return prefix + h.slice(0, i) + b + h.slice(i + 2);
}

/** A ToolDb instance that never dials anyone; `frames` collects what it would send. */
async function makeDb(userAdapter, extra = {}) {
  const db = new ToolDb({
    peers: [],
    server: false,
    networkAdapter: ToolDbNetworkAdapter, // the base class: no sockets
    storageAdapter: MemoryStore,
    userAdapter,
    storageName: "vectors",
    ...extra,
  });
  await db.ready;
  const frames = [];
  const net = db.network;
  net.clientToSend.capture = (m) => frames.push(m);
  net.isClientConnected.capture = () => true;
  db.processedOutHashes.capture = [];
  db.frames = frames;
  return db;
}

// ------------------------------------------------------------ P-256 signatures
async function ecdsaVectors() {
  const users = [];
  for (let i = 0; i < 3; i++) {
    const db = await makeDb(EcdsaUser);
    users.push(db.userAccount);
  }
  const verify = (u, address, message, signature) =>
    u.verifySignature({ h: message, a: address, s: signature }).catch(() => false);
  const msgs = [
    [0, sha256("a record's hash input"), "a record hash (64 hex chars), what tool-db signs for records"],
    [0, sha256("tool-db-default-1700000000000-127.0.0.1:8080"), "a peer record hash"],
    [1, "hello ü ☃ 😀", "non-ASCII text, signed as UTF-8"],
    [1, " ", "a single space"],
    [2, "x".repeat(1000), "long message"],
  ];
  const out = [];
  for (const [ui, message, note] of msgs) {
    const u = users[ui];
    const signature = await u.signData(message);
    out.push({ address: u.getAddress(), message, signature, valid: await verify(u, u.getAddress(), message, signature), note });
  }
  // high-S form of a valid signature: WebCrypto accepts it
  {
    const v = out[0];
    const s = BigInt("0x" + v.signature.slice(64));
    const hs = (P256_N - s).toString(16).padStart(64, "0");
    const signature = v.signature.slice(0, 64) + hs;
    out.push({ address: v.address, message: v.message, signature, valid: await verify(users[0], v.address, v.message, signature), note: "same signature with s replaced by n - s (the other S form); WebCrypto accepts both forms" });
  }
  // invalid ones
  {
    const v = out[0];
    out.push({ address: v.address, message: v.message + "0", signature: v.signature, valid: await verify(users[0], v.address, v.message + "0", v.signature), note: "wrong message" });
    const flipped = flipByte(v.signature, 5);
    out.push({ address: v.address, message: v.message, signature: flipped, valid: await verify(users[0], v.address, v.message, flipped), note: "one signature byte flipped (in r)" });
    const flipped2 = flipByte(v.signature, 60);
    out.push({ address: v.address, message: v.message, signature: flipped2, valid: await verify(users[0], v.address, v.message, flipped2), note: "one signature byte flipped (in s)" });
    const other = users[1].getAddress();
    out.push({ address: other, message: v.message, signature: v.signature, valid: await verify(users[0], other, v.message, v.signature), note: "another key's address" });
    const short = v.signature.slice(0, 126);
    out.push({ address: v.address, message: v.message, signature: short, valid: await verify(users[0], v.address, v.message, short).catch(() => false), note: "signature truncated to 63 bytes" });
  }
  {
    const signature = await users[1].signData("");
    out.push({ address: users[1].getAddress(), message: "", signature, valid: await verify(users[1], users[1].getAddress(), "", signature), note: "empty message: a correct ECDSA signature, but ecdsa-user's verifySignature returns false when h is empty (!message.h); tool-db never signs an empty h" });
  }
  for (const v of out) {
    if (v.note.startsWith("empty")) {
      if (v.valid) throw new Error("empty message unexpectedly valid");
    } else if (v.note.startsWith("wrong") || v.note.startsWith("one") || v.note.startsWith("another") || v.note.startsWith("signature truncated")) {
      if (v.valid) throw new Error("expected invalid: " + v.note);
    } else if (!v.valid) throw new Error("expected valid: " + v.note);
  }
  return out;
}

// ------------------------------------------------------------ secp256k1 signatures
function web3Vectors() {
  const wallets = [1, 2, 3].map((i) => new Wallet(keccak256(toUtf8Bytes(`tooldb-node interop vector key ${i}`))));
  const check = (address, message, signature) => {
    try {
      return verifyMessage(message, signature) === address; // web3-user: recovered === a (exact)
    } catch (e) {
      return false;
    }
  };
  const msgs = [
    [0, sha256("a record's hash input"), "a record hash (64 hex chars), what tool-db signs"],
    [0, sha256("tool-db-default-1700000000000-127.0.0.1:8080"), "a peer record hash"],
    [1, "hello ü ☃ 😀", "non-ASCII text, signed as UTF-8"],
    [1, " ", "a single space"],
    [2, "x".repeat(1000), "long message"],
  ];
  const out = [];
  for (const [wi, message, note] of msgs) {
    const w = wallets[wi];
    const signature = w.signMessageSync(message);
    out.push({ address: w.address, message, signature, valid: check(w.address, message, signature), note });
  }
  const v = out[0];
  const inv = (address, message, signature, note) => out.push({ address, message, signature, valid: check(address, message, signature), note });
  inv(v.address, v.message + "0", v.signature, "wrong message");
  inv(v.address, v.message, flipByte(v.signature, 5), "one signature byte flipped (in r)");
  inv(wallets[1].address, v.message, v.signature, "another key's address");
  inv(v.address.toLowerCase(), v.message, v.signature, "address not EIP-55 checksummed (web3-user compares the recovered checksummed address with === so this fails)");
  // v = 0/1 instead of 27/28: web3.js 1.x and ethers both recover it
  const vByte = parseInt(v.signature.slice(130), 16);
  const sig01 = v.signature.slice(0, 130) + (vByte - 27).toString(16).padStart(2, "0");
  out.push({ address: v.address, message: v.message, signature: sig01, valid: check(v.address, v.message, sig01), note: "recovery byte 0/1 instead of 27/28: web3.js 1.x and ethers accept it (tool-db never produces it)" });
  {
    const w = wallets[1];
    const signature = w.signMessageSync("");
    out.push({ address: w.address, message: "", signature, valid: false, note: "empty message: a correct personal_sign signature, but web3-user's verifySignature returns false when h is empty (!message.h)" });
  }
  return out;
}

// ------------------------------------------------------------ records
function rawOfFrame(frame) {
  const i = frame.indexOf(',"data":');
  if (i < 0 || !frame.endsWith("}")) throw new Error("no data in frame " + frame);
  return frame.slice(i + 8, -1);
}

function hashInput(rec) {
  return `${JSON.stringify(rec.v)}${rec.a}${rec.t}${rec.n}`;
}

async function recordVectors() {
  const out = [];
  const dbP = await makeDb(EcdsaUser);
  const dbP2 = await makeDb(EcdsaUser);
  const dbPow = await makeDb(EcdsaUser, { pow: 2 });
  const dbW = await makeDb(Web3User);
  await dbW.userAccount.setUser(new Wallet(keccak256(toUtf8Bytes("tooldb-node interop record key"))), "web3");

  const tooldbVerify = (db, rec) => db.verifyMessage(rec, 0);

  const fromFrame = async (db, scheme, name, frame, extra = {}) => {
    const raw = rawOfFrame(frame);
    const rec = JSON.parse(raw);
    if (JSON.stringify(rec) !== raw) throw new Error("raw != JSON.stringify(record) for " + name);
    const hi = hashInput(rec);
    if (sha256(hi) !== rec.h) throw new Error("hash mismatch for " + name);
    out.push({ name, scheme, raw, hash_input: hi, valid: true, expect: "Verified", tooldb_verify: await tooldbVerify(db, rec), frame, ...extra });
  };
  const put = async (db, scheme, name, key, value, ns = false) => {
    db.frames.length = 0;
    await db.putData(key, value, ns);
    await fromFrame(db, scheme, name, db.frames[0]);
  };

  await put(dbP, "ecdsa-p256", "string value", "greeting", "hello world");
  await put(dbP, "ecdsa-p256", "integer value", "answer", 42);
  await put(dbP, "ecdsa-p256", "numbers whose JSON text matters", "numbers", [0.1, 1e21, -5, 1.5e-7, 123456789012345680000, -0]);
  await put(dbP, "ecdsa-p256", "object with escapes and non-ASCII", "obj", {
    quote: '"quoted"',
    backslash: "a\\b",
    newline: "a\nb",
    tab: "\t",
    control: "\u0001\u001f",
    unicode: "ü☃😀",
    lineSeparator: "\u2028\u2029",
    slash: "a/b</script>",
    nested: { arr: [null, true, false, {}, []] },
  });
  await put(dbP, "ecdsa-p256", "null value", "nothing", null);
  await put(dbP, "ecdsa-p256", "user namespaced key", "profile", { name: "alice" }, true);
  await put(dbP, "ecdsa-p256", "frozen key (first writer owns it)", "==alice", { owner: true });
  await put(dbPow, "ecdsa-p256", "proof of work 2 (h starts with 00, n > 0)", "worked", { pow: 2 });
  {
    const doc = new MapCrdt(dbP.userAccount.getAddress());
    doc.SET("a", 1);
    doc.SET("b", { x: "y" });
    doc.DEL("a");
    dbP.frames.length = 0;
    await dbP.putCrdt("crdtmap", doc);
    await fromFrame(dbP, "ecdsa-p256", "MAP crdt record (crdtPut)", dbP.frames[0]);
  }
  await put(dbW, "web3-secp256k1", "string value (web3-user semantics via ethers)", "greeting", "hello world");
  await put(dbW, "web3-secp256k1", "object value", "obj", { unicode: "ü☃😀", n: 1.5 });
  await put(dbW, "web3-secp256k1", "user namespaced key", "profile", { name: "bob" }, true);

  // ---- invalid variants
  const base = JSON.parse(out[0].raw);
  const inval = async (db, scheme, name, rec, expect, extra = {}) => {
    const raw = JSON.stringify(rec);
    out.push({ name, scheme, raw, hash_input: hashInput(rec), valid: false, expect, hash_ok: sha256(hashInput(rec)) === rec.h, tooldb_verify: await tooldbVerify(db, rec), ...extra });
  };
  const sign = async (db, rec) => {
    const { hash, nonce } = await proofOfWork(`${JSON.stringify(rec.v)}${rec.a}${rec.t}`, 0);
    const s = await db.userAccount.signData(hash);
    return { ...rec, n: nonce, h: hash, s };
  };
  await inval(dbP, "ecdsa-p256", "tampered v (h and s kept)", { ...base, v: "hello w0rld" }, "InvalidHashNonce", {
    note: "Tool Db with pow 0 accepts this (signature over h is valid); ours checks the hash always",
  });
  await inval(dbP, "ecdsa-p256", "wrong h (s kept)", { ...base, h: sha256("something else") }, "InvalidHashNonce", { note: "both the hash formula and the signature fail; in PROTOCOL.md order the hash check (step 5) comes first. Tool Db with pow 0 says InvalidSignature" });
  {
    const rec = { ...base, h: sha256("not the formula") };
    rec.s = await dbP.userAccount.signData(rec.h);
    await inval(dbP, "ecdsa-p256", "h not the hash formula but correctly signed", rec, "InvalidHashNonce", {
      note: "Tool Db with pow 0 accepts this; ours checks the hash always",
    });
  }
  await inval(dbP, "ecdsa-p256", "signature byte flipped", { ...base, s: flipByte(base.s, 40) }, "InvalidSignature");
  await inval(dbP, "ecdsa-p256", "timestamp in 2100 (correctly hashed and signed)", await sign(dbP, { ...base, t: 4102444800000 }), "InvalidTimestamp");
  await inval(dbP, "ecdsa-p256", "namespace of another address (signed by the author)", await sign(dbP, { ...base, k: `:${dbP2.userAccount.getAddress()}.profile` }), "AddressMismatch");
  await inval(dbP, "ecdsa-p256", "author is another address, signed by this key", await sign(dbP, { ...base, a: dbP2.userAccount.getAddress() }), "InvalidSignature");
  {
    const rec = { ...base };
    delete rec.c;
    await inval(dbP, "ecdsa-p256", "field c missing", rec, "InvalidData");
  }
  {
    const rec = { ...base };
    delete rec.n;
    await inval(dbP, "ecdsa-p256", "field n missing", rec, "InvalidData", { note: "Tool Db does not require n (tooldb_verify says Verified); ours requires it" });
  }
  const wbase = JSON.parse(out.find((r) => r.scheme === "web3-secp256k1").raw);
  await inval(dbW, "web3-secp256k1", "tampered v (h and s kept)", { ...wbase, v: "hello w0rld" }, "InvalidHashNonce", {
    note: "Tool Db with pow 0 accepts this; ours checks the hash always",
  });
  await inval(dbW, "web3-secp256k1", "another key's address as author, hashed and signed by this key", await sign(dbW, { ...wbase, a: new Wallet(keccak256(toUtf8Bytes("other"))).address }), "InvalidSignature");
  await inval(dbW, "web3-secp256k1", "author address lowercased, hashed and signed as such", await sign(dbW, { ...wbase, a: wbase.a.toLowerCase() }), "InvalidSignature", {
    note: "recovered address is EIP-55; web3-user compares with ===",
  });

  for (const r of out) {
    if (r.valid && r.tooldb_verify !== "Verified") throw new Error(`tool-db rejects valid vector ${r.name}: ${r.tooldb_verify}`);
  }
  return out;
}

// ------------------------------------------------------------ peers
async function peerVectors() {
  const out = [];
  const mk = async (userAdapter, opts) => {
    const db = await makeDb(userAdapter, opts);
    if (userAdapter === Web3User) await db.userAccount.setUser(new Wallet(keccak256(toUtf8Bytes("tooldb-node interop peer key"))), "peer");
    return db;
  };
  const entry = async (db, name, peer, validExpected) => {
    const hash_input = `${peer.topic}-${peer.timestamp}-${peer.host}:${peer.port}`;
    const hash = sha256(hash_input);
    const valid = !!(await db.peerAccount.verifySignature({ h: hash, a: peer.address, s: peer.sig }).catch(() => false));
    if (valid !== validExpected) throw new Error(`peer vector ${name}: valid=${valid}`);
    const tv = await verifyPeer(db, peer);
    out.push({ name, scheme: peer.address.startsWith("0x") ? "web3-secp256k1" : "ecdsa-p256", peer, hash_input, hash, valid, tooldb_verifyPeer: tv });
  };
  const client = await mk(EcdsaUser, {});
  const p1 = await client.network.getMeAsPeer();
  await entry(client, "client peer record (tool-db defaults host 127.0.0.1, port 8080)", p1, true);
  const server = await mk(EcdsaUser, { server: true, host: "127.0.0.1", port: 9000, topic: "my-topic" });
  const p2 = await server.network.getMeAsPeer();
  await entry(server, "server peer record, custom topic and port", p2, true);
  const w = await mk(Web3User, { server: true, host: "localhost", port: 443 });
  const p3 = await w.network.getMeAsPeer();
  await entry(w, "web3 (secp256k1) peer record", p3, true);
  await entry(server, "topic changed after signing", { ...p2, topic: "other-topic" }, false);
  await entry(server, "port changed after signing", { ...p2, port: 9001 }, false);
  await entry(server, "timestamp changed after signing", { ...p2, timestamp: p2.timestamp + 1 }, false);
  await entry(server, "signature byte flipped", { ...p2, sig: flipByte(p2.sig, 3) }, false);
  await entry(server, "another node's address", { ...p2, address: p1.address }, false);
  await entry(w, "web3 address lowercased", { ...p3, address: p3.address.toLowerCase() }, false);
  return out;
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const write = (name, data) => {
    fs.writeFileSync(path.join(OUT, name), JSON.stringify(data, null, 2) + "\n");
    process.stderr.write(`wrote vectors/${name} (${data.length} entries)\n`);
  };
  write("ecdsa-p256.json", await ecdsaVectors());
  write("web3-secp256k1.json", web3Vectors());
  write("records.json", await recordVectors());
  write("peers.json", await peerVectors());
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
