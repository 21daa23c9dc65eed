//! Admission: who may open a websocket, and the bytes the node holds for
//! messages read only in part.
//!
//! - `Admission::admit` caps open websockets in total and per source
//!   address (an IPv4 address or an IPv6 /64) and rate-limits new ones per
//!   address (a token bucket). A refusal names its limit; the HTTP route
//!   answers it with 503 before the upgrade, so plain HTTP (`/health`)
//!   keeps working while websockets are full. The returned `Slot` gives
//!   the place back when the connection ends.
//! - `Unfinished` meters what a socket's reader has taken from TCP but not
//!   yet turned into a message (a frame in flight, fragments): every socket
//!   adds to one node-wide count, and past `max_unfinished_bytes` the socket
//!   adding to a big unfinished message is cut off, so half-sent megabyte
//!   messages on many sockets cannot hold the node's memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

use crate::config::Limits;

/// Source addresses whose rate state is kept while they have no open
/// connection; past it those entries are dropped (bounded memory).
const MAX_IDLE_TRACKED: usize = 65_536;

/// A socket's unfinished bytes below this never count as abuse: small
/// messages in flight are normal whatever the node's total.
const SMALL_UNFINISHED: usize = 64 * 1024;

/// Why a new websocket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the node holds its limit of {limit} websocket connections (max_connections); try again later")]
    Full { limit: usize },
    #[error("{limit} websocket connections are open from this address (max_connections_per_ip)")]
    PerIp { limit: usize },
    #[error(
        "more than {rate} new connections per second from this address (connects_per_ip_per_sec)"
    )]
    Rate { rate: u32 },
}

#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub per_ip: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub limit_loopback: bool,
    pub max_unfinished_bytes: usize,
}

impl AdmissionLimits {
    pub fn from(limits: &Limits) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: limits.max_connections.max(1),
            per_ip: limits.max_connections_per_ip.max(1),
            rate_per_sec: limits.connects_per_ip_per_sec.max(1),
            burst: limits.connect_burst_per_ip.max(1),
            limit_loopback: limits.limit_loopback,
            max_unfinished_bytes: limits.max_unfinished_bytes,
        }
    }
}

#[derive(Debug)]
struct Source {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

struct Inner {
    limits: AdmissionLimits,
    open: AtomicUsize,
    sources: Mutex<HashMap<IpAddr, Source>>,
    unfinished: Arc<AtomicUsize>,
}

/// Shared by every HTTP worker.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// A place among the open websockets; given back on drop.
pub struct Slot {
    inner: Arc<Inner>,
    source: Option<IpAddr>,
}

/// The address the per-source limits count: IPv6 by /64, since one host
/// gets a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                limits,
                open: AtomicUsize::new(0),
                sources: Mutex::new(HashMap::new()),
                unfinished: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Websockets open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Bytes of unfinished messages held now, all sockets.
    pub fn unfinished_bytes(&self) -> usize {
        self.inner.unfinished.load(Ordering::Relaxed)
    }

    /// A place for a new websocket from `ip` (None: unknown, counted in
    /// the total only).
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Slot, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: Option<IpAddr>, now: Instant) -> Result<Slot, Refusal> {
        let l = &self.inner.limits;
        let source = ip
            .filter(|ip| l.limit_loopback || !ip.is_loopback())
            .map(source_key);
        let mut sources = self.inner.sources.lock().expect("admission lock");
        if self.inner.open.load(Ordering::Relaxed) >= l.max_connections {
            return Err(Refusal::Full {
                limit: l.max_connections,
            });
        }
        if let Some(key) = source {
            if sources.len() >= l.max_connections + MAX_IDLE_TRACKED {
                sources.retain(|_, s| s.open > 0);
            }
            let s = sources.entry(key).or_insert(Source {
                open: 0,
                tokens: f64::from(l.burst),
                refilled: now,
            });
            let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + elapsed * f64::from(l.rate_per_sec)).min(f64::from(l.burst));
            s.refilled = now;
            if s.open >= l.per_ip {
                return Err(Refusal::PerIp { limit: l.per_ip });
            }
            if s.tokens < 1.0 {
                return Err(Refusal::Rate {
                    rate: l.rate_per_sec,
                });
            }
            s.tokens -= 1.0;
            s.open += 1;
        }
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            inner: self.inner.clone(),
            source,
        })
    }

    /// A meter for one socket's unfinished bytes.
    pub fn unfinished(&self) -> Unfinished {
        Unfinished {
            state: Arc::new(UnfinishedState {
                bytes: AtomicUsize::new(0),
                since_ms: AtomicU64::new(0),
                over: AtomicBool::new(false),
                total: self.inner.unfinished.clone(),
                limit: self.inner.limits.max_unfinished_bytes,
            }),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.source {
            let mut sources = self.inner.sources.lock().expect("admission lock");
            if let Some(s) = sources.get_mut(&key) {
                s.open = s.open.saturating_sub(1);
            }
        }
    }
}

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 means "nothing unfinished".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

