//! Hyperswarm: the second discovery engine. The node joins `sha256(topic)`
//! on the HyperDHT (server and client) with `peeroxide` and speaks Tool Db
//! over each connection it gets: one Tool Db JSON message per secret-stream
//! message, each side pinging first, as over a websocket.
//!
//! The swarm runs on a thread of its own with its own tokio runtime, so the
//! DHT's work (UDP, Noise handshakes, holepunching) never runs on an actix
//! arbiter. Each connection becomes a [`Link`]: two bounded channels, read
//! and written by two tasks on that runtime. `ClientSession` takes the link
//! as it takes an upgraded websocket (`frames` and `sink` below), so the hub
//! sees one more connection with the same limits, verification and relay.
//!
//! Bounds: at most `max_peers` connections (the swarm's own cap); per
//! connection one message (at most `max_message_bytes`) waiting for the
//! session and one waiting there for credit, so a flood stops being read
//! (UDX then slows its sender). peeroxide reads a whole secret-stream
//! message before we see its size (its wire limit is 16 MiB), so a
//! connection may hold 16 MiB more while one such message arrives; a
//! message over `max_message_bytes` then closes it. Worst case per
//! connection with the default 1 MiB limit: about 18 MiB.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{Message, ProtocolError};
use actix_ws::AggregatedMessage;
use bytestring::ByteString;
use futures_util::{Sink, Stream};
use sha2::Digest;
use tokio::sync::mpsc;

/// Messages of one link waiting for its session (more only add memory:
/// the session takes them as fast as its credit allows).
const LINK_QUEUE: usize = 1;
/// How long the swarm may take to bootstrap and join before start fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the engine needs, from `Config`'s `hyperswarm` section.
#[derive(Debug, Clone)]
pub struct HyperswarmSettings {
    /// HyperDHT bootstrap nodes (HOST:PORT); empty = the public ones.
    pub bootstrap: Vec<String>,
    /// Address our DHT node binds.
    pub host: String,
    /// UDP port of our DHT node; 0 = any.
    pub port: u16,
    /// Say in handshakes that we cannot be dialed directly (behind NAT):
    /// peers then holepunch to us.
    pub firewalled: bool,
    /// Most connections at once.
    pub max_peers: usize,
    /// Announce (be found) and look up (dial what is found).
    pub server: bool,
    pub client: bool,
    /// Largest message accepted; a bigger one closes the link.
    pub max_message_bytes: usize,
}

/// The 32-byte HyperDHT topic of a Tool Db topic: `sha256(UTF-8 bytes)`.
pub fn topic_key(topic: &str) -> [u8; 32] {
    sha2::Sha256::digest(topic.as_bytes()).into()
}

/// Every bootstrap node must be HOST:PORT.
pub fn check_bootstrap(nodes: &[String]) -> Result<(), HyperswarmError> {
    for b in nodes {
        let port_ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(HyperswarmError::BadBootstrap(b.clone()));
        }
    }
    Ok(())
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum HyperswarmError {
    #[error("hyperswarm bootstrap address {0:?} is not HOST:PORT")]
    BadBootstrap(String),
    #[error("hyperswarm: {0}")]
    Swarm(String),
    #[error("hyperswarm did not start within {} s", START_TIMEOUT.as_secs())]
    Timeout,
}

/// One message from the remote, or why reading ended.
#[derive(Debug)]
pub enum Inbound {
    Message(Vec<u8>),
    TooLarge(usize),
    Failed(String),
}

/// One Hyperswarm connection, handed to a session.
pub struct Link {
    /// The remote's Noise public key (hex), for logs.
    pub remote: String,
    /// We dialed it (our swarm found it on the topic).
    pub initiator: bool,
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::Sender<Message>,
}

