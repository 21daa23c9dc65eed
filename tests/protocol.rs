//! The wire protocol against a real `tooldb-node` process, spoken by a raw
//! client with real signatures: handshake rules, bad input, subscriptions,
//! relay between two nodes, durability.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::peer::Peer;
use tooldb_node::record::{now_ms, sign_record};

const QUIET: Duration = Duration::from_millis(600);

#[test]
fn pong_has_the_shape_tool_db_clients_expect() {
    let node = NodeProc::start(&[]);
    let (_p, pong) = RawPeer::client(node.port);
    let health = node.health();
    assert_eq!(pong["clientId"], health["clientId"]);
    assert_eq!(pong["isServer"], true);
    assert_eq!(pong["to"], json!([health["clientId"]]));
    // Itself first in `servers`, with a record that verifies.
    let me = Peer::from_value(&pong["servers"][0]).unwrap();
    assert_eq!(me.address, health["address"].as_str().unwrap());
    assert_eq!(me.port, node.port);
    me.verify_fresh(TOPIC, now_ms(), 60_000).unwrap();
}

#[test]
fn frames_before_ping_are_ignored_then_served() {
    let node = NodeProc::start(&[]);
    let mut p = RawPeer::connect(node.port);
    p.send(&json!({"type":"get","id":"early","to":[],"key":"x"}));
    assert!(p.drain(QUIET).is_empty());
    p.handshake(false);
    p.put("x", json!(1));
    assert_eq!(p.wait_value("x", &json!(1))["data"]["v"], 1);
}

#[test]
fn a_ping_for_another_topic_is_closed_with_a_reason() {
    let node = NodeProc::start(&[]);
    let mut p = RawPeer::connect(node.port);
    let ping = p.ping_frame(false, "some-other-topic", now_ms());
    p.send(&ping);
    let reason = p.expect_closed();
    assert!(reason.contains("topic"), "{reason}");
}

#[test]
fn a_server_ping_that_fails_verification_is_closed() {
    let node = NodeProc::start(&[]);
    // A forged signature.
    let mut p = RawPeer::connect(node.port);
    let mut ping = p.ping_frame(true, TOPIC, now_ms());
    ping["peer"]["port"] = json!(1);
    p.send(&ping);
    assert!(p.expect_closed().contains("server ping refused"));
    // A replayed (stale) record: 20 minutes old, window 10.
    let mut p = RawPeer::connect(node.port);
    let ping = p.ping_frame(true, TOPIC, now_ms() - 20 * 60 * 1000);
    p.send(&ping);
    let reason = p.expect_closed();
    assert!(reason.contains("window"), "{reason}");
    assert!(node.peers()["servers"].as_array().unwrap().is_empty());
}

#[test]
fn an_unverified_client_is_served_but_never_becomes_a_server() {
    let node = NodeProc::start(&[]);
    let mut p = RawPeer::connect(node.port);
    // What real Tool Db clients send before their keys are ready: no valid record.
    p.send(&json!({"type":"ping","id":"p1","to":["whoever"],"clientId":"whoever","isServer":false,"peer":{"topic":TOPIC}}));
    let pong = p.expect("pong", |m| m["type"] == "pong");
    assert_eq!(pong["id"], "p1");
    p.put("anon-key", json!("ok"));
    p.wait_value("anon-key", &json!("ok"));
    let peers = node.peers();
    assert!(peers["servers"].as_array().unwrap().is_empty());
    assert!(!peers["connected"]
        .as_array()
        .unwrap()
        .contains(&json!("whoever")));
}

/// A client cannot claim another's id and inherit its subscriptions.
#[test]
fn a_claimed_client_id_needs_the_matching_peer_record() {
    let node = NodeProc::start(&[]);
    let (mut alice, _) = RawPeer::client(node.port);
    alice.send(&json!({"type":"subscribe","id":new_message_id(),"to":[],"key":"secret"}));
    // Mallory claims Alice's id with her own (valid) record.
    let mut mallory = RawPeer::connect(node.port);
    let mut ping = mallory.ping_frame(false, TOPIC, now_ms());
    ping["clientId"] = json!(alice.client_id);
    mallory.send(&ping);
    mallory.expect("pong", |m| m["type"] == "pong");
    let (mut bob, _) = RawPeer::client(node.port);
    bob.put("secret", json!("for alice"));
    let push = alice.expect("push", |m| m["type"] == "put");
    assert_eq!(push["data"]["v"], "for alice");
    assert!(mallory.drain(QUIET).iter().all(|m| m["type"] != "put"));
}

