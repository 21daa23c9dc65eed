//! The client half (`tooldb_node::client` and the `put`/`get`/`watch`/
//! `query` commands) against real `tooldb-node` processes on 127.0.0.1,
//! a malicious websocket server written here, and the real npm tool-db
//! client. Every wait polls a condition with a deadline.

mod common;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tooldb_node::client::Client;
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::peer::Peer;
use tooldb_node::record::{now_ms, sign_record, Record};

const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn addr(node: &NodeProc) -> String {
    format!("127.0.0.1:{}", node.port)
}

/// Polls `f` (async) until it gives `Some`, or panics after `DEADLINE`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two servers, B dialing A, both knowing each other before returning.
fn two_peered_servers() -> (NodeProc, NodeProc) {
    let a = NodeProc::start(&[]);
    let b = NodeProc::start(&["--peer", &addr(&a)]);
    wait_for("A and B to peer", DEADLINE, || {
        let connected = |n: &NodeProc| {
            n.peers()["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["state"] == "connected"))
        };
        (connected(&a) && connected(&b)).then_some(())
    });
    (a, b)
}

async fn client(peers: &[&NodeProc]) -> Client {
    Client::builder()
        .peers(peers.iter().map(|n| addr(n)))
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .expect("the client connects")
}

async fn next_update(sub: &mut tooldb_node::client::Subscription) -> Record {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("an update in time")
        .expect("the subscription is open")
}

fn value_of(r: &Record) -> Value {
    serde_json::from_str(r.value_raw()).unwrap()
}

/// Issue 5, test 1: a client with static peers puts; a second client,
/// given only the other server, gets the value. The first client also
/// learns the second server from the pong and connects to it (default: 2).
#[actix::test]
async fn static_peers_put_then_another_client_gets() {
    init_tracing();
    let (a, b) = two_peered_servers();
    let writer = client(&[&a]).await;
    let put = writer
        .put("static-key", json!({"n": 1, "s": "x"}))
        .await
        .unwrap();
    assert_eq!(put.verify(now_ms(), 0), Ok(()));
    assert_eq!(put.address, writer.address());

    let reader = client(&[&b]).await;
    let got = eventually("the value through B", || async {
        reader.get("static-key").await.unwrap()
    })
    .await;
    assert_eq!(got.raw(), put.raw(), "the same record, byte for byte");

    let servers = eventually("the writer to connect to B as well", || async {
        let s = writer.servers().await.unwrap();
        (s.len() == 2).then_some(s)
    })
    .await;
    let ports: Vec<u16> = servers.iter().map(|p| p.port).collect();
    assert!(
        ports.contains(&a.port) && ports.contains(&b.port),
        "{ports:?}"
    );
    assert!(writer.bad_servers().await.unwrap().is_empty());
    writer.close();
    reader.close();
}

/// User namespaces, queries, MAP CRDTs and server functions through one
/// server, with a P-256 key saved to and reloaded from a file.
#[actix::test]
async fn namespaces_queries_maps_and_functions() {
    init_tracing();
    let node = NodeProc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("client-key.json");
    let c = Client::builder()
        .peers([addr(&node)])
        .key_file(&key_file)
        .key_scheme(KeyScheme::P256)
        .connect()
        .await
        .unwrap();
    let again = NodeKey::load_or_create(&key_file, KeyScheme::P256).unwrap();
    assert_eq!(again.address(), c.address(), "the key was saved");

    let mine = c.put_user("profile", json!({"name": "r"})).await.unwrap();
    assert_eq!(mine.key, format!(":{}.profile", c.address()));
    let got = c.get(&c.user_key("profile")).await.unwrap().unwrap();
    assert_eq!(got.raw(), mine.raw());
    // Another user's namespace is refused before anything is sent.
    let other = NodeKey::generate(KeyScheme::P256);
    let err = c
        .put(&format!(":{}.x", other.address()), json!(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AddressMismatch"), "{err}");

    for k in ["qq-a", "qq-b", "other"] {
        c.put(k, json!(k)).await.unwrap();
    }
    assert_eq!(c.query("qq-").await.unwrap(), vec!["qq-a", "qq-b"]);

    c.map_set("map-key", "x", json!(1)).await.unwrap();
    c.map_set("map-key", "y", json!("why")).await.unwrap();
    c.map_set("map-key", "x", json!(2)).await.unwrap();
    c.map_delete("map-key", "y").await.unwrap();
    let map = c.get_map("map-key").await.unwrap().unwrap();
    assert_eq!(Value::Object(map.value), json!({"x": 2}));
    assert_eq!(map.changes.len(), 4);

    let peers = c.call("peers", json!([])).await.unwrap();
    assert_eq!(peers.code, "OK");
    let missing = c.call("no-such-function", json!([])).await.unwrap();
    assert_eq!(missing.code, "NOT_FOUND");
    c.close();
}

/// Proof of work: a client configured like the server writes records
/// whose hash has the zeros; one without it is refused by that server.
#[actix::test]
async fn proof_of_work_when_configured() {
    init_tracing();
    let node = NodeProc::start(&["--pow", "3"]);
    let c = Client::builder()
        .peers([addr(&node)])
        .pow(3)
        .connect()
        .await
        .unwrap();
    let r = c.put("pow-key", json!({"work": true})).await.unwrap();
    assert!(r.hash.starts_with("000"), "{}", r.hash);
    assert_eq!(r.verify(now_ms(), 3), Ok(()));
    let lazy = Client::builder()
        .peers([addr(&node)])
        .request_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    // (A hash without work starts with 000 once in 4096 puts; then this would pass the server.)
    let err = lazy.put("pow-lazy", json!(1)).await.unwrap_err();
    assert!(err.to_string().contains("no server confirmed"), "{err}");
    c.close();
    lazy.close();
}

/// Issue 5, test 2 (library): a subscription given one server, keeping one
/// connection, goes on after that server is killed: the client replaces it
/// with the server it learned from the pong, fills the gap (a write made
/// while it was away) with a get, and delivers every record once.
#[actix::test]
async fn subscription_fails_over_and_fills_the_gap() {
    init_tracing();
    let (mut a, b) = two_peered_servers();
    let watcher = Client::builder()
        .peers([addr(&a)])
        .connections(1)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let writer = client(&[&b]).await;
    let mut sub = watcher.subscribe("followed").await.unwrap();
    let v1 = writer.put("followed", json!(1)).await.unwrap();
    assert_eq!(next_update(&mut sub).await.hash, v1.hash);

    a.kill();
    // Written while the watcher has no server: it must still arrive.
    let v2 = writer.put("followed", json!(2)).await.unwrap();
    let got = next_update(&mut sub).await;
    assert_eq!(got.hash, v2.hash, "{}", got.raw());
    let now_on = watcher.servers().await.unwrap();
    assert_eq!(now_on.len(), 1);
    assert_eq!(now_on[0].port, b.port, "replaced A by B");

    let v3 = writer.put("followed", json!(3)).await.unwrap();
    assert_eq!(next_update(&mut sub).await.hash, v3.hash);
    // Nothing else (no duplicate of v1..v3) is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "no duplicates"
    );
    watcher.close();
    writer.close();
}

/// A websocket server that looks like a Tool Db server (it answers ping
/// with a pong listing its own valid peer record) but answers every `get`
/// with `forged` (when set), and ignores everything else.
struct EvilServer {
    port: u16,
    address: String,
    forged: Arc<Mutex<Option<Value>>>,
}

impl EvilServer {
    fn start() -> EvilServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let key = Arc::new(NodeKey::generate(KeyScheme::Secp256k1));
        let address = key.address().to_owned();
        let forged: Arc<Mutex<Option<Value>>> = Arc::default();
        let shared = forged.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (key, forged) = (key.clone(), shared.clone());
                std::thread::spawn(move || Self::serve(stream, &key, port, &forged));
            }
        });
        EvilServer {
            port,
            address,
            forged,
        }
    }

    fn serve(stream: std::net::TcpStream, key: &NodeKey, port: u16, forged: &Mutex<Option<Value>>) {
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        let me = key.client_id().to_owned();
        while let Ok(msg) = ws.read() {
            let tungstenite::Message::Text(text) = msg else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let reply = match m["type"].as_str() {
                Some("ping") => {
                    let peer = Peer::sign(key, TOPIC, "127.0.0.1", port, now_ms());
                    Some(json!({"type":"pong","id":m["id"],"to":[me],"clientId":me,
                                "isServer":true,"servers":[peer]}))
                }
                Some("get") => forged
                    .lock()
                    .unwrap()
                    .clone()
                    .map(|data| json!({"type":"put","id":m["id"],"to":[me],"data":data})),
                _ => None,
            };
            if let Some(r) = reply {
                if ws.send(tungstenite::Message::text(r.to_string())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Issue 5, test 3: a server answering `get` with a record whose `v` was
/// changed (under the original `h` and `s`) is caught: the client returns
/// the honest server's record and reports (and drops) the forger.
#[actix::test]
async fn a_forged_get_answer_is_detected_and_reported() {
    init_tracing();
    let honest = NodeProc::start(&[]);
    let evil = EvilServer::start();
    // The honest record, written straight to the honest server.
    let author = NodeKey::generate(KeyScheme::P256);
    let record = sign_record(&author, "contested", &json!({"pay": "alice"}), now_ms());
    let (mut raw, _) = RawPeer::client(honest.port);
    // Sent as text: the record must keep its field order (serde sorts).
    raw.send_text(&format!(
        r#"{{"type":"put","id":"w1","to":["{}"],"data":{}}}"#,
        raw.client_id,
        record.raw()
    ));
    raw.wait_value("contested", &json!({"pay": "alice"}));
    *evil.forged.lock().unwrap() =
        Some(serde_json::from_str(&record.raw().replace("alice", "mallory")).unwrap());

    let c = Client::builder()
        .peers([addr(&honest), format!("127.0.0.1:{}", evil.port)])
        .connect()
        .await
        .unwrap();
    eventually("both servers connected", || async {
        (c.servers().await.unwrap().len() == 2).then_some(())
    })
    .await;
    let got = c
        .get("contested")
        .await
        .unwrap()
        .expect("the honest answer");
    assert_eq!(got.raw(), record.raw());
    assert_eq!(value_of(&got), json!({"pay": "alice"}));

    let bad = c.bad_servers().await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].address, evil.address);
    assert_eq!(bad[0].endpoint, format!("127.0.0.1:{}", evil.port));
    assert_eq!(bad[0].key, "contested");
    assert!(bad[0].reason.contains("InvalidHashNonce"), "{bad:?}");
    eventually("the forger disconnected and not redialed", || async {
        let s = c.servers().await.unwrap();
        (s.len() == 1 && s[0].address != evil.address).then_some(())
    })
    .await;
    // Still honest answers only, from then on.
    let again = c.get("contested").await.unwrap().unwrap();
    assert_eq!(again.raw(), record.raw());
    c.close();
}

/// Issue 5, test 4: a record put by the Rust client is read by the real
/// npm tool-db client, and one put by tool-db is read by the Rust client,
/// through a tooldb-node server.
#[actix::test]
async fn interop_with_the_npm_tool_db_client() {
    init_tracing();
    let node = NodeProc::start(&[]);
    // Rust → tool-db, signed with P-256 as ecdsa-user users are.
    let c = Client::builder()
        .peers([addr(&node)])
        .identity(NodeKey::generate(KeyScheme::P256))
        .connect()
        .await
        .unwrap();
    let value = json!({"from": "rust", "list": [1, 2, 3]});
    c.put("rust-to-js", value.clone()).await.unwrap();
    let r = scenario(
        "get-only",
        &["--server", &node.url(), "--key", "rust-to-js"],
    );
    assert_eq!(r["got"], value, "{r}");

    // tool-db → Rust.
    let r = scenario("put-get", &["--server", &node.url(), "--key", "js-to-rust"]);
    assert!(!r["put"].is_null(), "{r}");
    let got = c
        .get("js-to-rust")
        .await
        .unwrap()
        .expect("tool-db's record");
    assert_eq!(value_of(&got), r["put"], "{r}");
    let got_json: Value = serde_json::from_str(got.raw()).unwrap();
    assert_eq!(got_json, r["record"], "the same record");
    c.close();
}

// ---------------------------------------------------------------- DHT

/// Issue 5, test 1 (DHT): two servers announce their topic on a private
/// DHT (`tooldb-node dht-bootstrap`); clients with no static peer find them
/// by a passive lookup, put through one client and get through another
/// (and through the CLI).
#[actix::test]
async fn clients_find_servers_on_the_dht() {
    init_tracing();
    let boot = DhtBoot::start();
    let topic = "client-dht";
    let a = NodeProc::start(&["--dht-bootstrap", &boot.addr, "--topic", topic]);
    let b = NodeProc::start(&["--dht-bootstrap", &boot.addr, "--topic", topic]);
    let via_dht = || {
        Client::builder()
            .topic(topic)
            .dht_bootstrap([boot.addr.clone()])
            .connect_timeout(DEADLINE)
            .connect()
    };
    let writer = via_dht().await.expect("found through the DHT");
    let put = writer.put("dht-key", json!("found")).await.unwrap();
    let reader = via_dht().await.unwrap();
    let got = eventually("the value through the DHT-found servers", || async {
        reader.get("dht-key").await.unwrap()
    })
    .await;
    assert_eq!(got.raw(), put.raw());
    eventually("the reader to connect to both servers", || async {
        let mut ports: Vec<u16> = reader
            .servers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        ports.sort_unstable();
        let mut want = vec![a.port, b.port];
        want.sort_unstable();
        (ports == want).then_some(())
    })
    .await;
    let out = cli(&[
        "get",
        "dht-key",
        "--topic",
        topic,
        "--dht-bootstrap",
        &boot.addr,
    ]);
    assert_eq!(stdout_json(&out)["v"], "found");
    writer.close();
    reader.close();
}

// ---------------------------------------------------------------- the CLI

/// Runs a client command (`args` starts with it) without LAN discovery.
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(args)
        .arg("--no-lan")
        .output()
        .expect("the binary runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Issue 5, test 5: `put`, `get` and `query` print JSON; VALUE falls back
/// to a string; `--key-file` is created and reused.
#[test]
fn cli_put_get_query() {
    let (a, b) = two_peered_servers();
    let (pa, pb) = (addr(&a), addr(&b));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k.json");
    let kf = key_file.to_str().unwrap();

    let put = stdout_json(&cli(&[
        "put",
        "cli-a",
        r#"{"x":[1,2]}"#,
        "--peer",
        &pa,
        "--key-file",
        kf,
    ]));
    assert_eq!(put["v"], json!({"x": [1, 2]}));
    assert!(key_file.exists(), "the key file was created");
    let put2 = stdout_json(&cli(&[
        "put",
        "cli-b",
        "plain text",
        "--peer",
        &pa,
        "--key-file",
        kf,
    ]));
    assert_eq!(put2["v"], "plain text");
    assert_eq!(put2["a"], put["a"], "the key file was reused");

    let got = stdout_json(&cli(&["get", "cli-a", "--peer", &pb]));
    assert_eq!(got, put);
    let keys = stdout_json(&cli(&["query", "cli-", "--peer", &pb]));
    assert_eq!(keys, json!(["cli-a", "cli-b"]));
    let missing = stdout_json(&cli(&["get", "cli-none", "--peer", &pb, "--timeout", "1"]));
    assert_eq!(missing, Value::Null);
}

/// Issue 5, test 5: no server within `--timeout` is a clear error and a
/// non-zero exit, within about the timeout.
#[test]
fn cli_without_a_server_fails_within_the_timeout() {
    let nobody = format!("127.0.0.1:{}", free_port());
    for cmd in [
        vec!["get", "k"],
        vec!["put", "k", "1"],
        vec!["watch", "k"],
        vec!["query", "k"],
    ] {
        let started = Instant::now();
        let mut args = cmd.clone();
        args.extend(["--peer", &nobody, "--timeout", "1"]);
        let out = cli(&args);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd:?} succeeded");
        assert!(
            stderr.contains("no Tool Db server found within 1 s"),
            "{cmd:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{cmd:?}: nothing on stdout");
        assert!(took < Duration::from_secs(8), "{cmd:?} took {took:?}");
    }
    let out = cli(&["get", "k", "--peer", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
}

struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(args: &[&str]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
            .args(args)
            .arg("--no-lan")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("watch printed a line in time");
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 5, test 2 (CLI): `watch` keeps printing after the server it was
/// reading from is killed; puts go through the other server.
#[test]
fn cli_watch_survives_a_killed_server() {
    let (mut a, b) = two_peered_servers();
    let (pa, pb) = (addr(&a), addr(&b));
    let w = Watcher::start(&["watch", "watched", "--peer", &pa, "--peer", &pb]);
    // Put until the watcher (which may still be connecting) prints it.
    let first = stdout_json(&cli(&["put", "watched", "1", "--peer", &pb]));
    assert_eq!(w.next(), first);
    a.kill();
    let second = stdout_json(&cli(&["put", "watched", "2", "--peer", &pb]));
    assert_eq!(w.next(), second);
    let third = stdout_json(&cli(&["put", "watched", r#"{"n":3}"#, "--peer", &pb]));
    assert_eq!(w.next(), third);
    assert!(
        w.lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "no duplicate lines"
    );
}

/// Issue 11, part 3: `watch` and `put` with the same `--key-file` are two
/// peers. The key file signs records only; each run pings with a fresh
/// peer key. Before, both used the key file's client id, and a server
/// skips the ids in a put's `to` list when pushing to subscribers, so the
/// watcher never saw the other process's writes pushed (it saw one only
/// when it happened to read the key again after a reconnect).
#[test]
fn cli_watch_and_put_with_one_key_file_through_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("user.json");
    let kf = key_file.to_str().unwrap();
    // Made before both start (two processes creating it at once race).
    NodeKey::generate(KeyScheme::Secp256k1)
        .save(&key_file)
        .unwrap();
    let port = free_port();
    let mut a = NodeProc::start_in(&data, port, &[]);
    let pa = addr(&a);
    let put = |v: &str| stdout_json(&cli(&["put", "mine", v, "--peer", &pa, "--key-file", kf]));
    let w = Watcher::start(&["watch", "mine", "--peer", &pa, "--key-file", kf]);
    // The first write may reach the watcher by its initial read; once it
    // has, the watcher is subscribed and the next one must be pushed.
    let first = put("1");
    assert_eq!(w.next(), first);
    let second = put("2");
    assert_eq!(second["a"], first["a"], "one author");
    assert_eq!(
        w.next(),
        second,
        "a write signed by the watcher's own key is pushed"
    );

    a.kill();
    let _a = NodeProc::start_in(&data, port, &[]);
    let third = put("3");
    assert_eq!(
        w.next(),
        third,
        "the watcher is back on the restarted server"
    );
    let fourth = put("4");
    assert_eq!(w.next(), fourth, "and pushed to after the restart");
}

/// Issue 11, part 2: our servers answer our client's get miss explicitly
/// (the `missing` extension, asked for in the client's ping), so a get of
/// a key no server holds returns `None` as soon as every server answered,
/// not after the request timeout (here a minute, past the test's deadline).
#[actix::test]
async fn a_get_miss_is_answered_without_waiting_for_the_timeout() {
    init_tracing();
    let (a, b) = two_peered_servers();
    let c = Client::builder()
        .peers([addr(&a), addr(&b)])
        .request_timeout(Duration::from_secs(60))
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .unwrap();
    eventually("both servers connected", || async {
        (c.servers().await.unwrap().len() == 2).then_some(())
    })
    .await;
    let got = tokio::time::timeout(DEADLINE, c.get("no-such-key"))
        .await
        .expect("the miss was answered, not timed out");
    assert!(got.unwrap().is_none());
    let put = c.put("now-there", json!(1)).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, c.get("now-there"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.map(|r| r.hash), Some(put.hash), "a hit still wins");
    c.close();
}
