//! Idle clients: the server's resident memory with 10,000 idle Tool Db
//! clients connected (each did its ping/pong handshake), and whether a
//! put's cost depends on how many clients are connected (it must not:
//! subscriptions are indexed by key). Figures, not assertions:
//! `cargo bench --bench idle`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tooldb_node::record::{now_ms, sign_record};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

mod common;
use common::{connect, rss_breakdown, rss_mib, settled_rss_mib, start, Ws};

const IDLE: usize = 10_000;
const PUTS: usize = 5_000;

/// One writer puts PUTS records (each a new winner); a subscriber of every
/// key counts the pushes. Returns accepted puts per second.
fn put_burst(port: u16, tag: &str) -> f64 {
    let (mut sub, _) = connect(port);
    let keys = 500;
    for k in 0..keys {
        sub.send(Message::text(json!({"type":"subscribe","id":format!("sub-{tag}-{k}"),"to":[],"key":format!("{tag}-{k}")}).to_string()))
            .unwrap();
    }
    // Ids must differ between bursts: the server drops a repeated (type, id).
    let barrier = format!("barrier-{tag}");
    sub.send(Message::text(
        json!({"type":"function","id":barrier,"to":[],"function":"peers","args":[]}).to_string(),
    ))
    .unwrap();
    while !matches!(sub.read().unwrap(), Message::Text(t) if t.contains(&barrier)) {}
    if let MaybeTlsStream::Plain(s) = sub.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let (mut w, key) = connect(port);
    // Ending now: records from the future are refused.
    let t0 = now_ms() - PUTS as u64;
    let frames: Vec<String> = (0..PUTS)
        .map(|i| {
            let rec = sign_record(
                &key,
                &format!("{tag}-{}", i % keys),
                &json!(i),
                t0 + i as u64,
            );
            format!(
                r#"{{"type":"put","id":"p-{tag}-{i}","to":[],"data":{}}}"#,
                rec.raw()
            )
        })
        .collect();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        for f in frames {
            w.send(Message::text(f)).unwrap();
        }
        w
    });
    let mut n = 0;
    let mut last = Instant::now();
    while n < PUTS {
        match sub.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "put" && !v["id"].as_str().unwrap_or("").contains('-') {
                    n += 1;
                    last = Instant::now();
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _w = writer.join().unwrap();
    n as f64 / last.duration_since(started).as_secs_f64()
}

fn main() {
    let (server, port, _dir) = start(true);
    let pid = server.0.id();
    let before = rss_mib(pid);
    let base = put_burst(port, "base");
    // What the burst left (sled's cache, malloc's free lists) is not the
    // idle clients'.
    let after_burst = settled_rss_mib(pid);
    let started = Instant::now();
    let mut idle: Vec<Ws> = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(port).0);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let with_idle = settled_rss_mib(pid);
    let breakdown = rss_breakdown(pid);
    let loaded = put_burst(port, "loaded");
    println!("idle clients: {IDLE} connected in {connect_secs:.1} s");
    println!("server RSS: {before:.1} MiB at start, {after_burst:.1} MiB after a burst, {with_idle:.1} MiB with {IDLE} idle clients ({:.1} KiB per client)",
        (with_idle - after_burst) * 1024.0 / IDLE as f64);
    println!("  where: {breakdown}");
    println!("accepted puts/s (1 writer, durable): {base:.0} with no idle client, {loaded:.0} with {IDLE}");
    drop(idle);
}
