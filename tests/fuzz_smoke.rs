//! Fuzz smoke run for CI: every target of `tooldb_node::fuzzing` gets its
//! committed seed corpus (`fuzz/corpus/<target>/`) and then a fixed number
//! of mutations of it from a fixed-seed mutator (byte and bit flips,
//! JSON tokens, deletions, truncation, duplication, splicing, nesting), so
//! a run is the same on every machine. A failing input is written to
//! `target/tmp/fuzz-smoke-failures/` and printed. The coverage-guided long run
//! is AFL++'s (`fuzz/run-afl.sh`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tooldb_node::fuzzing;

const MUTATIONS: usize = 20_000;

/// splitmix64: small, fixed-seed, good enough for choosing mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that move a JSON parser to its edges.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "0",
    "-0",
    "-1",
    "1.5e-7",
    "1e999",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"==\"",
    "\".\"",
    "\"MAP\"",
    "\"LIST\"",
    "\"COUNTER\"",
    "\"type\"",
    "\"kind\"",
    "\"ranges\"",
    "\"items\"",
    "\"need\"",
    "\"put\"",
    "\"ping\"",
    "\"reconcile\"",
    "\"v\"",
    "\"c\"",
    "\"t\"",
    "\"n\"",
    "ü☃😀",
    "\n",
    "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\"",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => out[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => out[at.min(len - 1)] = rng.next() as u8,
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            3 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let end = (at + 1 + rng.below(8)).min(len);
                out.splice(at.min(end)..end, t.iter().copied());
            }
            4 => {
                let end = (at + 1 + rng.below(16)).min(len);
                out.drain(at.min(end)..end);
            }
            5 => out.truncate(at),
            6 if len > 0 => {
                // Duplicate a slice in place.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            7 => {
                // Splice: our head, another seed's tail.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            8 => {
                // Nest: wrap a slice (or all) in arrays or objects, deep or not.
                let depth = if rng.below(4) == 0 {
                    100 + rng.below(200)
                } else {
                    1 + rng.below(3)
                };
                let (open, close): (&[u8], &[u8]) = if rng.below(2) == 0 {
                    (b"[", b"]")
                } else {
                    (b"{\"v\":", b"}")
                };
                let end = at + rng.below(len - at + 1);
                let inner = out[at..end].to_vec();
                let mut nested = open.repeat(depth);
                nested.extend_from_slice(&inner);
                nested.extend_from_slice(&close.repeat(depth));
                out.splice(at..end, nested);
            }
            _ if len > 0 => {
                // Swap two bytes (often a quote with a bracket).
                let j = rng.below(len);
                out.swap(at.min(len - 1), j);
            }
            _ => out.push(b'{'),
        }
    }
    out
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
    seeds
}

fn run(target: &str, seed: u64, f: fn(&[u8])) {
    let seeds = corpus(target);
    let check = |input: &[u8], what: &str| {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(input))) {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{what}"));
            std::fs::write(&path, input).unwrap();
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{target} panicked on {what} (saved to {}): {msg}\ninput: {:?}",
                path.display(),
                String::from_utf8_lossy(input)
            );
        }
    };
    for (i, s) in seeds.iter().enumerate() {
        check(s, &format!("seed{i}"));
    }
    let mut rng = Rng(seed);
    // Mutants of mutants too: a pool that grows from the seeds.
    let mut pool = seeds.clone();
    for i in 0..MUTATIONS {
        let parent = &pool[rng.below(pool.len())];
        let child = mutate(&mut rng, parent, &seeds);
        check(&child, &format!("mutation{i}"));
        if pool.len() < 2_000 && rng.below(8) == 0 && child.len() < 64 * 1024 {
            pool.push(child);
        }
    }
}

#[test]
fn wire_parser() {
    run("wire", 1, fuzzing::wire);
}

#[test]
fn record_verifier() {
    run("record", 2, fuzzing::record);
}

#[test]
fn crdt_merge() {
    run("crdt", 3, fuzzing::crdt);
}

#[test]
fn reconcile_messages() {
    run("reconcile", 4, fuzzing::reconcile);
}
