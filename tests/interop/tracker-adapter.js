"use strict";
// A client-side tool-db network adapter that finds servers on WebTorrent
// websocket trackers, written for this harness from the behaviour of Tool
// Db's hybrid network adapter (packages/hybrid-network in the tool-db
// repository, not published on npm), not from its code:
//  - options.trackers: websocket tracker URLs; one socket per tracker;
//  - findServer(name): announce on every tracker under
//    info_hash = sha256(name).slice(-20), peer_id = our client address (the
//    last 20 characters of the peer key's address), no offers;
//  - a forwarded offer whose `sdp` is the server's JSON record
//    {host, port, ssl, name, pubKey, signature} is dialed once per server
//    name: ssl ? "wss://" + host : "ws://" + host + ":" + port; on open it
//    sends the base class's ping, and every frame goes to onClientMessage.
// One difference: sockets are registered under the client id of the
// server's pong (the hybrid adapter registers them under the server name).
// options.findServers: names to find once the keys are ready.
// Runs in Node.js (with `ws`) and in a browser (window.tooldb, WebSocket).
(function (root) {
  const isNode = typeof module !== "undefined" && module.exports;
  const T = isNode ? require("tool-db") : root.tooldb;
  const WS = isNode ? require("ws") : root.WebSocket;
  const OPEN = 1;

  class ToolDbTrackerAdapter extends T.ToolDbNetworkAdapter {
    constructor(db) {
      super(db);
      this.trackerSockets = {};
      this.handledOffers = new Set();
      this.serversByName = {};
      this.offers = []; // every server record dialed (for the harness)
      this.trackerFrames = 0;
      db.once("init", () => {
        (db.options.findServers || []).forEach((n) => this.findServer(n));
      });
    }

    trackerSocket(url) {
      if (this.trackerSockets[url]) return this.trackerSockets[url];
      const p = new Promise((resolve) => {
        let ws;
        try {
          ws = new WS(url);
        } catch (e) {
          resolve(null);
          return;
        }
        ws.onopen = () => resolve(ws);
        ws.onerror = () => resolve(null);
        ws.onmessage = (e) => this.onTrackerMessage(String(e.data));
      });
      this.trackerSockets[url] = p;
      return p;
    }

    findServer(name) {
      const infoHash = T.sha256(name).slice(-20);
      (this.tooldb.options.trackers || []).forEach((url) => {
        this.trackerSocket(url).then((ws) => {
          if (!ws || ws.readyState !== OPEN) return;
          ws.send(
            JSON.stringify({
              action: "announce",
              info_hash: infoHash,
              peer_id: this.getClientAddress(),
              numwant: 1,
            })
          );
        });
      });
    }

    onTrackerMessage(text) {
      this.trackerFrames += 1;
      let m;
      try {
        m = JSON.parse(text);
      } catch (e) {
        return;
      }
      if (m["failure reason"]) {
        this.tooldb.logger("tracker failure: " + m["failure reason"]);
        return;
      }
      if (m.peer_id === this.getClientAddress()) return;
      if (!m.offer || !m.offer_id || this.handledOffers.has(m.offer_id)) return;
      this.handledOffers.add(m.offer_id);
      let server;
      try {
        server = JSON.parse(m.offer.sdp);
      } catch (e) {
        return;
      }
      if (!server || typeof server.host !== "string" || this.serversByName[server.name]) return;
      this.serversByName[server.name] = true;
      this.offers.push(server);
      this.connectTo(server);
    }

    connectTo(server) {
      const url = server.ssl ? "wss://" + server.host : "ws://" + server.host + ":" + server.port;
      let ws;
      try {
        ws = new WS(url);
      } catch (e) {
        delete this.serversByName[server.name];
        return;
      }
      let clientId = "";
      ws.onopen = () => {
        this.craftPingMessage().then((msg) => ws.send(msg));
      };
      ws.onmessage = (e) => {
        this.onClientMessage(String(e.data), clientId, (id) => {
          clientId = id;
          this.isClientConnected[id] = () => ws.readyState === OPEN;
          this.clientToSend[id] = (msg) => {
            if (ws.readyState === OPEN) ws.send(msg);
          };
        });
      };
      ws.onclose = () => {
        // Found again at its next offer.
        delete this.serversByName[server.name];
      };
    }

    close() {
      Object.values(this.trackerSockets).forEach((p) => p.then((ws) => ws && ws.close()));
    }
  }

  if (isNode) module.exports = ToolDbTrackerAdapter;
  else root.ToolDbTrackerAdapter = ToolDbTrackerAdapter;
})(typeof window !== "undefined" ? window : globalThis);
