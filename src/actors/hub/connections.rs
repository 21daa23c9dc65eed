//! The hub's index of identified connections: by local id, by client id
//! (one current connection per client), and the client ids whose current
//! connection is a verified server (so a put never walks every connection).

use std::collections::{HashMap, HashSet};

use crate::messages::connection::ConnHandle;
use crate::messages::hub::ConnId;
use crate::metrics::ConnectionGauges;

pub struct Conn {
    pub handle: ConnHandle,
    pub client_id: String,
    /// The verified server address, for server connections.
    pub address: Option<String>,
    /// A server of ours: speaks the `reconcile` extension.
    pub reconcile: bool,
    /// A proved server that speaks signed CRDT lists: it sends and gets
    /// CRDT keys only as lists that verify whole.
    pub crdt_lists: bool,
    /// Asked for a `missing` answer to each get it sends that misses here.
    pub wants_missing: bool,
    pub is_server: bool,
    pub outbound: bool,
    /// Served under an id of ours: its state ends with its socket.
    pub anonymous: bool,
    pub invalid_records: u32,
    /// Its verified ping's peer-record timestamp (inbound, verified).
    pub peer_timestamp: Option<u64>,
    /// It pinged as a server, not yet proved by a dial of ours.
    pub claim: Option<Claim>,
    pub listed: ListedBudget,
    /// Reads (get, crdtGet, subscribe) of this connection in flight: a
    /// few at a time, the rest wait holding their credit, so one asker of
    /// big records cannot fill the storage queue ahead of everyone else.
    /// Closed when the connection goes, so what waits is dropped unread.
    pub reads: ReadSlots,
}

impl Conn {
    /// A server of ours that speaks signed CRDT lists, proved or still
    /// only claimed: what we send it as CRDT lists proves itself, and the
    /// other side may already hold our link as proved (and so refuse a
    /// merged set from it).
    pub fn offers_crdt_lists(&self) -> bool {
        self.crdt_lists || self.claim.as_ref().is_some_and(|c| c.crdt_lists)
    }
}

/// Reads one connection may have in flight at once.
pub const READS_IN_FLIGHT: usize = 8;

pub struct ReadSlots(pub std::sync::Arc<tokio::sync::Semaphore>);

impl Default for ReadSlots {
    fn default() -> Self {
        ReadSlots(std::sync::Arc::new(tokio::sync::Semaphore::new(
            READS_IN_FLIGHT,
        )))
    }
}

impl Drop for ReadSlots {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub peer: crate::peer::Peer,
    pub reconcile: bool,
    pub crdt_lists: bool,
}

/// Listed server records one connection had us verify in the current minute.
#[derive(Debug, Default)]
pub struct ListedBudget {
    pub since: Option<std::time::Instant>,
    pub used: u32,
}

impl ListedBudget {
    /// Takes up to `want` of `per_minute`; returns how many it may verify.
    pub fn take(&mut self, want: usize, per_minute: u32, now: std::time::Instant) -> usize {
        let fresh = self
            .since
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(60));
        if fresh {
            self.since = Some(now);
            self.used = 0;
        }
        let n = want.min(per_minute.saturating_sub(self.used) as usize);
        self.used += n as u32;
        n
    }
}

/// What closing a connection left of its client.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// Another link of the same client is current now.
    Survivor(ConnId),
    /// The client has no connection any more.
    Gone,
    /// A newer connection of the client was already current.
    Superseded,
}

#[derive(Default)]
pub struct Connections {
    conns: HashMap<ConnId, Conn>,
    by_client: HashMap<String, ConnId>,
    servers: HashSet<String>,
    /// Open connections by kind, kept as they come and go.
    gauges: Option<ConnectionGauges>,
}

impl Connections {
    /// Keeps `gauges` equal to the connections held, by kind.
    pub fn count_into(&mut self, gauges: ConnectionGauges) {
        for c in self.conns.values() {
            gauges.of(c.is_server, c.outbound).inc();
        }
        self.gauges = Some(gauges);
    }

