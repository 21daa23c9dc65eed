//! Put throughput and put → subscriber latency against a release
//! `tooldb-node` process, with the load DESIGN.md measured the JS server
//! under: 1000 keys, 4 writers, signed P-256 puts. A subscriber holds all
//! 1000 keys; each accepted (winning) put is pushed to it exactly once, so
//! pushes counted / time = accepted puts per second.
//! Figures, not assertions: `cargo bench --bench load`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tooldb_node::record::{now_ms, sign_record};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

mod common;
use common::{connect, connect_as_server, start, Ws};

const KEYS: usize = 1000;
const WRITERS: usize = 4;
const PUTS_PER_WRITER: usize = 5000;

/// Subscribes to every key and counts pushes; returns (count, put → push
/// latencies in ms, from the writer's send time on the shared `clock`).
fn subscriber(
    port: u16,
    expect: usize,
    clock: Instant,
    sent_at: Arc<Vec<AtomicUsize>>,
) -> std::thread::JoinHandle<(usize, Vec<f64>, Instant, Vec<bool>)> {
    let (mut ws, _) = connect(port);
    for k in 0..KEYS {
        ws.send(Message::text(
            json!({"type":"subscribe","id":format!("sub-{k}"),"to":[],"key":format!("load-{k}")})
                .to_string(),
        ))
        .unwrap();
    }
    // Barrier: the hub handles one connection's frames in order, so once this
    // call is answered every subscription above is in place.
    ws.send(Message::text(
        json!({"type":"function","id":"barrier","to":[],"function":"peers","args":[]}).to_string(),
    ))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            if t.contains("\"barrier\"") {
                break;
            }
        }
    }
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    std::thread::spawn(move || {
        let mut n = 0;
        let mut last = Instant::now();
        let mut lat = vec![];
        let mut got = vec![false; expect];
        while n < expect {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    // Pushes carry fresh ids; a subscription's first answer
                    // ("sub-…") is the key's value when its read ran, which
                    // can be a put of this run: that put is then not pushed
                    // again (the node never sends a record twice), so it
                    // counts here too.
                    let seq = v["data"]["v"]["seq"].as_u64().map(|s| s as usize);
                    if let (true, Some(seq)) = (v["type"] == "put", seq) {
                        if got.get(seq) == Some(&false) {
                            got[seq] = true;
                            n += 1;
                            last = Instant::now();
                            let sent = sent_at[seq].load(Ordering::Relaxed) as f64;
                            let now = clock.elapsed().as_micros() as f64;
                            lat.push((now - sent) / 1000.0);
                        }
                    }
                }
                Ok(Message::Close(frame)) => {
                    eprintln!("subscriber closed by the node after {n} pushes: {frame:?}");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber stopped after {n} pushes: {e}");
                    break;
                }
            }
        }
        (n, lat, last, got)
    })
}

/// Reads the node's relays to a server, on the link it keeps (either the
/// server's inbound link `ws` or a dial back, fed into `rx`); returns
/// put → relay latencies in ms (from the writer's send time on `clock`).
fn relay_listener(
    (mut ws, rx): (Ws, std::sync::mpsc::Receiver<(String, Instant)>),
    expect: usize,
    clock: Instant,
    sent_at: Arc<Vec<AtomicUsize>>,
) -> std::thread::JoinHandle<Vec<f64>> {
    let (tx, merged) = std::sync::mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for m in rx {
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
    }
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    std::thread::spawn(move || loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                if tx.send((t.to_string(), Instant::now())).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });
    std::thread::spawn(move || {
        let mut lat = vec![];
        while lat.len() < expect {
            let Ok((t, at)) = merged.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            if v["type"] == "put" {
                if let Some(seq) = v["data"]["v"]["seq"].as_u64() {
                    let sent = sent_at[seq as usize].load(Ordering::Relaxed) as f64;
                    let now = at.duration_since(clock).as_micros() as f64;
                    lat.push((now - sent) / 1000.0);
                }
            }
        }
        lat
    })
}

