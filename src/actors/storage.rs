//! `Storage`: a `SyncArbiter` pool sharing one `sled::Db`. Records are kept
//! as their raw JSON text by key; the winner rule and CRDT merges run inside
//! sled's atomic compare-and-swap per key, so two concurrent puts of one key
//! never lose the winner. Owned by the server; the hub holds its address.
//! When `sync_writes` is on, a write is flushed before it is reported, so
//! nothing a client could have read is lost to `kill -9`.

use actix::prelude::*;
use serde::Deserialize;

use crate::crdt;
use crate::durability::Durability;
use crate::messages::storage::*;
use crate::record::{wins, Record, RecordError, RecordMeta};

pub const RECORDS_TREE: &str = "records";
/// The peer book: server address → its newest verified peer record.
pub const PEERS_TREE: &str = "peers";
/// Record signature (its `binding_key`) → the key it was first stored
/// under. Tool Db's hash does not cover `k`, so without this a signed record
/// could be replayed under any other key of its author's (or a global one).
/// Bound by `s`, not `h`: one value written to two keys in one millisecond
/// has one `h`, but Tool Db's P-256 signatures (WebCrypto) are randomised,
/// so two `s`.
pub const BINDINGS_TREE: &str = "sig_bindings";
/// The same map keyed by the whole signature text (128-132 bytes), as
/// builds before `sig_bindings` kept it; moved over once at open.
pub const LEGACY_BINDINGS_TREE: &str = "bindings";

/// The bindings tree's key for a signature: 16 bytes of its SHA-256. Every
/// put inserts one random key into that tree, and sled copies a leaf's keys
/// whenever it rewrites it: with the signature text as key this insert was
/// 80% of a put's storage time (`versus_js` under perf), 10% of its CPU.
/// 128 bits keep accidental collisions out of reach; a chosen one would
/// need a second preimage of someone else's signature.
fn binding_key(sig: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(sig.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}
/// CRDT key → its `crdt::Kept` (the signed change lists its merged set in
/// `RECORDS_TREE` is derived from). A CRDT key without an entry was stored
/// before this tree existed: its merged set is read as `Kept::from_legacy`
/// and the entry written at its next merge.
pub const CRDT_TREE: &str = "crdt_lists";

/// How far back-dated (older than the holder's) a write may be and still
/// take a frozen `==` key over: two owners racing for a name within this
/// converge on the older write; beyond it the holder keeps the key (else a
/// write signed with `t = 1` would take any frozen key for ever).
pub const FROZEN_TAKEOVER_WINDOW_MS: u64 = 60_000;

/// Moves the bindings of an older build (keyed by the signature text) into
/// `bindings` under their `binding_key`, then drops the old tree; flushed
/// before the drop, so a crash in between only repeats the move.
fn migrate_bindings(db: &sled::Db, bindings: &sled::Tree) -> Result<(), StorageError> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n == LEGACY_BINDINGS_TREE.as_bytes())
    {
        return Ok(());
    }
    let legacy = db.open_tree(LEGACY_BINDINGS_TREE)?;
    let mut moved = 0usize;
    for entry in legacy.iter() {
        let (sig, key) = entry?;
        let sig = String::from_utf8_lossy(&sig);
        bindings.insert(binding_key(&sig), key)?;
        moved += 1;
    }
    bindings.flush()?;
    drop(legacy);
    db.drop_tree(LEGACY_BINDINGS_TREE)?;
    if moved > 0 {
        tracing::info!(moved, "moved record bindings to the compact tree");
    }
    Ok(())
}

/// Stored texts at least this long are parsed once and shared (`Parsed`).
const SHARE_FROM_BYTES: usize = 64 * 1024;
/// Parsed records kept at most, in bytes of their text.
pub const SHARED_BYTES: usize = 4 << 20;

/// The parse of the last few big stored texts, keyed by key and checked
/// against the bytes read (so a write can never be answered stale). A
/// crdtGet flood of a 900 KB record made each read check, parse and copy
/// it twice (~4 ms): with 32 such reads queued in the pool's two threads,
/// an honest put or get waited 150-350 ms behind them (attack bench
/// crdt_get).
#[derive(Default)]
struct Parsed {
    /// Oldest first.
    entries: std::collections::VecDeque<(String, sled::IVec, std::sync::Arc<Record>)>,
    bytes: usize,
}

impl Parsed {
    fn find(&self, key: &str, bytes: &sled::IVec) -> Option<std::sync::Arc<Record>> {
        self.entries
            .iter()
            .find(|(k, b, _)| k == key && b == bytes)
            .map(|(.., r)| r.clone())
    }

