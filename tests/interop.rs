//! Interop with the real npm `tool-db` client and server (tests/interop/,
//! installed by `.ci/run`): each test starts our node and runs one harness
//! scenario, then asserts on what the real Tool Db code observed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Point 1: A value put by one Tool Db client is read by a second, fresh client.
#[test]
fn put_then_get_from_a_fresh_client() {
    let node = NodeProc::start(&[]);
    let r = scenario("put-get", &["--server", &node.url()]);
    assert_eq!(r["connected"], json!({"A": true, "B": true}), "{r}");
    assert!(!r["put"].is_null());
    assert_eq!(r["got"], r["put"], "{r}");
}

/// Point 2: `subscribeData` sees another client's later puts, every one of them;
/// Tool Db's own server delivers only the first, as it reuses the subscribe id.
#[test]
fn subscriber_sees_every_later_put() {
    let node = NodeProc::start(&[]);
    let r = scenario("subscribe", &["--server", &node.url(), "--updates", "3"]);
    assert_eq!(r["put"].as_array().unwrap().len(), 3);
    assert_eq!(r["received"], r["put"], "{r}");
}

/// Point 3: User-namespaced data is stored and read back; forged namespaces are refused.
#[test]
fn user_namespace_is_kept_and_forgeries_refused() {
    let node = NodeProc::start(&[]);
    let r = scenario("user-namespace", &["--server", &node.url()]);
    assert!(!r["put"].is_null());
    assert_eq!(r["got"], r["put"], "{r}");
    assert_eq!(r["got_fresh"], r["put"], "a fresh client reads it too: {r}");
    assert!(r["forged"]["got"].is_null(), "{r}");
    assert!(r["forged_other_author"]["got"].is_null(), "{r}");
    let log = node.log();
    assert!(log.contains("AddressMismatch"), "the refusal is logged");
}

/// Point 4: A record with a tampered `v` under the original `h`/`s` is refused
/// (Tool Db itself stores it); the untampered control is served.
#[test]
fn tampered_value_is_refused() {
    let node = NodeProc::start(&[]);
    let r = scenario("tampered", &["--server", &node.url()]);
    assert_eq!(r["control"]["got"], r["control"]["put"], "{r}");
    assert!(r["got"].is_null(), "tampered record served: {r}");
    assert!(r["bad_signature"]["got"].is_null(), "{r}");
    assert!(r["future_timestamp"]["got"].is_null(), "{r}");
}

/// Point 5: Two clients put CRDT changes to one map key; both read the merged map.
#[test]
fn crdt_map_changes_merge() {
    let node = NodeProc::start(&[]);
    let r = scenario("crdt-map", &["--server", &node.url()]);
    let expected = &r["expected"];
    assert!(expected.as_object().is_some_and(|m| m.len() >= 3), "{r}");
    assert_eq!(&r["got_a"], expected, "{r}");
    assert_eq!(&r["got_b"], expected, "{r}");
}

/// Point 6: `queryKeys` by prefix returns exactly the keys put under it.
#[test]
fn query_keys_by_prefix() {
    let node = NodeProc::start(&[]);
    let r = scenario("query", &["--server", &node.url(), "--count", "4"]);
    let mut put: Vec<String> = serde_json::from_value(r["put"].clone()).unwrap();
    put.sort();
    assert_eq!(put.len(), 4);
    assert_eq!(r["got"], json!(put), "{r}");
}

/// Point 7a: A JS Tool Db server (leveldb store) that dials our node replicates
/// puts both ways.
#[test]
fn js_server_dialing_us_replicates_both_ways() {
    let node = NodeProc::start(&[]);
    let js_port = free_port().to_string();
    let r = scenario(
        "js-server",
        &["--server", &node.url(), "--js-port", &js_port],
    );
    assert_eq!(r["peered"], true, "{r}");
    assert_eq!(r["a"]["got"], r["a"]["put"], "JS → ours: {r}");
    assert_eq!(r["b"]["got"], r["b"]["put"], "ours → JS: {r}");
    // CRDT lists cross both ways: the JS server speaks no signed lists, so
    // what it sends is checked as before (its relays of a client's put
    // still hash), and it gets our lists as crdtPuts.
    let crdt = &r["crdt"];
    assert!(
        crdt["expected"].as_object().is_some_and(|m| m.len() == 2),
        "{r}"
    );
    assert_eq!(crdt["got_ours"], crdt["expected"], "{r}");
    assert_eq!(crdt["got_js"], crdt["expected"], "{r}");
    // Our node knows the JS server as a verified server.
    let peers = node.peers();
    let js_addr = r["js_address"].as_str().unwrap();
    assert!(
        peers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["peer"]["address"] == js_addr),
        "{peers}"
    );
}

struct JsServer(Child);

impl Drop for JsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Point 7b: Our node dials a JS Tool Db server with `--peer`; puts replicate
/// both ways.
#[test]
fn we_dial_a_js_server_and_replicate_both_ways() {
    ensure_harness();
    let js_port = free_port();
    let mut child = Command::new("node")
        .arg(interop_dir().join("run.js"))
        .args([
            "js-server-only",
            "--quiet",
            "--js-port",
            &js_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let mut first_line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first_line).unwrap();
    }
    let js = JsServer(child);
    let ready: Value =
        serde_json::from_str(first_line.trim()).expect("js-server-only prints its state");
    assert_eq!(ready["ready"], true, "{ready}");

    let node = NodeProc::start(&["--peer", &format!("127.0.0.1:{js_port}")]);
    let js_client_id = ready["client_id"].as_str().unwrap().to_owned();
    wait_for(
        "our node to connect to the JS server",
        Duration::from_secs(20),
        || {
            let p = node.peers();
            p["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["clientId"] == js_client_id.as_str() && s["state"] == "connected")
                .then_some(())
        },
    );

    // ours → JS
    let (mut raw, _) = RawPeer::client(node.port);
    let value = json!({"from": "rust", "n": 1});
    raw.put("dial-ours", value.clone());
    let r = scenario(
        "get-only",
        &[
            "--server",
            &format!("ws://127.0.0.1:{js_port}"),
            "--key",
            "dial-ours",
        ],
    );
    assert_eq!(r["got"], value, "{r}");

    // JS → ours
    let r = scenario(
        "put-get",
        &[
            "--server",
            &format!("ws://127.0.0.1:{js_port}"),
            "--key",
            "dial-js",
        ],
    );
    assert_eq!(r["got"], r["put"]);
    raw.wait_value("dial-js", &r["put"]);
    drop(js);
}
