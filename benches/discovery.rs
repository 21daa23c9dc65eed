//! Discovery benchmark: figures, not assertions. `cargo bench --bench discovery`
//!
//! Builds a private 100-node `mainline` DHT on 127.0.0.1 (server-mode nodes,
//! each bootstrapped with a few earlier nodes' addresses, not all: with every
//! address a node queries them all on each operation and overflows its UDP
//! receive queue, DHT-NOTES.md). Then, per run: starts server A
//! (`tooldb-node serve`, DHT bootstrapped from a few DHT nodes), waits for
//! its `/health` and its first announce (its log says so), starts server B
//! the same way, and measures the time from B's spawn until B's `GET
//! /peers` lists A as `connected` (start → first connected server), and
//! until A's lists B (the late server → the early one learns of it).
//! Fresh servers, data dirs and topic every run (so no run sees the
//! previous runs' announces), same DHT. Every wait is bounded.
//!
//! Then the client, as a user runs it: wall time of the CLI `get` with
//! only `--topic` and `--dht-bootstrap`, of a stored key and of a missing
//! one (which prints `null`), against the servers of the last run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mainline::Dht;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Nodes of the private DHT.
const DHT_NODES: usize = 100;
/// Earlier nodes each DHT node (and each server) bootstraps from.
const BOOTSTRAP_FEW: usize = 4;
/// Runs, each with fresh servers.
const RUNS: usize = 5;
/// Longest any one wait may take.
const WAIT: Duration = Duration::from_secs(60);
/// Log lines of each server shown when a run times out.
const LOG_TAIL: usize = 12;
/// Delay between two polls of `/health` or `/peers`.
const POLL: Duration = Duration::from_millis(20);
/// CLI `get`s timed, of a stored key and of a missing one each.
const GETS: usize = 7;
/// What a server logs once its first announce succeeded.
const ANNOUNCED: &str = "announced on the DHT";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET of 127.0.0.1:port; the body, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_owned())
}

