//! `DhtChannel` on a private DHT on 127.0.0.1, never the public one: a
//! `bootstrap_node` (what `tooldb-node dht-bootstrap` runs) plus a few
//! server-mode `mainline` nodes, every socket on a port the OS picks (port
//! 0), so nothing takes mainline's default 6881. `mainline::Testnet` is not
//! used because it cannot choose ports: its first node binds 6881 when free.
//!
//! Announced ports are plain numbers (nothing listens on them): the DHT only
//! carries them. Every wait polls a condition with a deadline.

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use mainline::Dht;
use tooldb_node::actors::dht_channel::{bootstrap_node, DhtChannel, DhtSettings};
use tooldb_node::dht::{DhtError, Reachability};
use tooldb_node::messages::dht::{DhtStatus, EndpointsFound, GetDhtStatus, JoinTopic, LookupNow};

const DEADLINE: Duration = Duration::from_secs(15);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// A private DHT: one bootstrap node and `extra` server-mode nodes joined
/// through it. Dropping it shuts every node down.
struct PrivateDht {
    boot: SocketAddrV4,
    _nodes: Vec<Dht>,
}

impl PrivateDht {
    async fn start(extra: usize) -> PrivateDht {
        let first = bootstrap_node(SocketAddr::V4(local(0))).expect("bootstrap node binds");
        Self::around(first, extra).await
    }

    /// Grows a network around an already bound first node.
    async fn around(first: Dht, extra: usize) -> PrivateDht {
        let boot = first.clone().as_async().info().await.local_addr();
        let mut nodes = vec![first];
        for _ in 0..extra {
            let node = Dht::builder()
                .server_mode()
                .bootstrap(&[boot])
                .bind_address(Ipv4Addr::LOCALHOST)
                .port(0)
                .build()
                .expect("DHT node binds");
            assert!(
                node.clone().as_async().bootstrapped().await,
                "a storage node joins the private DHT"
            );
            nodes.push(node);
        }
        PrivateDht {
            boot,
            _nodes: nodes,
        }
    }

    fn bootstrap(&self) -> Vec<String> {
        vec![self.boot.to_string()]
    }
}

/// Fast settings for loopback: any free UDP port, server mode, short
/// lookup cap and retries.
fn settings(bootstrap: Vec<String>) -> DhtSettings {
    DhtSettings {
        bootstrap,
        port: Some(0),
        bind: Ipv4Addr::LOCALHOST,
        server_mode: true,
        lookup_max: Duration::from_secs(2),
        announce_every: Duration::from_secs(60),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
    }
}

/// Stands in for the peer registry: records every `EndpointsFound`.
#[derive(Clone, Default)]
struct Found(Arc<Mutex<Vec<(Instant, EndpointsFound)>>>);

impl Found {
    fn endpoints(&self, topic: &str) -> HashSet<SocketAddrV4> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(_, m)| m.topic == topic)
            .flat_map(|(_, m)| m.endpoints.iter().copied())
            .collect()
    }

    fn first_sighting(&self, endpoint: SocketAddrV4) -> Option<Instant> {
        let all = self.0.lock().unwrap();
        all.iter()
            .find(|(_, m)| m.endpoints.contains(&endpoint))
            .map(|(at, _)| *at)
    }

    fn messages(&self) -> Vec<EndpointsFound> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

struct Collector(Found);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<EndpointsFound> for Collector {
    type Result = ();
    fn handle(&mut self, msg: EndpointsFound, _: &mut Self::Context) {
        self.0 .0.lock().unwrap().push((Instant::now(), msg));
    }
}

fn channel(settings: DhtSettings) -> (Addr<DhtChannel>, Found) {
    let found = Found::default();
    let collector = Collector(found.clone()).start();
    (
        DhtChannel::supervised(settings, collector.recipient()),
        found,
    )
}

