//! Hostile records against a real node process: the "Hostile peers"
//! issue's attacks on data (re-keyed replays, injected CRDT changes,
//! back-dated frozen keys, far-future writes, change sets grown without
//! end, answers that amplify), each refused with an error naming the rule.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::{now_ms, sign_record, sign_record_with, CrdtKind};
use tungstenite::stream::MaybeTlsStream;

/// Sends `data` as `kind` and waits for the error frame answering it.
fn send_refused(p: &mut RawPeer, kind: &str, data: &Value, rule: &str) -> Value {
    let id = new_message_id();
    p.send(&json!({"type":kind,"id":id,"to":[],"data":data}));
    p.expect(&format!("an error naming {rule}"), |v| {
        v["type"] == "error"
            && v["re"] == id.as_str()
            && v["error"].as_str().is_some_and(|e| e.contains(rule))
    })
}

fn value_of(node: &NodeProc, key: &str) -> Option<Value> {
    let (mut reader, _) = RawPeer::client(node.port);
    reader
        .get(key, Duration::from_millis(800))
        .map(|m| m["data"]["v"].clone())
}

#[test]
fn a_victims_record_replayed_under_another_key_is_refused() {
    let node = NodeProc::start(&[]);
    let (mut victim, _) = RawPeer::client(node.port);
    let post_key = format!(":{}.post", victim.key.address());
    let (_, post) = victim.put(&post_key, json!("my post"));
    victim.wait_value(&post_key, &json!("my post"));
    let (mut attacker, _) = RawPeer::client(node.port);
    let settings = attacks::rekeyed(&post, &format!(":{}.settings", victim.key.address()));
    send_refused(&mut attacker, "put", &settings, "Rekeyed");
    let global = attacks::rekeyed(&post, "announcement");
    send_refused(&mut attacker, "put", &global, "Rekeyed");
    assert_eq!(
        value_of(&node, &format!(":{}.settings", victim.key.address())),
        None
    );
    assert_eq!(value_of(&node, "announcement"), None);
}

#[test]
fn a_crdt_put_whose_changes_do_not_hash_to_its_signature_is_refused() {
    let node = NodeProc::start(&[]);
    let (record, changes) = owner_doc(&node);
    let a = changes[0]["a"].clone();
    let (mut attacker, _) = RawPeer::client(node.port);
    let injected = attacks::forged_changes(
        &record,
        json!([{"t":"SET","a":a,"k":"admin","v":true,"i":2}]),
    );
    send_refused(&mut attacker, "crdtPut", &injected, "InvalidHashNonce");
    let (mut reader, _) = RawPeer::client(node.port);
    let id = new_message_id();
    reader.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"doc"}));
    let got = reader.expect("the crdt answer", |v| v["id"] == id.as_str());
    assert_eq!(got["data"]["v"], changes, "no change was injected");
}

/// The owner's signed MAP list for `doc`, sent and stored; returns the
/// record (as JSON) and its change list.
fn owner_doc(node: &NodeProc) -> (Value, Value) {
    let (mut owner, _) = RawPeer::client(node.port);
    let a = owner.key.address().to_owned();
    let changes = json!([{"t":"SET","a":a,"k":"admin","v":false,"i":1}]);
    let rec = sign_record_with(
        &owner.key,
        "doc",
        &changes,
        now_ms(),
        Some(CrdtKind::Map),
        0,
    );
    let record: Value = serde_json::from_str(rec.raw()).unwrap();
    owner.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":record}));
    owner.wait_value("doc", &changes);
    (record, changes)
}

fn crdt_value(node: &NodeProc, key: &str) -> Value {
    let (mut reader, _) = RawPeer::client(node.port);
    let id = new_message_id();
    reader.send(&json!({"type":"crdtGet","id":id,"to":[],"key":key}));
    reader.expect("the crdt answer", |v| v["id"] == id.as_str())["data"]["v"].clone()
}

/// Issue 15, item 4: a proved server link of ours (it offers signed CRDT
/// lists) sends the owner's `h` and `s` over other changes. Records from
/// proved server links were checked by signature only (servers sent
/// merged sets, which hash to nothing), so a hostile node that passed our
/// dial check injected changes under any valid signature.
#[test]
fn a_server_link_cannot_inject_crdt_changes_under_another_authors_signature() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let (record, changes) = owner_doc(&node);
    let (mut fake, _) = RawPeer::proved_server(&node, json!({"reconcile": 1, "crdt": 1}));
    let mut injected = record.clone();
    let a = record["a"].clone();
    injected["v"] = json!([{"t":"SET","a":a,"k":"admin","v":false,"i":1},
                           {"t":"SET","a":a,"k":"admin","v":true,"i":2}]);
    send_refused(&mut fake, "crdtPut", &injected, "InvalidHashNonce");
    assert_eq!(crdt_value(&node, "doc"), changes, "no change was injected");
}

