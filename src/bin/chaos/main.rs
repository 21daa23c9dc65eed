//! `chaos`: runs N `tooldb-node serve` processes that find each other only
//! through a private DHT, writes signed records to them from raw-protocol
//! clients, injects faults from a seeded schedule (kill -9, graceful
//! restart, partition, loss and delay), and checks invariants:
//!
//! 1. no verified write lost: once faults stop and the network heals, every
//!    live server returns, for every key any server confirmed, the record
//!    that wins (`record::wins`) among the confirmed writes of that key
//!    (compared by `h`; a write we sent but could not confirm may win over
//!    it, as long as every server holds that same one). Polled up to
//!    `--converge-secs` after the heal before a miss is a violation;
//! 2. no server holds a connection to itself (`/peers` never lists our own
//!    address), polled all run long;
//! 3. at most one connection per pair of servers (`servers[].links <= 1`);
//! 4. every server reconnects to every reachable live server within
//!    `backoff_max_ms + connect_timeout_ms + RECONNECT_SLACK` (defaults of
//!    `Config::default().peering`), counted from the moment both are up and
//!    can reach each other, or from the last moment they were seen connected;
//! 5. the long-lived node (node 0, never killed) does not grow with peer
//!    restarts: the median RSS and open-file count of the last third of the
//!    fault window are compared with those of the first third; RSS may grow
//!    by `RSS_GROWTH_PCT` % plus `RSS_SLACK_KIB`, open files by
//!    `nodes + writers + FD_SLACK`.
//!
//! Exits 1 on any violation, 2 when the harness itself cannot run.

mod client;
mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tooldb_node::config::Config;
use tooldb_node::crypto::{KeyScheme, NodeKey};
use tooldb_node::record::{wins, RecordMeta};

use client::{http_json, WireClient};
use schedule::{Fault, Kind};
use tooldb_node::netns::{self as net, cleanup, Impairment, Topology};

/// Added to the backoff cap and the dial timeout for the reconnect bound:
/// a DHT lookup round, a handshake, our own polling interval.
const RECONNECT_SLACK: Duration = Duration::from_secs(10);
/// How long a started server may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `/peers`, RSS and open files are sampled.
const MONITOR_EVERY: Duration = Duration::from_millis(500);
/// How long a write may take to be confirmed by a `get` on its server.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Allowed growth of the long-lived node's RSS, early to late.
const RSS_GROWTH_PCT: u64 = 25;
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// Allowed growth of its open files beyond nodes + writers.
const FD_SLACK: u64 = 8;
/// Violations listed in full in the summary (all are counted).
const MAX_LISTED: usize = 50;

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Fault injection and invariant checks for tooldb-node"
)]
struct Args {
    #[arg(long, default_value_t = 7)]
    nodes: usize,
    /// Length of the fault window.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the summary as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Everything on 127.0.0.1: kill and restart faults only.
    #[arg(long)]
    loopback: bool,
    /// The tooldb-node binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Fault kinds to draw from: kill9, restart, partition, loss.
    #[arg(
        long,
        default_value = "kill9,restart,partition,loss",
        value_delimiter = ','
    )]
    faults: Vec<String>,
    /// Concurrent writer clients.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Writes per second per writer.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Size of the key space (keys get overwritten).
    #[arg(long, default_value_t = 40)]
    keys: usize,
    /// How long after the heal every server has to converge.
    #[arg(long, default_value_t = 60)]
    converge_secs: u64,
    /// Keep the data dirs and logs here (default: a temporary dir, kept
    /// only when a violation is found).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct Violation {
    kind: &'static str,
    detail: String,
    at_ms: u64,
}

#[derive(Debug, Clone)]
struct WriteRec {
    key: String,
    h: String,
    t: u64,
    a: String,
    confirmed: bool,
}

