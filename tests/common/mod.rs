//! Helpers shared by the integration tests: a `tooldb-node` child process
//! on a free 127.0.0.1 port with its own temporary data dir, a blocking
//! raw-protocol websocket client with real signatures, the Node.js interop
//! harness, and polling with deadlines (never a fixed sleep).
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::peer::Peer;
use tooldb_node::record::now_ms;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub mod attacks;
pub mod tls;

pub const TOPIC: &str = "tool-db-default";

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `tooldb-node serve` child process; killed when dropped.
pub struct NodeProc {
    pub port: u16,
    pub data_dir: PathBuf,
    pub child: Child,
    _tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl NodeProc {
    /// Starts a node with a fresh data dir and `extra` flags.
    pub fn start(extra: &[&str]) -> NodeProc {
        Self::start_env(extra, &[])
    }

    /// Starts a node with a fresh data dir, `extra` flags and environment.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let node = Self::spawn_env(extra, env);
        node.wait_healthy();
        node
    }

    /// Starts a node on `port` with data in `dir` (kept by the caller).
    pub fn start_in(dir: &Path, port: u16, extra: &[&str]) -> NodeProc {
        Self::start_in_env(dir, port, extra, &[])
    }

    pub fn start_in_env(dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let node = Self::spawn_in_env(dir, port, extra, env);
        node.wait_healthy();
        node
    }

    /// Starts a node with a fresh data dir and `extra` flags without
    /// waiting for its plain-HTTP `/health` (a TLS node has none).
    pub fn spawn(extra: &[&str]) -> NodeProc {
        Self::spawn_env(extra, &[])
    }

    /// Like `spawn`, with environment variables.
    pub fn spawn_env(extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut n = Self::spawn_in_env(&dir, free_port(), extra, env);
        n._tmp = Some(tmp);
        n
    }

    /// Like `start_in_env`, without waiting for `/health`.
    pub fn spawn_in_env(dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let log = dir.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        // Without a private DHT to join, a test node never touches the DHT.
        let dht: &[&str] = if extra.contains(&"--dht-bootstrap") {
            &["--dht-port", "0"]
        } else {
            &["--no-dht"]
        };
        // Parallel tests must not meet on the default metrics port.
        let metrics: &[&str] = if extra.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", "off"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
            // LAN discovery off: tests on one host would find each other's
            // servers of the same topic (tests/lan.rs tests it in namespaces).
            .args(["serve", "--no-lan", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(dht)
            .args(metrics)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,tooldb_node=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("the tooldb-node binary runs");
        NodeProc {
            port,
            data_dir: dir.to_owned(),
            child,
            _tmp: None,
            log,
        }
    }

    /// Starts a node with DHT discovery on and a fresh data dir: its DHT
    /// socket on any free UDP port, bootstrapped only from `bootstrap`
    /// (HOST:PORT of a private DHT, never the public one), plus `extra` flags.
    pub fn start_dht(bootstrap: &str, extra: &[&str]) -> NodeProc {
        let mut args = vec!["--dht-bootstrap", bootstrap];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn wait_healthy(&self) {
        wait_for("the node's /health", Duration::from_secs(20), || {
            http_get(self.port, "/health").filter(|(status, _)| *status == 200)
        });
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn health(&self) -> Value {
        let (_, body) = http_get(self.port, "/health").expect("health answers");
        serde_json::from_str(&body).unwrap()
    }

    pub fn peers(&self) -> Value {
        let (_, body) = http_get(self.port, "/peers").expect("peers answers");
        serde_json::from_str(&body).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of node on port {} ---\n{}", self.port, self.log());
        }
    }
}

/// A minimal HTTP/1.0 GET; returns (status, body) or None if not reachable.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_full(port, path).map(|(s, _, b)| (s, b))
}

/// (status, headers, body).
pub fn http_get_full(port: u16, path: &str) -> Option<(u16, String, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_owned(), body.to_owned()))
}

/// A raw Tool Db peer speaking the wire protocol with a real key.
pub struct RawPeer {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
    pub key: NodeKey,
    pub client_id: String,
    /// The server's topic (from its /health), used in our ping.
    pub topic: String,
}

impl RawPeer {
    pub fn connect(port: u16) -> RawPeer {
        Self::connect_with(port, NodeKey::generate(KeyScheme::P256))
    }

