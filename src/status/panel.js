"use strict";
// The panel: the real tool-db browser client (/tool-db.js, window.tooldb)
// against this node, with a WebCrypto P-256 user (as @tool-db/ecdsa-user
// signs), an in-memory store and a browser WebSocket network adapter.
(function () {
  // Records signed with secp256k1 (Web3 users, our CLI's default) do not
  // verify here, as with @tool-db/ecdsa-user: the panel is a P-256 client.
  var T = window.tooldb;
  var $ = function (id) { return document.getElementById(id); };
  var out = function (line) { $("out").textContent = line + "\n" + $("out").textContent; };
  var state = function (s, cls) { $("panelState").textContent = s; $("panelState").className = cls || "muted"; };
  var ALG = { name: "ECDSA", namedCurve: "P-256" };
  var SIG = { name: "ECDSA", hash: { name: "SHA-256" } };
  var bytes = function (s) { return new Uint8Array(T.stringToArrayBuffer(s)); };
  var keys = null, address = "";

  function User(db) { T.ToolDbUserAdapter.call(this, db); }
  User.prototype = Object.create(T.ToolDbUserAdapter.prototype);
  User.prototype.constructor = User;
  User.prototype.anonUser = function () { return Promise.resolve(); };
  User.prototype.signData = function (data) {
    return crypto.subtle.sign(SIG, keys.privateKey, bytes(data)).then(T.arrayBufferToHex);
  };
  User.prototype.verifySignature = function (m) {
    if (!m.h || !m.a || !m.s) return Promise.resolve(false);
    var jwk = { kty: "EC", crv: "P-256", x: m.a.slice(0, 43), y: m.a.slice(43), ext: true };
    return crypto.subtle.importKey("jwk", jwk, ALG, true, ["verify"])
      .then(function (k) { return crypto.subtle.verify(SIG, k, new Uint8Array(T.hexToArrayBuffer(m.s)), bytes(m.h)); })
      .catch(function () { return false; });
  };
  User.prototype.getAddress = function () { return address; };
  User.prototype.getUsername = function () { return "status-page"; };

  function Store(db, name) { T.ToolDbStorageAdapter.call(this, db, name); this.map = new Map(); }
  Store.prototype = Object.create(T.ToolDbStorageAdapter.prototype);
  Store.prototype.constructor = Store;
  Store.prototype.put = function (k, d) { this.map.set(k, d); return Promise.resolve(true); };
  Store.prototype.get = function (k) {
    return this.map.has(k) ? Promise.resolve(this.map.get(k)) : Promise.reject(new Error("not found"));
  };
  Store.prototype.query = function (k) {
    var hi = k + "\uffff";
    return Promise.resolve(Array.from(this.map.keys()).filter(function (x) { return x >= k && x <= hi; }).sort());
  };

  function Net(db) {
    T.ToolDbNetworkAdapter.call(this, db);
    var self = this;
    db.once("init", function () { self.dial(); });
  }
  Net.prototype = Object.create(T.ToolDbNetworkAdapter.prototype);
  Net.prototype.constructor = Net;
  Net.prototype.dial = function () {
    var self = this, clientId = "";
    var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/");
    ws.onopen = function () {
      self.craftPingMessage().then(function (msg) { ws.send(msg); });
    };
    ws.onmessage = function (ev) {
      self.onClientMessage(String(ev.data), clientId, function (id) {
        clientId = id;
        self.isClientConnected[id] = function () { return ws.readyState === WebSocket.OPEN; };
        self.clientToSend[id] = function (msg) { if (ws.readyState === WebSocket.OPEN) ws.send(msg); };
        state("connected to this node as " + address.slice(0, 12) + "…", "ok");
        window.__panelConnected = true;
      });
    };
    ws.onclose = function () {
      window.__panelConnected = false;
      state("disconnected; reconnecting…", "bad");
      setTimeout(function () { self.dial(); }, 2000);
    };
  };

  var db = null;
  var topic = "tool-db-default";
  fetch("/status.json", { cache: "no-store" })
    .then(function (r) { return r.json(); })
    .then(function (st) { topic = st.topic; })
    .then(function () { return crypto.subtle.generateKey(ALG, true, ["sign", "verify"]); })
    .then(function (k) {
      keys = k;
      return crypto.subtle.exportKey("jwk", k.publicKey);
    })
    .then(function (jwk) {
      address = jwk.x + jwk.y;
      db = new T.ToolDb({
        peers: [],
        server: false,
        networkAdapter: Net,
        storageAdapter: Store,
        userAdapter: User,
        storageName: "status-page",
        topic: topic,
      });
      window.__panelDb = db;
      state("connecting…");
    })
    .catch(function (e) { state("the client did not start: " + e, "bad"); });

  var show = function (v) { return JSON.stringify(v); };
  $("put").onclick = function () {
    var k = $("key").value, v = $("value").value;
    db.putData(k, v, false).then(function (m) {
      out(m ? "put " + k + " = " + show(v) : "put " + k + " failed");
      if (m) window.__lastPut = { key: k, value: v };
    });
  };
  $("get").onclick = function () {
    var k = $("key").value;
    db.getData(k, false, 3000).then(function (v) { out("get " + k + " → " + show(v)); });
  };
  $("sub").onclick = function () {
    var k = $("key").value;
    db.addKeyListener(k, function (rec) { out("update " + k + " → " + show(rec.v)); });
    db.subscribeData(k, false);
    out("subscribed to " + k);
  };
})();