#[test]
fn malformed_frames_are_tolerated_up_to_a_limit_then_closed() {
    let node = NodeProc::start_env(&[], &[("TOOLDB_LIMITS__MAX_BAD_FRAMES", "3")]);
    let (mut good, _) = RawPeer::client(node.port);
    let (mut bad, _) = RawPeer::client(node.port);
    // Unknown types are extensions, not errors: ignored, socket stays.
    bad.send(&json!({"type":"gossip","id":"e1"}));
    for frame in [
        "this is not json".to_owned(),
        json!({"type":"get","id":"x"}).to_string(), // missing key
        json!({"type":"get","id":"y","key":42}).to_string(), // wrong type
    ] {
        bad.send_text(&frame);
    }
    // Still open after 3 bad frames; a valid request is answered.
    bad.put("still-here", json!(true));
    bad.wait_value("still-here", &json!(true));
    bad.send_text(r#"{"type":"put","id":"z","data":{"k":"a"}}"#);
    let reason = bad.expect_closed();
    assert!(reason.contains("malformed"), "{reason}");
    assert!(node.log().contains("ignored a malformed frame"));
    // Everyone else is still served.
    good.put("after", json!(1));
    good.wait_value("after", &json!(1));
}

#[test]
fn a_frame_over_the_size_limit_closes_with_the_limit_in_the_reason() {
    let node = NodeProc::start_env(&[], &[("TOOLDB_LIMITS__MAX_FRAME_BYTES", "4096")]);
    let (mut big, _) = RawPeer::client(node.port);
    let (mut good, _) = RawPeer::client(node.port);
    big.put("big", json!("x".repeat(8000)));
    let reason = big.expect_closed();
    assert!(reason.contains("4096"), "{reason}");
    good.put("small", json!("y".repeat(1000)));
    good.wait_value("small", &json!("y".repeat(1000)));
}

#[test]
fn a_flood_from_one_socket_is_slowed_not_closed_and_others_are_served() {
    let node = NodeProc::start(&[]);
    let (mut good, _) = RawPeer::client(node.port);
    let (mut flood, _) = RawPeer::client(node.port);
    // Gets of a missing key: no answers, so only the node's intake limits
    // this socket (it was closed at 1,000 frames/s).
    for i in 0..5000 {
        let frame = json!({"type":"get","id":format!("f{i}"),"to":[],"key":"nothing"}).to_string();
        flood
            .ws
            .send(tungstenite::Message::text(frame))
            .expect("the node keeps reading the flood");
        if i == 2500 {
            good.put("calm", json!(1));
        }
    }
    good.wait_value("calm", &json!(1));
    // The flooding socket is still served, after everything it sent.
    flood.wait_value("calm", &json!(1));
}

#[test]
fn repeated_type_and_id_is_processed_once() {
    let node = NodeProc::start(&[]);
    let (mut p, _) = RawPeer::client(node.port);
    p.put("dup", json!(1));
    p.wait_value("dup", &json!(1));
    let get = json!({"type":"get","id":"same-id","to":[],"key":"dup"});
    p.send(&get);
    p.send(&get);
    let answers: Vec<Value> = p
        .drain(QUIET)
        .into_iter()
        .filter(|m| m["id"] == "same-id")
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
}

#[test]
fn pushes_carry_fresh_ids_and_never_repeat_a_hash() {
    let node = NodeProc::start(&[]);
    let (mut sub, _) = RawPeer::client(node.port);
    let sub_id = new_message_id();
    sub.send(&json!({"type":"subscribe","id":sub_id,"to":[],"key":"feed"}));
    let (mut writer, _) = RawPeer::client(node.port);
    let t = now_ms();
    let (_, rec1) = writer.put_at("feed", json!(1), t);
    let p1 = sub.expect("first push", |m| m["type"] == "put");
    writer.put_at("feed", json!(2), t + 1);
    let p2 = sub.expect("second push", |m| m["type"] == "put");
    assert_eq!(
        (p1["data"]["v"].clone(), p2["data"]["v"].clone()),
        (json!(1), json!(2))
    );
    assert_ne!(p1["id"], p2["id"]);
    assert_ne!(p1["id"], sub_id.as_str());
    // The same record again, under a new message id: nothing new to push.
    writer.send(&json!({"type":"put","id":new_message_id(),"to":[],"data":rec1}));
    assert!(sub.drain(QUIET).iter().all(|m| m["type"] != "put"));
}

#[test]
fn subscriptions_survive_a_reconnect_of_the_same_client() {
    let node = NodeProc::start(&[]);
    let key = NodeKey::generate(KeyScheme::P256);
    let secret = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        key.save(&path).unwrap();
        (dir, path)
    };
    let mut a = RawPeer::connect_with(node.port, key);
    a.handshake(false);
    a.send(&json!({"type":"subscribe","id":new_message_id(),"to":[],"key":"news"}));
    a.drain(Duration::from_millis(200));
    drop(a);
    let key = NodeKey::load_or_create(&secret.1, KeyScheme::P256).unwrap();
    let mut a = RawPeer::connect_with(node.port, key);
    a.handshake(false);
    let (mut b, _) = RawPeer::client(node.port);
    b.put("news", json!("while you were away"));
    let push = a.expect("push after reconnect", |m| m["type"] == "put");
    assert_eq!(push["data"]["v"], "while you were away");
}

