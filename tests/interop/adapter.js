"use strict";
// Websocket network adapter for tool-db 2.6.x, written for this harness
// (the official @tool-db/websocket-network is not published on npm).
//
// It follows the behaviour of the old official adapter, on top of tool-db's
// ToolDbNetworkAdapter base class:
//  - client side: dial ws://HOST:PORT (port 443 -> wss://HOST) for every entry
//    of options.peers, send the base class's ping on open, and feed every
//    incoming frame to onClientMessage(), which sets the socket's client id from
//    the first ping/pong and routes everything else to ToolDb.clientOnMessage.
//    A dial that fails before the socket opens is retried (options.maxRetries,
//    options.wait ms apart), a socket that was open and closes is not redialled
//    (same as the official adapter).
//  - server side (options.server && options.port): listen with `ws` on
//    options.host:options.port and accept clients; it still dials its peers.
//
// One deliberate difference from the official adapter: it dials only after
// ToolDb's "init" event, when the peer keys are final. (The official adapter
// dials from its constructor, so a ping can be signed with a temporary key.)
//
// Second difference, for the TLS tests: a peer entry with `secure: true`
// (what parseWsUrl gives for a wss:// URL) is dialed with wss:// on its own
// port; the official adapter knows wss only as port 443.
//
// Harness hook (not a tool-db option): options.onFrame(dir, text, info) is called
// for every frame sent ("out") or received ("in"), for logging.

const WebSocket = require("ws");
const { ToolDbNetworkAdapter, textRandom } = require("tool-db");

class ToolDbWebsocketAdapter extends ToolDbNetworkAdapter {
  constructor(db) {
    super(db);
    this.server = null;
    this.sockets = new Set(); // every open ws (dialled or accepted)
    this._awaiting = {}; // connId -> {host, port, tries, defer}
    this._closed = false;
    this.listening = null; // Promise resolved when the server listens

    const opts = db.options;
    if (opts.server && opts.port) {
      this.server = new WebSocket.Server({
        host: opts.host,
        port: opts.port,
        server: opts.httpServer,
      });
      this.listening = new Promise((resolve, reject) => {
        this.server.once("listening", resolve);
        this.server.once("error", reject);
      });
      this.server.on("connection", (socket, req) => {
        const info = { side: "server", remote: req && req.socket && `${req.socket.remoteAddress}:${req.socket.remotePort}` };
        this._track(socket);
        let clientId = null;
        db.logger("new connection", info.remote);
        socket.on("close", () => {
          if (clientId) this.onClientDisconnect(clientId);
        });
        socket.on("error", () => {
          if (clientId) this.onClientDisconnect(clientId);
        });
        socket.on("message", (data, isBinary) => {
          const text = isBinary ? Buffer.from(data).toString("utf8") : data.toString("utf8");
          this._frame("in", text, { ...info, clientId });
          this.onClientMessage(text, clientId || "", (id) => {
            clientId = id;
            this.isClientConnected[id] = () => socket.readyState === WebSocket.OPEN;
            this.clientToSend[id] = (msg) => this._send(socket, msg, { ...info, clientId: id });
          });
        });
      });
    }

    // Dial configured peers once the keys are final.
    db.once("init", () => {
      (opts.peers || []).forEach((p) => this.connectTo(p.host, p.port, undefined, !!p.secure));
    });
  }

  _frame(dir, text, info) {
    const f = this.tooldb.options.onFrame;
    if (typeof f === "function") {
      try {
        f(dir, text, info);
      } catch (e) {
        /* logging must never break the adapter */
      }
    }
  }

  _send(socket, msg, info) {
    if (socket.readyState !== WebSocket.OPEN) return;
    this._frame("out", msg, info);
    socket.send(msg);
  }

  _track(socket) {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
  }

  /** Dial a peer. Returns the WebSocket. */
  connectTo(host, port, connectionId, secure = false) {
    if (this._closed) return undefined;
    const db = this.tooldb;
    const url =
      Number(port) === 443 ? `wss://${host}` : secure ? `wss://${host}:${port}` : `ws://${host}:${port}`;
    const connId = connectionId || textRandom(10);
    if (!this._awaiting[connId]) {
      this._awaiting[connId] = { host, port, secure, tries: 0, defer: null };
    }
    const info = { side: "client", url };
    db.logger("connectTo:", url);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      db.logger(e);
      return undefined;
    }
    this._track(ws);
    let clientId = "";
    let opened = false;

    ws.on("open", () => {
      opened = true;
      delete this._awaiting[connId];
      db.logger(`Connected to ${url}`);
      this.craftPingMessage().then((msg) => this._send(ws, msg, { ...info, clientId }));
    });
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? Buffer.from(data).toString("utf8") : data.toString("utf8");
      this._frame("in", text, { ...info, clientId });
      this.onClientMessage(text, clientId, (id) => {
        clientId = id;
        this.isClientConnected[id] = () => ws.readyState === WebSocket.OPEN;
        this.clientToSend[id] = (msg) => this._send(ws, msg, { ...info, clientId: id });
      });
    });
    ws.on("error", (err) => {
      db.logger("ws error", url, err && err.message);
    });
    ws.on("close", (code, reason) => {
      this._frame("close", "", { ...info, clientId, code, reason: reason && reason.toString() });
      if (!opened) this._retry(connId);
    });
    return ws;
  }

  _retry(connId) {
    const c = this._awaiting[connId];
    if (!c || this._closed) return;
    if (c.defer) clearTimeout(c.defer);
    if (c.tries < this.tooldb.options.maxRetries) {
      c.defer = setTimeout(() => {
        c.tries += 1;
        this.connectTo(c.host, c.port, connId, c.secure);
      }, this.tooldb.options.wait);
    } else {
      delete this._awaiting[connId];
      this.tooldb.logger(`giving up on ${c.host}:${c.port}`);
    }
  }

  /** Harness helper: close every socket and the listener. */
  close() {
    this._closed = true;
    Object.values(this._awaiting).forEach((c) => c.defer && clearTimeout(c.defer));
    this._awaiting = {};
    for (const s of this.sockets) {
      try {
        s.terminate();
      } catch (e) {
        /* ignore */
      }
    }
    this.sockets.clear();
    if (this.server) {
      const srv = this.server;
      this.server = null;
      return new Promise((resolve) => srv.close(() => resolve()));
    }
    return Promise.resolve();
  }
}

module.exports = ToolDbWebsocketAdapter;
module.exports.ToolDbWebsocketAdapter = ToolDbWebsocketAdapter;
