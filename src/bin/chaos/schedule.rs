//! The fault schedule: a pure function of the seed, the node count, the
//! run length and the fault kinds allowed. Faults run one after another
//! (each starts after the previous one ended, plus a gap), so every fault's
//! effect is seen on its own. Node 0 is the long-lived node: it is never
//! killed or restarted (its memory and open files are watched).

use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SIGKILL, stay down for a while, restart with the same data dir and port.
    Kill9,
    /// SIGTERM, wait for the exit, restart at once.
    GracefulRestart,
    /// Two groups cannot reach each other, then heal.
    Partition,
    /// Packet loss and delay on one node's link, then removed.
    Loss,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Kill9,
        Kind::GracefulRestart,
        Kind::Partition,
        Kind::Loss,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "kill9" | "kill" => Some(Kind::Kill9),
            "restart" | "graceful_restart" => Some(Kind::GracefulRestart),
            "partition" => Some(Kind::Partition),
            "loss" | "delay" => Some(Kind::Loss),
            _ => None,
        }
    }

    /// Needs separate hosts (network namespaces).
    pub fn needs_netns(self) -> bool {
        matches!(self, Kind::Partition | Kind::Loss)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill9 => "kill9",
            Kind::GracefulRestart => "graceful_restart",
            Kind::Partition => "partition",
            Kind::Loss => "loss",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Offset from the start of the fault window, ms.
    pub at_ms: u64,
    pub kind: Kind,
    /// The node hit (kill, restart, loss) or group A of a partition.
    pub nodes: Vec<usize>,
    /// How long the fault lasts (down time, partition, impairment), ms.
    pub duration_ms: u64,
    /// Loss and delay (Loss only).
    pub loss_pct: u32,
    pub delay_ms: u32,
}

/// Gap between two faults, ms.
const GAP_MS: std::ops::Range<u64> = 1_000..3_000;

pub fn generate(seed: u64, nodes: usize, seconds: u64, kinds: &[Kind]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let window = seconds * 1000;
    let mut out = vec![];
    if kinds.is_empty() || nodes < 2 {
        return out;
    }
    let mut at = rng.gen_range(GAP_MS);
    loop {
        let kind = *kinds.choose(&mut rng).expect("kinds is not empty");
        let victim = rng.gen_range(1..nodes);
        let f = match kind {
            Kind::Kill9 => Fault {
                at_ms: at,
                kind,
                nodes: vec![victim],
                duration_ms: rng.gen_range(500..5_000),
                loss_pct: 0,
                delay_ms: 0,
            },
            Kind::GracefulRestart => Fault {
                at_ms: at,
                kind,
                nodes: vec![victim],
                duration_ms: 0,
                loss_pct: 0,
                delay_ms: 0,
            },
            Kind::Partition => {
                let mut all: Vec<usize> = (0..nodes).collect();
                all.shuffle(&mut rng);
                let size = rng.gen_range(1..=nodes / 2);
                let mut group = all[..size].to_vec();
                group.sort_unstable();
                Fault {
                    at_ms: at,
                    kind,
                    nodes: group,
                    duration_ms: rng.gen_range(3_000..10_000),
                    loss_pct: 0,
                    delay_ms: 0,
                }
            }
            Kind::Loss => Fault {
                at_ms: at,
                kind,
                nodes: vec![victim],
                duration_ms: rng.gen_range(3_000..8_000),
                loss_pct: rng.gen_range(5..=30),
                delay_ms: rng.gen_range(20..=200),
            },
        };
        // A fault must end inside the window (a restart takes ~1 s).
        let end = at + f.duration_ms.max(1_000);
        if end > window {
            break;
        }
        out.push(f);
        at = end + rng.gen_range(GAP_MS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let a = generate(42, 7, 60, &Kind::ALL);
        assert_eq!(a, generate(42, 7, 60, &Kind::ALL));
        assert_ne!(a, generate(43, 7, 60, &Kind::ALL));
        assert!(a.len() >= 4);
        for f in &a {
            assert!(f.at_ms + f.duration_ms <= 60_000);
            if matches!(f.kind, Kind::Kill9 | Kind::GracefulRestart) {
                assert_ne!(f.nodes, vec![0], "node 0 is never killed");
            }
        }
        for w in a.windows(2) {
            assert!(w[1].at_ms >= w[0].at_ms + w[0].duration_ms);
        }
    }
}
