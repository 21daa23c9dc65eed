//! The status page at `GET /`, its assets and `/status.json`; a websocket
//! upgrade on `/` is still the Tool Db peer route.

mod common;

use common::{http_get, http_get_full, NodeProc, RawPeer};
use serde_json::Value;

#[test]
fn status_page_assets_and_json() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let address = node.health()["address"].as_str().unwrap().to_owned();

    let (status, head, body) = http_get_full(node.port, "/").expect("GET / answers");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("<title>tooldb-node status</title>"), "{body}");
    assert!(body.contains("/status.js"), "{body}");

    let (status, head, body) = http_get_full(node.port, "/favicon.ico").expect("favicon");
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("<svg"), "{body}");
    let (status, _, js) = http_get_full(node.port, "/status.js").expect("status.js");
    assert_eq!(status, 200);
    assert!(js.contains("/status.json"));

    // A client connected shows in the JSON, with the node's identity.
    let (mut peer, _) = RawPeer::client(node.port);
    let (status, body) = http_get(node.port, "/status.json").expect("status.json");
    assert_eq!(status, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["address"], address.as_str());
    assert_eq!(st["topic"], common::TOPIC);
    assert_eq!(st["dht_enabled"], false);
    assert!(st["dht"].is_null());
    assert!(st["servers"].is_array());
    assert!(
        st["connected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == peer.client_id.as_str()),
        "{st}"
    );
    let m = &st["metrics"];
    for field in [
        "puts_accepted",
        "anti_entropy_rounds",
        "dials",
        "connections_accepted",
    ] {
        assert!(m[field].is_u64(), "{field} in {m}");
    }
    assert!(m["puts_rejected"]["invalid_signature"].is_u64(), "{m}");
    assert!(m["dht_lookups"].is_object(), "{m}");

    // The websocket on / still speaks Tool Db.
    peer.put("status-k", serde_json::json!("v"));
    peer.wait_value("status-k", &serde_json::json!("v"));
    let (_, body) = http_get(node.port, "/status.json").unwrap();
    let st: Value = serde_json::from_str(&body).unwrap();
    assert!(
        st["metrics"]["puts_accepted"].as_u64().unwrap() >= 1,
        "{st}"
    );
}