/// The running swarm; dropping it leaves the topic and stops the thread.
pub struct Engine {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// First wait before trying the swarm again after it failed to start.
const RETRY_INITIAL: Duration = Duration::from_secs(2);
/// Cap of that wait (it doubles).
const RETRY_MAX: Duration = Duration::from_secs(120);

impl Engine {
    /// Starts the swarm on its own thread, joins `topic`, and calls
    /// `on_link` (on that thread) for every connection. Returns at once: a
    /// swarm that cannot bootstrap (no network) is retried with backoff,
    /// said once in the log.
    pub fn start(
        settings: HyperswarmSettings,
        topic: &str,
        on_link: impl Fn(Link) + Send + 'static,
    ) -> Result<Engine, HyperswarmError> {
        check_bootstrap(&settings.bootstrap)?;
        let topic = topic_key(topic);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("hyperswarm".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "hyperswarm: no runtime; running without it");
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut wait = RETRY_INITIAL;
                    let mut warned = false;
                    loop {
                        match run(&settings, topic, &on_link, &mut stop_rx).await {
                            Ok(()) => return,
                            Err(e) => {
                                if !warned {
                                    tracing::warn!(error = %e, "hyperswarm did not start; retrying with backoff");
                                    warned = true;
                                } else {
                                    tracing::debug!(error = %e, "hyperswarm did not start");
                                }
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = &mut stop_rx => return,
                        }
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                });
            })
            .map_err(|e| HyperswarmError::Swarm(e.to_string()))?;
        Ok(Engine {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// The address to bind: the configured one, except that a wildcard with
/// only loopback bootstrap nodes (a private testnet on this machine) binds
/// 127.0.0.1: a node on 0.0.0.0 announces its other addresses, which its
/// peers there cannot use.
fn bind_host(s: &HyperswarmSettings) -> String {
    let loopback_only = !s.bootstrap.is_empty()
        && s.bootstrap.iter().all(|b| {
            b.rsplit_once(':').is_some_and(|(h, _)| {
                h == "localhost"
                    || h.parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|ip| ip.is_loopback())
            })
        });
    if s.host == "0.0.0.0" && loopback_only {
        "127.0.0.1".into()
    } else {
        s.host.clone()
    }
}

/// One life of the swarm: until `stop` (Ok) or a failure to start (Err).
async fn run(
    s: &HyperswarmSettings,
    topic: [u8; 32],
    on_link: &impl Fn(Link),
    stop: &mut tokio::sync::oneshot::Receiver<()>,
) -> Result<(), HyperswarmError> {
    let mut config = if s.bootstrap.is_empty() {
        peeroxide::SwarmConfig::with_public_bootstrap()
    } else {
        let mut c = peeroxide::SwarmConfig::default();
        c.dht.dht.bootstrap = s.bootstrap.clone();
        c
    };
    config.dht.dht.host = bind_host(s);
    config.dht.dht.port = s.port;
    config.dht.dht.firewalled = s.firewalled;
    config.max_peers = s.max_peers.max(1);
    let swarm_err = |e: peeroxide::SwarmError| HyperswarmError::Swarm(e.to_string());
    let started = async {
        let (task, handle, conns) = tokio::time::timeout(START_TIMEOUT, peeroxide::spawn(config))
            .await
            .map_err(|_| HyperswarmError::Timeout)?
            .map_err(swarm_err)?;
        let mut opts = peeroxide::JoinOpts::default();
        opts.server = s.server;
        opts.client = s.client;
        handle.join(topic, opts).await.map_err(swarm_err)?;
        Ok::<_, HyperswarmError>((task, handle, conns))
    };
    let (task, handle, mut conns) = tokio::select! {
        r = started => r?,
        _ = &mut *stop => return Ok(()),
    };
    let key = hex::encode(handle.key_pair().public_key);
    tracing::info!(public_key = %key, server = s.server, client = s.client, "joined the topic on the HyperDHT");
    let handle = Arc::new(handle);
    let ended = loop {
        tokio::select! {
            conn = conns.recv() => {
                let Some(conn) = conn else {
                    break Err(HyperswarmError::Swarm("the swarm stopped".into()));
                };
                on_link(bridge(conn, handle.clone(), s.max_message_bytes));
            }
            _ = &mut *stop => break Ok(()),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = handle.leave(topic).await;
        let _ = handle.destroy().await;
    })
    .await;
    task.abort();
    ended
}

/// Moves one connection's messages between the secret stream and a
/// `Link`'s channels, on the swarm's runtime; tells the swarm when the
/// connection is over, so the peer may connect again.
fn bridge(
    conn: peeroxide::SwarmConnection,
    swarm: Arc<peeroxide::SwarmHandle>,
    max: usize,
) -> Link {
    let key = *conn.remote_public_key();
    let remote = hex::encode(key);
    let initiator = conn.is_initiator;
    let (in_tx, in_rx) = mpsc::channel(LINK_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(1);
    tokio::spawn(async move {
        // The rest of `conn` (socket, runtime) lives as long as this task.
        let conn = conn;
        let (mut reader, mut writer) = conn.peer.stream.into_split();
        let writing = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let ok = match m {
                    Message::Text(t) => writer.write(t.as_bytes()).await.is_ok(),
                    Message::Binary(b) => writer.write(&b).await.is_ok(),
                    Message::Close(_) => {
                        let _ = writer.shutdown().await;
                        break;
                    }
                    // A heartbeat: an empty message is a secret-stream
                    // keepalive (the peer drops it; UDX sees it acked).
                    Message::Ping(_) => writer.write(&[]).await.is_ok(),
                    // No other control frames on a secret stream.
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
        });
        loop {
            tokio::select! {
                r = reader.read() => match r {
                    Ok(Some(m)) if m.len() > max => {
                        let _ = in_tx.send(Inbound::TooLarge(m.len())).await;
                        break;
                    }
                    Ok(Some(m)) => {
                        if in_tx.send(Inbound::Message(m)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = in_tx.send(Inbound::Failed(e.to_string())).await;
                        break;
                    }
                },
                // The session is gone: a read cut short loses nothing we want.
                _ = in_tx.closed() => break,
            }
        }
        // Let a close already queued reach the peer, briefly.
        let mut writing = writing;
        if tokio::time::timeout(Duration::from_secs(2), &mut writing)
            .await
            .is_err()
        {
            writing.abort();
        }
        drop(reader);
        let _ = swarm.release(key).await;
    });
    Link {
        remote,
        initiator,
        inbound: in_rx,
        outbound: out_tx,
    }
}

/// A session's frame stream from a link: messages as text frames (binary
/// when not UTF-8), a message over the limit as `Overflow`.
pub type Item = Result<AggregatedMessage, ProtocolError>;

pub fn frames(mut inbound: mpsc::Receiver<Inbound>) -> Pin<Box<dyn Stream<Item = Item>>> {
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        inbound.poll_recv(cx).map(|m| {
            m.map(|m| match m {
                Inbound::Message(bytes) => Ok(match String::from_utf8(bytes) {
                    Ok(t) => AggregatedMessage::Text(ByteString::from(t)),
                    Err(e) => AggregatedMessage::Binary(e.into_bytes().into()),
                }),
                Inbound::TooLarge(_) => Err(ProtocolError::Overflow),
                Inbound::Failed(e) => Err(ProtocolError::Io(std::io::Error::other(e))),
            })
        })
    }))
}

