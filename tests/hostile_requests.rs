//! Hostile requests against a real node process: each attack of the
//! "Hostile peers" issue that the hub answers, with a well-behaved client
//! served meanwhile and the node's memory bounded.
mod common;

use std::time::Instant;

use common::*;
use serde_json::json;
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::now_ms;

#[test]
fn a_subscribe_flood_is_capped_per_client_with_an_error_naming_the_limit() {
    let node = NodeProc::start_env(
        &[],
        &[("TOOLDB_LIMITS__MAX_SUBSCRIPTIONS_PER_CLIENT", "1000")],
    );
    node.wait_healthy();
    let pid = node.child.id();
    let before = rss_kib(pid);
    let (mut flood, _) = RawPeer::client(node.port);
    let id = flood.client_id.clone();
    for i in 0..20_000 {
        flood.send(
            &json!({"type":"subscribe","id":format!("s{i}"),"to":[id],"key":format!("key-{i}")}),
        );
    }
    let refused = count_frames(&mut flood, 19_000, |v| {
        v["type"] == "error"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("most subscriptions"))
    });
    assert_eq!(
        refused, 19_000,
        "every subscription past the cap is refused"
    );
    let p99 = p99_get_ms(node.port, 100);
    let grown = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("subscribe flood: good client p99 {p99:.1} ms, RSS +{grown} MiB");
    assert!(grown < 64, "RSS grew {grown} MiB");
}

#[test]
fn subscribes_with_megabyte_keys_are_refused_and_cost_no_memory() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let pid = node.child.id();
    let before = rss_kib(pid);
    let (mut attacker, _) = RawPeer::client(node.port);
    let id = attacker.client_id.clone();
    let key = "k".repeat(1_000_000);
    for i in 0..50 {
        attacker.send(&json!({"type":"subscribe","id":format!("s{i}"),"to":[id],"key":key}));
    }
    let refused = count_frames(&mut attacker, 50, |v| {
        v["type"] == "error"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_key_bytes"))
    });
    assert_eq!(refused, 50);
    let p99 = p99_get_ms(node.port, 100);
    let grown = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("1 MB keys: good client p99 {p99:.1} ms, RSS +{grown} MiB");
    assert!(grown < 64, "RSS grew {grown} MiB");
}

#[test]
fn a_query_answer_fits_one_frame_and_says_it_was_cut() {
    let node = NodeProc::start_env(&[], &[("TOOLDB_LIMITS__MAX_FRAME_BYTES", "65536")]);
    node.wait_healthy();
    let (mut writer, _) = RawPeer::client(node.port);
    let long = "x".repeat(100);
    for i in 0..1500 {
        writer.put(&format!("q{long}{i}"), json!(i));
    }
    writer.wait_value(&format!("q{long}1499"), &json!(1499));
    let id = new_message_id();
    let cid = writer.client_id.clone();
    writer.send(&json!({"type":"query","id":id,"to":[cid],"key":"q"}));
    let ack = writer.expect("queryAck", |v| {
        v["type"] == "queryAck" && v["id"] == id.as_str()
    });
    let size = ack.to_string().len();
    let keys = ack["keys"].as_array().unwrap().len();
    eprintln!("query: {keys} keys of 1500 in {size} bytes");
    assert!(size <= 65536, "{size}");
    assert!(keys > 100 && keys < 1500, "{keys}");
    assert_eq!(ack["truncated"], true);
}

#[test]
fn junk_pongs_and_false_server_claims_do_not_poison_the_servers_a_node_lists() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let (mut attacker, _) = RawPeer::client(node.port);
    // Signed junk: every record verifies, none names a real server.
    let junk = attacks::junk_servers(600, &attacker.topic, 1);
    let cid = attacker.client_id.clone();
    let start = Instant::now();
    for _ in 0..20 {
        attacker.send(&attacks::pong_listing(&cid, &junk));
    }
    // And a socket that claims to be a server at an endpoint nobody serves.
    let mut claimer = RawPeer::connect(node.port);
    claimer.handshake(true);
    let p99 = p99_get_ms(node.port, 100);
    eprintln!(
        "junk pongs: good client p99 {p99:.1} ms, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (_, pong) = RawPeer::client(node.port);
    assert_eq!(
        pong["servers"].as_array().unwrap().len(),
        1,
        "a new client's pong lists only the node itself: {pong}"
    );
    let peers = node.peers();
    assert!(
        peers["servers"]
            .as_array()
            .is_none_or(|s| s.iter().all(|s| s["state"] != "connected")),
        "{peers}"
    );
}

#[test]
fn a_replayed_ping_is_refused_and_gets_none_of_the_victims_pushes() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let mut victim = RawPeer::connect_with(node.port, NodeKey::generate(KeyScheme::P256));
    let ping = victim.ping_frame(false, &victim.topic.clone(), now_ms());
    victim.send(&ping);
    victim.expect("pong", |v| v["type"] == "pong");
    let cid = victim.client_id.clone();
    victim.send(&json!({"type":"subscribe","id":"s","to":[cid],"key":"secret"}));
    // The same ping, copied off the wire, on another socket.
    let mut thief = RawPeer::connect_with(node.port, NodeKey::generate(KeyScheme::P256));
    let mut replay = ping.clone();
    replay["id"] = json!(new_message_id());
    thief.send(&replay);
    let reason = thief.expect_closed();
    assert!(reason.contains("newer signed peer record"), "{reason}");
    let (mut writer, _) = RawPeer::client(node.port);
    writer.put("secret", json!("for the victim"));
    victim.expect("push", |v| v["type"] == "put" && v["data"]["k"] == "secret");
}

#[test]
fn a_function_call_with_huge_arguments_gets_a_small_answer() {
    let node = NodeProc::start(&[]);
    let (mut caller, _) = RawPeer::client(node.port);
    let args = json!(["a".repeat(900_000)]);
    let name = "f".repeat(10_000);
    for (id, function) in [("known", "peers"), ("unknown", name.as_str())] {
        caller.send(&json!({"type":"function","id":id,"to":[],"function":function,"args":args}));
        let r = caller.expect("functionReturn", |m| m["id"] == id);
        let size = r.to_string().len();
        eprintln!("function {id}: {size} bytes for 900 KB of arguments");
        // Arguments are never echoed: no amplification.
        assert!(size < 4096, "{size}");
    }
}
