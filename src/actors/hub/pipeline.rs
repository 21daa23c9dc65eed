//! The put pipeline of one connection, as decisions without I/O (as
//! `registry.rs` is for dialing): puts are verified in parallel, but they
//! are stored, pushed and relayed in the order they arrived; a request that
//! reads (get, subscribe, query) runs only once the puts before it are
//! stored, so a client reads its own writes. The hub carries out the
//! `Step`s it returns and reports back with `verified` and `stored`.
//!
//! `T` is what the hub keeps with each job (ids, `to`, the credit that
//! keeps the connection's window in use until the job is done).

use std::collections::VecDeque;

use crate::crypto::sha256_hex;
use crate::messages::storage::{CrdtOutcome, StoreOutcome, StoredItem};
use crate::record::{Record, RecordError};

/// Arrival number of a put on its connection.
pub type Seq = u64;

/// Most records stored in one batch: bounds one storage call's latency.
pub const MAX_BATCH: usize = 256;

#[derive(Debug)]
enum Slot {
    Verifying,
    Verified(Record),
    Invalid(RecordError),
}

#[derive(Debug)]
enum Item<T> {
    Put {
        crdt: bool,
        slot: Slot,
        job: T,
    },
    /// A request that waits for the puts before it.
    After(T),
}

#[derive(Debug)]
struct Entry<T> {
    seq: Seq,
    item: Item<T>,
}

/// What the hub must do next.
#[derive(Debug)]
pub enum Step<T> {
    /// Check this record's hash and signature (on the crypto pool).
    Verify { seq: Seq, record: Record },
    /// Store these verified records, in this order, then call `stored`.
    Store(Vec<Batched<T>>),
    /// This record failed verification.
    Refuse { job: T, error: RecordError },
    /// Run this request now: every put before it is stored.
    Run(T),
}

#[derive(Debug)]
pub struct Batched<T> {
    pub record: Record,
    pub crdt: bool,
    pub job: T,
}

#[derive(Debug)]
pub struct Pipeline<T> {
    queue: VecDeque<Entry<T>>,
    next: Seq,
    storing: bool,
}

impl<T> Default for Pipeline<T> {
    fn default() -> Self {
        Pipeline {
            queue: VecDeque::new(),
            next: 0,
            storing: false,
        }
    }
}

impl<T> Pipeline<T> {
    /// A put (or crdtPut) arrived.
    pub fn put(&mut self, record: Record, crdt: bool, job: T) -> Vec<Step<T>> {
        let seq = self.next;
        self.next += 1;
        self.queue.push_back(Entry {
            seq,
            item: Item::Put {
                crdt,
                slot: Slot::Verifying,
                job,
            },
        });
        vec![Step::Verify { seq, record }]
    }

    /// A request that must see this connection's earlier puts arrived.
    pub fn after(&mut self, job: T) -> Vec<Step<T>> {
        if self.queue.is_empty() && !self.storing {
            return vec![Step::Run(job)];
        }
        let seq = self.next;
        self.next += 1;
        self.queue.push_back(Entry {
            seq,
            item: Item::After(job),
        });
        vec![]
    }

    /// The verdict on put `seq` came back (in any order).
    pub fn verified(&mut self, seq: Seq, verdict: Result<Record, RecordError>) -> Vec<Step<T>> {
        // Seqs in the queue are contiguous and increasing.
        let index = self
            .queue
            .front()
            .and_then(|f| usize::try_from(seq.checked_sub(f.seq)?).ok());
        if let Some(Entry {
            item: Item::Put { slot, .. },
            seq: found,
        }) = index.and_then(|i| self.queue.get_mut(i))
        {
            debug_assert_eq!(*found, seq);
            *slot = match verdict {
                Ok(r) => Slot::Verified(r),
                Err(e) => Slot::Invalid(e),
            };
        }
        self.drain()
    }

    /// The batch handed out last is stored (and its effects carried out).
    pub fn stored(&mut self) -> Vec<Step<T>> {
        self.storing = false;
        self.drain()
    }

