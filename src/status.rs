//! The status page at `GET /` (a websocket upgrade on `/` stays the Tool Db
//! peer route), its favicon, and `/status.json`, which the page polls.
//! Plain HTML/CSS/JS embedded in the binary: no build step, no requests to
//! anywhere but the node.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use crate::messages::dht::DhtStatus;
use crate::metrics::{Counters, LabelEnum, Metrics};

pub const INDEX_HTML: &str = include_str!("status/index.html");
pub const FAVICON_SVG: &str = include_str!("status/favicon.svg");
pub const STATUS_JS: &str = include_str!("status/status.js");
pub const PANEL_JS: &str = include_str!("status/panel.js");
/// tool-db's own browser bundle (about 490 kB), vendored unchanged.
pub const TOOL_DB_JS: &str = include_str!("status/tool-db.js");

pub fn script(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-type", "text/javascript; charset=utf-8"))
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

pub fn index() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-type", "text/html; charset=utf-8"))
        .insert_header(("cache-control", "no-cache"))
        .body(INDEX_HTML)
}

pub fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-type", "image/svg+xml"))
        .insert_header(("cache-control", "max-age=86400"))
        .body(FAVICON_SVG)
}

/// Every label of a counter family with its count.
fn counts<L: LabelEnum>(c: &Counters<L>) -> Value {
    let map: Map<String, Value> = L::ALL
        .iter()
        .map(|l| (l.as_str().to_owned(), json!(c.get(*l))))
        .collect();
    Value::Object(map)
}

/// The node's counters, for the page (it computes rates from two polls).
pub fn metrics_json(m: &Metrics) -> Value {
    json!({
        "connections": {
            "inbound_client": m.connections.inbound_client.get(),
            "inbound_server": m.connections.inbound_server.get(),
            "outbound_server": m.connections.outbound_server.get(),
        },
        "connections_accepted": m.connections_accepted.get(),
        "connections_refused": counts(&m.connections_refused),
        "connections_closed": counts(&m.connections_closed),
        "frames_received": m.frames_received.get(),
        "frames_sent": m.frames_sent.get(),
        "puts_accepted": m.puts_accepted.get(),
        "puts_rejected": counts(&m.puts_rejected),
        "dht_lookups": counts(&m.dht_lookups),
        "dht_announces": counts(&m.dht_announces),
        "endpoints_found": counts(&m.endpoints_found),
        "tracker_events": counts(&m.tracker_events),
        "dials": m.dials.get(),
        "dial_failures": counts(&m.dial_failures),
        "anti_entropy_rounds": m.anti_entropy_rounds.get(),
        "anti_entropy_records": m.anti_entropy_records.get(),
        "storage_bytes": m.storage_bytes.get(),
    })
}

/// The DHT's state; `null` with `--no-dht`.
pub fn dht_json(status: Option<&DhtStatus>) -> Value {
    let Some(s) = status else {
        return Value::Null;
    };
    json!({
        "bootstrapped": s.bootstrapped,
        "local_addr": s.local_addr.map(|a| a.to_string()),
        "public_address": s.public_address.map(|a| a.to_string()),
        "reachability": format!("{:?}", s.reachability).to_lowercase(),
        "failures": s.failures,
        "last_error": s.last_error.as_ref().map(|e| e.to_string()),
        "topics": s.topics.iter().map(|t| json!({
            "topic": t.topic,
            "port": t.port,
            "announced": t.announced,
            "searching": t.searching,
            "lookups": t.lookups,
            "last_lookup_endpoints": t.last_lookup_endpoints,
        })).collect::<Vec<_>>(),
    })
}
