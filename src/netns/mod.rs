//! Separate hosts on one machine, for the chaos harness and the LAN tests:
//! one network namespace per server
//! (and one for the DHT bootstrap node), each with a veth pair onto a bridge
//! in the root namespace, addresses from 198.18.N.0/24 (RFC 2544 test
//! range). The harness itself stays in the root namespace and reaches every
//! node over the bridge.
//!
//! Faults made here:
//! - partition: `blackhole` routes inside each node's namespace to every
//!   address of the other group (both directions; packets vanish silently,
//!   as in a real partition); heal removes them;
//! - loss and delay: `tc netem` on both ends of the node's veth when the
//!   kernel has it; otherwise an HTB root whose default class is capped to a
//!   low rate (delay by serialisation and queueing) plus a classic-BPF filter
//!   reading a random number (`ld rand`) that sends the chosen share of
//!   packets to a class whose `pfifo limit 0` drops everything.
//!
//! Everything made here has a name starting with a prefix and our pid,
//! is recorded in the global cleanup list, and is removed by `Drop`, by the
//! SIGINT/SIGTERM handler, and (when left over by a killed harness) by the
//! next run's `cleanup_stale`.

pub mod cleanup;

use std::process::{Command, Stdio};

/// The chaos harness's namespaces are named `tdbchaos-<pid>-<what>`.
pub const NS_PREFIX: &str = "tdbchaos-";
/// The chaos harness's links are named `tdbc<pid><b|d|vN>` (15 bytes at most).
pub const LINK_PREFIX: &str = "tdbc";
/// Most nodes one topology holds.
pub const MAX_NODES: usize = 200;

/// Why a namespace could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("at most {MAX_NODES} nodes in namespace mode, not {0}")]
    TooManyNodes(usize),
    #[error("no free 198.18.N.0/24 subnet")]
    NoFreeSubnet,
}

/// How the names of one topology start (see `NS_PREFIX`, `LINK_PREFIX`).
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    pub netns: &'static str,
    /// At most 4 bytes: link names hold 15.
    pub link: &'static str,
}

/// The chaos harness's names.
pub const CHAOS: Naming = Naming {
    netns: NS_PREFIX,
    link: LINK_PREFIX,
};
/// Port every server listens on inside its namespace.
pub const NS_SERVER_PORT: u16 = 9000;
/// UDP port of the DHT bootstrap node inside its namespace.
pub const NS_DHT_PORT: u16 = 6881;

/// Runs a command; fails with its stderr.
pub fn run(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            program: args[0].to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, ignoring failure (cleanup paths).
pub fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether we can make namespaces here: root, and `ip netns add` works.
/// Returns why not, when not.
pub fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let name = format!("{NS_PREFIX}{}-probe", std::process::id());
    run(&["ip", "netns", "add", &name]).map_err(|e| format!("ip netns add: {e}"))?;
    run_quiet(&["ip", "netns", "del", &name]);
    Ok(())
}

/// A running (not zombie) chaos harness has this pid.
fn pid_alive_as_chaos(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ..."; comm may hold spaces, so split at the last ')'.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let zombie = rest.trim_start().starts_with(['Z', 'X']);
    !zombie && (comm == "chaos" || comm.starts_with("chaos-"))
}

fn pid_in(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Removes namespaces and links left by earlier runs whose harness is gone
/// (killed with -9, say). Processes still inside such a namespace were
/// started by that harness: they are killed first. Returns what it removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = vec![];
    let me = std::process::id();
    let list = run(&["ip", "netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = pid_in(name, NS_PREFIX) else {
            continue;
        };
        if pid == me || pid_alive_as_chaos(pid) {
            continue;
        }
        let pids = run(&["ip", "netns", "pids", name]).unwrap_or_default();
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) on a pid inside our stale namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        run_quiet(&["ip", "netns", "del", name]);
        removed.push(name.to_owned());
    }
    let links = run(&["ip", "-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "12: tdbc123b: <...>" or "13: tdbc123v0@if2: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let Some(pid) = pid_in(name, LINK_PREFIX) else {
            continue;
        };
        if pid == me || pid_alive_as_chaos(pid) {
            continue;
        }
        run_quiet(&["ip", "link", "del", name]);
        removed.push(name.to_owned());
    }
    removed
}

