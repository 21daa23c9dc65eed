//! DHT discovery, the pure part: the topic's info hash, when to look up and
//! announce, whether we may announce, de-duplication of found endpoints,
//! and the domain error. The `DhtChannel` actor
//! (`src/actors/dht_channel.rs`) does the I/O with these.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use sha1::{Digest, Sha1};

/// Delay before the second lookup of a topic once a server is connected;
/// later ones double from here.
pub const LOOKUP_FIRST_DELAY: Duration = Duration::from_secs(1);
/// Delay before the second lookup while no server of the topic is
/// connected (searching): a server announced a moment after our first
/// lookup is found this soon after.
pub const SEARCH_FIRST_DELAY: Duration = Duration::from_millis(250);
/// Cap of the delay between two lookups while searching: bounded DHT
/// traffic for a node alone on its topic (one lookup per 5 s).
pub const SEARCH_MAX: Duration = Duration::from_secs(5);
/// Default cap of the delay between two lookups of a topic.
pub const LOOKUP_MAX: Duration = Duration::from_secs(5 * 60);
/// How often we re-announce a topic. BEP 5 peers live about 30 minutes on
/// most storage nodes; `mainline` storage nodes key stored peers by the
/// random id each announce carries, so announcing more often than needed
/// fills replies with copies of ourselves (DHT-NOTES.md).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Delay before an announce that failed is tried again.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(30);
/// How long, after the DHT is up, we wait for it to tell whether we are
/// reachable from outside before announcing is put off to the next round.
pub const REACHABILITY_GRACE: Duration = Duration::from_secs(30);
/// How often an undecided reachability is checked again during the grace.
pub const REACHABILITY_POLL: Duration = Duration::from_millis(250);
/// First delay before the DHT is rebuilt after it failed.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Cap of the delay between two attempts to rebuild the DHT.
pub const RETRY_MAX: Duration = Duration::from_secs(120);
/// Longest a lookup may run; `mainline` normally ends one within seconds.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an announce may run.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the bootstrap (a `find_node` of our own id) may run.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often we ask the DHT whether it still reaches any node.
pub const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(120);
/// How often the cached node info (public address, reachability) is
/// refreshed from the DHT thread; a local call, no network traffic.
pub const INFO_REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The BitTorrent info hash of a topic: SHA-1 of its UTF-8 bytes, as npm
/// `discovery-channel` (what JS Tool Db servers use) computes it.
pub fn topic_info_hash(topic: &str) -> [u8; 20] {
    Sha1::digest(topic.as_bytes()).into()
}

/// When a topic is looked up next: at once when joined, then after
/// `LOOKUP_FIRST_DELAY`, doubling up to a cap. `reset` brings it back to
/// the short end (e.g. when a known server was lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSchedule {
    next: Option<Duration>,
    initial: Duration,
    max: Duration,
}

impl LookupSchedule {
    /// A schedule starting at `initial` and capped at `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        LookupSchedule {
            next: None,
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before the next lookup; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        match self.next {
            None => {
                self.next = Some(self.initial);
                Duration::ZERO
            }
            Some(d) => {
                self.next = Some(d.saturating_mul(2).min(self.max));
                d
            }
        }
    }

    /// Back to short delays: the next one is `initial` again.
    pub fn reset(&mut self) {
        self.next = Some(self.initial);
    }

    /// The schedule of a topic with no server connected: a lookup at
    /// once, then after `SEARCH_FIRST_DELAY`, doubling up to `SEARCH_MAX`.
    pub fn searching() -> Self {
        LookupSchedule::new(SEARCH_FIRST_DELAY, SEARCH_MAX)
    }

    /// The schedule once a server is connected: the next lookup after
    /// `LOOKUP_FIRST_DELAY` (not at once: one just found it), doubling up
    /// to `max`, to learn of more servers and of new ones.
    pub fn connected(max: Duration) -> Self {
        let mut s = LookupSchedule::new(LOOKUP_FIRST_DELAY, max);
        s.reset();
        s
    }

    /// The schedule for a topic, searching or not.
    pub fn for_state(searching: bool, max: Duration) -> Self {
        if searching {
            LookupSchedule::searching()
        } else {
            LookupSchedule::connected(max)
        }
    }
}

impl Default for LookupSchedule {
    fn default() -> Self {
        LookupSchedule::new(LOOKUP_FIRST_DELAY, LOOKUP_MAX)
    }
}

/// Whether the DHT can reach us from outside, as `mainline` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// No node has told us our public address yet.
    Unknown,
    /// A ping we sent to our public address came back to us.
    Reachable,
    /// We know our public address but could not confirm it is reachable
    /// (behind NAT or a firewall, or not confirmed yet).
    Firewalled,
}

