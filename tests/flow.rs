//! Flow control end to end (issue 9), with the default configuration:
//! honest volume gets backpressure, never a close; one connection's puts
//! take effect in the order they were sent; a peer that does not read is
//! closed and the node's memory stays bounded.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::{now_ms, sign_record};

/// `count` signed put frames, signed on every core: key `i % keys`, each
/// key's puts in increasing `t`; values padded to `pad` bytes.
fn signed_puts(count: usize, keys: usize, prefix: &str, pad: usize) -> Vec<String> {
    let key = Arc::new(NodeKey::generate(KeyScheme::P256));
    // One ms apart, ending now: records from the future are refused.
    let t0 = now_ms() - count as u64;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<_> = (0..threads)
        .map(|c| {
            let key = key.clone();
            let prefix = prefix.to_owned();
            std::thread::spawn(move || {
                (c..count)
                    .step_by(threads)
                    .map(|i| {
                        let value = json!({"i": i, "pad": "x".repeat(pad)});
                        let rec = sign_record(
                            &key,
                            &format!("{prefix}{}", i % keys),
                            &value,
                            t0 + i as u64,
                        );
                        let data: Value = serde_json::from_str(rec.raw()).unwrap();
                        (
                            i,
                            json!({"type":"put","id":new_message_id(),"to":[],"data":data})
                                .to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(usize, String)> =
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, f)| f).collect()
}

fn subscribe_all(peer: &mut RawPeer, prefix: &str, keys: usize) {
    for k in 0..keys {
        peer.send(
            &json!({"type":"subscribe","id":new_message_id(),"to":[],"key":format!("{prefix}{k}")}),
        );
    }
    // The hub takes one connection's frames in order: once this put is
    // readable, every subscription before it is in place.
    let marker = format!("{prefix}marker");
    peer.put(&marker, json!(1));
    peer.wait_value(&marker, &json!(1));
}

/// Sends every frame as fast as the socket takes them; a close is a failure.
fn blast(peer: &mut RawPeer, frames: &[String]) {
    for (n, f) in frames.iter().enumerate() {
        if let Err(e) = peer.ws.send(tungstenite::Message::text(f.as_str())) {
            panic!(
                "the node stopped taking puts after {n} of {}: {e}",
                frames.len()
            );
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_20000_put_burst_from_one_socket_is_not_closed_and_reaches_a_subscriber_in_order() {
    const PUTS: usize = 20_000;
    const KEYS: usize = 1_000;
    let node = NodeProc::start(&[]);
    let (mut sub, _) = RawPeer::client(node.port);
    subscribe_all(&mut sub, "burst-", KEYS);
    let frames = signed_puts(PUTS, KEYS, "burst-", 0);

    let port = node.port;
    let writer = std::thread::spawn(move || {
        let (mut w, _) = RawPeer::client(port);
        blast(&mut w, &frames);
        // Still open, and every put is in: its last one reads back.
        w.wait_value(
            &format!("burst-{}", (PUTS - 1) % KEYS),
            &json!({"i": PUTS - 1, "pad": ""}),
        );
    });

    let mut last_t: HashMap<String, u64> = HashMap::new();
    let (mut pushed, mut out_of_order) = (0usize, vec![]);
    let deadline = Instant::now() + Duration::from_secs(240);
    while pushed < PUTS && Instant::now() < deadline {
        match sub.recv(Duration::from_millis(200)) {
            Ok(Some(m))
                if m["type"] == "put"
                    && m["data"]["k"]
                        .as_str()
                        .is_some_and(|k| k.starts_with("burst-")) =>
            {
                let k = m["data"]["k"].as_str().unwrap().to_owned();
                let t = m["data"]["t"].as_u64().unwrap();
                if let Some(prev) = last_t.insert(k.clone(), t) {
                    if prev >= t {
                        out_of_order.push((k, prev, t));
                    }
                }
                pushed += 1;
            }
            Ok(_) => {}
            Err(reason) => panic!("the subscriber was closed ({reason}) after {pushed} pushes"),
        }
    }
    writer.join().expect("the writer was served to the end");
    assert!(
        out_of_order.is_empty(),
        "pushed out of order: {:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
    assert_eq!(pushed, PUTS, "every put reached the subscriber");
    assert_eq!(last_t.len(), KEYS);
}

#[test]
fn two_joined_servers_keep_their_link_through_a_20000_put_burst() {
    const PUTS: usize = 20_000;
    const KEYS: usize = 2_000;
    let a = NodeProc::start(&[]);
    let b = NodeProc::start(&["--peer", &format!("127.0.0.1:{}", a.port)]);
    let a_id = a.health()["clientId"].clone();
    let b_id = b.health()["clientId"].clone();
    wait_for("B connected to A", Duration::from_secs(20), || {
        (connected_to(&b, &a_id) && connected_to(&a, &b_id)).then_some(())
    });

    // A watches the link while B takes the burst.
    let stop = Arc::new(AtomicBool::new(false));
    let drops = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, drops, port, b_id) = (stop.clone(), drops.clone(), a.port, b_id.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let up = http_get(port, "/peers")
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .is_some_and(|p| {
                        p["servers"].as_array().is_some_and(|s| {
                            s.iter()
                                .any(|s| s["clientId"] == b_id && s["state"] == "connected")
                        })
                    });
                if !up {
                    drops.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let frames = signed_puts(PUTS, KEYS, "link-", 0);
    let (mut w, _) = RawPeer::client(b.port);
    blast(&mut w, &frames);

    // Everything reaches A: the last put of every 50th key reads back there.
    let (mut on_a, _) = RawPeer::client(a.port);
    for k in (0..KEYS).step_by(50) {
        let last = (PUTS - KEYS) + k;
        on_a.wait_value(&format!("link-{k}"), &json!({"i": last, "pad": ""}));
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 0, "A saw its link to B down");
    let dials = b.log().matches("connected to server").count();
    assert_eq!(dials, 1, "B dialed A {dials} times:\n{}", b.log());
    assert!(!a.log().contains("slow consumer") && !b.log().contains("slow consumer"));
}

#[test]
fn a_subscriber_that_stops_reading_is_closed_and_memory_stays_bounded() {
    const PUTS: usize = 30_000;
    const KEYS: usize = 100;
    let node = NodeProc::start(&[]);
    let pid = node.child.id();
    let (mut stuck, _) = RawPeer::client(node.port);
    subscribe_all(&mut stuck, "slow-", KEYS);
    let frames = signed_puts(PUTS, KEYS, "slow-", 1000);
    let start = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(start));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // `stuck` reads nothing from here on.
    let (mut w, _) = RawPeer::client(node.port);
    blast(&mut w, &frames);
    let last = format!("slow-{}", (PUTS - 1) % KEYS);
    w.wait_value(&last, &json!({"i": PUTS - 1, "pad": "x".repeat(1000)}));
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();

    // What it was sent before the close, then the close and its reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (t_read, mut got) = (Instant::now(), 0usize);
    let reason = loop {
        assert!(
            Instant::now() < deadline,
            "the stuck subscriber was never closed"
        );
        match stuck.recv(Duration::from_millis(200)) {
            Err(reason) => break reason,
            Ok(Some(_)) => got += 1,
            Ok(None) => {}
        }
    };
    eprintln!(
        "read {got} frames in {:?} before: {reason}",
        t_read.elapsed()
    );
    assert!(
        reason.contains("slow consumer"),
        "{reason}; log:\n{}",
        node.log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let grown_mib = (peak.load(Ordering::SeqCst).saturating_sub(start)) / 1024;
    eprintln!("RSS at start {} MiB, peak +{grown_mib} MiB", start / 1024);
    assert!(grown_mib < 48, "the node grew by {grown_mib} MiB");
    // Everyone else is still served.
    let (mut other, _) = RawPeer::client(node.port);
    other.put("after", json!(1));
    other.wait_value("after", &json!(1));
}