    /// Nothing waiting and nothing being stored.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.storing
    }

    /// Jobs waiting (verifying, verified or queued requests).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn drain(&mut self) -> Vec<Step<T>> {
        let mut out = vec![];
        if self.storing {
            return out;
        }
        let mut batch = vec![];
        while let Some(front) = self.queue.front() {
            let ready = match &front.item {
                Item::Put {
                    slot: Slot::Verifying,
                    ..
                } => false,
                Item::Put {
                    slot: Slot::Verified(_),
                    ..
                } => batch.len() < MAX_BATCH,
                // Refusals and requests wait for the batch before them.
                _ => batch.is_empty(),
            };
            if !ready {
                break;
            }
            let Some(entry) = self.queue.pop_front() else {
                break;
            };
            match entry.item {
                Item::Put {
                    crdt,
                    slot: Slot::Verified(record),
                    job,
                } => batch.push(Batched { record, crdt, job }),
                Item::Put {
                    slot: Slot::Invalid(error),
                    job,
                    ..
                } => out.push(Step::Refuse { job, error }),
                Item::After(job) => out.push(Step::Run(job)),
                Item::Put {
                    slot: Slot::Verifying,
                    ..
                } => unreachable!("checked above"),
            }
        }
        if !batch.is_empty() {
            self.storing = true;
            out.push(Step::Store(batch));
        }
        out
    }
}

/// What one stored record means for the others, in order.
#[derive(Debug)]
pub enum Fanout {
    /// Push `record` to the key's subscribers (each once, by `dedupe`).
    Push {
        record: Record,
        kind: &'static str,
        dedupe: String,
    },
    /// Answer whoever waits for request `id` (a relayed get) with `record`.
    Answer {
        record: Record,
    },
    /// Relay `record` to the server peers (each once, by `dedupe`).
    Relay {
        record: Record,
        kind: &'static str,
        dedupe: String,
    },
    /// Nothing to send; say why in the log.
    Refused(RecordError),
    Failed(String),
}