fn run(sync: bool, rate: Option<u64>) {
    let (_server, port, _dir) = start(sync);
    // Paced runs also measure put → relay on a server link.
    let relay_link = rate.map(|_| connect_as_server(port));
    let total = WRITERS * PUTS_PER_WRITER;
    let total = if rate.is_some() { 2500 } else { total };
    // Pre-sign everything so signing is not measured; every put of a key is newer.
    let writers: Vec<(Ws, Vec<String>)> = (0..WRITERS)
        .map(|w| {
            let (ws, key) = connect(port);
            // Ending now: records from the future are refused.
            let t0 = now_ms() - (total / WRITERS) as u64;
            let frames = (0..total / WRITERS)
                .map(|i| {
                    let seq = w * (total / WRITERS) + i;
                    // Each writer owns KEYS / WRITERS keys and writes them
                    // with increasing timestamps, so every put wins.
                    let k = w * (KEYS / WRITERS) + i % (KEYS / WRITERS);
                    let rec = sign_record(
                        &key,
                        &format!("load-{k}"),
                        &json!({"seq": seq, "w": w}),
                        t0 + i as u64,
                    );
                    format!(
                        r#"{{"type":"put","id":"w{w}-{i}","to":[],"data":{}}}"#,
                        rec.raw()
                    )
                })
                .collect();
            (ws, frames)
        })
        .collect();
    let clock = Instant::now();
    let sent_at: Arc<Vec<AtomicUsize>> =
        Arc::new((0..total).map(|_| AtomicUsize::new(0)).collect());
    let sub = subscriber(port, total, clock, sent_at.clone());
    let relays = relay_link.map(|link| relay_listener(link, total, clock, sent_at.clone()));
    let started = Instant::now();
    let handles: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(w, (mut ws, frames))| {
            let sent_at = sent_at.clone();
            std::thread::spawn(move || {
                let per_writer = rate.map(|r| Duration::from_secs_f64(WRITERS as f64 / r as f64));
                for (i, f) in frames.into_iter().enumerate() {
                    let seq = w * (total / WRITERS) + i;
                    if let Some(gap) = per_writer {
                        let due = started + gap * i as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    sent_at[seq].store(clock.elapsed().as_micros() as usize, Ordering::Relaxed);
                    ws.send(Message::text(f)).unwrap();
                }
                ws
            })
        })
        .collect();
    let _keep: Vec<Ws> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (received, mut lat, last, got) = sub.join().unwrap();
    let missing: Vec<usize> = (0..total).filter(|s| !got[*s]).collect();
    if let Some(&seq) = missing.first() {
        // Which put of which key: writer w's i-th put is seq w*(total/W)+i.
        let (w, i) = (seq / (total / WRITERS), seq % (total / WRITERS));
        let k = w * (KEYS / WRITERS) + i % (KEYS / WRITERS);
        let later = (i + KEYS / WRITERS..total / WRITERS)
            .step_by(KEYS / WRITERS)
            .map(|j| w * (total / WRITERS) + j)
            .find(|s| got[*s]);
        println!(
            "{:>45} {} accepted puts never pushed, first: seq {seq} (key load-{k}); a later put of that key pushed: {later:?}",
            "",
            missing.len()
        );
    }
    let mut relay_lat = relays.map(|h| h.join().unwrap()).unwrap_or_default();
    relay_lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let secs = last.duration_since(started).as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct_of = |lat: &[f64], p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let pct = |p: f64| pct_of(&lat, p);
    println!(
        "sync_writes={sync:<5} rate={:<8} puts={total:<6} accepted={received:<6} {:>8.0} accepted puts/s   put→push ms p50 {:.2} p99 {:.2}",
        rate.map_or("max".to_string(), |r| format!("{r}/s")),
        received as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    // What the node itself counted: accepted puts that pushed nothing
    // (or refusals) explain a subscriber count short of the puts sent.
    let m = &common::http_json(port, "/status.json")["metrics"];
    let rejected: serde_json::Map<String, Value> = m["puts_rejected"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{:>45} node: puts accepted {} rejected {}",
        "",
        m["puts_accepted"],
        Value::Object(rejected)
    );
    if !relay_lat.is_empty() {
        println!(
            "{:>45} relays={:<6} put→relay ms p50 {:.2} p99 {:.2}",
            "",
            relay_lat.len(),
            pct_of(&relay_lat, 0.5),
            pct_of(&relay_lat, 0.99)
        );
    }
}

fn main() {
    println!(
        "load: {KEYS} keys, {WRITERS} writers, signed P-256 puts, one subscriber of every key"
    );
    for sync in [true, false] {
        run(sync, None);
        run(sync, Some(500));
    }
}
