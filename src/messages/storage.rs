//! Messages to the `Storage` pool.

use actix::prelude::*;

use crate::record::{Record, RecordError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: stored record for key {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Store a verified plain record if it wins for its key.
#[derive(Message, Debug)]
#[rtype(result = "Result<StoreOutcome, StorageError>")]
pub struct StoreRecord {
    pub record: Record,
}

#[derive(Debug)]
pub enum StoreOutcome {
    /// The record is now the stored winner (and on disk, when syncing).
    Won(Record),
    /// The stored record wins; it is returned.
    Lost { current: Record },
    /// A frozen key that another author already owns (or a back-dated
    /// takeover), a record replayed under another key, or one too large.
    Refused(RecordError),
}

/// Merge a verified CRDT record into the stored change set.
#[derive(Message, Debug)]
#[rtype(result = "Result<CrdtOutcome, StorageError>")]
pub struct MergeCrdt {
    pub record: Record,
}

#[derive(Debug)]
pub enum CrdtOutcome {
    /// The stored set grew (or was replaced); the merged record is returned.
    Merged(Record),
    /// Nothing new; the stored record is returned.
    Unchanged { current: Record },
    /// Refused: re-keyed, or the merged set would pass the size limit.
    Refused(RecordError),
}

#[derive(Message, Debug)]
#[rtype(result = "Result<Option<std::sync::Arc<Record>>, StorageError>")]
pub struct GetRecord {
    pub key: String,
}

/// The signed change lists a CRDT key is derived from (for servers of
/// ours, which accept nothing else); `None` when the key holds no CRDT.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Vec<Record>>, StorageError>")]
pub struct GetCrdtLists {
    pub key: String,
}

/// Keys starting with `prefix`, at most `limit` of them and at most
/// `max_bytes` of them as JSON strings (each with a comma): the scan stops
/// there rather than walk keys no answer frame could carry.
#[derive(Message, Debug)]
#[rtype(result = "Result<KeyPage, StorageError>")]
pub struct QueryKeys {
    pub prefix: String,
    pub limit: usize,
    pub max_bytes: usize,
}

/// What a `QueryKeys` found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// More keys matched than `limit` or `max_bytes` let through.
    pub truncated: bool,
}

/// Write everything to disk (at shutdown).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StorageError>")]
pub struct FlushStorage;

/// First step of a reconciliation we start: our fingerprints of the key space.
#[derive(Message, Debug)]
#[rtype(result = "Result<crate::reconcile::Step, StorageError>")]
pub struct ReconcileStart;

/// Answers one reconciliation step from a peer: the steps to send back and
/// the records of ours it lacks or holds differently.
#[derive(Message, Debug)]
#[rtype(result = "Result<ReconcileAnswer, StorageError>")]
pub struct ReconcileStep {
    pub step: crate::reconcile::Step,
    /// Most records sent for one step (bounds what one frame can ask for).
    pub max_records: usize,
    /// The peer speaks `Extensions::crdt`: a CRDT key goes as its signed
    /// lists (a merged set would be refused), not as the merged set.
    pub signed_lists: bool,
}

#[derive(Debug, Default)]
pub struct ReconcileAnswer {
    pub reply: Vec<crate::reconcile::Step>,
    pub records: Vec<Record>,
}

/// Save a verified server record in the peer book (newest per address).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StorageError>")]
pub struct SavePeer {
    pub peer: crate::peer::Peer,
}

/// Every server record in the peer book.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<crate::peer::Peer>, StorageError>")]
pub struct LoadPeers;

/// Store a connection's verified records, in this order (one storage call
/// for many records; the order is the connection's arrival order).
#[derive(Message, Debug)]
#[rtype(result = "Vec<StoredItem>")]
pub struct StoreBatch {
    /// Each record, and whether it is a CRDT change set to merge.
    pub items: Vec<(Record, bool)>,
}

/// What storing one record of a batch did.
#[derive(Debug)]
pub enum StoredItem {
    Plain(Result<StoreOutcome, StorageError>),
    /// The outcome, and the incoming change set (relayed as it came).
    Crdt(Result<CrdtOutcome, StorageError>, Record),
}