    pub fn connect_with(port: u16, key: NodeKey) -> RawPeer {
        let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}")).expect("ws connects");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        RawPeer::with(ws, key, port)
    }

    fn with(ws: WebSocket<MaybeTlsStream<TcpStream>>, key: NodeKey, port: u16) -> RawPeer {
        let topic = http_get(port, "/health")
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .and_then(|h| h["topic"].as_str().map(str::to_owned))
            .unwrap_or_else(|| TOPIC.to_owned());
        RawPeer {
            ws,
            client_id: key.client_id().to_owned(),
            key,
            topic,
        }
    }

    /// Connects and completes the handshake as a client; returns the pong.
    pub fn client(port: u16) -> (RawPeer, Value) {
        let mut p = Self::connect(port);
        let pong = p.handshake(false);
        (p, pong)
    }

    pub fn ping_frame(&self, is_server: bool, topic: &str, timestamp: u64) -> Value {
        let peer = Peer::sign(&self.key, topic, "127.0.0.1", 8080, timestamp);
        json!({"type":"ping","id":new_message_id(),"to":[self.client_id],
               "clientId":self.client_id,"isServer":is_server,"peer":peer})
    }

    pub fn handshake(&mut self, is_server: bool) -> Value {
        let ping = self.ping_frame(is_server, &self.topic.clone(), now_ms());
        self.send(&ping);
        self.expect("pong", |m| m["type"] == "pong")
    }

    pub fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next text frame within `timeout`: Ok(Some) a frame, Ok(None)
    /// nothing arrived, Err(reason) the socket closed (with its reason).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Value>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(Some(serde_json::from_str(&t).unwrap())),
                Ok(Message::Close(frame)) => {
                    return Err(frame.map(|f| f.reason.to_string()).unwrap_or_default())
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() > deadline {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits for a frame matching `pred` (others are skipped); panics on timeout.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.recv(Duration::from_millis(200)) {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(_) => {}
                Err(reason) => panic!("socket closed ({reason}) while waiting for {what}"),
            }
        }
        panic!("no {what} within 10 s");
    }

    /// Collects every frame for `window` (used to show something did NOT come).
    pub fn drain(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = vec![];
        while Instant::now() < deadline {
            if let Ok(Some(v)) = self.recv(Duration::from_millis(50)) {
                out.push(v);
            }
        }
        out
    }

    /// Waits until the server closes the socket; returns the close reason.
    pub fn expect_closed(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Err(reason) = self.recv(Duration::from_millis(200)) {
                return reason;
            }
        }
        panic!("the server did not close the socket within 10 s");
    }

    /// Signs and sends a plain record; returns (message id, record).
    pub fn put(&mut self, key: &str, value: Value) -> (String, Value) {
        self.put_at(key, value, now_ms())
    }

    /// Like `put`, with the record's timestamp `t`.
    pub fn put_at(&mut self, key: &str, value: Value, t: u64) -> (String, Value) {
        let rec = tooldb_node::record::sign_record(&self.key, key, &value, t);
        let record: Value = serde_json::from_str(rec.raw()).unwrap();
        let id = new_message_id();
        self.send(&json!({"type":"put","id":id,"to":[self.client_id],"data":record}));
        (id, record)
    }

    /// Sends a get and waits for the answering put; None if none came in `timeout`.
    pub fn get(&mut self, key: &str, timeout: Duration) -> Option<Value> {
        let id = new_message_id();
        self.send(&json!({"type":"get","id":id,"to":[self.client_id],"key":key}));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(v)) = self.recv(Duration::from_millis(100)) {
                if v["id"] == id.as_str() {
                    return Some(v);
                }
            }
        }
        None
    }

    /// Polls with gets until the key holds `value`.
    pub fn wait_value(&mut self, key: &str, value: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(m) = self.get(key, Duration::from_millis(500)) {
                if m["data"]["v"] == *value {
                    return m;
                }
            }
        }
        panic!("key {key} never held {value}");
    }
}

/// A private DHT's first node: `tooldb-node dht-bootstrap` on 127.0.0.1.
pub struct DhtBoot {
    child: Child,
    pub addr: String,
}

