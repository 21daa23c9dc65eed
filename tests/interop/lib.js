"use strict";
// Shared helpers for run.js and vectors.js.

const os = require("os");
const fs = require("fs");
const path = require("path");
const { ToolDb, ToolDbStorageAdapter, ToolDbUserAdapter, randomAnimal } = require("tool-db");
const EcdsaUser = require("@tool-db/ecdsa-user").default;
const { Wallet, verifyMessage } = require("ethers");
const WsAdapter = require("./adapter");

/**
 * In-memory storage adapter for harness clients: every client starts empty, so a
 * "fresh client" really has to ask the server. Semantics follow
 * @tool-db/leveldb-store: get() rejects when the key is missing, query() returns
 * the keys in [prefix, prefix + "\uffff"] in sorted order.
 */
class MemoryStore extends ToolDbStorageAdapter {
  constructor(db, forceStorageName) {
    super(db, forceStorageName);
    this.map = new Map();
  }
  put(key, data) {
    this.map.set(key, data);
    return Promise.resolve(true);
  }
  get(key) {
    return this.map.has(key)
      ? Promise.resolve(this.map.get(key))
      : Promise.reject(new Error("Error retrieving data"));
  }
  query(key) {
    const hi = key + "\uffff";
    return Promise.resolve([...this.map.keys()].filter((k) => k >= key && k <= hi).sort());
  }
  close() {
    return Promise.resolve();
  }
}

/**
 * A user adapter with the semantics of @tool-db/web3-user (not published on npm):
 * secp256k1, signData = Ethereum personal_sign (EIP-191) of the text, address
 * EIP-55, verifySignature = recovered address === message.a (exact string
 * compare). web3-user used web3.js `eth.accounts.sign/recover`; this uses ethers v6,
 * which produces the same signature for the same key and text (RFC 6979).
 */
class Web3User extends ToolDbUserAdapter {
  constructor(db) {
    super(db);
    this._wallet = Wallet.createRandom();
    this._userName = randomAnimal();
  }
  anonUser() {
    this._wallet = Wallet.createRandom();
    this._userName = randomAnimal();
    return Promise.resolve();
  }
  setUser(account, name) {
    this._wallet = account instanceof Wallet ? account : new Wallet(account.privateKey);
    this._userName = name;
    return Promise.resolve();
  }
  signData(data) {
    return Promise.resolve(this._wallet.signMessageSync(data));
  }
  verifySignature(message) {
    if (!message.h || !message.s) return Promise.resolve(false);
    try {
      return Promise.resolve(verifyMessage(message.h, message.s) === message.a);
    } catch (e) {
      return Promise.resolve(false);
    }
  }
  encryptAccount() {
    return Promise.resolve({ privateKey: this._wallet.privateKey, name: this._userName });
  }
  decryptAccount(acc) {
    return Promise.resolve(acc);
  }
  getAddress() {
    return this._wallet.address;
  }
  getUsername() {
    return this._userName;
  }
}

function log(...args) {
  process.stderr.write(
    args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ") + "\n"
  );
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolve with fn's result, or with `onTimeout` after ms. Never rejects on timeout. */
function withDeadline(promise, ms, onTimeout) {
  let t;
  return Promise.race([
    promise,
    new Promise((resolve) => {
      t = setTimeout(() => resolve(onTimeout), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/** Poll `cond` every 20 ms until it returns truthy or ms elapses; returns the value or undefined. */
async function waitUntil(cond, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() >= end) return undefined;
    await sleep(20);
  }
}

function parseWsUrl(url) {
  const u = new URL(url);
  if (u.protocol === "wss:") return { host: u.hostname, port: Number(u.port || 443), secure: true };
  return { host: u.hostname, port: Number(u.port || 80) };
}

function makeTmpDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

module.exports = {
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
};
