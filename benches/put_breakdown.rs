//! Where a verified put's CPU goes: each stage of the put path timed alone
//! on core 0, in µs per put, beside the ring ceiling. Compare the sum with
//! `versus_js`'s "CPU per put" (the whole server, measured from
//! /proc/PID/stat over a burst): the difference is what the stages here do
//! not include (websocket I/O, mailboxes, wakeups, the flusher's syscalls).
//! Figures, not assertions: `cargo bench --bench put_breakdown`.

use std::time::Instant;

use actix::prelude::*;
use serde_json::json;
use tooldb_node::actors::storage::Storage;
use tooldb_node::crypto::{sha256_hex, KeyScheme, NodeKey};
use tooldb_node::messages::wire::{WireLimits, WireMessage};
use tooldb_node::record::{now_ms, sign_record, Record};

mod common;
use common::pin_self_to;

const PUTS: usize = 4000;
/// Records per group-commit flush, about what a burst batches.
const FLUSH_EVERY: usize = 64;

/// µs per item of `f` run over `items`.
fn per_item<T>(items: &[T], mut f: impl FnMut(&T)) -> f64 {
    let t = Instant::now();
    for i in items {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e6 / items.len() as f64
}

struct Noop;
impl Actor for Noop {
    type Context = SyncContext<Self>;
}
#[derive(Message)]
#[rtype(result = "Record")]
struct Hop(Record);
impl Handler<Hop> for Noop {
    type Result = MessageResult<Hop>;
    fn handle(&mut self, msg: Hop, _: &mut Self::Context) -> Self::Result {
        MessageResult(msg.0)
    }
}

fn main() {
    // Every thread started from here on (the pools, sled's) inherits core 0.
    pin_self_to(0);
    let key = NodeKey::generate(KeyScheme::P256);
    let t0 = now_ms() - PUTS as u64;
    let frames: Vec<String> = (0..PUTS)
        .map(|i| {
            let rec = sign_record(
                &key,
                &format!("bd-{}", i % 1000),
                &json!({"i": i}),
                t0 + i as u64,
            );
            format!(
                r#"{{"type":"put","id":"p{i}","to":[],"data":{}}}"#,
                rec.raw()
            )
        })
        .collect();
    let limits = WireLimits::from(&tooldb_node::config::Limits::default());
    let records: Vec<Record> = frames
        .iter()
        .map(|f| match WireMessage::parse_limited(f, limits).unwrap() {
            WireMessage::Put(p) => p.data,
            _ => unreachable!(),
        })
        .collect();

    let parse = per_item(&frames, |f| {
        std::hint::black_box(WireMessage::parse_limited(f, limits).unwrap());
    });
    let hash = per_item(&records, |r| {
        std::hint::black_box(sha256_hex(r.hash_input().as_bytes()));
    });
    let sig = per_item(&records, |r| {
        tooldb_node::crypto::verify(&r.address, r.hash.as_bytes(), &r.sig).unwrap();
    });
    let now = now_ms();
    let verify = per_item(&records, |r| r.verify(now, 0).unwrap());
    let frame = per_item(&records, |r| {
        let msg = WireMessage::Put(tooldb_node::messages::wire::PutData {
            id: "x".into(),
            to: vec!["a".into()],
            data: r.clone(),
        });
        std::hint::black_box(msg.to_text());
    });

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let storage = Storage::new(db.clone(), false).unwrap();
    let store = per_item(&records, |r| {
        storage.store(r.clone()).unwrap();
    });
    // Each stored again with a flush per FLUSH_EVERY: the flush's share.
    let chunks: Vec<&[Record]> = records.chunks(FLUSH_EVERY).collect();
    let t = Instant::now();
    for c in &chunks {
        for r in c.iter() {
            storage.store(r.clone()).unwrap();
        }
        db.flush().unwrap();
    }
    let store_flush = t.elapsed().as_secs_f64() * 1e6 / PUTS as f64;

    // One pool round trip per put (the crypto pool's; the storage pool's
    // is per batch), all in flight at once as
    // in a burst: mailbox, oneshot and thread wakeups.
    let hop = System::new().block_on(async {
        let pool = SyncArbiter::start(1, || Noop);
        let t = Instant::now();
        let sends: Vec<_> = records.iter().map(|r| pool.send(Hop(r.clone()))).collect();
        for s in sends {
            s.await.unwrap();
        }
        t.elapsed().as_secs_f64() * 1e6 / PUTS as f64
    });

    let sum = parse + verify + store_flush + frame + hop;
    println!("put_breakdown: {PUTS} signed P-256 puts, core 0, µs per put");
    println!("  parse (frame, depth check, record)   {parse:>7.1}");
    println!("  hash (sha256 of the hash input)      {hash:>7.1}");
    println!(
        "  signature (ring P-256)               {sig:>7.1}   ceiling {:.0}/s",
        1e6 / sig
    );
    println!("  verify (key, hash, signature)        {verify:>7.1}");
    println!("  store (sled, last-writer-wins)       {store:>7.1}");
    println!("  store + flush every {FLUSH_EVERY}               {store_flush:>7.1}");
    println!("  framing (push/relay text)            {frame:>7.1}");
    println!("  actor hop (pool round trip)          {hop:>7.1}   once per put (crypto); storage's is per batch");
    println!(
        "  sum                                  {sum:>7.1}   -> at most {:.0} puts/s on one core",
        1e6 / sum
    );
}
