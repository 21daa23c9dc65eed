//! Fuzz targets: one function per input parser, each taking arbitrary bytes.
//! None may panic on any input; each asserts cheap invariants of what it
//! parsed, so a failed assertion is a bug too. Driven by the smoke test
//! (`tests/fuzz_smoke.rs`) and by AFL++ (`fuzz/afl/`).

use std::sync::OnceLock;

use crate::crdt;
use crate::messages::wire::WireMessage;
use crate::reconcile::{self, Item, Step};
use crate::record::{self, Record};

/// The clock the record target verifies against (2027-01-15), so results
/// do not depend on the day the fuzzer runs; the vectors' records are
/// from late 2026.
pub const NOW_MS: u64 = 1_800_000_000_000;

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `WireMessage::parse`: a parsed message serialises to text that parses
/// to the same message text again.
pub fn wire(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(msg) = WireMessage::parse(text) else {
        return;
    };
    let out = msg.to_text();
    let again = WireMessage::parse(&out)
        .unwrap_or_else(|e| panic!("to_text of a parsed message does not parse: {e}: {out}"));
    assert_eq!(again.kind(), msg.kind());
    assert_eq!(again.id(), msg.id());
    assert_eq!(again.to_list(), msg.to_list());
    assert_eq!(again.to_text(), out, "to_text is not a fixed point");
}

/// `Record::parse_str`, then `verify` and `meta`.
pub fn record(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(rec) = Record::parse_str(text) else {
        return;
    };
    // The record keeps its text exactly (less the JSON whitespace around it).
    assert_eq!(rec.raw(), text.trim_matches([' ', '\t', '\n', '\r']));
    let verdict = rec.verify(NOW_MS, 0);
    if verdict.is_ok() {
        assert!(rec.timestamp <= NOW_MS + record::MAX_FUTURE_MS);
        assert!(record::check_key(&rec.key, &rec.address).is_ok());
    }
    // Proof of work only adds checks: what passes with zeros passes without.
    if rec.verify(NOW_MS, 1).is_ok() {
        assert_eq!(verdict, Ok(()));
    }
    let meta = rec.meta();
    assert!(!record::wins(&meta, &meta), "a record never beats itself");
    let _ = rec.hash_input();
    let _ = rec.is_frozen();
}

/// `crdt::merge(stored, incoming)` of two records given one per line
/// (split at the first newline), with `changes` and `map_value` of each.
pub fn crdt(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Some((a, b)) = text.split_once('\n') else {
        return;
    };
    let (Ok(stored), Ok(incoming)) = (Record::parse_str(a), Record::parse_str(b)) else {
        return;
    };
    for r in [&stored, &incoming] {
        if let Ok(changes) = crdt::changes(r) {
            let _ = crdt::map_value(&changes);
        }
    }
    if stored.key == incoming.key {
        let (x, y) = (stored.meta(), incoming.meta());
        assert!(
            !(record::wins(&x, &y) && record::wins(&y, &x)),
            "the winner rule is not antisymmetric"
        );
    }
    let Ok(Some(merged)) = crdt::merge(&stored, &incoming) else {
        return;
    };
    let m = Record::parse_str(&merged)
        .unwrap_or_else(|e| panic!("merge output does not parse as a record: {e}: {merged}"));
    assert_eq!(m.crdt, incoming.crdt, "the merged record keeps the kind");
    if stored.crdt == incoming.crdt {
        let newest = stored.timestamp.max(incoming.timestamp);
        assert_eq!(m.timestamp, newest, "the newer metadata is kept");
        let n = crdt::changes(&m).expect("merged changes are a list").len();
        let before = crdt::changes(&stored).expect("merged, so a list").len();
        assert!(n >= before, "merge lost changes: {before} -> {n}");
        // Merging the same incoming record again changes nothing.
        assert_eq!(
            crdt::merge(&m, &incoming).map_err(|e| e.to_string()),
            Ok(None),
            "merge is not idempotent: {merged}"
        );
    }
}

/// The fixed store the reconcile target answers from: more than
/// `LIST_THRESHOLD` items (so ranges split), sorted by key.
pub fn reconcile_items() -> &'static [Item] {
    static ITEMS: OnceLock<Vec<Item>> = OnceLock::new();
    ITEMS.get_or_init(|| {
        let mut keys: Vec<String> = (0..40).map(|i| format!("key{i:03}")).collect();
        keys.extend(
            [
                "",
                "==frozen",
                ":addr.name",
                "a",
                "zz",
                "ключ",
                "\u{10ffff}",
            ]
            .map(String::from),
        );
        keys.sort();
        keys.into_iter()
            .enumerate()
            .map(|(i, key)| Item {
                key,
                digest: [i as u8; 16],
            })
            .collect()
    })
}

/// A reconcile `Step` (JSON, as in a `reconcile` frame's `step`) answered
/// by `reconcile::respond` against `reconcile_items()`.
pub fn reconcile(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(step) = serde_json::from_str::<Step>(text) else {
        return;
    };
    let again: Step = serde_json::from_str(&serde_json::to_string(&step).unwrap())
        .expect("a step serialises to text that parses");
    assert_eq!(again, step);
    let own = reconcile_items();
    let out = reconcile::respond(own, &step);
    let ours = |k: &str| own.iter().any(|i| i.key == k);
    match &step {
        Step::Need { keys } => assert_eq!(&out.send, keys),
        Step::Items { range, items } => {
            for k in &out.send {
                assert!(
                    ours(k) && range.contains(k),
                    "sends {k:?}, not ours in range"
                );
            }
            for r in &out.reply {
                let Step::Need { keys } = r else {
                    panic!("items answered with {r:?}")
                };
                for k in keys {
                    assert!(items.iter().any(|(i, _)| i == k), "needs {k:?}, not listed");
                }
            }
        }
        Step::Ranges { .. } => assert!(out.send.is_empty()),
    }
    // What we say, said back to us, is settled at once.
    for r in &out.reply {
        if !matches!(r, Step::Need { .. }) {
            let echo = reconcile::respond(own, r);
            assert!(
                echo.reply.is_empty() && echo.send.is_empty(),
                "{r:?}: {echo:?}"
            );
        }
    }
}