impl WriteRec {
    fn meta(&self) -> RecordMeta<'_> {
        RecordMeta {
            key: &self.key,
            timestamp: self.t,
            address: &self.a,
            hash: &self.h,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    at_ms: u64,
    rss_kib: u64,
    fds: u64,
    peer_restarts: u64,
}

/// Which pairs of servers should be connected, since when.
struct Pairs {
    /// Both up and able to reach each other since (None: not expected).
    since: Vec<Vec<Option<Instant>>>,
    /// Last time seen connected in this episode.
    last_ok: Vec<Vec<Option<Instant>>>,
    reported: Vec<Vec<bool>>,
    /// Time from `since` to the first connected sighting, per episode.
    reconnect_ms: Vec<u64>,
}

struct Shared {
    start: Instant,
    n: usize,
    topic: String,
    addrs: Vec<SocketAddr>,
    /// Serving (a writer may pick it, the monitor polls it).
    live: Vec<AtomicBool>,
    pids: Vec<AtomicU32>,
    /// Tool Db address of each server (from /health).
    addresses: Mutex<Vec<String>>,
    pairs: Mutex<Pairs>,
    violations: Mutex<Vec<Violation>>,
    writes: Mutex<Vec<WriteRec>>,
    write_errors: AtomicU64,
    peer_restarts: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    stop_writes: AtomicBool,
    stop_monitor: AtomicBool,
    reconnect_bound: Duration,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn violation(&self, kind: &'static str, detail: String) {
        eprintln!("chaos: VIOLATION {kind}: {detail}");
        let at_ms = self.ms();
        self.violations
            .lock()
            .expect("violations lock")
            .push(Violation {
                kind,
                detail,
                at_ms,
            });
    }
}

/// What the fault loop knows about the network, to tell the monitor which
/// pairs must be connected.
struct NetView {
    up: Vec<bool>,
    cut: Vec<Vec<bool>>,
    impaired: Vec<bool>,
}

impl NetView {
    fn new(n: usize) -> NetView {
        NetView {
            up: vec![false; n],
            cut: vec![vec![false; n]; n],
            impaired: vec![false; n],
        }
    }