/// Why a write to a link failed: its connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the hyperswarm connection is closed")]
pub struct LinkClosed;

/// A session's writer sink into a link.
pub fn sink(outbound: mpsc::Sender<Message>) -> Pin<Box<dyn Sink<Message, Error = LinkClosed>>> {
    Box::pin(futures_util::sink::unfold(
        outbound,
        |tx, m: Message| async move { tx.send(m).await.map(|_| tx).map_err(|_| LinkClosed) },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host: &str, bootstrap: &[&str]) -> HyperswarmSettings {
        HyperswarmSettings {
            bootstrap: bootstrap.iter().map(|b| b.to_string()).collect(),
            host: host.into(),
            port: 0,
            firewalled: false,
            max_peers: 1,
            server: true,
            client: true,
            max_message_bytes: 1,
        }
    }

    #[test]
    fn a_wildcard_with_only_loopback_bootstrap_nodes_binds_loopback() {
        assert_eq!(
            bind_host(&settings("0.0.0.0", &["127.0.0.1:5"])),
            "127.0.0.1"
        );
        assert_eq!(
            bind_host(&settings("0.0.0.0", &["127.0.0.1:5", "10.0.0.1:5"])),
            "0.0.0.0"
        );
        assert_eq!(
            bind_host(&settings("0.0.0.0", &[])),
            "0.0.0.0",
            "public bootstrap"
        );
        assert_eq!(
            bind_host(&settings("10.1.1.1", &["127.0.0.1:5"])),
            "10.1.1.1"
        );
    }

    #[test]
    fn the_topic_key_is_sha256_of_the_topic() {
        assert_eq!(
            hex::encode(topic_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