#[test]
fn a_get_of_a_missing_key_gets_no_answer() {
    let node = NodeProc::start(&[]);
    let (mut p, _) = RawPeer::client(node.port);
    assert!(p.get("nowhere", QUIET).is_none());
}

#[test]
fn frozen_keys_keep_their_first_writer() {
    let node = NodeProc::start(&[]);
    let (mut owner, _) = RawPeer::client(node.port);
    let (mut thief, _) = RawPeer::client(node.port);
    let t = now_ms();
    owner.put_at("==name", json!("mine"), t);
    owner.wait_value("==name", &json!("mine"));
    thief.put_at("==name", json!("stolen"), t + 1);
    // Tool Db says nothing; we answer with an error naming the rule.
    let answers = thief.drain(QUIET);
    assert!(
        answers.iter().all(|v| v["type"] == "error"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("CantOverwrite"))),
        "{answers:?}"
    );
    assert_eq!(thief.get("==name", QUIET).unwrap()["data"]["v"], "mine");
}

#[test]
fn server_functions_answer_and_unknown_ones_say_not_found() {
    let node = NodeProc::start(&[]);
    let (mut p, _) = RawPeer::client(node.port);
    p.send(&json!({"type":"function","id":"f1","to":[],"function":"peers","args":[]}));
    let r = p.expect("functionReturn", |m| m["id"] == "f1");
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("functionReturn"), Some("OK"))
    );
    assert!(r["return"].is_array());
    p.send(&json!({"type":"function","id":"f2","to":[],"function":"nope","args":[]}));
    let r = p.expect("functionReturn", |m| m["id"] == "f2");
    assert_eq!(r["code"], "NOT_FOUND");
}

