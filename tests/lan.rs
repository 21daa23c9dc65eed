//! LAN discovery (issue 11 parts 4 and 5), in network namespaces on a
//! bridge (`tooldb_node::netns`, the chaos harness's code) with the DHT
//! bootstrap unreachable: two servers of one topic find and connect to
//! each other over mDNS within 5 s, each signs its LAN address (not
//! 127.0.0.1), and a client in a third namespace finds a server with only
//! `--topic`. Needs root and `ip netns` (CI runs as root): without them it
//! fails, saying why.

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tooldb_node::netns::{Naming, Topology};

/// Our namespaces and links: apart from the chaos harness's, whose stale
/// cleanup would take them for its own.
const NAMING: Naming = Naming {
    netns: "tdblan-",
    link: "tdbl",
};
const PORT: u16 = 9000;
/// The bound from the second server's start to both connected.
const MEET_WITHIN: Duration = Duration::from_secs(5);
/// How long a server may take to answer HTTP after its spawn.
const START_WITHIN: Duration = Duration::from_secs(20);

/// Kills a server when dropped (before the topology is removed).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn topology(nodes: usize) -> Topology {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "tests/lan.rs builds network namespaces: run it as root"
    );
    let topo = Topology::create_named(nodes, NAMING)
        .unwrap_or_else(|e| panic!("cannot build network namespaces (ip netns): {e}"));
    topo.route_multicast()
        .unwrap_or_else(|e| panic!("cannot route multicast in the namespaces: {e}"));
    topo
}

fn serve(topo: &Topology, i: usize, topic: &str, data: &std::path::Path) -> Server {
    // Nothing listens at the DHT namespace's address: the DHT never answers.
    let boot = format!("{}:6881", topo.dht_ip());
    let child = Command::new("ip")
        .args(["netns", "exec", topo.node_ns(i)])
        .arg(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["serve", "--host", "0.0.0.0", "--port", &PORT.to_string()])
        .args([
            "--topic",
            topic,
            "--dht-bootstrap",
            &boot,
            "--dht-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.join(format!("n{i}")))
        .env("RUST_LOG", "info,tooldb_node=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join(format!("n{i}.log"))).expect("the log file opens"))
        .spawn()
        .expect("ip netns exec runs");
    Server(child)
}

/// GET `path` of the server at `ip` (from the root namespace, over the
/// bridge); None while it does not answer.
fn get_json(ip: &str, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:{PORT}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

fn wait_up(ip: &str) {
    let deadline = Instant::now() + START_WITHIN;
    while get_json(ip, "/health").is_none() {
        assert!(Instant::now() < deadline, "server {ip} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The addresses of the servers `/peers` lists as connected.
fn connected(ip: &str) -> Vec<String> {
    let Some(peers) = get_json(ip, "/peers") else {
        return vec![];
    };
    peers["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "connected")
        .filter_map(|s| s["address"].as_str().map(str::to_owned))
        .collect()
}

fn address(ip: &str) -> (String, String) {
    let peers = get_json(ip, "/peers").expect("/peers answers");
    (
        peers["self"]["address"].as_str().unwrap().to_owned(),
        peers["self"]["host"].as_str().unwrap().to_owned(),
    )
}

fn log_of(data: &std::path::Path, i: usize) -> String {
    std::fs::read_to_string(data.join(format!("n{i}.log"))).unwrap_or_default()
}

#[test]
fn servers_of_a_topic_on_a_lan_meet_without_the_dht_and_a_client_finds_them() {
    let topo = topology(3);
    let data = tempfile::tempdir().unwrap();
    let topic = format!("lan-test-{}", std::process::id());
    let (ip0, ip1) = (topo.node_ip(0), topo.node_ip(1));

    let _a = serve(&topo, 0, &topic, data.path());
    wait_up(&ip0);
    let _b = serve(&topo, 1, &topic, data.path());
    wait_up(&ip1);
    let (addr_a, host_a) = address(&ip0);
    let (addr_b, host_b) = address(&ip1);

    // Part 5: each signs the address its LAN peers reach it at.
    assert_eq!(host_a, ip0, "a's record host");
    assert_eq!(host_b, ip1, "b's record host");

    // From the moment b answers HTTP (its start-up done).
    let deadline = Instant::now() + MEET_WITHIN;
    loop {
        let a_sees = connected(&ip0);
        let b_sees = connected(&ip1);
        if a_sees.contains(&addr_b) && b_sees.contains(&addr_a) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not connected within {MEET_WITHIN:?} of b's start-up: a sees {a_sees:?}, b sees {b_sees:?}\n--- a:\n{}\n--- b:\n{}",
            log_of(data.path(), 0),
            log_of(data.path(), 1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A client in a third namespace, with only --topic: the public DHT is
    // unreachable there, the LAN is not.
    let out: Output = Command::new("ip")
        .args(["netns", "exec", topo.node_ns(2)])
        .arg(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["put", "lan-key", "\"on the lan\"", "--topic", &topic])
        .args(["--timeout", "10"])
        .output()
        .expect("ip netns exec runs");
    assert!(
        out.status.success(),
        "the client found no LAN server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ip")
        .args(["netns", "exec", topo.node_ns(2)])
        .arg(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(["get", "lan-key", "--topic", &topic, "--timeout", "10"])
        .output()
        .expect("ip netns exec runs");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        got["v"],
        "on the lan",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And with --no-lan the same client finds nothing.
    let out = Command::new("ip")
        .args(["netns", "exec", topo.node_ns(2)])
        .arg(env!("CARGO_BIN_EXE_tooldb-node"))
        .args([
            "get",
            "lan-key",
            "--topic",
            &topic,
            "--timeout",
            "2",
            "--no-lan",
        ])
        .output()
        .expect("ip netns exec runs");
    assert!(!out.status.success(), "--no-lan still found a server");
}