impl Reachability {
    /// From `mainline::rpc::Info`'s `public_address()` and `firewalled()`.
    pub fn from_info(public_address: Option<SocketAddrV4>, firewalled: bool) -> Self {
        match (public_address, firewalled) {
            (None, _) => Reachability::Unknown,
            (Some(_), false) => Reachability::Reachable,
            (Some(_), true) => Reachability::Firewalled,
        }
    }

    /// Like `from_info`, but a node whose DHT socket is bound to a loopback
    /// address is `Reachable`: it can only exchange packets with nodes on
    /// the same host, and they all reach it.
    ///
    /// Without this, a node on a private loopback DHT whose storage nodes
    /// are JS `bittorrent-dht` nodes (what npm `discovery-channel` needs)
    /// never announced: `mainline` learns its public address only from the
    /// BEP 42 `ip` field of replies, `bittorrent-dht` 7 never sends it, so
    /// the address stayed unknown and the channel skipped every announce.
    pub fn of_node(
        local: SocketAddrV4,
        public_address: Option<SocketAddrV4>,
        firewalled: bool,
    ) -> Self {
        if local.ip().is_loopback() {
            return Reachability::Reachable;
        }
        Reachability::from_info(public_address, firewalled)
    }
}

/// What to do about announcing a topic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceDecision {
    Announce,
    /// Reachability is not settled yet: ask again shortly.
    WaitForReachability,
    /// Not reachable from outside: look up only, try again next round.
    Skip,
}

/// Announce a node the DHT reports reachable; skip one it reports
/// firewalled. While the DHT has been up for less than `grace`, either
/// answer may not be settled yet, so we wait. A node whose public address
/// no DHT node has reported after `grace` is on a DHT whose nodes do not
/// send BEP 42's `ip` (JS `bittorrent-dht`, so a private DHT built for
/// npm `discovery-channel`): nothing says it is unreachable, so it
/// announces. At worst a peer dials an endpoint that does not answer and
/// quarantines it; skipping made such a node unfindable for good.
pub fn announce_decision(
    reachability: Reachability,
    up_for: Duration,
    grace: Duration,
) -> AnnounceDecision {
    match reachability {
        Reachability::Reachable => AnnounceDecision::Announce,
        _ if up_for < grace => AnnounceDecision::WaitForReachability,
        Reachability::Unknown => AnnounceDecision::Announce,
        Reachability::Firewalled => AnnounceDecision::Skip,
    }
}

/// The endpoints of `batch` not in `seen` yet, in order, each once; adds
/// them to `seen`. One DHT reply per storage node repeats the same peers,
/// so a lookup keeps one `seen` set for all its replies.
pub fn new_endpoints(
    seen: &mut HashSet<SocketAddrV4>,
    batch: &[SocketAddrV4],
) -> Vec<SocketAddrV4> {
    batch.iter().copied().filter(|e| seen.insert(*e)).collect()
}