#[test]
fn crdt_changes_from_two_writers_are_unioned() {
    let node = NodeProc::start(&[]);
    let (mut a, _) = RawPeer::client(node.port);
    let make = |p: &RawPeer, changes: Value, t: u64| {
        // CRDT records are signed like plain ones, over their change list.
        let rec = sign_record(&p.key, "doc", &changes, t);
        let mut v: Value = serde_json::from_str(rec.raw()).unwrap();
        v["c"] = json!("MAP");
        v
    };
    let t = now_ms();
    let ra = make(&a, json!([{"t":"SET","k":"x","a":"A","v":1,"i":1}]), t + 10);
    a.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":ra}));
    let (mut b, _) = RawPeer::client(node.port);
    // Older than A's: Tool Db would drop it; we keep the union.
    let rb = make(&b, json!([{"t":"SET","k":"y","a":"B","v":2,"i":1}]), t);
    b.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":rb}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let id = new_message_id();
        a.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"doc"}));
        let answer = a.expect("crdtPut answer", |m| m["id"] == id.as_str());
        assert_eq!(
            answer["type"], "crdtPut",
            "a crdtGet is answered by crdtPut only"
        );
        if answer["data"]["v"].as_array().unwrap().len() == 2 {
            assert_eq!(answer["data"]["t"], t + 10, "the newer metadata is kept");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never merged: {answer}"
        );
    }
}

#[test]
fn health_and_peers_over_http() {
    let node = NodeProc::start(&[]);
    let (_p, _) = RawPeer::client(node.port);
    let h = node.health();
    assert_eq!(h["status"], "serving");
    assert_eq!(h["topic"], TOPIC);
    let (status, head, body) = http_get_full(node.port, "/peers").unwrap();
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{head}"
    );
    let peers: Value = serde_json::from_str(&body).unwrap();
    Peer::from_value(&peers["self"])
        .unwrap()
        .verify_signature()
        .unwrap();
    assert!(peers["servers"].is_array());
    wait_for("the client in /peers", Duration::from_secs(5), || {
        (node.peers()["connected"].as_array().unwrap().len() == 1).then_some(())
    });
    let (status, body) = http_get(node.port, "/").unwrap();
    assert_eq!(status, 200, "plain HTTP on / is the status page");
    assert!(body.contains("tooldb-node status"), "{body}");
}

#[test]
fn node_key_is_private_and_kept_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let mut node = NodeProc::start_in(&dir, port, &[]);
    let address = node.health()["address"].clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("node-key.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    node.kill();
    let node = NodeProc::start_in(&dir, free_port(), &[]);
    assert_eq!(node.health()["address"], address);
}

/// A write that a get returned survives `kill -9`.
#[test]
fn a_read_write_survives_kill_dash_nine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut node = NodeProc::start_in(&dir, free_port(), &[]);
    let (mut p, _) = RawPeer::client(node.port);
    for i in 0..20 {
        p.put(&format!("durable-{i}"), json!(i));
    }
    p.wait_value("durable-19", &json!(19));
    node.kill();
    let node = NodeProc::start_in(&dir, free_port(), &[]);
    let (mut p, _) = RawPeer::client(node.port);
    for i in 0..20 {
        assert_eq!(
            p.get(&format!("durable-{i}"), Duration::from_secs(5))
                .unwrap()["data"]["v"],
            i
        );
    }
}

