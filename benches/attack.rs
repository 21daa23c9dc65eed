//! The attacks of the "Hostile peers" issue against a default release
//! node (`serve --no-dht`, config/default.toml untouched), one fresh node
//! each, while a well-behaved client (its own socket, a signed ping) keeps
//! doing gets of a stored key and puts, and the node's RSS is sampled.
//! One row per attack: the honest client's answer latency (p50/p99/max),
//! answers missing, RSS before/peak/after, the node's log lines, and
//! whether it met p99 < 100 ms and the RSS bound printed at the top.
//! Figures, not assertions: `cargo bench --bench attack` (`ATTACK=name[,name]`
//! runs some; `ATTACK_LOGS=DIR` keeps each node's log there; `ATTACK_WORST=1`
//! adds the honest client's five slowest answers and when they were asked). The attacks' frames come from tests/common/attacks.rs, which
//! the hostile tests use too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tooldb_node::config::{Config, Limits};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::record::now_ms;

#[path = "../tests/common/attacks.rs"]
mod attacks;
mod common;

const TOPIC: &str = "tool-db-default";
/// The issue's target for the honest client's answers.
const P99_TARGET_MS: f64 = 100.0;
/// The honest client's gap between requests (pacing, not a wait).
const HONEST_GAP: Duration = Duration::from_millis(10);
/// An honest request unanswered this long counts as missing.
const HONEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the honest client goes on after an attack ends.
const AFTER: Duration = Duration::from_secs(1);
/// Attacker threads (one process; the node has the other core).
const THREADS: usize = 4;
/// The DESIGN.md target for the node with 10,000 idle clients, MiB: what
/// `max_connections` open sockets may cost.
const IDLE_CLIENTS_MIB: f64 = 60.0;

const MIB: f64 = 1024.0 * 1024.0;

// ---- a raw websocket, as an attacker writes it ----

/// Why an upgrade failed.
#[derive(Debug)]
enum Refused {
    Status(u16),
    Io(std::io::Error),
}

/// One websocket from the attacker: frames written raw (a zero mask, so
/// a flood is encoded once), server frames parsed from `buf`.
struct Sock {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A TCP connection to the node from 127.0.0.`2 + n % 16` (other loopback
/// addresses multiply the ports available to many short connections; the
/// node treats all loopback as one host and applies no per-address limit).
fn dial(port: u16, n: usize) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("127.0.0.{}:0", 2 + n % 16).parse().unwrap();
    sock.bind(&src.into())?;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// A websocket upgrade on `/`, no Tool Db ping yet.
fn upgrade(port: u16, n: usize) -> Result<Sock, Refused> {
    let mut s = dial(port, n).map_err(Refused::Io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(Refused::Io)?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .map_err(Refused::Io)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(Refused::Io(e)),
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return Err(Refused::Status(status));
    }
    Ok(Sock { s, buf: vec![] })
}

/// What reading a socket gave.
enum Got {
    Text(String),
    /// A close frame (its reason) or the end of the stream.
    Closed(String),
    Nothing,
}

impl Sock {
    /// Upgrades, pings as a client under a fresh key, waits for the pong.
    fn client(port: u16, n: usize) -> Result<(Sock, NodeKey), Refused> {
        let key = NodeKey::generate(KeyScheme::P256);
        let mut s = upgrade(port, n)?;
        s.send(&attacks::ping(&key, false, TOPIC, now_ms()).to_string())
            .map_err(Refused::Io)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.read(deadline) {
                Got::Text(t) if t.contains(r#""type":"pong""#) => return Ok((s, key)),
                Got::Text(_) => {}
                Got::Closed(r) => return Err(Refused::Io(std::io::Error::other(r))),
                Got::Nothing => return Err(Refused::Io(std::io::ErrorKind::TimedOut.into())),
            }
        }
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.send_raw(&attacks::client_frame(0x1, true, text.as_bytes()))
    }

    fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.s.write_all(raw)
    }

    /// The next frame before `deadline`.
    fn read(&mut self, deadline: Instant) -> Got {
        loop {
            if let Some((opcode, payload)) = self.take_frame() {
                match opcode {
                    0x1 => return Got::Text(String::from_utf8_lossy(&payload).into_owned()),
                    0x8 => {
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                        return Got::Closed(format!("close: {reason}"));
                    }
                    _ => continue,
                }
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Got::Nothing;
            };
            let _ = self.s.set_read_timeout(Some(
                left.clamp(Duration::from_millis(1), Duration::from_millis(200)),
            ));
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Closed("eof".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Got::Closed(e.to_string()),
            }
        }
    }

    /// A whole server frame (unmasked) off the front of `buf`.
    fn take_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let payload = b[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((opcode, payload))
    }

    /// Reads until the node closes the socket (its reason) or `timeout`.
    fn until_closed(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline) {
                Got::Closed(r) => return Some(r),
                Got::Nothing => return None,
                Got::Text(_) => {}
            }
        }
    }

    /// Reads until `want` texts containing `needle` came, or for `quiet`
    /// after the last frame, or until closed, or `timeout`.
    fn count_to(
        &mut self,
        want: usize,
        needle: &str,
        quiet: Duration,
        timeout: Duration,
    ) -> Counted {
        let end = Instant::now() + timeout;
        let mut c = Counted::default();
        while c.matched < want {
            let deadline = (Instant::now() + quiet).min(end);
            match self.read(deadline) {
                Got::Text(t) => {
                    c.frames += 1;
                    c.bytes += t.len();
                    if t.contains(needle) {
                        c.matched += 1;
                    }
                }
                Got::Closed(r) => {
                    c.closed = Some(r);
                    return c;
                }
                Got::Nothing => return c,
            }
        }
        c
    }

    /// `count_to` with no count to stop at.
    fn count(&mut self, needle: &str, quiet: Duration, timeout: Duration) -> Counted {
        self.count_to(usize::MAX, needle, quiet, timeout)
    }
}