/// A proved server that does not speak signed lists (a JS Tool Db server
/// sends its merged set under the newest put's `h` and `s`) is still heard
/// on the signature, as before: Tool Db offers nothing better.
#[test]
fn a_server_without_signed_lists_still_sends_merged_sets() {
    let node = NodeProc::start(&[]);
    node.wait_healthy();
    let (record, _) = owner_doc(&node);
    let (mut js_server, _) = RawPeer::proved_server(&node, json!({"reconcile": 1}));
    let a = record["a"].clone();
    let merged = json!([{"t":"SET","a":a,"k":"admin","v":false,"i":1},
                        {"t":"SET","a":"another","k":"note","v":"hi","i":1}]);
    let mut set = record.clone();
    set["v"] = merged.clone();
    js_server.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":set}));
    wait_for("the merged set stored", Duration::from_secs(10), || {
        (crdt_value(&node, "doc") == merged).then_some(())
    });
}

#[test]
fn a_back_dated_write_does_not_take_a_frozen_key_over() {
    let node = NodeProc::start(&[]);
    let (mut owner, _) = RawPeer::client(node.port);
    owner.put("==alice", json!("owner"));
    owner.wait_value("==alice", &json!("owner"));
    let (mut thief, _) = RawPeer::client(node.port);
    let rec = sign_record(&thief.key, "==alice", &json!("thief"), 1);
    let data: Value = serde_json::from_str(rec.raw()).unwrap();
    send_refused(&mut thief, "put", &data, "BackDated");
    assert_eq!(value_of(&node, "==alice"), Some(json!("owner")));
}

#[test]
fn a_write_far_in_the_future_is_refused() {
    let node = NodeProc::start(&[]);
    let (mut owner, _) = RawPeer::client(node.port);
    owner.put_at("later", json!("future"), now_ms() + 29_990);
    owner.put("later", json!("now"));
    // The far-future write does not block the owner's present one.
    owner.wait_value("later", &json!("now"));
}

#[test]
fn a_crdt_key_cannot_grow_past_the_record_limit() {
    let node = NodeProc::start_env(&[], &[("TOOLDB_LIMITS__MAX_RECORD_BYTES", "300000")]);
    let pid = node.child.id();
    let before = rss_kib(pid);
    let (mut writer, _) = RawPeer::client(node.port);
    let a = writer.key.address().to_owned();
    for round in 0..10u64 {
        let changes: Vec<Value> = (0..10)
            .map(|i| json!({"t":"SET","a":a,"k":format!("f{round}-{i}"),"v":"x".repeat(9_000),"i":round * 10 + i}))
            .collect();
        let rec = sign_record_with(
            &writer.key,
            "big",
            &Value::Array(changes),
            now_ms(),
            Some(CrdtKind::Map),
            0,
        );
        let data: Value = serde_json::from_str(rec.raw()).unwrap();
        writer.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":data}));
    }
    // Each change adds ~90 KB: three fit in 300 KB, the rest are refused.
    let refused = count_frames(&mut writer, 7, |v| {
        v["type"] == "error"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_record_bytes"))
    });
    assert_eq!(refused, 7);
    let (mut reader, _) = RawPeer::client(node.port);
    let id = new_message_id();
    reader.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"big"}));
    let got = reader.expect("the crdt answer", |v| v["id"] == id.as_str());
    assert!(got["data"].to_string().len() <= 300_000);
    let grown = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("crdt growth: RSS +{grown} MiB");
}

/// A peer that stops reading is closed as a slow consumer once its
/// pending output passes a limit, or, if it asked for less than that
/// before its reading paused (1 MiB of output pending pauses it), when
/// its writer makes no progress for the write timeout; 5 s here, not 30.
const FAST_WRITE_TIMEOUT: (&str, &str) = ("TOOLDB_LIMITS__WRITE_TIMEOUT_SECS", "5");

/// Peers closed for not reading, by either rule.
fn closed_non_readers(log: &str) -> usize {
    log.matches("closing: slow consumer").count()
        + log.matches("closing: writes made no progress").count()
}

