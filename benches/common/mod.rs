//! Helpers shared by the benchmarks: a release server process and a raw
//! wire-protocol client.
#![allow(dead_code)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::peer::Peer;
use tooldb_node::record::now_ms;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub fn connect(port: u16) -> (Ws, NodeKey) {
    let key = NodeKey::generate(KeyScheme::P256);
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}")).unwrap();
    let peer = Peer::sign(&key, "tool-db-default", "127.0.0.1", 8080, now_ms());
    let id = key.client_id().to_owned();
    ws.send(Message::text(
        // A fresh id: Tool Db servers drop a message whose id they have seen.
        json!({"type":"ping","id":tooldb_node::messages::wire::new_message_id(),"to":[id],"clientId":id,"isServer":false,"peer":peer})
            .to_string(),
    ))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            if t.contains("\"pong\"") {
                break;
            }
        }
    }
    (ws, key)
}

pub struct Server(pub std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(sync: bool) -> (Server, u16, tempfile::TempDir) {
    let mut cmd = serve_command();
    cmd.env("TOOLDB_STORAGE__SYNC_WRITES", sync.to_string())
        // The idle bench's 10,000 clients plus its load pass the default
        // cap of 10,000 websockets, a policy rather than a cost.
        .env("TOOLDB_LIMITS__MAX_CONNECTIONS", "20000")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null());
    spawn(cmd)
}

/// A node with every default of config/default.toml (its log level
/// included), logging to `log`.
pub fn start_default(log: &std::path::Path) -> (Server, u16, tempfile::TempDir) {
    let mut cmd = serve_command();
    cmd.env_remove("RUST_LOG")
        .stderr(std::fs::File::create(log).unwrap());
    spawn(cmd)
}

/// `tooldb-node serve` on a free loopback port, without the DHT, LAN
/// discovery or the metrics listener.
fn serve_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tooldb-node"));
    cmd.args([
        "serve",
        "--no-dht",
        "--metrics-listen",
        "off",
        "--no-lan",
        "--host",
        "127.0.0.1",
    ])
    .stdout(std::process::Stdio::null());
    cmd
}

fn spawn(mut cmd: std::process::Command) -> (Server, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = cmd
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), port, dir)
}

/// Resident memory of a process, in MiB (from /proc).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory once the process has settled: the lowest of samples
/// taken over 12 s, so a server that hands freed memory back on a timer
/// (ours trims every 5 s; Node.js collects garbage when idle) is measured
/// at rest, not in the middle of the last burst's after-effects.
pub fn settled_rss_mib(pid: u32) -> f64 {
    let until = Instant::now() + Duration::from_secs(12);
    let mut low = rss_mib(pid);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        low = low.min(rss_mib(pid));
    }
    low
}

/// Where a process's resident memory is, from /proc/PID/smaps: the
/// malloc heap, anonymous mappings (other malloc arenas, thread stacks),
/// files (the binary, libraries) and the rest, in MiB.
pub fn rss_breakdown(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut heap, mut anon, mut file, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut kind = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            kind = match name {
                "[heap]" => 0,
                "" => 1,
                n if n.starts_with('/') => 2,
                _ => 3,
            };
        } else if first == "Rss:" {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => heap += kb,
                1 => anon += kb,
                2 => file += kb,
                _ => other += kb,
            }
        }
    }
    let mib = |kb: u64| kb as f64 / 1024.0;
    format!(
        "heap {:.1} MiB, anonymous mappings {:.1} MiB, files {:.1} MiB, other {:.1} MiB",
        mib(heap),
        mib(anon),
        mib(file),
        mib(other)
    )
}

/// Pins the calling thread (and the threads it starts later) to `core`.
pub fn pin_self_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; we pass its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// GET `path` on the node's HTTP port, as JSON (`null` if it is not).
pub fn http_json(port: u16, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("null")).unwrap_or_default()
}

/// Connects as a server the node trusts (as tests/common's `proved_server`
/// does): a listener answers the node's dial back with this key's signed
/// record, and the key sorts below the node's address so the node keeps
/// this inbound link. Returns the link once the node lists it connected,
/// and a channel of every other frame the node sends this server (with
/// its arrival time) on its dials back: the node relays on whichever of
/// its links to this server it keeps.
pub fn connect_as_server(port: u16) -> (Ws, std::sync::mpsc::Receiver<(String, Instant)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    use serde_json::Value;
    let health = http_json(port, "/health");
    let node_address = health["address"].as_str().unwrap().to_owned();
    let key = (0..1000)
        .map(|_| NodeKey::generate(KeyScheme::Secp256k1))
        .find(|k| k.address() < node_address.as_str())
        .expect("a key sorting below the node's");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let me = key.client_id().to_owned();
    let t0 = now_ms();
    let records: Vec<Value> = (1..=8)
        .map(|i| {
            serde_json::to_value(Peer::sign(
                &key,
                "tool-db-default",
                "127.0.0.1",
                lport,
                t0 + i,
            ))
            .unwrap()
        })
        .collect();
    {
        let me = me.clone();
        std::thread::spawn(move || {
            for (stream, record) in listener.incoming().flatten().zip(records) {
                let me = me.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        return;
                    };
                    while let Ok(msg) = ws.read() {
                        let Message::Text(text) = msg else { continue };
                        let Ok(m) = serde_json::from_str::<Value>(&text) else {
                            continue;
                        };
                        if m["type"] == "ping" {
                            let pong = json!({"type":"pong","id":m["id"],"to":[me],"clientId":me,
                                              "isServer":true,"servers":[record]});
                            if ws.send(Message::text(pong.to_string())).is_err() {
                                return;
                            }
                        } else if tx.send((text.to_string(), Instant::now())).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}")).unwrap();
    let peer = Peer::sign(&key, "tool-db-default", "127.0.0.1", lport, t0 + 100);
    ws.send(Message::text(
        json!({"type":"ping","id":tooldb_node::messages::wire::new_message_id(),"to":[me],
               "clientId":me,"isServer":true,"peer":peer})
        .to_string(),
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the node never proved the bench's server"
        );
        let peers = http_json(port, "/peers");
        let proved = peers["servers"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["clientId"] == me.as_str() && s["state"] == "connected")
        });
        if proved {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (ws, rx)
}
