"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var esc = function (s) {
    return String(s == null ? "" : s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  };
  var rows = function (pairs) {
    return pairs.map(function (p) { return "<tr><th>" + esc(p[0]) + "</th><td>" + p[1] + "</td></tr>"; }).join("");
  };
  var nonzero = function (o) {
    var parts = Object.keys(o || {}).filter(function (k) { return o[k]; }).map(function (k) { return esc(k) + " " + o[k]; });
    return parts.length ? parts.join(", ") : '<span class="muted">none</span>';
  };
  var ago = function (ms, now) {
    if (!ms) return "";
    var s = Math.max(0, Math.round((now - ms) / 1000));
    return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
  };
  var prev = null;
  function render(st) {
    $("address").textContent = st.address;
    $("clientId").textContent = st.clientId;
    $("topic").textContent = st.topic;
    $("advertised").textContent = st.self ? st.self.host + ":" + st.self.port : "";
    var m = st.metrics, rate = "";
    if (prev) {
      var dt = (st.now - prev.now) / 1000;
      if (dt > 0) rate = ((m.puts_accepted - prev.metrics.puts_accepted) / dt).toFixed(1);
    }
    prev = st;
    $("traffic").innerHTML = rows([
      ["puts/s", esc(rate || "…")],
      ["puts accepted", m.puts_accepted],
      ["rejected", nonzero(m.puts_rejected)],
      ["connections", "clients " + m.connections.inbound_client + ", servers in " + m.connections.inbound_server + ", out " + m.connections.outbound_server],
      ["refused", nonzero(m.connections_refused)],
      ["anti-entropy", m.anti_entropy_rounds + " rounds, " + m.anti_entropy_records + " records"],
      ["storage", Math.round(m.storage_bytes / 1024) + " KiB"],
    ]);
    var d = st.dht;
    var drows = [];
    if (!st.dht_enabled) drows.push(["DHT", '<span class="muted">off (--no-dht)</span>']);
    else if (!d) drows.push(["DHT", '<span class="bad">no answer</span>']);
    else {
      drows.push(["bootstrapped", d.bootstrapped ? '<span class="ok">yes</span>' : '<span class="bad">no</span>']);
      drows.push(["public address", esc(d.public_address || "unknown")]);
      drows.push(["reachability", esc(d.reachability)]);
      (d.topics || []).forEach(function (t) {
        drows.push(["topic " + t.topic, (t.announced ? "announced" : "not announced") + ", " + t.lookups + " lookups, last found " + t.last_lookup_endpoints + (t.searching ? ", searching" : "")]);
      });
      if (d.last_error) drows.push(["last error", '<span class="bad">' + esc(d.last_error) + "</span>"]);
    }
    drows.push(["lookups", nonzero(m.dht_lookups)]);
    drows.push(["announces", nonzero(m.dht_announces)]);
    drows.push(["endpoints found", nonzero(m.endpoints_found)]);
    drows.push(["dials", m.dials + " (failed: " + nonzero(m.dial_failures) + ")"]);
    $("dht").innerHTML = rows(drows);
    var servers = st.servers || [];
    $("servers").innerHTML = servers.length
      ? "<tr><th>server</th><th>state</th><th>details</th></tr>" + servers.map(function (s) {
          var extra = Object.keys(s).filter(function (k) { return ["address", "state"].indexOf(k) < 0; })
            .map(function (k) { return esc(k) + ": " + esc(typeof s[k] === "object" ? JSON.stringify(s[k]) : s[k]); }).join("<br>");
          return '<tr><td class="mono">' + esc(s.address) + "</td><td>" + esc(typeof s.state === "object" ? JSON.stringify(s.state) : s.state) + '</td><td class="mono">' + extra + "</td></tr>";
        }).join("")
      : '<tr><td class="muted">no servers known</td></tr>';
    var eps = st.endpoints || [];
    $("endpoints").textContent = eps.length ? "other endpoints: " + eps.map(function (e) { return typeof e === "object" ? JSON.stringify(e) : e; }).join(", ") : "";
    var c = st.connected || [];
    $("nclients").textContent = c.length;
    $("clients").innerHTML = c.map(esc).join("<br>") || '<span class="muted">none</span>';
    $("live").textContent = "live, " + new Date(st.now).toLocaleTimeString();
    $("live").className = "ok";
    window.__status = st;
  }
  function poll() {
    fetch("/status.json", { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(render)
      .catch(function (e) { $("live").textContent = "node unreachable"; $("live").className = "bad"; })
      .then(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
