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

/// Issue 13 part 2: the page in real headless Chromium (Debian's
/// `/usr/bin/chromium`, driven by playwright-core): no console or page
/// errors and no request elsewhere, the node's address and a connected
/// server shown, and the panel's real tool-db client puts a value (then
/// readable with `tooldb-node get` through the other server), reads it, and
/// sees an update another writer makes to a key it subscribed to. The
/// screenshot's path is printed.
#[test]
fn status_page_in_headless_chromium() {
    common::ensure_harness();
    let a = NodeProc::start(&[]);
    let b = NodeProc::start(&["--peer", &format!("127.0.0.1:{}", a.port)]);
    let b_address = b.health()["address"].as_str().unwrap().to_owned();
    common::wait_for(
        "A to connect to B",
        std::time::Duration::from_secs(20),
        || {
            a.peers()["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["state"] == "connected"))
                .then_some(())
        },
    );
    let a_address = a.health()["address"].as_str().unwrap().to_owned();
    let shot = std::env::temp_dir().join(format!("tooldb-status-page-{}.png", std::process::id()));
    let key = format!("page-{}", std::process::id());
    let value = "put from the status page";
    let out = std::process::Command::new("node")
        .arg(common::interop_dir().join("status-page.js"))
        .args([
            &format!("http://127.0.0.1:{}/", a.port),
            &a_address,
            &b_address,
            &key,
            value,
            shot.to_str().unwrap(),
        ])
        .env("TOOLDB_BIN", env!("CARGO_BIN_EXE_tooldb-node"))
        .env("TOOLDB_PEER", format!("127.0.0.1:{}", b.port))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("status page screenshot: {}", shot.display());
    assert!(shot.exists(), "the screenshot was written");

    // The value the page put is readable from the other server with our CLI.
    let got = std::process::Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args([
            "get",
            &key,
            "--peer",
            &format!("127.0.0.1:{}", b.port),
            "--no-lan",
        ])
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let rec: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(rec["k"], key.as_str(), "{rec}");
    assert_eq!(rec["v"], value, "{rec}");
}