#[derive(Default, Debug, Clone)]
struct Counted {
    matched: usize,
    frames: usize,
    bytes: usize,
    closed: Option<String>,
}

impl Counted {
    fn add(&mut self, o: Counted) {
        self.matched += o.matched;
        self.frames += o.frames;
        self.bytes += o.bytes;
        if o.closed.is_some() {
            self.closed = o.closed;
        }
    }
}

/// Runs `f(i)` for `i in 0..n` on `THREADS` threads, collecting results.
fn parallel<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            std::thread::spawn(move || {
                let mut out = vec![];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return out;
                    }
                    out.push(f(i));
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// `frames` sent `per_socket` to a pinged socket, on sockets in parallel,
/// each then read (answers containing `needle` counted) until quiet.
fn flood(port: u16, frames: Arc<Vec<String>>, per_socket: usize, needle: &'static str) -> Counted {
    let sockets = frames.len().div_ceil(per_socket);
    let mut total = Counted::default();
    let mut closed = 0;
    for c in parallel(sockets, move |i| {
        let Ok((mut s, _)) = Sock::client(port, i) else {
            return Counted::default();
        };
        let _ = s.s.set_write_timeout(Some(Duration::from_secs(10)));
        let mut sent = 0;
        for f in frames.iter().skip(i * per_socket).take(per_socket) {
            if s.send(f).is_err() {
                break;
            }
            sent += 1;
        }
        s.count_to(
            sent,
            needle,
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
    }) {
        closed += usize::from(c.closed.is_some());
        total.add(c);
    }
    total.closed = (closed > 0).then(|| format!("{closed} sockets closed"));
    total
}

fn summary(sent: usize, c: &Counted, what: &str) -> String {
    format!(
        "{sent} sent, {} refused naming {what}, {} answer frames ({:.1} MB){}",
        c.matched,
        c.frames,
        c.bytes as f64 / 1e6,
        c.closed
            .as_ref()
            .map_or(String::new(), |r| format!(", {r}"))
    )
}

// ---- the well-behaved client ----

struct Honest {
    sock: Sock,
    key: NodeKey,
}

#[derive(Default)]
struct HonestReport {
    /// Request → answer, ms.
    latencies: Vec<f64>,
    missing: usize,
    closed: Option<String>,
    /// The slowest answers: (ms, asked at s from the start, with a put).
    worst: Vec<(f64, f64, bool)>,
}

impl Honest {
    fn connect(port: u16) -> Honest {
        let (sock, key) = Sock::client_from_localhost(port);
        let mut h = Honest { sock, key };
        // The key it reads is stored before the attack starts.
        assert!(h.put_and_get(0).is_ok(), "the honest client's first put");
        h
    }

    /// Puts `honest = put`, then gets it: Ok(ms) once the answer holding
    /// it came; Err(closed?) if none came in time.
    fn put_and_get(&mut self, put: u64) -> Result<f64, Option<String>> {
        let t = Instant::now();
        let rec = attacks::record(&self.key, "honest", &json!(put), now_ms());
        let _ = self.sock.send(&attacks::carrying("put", &rec).to_string());
        self.get(t, put)
    }

    fn get(&mut self, t: Instant, expect: u64) -> Result<f64, Option<String>> {
        let id = new_message_id();
        let cid = self.key.client_id().to_owned();
        let frame = json!({"type":"get","id":id,"to":[cid],"key":"honest"});
        if let Err(e) = self.sock.send(&frame.to_string()) {
            return Err(Some(e.to_string()));
        }
        let deadline = t + HONEST_TIMEOUT;
        loop {
            match self.sock.read(deadline) {
                Got::Text(text) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if v["id"] == id.as_str() && v["data"]["v"] == json!(expect) {
                        return Ok(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Got::Closed(r) => return Err(Some(r)),
                Got::Nothing => return Err(None),
            }
        }
    }

    /// Gets (every fourth round a put first) until `stop`.
    fn run(mut self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<HonestReport> {
        std::thread::spawn(move || {
            let mut r = HonestReport::default();
            let start = Instant::now();
            let mut value = 0u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let res = if round.is_multiple_of(4) {
                    value += 1;
                    self.put_and_get(value)
                } else {
                    self.get(Instant::now(), value)
                };
                match res {
                    Ok(ms) => {
                        let at = start.elapsed().as_secs_f64() - ms / 1e3;
                        r.worst.push((ms, at, round.is_multiple_of(4)));
                        r.worst.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
                        r.worst.truncate(5);
                        r.latencies.push(ms)
                    }
                    Err(None) => r.missing += 1,
                    Err(Some(closed)) => {
                        r.missing += 1;
                        r.closed = Some(closed);
                        break;
                    }
                }
                std::thread::sleep(HONEST_GAP);
            }
            r
        })
    }
}

impl Sock {
    /// A client from 127.0.0.1 (apart from the attackers' addresses).
    fn client_from_localhost(port: u16) -> (Sock, NodeKey) {
        let key = NodeKey::generate(KeyScheme::P256);
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut sock = Sock { s, buf: vec![] };
        write!(
            sock.s,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The 101's head, then frames.
        while !sock.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(Instant::now() < deadline, "no upgrade");
            let mut chunk = [0u8; 4096];
            let n = sock.s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the upgrade");
            sock.buf.extend_from_slice(&chunk[..n]);
        }
        let end = sock.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(sock.buf.starts_with(b"HTTP/1.1 101"), "upgrade refused");
        sock.buf.drain(..end);
        sock.send(&attacks::ping(&key, false, TOPIC, now_ms()).to_string())
            .unwrap();
        loop {
            match sock.read(deadline) {
                Got::Text(t) if t.contains(r#""type":"pong""#) => return (sock, key),
                Got::Text(_) => {}
                _ => panic!("the honest client got no pong"),
            }
        }
    }
}

// ---- the attacks ----

struct Ctx {
    port: u16,
    limits: Limits,
}

struct Attack {
    name: &'static str,
    /// Before the honest client and the RSS baseline: data the attack needs.
    setup: fn(&Ctx) -> Value,
    run: fn(&Ctx, &Value) -> String,
}

fn no_setup(_: &Ctx) -> Value {
    Value::Null
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "sockets",
        setup: no_setup,
        run: sockets,
    },
    Attack {
        name: "silent",
        setup: no_setup,
        run: silent,
    },
    Attack {
        name: "big_ids",
        setup: no_setup,
        run: big_ids,
    },
    Attack {
        name: "bad_pings",
        setup: no_setup,
        run: bad_pings,
    },
    Attack {
        name: "subscribe_flood",
        setup: no_setup,
        run: subscribe_flood,
    },
    Attack {
        name: "big_sub_keys",
        setup: no_setup,
        run: big_sub_keys,
    },
    Attack {
        name: "unfinished",
        setup: no_setup,
        run: unfinished,
    },
    Attack {
        name: "crdt_growth",
        setup: no_setup,
        run: crdt_growth,
    },
    Attack {
        name: "crdt_get",
        setup: store_fat_crdt,
        run: crdt_get,
    },
    Attack {
        name: "query_all",
        setup: store_50k_keys,
        run: query_all,
    },
    Attack {
        name: "function_args",
        setup: no_setup,
        run: function_args,
    },
    Attack {
        name: "fake_servers",
        setup: no_setup,
        run: fake_servers,
    },
    Attack {
        name: "pong_storm",
        setup: no_setup,
        run: pong_storm,
    },
    Attack {
        name: "deep_nesting",
        setup: no_setup,
        run: deep_nesting,
    },
    Attack {
        name: "rekey",
        setup: victim_post,
        run: rekey,
    },
    Attack {
        name: "forged_crdt",
        setup: victim_crdt,
        run: forged_crdt,
    },
    Attack {
        name: "backdated",
        setup: victim_frozen,
        run: backdated,
    },
    Attack {
        name: "future",
        setup: no_setup,
        run: future,
    },
    Attack {
        name: "replayed_ping",
        setup: no_setup,
        run: replayed_ping,
    },
];

/// 20,000 websockets opened and held, each a pinged client.
fn sockets(ctx: &Ctx, _: &Value) -> String {
    let port = ctx.port;
    let held = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let refusals = {
        let held = held.clone();
        parallel(20_000, move |i| {
            if t.elapsed() > Duration::from_secs(40) {
                return None;
            }
            match Sock::client(port, i) {
                Ok((s, _)) => {
                    held.lock().unwrap().push(s);
                    None
                }
                Err(e) => Some(e),
            }
        })
    };
    let open = held.lock().unwrap().len();
    let status_503 = refusals
        .iter()
        .filter(|r| matches!(r, Some(Refused::Status(503))))
        .count();
    let other: Vec<String> = refusals
        .iter()
        .flatten()
        .filter(|r| !matches!(r, Refused::Status(503)))
        .map(|r| match r {
            Refused::Status(s) => format!("HTTP {s}"),
            Refused::Io(e) => e.to_string(),
        })
        .take(3)
        .collect();
    format!(
        "{} tried in {:.1} s: {open} open, {status_503} refused with 503 (max_connections {}){}",
        open + refusals.iter().flatten().count(),
        t.elapsed().as_secs_f64(),
        ctx.limits.max_connections,
        if other.is_empty() {
            String::new()
        } else {
            format!(", other failures: {other:?}")
        }
    )
}

/// 5,000 websockets that never ping, held until the node closes them.
fn silent(ctx: &Ctx, _: &Value) -> String {
    let port = ctx.port;
    let mut socks: Vec<Sock> = parallel(5_000, move |i| upgrade(port, i).ok())
        .into_iter()
        .flatten()
        .collect();
    let opened = socks.len();
    let t = Instant::now();
    let deadline = t + Duration::from_secs(ctx.limits.handshake_timeout_secs + 10);
    let mut closed = 0;
    while !socks.is_empty() && Instant::now() < deadline {
        socks.retain_mut(|s| {
            let gone = matches!(
                s.read(Instant::now() + Duration::from_millis(1)),
                Got::Closed(_)
            );
            closed += usize::from(gone);
            !gone
        });
    }
    format!(
        "{opened} opened; {closed} closed by the node within {:.1} s (handshake_timeout_secs {})",
        t.elapsed().as_secs_f64(),
        ctx.limits.handshake_timeout_secs
    )
}

/// 300 gets with 1 MB message ids, 15 per socket (under max_bad_frames).
fn big_ids(ctx: &Ctx, _: &Value) -> String {
    let id = "i".repeat(1_000_000);
    let frames: Vec<String> = (0..300)
        .map(|_| json!({"type":"get","id":id,"to":[],"key":"k"}).to_string())
        .collect();
    let c = flood(ctx.port, Arc::new(frames), 15, "max_id_bytes");
    summary(300, &c, "max_id_bytes")
}

/// Up to 78,000 connections (at most 30 s), each one bad-signature server ping.
fn bad_pings(ctx: &Ctx, _: &Value) -> String {
    let port = ctx.port;
    let key = NodeKey::generate(KeyScheme::P256);
    let ping = Arc::new(attacks::bad_signature_ping(&key, TOPIC).to_string());
    let t = Instant::now();
    let results = parallel(78_000, move |i| {
        if t.elapsed() > Duration::from_secs(30) {
            return None;
        }
        let mut s = upgrade(port, i).ok()?;
        s.send(&ping).ok()?;
        s.until_closed(Duration::from_secs(5))
    });
    let done = results.iter().flatten().count();
    let refused = results
        .iter()
        .flatten()
        .filter(|r| r.contains("server ping refused"))
        .count();
    format!(
        "{done} connections in {:.1} s ({:.0}/s), {refused} closed as refused pings",
        t.elapsed().as_secs_f64(),
        done as f64 / t.elapsed().as_secs_f64()
    )
}

/// 200,000 subscribes from one socket, answers read.
fn subscribe_flood(ctx: &Ctx, _: &Value) -> String {
    let Ok((mut s, key)) = Sock::client(ctx.port, 0) else {
        return "no socket".into();
    };
    let cid = key.client_id().to_owned();
    let mut reader = Sock {
        s: s.s.try_clone().unwrap(),
        buf: vec![],
    };
    let counter = std::thread::spawn(move || {
        reader.count(
            "most subscriptions",
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
    });
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1 << 20);
    let mut sent = 0;
    for i in 0..200_000 {
        let f =
            json!({"type":"subscribe","id":format!("s{i}"),"to":[cid],"key":format!("key-{i}")});
        batch.extend(attacks::client_frame(0x1, true, f.to_string().as_bytes()));
        if batch.len() > 1 << 16 {
            if s.send_raw(&batch).is_err() {
                break;
            }
            batch.clear();
        }
        sent = i + 1;
        if t.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    let _ = s.send_raw(&batch);
    let c = counter.join().unwrap();
    format!(
        "{}; in {:.1} s",
        summary(sent, &c, "the subscription cap"),
        t.elapsed().as_secs_f64()
    )
}

/// 300 subscribes with 1 MB keys from one socket.
fn big_sub_keys(ctx: &Ctx, _: &Value) -> String {
    let key = "k".repeat(1_000_000);
    let frames: Vec<String> = (0..300)
        .map(|i| json!({"type":"subscribe","id":format!("s{i}"),"to":[],"key":key}).to_string())
        .collect();
    let c = flood(ctx.port, Arc::new(frames), 300, "max_key_bytes");
    summary(300, &c, "max_key_bytes")
}

/// 300 sockets each holding 900 KB of a fragmented message never finished,
/// for 10 s.
fn unfinished(ctx: &Ctx, _: &Value) -> String {
    let port = ctx.port;
    let raw = Arc::new(attacks::unfinished_fragments(15, 60_000));
    let mut socks: Vec<Sock> = parallel(300, move |i| {
        let (mut s, _) = Sock::client(port, i).ok()?;
        let _ = s.s.set_write_timeout(Some(Duration::from_secs(2)));
        // A socket already cut off refuses the rest: that is the defence.
        let _ = s.send_raw(&raw);
        Some(s)
    })
    .into_iter()
    .flatten()
    .collect();
    let opened = socks.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reasons: Vec<String> = vec![];
    while Instant::now() < deadline {
        socks.retain_mut(
            |s| match s.read(Instant::now() + Duration::from_millis(1)) {
                Got::Closed(r) => {
                    reasons.push(r);
                    false
                }
                _ => true,
            },
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let over = reasons
        .iter()
        .filter(|r| r.contains("max_unfinished_bytes"))
        .count();
    format!(
        "{opened} sockets sent 900 KB each: {over} closed at max_unfinished_bytes ({} MiB), {} others closed, {} still held after 10 s",
        ctx.limits.max_unfinished_bytes >> 20,
        reasons.len() - over,
        socks.len()
    )
}

/// 25 crdtPuts of ~950 KB change lists to one key.
fn crdt_growth(ctx: &Ctx, _: &Value) -> String {
    let key = NodeKey::generate(KeyScheme::P256);
    let address = key.address().to_owned();
    let frames: Vec<String> = (0..25)
        .map(|round| {
            attacks::crdt_put(
                &key,
                "grown",
                &attacks::crdt_changes(&address, 100, 9_400, round),
            )
            .to_string()
        })
        .collect();
    let size = frames[0].len();
    let c = flood(ctx.port, Arc::new(frames), 25, "max_record_bytes");
    format!("{} ({size} B each)", summary(25, &c, "max_record_bytes"))
}

/// A ~900 KB CRDT record under "fat".
fn store_fat_crdt(ctx: &Ctx) -> Value {
    let key = NodeKey::generate(KeyScheme::P256);
    let changes = attacks::crdt_changes(key.address(), 90, 10_000, 0);
    let (mut s, _) = Sock::client(ctx.port, 0).unwrap();
    s.send(&attacks::crdt_put(&key, "fat", &changes).to_string())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the fat record was not stored");
        let id = new_message_id();
        s.send(&json!({"type":"crdtGet","id":id,"to":[],"key":"fat"}).to_string())
            .unwrap();
        let c = s.count(&id, Duration::from_millis(300), Duration::from_secs(2));
        if c.matched > 0 {
            return Value::Null;
        }
    }
}

/// 4 sockets each sending 2,000 crdtGets of the fat record, never reading.
/// A crdtGet asker's sends, close reason, and when it was done sending and closed.
type Asked = (usize, Option<String>, Duration, Duration);

fn crdt_get(ctx: &Ctx, _: &Value) -> String {
    let port = ctx.port;
    let t = Instant::now();
    let reasons = parallel(4, move |i| {
        let (mut s, _) = Sock::client(port, i).ok()?;
        let _ = s.s.set_write_timeout(Some(Duration::from_secs(1)));
        let mut sent = 0;
        for g in 0..2000 {
            let f = json!({"type":"crdtGet","id":format!("g{i}-{g}"),"to":[],"key":"fat"});
            if s.send(&f.to_string()).is_err() {
                break;
            }
            sent += 1;
        }
        let sent_by = t.elapsed();
        // Now read: past its backlog of answers, the close.
        let reason = s.until_closed(Duration::from_secs(40));
        Some((sent, reason, sent_by, t.elapsed()))
    });
    let slow = reasons
        .iter()
        .flatten()
        .filter(|(_, r, ..)| r.as_ref().is_some_and(|r| r.contains("slow consumer")))
        .count();
    let sent: usize = reasons.iter().flatten().map(|(n, ..)| n).sum();
    let last = |f: fn(&Asked) -> Duration| {
        reasons
            .iter()
            .flatten()
            .map(f)
            .max()
            .unwrap_or_default()
            .as_secs_f64()
    };
    format!(
        "4 sockets sent {sent} crdtGets of a 900 KB record without reading (by {:.2} s): {slow} closed as slow consumers (by {:.2} s)",
        last(|r| r.2),
        last(|r| r.3)
    )
}

/// 50,000 keys stored (4 writers), so `query ""` has them all to list.
fn store_50k_keys(ctx: &Ctx) -> Value {
    let port = ctx.port;
    parallel(4, move |w| {
        let (mut s, key) = Sock::client(port, w).unwrap();
        let t0 = now_ms() - 20_000;
        let mut batch = vec![];
        for i in 0..12_500u64 {
            let rec = attacks::record(&key, &format!("q{w}-{i:05}"), &json!(i), t0 + i);
            batch.extend(attacks::client_frame(
                0x1,
                true,
                attacks::carrying("put", &rec).to_string().as_bytes(),
            ));
            if batch.len() > 1 << 16 {
                s.send_raw(&batch).unwrap();
                batch.clear();
            }
        }
        s.send_raw(&batch).unwrap();
        // Read back the last: a connection's reads wait for its puts.
        let id = new_message_id();
        s.send(&json!({"type":"get","id":id,"to":[],"key":format!("q{w}-12499")}).to_string())
            .unwrap();
        let c = s.count(&id, Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(c.matched, 1, "the last put of writer {w} reads back");
    });
    Value::Null
}

/// 300 `query ""` over 50,000 keys, from 3 sockets that read the answers.
fn query_all(ctx: &Ctx, _: &Value) -> String {
    let frames: Vec<String> = (0..300)
        .map(|_| json!({"type":"query","id":new_message_id(),"to":[],"key":""}).to_string())
        .collect();
    let t = Instant::now();
    let c = flood(ctx.port, Arc::new(frames), 100, "\"truncated\":true");
    format!(
        "300 queries over 50,000 keys: {} answers ({:.0} MB, {} cut to one frame) in {:.1} s{}",
        c.frames,
        c.bytes as f64 / 1e6,
        c.matched,
        t.elapsed().as_secs_f64(),
        c.closed.map_or(String::new(), |r| format!(", {r}"))
    )
}

/// 300 function calls with 900 KB of arguments (known and unknown names).
fn function_args(ctx: &Ctx, _: &Value) -> String {
    let args = json!(["a".repeat(900_000)]);
    let frames: Vec<String> = (0..300)
        .map(|i| {
            let name = if i % 2 == 0 {
                "peers".to_owned()
            } else {
                "f".repeat(10_000)
            };
            json!({"type":"function","id":new_message_id(),"to":[],"function":name,"args":args})
                .to_string()
        })
        .collect();
    let c = flood(ctx.port, Arc::new(frames), 30, "functionReturn");
    format!(
        "300 calls (270 MB of arguments): {} answers, {:.1} KB in all",
        c.matched,
        c.bytes as f64 / 1e3
    )
}

/// 3,000 signed fake server records, 250 in a pong on each of 12 sockets.
fn fake_servers(ctx: &Ctx, _: &Value) -> String {
    let junk = Arc::new(attacks::junk_servers(3_000, TOPIC, 20_000));
    let port = ctx.port;
    parallel(12, move |i| {
        let Ok((mut s, key)) = Sock::client(port, i) else {
            return;
        };
        let pong = attacks::pong_listing(key.client_id(), &junk[i * 250..(i + 1) * 250]);
        let _ = s.send(&pong.to_string());
        // Held while the node works through them.
        s.count("", Duration::from_secs(2), Duration::from_secs(10));
    });
    let peers = common::http_json(port, "/peers");
    let known = peers["servers"].as_array().map_or(0, Vec::len);
    format!(
        "12 sockets listed 3,000 junk servers: the node knows {known} (max_known_servers {}), verifying at most {}/min per socket",
        ctx.limits.max_known_servers, ctx.limits.listed_verifications_per_minute
    )
}

/// Pongs of 3,600 server records each, 10 a second for 10 s, one socket
/// (reconnecting if closed).
fn pong_storm(ctx: &Ctx, _: &Value) -> String {
    let records = attacks::junk_servers(3_600, TOPIC, 30_000);
    let (mut s, mut key) = Sock::client(ctx.port, 0).unwrap();
    let size = attacks::pong_listing(key.client_id(), &records)
        .to_string()
        .len();
    let t = Instant::now();
    let (mut sent, mut reconnects) = (0, 0);
    for n in 0..100u32 {
        let due = t + Duration::from_millis(100) * n;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let pong = attacks::pong_listing(key.client_id(), &records).to_string();
        if s.send(&pong).is_err() {
            reconnects += 1;
            (s, key) = Sock::client(ctx.port, n as usize).unwrap();
            continue;
        }
        sent += 1;
        // Drop whatever the node says (heartbeats, a close).
        while let Some(_frame) = s.take_frame() {}
    }
    format!("{sent} pongs of {size} B at 10/s, {reconnects} reconnects")
}

/// 300 puts of values nested 100,000 deep, 15 per socket.
fn deep_nesting(ctx: &Ctx, _: &Value) -> String {
    let frames: Vec<String> = (0..300)
        .map(|i| attacks::deep_put_text(&format!("deep{i}"), 100_000))
        .collect();
    let c = flood(ctx.port, Arc::new(frames), 15, "max_json_depth");
    summary(300, &c, "max_json_depth")
}

/// A victim's record, stored: `{"record": ..}`.
fn victim_put(ctx: &Ctx, key: &NodeKey, data: Value, kind: &str) -> Value {
    let (mut s, _) = Sock::client(ctx.port, 0).unwrap();
    let k = data["k"].as_str().unwrap().to_owned();
    s.send(&attacks::carrying(kind, &data).to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let get = if kind == "crdtPut" { "crdtGet" } else { "get" };
    loop {
        assert!(
            Instant::now() < deadline,
            "the victim's record was not stored"
        );
        let id = new_message_id();
        s.send(&json!({"type":get,"id":id,"to":[key.client_id()],"key":k}).to_string())
            .unwrap();
        if s.count(&id, Duration::from_millis(300), Duration::from_secs(2))
            .matched
            > 0
        {
            return json!({ "record": data });
        }
    }
}

fn victim_post(ctx: &Ctx) -> Value {
    let key = NodeKey::generate(KeyScheme::P256);
    let k = format!(":{}.post", key.address());
    let rec = attacks::record(&key, &k, &json!("my post"), now_ms());
    victim_put(ctx, &key, rec, "put")
}

fn victim_crdt(ctx: &Ctx) -> Value {
    let key = NodeKey::generate(KeyScheme::P256);
    let a = key.address().to_owned();
    let put = attacks::crdt_put(
        &key,
        "doc",
        &json!([{"t":"SET","a":a,"k":"admin","v":false,"i":1}]),
    );
    victim_put(ctx, &key, put["data"].clone(), "crdtPut")
}

fn victim_frozen(ctx: &Ctx) -> Value {
    let key = NodeKey::generate(KeyScheme::P256);
    let rec = attacks::record(&key, "==alice", &json!("owner"), now_ms());
    victim_put(ctx, &key, rec, "put")
}

/// 3,000 frames in sockets of 60 (under max_invalid_records), refusals counted.
fn refused_records(ctx: &Ctx, frames: Vec<String>, rule: &'static str) -> String {
    let n = frames.len();
    let c = flood(ctx.port, Arc::new(frames), 60, rule);
    summary(n, &c, rule)
}

/// The victim's post replayed under 3,000 other keys.
fn rekey(ctx: &Ctx, setup: &Value) -> String {
    let frames = (0..3_000)
        .map(|i| {
            let r = attacks::rekeyed(&setup["record"], &format!("announcement-{i}"));
            attacks::carrying("put", &r).to_string()
        })
        .collect();
    refused_records(ctx, frames, "Rekeyed")
}

/// The victim's crdtPut with 3,000 injected change lists.
fn forged_crdt(ctx: &Ctx, setup: &Value) -> String {
    let a = setup["record"]["v"][0]["a"].clone();
    let frames = (0..3_000)
        .map(|i| {
            let r = attacks::forged_changes(
                &setup["record"],
                json!([{"t":"SET","a":a,"k":"admin","v":true,"i":2 + i}]),
            );
            attacks::carrying("crdtPut", &r).to_string()
        })
        .collect();
    refused_records(ctx, frames, "InvalidHashNonce")
}

/// 3,000 back-dated writes to the victim's frozen `==alice`.
fn backdated(ctx: &Ctx, _: &Value) -> String {
    let frames = parallel(3_000, |i| {
        let thief = NodeKey::generate(KeyScheme::P256);
        let rec = attacks::record(&thief, "==alice", &json!("thief"), 1 + i as u64);
        attacks::carrying("put", &rec).to_string()
    });
    refused_records(ctx, frames, "BackDated")
}

/// 3,000 writes 29.99 s in the future.
fn future(ctx: &Ctx, _: &Value) -> String {
    let frames = parallel(3_000, |i| {
        let k = NodeKey::generate(KeyScheme::P256);
        let rec = attacks::record(
            &k,
            &format!("later-{}", i % 10),
            &json!("future"),
            now_ms() + 29_990,
        );
        attacks::carrying("put", &rec).to_string()
    });
    refused_records(ctx, frames, "future")
}

/// A connected victim's ping replayed on 2,000 other sockets.
fn replayed_ping(ctx: &Ctx, _: &Value) -> String {
    let key = NodeKey::generate(KeyScheme::P256);
    let ping = attacks::ping(&key, false, TOPIC, now_ms());
    let mut victim = upgrade(ctx.port, 0).unwrap();
    victim.send(&ping.to_string()).unwrap();
    let c = victim.count("pong", Duration::from_millis(500), Duration::from_secs(5));
    assert!(c.matched > 0, "the victim is answered");
    let port = ctx.port;
    let reasons = parallel(2_000, move |i| {
        let mut replay = ping.clone();
        replay["id"] = json!(new_message_id());
        let mut s = upgrade(port, i).ok()?;
        s.send(&replay.to_string()).ok()?;
        s.until_closed(Duration::from_secs(5))
    });
    let refused = reasons
        .iter()
        .flatten()
        .filter(|r| r.contains("newer signed peer record"))
        .count();
    drop(victim);
    format!("2000 replays: {refused} closed naming the newer record rule")
}

// ---- measuring ----

fn rss_mib(pid: u32) -> f64 {
    common::rss_mib(pid)
}

/// What the node may hold by its limits, MiB, and how it is made up.
fn rss_bound(l: &Limits, cache_mib: u64) -> (f64, String) {
    let parts = [
        (IDLE_CLIENTS_MIB, "max_connections idle (DESIGN)".to_owned()),
        (
            l.total_window_bytes as f64 / MIB,
            "total_window_bytes".to_owned(),
        ),
        (
            l.max_unfinished_bytes as f64 / MIB,
            "max_unfinished_bytes".to_owned(),
        ),
        (
            l.max_subscription_bytes as f64 / MIB,
            "max_subscription_bytes".to_owned(),
        ),
        (
            l.total_output_bytes as f64 / MIB,
            "total_output_bytes".to_owned(),
        ),
        // The memo's texts and their parses.
        (
            2.0 * tooldb_node::actors::storage::SHARED_BYTES as f64 / MIB,
            "parsed-record memo".to_owned(),
        ),
        (cache_mib as f64, "storage.cache_mib".to_owned()),
    ];
    let total = parts.iter().map(|p| p.0).sum();
    let how = parts
        .iter()
        .map(|(m, n)| format!("{m:.0} {n}"))
        .collect::<Vec<_>>()
        .join(" + ");
    (total, how)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn run(a: &Attack, config: &Config, bound: f64) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("node.log");
    let (server, port, _dir) = common::start_default(&log);
    let pid = server.0.id();
    let ctx = Ctx {
        port,
        limits: config.limits.clone(),
    };
    let setup = (a.setup)(&ctx);
    let honest = Honest::connect(port);
    let before = rss_mib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new(before));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = rss_mib(pid);
                let mut p = peak.lock().unwrap();
                if r > *p {
                    *p = r;
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let honest_stop = Arc::new(AtomicBool::new(false));
    let honest = honest.run(honest_stop.clone());
    let t = Instant::now();
    let note = (a.run)(&ctx, &setup);
    let secs = t.elapsed().as_secs_f64();
    // The attacker's sockets are closed; the honest client goes on a while.
    std::thread::sleep(AFTER);
    honest_stop.store(true, Ordering::Relaxed);
    let mut report = honest.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let after = rss_mib(pid);
    let peak = *peak.lock().unwrap();
    let lines = std::fs::read_to_string(&log)
        .map(|l| l.lines().count())
        .unwrap_or(0);
    if let Ok(dir) = std::env::var("ATTACK_LOGS") {
        let _ = std::fs::copy(
            &log,
            std::path::Path::new(&dir).join(format!("{}.log", a.name)),
        );
    }
    report.latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let l = &report.latencies;
    let p99 = pct(l, 0.99);
    let ok = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "{:<16} {:>5} {:>6.1} {:>6.1} {:>7.1} {:>4} | {:>6.1} {:>6.1} {:>6.1} | {:>6} | {:>4} {:>4} | {secs:>5.1} s  {note}{}{}",
        a.name,
        l.len(),
        pct(l, 0.5),
        p99,
        l.last().copied().unwrap_or(f64::NAN),
        report.missing,
        before,
        peak,
        after,
        lines,
        ok(p99 < P99_TARGET_MS && report.missing == 0),
        ok(peak < bound),
        report
            .closed
            .map_or(String::new(), |r| format!("; HONEST CLIENT CLOSED: {r}")),
        if std::env::var("ATTACK_WORST").is_ok() {
            let w: Vec<String> = report
                .worst
                .iter()
                .map(|(ms, at, put)| format!("{ms:.0} ms at {at:.2} s{}", if *put { " (put)" } else { "" }))
                .collect();
            format!("; slowest: {}", w.join(", "))
        } else {
            String::new()
        }
    );
    drop(server);
}

/// Lets this process hold as many sockets as it may.
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() {
    raise_open_files();
    let config = Config::default();
    let (bound, how) = rss_bound(&config.limits, config.storage.cache_mib);
    let only: Option<Vec<String>> = std::env::var("ATTACK")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    println!(
        "attack: a fresh default node per attack (serve --no-dht), {THREADS} attacker threads, one honest client (get, and put + get every 4th)"
    );
    println!("RSS bound {bound:.0} MiB = {how}");
    println!("honest: p99 < {P99_TARGET_MS} ms with no answer missing");
    println!(
        "{:<16} {:>5} {:>6} {:>6} {:>7} {:>4} | {:>6} {:>6} {:>6} | {:>6} | {:>4} {:>4} | {:>7}  note",
        "attack", "n", "p50", "p99", "max", "miss", "before", "peak", "after", "log", "p99", "rss", "time"
    );
    for a in ATTACKS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == a.name))
        {
            continue;
        }
        run(a, &config, bound);
    }
}