    fn keep(&mut self, key: &str, bytes: sled::IVec, record: std::sync::Arc<Record>) {
        if let Some(i) = self.entries.iter().position(|(k, ..)| k == key) {
            let (_, old, _) = self.entries.remove(i).expect("found");
            self.bytes -= old.len();
        }
        self.bytes += bytes.len();
        self.entries.push_back((key.to_owned(), bytes, record));
        while self.bytes > SHARED_BYTES && self.entries.len() > 1 {
            let (_, old, _) = self.entries.pop_front().expect("not empty");
            self.bytes -= old.len();
        }
    }
}

#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// Shared by the pool's threads.
    parsed: std::sync::Arc<std::sync::Mutex<Parsed>>,
    records: sled::Tree,
    peers: sled::Tree,
    bindings: sled::Tree,
    crdt: sled::Tree,
    /// Largest record text stored, CRDT merges included.
    max_record_bytes: usize,
    /// Told of every write; the hub awaits it before exposing one.
    durability: Durability,
}

impl Storage {
    /// With `sync_writes`, a flusher thread (group commit) makes writes
    /// durable and `durability()` tells when.
    pub fn new(db: sled::Db, sync_writes: bool) -> Result<Self, StorageError> {
        let durability = if sync_writes {
            Durability::start(db.clone())
        } else {
            Durability::off()
        };
        let records = db.open_tree(RECORDS_TREE)?;
        let peers = db.open_tree(PEERS_TREE)?;
        let bindings = db.open_tree(BINDINGS_TREE)?;
        migrate_bindings(&db, &bindings)?;
        let crdt = db.open_tree(CRDT_TREE)?;
        Ok(Storage {
            db,
            parsed: Default::default(),
            records,
            peers,
            bindings,
            crdt,
            max_record_bytes: crate::config::Limits::default().max_record_bytes,
            durability,
        })
    }

    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Binds the record's signature to its key, or says which key it
    /// belongs to.
    fn bind(&self, record: &Record) -> Result<Option<RecordError>, StorageError> {
        let cas = self.bindings.compare_and_swap(
            binding_key(&record.sig),
            None as Option<&[u8]>,
            Some(record.key.as_bytes()),
        )?;
        Ok(match cas {
            Err(sled::CompareAndSwapError {
                current: Some(first),
                ..
            }) if *first != *record.key.as_bytes() => Some(RecordError::Rekeyed {
                key: record.key.clone(),
                first: String::from_utf8_lossy(&first).into_owned(),
            }),
            _ => None,
        })
    }