/// Polls `f` until it returns true; the time taken, or None after `WAIT`.
fn wait_until(started: Instant, mut f: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if f() {
            return Some(started.elapsed());
        }
        if started.elapsed() > WAIT {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the server on `port` lists a server listening on `other` as connected.
fn sees_connected(port: u16, other: u16) -> bool {
    let Some(body) = http_get(port, "/peers") else {
        return false;
    };
    let Ok(view) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    view["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["state"] == "connected" && s["peer"]["port"].as_u64() == Some(other.into()))
}

/// A `tooldb-node serve` child; killed when dropped.
struct Server {
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn spawn(dir: &Path, topic: &str, bootstrap: &[SocketAddrV4]) -> Server {
        let port = free_port();
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
            .args(["serve", "--no-lan", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--dht-port", "0", "--metrics-listen", "off"])
            .args(
                bootstrap
                    .iter()
                    .flat_map(|a| ["--dht-bootstrap".to_owned(), a.to_string()]),
            )
            .args(["--topic", topic])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "info,tooldb_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the tooldb-node binary runs");
        Server {
            port,
            child,
            log: log_path,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the CLI with `args`; its wall time and stdout, or None if it failed.
fn timed_cli(args: &[String]) -> Option<(Duration, String)> {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tooldb-node"))
        .args(args)
        .arg("--no-lan")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let took = started.elapsed();
    out.status
        .success()
        .then(|| (took, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `BOOTSTRAP_FEW` distinct addresses picked from `addrs`.
fn a_few(addrs: &[SocketAddrV4], rng: &mut StdRng) -> Vec<SocketAddrV4> {
    addrs
        .choose_multiple(rng, BOOTSTRAP_FEW.min(addrs.len()))
        .copied()
        .collect()
}

/// The private DHT: every node in server mode on a free 127.0.0.1 port.
async fn build_dht(rng: &mut StdRng) -> (Vec<Dht>, Vec<SocketAddrV4>) {
    let first = Dht::builder()
        .server_mode()
        .no_bootstrap()
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(0)
        .build()
        .expect("the first DHT node binds");
    let mut addrs = vec![first.clone().as_async().info().await.local_addr()];
    let mut nodes = vec![first];
    for _ in 1..DHT_NODES {
        let boot = a_few(&addrs, rng);
        let node = Dht::builder()
            .server_mode()
            .bootstrap(&boot)
            .bind_address(Ipv4Addr::LOCALHOST)
            .port(0)
            .build()
            .expect("a DHT node binds");
        let node_async = node.clone().as_async();
        assert!(node_async.bootstrapped().await, "a DHT node bootstraps");
        addrs.push(node_async.info().await.local_addr());
        nodes.push(node);
    }
    (nodes, addrs)
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        None => format!("> {} s", WAIT.as_secs()),
    }
}

/// (median, min, max) of the runs that finished; None if none did.
fn summary(mut xs: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    xs.sort();
    let (min, max) = (*xs.first()?, *xs.last()?);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    };
    Some((median, min, max))
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to configure.
    let mut rng = StdRng::seed_from_u64(0x7001);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = Instant::now();
    let (_nodes, addrs) = runtime.block_on(build_dht(&mut rng));
    println!(
        "private DHT: {} server-mode mainline nodes on 127.0.0.1, built in {:.2} s",
        addrs.len(),
        built.elapsed().as_secs_f64()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = vec![];
    let mut last = None;
    for run in 1..=RUNS {
        let topic = format!("bench-discovery-{run}-{:08x}", rng.gen::<u32>());
        let a = Server::spawn(
            &tmp.path().join(format!("a{run}")),
            &topic,
            &a_few(&addrs, &mut rng),
        );
        let a_up = wait_until(Instant::now(), || {
            http_get(a.port, "/health").is_some() && a.log().contains(ANNOUNCED)
        });
        if a_up.is_none() {
            println!("run {run}: server A did not serve and announce within {WAIT:?}; stopping");
            break;
        }
        let b_spawned = Instant::now();
        let b = Server::spawn(
            &tmp.path().join(format!("b{run}")),
            &topic,
            &a_few(&addrs, &mut rng),
        );
        let mut b_sees_a = None;
        let mut a_sees_b = None;
        // Poll both sides until both see each other or the wait expires.
        let _ = wait_until(b_spawned, || {
            if b_sees_a.is_none() && sees_connected(b.port, a.port) {
                b_sees_a = Some(b_spawned.elapsed());
            }
            if a_sees_b.is_none() && sees_connected(a.port, b.port) {
                a_sees_b = Some(b_spawned.elapsed());
            }
            b_sees_a.is_some() && a_sees_b.is_some()
        });
        println!(
            "run {run}: B sees A connected {:>9}   A sees B connected {:>9}",
            ms(b_sees_a),
            ms(a_sees_b)
        );
        if b_sees_a.is_none() || a_sees_b.is_none() {
            for (name, dir) in [("A", format!("a{run}")), ("B", format!("b{run}"))] {
                let log = std::fs::read_to_string(tmp.path().join(dir).with_extension("log"))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
                println!(
                    "  last {} log lines of {name}:\n    {}",
                    tail.len(),
                    tail.join("\n    ")
                );
            }
        }
        rows.push((b_sees_a, a_sees_b));
        last = Some((topic, a, b));
    }
    println!();
    let mut columns: Vec<(&str, Vec<Option<Duration>>)> = vec![
        (
            "start → first connected server (B's spawn → B's /peers: A connected)",
            rows.iter().map(|r| r.0).collect(),
        ),
        (
            "late server → early one learns of it (B's spawn → A's /peers: B connected)",
            rows.iter().map(|r| r.1).collect(),
        ),
    ];
    if let Some((topic, a, b)) = &last {
        let boot = a_few(&addrs, &mut rng);
        let client = |cmd: &str, key: &str, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = [cmd, key, "--topic", topic]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            for n in &boot {
                v.extend(["--dht-bootstrap".to_owned(), n.to_string()]);
            }
            v
        };
        let stored = timed_cli(&client("put", "bench-key", &["\"here\""]));
        if stored.is_none() {
            println!("the CLI put failed; no get figures");
        }
        let mut hits = vec![];
        let mut misses = vec![];
        for _ in 0..GETS {
            if stored.is_none() {
                break;
            }
            hits.push(
                timed_cli(&client("get", "bench-key", &[]))
                    .filter(|(_, out)| out.contains("here"))
                    .map(|(t, _)| t),
            );
            misses.push(
                timed_cli(&client("get", "bench-no-such-key", &[]))
                    .filter(|(_, out)| out == "null")
                    .map(|(t, _)| t),
            );
        }
        columns.push(("CLI `get`, stored key (wall time)", hits));
        columns.push(("CLI `get`, missing key → null (wall time)", misses));
        let _ = (a, b);
    }
    drop(last);
    println!("| figure | runs ok | median | min | max |");
    println!("|---|---|---|---|---|");
    for (name, col) in columns {
        let done: Vec<Duration> = col.iter().flatten().copied().collect();
        let ok = format!("{}/{}", done.len(), col.len());
        match summary(done) {
            Some((median, min, max)) => println!(
                "| {name} | {ok} | {} | {} | {} |",
                ms(Some(median)),
                ms(Some(min)),
                ms(Some(max))
            ),
            None => println!("| {name} | {ok} | - | - | - |"),
        }
    }
}
