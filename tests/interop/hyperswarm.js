"use strict";
// Hyperswarm side of tests/hyperswarm.rs: stock npm `hyperswarm` 4 on a
// local `hyperdht/testnet`, all on 127.0.0.1 (never the public HyperDHT).
//
//   node hyperswarm.js testnet
//     starts a 3-node testnet; prints {"bootstrap":"127.0.0.1:PORT"}; runs
//     until stdin closes.
//   node hyperswarm.js peer --bootstrap H:P --topic T [--server] [--raw]
//     joins sha256(T) as server and client. Without --raw it is a Tool Db
//     peer (tool-db 2.6.6 with the adapter below); with --raw it only
//     writes what it is told (hostile-input tests). Reads one JSON command
//     per stdin line, answers one JSON line on stdout per command (and an
//     {"event":...} line when a connection opens or closes).
//
// Commands: {"cmd":"put","key","value"} {"cmd":"get","key"} (asks its
// connections; {"value":null} after the deadline) {"cmd":"local","key"}
// (its own store) {"cmd":"status"} {"cmd":"leave"} {"cmd":"rejoin"}
// {"cmd":"send","text","repeat","to"} {"cmd":"sendBytes","bytes","to"}
// (raw only; "to": the remote's public key in hex, default every link).

const crypto = require("crypto");
const readline = require("readline");
const Hyperswarm = require("hyperswarm");
const HyperDHT = require("hyperdht");
const { ToolDbNetworkAdapter } = require("tool-db");
const { ToolDb, EcdsaUser, MemoryStore, waitUntil } = require("./lib.js");

const TIMEOUT = 15000;

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
}
const has = (name) => process.argv.includes(name);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (...a) => process.stderr.write(`[hyperswarm.js] ${a.join(" ")}\n`);

// Tool Db over Hyperswarm: one Tool Db JSON message per secret-stream
// message; both sides ping first (as a websocket dialer does).
class HyperswarmAdapter extends ToolDbNetworkAdapter {
  constructor(db) {
    super(db);
    this.sockets = new Set();
    db.once("init", () => {
      const swarm = db.options.swarm;
      swarm.on("connection", (socket) => this.accept(socket));
    });
  }

  accept(socket) {
    this.sockets.add(socket);
    let clientId = "";
    const gone = () => {
      this.sockets.delete(socket);
      if (clientId) this.onClientDisconnect(clientId);
    };
    socket.on("close", gone);
    socket.on("error", () => {});
    socket.on("data", (data) => {
      this.onClientMessage(data.toString("utf8"), clientId, (id) => {
        clientId = id;
        this.isClientConnected[id] = () => !socket.destroyed;
        this.clientToSend[id] = (msg) => {
          if (!socket.destroyed) socket.write(msg);
        };
      });
    });
    this.craftPingMessage().then((msg) => {
      if (!socket.destroyed) socket.write(msg);
    });
  }
}

function bootstrapOf() {
  const b = arg("--bootstrap");
  if (!b) throw new Error("--bootstrap HOST:PORT is required");
  return b.split(",").map((s) => {
    const [host, port] = s.split(":");
    return { host, port: Number(port) };
  });
}

async function testnet() {
  const createTestnet = require("hyperdht/testnet");
  const tn = await createTestnet(3, { host: "127.0.0.1" });
  const b = tn.bootstrap[0];
  out({ bootstrap: `${b.host}:${b.port}` });
  process.stdin.resume();
  process.stdin.on("end", async () => {
    await tn.destroy();
    process.exit(0);
  });
}

