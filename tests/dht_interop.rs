//! DHT interop with npm `discovery-channel` 5.5 (what JS Tool Db servers use
//! to find each other) on a private DHT on 127.0.0.1, never the public one.
//!
//! The private DHT's storage node is a JS `bittorrent-dht` node
//! (`tests/interop/dht.js bootstrap`): `mainline` answers only 4-byte KRPC
//! transaction ids and `bittorrent-dht` sends 2-byte ones, so a DHT made of
//! `mainline` nodes is invisible to `discovery-channel` (DHT-NOTES.md).
//! Our server (`tooldb-node serve`, a child process) and a
//! `discovery-channel` (`dht.js channel`, a child process) both bootstrap
//! from it. Every wait polls with a deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{ensure_harness, free_port, interop_dir, wait_for, NodeProc};
use serde_json::Value;

/// Longest any one condition is waited for; each test stays under ~30 s.
const DEADLINE: Duration = Duration::from_secs(25);

/// A `node dht.js ...` child: its stdout JSON lines arrive on `lines`;
/// stderr goes to a file shown if the test fails. Killed when dropped.
struct JsDht {
    child: Child,
    lines: Receiver<Value>,
    what: String,
    _tmp: tempfile::TempDir,
    log: PathBuf,
}

impl JsDht {
    fn spawn(args: &[&str]) -> JsDht {
        ensure_harness();
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("dht.js.log");
        let mut child = Command::new("node")
            .arg(interop_dir().join("dht.js"))
            .args(args)
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("dht.js printed {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        JsDht {
            child,
            lines,
            what: args.join(" "),
            _tmp: tmp,
            log,
        }
    }

    /// A `bittorrent-dht` node with no bootstrap of its own on a free
    /// 127.0.0.1 port; returns it and its HOST:PORT once it listens.
    fn bootstrap() -> (JsDht, String) {
        let node = Self::spawn(&["bootstrap", "--port", "0"]);
        let ready = node.next_line(Duration::from_secs(15));
        assert_eq!(ready["ready"], true, "bootstrap node said {ready}");
        let port = ready["port"].as_u64().expect("a port");
        (node, format!("127.0.0.1:{port}"))
    }

    /// A `discovery-channel` joining `topic` (announcing `announce` if
    /// given), re-running its lookup every second.
    fn channel(bootstrap: &str, topic: &str, announce: Option<u16>) -> JsDht {
        let timeout = DEADLINE.as_millis().to_string();
        let mut args = vec![
            "channel",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--interval",
            "1000",
            "--timeout",
            &timeout,
        ];
        let port = announce.map(|p| p.to_string());
        if let Some(p) = &port {
            args.extend(["--announce", p.as_str()]);
        }
        Self::spawn(&args)
    }

    fn next_line(&self, timeout: Duration) -> Value {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "no line from `dht.js {}` within {timeout:?}: {e}",
                self.what
            )
        })
    }

    /// Reads peer lines until one has `port`; panics on `{"done":true}`,
    /// on the child's exit or after `timeout`.
    fn wait_for_peer(&self, port: u16, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "`dht.js {}` did not find port {port} within {timeout:?}: {e}",
                    self.what
                )
            });
            assert_ne!(
                line["done"], true,
                "the channel ended without finding port {port}"
            );
            if line["port"].as_u64() == Some(port.into()) {
                return line;
            }
        }
    }
}

impl Drop for JsDht {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- stderr of `dht.js {}` ---\n{log}", self.what);
        }
    }
}

fn topic(name: &str) -> String {
    format!("tooldb-dht-interop-{name}-{}", rand::random::<u32>())
}

/// Where `endpoint` (HOST:PORT) appears in our `/peers`: among the
/// unidentified `endpoints`, or as an endpoint of a known server.
fn endpoint_in_peers(peers: &Value, endpoint: &str) -> Option<Value> {
    let listed = peers["endpoints"].as_array().into_iter().flatten();
    let of_servers = peers["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten());
    listed
        .chain(of_servers)
        .find(|e| e["endpoint"] == endpoint)
        .cloned()
}

/// Our server, bootstrapped to the JS storage node, announces its
/// websocket port; a lookup-only `discovery-channel` finds it.
#[test]
fn a_discovery_channel_finds_our_server() {
    let (_boot, boot) = JsDht::bootstrap();
    let topic = topic("a");
    let started = Instant::now();
    let server = NodeProc::start_dht(&boot, &["--topic", &topic]);
    let channel = JsDht::channel(&boot, &topic, None);
    let peer = channel.wait_for_peer(server.port, DEADLINE);
    assert_eq!(peer["host"], "127.0.0.1");
    eprintln!(
        "discovery-channel found our server {:?} after the server's start",
        started.elapsed()
    );
}

/// A `discovery-channel` announces a port (nothing listens there); our
/// server's lookup finds it and dials it: the endpoint shows in `/peers`.
#[test]
fn our_server_finds_a_discovery_channel_announce() {
    let (_boot, boot) = JsDht::bootstrap();
    let topic = topic("b");
    let announced = free_port();
    let _channel = JsDht::channel(&boot, &topic, Some(announced));
    let started = Instant::now();
    let server = NodeProc::start_dht(&boot, &["--topic", &topic]);
    let endpoint = format!("127.0.0.1:{announced}");
    let entry = wait_for("the announced port in our /peers", DEADLINE, || {
        endpoint_in_peers(&server.peers(), &endpoint)
    });
    assert_eq!(entry["source"], "dht", "found through the DHT: {entry}");
    eprintln!(
        "our server found the discovery-channel announce {:?} after its start",
        started.elapsed()
    );
}
