//! Anti-entropy: servers of ours reconcile their stores when they connect,
//! so nothing written while one was down or cut off is lost, with no client
//! re-sending; and what arrives this way is verified like any other write.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::now_ms;

fn local_keys(node: &NodeProc, prefix: &str) -> Vec<String> {
    // A query is answered from the local store only.
    let (mut c, _) = RawPeer::client(node.port);
    let id = new_message_id();
    c.send(&json!({"type":"query","id":id,"to":[],"key":prefix}));
    let ack = c.expect("queryAck", |m| m["id"] == id.as_str());
    let mut keys: Vec<String> = serde_json::from_value(ack["keys"].clone()).unwrap();
    keys.sort();
    keys
}

fn wait_keys(node: &NodeProc, prefix: &str, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} keys under {prefix}"),
        Duration::from_secs(30),
        || {
            let keys = local_keys(node, prefix);
            (keys.len() == n).then_some(keys)
        },
    )
}

/// A server that was down while writes happened has them all once it is
/// back, though no client sent them again.
#[test]
fn a_server_down_during_writes_gets_them_all_back() {
    let a = NodeProc::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let port = free_port();
    let peer = format!("127.0.0.1:{}", a.port);
    let mut b = NodeProc::start_in(&dir, port, &["--peer", &peer]);
    let a_id = a.health()["clientId"].clone();
    wait_for("b connected to a", Duration::from_secs(15), || {
        connected_to(&b, &a_id).then_some(())
    });
    b.kill();
    let (mut ca, _) = RawPeer::client(a.port);
    for i in 0..30 {
        ca.put(&format!("missed-{i:02}"), json!(i));
    }
    ca.wait_value("missed-29", &json!(29));
    let b = NodeProc::start_in(&dir, port, &["--peer", &peer]);
    let keys = wait_keys(&b, "missed-", 30);
    assert_eq!(keys.first().map(String::as_str), Some("missed-00"));
    assert!(b.log().contains("reconcile") || a.log().contains("reconcile"));
}

/// Two servers that took different writes while apart end with the union,
/// and the same winner for a key written on both.
#[test]
fn stores_that_diverged_converge_on_the_winners() {
    let a = NodeProc::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let port = free_port();
    let b = NodeProc::start_in(&dir, port, &[]);
    let (mut ca, _) = RawPeer::client(a.port);
    let (mut cb, _) = RawPeer::client(b.port);
    let t = now_ms();
    for i in 0..20 {
        ca.put(&format!("d-a{i:02}"), json!(i));
        cb.put(&format!("d-b{i:02}"), json!(i));
    }
    ca.put_at("d-both", json!("older"), t);
    cb.put_at("d-both", json!("newer"), t + 1);
    cb.wait_value("d-both", &json!("newer"));
    ca.wait_value("d-both", &json!("older"));
    drop((ca, cb));
    let mut b = b;
    b.kill();
    let b = NodeProc::start_in(&dir, port, &["--peer", &format!("127.0.0.1:{}", a.port)]);
    for n in [&a, &b] {
        let keys = wait_keys(n, "d-", 41);
        assert_eq!(keys.len(), 41);
        let (mut c, _) = RawPeer::client(n.port);
        assert_eq!(
            c.wait_value("d-both", &json!("newer"))["data"]["v"],
            "newer"
        );
    }
}

/// A peer that claims to be one of our servers can steer what we ask for,
/// but a record it then sends is verified like any client's.
#[test]
fn records_arriving_by_reconciliation_are_verified() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let (mut fake, pong) = RawPeer::proved_server(&node, json!({"reconcile": 1}));
    assert_eq!(
        pong["ext"]["reconcile"], 1,
        "we offer the extension to servers: {pong}"
    );
    // "I hold `slipped` in the whole key space": the node asks for it.
    fake.send(&json!({"type":"reconcile","id":new_message_id(),"to":[],
        "step":{"kind":"items","range":{"lo":null,"hi":null},"items":[["slipped","00"]]}}));
    // (The node may also start its own round: skip its range steps.)
    let need = fake.expect("a need step", |m| {
        m["type"] == "reconcile" && m["step"]["kind"] == "need"
    });
    assert_eq!(need["step"], json!({"kind":"need","keys":["slipped"]}));
    // It answers with a tampered record: refused.
    let rec = tooldb_node::record::sign_record(&fake.key, "slipped", &json!("honest"), now_ms());
    let mut forged: Value = serde_json::from_str(rec.raw()).unwrap();
    forged["v"] = json!("forged");
    fake.send(&json!({"type":"put","id":new_message_id(),"to":[],"data":forged}));
    let (mut reader, _) = RawPeer::client(node.port);
    assert!(reader.get("slipped", Duration::from_millis(800)).is_none());
    assert!(node.log().contains("InvalidHashNonce"));
}

/// Signs a MAP list of one change (`field` set by `peer`) for `key` and
/// sends it.
fn put_list(peer: &mut RawPeer, key: &str, field: &str) {
    let changes = json!([set_change(peer, field)]);
    let rec = tooldb_node::record::sign_record_with(
        &peer.key,
        key,
        &changes,
        now_ms(),
        Some(tooldb_node::record::CrdtKind::Map),
        0,
    );
    let data: Value = serde_json::from_str(rec.raw()).unwrap();
    peer.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":data}));
}

fn set_change(peer: &RawPeer, field: &str) -> Value {
    json!({"t":"SET","k":field,"a":peer.key.address(),"v":field,"i":1})
}