async function peer() {
  const topicText = arg("--topic", "tool-db-default");
  const topic = crypto.createHash("sha256").update(topicText, "utf8").digest();
  const raw = has("--raw");
  const bootstrap = bootstrapOf();
  let swarm = null;
  let db = null;
  const conns = new Map(); // socket -> remote public key (hex)
  // One key pair for the process: a peer that leaves and rejoins comes
  // back as the same peer.
  const keyPair = HyperDHT.keyPair();

  const newSwarm = () => {
    // Loopback only (TEST-TOOLS.md: a node on 0.0.0.0 announces addresses
    // that do not work here).
    const dht = new HyperDHT({ bootstrap, host: "127.0.0.1", ephemeral: true });
    const s = new Hyperswarm({ dht, keyPair });
    s.on("connection", (socket, info) => {
      conns.set(socket, info.publicKey.toString("hex"));
      out({ event: "open", remote: info.publicKey.toString("hex") });
      socket.on("error", () => {});
      // A secret stream is half-open after the peer's end (streamx): end
      // ours too, or the socket stays open until a write times out.
      socket.on("end", () => socket.end());
      socket.on("close", () => {
        conns.delete(socket);
        out({ event: "close", remote: info.publicKey.toString("hex") });
      });
      if (raw) socket.on("data", (d) => out({ event: "data", bytes: d.length, text: d.toString("utf8").slice(0, 2000) }));
    });
    return s;
  };

  swarm = newSwarm();
  if (!raw) {
    db = new ToolDb({
      server: has("--server"),
      topic: topicText,
      networkAdapter: HyperswarmAdapter,
      storageAdapter: MemoryStore,
      userAdapter: EcdsaUser,
      storageName: `hs-${process.pid}`,
      swarm,
      debug: has("--debug"),
    });
    await db.ready;
  }
  const discovery = swarm.join(topic, { server: true, client: true });
  await discovery.flushed();
  out({ ready: true, address: db ? db.userAccount.getAddress() : null, key: swarm.keyPair.publicKey.toString("hex") });

  const handle = async (c) => {
    switch (c.cmd) {
      case "put": {
        const ok = await db.putData(c.key, c.value);
        return { ok: !!ok };
      }
      case "get": {
        // Asks every connection; the first verified answer wins.
        const deadline = Date.now() + (c.timeout || TIMEOUT);
        while (Date.now() < deadline) {
          const v = await Promise.race([
            db.getData(c.key, false, 2000).catch(() => null),
            new Promise((r) => setTimeout(() => r(null), 2500)),
          ]);
          if (v !== null && v !== undefined) return { value: v };
        }
        return { value: null };
      }
      case "local": {
        const v = await db.store.get(c.key).catch(() => null);
        return { record: v ? JSON.parse(v) : null };
      }
      case "status": {
        const ids = db ? Object.keys(db.network.clientToSend).filter((id) => db.network.isConnected(id)) : [];
        return { conns: conns.size, clients: ids };
      }
      case "waitClients": {
        const ok = await waitUntil(
          () => Object.keys(db.network.clientToSend).filter((id) => db.network.isConnected(id)).length >= (c.count || 1),
          c.timeout || TIMEOUT
        );
        return { ok: !!ok };
      }
      case "leave": {
        await swarm.destroy();
        return { ok: true };
      }
      case "rejoin": {
        swarm = newSwarm();
        if (db) {
          db.options.swarm = swarm;
          swarm.on("connection", (socket) => db.network.accept(socket));
        }
        await swarm.join(topic, { server: true, client: true }).flushed();
        return { ok: true };
      }
      // To the connection with remote key c.to (hex), or to all.
      case "send": {
        const to = [...conns].filter(([, k]) => !c.to || k === c.to).map(([s]) => s);
        for (const s of to) for (let i = 0; i < (c.repeat || 1); i++) s.write(Buffer.from(c.text, "utf8"));
        return { sentTo: to.length };
      }
      case "sendBytes": {
        const to = [...conns].filter(([, k]) => !c.to || k === c.to).map(([s]) => s);
        for (const s of to) s.write(Buffer.alloc(c.bytes, "a".charCodeAt(0)));
        return { sentTo: to.length };
      }
      default:
        return { error: `unknown command ${c.cmd}` };
    }
  };

  const rl = readline.createInterface({ input: process.stdin });
  let chain = Promise.resolve();
  rl.on("line", (line) => {
    chain = chain.then(async () => {
      try {
        out(await handle(JSON.parse(line)));
      } catch (e) {
        out({ error: String((e && e.stack) || e) });
      }
    });
  });
  rl.on("close", async () => {
    await chain;
    await swarm.destroy().catch(() => {});
    process.exit(0);
  });
}

const mode = process.argv[2];
(mode === "testnet" ? testnet() : mode === "peer" ? peer() : Promise.reject(new Error(`unknown mode ${mode}`))).catch(
  (e) => {
    log(String((e && e.stack) || e));
    process.exit(2);
  }
);