/// Loss and delay, applied with `impair`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Impairment {
    pub loss_pct: u32,
    pub delay_ms: u32,
}

/// The namespaces, veths and bridge of one run.
pub struct Topology {
    pub subnet: u8,
    bridge: String,
    dht_ns: String,
    dht_veth: String,
    node_ns: Vec<String>,
    node_veth: Vec<String>,
    /// Whether `tc qdisc netem` works in this kernel.
    pub netem: bool,
}

impl Topology {
    /// Builds the bridge, the DHT namespace and one namespace per node,
    /// with the chaos harness's names.
    pub fn create(nodes: usize) -> Result<Topology, NetnsError> {
        Topology::create_named(nodes, CHAOS)
    }

    /// Like `create`, with names starting as `naming` says. Whatever was
    /// made is removed when the result (or the error) is dropped.
    pub fn create_named(nodes: usize, naming: Naming) -> Result<Topology, NetnsError> {
        if nodes > MAX_NODES {
            return Err(NetnsError::TooManyNodes(nodes));
        }
        let pid = std::process::id();
        let (ns, link) = (naming.netns, naming.link);
        let subnet = free_subnet()?;
        let bridge = format!("{link}{pid}b");
        let mut topo = Topology {
            subnet,
            bridge: bridge.clone(),
            dht_ns: format!("{ns}{pid}-dht"),
            dht_veth: format!("{link}{pid}d"),
            node_ns: (0..nodes).map(|i| format!("{ns}{pid}-n{i}")).collect(),
            node_veth: (0..nodes).map(|i| format!("{link}{pid}v{i}")).collect(),
            netem: false,
        };
        cleanup::add_link(&bridge);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{subnet}.1/24"),
            "dev",
            &bridge,
        ])?;
        topo.host(&topo.dht_ns.clone(), &topo.dht_veth.clone(), &topo.dht_ip())?;
        for i in 0..nodes {
            topo.host(
                &topo.node_ns[i].clone(),
                &topo.node_veth[i].clone(),
                &topo.node_ip(i),
            )?;
        }
        topo.netem = topo.probe_netem();
        Ok(topo)
    }

    fn host(&self, ns: &str, veth: &str, ip: &str) -> Result<(), NetnsError> {
        cleanup::add_netns(ns);
        cleanup::add_link(veth);
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        run(&["ip", "link", "set", veth, "master", &self.bridge, "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn probe_netem(&self) -> bool {
        let Some(ns) = self.node_ns.first() else {
            return false;
        };
        let ok = run(&[
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
            "delay", "1ms",
        ])
        .is_ok();
        run_quiet(&[
            "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
        ]);
        ok
    }

    pub fn dht_ip(&self) -> String {
        format!("198.18.{}.2", self.subnet)
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, 10 + i)
    }

    pub fn dht_ns(&self) -> &str {
        &self.dht_ns
    }

    pub fn node_ns(&self, i: usize) -> &str {
        &self.node_ns[i]
    }

    /// Routes multicast (224.0.0.0/4, mDNS among it) out of every node's
    /// eth0: a namespace has no default route, and without one the kernel
    /// refuses to send to a multicast group.
    pub fn route_multicast(&self) -> Result<(), NetnsError> {
        for ns in &self.node_ns {
            run(&["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Cuts every node of `a` from every node of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), NetnsError> {
        for &i in a {
            for &j in b {
                self.route(i, j, "add")?;
                self.route(j, i, "add")?;
            }
        }
        Ok(())
    }

    /// Undoes `partition(a, b)`.
    pub fn heal(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            for &j in b {
                let _ = self.route(i, j, "del");
                let _ = self.route(j, i, "del");
            }
        }
    }

    fn route(&self, from: usize, to: usize, op: &str) -> Result<(), NetnsError> {
        run(&[
            "ip",
            "-n",
            &self.node_ns[from],
            "route",
            op,
            "blackhole",
            &format!("{}/32", self.node_ip(to)),
        ])
        .map(|_| ())
    }

    /// Loss and delay on node `i`'s link, both directions.
    pub fn impair(&self, i: usize, imp: Impairment) -> Result<(), NetnsError> {
        let ns = self.node_ns[i].clone();
        let veth = self.node_veth[i].clone();
        self.impair_dev(Some(&ns), "eth0", imp)?;
        self.impair_dev(None, &veth, imp)
    }

    /// Removes `impair`'s qdiscs from node `i`'s link.
    pub fn unimpair(&self, i: usize) {
        run_quiet(&[
            "ip",
            "netns",
            "exec",
            &self.node_ns[i],
            "tc",
            "qdisc",
            "del",
            "dev",
            "eth0",
            "root",
        ]);
        run_quiet(&["tc", "qdisc", "del", "dev", &self.node_veth[i], "root"]);
    }

    fn impair_dev(&self, ns: Option<&str>, dev: &str, imp: Impairment) -> Result<(), NetnsError> {
        let tc = |args: &[&str]| -> Result<String, NetnsError> {
            let mut full: Vec<&str> = vec![];
            if let Some(ns) = ns {
                full.extend(["ip", "netns", "exec", ns]);
            }
            full.push("tc");
            full.extend(args);
            run(&full)
        };
        if self.netem {
            tc(&[
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
                "loss",
                &format!("{}%", imp.loss_pct),
                "delay",
                &format!("{}ms", imp.delay_ms),
            ])?;
            return Ok(());
        }
        // No netem: delay from a rate cap (a 1,500-byte packet takes
        // delay_ms to serialise), loss from a random BPF classifier.
        let rate_kbit = (1500 * 8 / imp.delay_ms.max(1)).max(8);
        tc(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ])?;
        tc(&[
            "class",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "classid",
            "1:10",
            "htb",
            "rate",
            &format!("{rate_kbit}kbit"),
            "ceil",
            &format!("{rate_kbit}kbit"),
        ])?;
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "8kbit",
        ])?;
        tc(&[
            "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0",
        ])?;
        // ld rand; jge #threshold; ret 0x10020 (class 1:20, dropped); ret 0 (no match)
        let threshold = ((100 - imp.loss_pct.min(100)) as u64 * (1u64 << 32) / 100) as u32;
        let bytecode = format!("4,32 0 0 4294963256,53 0 1 {threshold},6 0 0 65568,6 0 0 0");
        tc(&[
            "filter", "add", "dev", dev, "parent", "1:", "bpf", "bytecode", &bytecode,
        ])?;
        Ok(())
    }

    /// Removes everything `create` made.
    pub fn destroy(&self) {
        // Deleting a namespace removes its eth0 and with it the veth pair.
        for ns in self.node_ns.iter().chain([&self.dht_ns]) {
            run_quiet(&["ip", "netns", "del", ns]);
            cleanup::forget_netns(ns);
        }
        for veth in self.node_veth.iter().chain([&self.dht_veth]) {
            run_quiet(&["ip", "link", "del", veth]);
            cleanup::forget_link(veth);
        }
        run_quiet(&["ip", "link", "del", &self.bridge]);
        cleanup::forget_link(&self.bridge);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// A 198.18.N.0/24 no address in the root namespace uses.
fn free_subnet() -> Result<u8, NetnsError> {
    let addrs = run(&["ip", "-4", "-o", "addr", "show"])?;
    let start = (std::process::id() % 250) as u8;
    for k in 0..250u16 {
        let n = 1 + ((start as u16 + k) % 250) as u8;
        if !addrs.contains(&format!("198.18.{n}.")) {
            return Ok(n);
        }
    }
    Err(NetnsError::NoFreeSubnet)
}