    fn too_large(&self, key: &str, size: usize) -> Option<RecordError> {
        (size > self.max_record_bytes).then(|| RecordError::TooLarge {
            key: key.to_owned(),
            size,
            limit: self.max_record_bytes,
        })
    }

    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    fn parse_stored(key: &str, bytes: &[u8]) -> Result<Record, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
        Record::parse_str(text).map_err(|e| corrupt(e.to_string()))
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        match self.records.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(Self::parse_stored(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// `get`, a big record parsed once for every reader of the same text.
    pub fn get_shared(&self, key: &str) -> Result<Option<std::sync::Arc<Record>>, StorageError> {
        let Some(bytes) = self.records.get(key.as_bytes())? else {
            return Ok(None);
        };
        if bytes.len() < SHARE_FROM_BYTES {
            return Ok(Some(std::sync::Arc::new(Self::parse_stored(key, &bytes)?)));
        }
        let lock = || self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = lock().find(key, &bytes) {
            return Ok(Some(record));
        }
        let record = std::sync::Arc::new(Self::parse_stored(key, &bytes)?);
        lock().keep(key, bytes, record.clone());
        Ok(Some(record))
    }

    /// The stored-state half of verification (Tool Db's step 4) and the
    /// winner rule, applied atomically.
    pub fn store(&self, record: Record) -> Result<StoreOutcome, StorageError> {
        #[derive(Deserialize)]
        struct Meta {
            k: String,
            t: u64,
            a: String,
            h: String,
        }
        enum Decision {
            Won,
            Lost(Vec<u8>),
            Refused(RecordError),
            Corrupt(String),
        }
        if let Some(e) = self.too_large(&record.key, record.raw().len()) {
            return Ok(StoreOutcome::Refused(e));
        }
        if let Some(e) = self.bind(&record)? {
            return Ok(StoreOutcome::Refused(e));
        }
        let mut decision = Decision::Won;
        let incoming = record.meta();
        let _write = self.durability.write();
        self.records
            .fetch_and_update(record.key.as_bytes(), |old| match old {
                None => {
                    decision = Decision::Won;
                    Some(record.raw().as_bytes().to_vec())
                }
                Some(bytes) => match serde_json::from_slice::<Meta>(bytes) {
                    Err(e) => {
                        // Never overwrite what we cannot read: report instead.
                        decision = Decision::Corrupt(e.to_string());
                        Some(bytes.to_vec())
                    }
                    Ok(m) => {
                        let stored = RecordMeta {
                            key: &m.k,
                            timestamp: m.t,
                            address: &m.a,
                            hash: &m.h,
                        };
                        let other_author = record.is_frozen() && m.a != record.address;
                        if other_author && m.t <= record.timestamp {
                            decision = Decision::Refused(RecordError::CantOverwrite {
                                key: record.key.clone(),
                            });
                            Some(bytes.to_vec())
                        } else if other_author
                            && record.timestamp.saturating_add(FROZEN_TAKEOVER_WINDOW_MS) < m.t
                        {
                            decision = Decision::Refused(RecordError::BackDated {
                                key: record.key.clone(),
                                window_s: FROZEN_TAKEOVER_WINDOW_MS / 1000,
                            });
                            Some(bytes.to_vec())
                        } else if wins(&incoming, &stored) {
                            decision = Decision::Won;
                            Some(record.raw().as_bytes().to_vec())
                        } else {
                            decision = Decision::Lost(bytes.to_vec());
                            Some(bytes.to_vec())
                        }
                    }
                },
            })?;
        match decision {
            Decision::Won => Ok(StoreOutcome::Won(record)),
            Decision::Lost(bytes) => Ok(StoreOutcome::Lost {
                current: Self::parse_stored(&record.key, &bytes)?,
            }),
            Decision::Refused(e) => Ok(StoreOutcome::Refused(e)),
            Decision::Corrupt(reason) => Err(StorageError::Corrupt {
                key: record.key.clone(),
                reason,
            }),
        }
    }

    /// Merges a verified CRDT record into its key. The key's `Kept` lists
    /// (in `CRDT_TREE`) and the merged set derived from them (in
    /// `RECORDS_TREE`, what clients read) change in one transaction.
    pub fn merge_crdt(&self, record: Record) -> Result<CrdtOutcome, StorageError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        if let Some(e) = self.too_large(&record.key, record.raw().len()) {
            return Ok(CrdtOutcome::Refused(e));
        }
        if let Some(e) = self.bind(&record)? {
            return Ok(CrdtOutcome::Refused(e));
        }
        let key = record.key.as_bytes();
        let _write = self.durability.write();
        let decision = (&self.records, &self.crdt)
            .transaction(|(records, crdt)| {
                let view = records.get(key)?;
                let kept = crdt.get(key)?;
                let d = decide_crdt(
                    view.as_deref(),
                    kept.as_deref(),
                    &record,
                    self.max_record_bytes,
                );
                if let CrdtDecision::Store { view, kept } = &d {
                    records.insert(key, view.as_bytes())?;
                    crdt.insert(key, kept.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(d)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StorageError::Sled(e),
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        let corrupt = |reason: String| StorageError::Corrupt {
            key: record.key.clone(),
            reason,
        };
        match decision {
            CrdtDecision::Store { view, .. } => Ok(CrdtOutcome::Merged(Self::parse_stored(
                &record.key,
                view.as_bytes(),
            )?)),
            CrdtDecision::Unchanged(current) => Ok(CrdtOutcome::Unchanged {
                current: Self::parse_stored(&record.key, &current)?,
            }),
            CrdtDecision::Refused(e) => Ok(CrdtOutcome::Refused(e)),
            CrdtDecision::Corrupt(reason) => Err(corrupt(reason)),
        }
    }

    /// The signed lists of a CRDT key, for a server of ours; `None` when
    /// the key holds no CRDT. A key stored in the old layout (a merged set
    /// alone) gives its set if it still hashes, else nothing.
    pub fn crdt_lists(&self, key: &str) -> Result<Option<Vec<Record>>, StorageError> {
        let Some(view) = self.get(key)? else {
            return Ok(None);
        };
        if view.crdt.is_none() {
            return Ok(None);
        }
        let kept = match self.crdt.get(key.as_bytes())? {
            Some(bytes) => {
                serde_json::from_slice::<crdt::Kept>(&bytes).map_err(|e| StorageError::Corrupt {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?
            }
            None => crdt::Kept::from_legacy(view),
        };
        Ok(Some(kept.signed))
    }

    /// Keys under `prefix`, until `limit` keys or `max_bytes` of them as
    /// JSON strings (a comma each).
    pub fn query(
        &self,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeyPage, StorageError> {
        let mut page = KeyPage::default();
        let mut bytes = 0usize;
        for item in self.records.scan_prefix(prefix.as_bytes()).keys() {
            let k = String::from_utf8_lossy(&item?).into_owned();
            bytes += serde_json::to_string(&k).map_or(usize::MAX / 2, |t| t.len()) + 1;
            if page.keys.len() == limit || bytes > max_bytes {
                page.truncated = true;
                break;
            }
            page.keys.push(k);
        }
        Ok(page)
    }
}

impl Storage {
    pub fn save_peer(&self, peer: &crate::peer::Peer) -> Result<(), StorageError> {
        let newer = match self.peers.get(peer.address.as_bytes())? {
            Some(old) => serde_json::from_slice::<crate::peer::Peer>(&old)
                .map_or(true, |old| old.timestamp < peer.timestamp),
            None => true,
        };
        if newer {
            let bytes = serde_json::to_vec(peer).expect("a peer record serialises");
            self.peers.insert(peer.address.as_bytes(), bytes)?;
            // Rare and small: flushed at once, so a restart after kill -9
            // still finds the servers it knew.
            self.db.flush()?;
        }
        Ok(())
    }

    pub fn load_peers(&self) -> Result<Vec<crate::peer::Peer>, StorageError> {
        let mut out = vec![];
        for item in self.peers.iter() {
            let (k, v) = item?;
            match serde_json::from_slice(&v) {
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e, "skipped an unreadable peer book entry")
                }
            }
        }
        Ok(out)
    }
}

impl Storage {
    /// Our items (key, digest) in `range`, sorted by key.
    pub fn items(
        &self,
        range: &crate::reconcile::Range,
    ) -> Result<Vec<crate::reconcile::Item>, StorageError> {
        use std::ops::Bound;
        let lo = range
            .lo
            .as_ref()
            .map_or(Bound::Unbounded, |k| Bound::Included(k.as_bytes().to_vec()));
        let hi = range
            .hi
            .as_ref()
            .map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes().to_vec()));
        let mut out = vec![];
        for item in self.records.range::<Vec<u8>, _>((lo, hi)) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let record = Self::parse_stored(&key, &v)?;
            out.push(crate::reconcile::Item {
                digest: crate::reconcile::digest_of(&record),
                key,
            });
        }
        Ok(out)
    }

    pub fn reconcile_step(
        &self,
        step: &crate::reconcile::Step,
        max_records: usize,
        signed_lists: bool,
    ) -> Result<ReconcileAnswer, StorageError> {
        use crate::reconcile::Step;
        let ranges: Vec<crate::reconcile::Range> = match step {
            Step::Ranges { ranges } => ranges.iter().map(|r| r.range.clone()).collect(),
            Step::Items { range, .. } => vec![range.clone()],
            Step::Need { .. } => vec![],
        };
        let mut own = vec![];
        for r in &ranges {
            own.extend(self.items(r)?);
        }
        own.sort_by(|a, b| a.key.cmp(&b.key));
        own.dedup_by(|a, b| a.key == b.key);
        let outcome = crate::reconcile::respond(&own, step);
        let mut records = vec![];
        for key in &outcome.send {
            if records.len() >= max_records {
                break;
            }
            // A CRDT key goes to a server of ours as the lists it is
            // derived from: changes we hold unproved stay here.
            match self.crdt_lists(key)?.filter(|_| signed_lists) {
                Some(lists) => records.extend(lists),
                None => records.extend(self.get(key)?),
            }
        }
        Ok(ReconcileAnswer {
            reply: outcome.reply,
            records,
        })
    }
}

/// What a CRDT merge does to its key.
#[derive(Debug)]
enum CrdtDecision {
    /// Write this merged set and these kept lists (JSON).
    Store {
        view: String,
        kept: Vec<u8>,
    },
    /// Nothing new: the stored merged set.
    Unchanged(Vec<u8>),
    Refused(RecordError),
    Corrupt(String),
}

/// The merge itself, without I/O: from the stored merged set (`view`), the
/// stored lists (`kept`, absent for a key of the old layout) and a
/// verified `incoming` record.
fn decide_crdt(
    view: Option<&[u8]>,
    kept: Option<&[u8]>,
    incoming: &Record,
    max_bytes: usize,
) -> CrdtDecision {
    let parse = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| Record::parse_str(t).map_err(|e| e.to_string()))
    };
    let mut state = match view {
        None => crdt::Kept::default(),
        Some(bytes) => {
            let stored = match parse(bytes) {
                Ok(r) => r,
                // Never overwrite what we cannot read: report instead.
                Err(e) => return CrdtDecision::Corrupt(e),
            };
            if stored.crdt != incoming.crdt {
                // Another kind (or a plain value): the newer wins whole.
                if incoming.timestamp <= stored.timestamp {
                    return CrdtDecision::Unchanged(bytes.to_vec());
                }
                crdt::Kept::default()
            } else {
                let mut state = match kept.map(serde_json::from_slice::<crdt::Kept>) {
                    Some(Ok(k)) => k,
                    Some(Err(e)) => return CrdtDecision::Corrupt(e.to_string()),
                    None => crdt::Kept::from_legacy(stored.clone()),
                };
                // The stored set holds changes the lists do not (written by
                // a build without lists): keep them, unproved.
                if state.view().ok().flatten().as_deref() != Some(stored.raw()) {
                    if let Err(e) = state.add(stored) {
                        return CrdtDecision::Corrupt(e.to_string());
                    }
                }
                state
            }
        }
    };
    match state.add(incoming.clone()) {
        Ok(true) => {}
        Ok(false) => return CrdtDecision::Unchanged(view.unwrap_or_default().to_vec()),
        Err(e @ RecordError::TooManyLists { .. }) => return CrdtDecision::Refused(e),
        Err(e) => return CrdtDecision::Corrupt(e.to_string()),
    }
    let merged = match state.view() {
        Ok(Some(v)) => v,
        Ok(None) => return CrdtDecision::Corrupt("no record kept".into()),
        Err(e) => return CrdtDecision::Corrupt(e.to_string()),
    };
    let size = state.bytes().max(merged.len());
    if size > max_bytes {
        // The change set would pass the limit: this change is refused,
        // the stored set kept.
        return CrdtDecision::Refused(RecordError::TooLarge {
            key: incoming.key.clone(),
            size,
            limit: max_bytes,
        });
    }
    let kept = serde_json::to_vec(&state).expect("kept lists serialise");
    CrdtDecision::Store { view: merged, kept }
}

impl Handler<ReconcileStart> for Storage {
    type Result = Result<crate::reconcile::Step, StorageError>;
    fn handle(&mut self, _: ReconcileStart, _: &mut Self::Context) -> Self::Result {
        Ok(crate::reconcile::start(
            &self.items(&crate::reconcile::Range::all())?,
        ))
    }
}

impl Handler<ReconcileStep> for Storage {
    type Result = Result<ReconcileAnswer, StorageError>;
    fn handle(&mut self, msg: ReconcileStep, _: &mut Self::Context) -> Self::Result {
        self.reconcile_step(&msg.step, msg.max_records, msg.signed_lists)
    }
}

impl Handler<SavePeer> for Storage {
    type Result = Result<(), StorageError>;
    fn handle(&mut self, msg: SavePeer, _: &mut Self::Context) -> Self::Result {
        self.save_peer(&msg.peer)
    }
}

impl Handler<LoadPeers> for Storage {
    type Result = Result<Vec<crate::peer::Peer>, StorageError>;
    fn handle(&mut self, _: LoadPeers, _: &mut Self::Context) -> Self::Result {
        self.load_peers()
    }
}

impl Actor for Storage {
    type Context = SyncContext<Self>;
}

impl Handler<StoreBatch> for Storage {
    type Result = MessageResult<StoreBatch>;
    fn handle(&mut self, msg: StoreBatch, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            msg.items
                .into_iter()
                .map(|(record, crdt)| {
                    if crdt {
                        StoredItem::Crdt(self.merge_crdt(record.clone()), record)
                    } else {
                        StoredItem::Plain(self.store(record))
                    }
                })
                .collect(),
        )
    }
}

