//! The hostile inputs of the "Hostile peers" issue, built once for the
//! tests (`tests/hostile_*.rs`, through `common`) and the attack bench
//! (`benches/attack.rs`, through `#[path]`): raw websocket frames and the
//! forged messages. Builders only, no sockets, so each side keeps its own
//! client and assertions.
#![allow(dead_code)]

use serde_json::{json, Value};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::peer::Peer;
use tooldb_node::record::{now_ms, sign_record, sign_record_with, CrdtKind};

/// A client frame (`opcode` with FIN set or not) under a zero mask: the
/// payload goes out as is, so floods can be encoded once.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut raw = frame_header(opcode, fin, payload.len() as u64);
    raw.extend_from_slice(payload);
    raw
}

/// A masked client frame's header (zero mask) for a payload of `len`.
pub fn frame_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut raw = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        raw.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        raw.push(0x80 | 126);
        raw.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        raw.push(0x80 | 127);
        raw.extend_from_slice(&len.to_be_bytes());
    }
    raw.extend_from_slice(&[0, 0, 0, 0]);
    raw
}

/// The start of one text frame of `total` bytes, with `sent` of them.
pub fn big_frame_start(total: u64, sent: usize) -> Vec<u8> {
    let mut raw = frame_header(0x1, true, total);
    raw.extend(std::iter::repeat_n(b'a', sent));
    raw
}

/// `n` fragments of `size` bytes of a text message never finished.
pub fn unfinished_fragments(n: usize, size: usize) -> Vec<u8> {
    let chunk = vec![b'a'; size];
    (0..n)
        .flat_map(|i| client_frame(if i == 0 { 0x1 } else { 0x0 }, false, &chunk))
        .collect()
}

/// A put whose value is nested `depth` levels deep, as text (serde_json
/// cannot build such a `Value`).
pub fn deep_put_text(key: &str, depth: usize) -> String {
    let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    format!(
        r#"{{"type":"put","id":"{}","to":[],"data":{{"k":"{key}","v":{deep}}}}}"#,
        new_message_id()
    )
}

/// A ping as a client or server, with `key`'s peer record signed at `timestamp`.
pub fn ping(key: &NodeKey, is_server: bool, topic: &str, timestamp: u64) -> Value {
    let peer = Peer::sign(key, topic, "127.0.0.1", 8080, timestamp);
    let id = key.client_id();
    json!({"type":"ping","id":new_message_id(),"to":[id],
           "clientId":id,"isServer":is_server,"peer":peer})
}

/// A server ping whose peer record is valid but signed by no one: its
/// signature is reversed.
pub fn bad_signature_ping(key: &NodeKey, topic: &str) -> Value {
    let mut ping = ping(key, true, topic, now_ms());
    let sig = ping["peer"]["sig"].as_str().unwrap().to_owned();
    ping["peer"]["sig"] = Value::from(sig.chars().rev().collect::<String>());
    ping
}

/// `n` signed server records naming endpoints nobody serves (ports
/// `first_port..`), each under a key of its own.
pub fn junk_servers(n: usize, topic: &str, first_port: u16) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let k = NodeKey::generate(KeyScheme::Secp256k1);
            let port = first_port.wrapping_add(i as u16).max(1);
            serde_json::to_value(Peer::sign(&k, topic, "127.0.0.1", port, now_ms())).unwrap()
        })
        .collect()
}

/// A pong from `client_id` listing `servers`.
pub fn pong_listing(client_id: &str, servers: &[Value]) -> Value {
    json!({"type":"pong","id":new_message_id(),"to":[client_id],
           "clientId":client_id,"isServer":true,"servers":servers})
}

/// A MAP change list of `n` SETs by `address`, each value `value_bytes`
/// long; `round` keeps field names and indexes apart between lists.
pub fn crdt_changes(address: &str, n: u64, value_bytes: usize, round: u64) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({"t":"SET","a":address,"k":format!("f{round}-{i}"),
                       "v":"x".repeat(value_bytes),"i":round * n + i})
            })
            .collect(),
    )
}

/// A crdtPut of `changes` to `key`, signed by `signer`.
pub fn crdt_put(signer: &NodeKey, key: &str, changes: &Value) -> Value {
    let rec = sign_record_with(signer, key, changes, now_ms(), Some(CrdtKind::Map), 0);
    let data: Value = serde_json::from_str(rec.raw()).unwrap();
    json!({"type":"crdtPut","id":new_message_id(),"to":[],"data":data})
}

/// A signed record as the `data` of a put, as JSON.
pub fn record(signer: &NodeKey, key: &str, value: &Value, timestamp: u64) -> Value {
    serde_json::from_str(sign_record(signer, key, value, timestamp).raw()).unwrap()
}

/// A message carrying `data` as `kind` (put, crdtPut), with a fresh id.
pub fn carrying(kind: &str, data: &Value) -> Value {
    json!({"type":kind,"id":new_message_id(),"to":[],"data":data})
}

/// `record` moved to another key, its signature kept (a replay).
pub fn rekeyed(record: &Value, key: &str) -> Value {
    let mut r = record.clone();
    r["k"] = json!(key);
    r
}

/// A signed crdtPut `record` with its change list swapped for `changes`
/// (the signature kept): an injection.
pub fn forged_changes(record: &Value, changes: Value) -> Value {
    let mut r = record.clone();
    r["v"] = changes;
    r
}
