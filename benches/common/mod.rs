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
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args([
            "serve",
            "--no-dht",
            "--metrics-listen",
            "off",
            "--no-lan",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("TOOLDB_STORAGE__SYNC_WRITES", sync.to_string())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
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

/// Pins the calling thread (and the threads it starts later) to `core`.
pub fn pin_self_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; we pass its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