impl Handler<StoreRecord> for Storage {
    type Result = Result<StoreOutcome, StorageError>;
    fn handle(&mut self, msg: StoreRecord, _: &mut Self::Context) -> Self::Result {
        self.store(msg.record)
    }
}

impl Handler<MergeCrdt> for Storage {
    type Result = Result<CrdtOutcome, StorageError>;
    fn handle(&mut self, msg: MergeCrdt, _: &mut Self::Context) -> Self::Result {
        self.merge_crdt(msg.record)
    }
}

impl Handler<GetCrdtLists> for Storage {
    type Result = Result<Option<Vec<Record>>, StorageError>;
    fn handle(&mut self, msg: GetCrdtLists, _: &mut Self::Context) -> Self::Result {
        self.crdt_lists(&msg.key)
    }
}

impl Handler<GetRecord> for Storage {
    type Result = Result<Option<std::sync::Arc<Record>>, StorageError>;
    fn handle(&mut self, msg: GetRecord, _: &mut Self::Context) -> Self::Result {
        self.get_shared(&msg.key)
    }
}

impl Handler<QueryKeys> for Storage {
    type Result = Result<KeyPage, StorageError>;
    fn handle(&mut self, msg: QueryKeys, _: &mut Self::Context) -> Self::Result {
        self.query(&msg.prefix, msg.limit, msg.max_bytes)
    }
}