/// Why DHT discovery is not working. Every variant but `Announce` makes
/// the `DhtChannel` stop so its supervisor rebuilds the DHT after a backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    #[error("no DHT bootstrap node could be resolved from {bootstrap:?}")]
    NoBootstrapResolved { bootstrap: Vec<String> },
    #[error("cannot open the DHT socket (port {port:?}): {reason}")]
    Socket { port: Option<u16>, reason: String },
    #[error("no DHT bootstrap node answered ({bootstrap:?})")]
    NotBootstrapped { bootstrap: Vec<String> },
    #[error("the DHT bootstrap took longer than {timeout:?}")]
    BootstrapTimeout { timeout: Duration },
    #[error("the DHT no longer reaches any node")]
    Lost,
    #[error("the mainline DHT thread stopped")]
    ThreadGone,
    #[error("announcing topic {topic} failed: {reason}")]
    Announce { topic: String, reason: String },
    #[error("only IPv4 is supported by the DHT, not {addr}")]
    NotIpv4 { addr: std::net::SocketAddr },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_hash_is_sha1_of_the_topic_bytes() {
        // Values from Python's hashlib.sha1(topic.encode()).hexdigest().
        assert_eq!(
            hex::encode(topic_info_hash("abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(topic_info_hash("tool-db-default")),
            "69c934af892d9a5a646db8e875d9bffc685c8199"
        );
        assert_eq!(
            hex::encode(topic_info_hash("tópico")),
            "d2254a4077712b02d73d4fa1b92d6731f939d7fc",
            "UTF-8 bytes"
        );
    }

    #[test]
    fn lookups_start_at_once_then_double_up_to_the_cap() {
        let s = Duration::from_secs;
        let mut sched = LookupSchedule::new(s(1), s(10));
        let got: Vec<_> = (0..7).map(|_| sched.next_delay()).collect();
        assert_eq!(
            got,
            vec![s(0), s(1), s(2), s(4), s(8), s(10), s(10)],
            "immediate, growing, capped"
        );
        sched.reset();
        assert_eq!(sched.next_delay(), s(1), "reset goes back to short");
        assert_eq!(sched.next_delay(), s(2));
    }

    /// Issue 11, part 1: a node with no server connected looks up again
    /// within a quarter second, then less often but at least every 5 s;
    /// once connected it backs off from 1 s up to its cap.
    #[test]
    fn lookups_are_frequent_while_searching_and_back_off_once_connected() {
        let ms = Duration::from_millis;
        let mut sched = LookupSchedule::searching();
        let got: Vec<_> = (0..8).map(|_| sched.next_delay()).collect();
        assert_eq!(
            got,
            vec![
                ms(0),
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(5000),
                ms(5000)
            ]
        );
        let mut sched = LookupSchedule::connected(Duration::from_secs(300));
        let got: Vec<_> = (0..3).map(|_| sched.next_delay()).collect();
        assert_eq!(got, vec![ms(1000), ms(2000), ms(4000)], "no lookup at once");
        for _ in 0..64 {
            sched.next_delay();
        }
        assert_eq!(sched.next_delay(), Duration::from_secs(300));
        assert_eq!(
            LookupSchedule::for_state(true, LOOKUP_MAX),
            LookupSchedule::searching()
        );
    }

    #[test]
    fn a_cap_below_the_first_delay_is_raised_to_it() {
        let mut sched = LookupSchedule::new(Duration::from_secs(2), Duration::from_secs(1));
        sched.next_delay();
        assert_eq!(sched.next_delay(), Duration::from_secs(2));
        assert_eq!(sched.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn default_schedule_and_announce_interval_respect_peer_lifetime() {
        let mut sched = LookupSchedule::default();
        let mut last = Duration::ZERO;
        for _ in 0..64 {
            last = sched.next_delay();
        }
        assert_eq!(last, LOOKUP_MAX);
        assert!(
            ANNOUNCE_EVERY <= Duration::from_secs(15 * 60),
            "well under BEP 5's ~30 min"
        );
        assert!(ANNOUNCE_EVERY >= Duration::from_secs(5 * 60), "not spammy");
    }

    #[test]
    fn reachability_from_mainline_info() {
        let a: SocketAddrV4 = "1.2.3.4:5".parse().unwrap();
        assert_eq!(Reachability::from_info(None, true), Reachability::Unknown);
        assert_eq!(Reachability::from_info(None, false), Reachability::Unknown);
        assert_eq!(
            Reachability::from_info(Some(a), false),
            Reachability::Reachable
        );
        assert_eq!(
            Reachability::from_info(Some(a), true),
            Reachability::Firewalled
        );
    }

    /// Regression: a server on a loopback DHT of JS `bittorrent-dht` nodes
    /// (no BEP 42 `ip` in replies, so no public address) never announced.
    #[test]
    fn a_node_bound_to_loopback_is_reachable_without_a_public_address() {
        let lo: SocketAddrV4 = "127.0.0.1:4000".parse().unwrap();
        let any: SocketAddrV4 = "0.0.0.0:4000".parse().unwrap();
        let lan: SocketAddrV4 = "192.168.1.2:4000".parse().unwrap();
        let public: SocketAddrV4 = "1.2.3.4:5".parse().unwrap();
        assert_eq!(
            Reachability::of_node(lo, None, true),
            Reachability::Reachable
        );
        assert_eq!(
            Reachability::of_node(any, None, true),
            Reachability::Unknown
        );
        assert_eq!(
            Reachability::of_node(lan, None, true),
            Reachability::Unknown
        );
        assert_eq!(
            Reachability::of_node(lan, Some(public), true),
            Reachability::Firewalled
        );
        assert_eq!(
            Reachability::of_node(any, Some(public), false),
            Reachability::Reachable
        );
    }

    #[test]
    fn a_firewalled_node_skips_and_an_undecided_one_waits_then_announces() {
        let g = Duration::from_secs(30);
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(31);
        use AnnounceDecision::*;
        use Reachability::*;
        assert_eq!(announce_decision(Reachable, early, g), Announce);
        assert_eq!(announce_decision(Reachable, late, g), Announce);
        assert_eq!(announce_decision(Unknown, early, g), WaitForReachability);
        assert_eq!(announce_decision(Firewalled, early, g), WaitForReachability);
        // No node ever reported our address (a JS-only private DHT).
        assert_eq!(announce_decision(Unknown, late, g), Announce);
        assert_eq!(announce_decision(Firewalled, late, g), Skip);
    }

    #[test]
    fn endpoints_are_deduplicated_within_a_lookup() {
        let e = |p: u16| SocketAddrV4::new([127, 0, 0, 1].into(), p);
        let mut seen = HashSet::new();
        assert_eq!(
            new_endpoints(&mut seen, &[e(1), e(2), e(1)]),
            vec![e(1), e(2)]
        );
        assert_eq!(new_endpoints(&mut seen, &[e(2), e(3)]), vec![e(3)]);
        assert_eq!(
            new_endpoints(&mut seen, &[e(1)]),
            Vec::<SocketAddrV4>::new()
        );
    }
}
