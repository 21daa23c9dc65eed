//! What must go when the harness (or a test) stops, however it stops: the server
//! processes it started (by pid) and the namespaces and links it made.
//! `Drop` guards remove them on a normal end or a panic; the signal thread
//! (SIGINT, SIGTERM) removes them and exits.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::run_quiet;

#[derive(Default)]
struct Leftovers {
    pids: BTreeSet<i32>,
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    pids: BTreeSet::new(),
    netns: BTreeSet::new(),
    links: BTreeSet::new(),
});

fn with<T>(f: impl FnOnce(&mut Leftovers) -> T) -> T {
    let mut l = LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut l)
}

pub fn add_pid(pid: u32) {
    with(|l| l.pids.insert(pid as i32));
}
pub fn forget_pid(pid: u32) {
    with(|l| l.pids.remove(&(pid as i32)));
}
pub fn add_netns(name: &str) {
    with(|l| l.netns.insert(name.to_owned()));
}
pub fn forget_netns(name: &str) {
    with(|l| l.netns.remove(name));
}
pub fn add_link(name: &str) {
    with(|l| l.links.insert(name.to_owned()));
}
pub fn forget_link(name: &str) {
    with(|l| l.links.remove(name));
}

/// Kills every process we started and removes every namespace and link.
pub fn everything() {
    let l = with(std::mem::take);
    for pid in &l.pids {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for ns in &l.netns {
        run_quiet(&["ip", "netns", "del", ns]);
    }
    for link in &l.links {
        run_quiet(&["ip", "link", "del", link]);
    }
}

/// On SIGINT or SIGTERM: clean up, then exit 130.
pub fn install_signal_handler() {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a signal runtime builds");
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("chaos: interrupted; removing servers, namespaces and links");
            everything();
            std::process::exit(130);
        })
        .expect("the signal thread starts");
}