struct UnfinishedState {
    bytes: AtomicUsize,
    /// When the oldest unfinished byte arrived (`clock_ms`), 0 if none.
    since_ms: AtomicU64,
    over: AtomicBool,
    total: Arc<AtomicUsize>,
    limit: usize,
}

impl Drop for UnfinishedState {
    fn drop(&mut self) {
        let held = self.bytes.swap(0, Ordering::Relaxed);
        self.total.fetch_sub(held, Ordering::Relaxed);
    }
}

/// One socket's unfinished bytes: the reader adds what it takes from TCP
/// (`meter`), the session calls `done` for each message it gets.
#[derive(Clone)]
pub struct Unfinished {
    state: Arc<UnfinishedState>,
}

impl Unfinished {
    /// Counts `n` bytes taken from the socket; false if this socket must
    /// be cut off (the node's total is over its limit and this socket holds
    /// more than a small message).
    pub fn add(&self, n: usize) -> bool {
        let s = &self.state;
        let mine = s.bytes.fetch_add(n, Ordering::Relaxed) + n;
        let total = s.total.fetch_add(n, Ordering::Relaxed) + n;
        let _ = s
            .since_ms
            .compare_exchange(0, clock_ms(), Ordering::Relaxed, Ordering::Relaxed);
        if total > s.limit && mine > SMALL_UNFINISHED {
            s.over.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A whole message came out of the reader: what it held is released.
    pub fn done(&self) {
        let s = &self.state;
        let held = s.bytes.swap(0, Ordering::Relaxed);
        s.total.fetch_sub(held, Ordering::Relaxed);
        s.since_ms.store(0, Ordering::Relaxed);
    }

    /// The socket was cut off for the node's unfinished-bytes limit.
    pub fn was_over(&self) -> bool {
        self.state.over.load(Ordering::Relaxed)
    }

    /// How long the oldest unfinished byte has waited for its message.
    pub fn waiting(&self) -> Option<Duration> {
        match self.state.since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(clock_ms().saturating_sub(since))),
        }
    }

    /// The socket's payload stream, metered.
    pub fn meter<S>(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            meter: self.clone(),
            cut: false,
        }
    }
}

/// A socket's byte stream that counts into `Unfinished` and ends with an
/// error once the socket is cut off.
pub struct Metered<S> {
    inner: S,
    meter: Unfinished,
    cut: bool,
}

impl<S, E> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<std::io::Error>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cut {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.meter.add(chunk.len()) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.cut = true;
                    Poll::Ready(Some(Err(std::io::Error::other(
                        "the node's buffer for unfinished messages is full",
                    )
                    .into())))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 5,
            per_ip: 2,
            rate_per_sec: 1,
            burst: 3,
            limit_loopback: false,
            max_unfinished_bytes: 100_000,
        }
    }

    #[test]
    fn caps_per_address_and_in_total_and_gives_places_back() {
        let a = Admission::new(limits());
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.admit(Some(ip1)).unwrap();
        let _s2 = a.admit(Some(ip1)).unwrap();
        assert_eq!(a.admit(Some(ip1)).err(), Some(Refusal::PerIp { limit: 2 }));
        drop(s1);
        let _s3 = a.admit(Some(ip1)).unwrap();
        // Loopback is exempt from the per-address limits by default, not
        // from the total.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let _l: Vec<Slot> = (0..2).map(|_| a.admit(Some(lo)).unwrap()).collect();
        let _s4 = a.admit(Some(ip2)).unwrap();
        assert_eq!(a.open(), 5);
        assert_eq!(a.admit(Some(ip2)).err(), Some(Refusal::Full { limit: 5 }));
    }

    #[test]
    fn new_connections_per_address_are_rate_limited_with_a_burst() {
        let a = Admission::new(AdmissionLimits {
            per_ip: 100,
            max_connections: 100,
            ..limits()
        });
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(a.admit_at(Some(ip), t0).unwrap());
        }
        // One /64 is one source.
        assert_eq!(
            a.admit_at(Some(same_64), t0).err(),
            Some(Refusal::Rate { rate: 1 })
        );
        assert!(a
            .admit_at(Some(ip), t0 + Duration::from_millis(1100))
            .is_ok());
    }

    #[test]
    fn unfinished_bytes_are_bounded_node_wide_and_released() {
        let a = Admission::new(limits());
        let one = a.unfinished();
        let two = a.unfinished();
        assert!(one.add(70_000));
        assert!(one.waiting().is_some());
        // Over the total: the socket holding a big unfinished message is
        // cut off, one holding a small one is not.
        assert!(two.add(20_000));
        assert!(two.add(20_000));
        assert!(!two.add(50_000));
        assert!(two.was_over());
        one.done();
        assert_eq!(one.waiting(), None);
        drop(two);
        assert_eq!(a.unfinished_bytes(), 0);
    }
}
