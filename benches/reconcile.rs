//! Anti-entropy cost: two sled stores of 100,000 records that differ in 0,
//! 10, 1,000 and 100,000 keys reconcile through the real storage code
//! (`Storage::reconcile_step`), in one process with no network. Prints the
//! protocol bytes (reconcile steps as sent on the wire), the record bytes
//! transferred, message count and wall time; a full copy is printed for
//! comparison. Figures, not assertions: `cargo bench --bench reconcile`.

use std::time::Instant;

use tooldb_node::actors::storage::Storage;
use tooldb_node::messages::wire::{Reconcile, WireMessage};
use tooldb_node::reconcile::{self, Step};
use tooldb_node::record::Record;

const RECORDS: usize = 100_000;

/// A record as stored (storage does not verify; the servers did before).
fn record(key: &str, t: u64, salt: u64) -> Record {
    let h = tooldb_node::crypto::sha256_hex(format!("{key}{t}{salt}").as_bytes());
    let text = format!(
        r#"{{"k":"{key}","a":"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed","n":0,"t":{t},"h":"{h}","s":"0x{sig}","v":{{"value":{salt},"note":"a typical small record"}},"c":null}}"#,
        sig = "ab".repeat(65)
    );
    Record::parse_str(&text).unwrap()
}

fn store(dir: &std::path::Path) -> Storage {
    Storage::new(sled::Config::new().path(dir).open().unwrap(), false).unwrap()
}

struct Run {
    messages: usize,
    step_bytes: usize,
    record_bytes: usize,
    records: usize,
}

fn reconcile(a: &Storage, b: &Storage) -> Run {
    let mut run = Run {
        messages: 0,
        step_bytes: 0,
        record_bytes: 0,
        records: 0,
    };
    let first = reconcile::start(&a.items(&reconcile::Range::all()).unwrap());
    let mut queue: Vec<(bool, Step)> = vec![(true, first)];
    while let Some((to_b, step)) = queue.pop() {
        run.messages += 1;
        let frame = WireMessage::Reconcile(Reconcile {
            id: "0123456789".into(),
            to: vec![],
            step: step.clone(),
        });
        run.step_bytes += frame.to_text().len();
        let (own, other) = if to_b { (b, a) } else { (a, b) };
        let answer = own.reconcile_step(&step, usize::MAX, true).unwrap();
        for r in answer.records {
            // Sent as a put frame: about the record plus ~50 bytes of envelope.
            run.record_bytes += r.raw().len() + 50;
            run.records += 1;
            other.store(r).unwrap();
        }
        for s in answer.reply {
            queue.push((!to_b, s));
        }
    }
    run
}

fn main() {
    println!("anti-entropy between two stores of {RECORDS} records (release build, in-process)");
    println!(
        "{:>12} {:>9} {:>13} {:>14} {:>9} {:>10}",
        "differences", "messages", "step bytes", "record bytes", "records", "time ms"
    );
    for diff in [0usize, 10, 1_000, 100_000] {
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let (a, b) = (store(da.path()), store(db.path()));
        for i in 0..RECORDS {
            let key = format!("key-{i:07}");
            let r = record(&key, 1_700_000_000_000, 0);
            a.store(r.clone()).unwrap();
            // b holds a newer record for `diff` keys spread over the key space.
            let differs = diff > 0 && i % (RECORDS / diff) == 0;
            b.store(if differs {
                record(&key, 1_700_000_000_001, 1)
            } else {
                r
            })
            .unwrap();
        }
        let started = Instant::now();
        let run = reconcile(&a, &b);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "{:>12} {:>9} {:>13} {:>14} {:>9} {:>10.1}",
            diff, run.messages, run.step_bytes, run.record_bytes, run.records, ms
        );
        // Both hold the same winners now.
        let after = reconcile(&a, &b);
        assert_eq!(after.records, 0, "a second round finds nothing to send");
    }
    let full: usize = (0..RECORDS)
        .map(|i| record(&format!("key-{i:07}"), 1, 0).raw().len() + 50)
        .sum();
    println!("a full copy of one store would be about {full} bytes");
}