/// Stores a CRDT record of ~900 KB under "fat" (through a client of
/// `port`) and waits until a crdtGet answers it.
fn store_fat_record(port: u16) {
    let (mut writer, _) = RawPeer::client(port);
    let a = writer.key.address().to_owned();
    let changes: Vec<Value> = (0..90)
        .map(|i| json!({"t":"SET","a":a,"k":format!("f{i}"),"v":"x".repeat(10_000),"i":i}))
        .collect();
    let rec = sign_record_with(
        &writer.key,
        "fat",
        &Value::Array(changes),
        now_ms(),
        Some(CrdtKind::Map),
        0,
    );
    let data: Value = serde_json::from_str(rec.raw()).unwrap();
    writer.send(&json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":data}));
    wait_for("the big record stored", Duration::from_secs(10), || {
        let id = new_message_id();
        writer.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"fat"}));
        writer
            .drain(Duration::from_millis(300))
            .into_iter()
            .any(|v| v["id"] == id.as_str())
            .then_some(())
    });
}

#[test]
fn repeated_crdt_gets_cost_the_asker_its_connection_not_the_node_memory() {
    let node = NodeProc::start_env(&[], &[FAST_WRITE_TIMEOUT]);
    store_fat_record(node.port);
    let pid = node.child.id();
    let before = rss_kib(pid);
    // 2,000 crdtGets (under 200 KB of requests) for ~900 KB answers each,
    // never reading: the asker is closed as a slow consumer.
    let (mut asker, _) = RawPeer::client(node.port);
    if let MaybeTlsStream::Plain(s) = asker.ws.get_ref() {
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    for i in 0..2000 {
        let frame = json!({"type":"crdtGet","id":format!("g{i}"),"to":[],"key":"fat"});
        if asker
            .ws
            .send(tungstenite::Message::text(frame.to_string()))
            .is_err()
        {
            break;
        }
    }
    let p99 = p99_get_ms(node.port, 100);
    wait_for("the asker closed", Duration::from_secs(60), || {
        (closed_non_readers(&node.log()) > 0).then_some(())
    });
    // After the answers it asked for were made (and refused).
    let grown = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("crdtGet amplification: RSS +{grown} MiB, good client p99 {p99:.1} ms");
    assert!(grown < 64, "RSS grew {grown} MiB");
}

#[test]
fn many_askers_that_never_read_share_the_node_output_budget() {
    // Each asker alone stays under its own limit; 24 of them would hold
    // ~300 MiB of copies of a 900 KB answer without a node-wide bound.
    let node = NodeProc::start_env(
        &[],
        &[
            ("TOOLDB_LIMITS__TOTAL_OUTPUT_BYTES", "16777216"),
            // Each asker's own limit far above what it asks for.
            ("TOOLDB_LIMITS__MAX_PENDING_OUTPUT_BYTES", "67108864"),
            FAST_WRITE_TIMEOUT,
        ],
    );
    store_fat_record(node.port);
    let pid = node.child.id();
    let before = peak_rss_kib(pid).max(rss_kib(pid));
    // All connected first, then each asks 20 times (18 MB: the kernel's
    // socket buffers take ~5 MB of it), in rounds, so their answers
    // compete for the budget.
    let mut askers: Vec<RawPeer> = (0..24).map(|_| RawPeer::client(node.port).0).collect();
    for i in 0..20 {
        for (a, asker) in askers.iter_mut().enumerate() {
            let id = format!("a{a}g{i}");
            asker.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"fat"}));
        }
    }
    // Small answers keep their headroom: a good client is served meanwhile.
    let p99 = p99_get_ms(node.port, 100);
    wait_for("every asker closed", Duration::from_secs(60), || {
        (closed_non_readers(&node.log()) >= askers.len()).then_some(())
    });
    let grown = peak_rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("24 non-reading askers: peak RSS +{grown} MiB, good client p99 {p99:.1} ms");
    let log = node.log();
    assert!(
        log.contains("total_output_bytes 16777216"),
        "askers below their own limit are closed naming the node's: {log}"
    );
    // The budget (16 MiB), the shared parse (4 MiB), and per asker the
    // frame its writer is sending (out of the budget once taken).
    assert!(grown < 80, "peak RSS grew {grown} MiB");
    drop(askers);
}

#[test]
fn records_from_clients_with_p256_keys_bind_per_signature_not_per_hash() {
    // One value written to two keys in one millisecond has one hash; both
    // writes are kept (randomised signatures tell them apart).
    let node = NodeProc::start(&[]);
    let key = NodeKey::generate(KeyScheme::P256);
    let (mut p, _) = RawPeer::client(node.port);
    let t = now_ms();
    for k in ["flag-a", "flag-b"] {
        let rec = sign_record(&key, k, &json!(true), t);
        let data: Value = serde_json::from_str(rec.raw()).unwrap();
        p.send(&json!({"type":"put","id":new_message_id(),"to":[],"data":data}));
    }
    p.wait_value("flag-a", &json!(true));
    p.wait_value("flag-b", &json!(true));
}