    /// Publishes which pairs are expected to be connected.
    fn publish(&self, shared: &Shared) {
        let now = Instant::now();
        let n = self.up.len();
        let mut p = shared.pairs.lock().expect("pairs lock");
        for i in 0..n {
            for j in 0..n {
                let expected = i != j
                    && self.up[i]
                    && self.up[j]
                    && !self.cut[i][j]
                    && !self.impaired[i]
                    && !self.impaired[j];
                match (expected, p.since[i][j]) {
                    (true, None) => {
                        p.since[i][j] = Some(now);
                        p.last_ok[i][j] = None;
                        p.reported[i][j] = false;
                    }
                    (false, Some(_)) => p.since[i][j] = None,
                    _ => {}
                }
            }
        }
    }
}

/// A `tooldb-node serve` process and where it lives.
struct Server {
    idx: usize,
    addr: SocketAddr,
    ns: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn spawn(&mut self, bin: &Path, topic: &str, boot: &str) -> anyhow::Result<()> {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = cmd
            // LAN discovery off: the faults act on the DHT and peer links.
            .args(["serve", "--no-lan", "--host", &self.addr.ip().to_string()])
            .args(["--port", &self.addr.port().to_string(), "--topic", topic])
            // Many servers on one machine: no metrics port for any.
            .args(["--metrics-listen", "off"])
            .args(["--dht-bootstrap", boot, "--dht-port", "0", "--data-dir"])
            .arg(&self.data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        cleanup::add_pid(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for `/health`; returns the server's Tool Db address.
    fn wait_healthy(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(h) = http_json(self.addr, "/health", Duration::from_secs(2)) {
                if let Some(a) = h["address"].as_str() {
                    return Ok(a.to_owned());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("node {} exited at start: {status}", self.idx);
                }
            }
            if Instant::now() > deadline {
                bail!("node {} not healthy within {START_TIMEOUT:?}", self.idx);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            cleanup::forget_pid(c.id());
        }
    }

    /// SIGTERM and wait; Err when it does not exit in time or exits non-zero.
    fn terminate(&mut self) -> Result<(), String> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let result = loop {
            match c.try_wait() {
                Ok(Some(s)) if s.success() => break Ok(()),
                Ok(Some(s)) => break Err(format!("exited with {s} after SIGTERM")),
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break Err(format!("still running {STOP_TIMEOUT:?} after SIGTERM"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => break Err(e.to_string()),
            }
        };
        cleanup::forget_pid(c.id());
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed on drop (the DHT bootstrap node).
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        cleanup::forget_pid(self.0.id());
    }
}

fn start_dht(bin: &Path, ns: Option<&str>, bind: &str) -> anyhow::Result<(Guarded, String)> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["dht-bootstrap", "--bind", bind])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} dht-bootstrap", bin.display()))?;
    cleanup::add_pid(child.id());
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = Guarded(child);
    // The first line is {"dht_bootstrap": "HOST:PORT"}; read it off-thread
    // so a silent child cannot hang us.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow!("dht-bootstrap printed no address"))?;
    let v: Value = serde_json::from_str(line.trim()).context("dht-bootstrap's first line")?;
    let addr = v["dht_bootstrap"]
        .as_str()
        .ok_or_else(|| anyhow!("dht-bootstrap printed {line:?}"))?
        .to_owned();
    Ok((guard, addr))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn server_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("the chaos binary has no directory"))?
            .join("tooldb-node"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() {
    let args = Args::parse();
    cleanup::install_signal_handler();
    let code = match run(args) {
        Ok(ok) => {
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("chaos: cannot run: {e:#}");
            2
        }
    };
    cleanup::everything();
    std::process::exit(code);
}

/// The whole run; Ok(true) when no invariant was violated.
fn run(args: Args) -> anyhow::Result<bool> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let bin = server_bin(&args)?;
    let mut kinds = vec![];
    for f in &args.faults {
        let k = Kind::parse(f.trim()).ok_or_else(|| anyhow!("unknown fault kind {f:?}"))?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut netns_unavailable = None;
    let netns = if args.loopback {
        netns_unavailable = Some("--loopback".to_owned());
        false
    } else {
        match net::probe() {
            Ok(()) => true,
            Err(reason) => {
                eprintln!(
                    "chaos: network namespaces are NOT available ({reason}); running on \
                     127.0.0.1 with kill and restart faults only (no partitions, loss or delay)"
                );
                netns_unavailable = Some(reason);
                false
            }
        }
    };
    if !netns {
        kinds.retain(|k| !k.needs_netns());
    }
    let removed = net::cleanup_stale();
    if !removed.is_empty() {
        eprintln!("chaos: removed leftovers of earlier runs: {removed:?}");
    }

    let tmp;
    let work: PathBuf = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("tooldb-chaos-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let topo = if netns {
        let t = Topology::create(args.nodes).context("cannot build the namespaces")?;
        eprintln!(
            "chaos: {} nodes in network namespaces on 198.18.{}.0/24 (loss and delay via {})",
            args.nodes,
            t.subnet,
            if t.netem {
                "netem"
            } else {
                "htb rate cap + random BPF drop; no netem in this kernel"
            }
        );
        Some(t)
    } else {
        None
    };

    let loss_method = topo.as_ref().map(|t| {
        if t.netem {
            "netem loss+delay"
        } else {
            "htb rate cap (delay) + random BPF drop (loss)"
        }
    });
    let schedule = schedule::generate(args.seed, args.nodes, args.seconds, &kinds);
    let peering = Config::default().peering;
    let reconnect_bound =
        Duration::from_millis(peering.backoff_max_ms + peering.connect_timeout_ms)
            + RECONNECT_SLACK;

    let (_dht, boot) = match &topo {
        Some(t) => start_dht(
            &bin,
            Some(t.dht_ns()),
            &format!("{}:{}", t.dht_ip(), net::NS_DHT_PORT),
        )?,
        None => start_dht(&bin, None, "127.0.0.1:0")?,
    };
    let topic = format!("tooldb-chaos-{}-{}", args.seed, std::process::id());
    let mut servers = vec![];
    for i in 0..args.nodes {
        let (addr, ns) = match &topo {
            Some(t) => (
                format!("{}:{}", t.node_ip(i), net::NS_SERVER_PORT).parse()?,
                Some(t.node_ns(i).to_owned()),
            ),
            None => (format!("127.0.0.1:{}", free_port()?).parse()?, None),
        };
        servers.push(Server {
            idx: i,
            addr,
            ns,
            data_dir: work.join(format!("node{i}")),
            log: work.join(format!("node{i}.log")),
            child: None,
        });
    }
    let n = args.nodes;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        n,
        topic: topic.clone(),
        addrs: servers.iter().map(|s| s.addr).collect(),
        live: (0..n).map(|_| AtomicBool::new(false)).collect(),
        pids: (0..n).map(|_| AtomicU32::new(0)).collect(),
        addresses: Mutex::new(vec![String::new(); n]),
        pairs: Mutex::new(Pairs {
            since: vec![vec![None; n]; n],
            last_ok: vec![vec![None; n]; n],
            reported: vec![vec![false; n]; n],
            reconnect_ms: vec![],
        }),
        violations: Mutex::new(vec![]),
        writes: Mutex::new(vec![]),
        write_errors: AtomicU64::new(0),
        peer_restarts: AtomicU64::new(0),
        samples: Mutex::new(vec![]),
        stop_writes: AtomicBool::new(false),
        stop_monitor: AtomicBool::new(false),
        reconnect_bound,
    });
    for s in &mut servers {
        s.spawn(&bin, &topic, &boot)?;
    }
    let mut view = NetView::new(n);
    for s in &mut servers {
        let address = s.wait_healthy()?;
        shared.addresses.lock().expect("addresses lock")[s.idx] = address;
        shared.pids[s.idx].store(s.pid(), Ordering::SeqCst);
        shared.live[s.idx].store(true, Ordering::SeqCst);
        view.up[s.idx] = true;
    }
    eprintln!(
        "chaos: {n} servers up (mode {}), work dir {}",
        if netns { "netns" } else { "loopback" },
        work.display()
    );
    // The first mesh is made through the DHT alone: it gets the same bound.
    let mesh_start = Instant::now();
    let initial_mesh_ms = wait_full_mesh(&shared, reconnect_bound + Duration::from_secs(20));
    match initial_mesh_ms {
        Some(ms) => eprintln!("chaos: full mesh through the DHT after {ms} ms"),
        None => shared.violation(
            "reconnect",
            format!(
                "the servers did not all connect through the DHT within {:?}",
                mesh_start.elapsed()
            ),
        ),
    }
    view.publish(&shared);