/// The changes `node` answers a crdtGet of `key` with (a fresh client:
/// the answer may come from the node's store or through a relay).
fn crdt_fields(node: &NodeProc, key: &str) -> Vec<String> {
    let (mut c, _) = RawPeer::client(node.port);
    let id = new_message_id();
    c.send(&json!({"type":"crdtGet","id":id,"to":[],"key":key}));
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        if let Some(m) = c
            .drain(Duration::from_millis(100))
            .into_iter()
            .find(|m| m["id"] == id.as_str())
        {
            let mut fields: Vec<String> = m["data"]["v"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ch| ch["k"].as_str().map(str::to_owned))
                .collect();
            fields.sort();
            return fields;
        }
    }
    vec![]
}

fn wait_fields(node: &NodeProc, key: &str, want: &[&str]) {
    wait_for(
        &format!("{key} holding {want:?}"),
        Duration::from_secs(30),
        || (crdt_fields(node, key) == want).then_some(()),
    );
}

/// CRDT keys written on two of our servers while apart converge on the
/// union when they reconcile: each side sends the other its signed lists
/// (a merged set would be refused as not hashing to its signature).
#[test]
fn crdt_keys_written_apart_converge_by_reconciliation() {
    let a = NodeProc::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let port = free_port();
    let b = NodeProc::start_in(&dir, port, &[]);
    let (mut ca, _) = RawPeer::client(a.port);
    let (mut cb, _) = RawPeer::client(b.port);
    let (mut ca2, _) = RawPeer::client(a.port);
    put_list(&mut ca, "doc", "from-a");
    put_list(&mut ca2, "doc", "from-a2");
    put_list(&mut cb, "doc", "from-b");
    wait_fields(&a, "doc", &["from-a", "from-a2"]);
    wait_fields(&b, "doc", &["from-b"]);
    // b dials a: they reconcile on connect.
    let mut b = b;
    b.kill();
    let b = NodeProc::start_in(&dir, port, &["--peer", &format!("127.0.0.1:{}", a.port)]);
    for n in [&a, &b] {
        wait_fields(n, "doc", &["from-a", "from-a2", "from-b"]);
    }
    no_hash_refusals(&[&a, &b]);
}

/// A server started with `--peer` to `a` (and `env`), once connected to it.
fn peer_of(a: &NodeProc, env: &[(&str, &str)]) -> NodeProc {
    let peer = format!("127.0.0.1:{}", a.port);
    let b = NodeProc::start_env(&["--peer", &peer], env);
    let a_id = a.health()["clientId"].clone();
    wait_for("b connected to a", Duration::from_secs(15), || {
        connected_to(&b, &a_id).then_some(())
    });
    b
}

/// No server refused a CRDT record as not hashing to its signature.
fn no_hash_refusals(nodes: &[&NodeProc]) {
    for n in nodes {
        assert!(!n.log().contains("InvalidHashNonce"), "{}", n.log());
    }
}

/// Between two of our servers, without anti-entropy: a crdtPut is relayed
/// as the signed list it came as, and a crdtGet one server cannot answer
/// is answered by the other with its signed lists (`crdtLists`), which
/// the asker verifies and merges before it answers its client.
#[test]
fn crdt_changes_travel_between_our_servers_as_signed_lists() {
    let no_records = [("TOOLDB_PEERING__RECONCILE_MAX_RECORDS", "0")];
    let a = NodeProc::start_env(&[], &no_records);
    let (mut ca, _) = RawPeer::client(a.port);
    let (mut ca2, _) = RawPeer::client(a.port);
    put_list(&mut ca, "kept", "one");
    put_list(&mut ca2, "kept", "two");
    wait_fields(&a, "kept", &["one", "two"]);
    let b = peer_of(&a, &no_records);
    // b lacks the key: it asks a, which answers with both lists.
    wait_fields(&b, "kept", &["one", "two"]);
    // A new list on b is relayed to a as it came.
    let (mut cb, _) = RawPeer::client(b.port);
    put_list(&mut cb, "kept", "three");
    wait_fields(&a, "kept", &["one", "three", "two"]);
    wait_fields(&b, "kept", &["one", "three", "two"]);
    no_hash_refusals(&[&a, &b]);
}

/// A merged set from a server that speaks no signed lists (as a JS Tool Db
/// server sends) is kept, but not relayed to a server of ours: that one
/// would refuse it as not hashing to its signature (and count it against
/// the link), and gets the signed lists instead when it asks.
#[test]
fn a_merged_set_from_a_js_server_is_not_relayed_to_servers_of_ours() {
    let no_records = [("TOOLDB_PEERING__RECONCILE_MAX_RECORDS", "0")];
    let a = NodeProc::start_env(&[], &no_records);
    a.wait_healthy();
    let b = peer_of(&a, &no_records);
    let (mut owner, _) = RawPeer::client(a.port);
    put_list(&mut owner, "js-doc", "signed");
    wait_fields(&a, "js-doc", &["signed"]);
    wait_fields(&b, "js-doc", &["signed"]);
    // The JS server's union, under the owner's h and s.
    let (mut js, _) = RawPeer::proved_server(&a, json!({"reconcile": 1}));
    let rec = tooldb_node::record::sign_record_with(
        &owner.key,
        "js-doc",
        &json!([set_change(&owner, "signed")]),
        now_ms(),
        Some(tooldb_node::record::CrdtKind::Map),
        0,
    );
    let mut merged: Value = serde_json::from_str(rec.raw()).unwrap();
    merged["v"] = json!([set_change(&owner, "signed"), set_change(&js, "unsigned")]);
    js.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":merged}));
    wait_fields(&a, "js-doc", &["signed", "unsigned"]);
    // A later write on a reaches b after anything a relayed before it.
    owner.put("js-marker", json!(1));
    let (mut reader, _) = RawPeer::client(b.port);
    reader.wait_value("js-marker", &json!(1));
    assert_eq!(crdt_fields(&b, "js-doc"), ["signed"]);
    no_hash_refusals(&[&b]);
}