async fn status(ch: &Addr<DhtChannel>) -> DhtStatus {
    ch.send(GetDhtStatus).await.expect("the channel is alive")
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` at the deadline.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lookups_done(ch: &Addr<DhtChannel>, topic: &str) -> u64 {
    status(ch)
        .await
        .topics
        .iter()
        .find(|t| t.topic == topic)
        .map_or(0, |t| t.lookups)
}

#[actix::test]
async fn two_announcing_channels_find_each_other() {
    init_tracing();
    let net = PrivateDht::start(4).await;
    let topic = "tooldb-test-two-servers";
    let (a, found_a) = channel(settings(net.bootstrap()));
    let (b, found_b) = channel(settings(net.bootstrap()));
    let start = Instant::now();
    a.send(JoinTopic {
        topic: topic.into(),
        port: Some(40001),
    })
    .await
    .unwrap();
    b.send(JoinTopic {
        topic: topic.into(),
        port: Some(40002),
    })
    .await
    .unwrap();

    wait_until("each channel to see the other's port", || {
        let (fa, fb) = (found_a.clone(), found_b.clone());
        async move {
            fa.endpoints(topic).contains(&local(40002))
                && fb.endpoints(topic).contains(&local(40001))
        }
    })
    .await;
    eprintln!(
        "first EndpointsFound with the other's port: A after {:?}, B after {:?}",
        found_a.first_sighting(local(40002)).unwrap() - start,
        found_b.first_sighting(local(40001)).unwrap() - start,
    );

    // Lookups start with the socket (issue 11): the routing table's
    // bootstrap and the node info may come after the first sighting.
    wait_until("A to bootstrap, know its address and announce", || {
        let a = a.clone();
        async move {
            let s = status(&a).await;
            s.bootstrapped && s.public_address.is_some() && s.topics[0].announced
        }
    })
    .await;
    let sa = status(&a).await;
    assert!(sa.bootstrapped);
    assert_eq!(sa.reachability, Reachability::Reachable);
    assert_eq!(
        sa.public_address.map(|p| *p.ip()),
        Some(Ipv4Addr::LOCALHOST),
        "the DHT reports our address"
    );
    assert_eq!(sa.public_address, sa.local_addr, "loopback: no NAT");
    assert!(sa.topics[0].announced);
    assert_eq!(sa.topics[0].port, Some(40001));
    for m in found_a.messages().iter().chain(found_b.messages().iter()) {
        let unique: HashSet<_> = m.endpoints.iter().collect();
        assert_eq!(unique.len(), m.endpoints.len(), "no repeat within a batch");
        assert!(!m.endpoints.is_empty(), "no empty batch");
    }
}

#[actix::test]
async fn a_passive_channel_finds_announcers_and_is_never_found() {
    init_tracing();
    let net = PrivateDht::start(4).await;
    let topic = "tooldb-test-passive";
    let (server, found_server) = channel(settings(net.bootstrap()));
    let (client, found_client) = channel(settings(net.bootstrap()));
    server
        .send(JoinTopic {
            topic: topic.into(),
            port: Some(40011),
        })
        .await
        .unwrap();
    client
        .send(JoinTopic {
            topic: topic.into(),
            port: None,
        })
        .await
        .unwrap();

    wait_until("the passive channel to see the announced port", || {
        let f = found_client.clone();
        async move { f.endpoints(topic).contains(&local(40011)) }
    })
    .await;
    // Let the announcer look up a few more times after the client's lookups.
    let before = lookups_done(&server, topic).await;
    server
        .send(LookupNow {
            topic: topic.into(),
        })
        .await
        .unwrap();
    wait_until("three more lookups by the announcer", || {
        let s = server.clone();
        async move { lookups_done(&s, topic).await >= before + 3 }
    })
    .await;
    let seen = found_server.endpoints(topic);
    assert!(
        seen.iter().all(|e| *e == local(40011)),
        "the announcer sees only itself, never the passive client: {seen:?}"
    );
    let sc = status(&client).await;
    assert!(!sc.topics[0].announced, "passive never announces");
    assert_eq!(sc.topics[0].port, None);
}

#[actix::test]
async fn a_channel_on_another_topic_sees_none_of_them() {
    init_tracing();
    let net = PrivateDht::start(4).await;
    let (a, found_a) = channel(settings(net.bootstrap()));
    let (b, found_b) = channel(settings(net.bootstrap()));
    let (other, found_other) = channel(settings(net.bootstrap()));
    for (ch, port) in [(&a, 40021), (&b, 40022)] {
        ch.send(JoinTopic {
            topic: "tooldb-test-topic-one".into(),
            port: Some(port),
        })
        .await
        .unwrap();
    }
    other
        .send(JoinTopic {
            topic: "tooldb-test-topic-two".into(),
            port: Some(40023),
        })
        .await
        .unwrap();

    wait_until("topic one's channels to find each other", || {
        let (fa, fb) = (found_a.clone(), found_b.clone());
        async move {
            fa.endpoints("tooldb-test-topic-one")
                .contains(&local(40022))
                && fb
                    .endpoints("tooldb-test-topic-one")
                    .contains(&local(40021))
        }
    })
    .await;
    wait_until(
        "the other topic's channel to have announced and looked up 3 times",
        || {
            let o = other.clone();
            async move {
                let s = status(&o).await;
                s.topics[0].announced && s.topics[0].lookups >= 3
            }
        },
    )
    .await;
    let b_before = lookups_done(&b, "tooldb-test-topic-one").await;
    wait_until(
        "topic one to be looked up again after that announce",
        || {
            let b = b.clone();
            async move { lookups_done(&b, "tooldb-test-topic-one").await >= b_before + 2 }
        },
    )
    .await;

    let seen_other: HashSet<_> = found_other
        .messages()
        .iter()
        .flat_map(|m| m.endpoints.clone())
        .collect();
    assert!(
        seen_other.iter().all(|e| *e == local(40023)),
        "topic two sees only itself: {seen_other:?}"
    );
    for f in [&found_a, &found_b] {
        assert!(
            f.messages()
                .iter()
                .all(|m| m.topic == "tooldb-test-topic-one"),
            "no message for a topic not joined"
        );
        assert!(!f.endpoints("tooldb-test-topic-one").contains(&local(40023)));
    }
}

#[actix::test]
async fn an_unreachable_bootstrap_is_retried_until_it_comes_up() {
    init_tracing();
    // A UDP port with nothing listening on it (yet).
    let port = UdpSocket::bind(local(0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let boot = local(port);
    let topic = "tooldb-test-recovery";
    let (ch, found) = channel(settings(vec![boot.to_string()]));
    ch.send(JoinTopic {
        topic: topic.into(),
        port: Some(40031),
    })
    .await
    .unwrap();

    wait_until("two failed bootstraps", || {
        let ch = ch.clone();
        async move { status(&ch).await.failures >= 2 }
    })
    .await;
    let s = status(&ch).await;
    assert!(!s.bootstrapped);
    assert!(
        matches!(s.last_error, Some(DhtError::NotBootstrapped { .. })),
        "the error is reported: {:?}",
        s.last_error
    );
    assert_eq!(s.topics.len(), 1, "the topic survives restarts");

    // The bootstrap node comes up on that port, with a server announcing.
    let first = bootstrap_node(SocketAddr::V4(boot)).expect("the reserved port is still free");
    let _net = PrivateDht::around(first, 2).await;
    let (server, _) = channel(settings(vec![boot.to_string()]));
    server
        .send(JoinTopic {
            topic: topic.into(),
            port: Some(40032),
        })
        .await
        .unwrap();
    let recovered_from = Instant::now();

    wait_until("the channel to recover and find the server", || {
        let f = found.clone();
        async move { f.endpoints(topic).contains(&local(40032)) }
    })
    .await;
    eprintln!(
        "recovered and found the server {:?} after the bootstrap node came up",
        recovered_from.elapsed()
    );
    // Lookups start before the routing table's bootstrap ends (issue 11),
    // so the server can be found before the channel reports bootstrapped.
    wait_until("the channel to report bootstrapped, failures reset", || {
        let ch = ch.clone();
        async move {
            let s = status(&ch).await;
            s.bootstrapped && s.failures == 0
        }
    })
    .await;
    let s = status(&ch).await;
    assert!(s.last_error.is_some(), "the last error stays visible");
    wait_until("the recovered channel to announce", || {
        let ch = ch.clone();
        async move { status(&ch).await.topics[0].announced }
    })
    .await;
}