    let monitor = {
        let shared = shared.clone();
        std::thread::spawn(move || monitor(&shared))
    };
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let shared = shared.clone();
            let (seed, keys, rate) = (args.seed, args.keys, args.rate);
            std::thread::spawn(move || writer(&shared, w, seed, keys, rate))
        })
        .collect();

    // The fault window.
    let window_start = Instant::now();
    let window_start_ms = shared.ms();
    let mut counts: BTreeMap<String, u64> = Kind::ALL.iter().map(|k| (k.to_string(), 0)).collect();
    for f in &schedule {
        sleep_until(window_start + Duration::from_millis(f.at_ms));
        eprintln!(
            "chaos: t={:.1}s {} {:?} for {} ms",
            window_start.elapsed().as_secs_f64(),
            f.kind,
            f.nodes,
            f.duration_ms
        );
        apply(
            f,
            &mut servers,
            &mut view,
            &shared,
            topo.as_ref(),
            &bin,
            &boot,
        )?;
        *counts.entry(f.kind.to_string()).or_default() += 1;
    }
    sleep_until(window_start + Duration::from_secs(args.seconds));
    let window_end_ms = shared.ms();
    shared.stop_writes.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    // Every fault was already undone by `apply`; the network is healed.
    let heal = Instant::now();
    eprintln!("chaos: faults over; waiting for convergence");
    let converged = converge(&shared, heal + Duration::from_secs(args.converge_secs));
    let mesh_ms = wait_full_mesh(&shared, reconnect_bound.saturating_sub(heal.elapsed()));
    if mesh_ms.is_none() {
        // The monitor names the pairs; wait one more poll so it sees them.
        std::thread::sleep(MONITOR_EVERY * 2);
    }
    shared.stop_monitor.store(true, Ordering::SeqCst);
    let _ = monitor.join();
    let long_lived = check_growth(&shared, window_start_ms, window_end_ms, args.writers);

    // Stop the servers gracefully; the guards kill what is left.
    for s in &mut servers {
        let _ = s.terminate();
    }
    drop(servers);
    drop(topo);

    let writes = shared.writes.lock().expect("writes lock").clone();
    let mut keys_written: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
    keys_written.sort_unstable();
    keys_written.dedup();
    let mut keys_confirmed: Vec<&str> = writes
        .iter()
        .filter(|w| w.confirmed)
        .map(|w| w.key.as_str())
        .collect();
    keys_confirmed.sort_unstable();
    keys_confirmed.dedup();
    let violations = shared.violations.lock().expect("violations lock").clone();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        *by_kind.entry(v.kind).or_default() += 1;
    }
    let pairs = shared.pairs.lock().expect("pairs lock");
    let ok = violations.is_empty();
    let summary = json!({
        "ok": ok,
        "seed": args.seed,
        "nodes": n,
        "seconds": args.seconds,
        "mode": if netns { "netns" } else { "loopback" },
        "netns_unavailable": netns_unavailable,
        "loss_method": loss_method,
        "faults": counts,
        "schedule": schedule,
        "writes": writes.len(),
        "write_errors": shared.write_errors.load(Ordering::SeqCst),
        "confirmed_writes": writes.iter().filter(|w| w.confirmed).count(),
        "keys": keys_written.len(),
        "keys_confirmed": keys_confirmed.len(),
        "peer_restarts": shared.peer_restarts.load(Ordering::SeqCst),
        "initial_mesh_ms": initial_mesh_ms,
        "converge_ms": converged.ms,
        "keys_diverged_at_heal": converged.diverged_at_heal,
        "reconnect_bound_ms": reconnect_bound.as_millis() as u64,
        "reconnect_max_ms": pairs.reconnect_ms.iter().max(),
        "reconnects_measured": pairs.reconnect_ms.len(),
        "long_lived": long_lived,
        "violation_counts": by_kind,
        "violations": violations.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        "work_dir": (!ok || args.work_dir.is_some()).then(|| work.display().to_string()),
    });
    drop(pairs);
    print_summary(&summary);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if !ok && args.work_dir.is_none() {
        // Keep the logs of a failed run.
        if let Some(t) = tmp_keep(&work) {
            eprintln!("chaos: logs and data kept in {t}");
        }
    }
    Ok(ok)
}

