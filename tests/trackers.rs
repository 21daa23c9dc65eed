//! Browsers find servers through WebTorrent trackers, as Tool Db's hybrid
//! adapter does (issue 16): a local websocket tracker (npm
//! `bittorrent-tracker`'s server, tests/interop/trackers.js), a node
//! announcing on it, and finders: the adapter's `findServer` by hand, a
//! real `tool-db` client with our tracker adapter, a page in headless
//! Chromium, and our own CLI. Everything on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ensure_harness, interop_dir, node_script, wait_for, NodeProc, RawPeer, TOPIC};
use serde_json::{json, Value};
use tooldb_node::tracker::{info_hash, topic_server_name, TrackerError};
use tungstenite::Message;

/// Announce every second (the adapter's 30 s would make each test wait).
const FAST: [(&str, &str); 1] = [("TOOLDB_TRACKERS__ANNOUNCE_EVERY_SECS", "1")];

/// A local websocket tracker: `node trackers.js tracker`; stops when dropped.
struct Tracker {
    child: Child,
    url: String,
}

impl Tracker {
    fn start() -> Tracker {
        ensure_harness();
        let mut child = Command::new("node")
            .arg(interop_dir().join("trackers.js"))
            .arg("tracker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(line.trim()).expect("the tracker prints its port");
        Tracker {
            url: format!("ws://127.0.0.1:{}", v["port"]),
            child,
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `node trackers.js CMD ARGS...` and returns its JSON line.
fn harness(cmd: &str, args: &[&str]) -> Value {
    harness_env(cmd, args, &[])
}

/// `harness` with environment variables for Node.js.
fn harness_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec![cmd];
    all.extend_from_slice(args);
    node_script("trackers.js", &all, env)
}

fn node_on(tracker: &str, name: &str) -> NodeProc {
    NodeProc::start_env(&["--tracker", tracker, "--server-name", name], &FAST)
}

/// The node's `tooldb_tracker_events_total`, from `/status.json`.
fn tracker_events(node: &NodeProc) -> Value {
    let (_, body) = common::http_get(node.port, "/status.json").expect("status.json");
    let st: Value = serde_json::from_str(&body).unwrap();
    st["metrics"]["tracker_events"].clone()
}

/// `tooldb-node get KEY` with `extra` flags (never the LAN or the DHT),
/// giving up after `timeout` seconds without a server.
fn cli_get(key: &str, timeout: u32, extra: &[&str]) -> (bool, String, String) {
    let timeout = timeout.to_string();
    let args = [&["get", key, "--timeout", &timeout][..], extra].concat();
    let (ok, out, err) = common::cli(&args);
    (ok, out.trim().to_owned(), err)
}

#[test]
fn a_finder_joining_as_find_server_does_reaches_the_node_with_a_ping_and_a_put_get() {
    let tracker = Tracker::start();
    let node = node_on(&tracker.url, "my-server");
    let health = node.health();
    let started = Instant::now();
    let r = harness(
        "find-raw",
        &[
            "--tracker",
            &tracker.url,
            "--name",
            "my-server",
            "--key",
            "found",
            "--value",
            "by name",
        ],
    );
    println!(
        "finder: offer, ping, put and get in {:?}",
        started.elapsed()
    );
    assert_eq!(r["ok"], true, "{r}");
    let server = &r["server"];
    assert_eq!(server["name"], "my-server", "{r}");
    assert_eq!(server["host"], "127.0.0.1", "{r}");
    assert_eq!(server["port"], node.port, "{r}");
    assert_eq!(server["ssl"], false, "{r}");
    assert_eq!(server["pubKey"], health["address"], "{r}");
    assert_eq!(r["signatureOk"], true, "the signature of host: {r}");
    assert_eq!(r["url"], node.url(), "{r}");
    assert_eq!(r["pongClientId"], health["clientId"], "{r}");
    assert_eq!(
        r["offerPeerId"], health["clientId"],
        "peer_id as the adapter's: {r}"
    );
    assert_eq!(r["got"]["v"], "by name", "{r}");
}

/// A TLS node says `ssl: true`. The adapter then dials `wss://` + host
/// (port 443 implied), so a node whose TLS port is not 443 names it in
/// `host`: the finder dials `wss://127.0.0.1:PORT` and is served, and so
/// does our client.
#[test]
fn a_tls_node_is_offered_as_wss_with_its_port_in_host() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not rcgen's default name, which the leaf has: Node.js would take the
    // leaf for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tracker test CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("chain.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca, ca_pem).unwrap();

    let tracker = Tracker::start();
    let node = NodeProc::spawn_env(
        &[
            "--tracker",
            &tracker.url,
            "--server-name",
            "tls-server",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &FAST,
    );
    let r = harness_env(
        "find-raw",
        &[
            "--tracker",
            &tracker.url,
            "--name",
            "tls-server",
            "--key",
            "over-wss",
            "--value",
            "tls",
        ],
        &[("NODE_EXTRA_CA_CERTS", ca.to_str().unwrap())],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["server"]["ssl"], true, "{r}");
    let host = format!("127.0.0.1:{}", node.port);
    assert_eq!(r["server"]["host"], host.as_str(), "{r}");
    assert_eq!(r["url"], format!("wss://{host}"), "{r}");
    assert_eq!(r["signatureOk"], true, "{r}");
    assert_eq!(r["got"]["v"], "tls", "{r}");
    // Our client, trusting the test CA, finds it by name too and dials the
    // offered `HOST:PORT` with wss.
    let (ok, out, err) = cli_get(
        "over-wss",
        20,
        &[
            "--tracker",
            &tracker.url,
            "--server-name",
            "tls-server",
            "--tls-ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let rec: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(rec["v"], "tls", "{rec}");
}

#[test]
fn a_tool_db_client_finds_the_node_by_topic_and_our_client_too() {
    let tracker = Tracker::start();
    let node = node_on(&tracker.url, "named-otherwise");
    // The hybrid adapter's own findServer, given the topic's name.
    let r = harness(
        "tooldb-client",
        &[
            "--tracker",
            &tracker.url,
            "--name",
            &topic_server_name(TOPIC),
            "--key",
            "by-topic",
            "--value",
            "from tool-db",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offer"]["port"], node.port, "{r}");
    assert_eq!(r["offer"]["name"], "named-otherwise", "{r}");

    // Our CLI with only the topic and the tracker.
    let started = Instant::now();
    let (ok, stdout, stderr) = cli_get("by-topic", 20, &["--tracker", &tracker.url]);
    println!(
        "tooldb-node get by topic through the tracker: {:?}",
        started.elapsed()
    );
    assert!(ok, "{stderr}");
    let rec: Value = serde_json::from_str(&stdout).expect("a record");
    assert_eq!(rec["v"], "from tool-db");
    assert_eq!(rec["a"], r["writer"]);

    // By name, and another topic: offered, but refused by the signed
    // ping's topic, as any endpoint would be.
    let (ok, stdout, _) = cli_get(
        "by-topic",
        20,
        &[
            "--tracker",
            &tracker.url,
            "--server-name",
            "named-otherwise",
        ],
    );
    assert!(ok && stdout.contains("from tool-db"), "{stdout}");
    let (ok, _, stderr) = cli_get(
        "by-topic",
        3,
        &[
            "--tracker",
            &tracker.url,
            "--server-name",
            "named-otherwise",
            "--topic",
            "another-topic",
        ],
    );
    assert!(!ok, "a server of another topic is not used");
    assert!(stderr.contains("no Tool Db server found"), "{stderr}");
}

#[test]
fn a_page_in_chromium_finds_the_node_through_the_tracker() {
    let tracker = Tracker::start();
    let node = node_on(&tracker.url, "browser-target");
    // Written by a P-256 user (the page verifies as @tool-db/ecdsa-user does).
    let (mut writer, _) = RawPeer::client(node.port);
    writer.put("for-the-page", json!("hello, browser"));
    writer.wait_value("for-the-page", &json!("hello, browser"));
    let bundle = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/status/tool-db.js");
    let started = Instant::now();
    let r = harness(
        "browser",
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--tracker",
            &tracker.url,
            "--name",
            "browser-target",
            "--read-key",
            "for-the-page",
            "--key",
            "from-the-page",
            "--value",
            "found you",
        ],
    );
    println!("chromium: found, read and wrote in {:?}", started.elapsed());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["read"], "hello, browser", "{r}");
    assert_eq!(r["offer"]["port"], node.port, "{r}");
    let got = writer.wait_value("from-the-page", &json!("found you"));
    assert_eq!(got["data"]["a"], r["address"], "{got}");
}

/// A hostile member of the topic's swarm floods it with offers: junk
/// records, hosts with no server, oversized strings. The node acts on none
/// (it never dials them and keeps serving); our client, which looks at
/// offers, still finds the real node with bounded work.
#[test]
fn hostile_offers_are_ignored_by_the_server_and_cost_our_client_bounded_work() {
    let tracker = Tracker::start();
    let node = node_on(&tracker.url, "target");
    let (mut writer, _) = RawPeer::client(node.port);
    writer.put("kept", json!("served"));
    writer.wait_value("kept", &json!("served"));

    let closed_port = common::free_port();
    let hash = info_hash(&topic_server_name(TOPIC));
    let junk: Vec<String> = vec![
        "not json".into(),
        json!({"host": "127.0.0.1", "port": closed_port, "ssl": false, "name": "evil", "pubKey": "x", "signature": "y"}).to_string(),
        json!({"host": "a".repeat(2000), "port": 1, "ssl": false}).to_string(),
        json!({"host": "127.0.0.1/evil", "port": 1}).to_string(),
        json!({"host": "127.0.0.1", "port": node.port, "ssl": true}).to_string(),
        "x".repeat(20_000),
    ];
    let deep = (0..300).fold(json!(1), |v, _| json!([v]));
    let (mut ws, _) = tungstenite::connect(&tracker.url).expect("the tracker answers");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let hash = hash.clone();
        std::thread::spawn(move || {
            // Bounded: at most 40 announces of 82 offers, over ≤ 20 s.
            let end = Instant::now() + Duration::from_secs(20);
            for round in 0..40 {
                if stop.load(Ordering::Relaxed) || Instant::now() > end {
                    break;
                }
                let offers: Vec<Value> = (0..82)
                    .map(|i| {
                        let id = format!("{round:04}-{i:04}-{}", "o".repeat(10));
                        // The tracker passes `offer` on verbatim: junk records,
                        // junk types, nesting deeper than any parser's limit.
                        let offer = match (round + i) % (junk.len() + 2) {
                            j if j < junk.len() => json!({"type": "offer", "sdp": junk[j]}),
                            j if j == junk.len() => json!({"type": "offer", "sdp": 5}),
                            _ => deep.clone(),
                        };
                        json!({"offer": offer, "offer_id": id})
                    })
                    .collect();
                let announce = json!({"action": "announce", "info_hash": hash,
                                      "peer_id": "EVILEVILEVILEVILEVIL", "numwant": 82, "offers": offers});
                if ws.send(Message::text(announce.to_string())).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let _ = ws.close(None);
        })
    };

    let started = Instant::now();
    let (ok, stdout, stderr) = cli_get("kept", 20, &["--tracker", &tracker.url]);
    println!(
        "our client found the node amid the flood in {:?}",
        started.elapsed()
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("served"), "{stdout}");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();

    // The server was passed the offers, dialed nothing, and still serves.
    let events = tracker_events(&node);
    assert!(events["offer_ignored"].as_u64() > Some(0), "{events}");
    assert_eq!(
        events["failed"], 0,
        "a peer's junk never costs the node its tracker: {events}"
    );
    let peers = node.peers();
    assert_eq!(peers["servers"], json!([]), "{peers}");
    assert_eq!(peers["endpoints"], json!([]), "{peers}");
    writer.put("after", json!("still"));
    writer.wait_value("after", &json!("still"));
}

/// What a fake tracker saw on one connection.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// (connection number, announce).
    announces: Mutex<Vec<(usize, Value)>>,
}

/// A hostile tracker, then a good one on the same URL: the first
/// connection gets a frame over the size limit, the second only frames
/// that are not JSON (ignored; the tracker goes silent, which ends the
/// socket), the third proper answers. The node holds at most one
/// socket to it, comes back after each close, announces again at its
/// interval, and serves its clients throughout.
#[test]
fn a_hostile_tracker_gets_one_socket_at_a_time_and_the_node_keeps_serving() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = Arc::new(Seen::default());
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            // Bounded: five connections at most.
            for (n, stream) in listener.incoming().flatten().take(5).enumerate() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        return;
                    };
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    let open = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.max_open.fetch_max(open, Ordering::SeqCst);
                    while let Ok(msg) = ws.read() {
                        let Message::Text(text) = msg else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(&text) else {
                            continue;
                        };
                        let reply = match n {
                            0 => "x".repeat(200_000),
                            1 => "this is not JSON".to_owned(),
                            _ => json!({"action": "announce", "interval": 120,
                                        "info_hash": v["info_hash"], "complete": 0, "incomplete": 1})
                            .to_string(),
                        };
                        seen.announces.lock().unwrap().push((n, v));
                        if ws.send(Message::text(reply)).is_err() {
                            break;
                        }
                    }
                    seen.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let env = [
        FAST[0],
        ("TOOLDB_TRACKERS__RETRY_INITIAL_MS", "100"),
        ("TOOLDB_TRACKERS__RETRY_MAX_MS", "400"),
    ];
    let node = NodeProc::start_env(&["--tracker", &url], &env);
    let address = node.health()["address"].as_str().unwrap().to_owned();
    let name_hash = info_hash(&address);
    wait_for(
        "announces on the third connection",
        Duration::from_secs(30),
        || {
            let a = seen.announces.lock().unwrap();
            // Two rounds (both info hashes each) on the good socket.
            (a.iter().filter(|(n, _)| *n == 2).count() >= 4).then_some(())
        },
    );
    assert_eq!(
        seen.max_open.load(Ordering::SeqCst),
        1,
        "never more than one socket per tracker"
    );
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        3,
        "the good socket stays"
    );
    let announces: Vec<Value> = seen
        .announces
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    let hashes: std::collections::HashSet<&str> = announces
        .iter()
        .filter_map(|a| a["info_hash"].as_str())
        .collect();
    assert!(
        hashes.contains(name_hash.as_str()),
        "the default name is the address"
    );
    assert!(hashes.contains(info_hash(&topic_server_name(TOPIC)).as_str()));
    let a = announces.last().unwrap();
    assert_eq!(a["action"], "announce");
    assert_eq!(a["peer_id"], node.health()["clientId"]);
    let offers = a["offers"].as_array().unwrap();
    assert!(!offers.is_empty());
    let record: Value = serde_json::from_str(offers[0]["offer"]["sdp"].as_str().unwrap()).unwrap();
    assert_eq!(record["name"], address.as_str());
    assert_eq!(record["port"], node.port);

    let (mut client, _) = RawPeer::client(node.port);
    client.put("k", json!("v"));
    client.wait_value("k", &json!("v"));
    let events = wait_for("the answers counted", Duration::from_secs(10), || {
        let e = tracker_events(&node);
        (e["answered"].as_u64() >= Some(4)).then_some(e)
    });
    assert_eq!(events["connected"], 3, "{events}");
    assert_eq!(events["failed"], 2, "{events}");
    let log = node.log();
    assert_eq!(
        log.matches("tracker unreachable").count(),
        1,
        "the outage is logged once: {log}"
    );
}

#[test]
fn tracker_urls_must_be_websockets() {
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["serve", "--no-lan", "--no-dht", "--metrics-listen", "off"])
        .args(["--tracker", "http://127.0.0.1:1/announce"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = TrackerError::BadUrl {
        url: "http://127.0.0.1:1/announce".into(),
    }
    .to_string();
    assert!(stderr.contains(&expected), "{stderr}");
}