/// Two nodes joined with --peer replicate puts both ways and answer gets
/// for keys only the other one had.
#[test]
fn two_peered_nodes_replicate_and_relay_gets() {
    let b = NodeProc::start(&[]);
    let (mut cb, _) = RawPeer::client(b.port);
    cb.put("before-peering", json!("on b only"));
    cb.wait_value("before-peering", &json!("on b only"));

    let a = NodeProc::start(&["--peer", &format!("127.0.0.1:{}", b.port)]);
    let b_id = b.health()["clientId"].clone();
    wait_for("a connected to b", Duration::from_secs(15), || {
        connected_to(&a, &b_id).then_some(())
    });
    let (mut ca, _) = RawPeer::client(a.port);
    // A get a cannot answer is relayed to b, and b's answer passed back.
    let got = ca
        .get("before-peering", Duration::from_secs(5))
        .expect("relayed answer");
    assert_eq!(got["data"]["v"], "on b only");
    // Live puts replicate both ways.
    ca.put("from-a", json!(1));
    cb.wait_value("from-a", &json!(1));
    cb.put("from-b", json!(2));
    ca.wait_value("from-b", &json!(2));
    // b learns a as a server from a's ping, once its own dial back to a's
    // signed endpoint proves the claim (asynchronous: poll).
    let a_id = a.health()["clientId"].clone();
    wait_for("b to list a as a server", Duration::from_secs(15), || {
        b.peers()["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["clientId"] == a_id)
            .then_some(())
    });
}

/// Equal timestamps: every server keeps the record with the larger hash,
/// whichever it saw first.
#[test]
fn equal_timestamps_converge_on_the_larger_hash() {
    let b = NodeProc::start(&[]);
    let a = NodeProc::start(&["--peer", &format!("127.0.0.1:{}", b.port)]);
    let b_id = b.health()["clientId"].clone();
    wait_for("a connected to b", Duration::from_secs(15), || {
        connected_to(&a, &b_id).then_some(())
    });
    let (mut ca, _) = RawPeer::client(a.port);
    let (mut cb, _) = RawPeer::client(b.port);
    let t = now_ms();
    let ra = sign_record(&ca.key, "tie", &json!("from a"), t);
    let rb = sign_record(&cb.key, "tie", &json!("from b"), t);
    let winner = if ra.hash > rb.hash {
        "from a"
    } else {
        "from b"
    };
    let va: Value = serde_json::from_str(ra.raw()).unwrap();
    let vb: Value = serde_json::from_str(rb.raw()).unwrap();
    ca.send(&json!({"type":"put","id":new_message_id(),"to":[],"data":va}));
    cb.send(&json!({"type":"put","id":new_message_id(),"to":[],"data":vb}));
    ca.wait_value("tie", &json!(winner));
    cb.wait_value("tie", &json!(winner));
}

/// Flags beat TOOLDB_* variables, which beat the --config file.
#[test]
fn configuration_precedence() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("node.toml");
    std::fs::write(
        &file,
        "topic = \"from-file\"\n[limits]\nmax_frame_bytes = 2048\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let node = NodeProc::start_env(&["--config", f], &[("TOOLDB_TOPIC", "from-env")]);
    assert_eq!(node.health()["topic"], "from-env");
    // The file's limit applies (no flag or variable overrides it).
    let mut p = RawPeer::connect(node.port);
    p.send_text(&"x".repeat(3000));
    assert!(p.expect_closed().contains("2048"));
    let node = NodeProc::start_env(
        &["--config", f, "--topic", "from-flag"],
        &[("TOOLDB_TOPIC", "from-env")],
    );
    assert_eq!(node.health()["topic"], "from-flag");
}

/// A server that dials us and keeps that link (its address is the
/// smaller) closes our dial back, the proof of its claim, right after its
/// pong, as it resolves the duplicate. The pong still proves it: the node
/// lists it as a connected server. (Seen in CI: the dial back stopped at
/// the close while the pong was still being verified, and the node served
/// the other server as a client for good.)
#[test]
fn a_dial_back_closed_right_after_its_pong_still_proves_the_server() {
    let node = NodeProc::start(&[]);
    // proved_server_with waits until the node lists the peer as connected.
    let (_peer, pong) = RawPeer::proved_server_with(&node, Value::Null, true);
    assert_eq!(pong["type"], "pong");
    assert!(
        node.log()
            .contains("an inbound server link is verified by our dial"),
        "{}",
        node.log()
    );
}

/// A server that closes each of our dials after reading its ping gets
/// `give_up_after` (3) dials before the node hands the endpoint back. The
/// old run's writer used to stop the next dial as soon as it started, so
/// each close counted twice and the node gave up after 2.
#[test]
fn each_closed_dial_counts_one_failure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pings = Arc::new(AtomicUsize::new(0));
    let seen = pings.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(20) {
            let Ok(mut ws) = tungstenite::accept(stream) else {
                continue;
            };
            if let Ok(tungstenite::Message::Text(t)) = ws.read() {
                if t.contains("\"ping\"") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    });
    let node = NodeProc::start(&["--peer", &format!("127.0.0.1:{port}")]);
    wait_for(
        "the node to give the endpoint up",
        Duration::from_secs(20),
        || {
            node.log()
                .contains("giving this endpoint back to the registry")
                .then_some(())
        },
    );
    // The next dial waits out the quarantine (5 s), so this is the count.
    assert_eq!(pings.load(Ordering::SeqCst), 3, "{}", node.log());
}