/// The effects of one storage outcome (DESIGN.md's protocol): a winning
/// record is pushed, answers a waiting get, and is relayed; a losing one
/// answers with the stored winner; a CRDT merge pushes the merged set and
/// relays the incoming changes.
pub fn fanout(outcome: StoredItem) -> Vec<Fanout> {
    match outcome {
        StoredItem::Plain(Ok(StoreOutcome::Won(record))) => vec![
            Fanout::Push {
                record: record.clone(),
                kind: "put",
                dedupe: record.hash.clone(),
            },
            Fanout::Answer {
                record: record.clone(),
            },
            Fanout::Relay {
                dedupe: record.hash.clone(),
                record,
                kind: "put",
            },
        ],
        StoredItem::Plain(Ok(StoreOutcome::Lost { current })) => {
            vec![Fanout::Answer { record: current }]
        }
        StoredItem::Plain(Ok(StoreOutcome::Refused(e)))
        | StoredItem::Crdt(Ok(CrdtOutcome::Refused(e)), _) => vec![Fanout::Refused(e)],
        StoredItem::Crdt(Ok(CrdtOutcome::Merged(merged)), incoming) => vec![
            Fanout::Push {
                // The merged text changes while its hash may not.
                dedupe: sha256_hex(merged.raw().as_bytes()),
                record: merged.clone(),
                kind: "crdtPut",
            },
            Fanout::Answer { record: merged },
            Fanout::Relay {
                dedupe: sha256_hex(incoming.raw().as_bytes()),
                record: incoming,
                kind: "crdtPut",
            },
        ],
        StoredItem::Crdt(Ok(CrdtOutcome::Unchanged { current }), _) => {
            vec![Fanout::Answer { record: current }]
        }
        StoredItem::Plain(Err(e)) | StoredItem::Crdt(Err(e), _) => {
            vec![Fanout::Failed(e.to_string())]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyScheme, NodeKey};
    use crate::record::sign_record;

    fn rec(key: &str, t: u64) -> Record {
        let k = NodeKey::generate(KeyScheme::Secp256k1);
        sign_record(&k, key, &serde_json::json!(t), t)
    }

    fn verify_seq(steps: &[Step<u32>]) -> Seq {
        match steps {
            [Step::Verify { seq, .. }] => *seq,
            other => panic!("expected one Verify, got {other:?}"),
        }
    }

    fn stored_jobs(steps: &[Step<u32>]) -> Vec<u32> {
        steps
            .iter()
            .flat_map(|s| match s {
                Step::Store(b) => b.iter().map(|x| x.job).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn puts_verified_out_of_order_are_stored_in_arrival_order() {
        let mut p = Pipeline::default();
        let s0 = verify_seq(&p.put(rec("a", 1), false, 0));
        let s1 = verify_seq(&p.put(rec("a", 2), false, 1));
        let s2 = verify_seq(&p.put(rec("a", 3), false, 2));
        assert!(p.verified(s2, Ok(rec("a", 3))).is_empty(), "2 waits for 0");
        assert!(p.verified(s1, Ok(rec("a", 2))).is_empty(), "1 waits for 0");
        let steps = p.verified(s0, Ok(rec("a", 1)));
        assert_eq!(stored_jobs(&steps), vec![0, 1, 2], "one batch, in order");
        assert!(!p.is_idle(), "the batch is being stored");
        assert!(p.stored().is_empty());
        assert!(p.is_idle());
    }

    #[test]
    fn only_one_batch_is_stored_at_a_time() {
        let mut p = Pipeline::default();
        let s0 = verify_seq(&p.put(rec("a", 1), false, 0));
        assert_eq!(stored_jobs(&p.verified(s0, Ok(rec("a", 1)))), vec![0]);
        let s1 = verify_seq(&p.put(rec("a", 2), false, 1));
        assert!(
            p.verified(s1, Ok(rec("a", 2))).is_empty(),
            "put 1 waits until batch 0 is stored"
        );
        assert_eq!(stored_jobs(&p.stored()), vec![1]);
    }

    #[test]
    fn a_refusal_keeps_its_place_in_line() {
        let mut p = Pipeline::default();
        let s0 = verify_seq(&p.put(rec("a", 1), false, 0));
        let s1 = verify_seq(&p.put(rec("a", 2), false, 1));
        let s2 = verify_seq(&p.put(rec("a", 3), false, 2));
        p.verified(s1, Err(RecordError::InvalidHashNonce));
        p.verified(s2, Ok(rec("a", 3)));
        let steps = p.verified(s0, Ok(rec("a", 1)));
        // 0 is stored alone; the refusal of 1 and then 2 come after it.
        assert_eq!(stored_jobs(&steps), vec![0]);
        let steps = p.stored();
        assert!(matches!(steps[0], Step::Refuse { job: 1, .. }));
        assert_eq!(stored_jobs(&steps), vec![2]);
    }

    #[test]
    fn a_read_waits_for_the_puts_before_it() {
        let mut p = Pipeline::default();
        assert!(
            matches!(p.after(7).as_slice(), [Step::Run(7)]),
            "an idle connection reads at once"
        );
        let s0 = verify_seq(&p.put(rec("a", 1), false, 0));
        assert!(p.after(8).is_empty(), "the get waits for put 0");
        let s2 = verify_seq(&p.put(rec("a", 2), false, 2));
        p.verified(s2, Ok(rec("a", 2)));
        let steps = p.verified(s0, Ok(rec("a", 1)));
        assert_eq!(stored_jobs(&steps), vec![0], "put 2 is behind the get");
        let steps = p.stored();
        assert!(matches!(steps[0], Step::Run(8)));
        assert_eq!(stored_jobs(&steps), vec![2]);
    }

    #[test]
    fn batches_are_bounded() {
        let mut p = Pipeline::default();
        let n = MAX_BATCH as u32 + 10;
        let seqs: Vec<Seq> = (0..n)
            .map(|i| verify_seq(&p.put(rec("a", 1), false, i)))
            .collect();
        // Everything but the first is verified: nothing may be stored yet.
        for &s in &seqs[1..] {
            assert!(stored_jobs(&p.verified(s, Ok(rec("a", 1)))).is_empty());
        }
        let first = stored_jobs(&p.verified(seqs[0], Ok(rec("a", 1))));
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(stored_jobs(&p.stored()).len(), 10);
    }

    #[test]
    fn a_winner_is_pushed_answered_and_relayed_a_loser_only_answers() {
        let r = rec("k", 5);
        let effects = fanout(StoredItem::Plain(Ok(StoreOutcome::Won(r.clone()))));
        assert!(
            matches!(&effects[..], [Fanout::Push { kind: "put", .. }, Fanout::Answer { .. }, Fanout::Relay { kind: "put", dedupe, .. }] if *dedupe == r.hash)
        );
        let effects = fanout(StoredItem::Plain(Ok(StoreOutcome::Lost {
            current: r.clone(),
        })));
        assert!(matches!(&effects[..], [Fanout::Answer { record }] if record.hash == r.hash));
    }
}