impl DhtBoot {
    pub fn start() -> DhtBoot {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
            .args(["dht-bootstrap", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tooldb-node binary runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(line.trim()).expect("dht-bootstrap prints its address");
        DhtBoot {
            child,
            addr: v["dht_bootstrap"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for DhtBoot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `node`'s /peers lists the server with `client_id` as connected.
pub fn connected_to(node: &NodeProc, client_id: &Value) -> bool {
    node.peers()["servers"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["clientId"] == *client_id && s["state"] == "connected")
    })
}

/// The Node.js interop harness directory.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the harness's locked npm packages once per test process, so
/// `cargo test` works on a fresh machine. Fails loudly: never skips.
pub fn ensure_harness() {
    static INSTALL: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = interop_dir();
    // Every package checked, so a node_modules from an older lock is redone.
    let installed = [
        "tool-db",
        "discovery-channel",
        "bittorrent-dht",
        "playwright-core",
        "bittorrent-tracker",
        "hyperswarm",
        "hyperdht",
    ]
    .iter()
    .all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if *done || installed {
        *done = true;
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (Node.js and npm are needed for the interop tests)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
    *done = true;
}

/// Runs one harness scenario and returns its JSON line.
pub fn scenario(name: &str, args: &[&str]) -> Value {
    scenario_env(name, args, &[])
}

/// Like `scenario`, with environment variables for Node.js (e.g.
/// `NODE_EXTRA_CA_CERTS`).
pub fn scenario_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec![name];
    all.extend_from_slice(args);
    all.push("--quiet");
    node_script("run.js", &all, env)
}

/// Runs a `tooldb-node` client command with `--no-lan` (tests on one host
/// would find each other's servers): (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(args)
        .arg("--no-lan")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `node tests/interop/SCRIPT ARGS...` (the harness installed first)
/// and returns the one JSON line it prints; fails with its stderr.
pub fn node_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    ensure_harness();
    let out = Command::new("node")
        .arg(interop_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} {args:?} printed {stdout:?}: {e}"))
}

impl RawPeer {
    /// Connects as a server the node can prove: a listener on a free port
    /// answers the node's dial with this peer's identity (the node trusts
    /// an inbound `isServer` ping only then), and the key is one whose
    /// address sorts below the node's, so the node keeps this inbound link
    /// rather than its own dial. `ext` goes into the ping. Returns the
    /// peer, once the node lists it as a connected server, and the pong.
    pub fn proved_server(node: &NodeProc, ext: Value) -> (RawPeer, Value) {
        Self::proved_server_with(node, ext, false)
    }

    /// Like `proved_server`; with `close_dials`, the listener closes each
    /// of the node's dials right after its pong, in the same write, as a
    /// server that keeps another link to the node does.
    pub fn proved_server_with(node: &NodeProc, ext: Value, close_dials: bool) -> (RawPeer, Value) {
        let node_address = node.peers()["self"]["address"]
            .as_str()
            .expect("the node's address")
            .to_owned();
        // The node's own key is random too: 1,000 tries failed one run in
        // a few hundred (an address in the lowest 0.5%); this many cost
        // time only when the node's address is that low.
        let key = (0..200_000)
            .map(|_| NodeKey::generate(KeyScheme::Secp256k1))
            .find(|k| k.address() < node_address.as_str())
            .expect("a key sorting below the node's");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = key.client_id().to_owned();
        let t0 = now_ms();
        // Records for the node's dials, signed ahead (the key stays ours).
        let records: Vec<Value> = (1..=8)
            .map(|i| {
                serde_json::to_value(Peer::sign(&key, TOPIC, "127.0.0.1", port, t0 + i)).unwrap()
            })
            .collect();
        std::thread::spawn(move || {
            for (stream, record) in listener.incoming().flatten().zip(records) {
                let me = me.clone();
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
                            if close_dials {
                                // One write for both frames, so the close
                                // comes while the node verifies the pong.
                                let _ = ws.write(Message::text(pong.to_string()));
                                let frame = tungstenite::protocol::CloseFrame {
                                    code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                                    reason: "duplicate connection: keeping the other link".into(),
                                };
                                let _ = ws.close(Some(frame));
                                let _ = ws.flush();
                            } else if ws.send(Message::text(pong.to_string())).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let mut p = RawPeer::connect_with(node.port, key);
        let peer = Peer::sign(&p.key, &p.topic, "127.0.0.1", port, t0 + 100);
        let mut ping = json!({"type":"ping","id":new_message_id(),"to":[p.client_id],
               "clientId":p.client_id,"isServer":true,"peer":peer});
        ping["ext"] = ext;
        p.send(&ping);
        let pong = p.expect("pong", |m| m["type"] == "pong");
        let address = p.key.address().to_owned();
        wait_for(
            "the node to prove the server",
            Duration::from_secs(15),
            || {
                node.peers()["servers"]
                    .as_array()?
                    .iter()
                    .any(|s| s["address"] == address.as_str() && s["state"] == "connected")
                    .then_some(())
            },
        );
        (p, pong)
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak RSS of a process so far, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// p99 of a well-behaved client's get round trips (it put the key first).
pub fn p99_get_ms(port: u16, rounds: usize) -> f64 {
    let (mut good, _) = RawPeer::client(port);
    good.put("good", json!("v"));
    good.wait_value("good", &json!("v"));
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            good.get("good", Duration::from_secs(5))
                .expect("the good client is answered");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[(times.len() * 99 / 100).min(times.len() - 1)]
}

/// Reads frames until `n` match `pred` (bounded by a deadline).
pub fn count_frames(p: &mut RawPeer, n: usize, pred: impl Fn(&Value) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < n && Instant::now() < deadline {
        if let Ok(Some(v)) = p.recv(Duration::from_millis(100)) {
            if pred(&v) {
                seen += 1;
            }
        }
    }
    seen
}

/// A refused websocket upgrade's HTTP status and body.
pub fn refusal(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> (u16, String) {
    let body = resp
        .body()
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), body)
}

/// A websocket to the node from `source` (e.g. 127.0.0.2, another
/// loopback address acting as a second host). Err: the upgrade was refused,
/// with the HTTP status and body.
pub fn ws_from(
    source: &str,
    port: u16,
) -> Result<WebSocket<MaybeTlsStream<TcpStream>>, (u16, String)> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&dst.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(
        format!("ws://127.0.0.1:{port}"),
        MaybeTlsStream::Plain(stream),
    ) {
        Ok((ws, _)) => {
            if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(refusal(&resp))
        }
        Err(e) => panic!("websocket from {source}: {e}"),
    }
}

impl RawPeer {
    /// A raw peer on a socket from `ws_from`, not yet pinged.
    pub fn on(ws: WebSocket<MaybeTlsStream<TcpStream>>, port: u16) -> RawPeer {
        RawPeer::with(ws, NodeKey::generate(KeyScheme::P256), port)
    }
}