    fn count(&self, c: &Conn, delta: i64) {
        if let Some(g) = &self.gauges {
            g.of(c.is_server, c.outbound).inc_by(delta);
        }
    }

    /// Makes `conn` its client's current connection.
    pub fn insert(&mut self, id: ConnId, conn: Conn) {
        self.insert_as(id, conn, true);
    }

    /// Adds `conn` beside the client's current server link, which stays
    /// current: the new one is the side of a duplicate pair the registry
    /// is about to close, and what is sent on it (a relayed get) is lost.
    pub fn insert_second(&mut self, id: ConnId, conn: Conn) {
        let current_is_server = self
            .by_client
            .get(&conn.client_id)
            .and_then(|c| self.conns.get(c))
            .is_some_and(|c| c.is_server);
        self.insert_as(id, conn, !current_is_server);
    }

    fn insert_as(&mut self, id: ConnId, conn: Conn, current: bool) {
        if !current {
            self.count(&conn, 1);
            if let Some(old) = self.conns.insert(id, conn) {
                self.count(&old, -1);
            }
            return;
        }
        self.by_client.insert(conn.client_id.clone(), id);
        if conn.is_server {
            self.servers.insert(conn.client_id.clone());
        } else {
            self.servers.remove(&conn.client_id);
        }
        self.count(&conn, 1);
        if let Some(old) = self.conns.insert(id, conn) {
            self.count(&old, -1);
        }
    }

    /// Removes `id`. If it was its client's current connection, the
    /// client's other link (the survivor of a duplicate pair) becomes
    /// current, or else the client is gone. (Found by the chaos harness:
    /// forgetting the server while a survivor was up stopped relays while
    /// /peers said connected.) A scan, but only on a close.
    pub fn remove(&mut self, id: ConnId) -> Option<(Conn, Left)> {
        let conn = self.conns.remove(&id)?;
        self.count(&conn, -1);
        if self.by_client.get(&conn.client_id) != Some(&id) {
            return Some((conn, Left::Superseded));
        }
        let survivor = self
            .conns
            .iter()
            .find(|(_, c)| c.client_id == conn.client_id)
            .map(|(id, c)| (*id, c.is_server));
        let left = match survivor {
            Some((other, is_server)) => {
                self.by_client.insert(conn.client_id.clone(), other);
                if is_server {
                    self.servers.insert(conn.client_id.clone());
                }
                Left::Survivor(other)
            }
            None => {
                self.by_client.remove(&conn.client_id);
                self.servers.remove(&conn.client_id);
                Left::Gone
            }
        };
        Some((conn, left))
    }

    /// Makes a claimed server link a server link; returns the claim.
    pub fn promote(&mut self, id: ConnId) -> Option<Claim> {
        let conn = self.conns.get_mut(&id)?;
        let claim = conn.claim.take()?;
        if let Some(g) = &self.gauges {
            g.of(conn.is_server, conn.outbound).dec();
            g.of(true, conn.outbound).inc();
        }
        conn.is_server = true;
        conn.reconcile = claim.reconcile;
        conn.crdt_lists = claim.crdt_lists;
        conn.address = Some(claim.peer.address.clone());
        if self.by_client.get(&conn.client_id) == Some(&id) {
            self.servers.insert(conn.client_id.clone());
        }
        Some(claim)
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// The current connection of `client`.
    pub fn of_client(&self, client: &str) -> Option<ConnId> {
        self.by_client.get(client).copied()
    }

    pub fn is_connected(&self, client: &str) -> bool {
        self.by_client.contains_key(client)
    }

    /// Client ids of connected, verified servers (one per server).
    pub fn server_clients(&self) -> Vec<String> {
        self.servers.iter().cloned().collect()
    }

    pub fn is_server_client(&self, client: &str) -> bool {
        self.servers.contains(client)
    }

    pub fn server_set(&self) -> &HashSet<String> {
        &self.servers
    }

    pub fn client_ids(&self) -> impl Iterator<Item = &String> {
        self.by_client.keys()
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnId, &Conn)> {
        self.conns.iter()
    }
}