impl Handler<FlushStorage> for Storage {
    type Result = Result<(), StorageError>;
    fn handle(&mut self, _: FlushStorage, _: &mut Self::Context) -> Self::Result {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyScheme, NodeKey};
    use crate::record::{now_ms, sign_record};
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, Storage::new(db, true).unwrap())
    }

    #[test]
    fn a_big_record_is_parsed_once_for_its_readers_and_never_served_stale() {
        let (_d, s) = storage();
        let k = NodeKey::generate(KeyScheme::P256);
        let t = now_ms();
        let big = |v: &str| json!(v.repeat(SHARE_FROM_BYTES));
        let old = sign_record(&k, "big", &big("a"), t);
        assert!(matches!(
            s.store(old.clone()).unwrap(),
            StoreOutcome::Won(_)
        ));
        let first = s.get_shared("big").unwrap().unwrap();
        let again = s.get_shared("big").unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one parse shared");
        assert_eq!(first.raw(), old.raw());
        let new = sign_record(&k, "big", &big("b"), t + 1);
        assert!(matches!(
            s.store(new.clone()).unwrap(),
            StoreOutcome::Won(_)
        ));
        assert_eq!(s.get_shared("big").unwrap().unwrap().raw(), new.raw());
        let small = sign_record(&k, "small", &json!(1), t);
        s.store(small.clone()).unwrap();
        let (a, b) = (
            s.get_shared("small").unwrap().unwrap(),
            s.get_shared("small").unwrap().unwrap(),
        );
        assert!(!Arc::ptr_eq(&a, &b), "small records are not kept");
        assert_eq!(a.raw(), small.raw());
    }

    #[test]
    fn newer_wins_older_loses_and_text_is_kept() {
        let (_d, s) = storage();
        let k = NodeKey::generate(KeyScheme::P256);
        let t = now_ms();
        let old = sign_record(&k, "x", &json!("old"), t);
        let new = sign_record(&k, "x", &json!("new"), t + 1);
        assert!(matches!(
            s.store(new.clone()).unwrap(),
            StoreOutcome::Won(_)
        ));
        match s.store(old).unwrap() {
            StoreOutcome::Lost { current } => assert_eq!(current.raw(), new.raw()),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.get("x").unwrap().unwrap().raw(), new.raw());
        assert!(s.get("y").unwrap().is_none());
    }

    #[test]
    fn frozen_keys_keep_their_first_author() {
        let (_d, s) = storage();
        let owner = NodeKey::generate(KeyScheme::P256);
        let thief = NodeKey::generate(KeyScheme::P256);
        let t = now_ms();
        s.store(sign_record(&owner, "==name", &json!(1), t))
            .unwrap();
        let out = s
            .store(sign_record(&thief, "==name", &json!(2), t + 5))
            .unwrap();
        assert!(matches!(
            out,
            StoreOutcome::Refused(RecordError::CantOverwrite { .. })
        ));
        assert!(s
            .get("==name")
            .unwrap()
            .unwrap()
            .raw()
            .contains(owner.address()));
    }

    #[test]
    fn a_back_dated_write_cannot_take_a_frozen_key_over_but_a_close_race_converges() {
        let (_d, s) = storage();
        let owner = NodeKey::generate(KeyScheme::P256);
        let thief = NodeKey::generate(KeyScheme::P256);
        let racer = NodeKey::generate(KeyScheme::P256);
        let t = now_ms();
        s.store(sign_record(&owner, "==name", &json!(1), t))
            .unwrap();
        let out = s
            .store(sign_record(&thief, "==name", &json!(2), 1))
            .unwrap();
        assert!(
            matches!(out, StoreOutcome::Refused(RecordError::BackDated { .. })),
            "{out:?}"
        );
        // Within the window, the older write still wins (servers converge).
        let out = s
            .store(sign_record(&racer, "==name", &json!(3), t - 1_000))
            .unwrap();
        assert!(matches!(out, StoreOutcome::Won(_)), "{out:?}");
    }

    #[test]
    fn a_signed_record_cannot_be_replayed_under_another_key() {
        let (_d, s) = storage();
        let victim = NodeKey::generate(KeyScheme::P256);
        let post_key = format!(":{}.post", victim.address());
        let settings_key = format!(":{}.settings", victim.address());
        let post = sign_record(&victim, &post_key, &json!("hello"), now_ms());
        assert!(matches!(
            s.store(post.clone()).unwrap(),
            StoreOutcome::Won(_)
        ));
        // `k` is not covered by the hash: the same h/s under another key.
        let mut v: Value = serde_json::from_str(post.raw()).unwrap();
        v["k"] = json!(settings_key);
        let replayed = Record::parse_str(&v.to_string()).unwrap();
        assert_eq!(replayed.verify(now_ms(), 0), Ok(()));
        let out = s.store(replayed).unwrap();
        assert!(
            matches!(&out, StoreOutcome::Refused(RecordError::Rekeyed { first, .. }) if *first == post_key),
            "{out:?}"
        );
        assert!(s.get(&settings_key).unwrap().is_none());
        // The same record under its own key again is fine (a relay).
        assert!(!matches!(s.store(post).unwrap(), StoreOutcome::Refused(_)));
    }

    /// A database of a build that kept bindings by signature text: they
    /// still refuse a replay after the upgrade, and the old tree is gone.
    #[test]
    fn bindings_of_an_older_build_still_refuse_replays() {
        let dir = tempfile::tempdir().unwrap();
        let victim = NodeKey::generate(KeyScheme::P256);
        let post_key = format!(":{}.post", victim.address());
        let post = sign_record(&victim, &post_key, &json!("hello"), now_ms());
        {
            let db = sled::open(dir.path()).unwrap();
            let legacy = db.open_tree(LEGACY_BINDINGS_TREE).unwrap();
            legacy
                .insert(post.sig.as_bytes(), post_key.as_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let db = crate::durability::open_database(dir.path()).unwrap();
        let s = Storage::new(db.clone(), true).unwrap();
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| n == LEGACY_BINDINGS_TREE.as_bytes()));
        let mut v: Value = serde_json::from_str(post.raw()).unwrap();
        v["k"] = json!(format!(":{}.settings", victim.address()));
        let replayed = Record::parse_str(&v.to_string()).unwrap();
        let out = s.store(replayed).unwrap();
        assert!(
            matches!(&out, StoreOutcome::Refused(RecordError::Rekeyed { first, .. }) if *first == post_key),
            "{out:?}"
        );
    }

    #[test]
    fn a_crdt_change_that_would_pass_the_size_limit_is_refused() {
        let (_d, s) = storage();
        let s = s.with_max_record_bytes(4_000);
        let k = NodeKey::generate(KeyScheme::P256);
        let change = |i: u64| json!({"t":"SET","a":k.address(),"k":format!("f{i}"),"v":"x".repeat(500),"i":i});
        let t = now_ms();
        let mut refused = 0;
        for i in 0..20 {
            let rec = crate::record::sign_record_with(
                &k,
                "doc",
                &json!([change(i)]),
                t + i,
                Some(crate::record::CrdtKind::Map),
                0,
            );
            if let CrdtOutcome::Refused(RecordError::TooLarge { limit, .. }) =
                s.merge_crdt(rec).unwrap()
            {
                assert_eq!(limit, 4_000);
                refused += 1;
            }
        }
        let stored = s.get("doc").unwrap().unwrap();
        assert!(stored.raw().len() <= 4_000);
        assert!(refused > 10, "{refused}");
    }

    #[test]
    fn a_merged_set_of_the_old_layout_still_serves_and_keeps_its_changes() {
        let (_d, s) = storage();
        let (ka, kb) = (
            NodeKey::generate(KeyScheme::P256),
            NodeKey::generate(KeyScheme::P256),
        );
        let set = |k: &NodeKey, f: &str| json!({"t":"SET","k":f,"a":k.address(),"v":1,"i":1});
        let map = crate::record::CrdtKind::Map;
        let t = now_ms();
        // Stored by a build without lists: B's put with A's change merged in.
        let b =
            crate::record::sign_record_with(&kb, "doc", &json!([set(&kb, "b")]), t, Some(map), 0);
        let mut legacy: Value = serde_json::from_str(b.raw()).unwrap();
        legacy["v"] = json!([set(&kb, "b"), set(&ka, "a")]);
        let legacy = legacy.to_string();
        s.records.insert("doc", legacy.as_bytes()).unwrap();
        // A single put never merged: it still hashes, so it is a list.
        let single =
            crate::record::sign_record_with(&ka, "solo", &json!([set(&ka, "s")]), t, Some(map), 0);
        s.records.insert("solo", single.raw().as_bytes()).unwrap();
        assert_eq!(s.get("doc").unwrap().unwrap().raw(), legacy);
        assert_eq!(s.crdt_lists("doc").unwrap().unwrap().len(), 0);
        let solo = s.crdt_lists("solo").unwrap().unwrap();
        assert_eq!(solo.len(), 1);
        assert_eq!(solo[0].raw(), single.raw());
        // A new list merges with the old set: no change is lost.
        let c = crate::record::sign_record_with(
            &ka,
            "doc",
            &json!([set(&ka, "c")]),
            t + 1,
            Some(map),
            0,
        );
        assert!(matches!(
            s.merge_crdt(c.clone()).unwrap(),
            CrdtOutcome::Merged(_)
        ));
        let view = s.get("doc").unwrap().unwrap();
        assert_eq!(crdt::changes(&view).unwrap().len(), 3, "{}", view.raw());
        assert_eq!(view.hash, c.hash, "the newest put's metadata");
        let lists = s.crdt_lists("doc").unwrap().unwrap();
        assert_eq!(lists.len(), 1, "only the list that proves itself");
        assert_eq!(lists[0].raw(), c.raw());
        assert!(matches!(
            s.merge_crdt(c).unwrap(),
            CrdtOutcome::Unchanged { .. }
        ));
    }

    #[test]
    fn concurrent_puts_of_one_key_keep_the_winner() {
        let (_d, s) = storage();
        let s = Arc::new(s);
        let k = Arc::new(NodeKey::generate(KeyScheme::P256));
        let t = now_ms();
        let records: Vec<_> = (0..64)
            .map(|i| sign_record(&k, "hot", &json!(i), t + i))
            .collect();
        let best = records.last().unwrap().raw().to_owned();
        std::thread::scope(|scope| {
            for chunk in records.chunks(16) {
                let s = s.clone();
                scope.spawn(move || {
                    for r in chunk.iter().rev() {
                        s.store(r.clone()).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.get("hot").unwrap().unwrap().raw(), best);
    }

    #[test]
    fn query_lists_keys_by_prefix() {
        let (_d, s) = storage();
        let k = NodeKey::generate(KeyScheme::P256);
        for key in ["app-a", "app-b", "other"] {
            s.store(sign_record(&k, key, &json!(1), now_ms())).unwrap();
        }
        let all = s.query("app-", 10, 1 << 20).unwrap();
        assert_eq!(
            (all.keys, all.truncated),
            (vec!["app-a".into(), "app-b".into()], false)
        );
        let one = s.query("app-", 1, 1 << 20).unwrap();
        assert_eq!((one.keys.len(), one.truncated), (1, true));
        // `"app-a",` is 8 bytes: the second key passes 12.
        let cut = s.query("app-", 10, 12).unwrap();
        assert_eq!((cut.keys.len(), cut.truncated), (1, true));
    }

    #[test]
    fn the_peer_book_keeps_the_newest_record_per_server() {
        let (_d, s) = storage();
        let k = NodeKey::generate(KeyScheme::Secp256k1);
        let old = crate::peer::Peer::sign(&k, "t", "h", 1, 10);
        let new = crate::peer::Peer::sign(&k, "t", "h", 2, 20);
        s.save_peer(&new).unwrap();
        s.save_peer(&old).unwrap();
        assert_eq!(s.load_peers().unwrap(), vec![new]);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::generate(KeyScheme::P256);
        let r = sign_record(&k, "kept", &json!({"a": 1}), now_ms());
        {
            let s =
                Storage::new(crate::durability::open_database(dir.path()).unwrap(), true).unwrap();
            s.store(r.clone()).unwrap();
        }
        let s = Storage::new(crate::durability::open_database(dir.path()).unwrap(), true).unwrap();
        assert_eq!(s.get("kept").unwrap().unwrap().raw(), r.raw());
    }
}