/// Keeps a temporary work dir from being deleted (its TempDir is dropped
/// after this; we move the content aside).
fn tmp_keep(work: &Path) -> Option<String> {
    let kept = std::env::temp_dir().join(format!("tooldb-chaos-kept-{}", std::process::id()));
    std::fs::rename(work, &kept).ok()?;
    Some(kept.display().to_string())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Applies one fault and undoes it after its duration.
fn apply(
    f: &Fault,
    servers: &mut [Server],
    view: &mut NetView,
    shared: &Shared,
    topo: Option<&Topology>,
    bin: &Path,
    boot: &str,
) -> anyhow::Result<()> {
    let duration = Duration::from_millis(f.duration_ms);
    match f.kind {
        Kind::Kill9 | Kind::GracefulRestart => {
            let v = f.nodes[0];
            shared.live[v].store(false, Ordering::SeqCst);
            view.up[v] = false;
            view.publish(shared);
            if f.kind == Kind::Kill9 {
                servers[v].kill9();
            } else if let Err(e) = servers[v].terminate() {
                shared.violation("graceful_stop", format!("node {v}: {e}"));
            }
            shared.peer_restarts.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(duration);
            servers[v].spawn(bin, &shared.topic, boot)?;
            match servers[v].wait_healthy() {
                Ok(address) => {
                    let mut a = shared.addresses.lock().expect("addresses lock");
                    if a[v] != address {
                        shared.violation(
                            "identity",
                            format!("node {v} came back as {address}, was {}", a[v]),
                        );
                        a[v] = address;
                    }
                    drop(a);
                    shared.pids[v].store(servers[v].pid(), Ordering::SeqCst);
                    shared.live[v].store(true, Ordering::SeqCst);
                    view.up[v] = true;
                    view.publish(shared);
                }
                Err(e) => shared.violation("restart", format!("{e:#}")),
            }
        }
        Kind::Partition => {
            let topo = topo.ok_or_else(|| anyhow!("partition needs namespaces"))?;
            let a = f.nodes.clone();
            let b: Vec<usize> = (0..servers.len()).filter(|i| !a.contains(i)).collect();
            for &i in &a {
                for &j in &b {
                    view.cut[i][j] = true;
                    view.cut[j][i] = true;
                }
            }
            view.publish(shared);
            topo.partition(&a, &b)?;
            std::thread::sleep(duration);
            topo.heal(&a, &b);
            for &i in &a {
                for &j in &b {
                    view.cut[i][j] = false;
                    view.cut[j][i] = false;
                }
            }
            view.publish(shared);
        }
        Kind::Loss => {
            let topo = topo.ok_or_else(|| anyhow!("loss needs namespaces"))?;
            let v = f.nodes[0];
            view.impaired[v] = true;
            view.publish(shared);
            topo.impair(
                v,
                Impairment {
                    loss_pct: f.loss_pct,
                    delay_ms: f.delay_ms,
                },
            )?;
            std::thread::sleep(duration);
            topo.unimpair(v);
            view.impaired[v] = false;
            view.publish(shared);
        }
    }
    Ok(())
}

/// Polls until every expected pair is connected; the time it took, or
/// None at the deadline.
fn wait_full_mesh(shared: &Shared, within: Duration) -> Option<u64> {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let addresses = shared.addresses.lock().expect("addresses lock").clone();
        let mut full = true;
        for i in 0..shared.n {
            if !shared.live[i].load(Ordering::SeqCst) {
                continue;
            }
            let Ok(peers) = http_json(shared.addrs[i], "/peers", Duration::from_secs(2)) else {
                full = false;
                continue;
            };
            let connected = connected_set(&peers);
            for (j, a) in addresses.iter().enumerate() {
                if j != i && shared.live[j].load(Ordering::SeqCst) && !connected.contains(a) {
                    full = false;
                }
            }
        }
        if full {
            return Some(start.elapsed().as_millis() as u64);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn connected_set(peers: &Value) -> Vec<String> {
    peers["servers"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["state"] == "connected")
                .filter_map(|s| s["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `/peers` of every live server (self and duplicate connections,
/// reconnect bound) and samples the long-lived node's RSS and open files.
fn monitor(shared: &Shared) {
    let mut reported_self = vec![false; shared.n];
    let mut reported_dup = vec![false; shared.n];
    while !shared.stop_monitor.load(Ordering::SeqCst) {
        let round = Instant::now();
        let addresses = shared.addresses.lock().expect("addresses lock").clone();
        for i in 0..shared.n {
            if !shared.live[i].load(Ordering::SeqCst) {
                continue;
            }
            let Ok(peers) = http_json(shared.addrs[i], "/peers", Duration::from_secs(2)) else {
                continue;
            };
            let servers = peers["servers"].as_array().cloned().unwrap_or_default();
            for s in &servers {
                let addr = s["address"].as_str().unwrap_or("");
                if addr == addresses[i] && !reported_self[i] {
                    reported_self[i] = true;
                    shared.violation("self_connection", format!("node {i} lists itself: {s}"));
                }
                let links = s["links"].as_u64().unwrap_or(0);
                if links > 1 && !reported_dup[i] {
                    reported_dup[i] = true;
                    let j = addresses.iter().position(|a| a == addr);
                    shared.violation(
                        "duplicate_connection",
                        format!("node {i} holds {links} links to node {j:?} ({addr})"),
                    );
                }
            }
            let connected = connected_set(&peers);
            let now = Instant::now();
            let mut p = shared.pairs.lock().expect("pairs lock");
            for (j, address) in addresses.iter().enumerate() {
                let Some(since) = p.since[i][j] else { continue };
                if connected.contains(address) {
                    if p.last_ok[i][j].is_none() {
                        let ms = now.duration_since(since).as_millis() as u64;
                        p.reconnect_ms.push(ms);
                    }
                    p.last_ok[i][j] = Some(now);
                    p.reported[i][j] = false;
                } else {
                    let from = p.last_ok[i][j].unwrap_or(since).max(since);
                    if now.duration_since(from) > shared.reconnect_bound && !p.reported[i][j] {
                        p.reported[i][j] = true;
                        drop(p);
                        shared.violation(
                            "reconnect",
                            format!(
                                "node {i} not connected to reachable node {j} for {:?} (bound {:?})",
                                now.duration_since(from),
                                shared.reconnect_bound
                            ),
                        );
                        p = shared.pairs.lock().expect("pairs lock");
                    }
                }
            }
        }
        let pid = shared.pids[0].load(Ordering::SeqCst);
        if let (Some(rss_kib), Some(fds)) = (rss_kib(pid), open_fds(pid)) {
            shared.samples.lock().expect("samples lock").push(Sample {
                at_ms: shared.ms(),
                rss_kib,
                fds,
                peer_restarts: shared.peer_restarts.load(Ordering::SeqCst),
            });
        }
        sleep_until(round + MONITOR_EVERY);
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Invariant 5: early vs late RSS and open files of node 0.
fn check_growth(shared: &Shared, start_ms: u64, end_ms: u64, writers: usize) -> Value {
    let samples = shared.samples.lock().expect("samples lock").clone();
    let third = (end_ms - start_ms) / 3;
    let early: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at_ms >= start_ms && s.at_ms < start_ms + third)
        .copied()
        .collect();
    let late: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at_ms >= end_ms - third && s.at_ms <= end_ms)
        .copied()
        .collect();
    let (Some(rss_early), Some(rss_late), Some(fds_early), Some(fds_late)) = (
        median(early.iter().map(|s| s.rss_kib).collect()),
        median(late.iter().map(|s| s.rss_kib).collect()),
        median(early.iter().map(|s| s.fds).collect()),
        median(late.iter().map(|s| s.fds).collect()),
    ) else {
        shared.violation(
            "resource_samples",
            "too few samples of node 0's RSS and open files".into(),
        );
        return Value::Null;
    };
    let restarts_between =
        late.first().map_or(0, |s| s.peer_restarts) - early.first().map_or(0, |s| s.peer_restarts);
    let rss_limit = rss_early + rss_early * RSS_GROWTH_PCT / 100 + RSS_SLACK_KIB;
    let fds_limit = fds_early + (shared.n + writers) as u64 + FD_SLACK;
    if rss_late > rss_limit {
        shared.violation(
            "memory_growth",
            format!(
                "node 0 RSS {rss_early} KiB early, {rss_late} KiB late (limit {rss_limit}) over {restarts_between} peer restarts"
            ),
        );
    }
    if fds_late > fds_limit {
        shared.violation(
            "fd_growth",
            format!(
                "node 0 open files {fds_early} early, {fds_late} late (limit {fds_limit}) over {restarts_between} peer restarts"
            ),
        );
    }
    json!({
        "node": 0,
        "rss_kib_early": rss_early,
        "rss_kib_late": rss_late,
        "rss_kib_limit": rss_limit,
        "fds_early": fds_early,
        "fds_late": fds_late,
        "fds_limit": fds_limit,
        "peer_restarts_between": restarts_between,
        "samples": samples.len(),
    })
}

/// A writer: random keys to random live servers; a write counts as
/// confirmed when a `get` on the server it was sent to returns it.
fn writer(shared: &Shared, w: usize, seed: u64, keys: usize, rate: u32) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64 + 1));
    let key = Arc::new(NodeKey::generate(KeyScheme::P256));
    let mut conns: Vec<Option<WireClient>> = (0..shared.n).map(|_| None).collect();
    let pause = Duration::from_millis(1000 / rate.max(1) as u64);
    let mut seq = 0u64;
    while !shared.stop_writes.load(Ordering::SeqCst) {
        let live: Vec<usize> = (0..shared.n)
            .filter(|&i| shared.live[i].load(Ordering::SeqCst))
            .collect();
        let Some(&i) = live.choose(&mut rng) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let k = format!("chaos-{}", rng.gen_range(0..keys));
        seq += 1;
        if conns[i].is_none() {
            match WireClient::connect(shared.addrs[i], &shared.topic, key.clone()) {
                Ok(c) => conns[i] = Some(c),
                Err(_) => {
                    shared.write_errors.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(pause);
                    continue;
                }
            }
        }
        let c = conns[i].as_mut().expect("connected above");
        if let Err(_e) = write_one(shared, c, &k, &json!({"w": w, "n": seq})) {
            shared.write_errors.fetch_add(1, Ordering::SeqCst);
            conns[i] = None;
        }
        std::thread::sleep(pause);
    }
}

fn write_one(shared: &Shared, c: &mut WireClient, key: &str, value: &Value) -> anyhow::Result<()> {
    let record = c.put(key, value)?;
    let rec = WriteRec {
        key: key.to_owned(),
        h: record["h"].as_str().unwrap_or_default().to_owned(),
        t: record["t"].as_u64().unwrap_or_default(),
        a: record["a"].as_str().unwrap_or_default().to_owned(),
        confirmed: false,
    };
    let index = {
        let mut writes = shared.writes.lock().expect("writes lock");
        writes.push(rec.clone());
        writes.len() - 1
    };
    let deadline = Instant::now() + CONFIRM_TIMEOUT;
    while Instant::now() < deadline {
        let got = c.get_many(&[key.to_owned()], Duration::from_millis(500))?;
        if let Some(data) = got.into_iter().next().flatten() {
            if data["h"] == rec.h.as_str() {
                shared.writes.lock().expect("writes lock")[index].confirmed = true;
                return Ok(());
            }
            if let Ok(meta) = serde_json::from_value::<RecordMetaOwned>(data) {
                if wins(&meta.as_meta(), &rec.meta()) {
                    // Overwritten by a newer write before we looked.
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct RecordMetaOwned {
    k: String,
    t: u64,
    a: String,
    h: String,
}

impl RecordMetaOwned {
    fn as_meta(&self) -> RecordMeta<'_> {
        RecordMeta {
            key: &self.k,
            timestamp: self.t,
            address: &self.a,
            hash: &self.h,
        }
    }
}

/// Invariant 1. Polls every live server for every confirmed key until all
/// hold the expected winner or the deadline; Some(ms) when they converged.
fn converge(shared: &Shared, deadline: Instant) -> Converged {
    let start = Instant::now();
    let mut out = Converged {
        ms: None,
        diverged_at_heal: None,
    };
    let writes = shared.writes.lock().expect("writes lock").clone();
    let mut expected: BTreeMap<String, WriteRec> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.confirmed) {
        match expected.get(&w.key) {
            Some(cur) if !wins(&w.meta(), &cur.meta()) => {}
            _ => {
                expected.insert(w.key.clone(), w.clone());
            }
        }
    }
    let sent: HashMap<&str, &WriteRec> = writes.iter().map(|w| (w.h.as_str(), w)).collect();
    let keys: Vec<String> = expected.keys().cloned().collect();
    if keys.is_empty() {
        shared.violation("no_writes", "no write was confirmed by any server".into());
        return out;
    }
    let client_key = Arc::new(NodeKey::generate(KeyScheme::P256));
    let mut conns: Vec<Option<WireClient>> = (0..shared.n).map(|_| None).collect();
    let mut problems: Vec<String>;
    let mut round = 0u32;
    loop {
        problems = vec![];
        // key -> h held by each server
        let mut held: BTreeMap<&str, Vec<(usize, Option<String>)>> = BTreeMap::new();
        for (i, conn) in conns.iter_mut().enumerate() {
            if !shared.live[i].load(Ordering::SeqCst) {
                continue;
            }
            if conn.is_none() {
                *conn =
                    WireClient::connect(shared.addrs[i], &shared.topic, client_key.clone()).ok();
            }
            let Some(c) = conn.as_mut() else {
                problems.push(format!("node {i}: cannot connect"));
                continue;
            };
            match c.get_many(&keys, Duration::from_secs(5)) {
                Ok(answers) => {
                    for (k, a) in keys.iter().zip(answers) {
                        let h = a.and_then(|d| d["h"].as_str().map(str::to_owned));
                        held.entry(k).or_default().push((i, h));
                    }
                }
                Err(e) => {
                    *conn = None;
                    problems.push(format!("node {i}: {e}"));
                }
            }
        }
        for (k, hs) in &held {
            let want = &expected[*k];
            let first = &hs[0].1;
            let agree = hs.iter().all(|(_, h)| h == first);
            let acceptable = match first.as_deref() {
                Some(h) if h == want.h => true,
                // A write we sent but could not confirm may win over it.
                Some(h) => sent.get(h).is_some_and(|w| wins(&w.meta(), &want.meta())),
                None => false,
            };
            if !agree || !acceptable {
                let short = |h: &str| h[..12.min(h.len())].to_owned();
                let lacking: Vec<String> = hs
                    .iter()
                    .filter(|(_, h)| h.as_deref() != Some(&want.h))
                    .map(|(i, h)| {
                        format!(
                            "node {i} holds {}",
                            h.as_deref().map_or("nothing".into(), short)
                        )
                    })
                    .collect();
                problems.push(format!(
                    "key {k}: confirmed winner {} missing on {} of {} servers: {}",
                    short(&want.h),
                    lacking.len(),
                    hs.len(),
                    lacking.join(", ")
                ));
            }
        }
        out.diverged_at_heal.get_or_insert(problems.len());
        if problems.is_empty() {
            let ms = start.elapsed().as_millis() as u64;
            eprintln!(
                "chaos: all {} servers agree on {} keys after {ms} ms",
                shared.n,
                keys.len()
            );
            out.ms = Some(ms);
            return out;
        }
        if Instant::now() > deadline {
            break;
        }
        if round.is_multiple_of(10) {
            eprintln!(
                "chaos: {} keys still differ {:.0} s after the heal, e.g. {}",
                problems.len(),
                start.elapsed().as_secs_f64(),
                problems[0]
            );
        }
        round += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let total = problems.len();
    for p in problems.into_iter().take(MAX_LISTED / 2) {
        shared.violation("write_lost", p);
    }
    if total > MAX_LISTED / 2 {
        shared.violation("write_lost", format!("... {total} keys in all"));
    }
    out
}

/// What `converge` saw.
struct Converged {
    /// Time from the heal until every server agreed; None: never did.
    ms: Option<u64>,
    /// Keys on which the servers disagreed at the first look after the heal.
    diverged_at_heal: Option<usize>,
}

fn print_summary(s: &Value) {
    println!("chaos summary");
    for key in [
        "ok",
        "seed",
        "nodes",
        "seconds",
        "mode",
        "netns_unavailable",
        "faults",
        "writes",
        "write_errors",
        "confirmed_writes",
        "keys",
        "keys_confirmed",
        "peer_restarts",
        "initial_mesh_ms",
        "converge_ms",
        "keys_diverged_at_heal",
        "reconnect_bound_ms",
        "reconnect_max_ms",
        "long_lived",
        "violation_counts",
    ] {
        println!("  {key}: {}", s[key]);
    }
    if let Some(v) = s["violations"].as_array() {
        for v in v {
            println!("  violation {}: {}", v["kind"], v["detail"]);
        }
    }
}
