//! `LanChannel`: finds the servers of our topic on the local network with
//! mDNS (the `mdns-sd` crate), and announces ours, with no DHT at all. One
//! per node (and per client unless `--no-lan`), run under
//! `actix::Supervisor` (`LanChannel::supervised`); its owner keeps the
//! `Addr` so the supervisor keeps restarting it.
//!
//! Owns the mDNS daemon (a thread of `mdns-sd`), our announcement and the
//! bounded memory of what it forwarded (`lan::LanSeen`). A server
//! announces the DNS-SD service `_tooldb._tcp.local.` under the instance
//! name `<tag>-<node id>`, with its websocket port and a TXT record
//! `t=<tag>`, where the tag is a hash of the topic (`lan::topic_tag`): the
//! topic itself is never sent. It browses that service type and checks
//! every resolved announcement with `lan::endpoints_of` (our tag, a port,
//! a few unicast IPv4 addresses); junk is dropped, and at most
//! `MAX_EVENTS_PER_POLL` events are read per `POLL_EVERY`.
//! Emits `EndpointsFound { via: Lan }` to the `Recipient` given at
//! construction (the peer registry or the client core), which dials and
//! verifies them like any endpoint. Receives no messages.
//!
//! A daemon that cannot start or whose event channel closes (the daemon
//! ends a browse whose receiver fell behind) makes the actor stop; the
//! supervisor's restart is the retry, after a jittered, capped backoff
//! kept in the actor and reset once an announcement is resolved.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mdns_sd::{IfKind, Receiver, ServiceDaemon, ServiceEvent, ServiceInfo, TryRecvError};
use rand::Rng;

use crate::backoff::backoff_delay;
use crate::lan::{
    endpoints_of, instance_name, topic_tag, LanError, LanSeen, SERVICE_TYPE, TAG_KEY,
};
use crate::messages::dht::{EndpointsFound, FoundVia};

/// How often the daemon's events are read.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Most daemon events handled per poll; the rest wait (bounded work per
/// second however much the LAN sends).
pub const MAX_EVENTS_PER_POLL: usize = 64;
/// First delay before the daemon is started again after it failed.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Cap of the delay between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// What a server announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanAnnounce {
    /// Our websocket port.
    pub port: u16,
    /// Makes our instance name unique (our client id).
    pub node_id: String,
    /// The address we listen on, when not a wildcard; `None` = every
    /// address of every interface (kept up to date by the daemon).
    pub ip: Option<Ipv4Addr>,
}

/// How the channel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanSettings {
    pub topic: String,
    /// `None`: browse only (a client).
    pub announce: Option<LanAnnounce>,
}

pub struct LanChannel {
    settings: LanSettings,
    tag: String,
    found: Recipient<EndpointsFound>,
    daemon: Option<ServiceDaemon>,
    events: Option<Receiver<ServiceEvent>>,
    /// Our own instance's full name, never forwarded.
    own_fullname: Option<String>,
    seen: LanSeen,
    failures: u32,
    down_logged: bool,
}

impl LanChannel {
    pub fn new(settings: LanSettings, found: Recipient<EndpointsFound>) -> Self {
        LanChannel {
            tag: topic_tag(&settings.topic),
            settings,
            found,
            daemon: None,
            events: None,
            own_fullname: None,
            seen: LanSeen::default(),
            failures: 0,
            down_logged: false,
        }
    }

    /// Starts the channel under `actix::Supervisor` on the current arbiter.
    pub fn supervised(settings: LanSettings, found: Recipient<EndpointsFound>) -> Addr<Self> {
        Supervisor::start(move |_| LanChannel::new(settings, found))
    }

    fn open(&mut self, ctx: &mut Context<Self>) {
        match self.start_daemon() {
            Ok(()) => {
                ctx.run_interval(POLL_EVERY, |act, ctx| act.poll(ctx));
            }
            Err(e) => self.fail(e, ctx),
        }
    }

    fn start_daemon(&mut self) -> Result<(), LanError> {
        let daemon_err = |e: mdns_sd::Error| LanError::Daemon {
            reason: e.to_string(),
        };
        let daemon = ServiceDaemon::new().map_err(daemon_err)?;
        // IPv4 only, as the rest of discovery; loopback peers are found
        // without a LAN.
        daemon
            .disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4])
            .map_err(daemon_err)?;
        if let Some(a) = &self.settings.announce {
            let name = instance_name(&self.tag, &a.node_id);
            let host = format!("{name}.local.");
            let ip = a.ip.map(|ip| ip.to_string()).unwrap_or_default();
            let mut info = ServiceInfo::new(
                SERVICE_TYPE,
                &name,
                &host,
                ip.as_str(),
                a.port,
                &[(TAG_KEY, self.tag.as_str())][..],
            )
            .map_err(daemon_err)?;
            if a.ip.is_none() {
                info = info.enable_addr_auto();
            }
            // The name holds our node id: no conflict to probe for, and
            // the announcement goes out at once.
            info.set_requires_probe(false);
            self.own_fullname = Some(info.get_fullname().to_owned());
            daemon.register(info).map_err(daemon_err)?;
        }
        self.events = Some(daemon.browse(SERVICE_TYPE).map_err(daemon_err)?);
        self.daemon = Some(daemon);
        tracing::info!(
            tag = %self.tag,
            announcing = self.settings.announce.is_some(),
            "LAN discovery on (mDNS)"
        );
        Ok(())
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some(events) = self.events.clone() else {
            return;
        };
        for _ in 0..MAX_EVENTS_PER_POLL {
            match events.try_recv() {
                Ok(ServiceEvent::ServiceResolved(info)) => {
                    let name = info.get_fullname();
                    if self.own_fullname.as_deref() == Some(name) {
                        continue;
                    }
                    match endpoints_of(
                        &self.tag,
                        name,
                        info.get_property_val_str(TAG_KEY),
                        info.get_port(),
                        info.get_addresses_v4(),
                    ) {
                        Ok(endpoints) => self.forward(&endpoints),
                        Err(e) => tracing::trace!(reason = %e, "ignored a LAN announcement"),
                    }
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.fail(
                        LanError::Daemon {
                            reason: "the mDNS browse ended".into(),
                        },
                        ctx,
                    );
                    return;
                }
            }
        }
    }

    fn forward(&mut self, endpoints: &[std::net::SocketAddrV4]) {
        self.failures = 0;
        if self.down_logged {
            tracing::info!("LAN discovery works again");
            self.down_logged = false;
        }
        let endpoints = self.seen.admit(endpoints, Instant::now());
        if endpoints.is_empty() {
            return;
        }
        tracing::debug!(?endpoints, "found servers on the LAN");
        // Losing a batch is acceptable: the next announcement repeats it.
        self.found.do_send(EndpointsFound {
            topic: self.settings.topic.clone(),
            endpoints,
            via: FoundVia::Lan,
        });
    }

    fn fail(&mut self, e: LanError, ctx: &mut Context<Self>) {
        self.failures = self.failures.saturating_add(1);
        if !self.down_logged {
            tracing::warn!(error = %e, "LAN discovery is not working; retrying with backoff");
            self.down_logged = true;
        } else {
            tracing::debug!(error = %e, "LAN discovery failed again");
        }
        self.shutdown();
        // Stopped from a scheduled callback (see STYLE.md); the
        // supervisor restarts us after the backoff in `started`.
        ctx.run_later(Duration::ZERO, |_, ctx| ctx.stop());
    }

    fn shutdown(&mut self) {
        self.events = None;
        if let Some(daemon) = self.daemon.take() {
            // The daemon withdraws our announcement as it stops.
            let _ = daemon.shutdown();
        }
    }
}

impl Actor for LanChannel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let jitter = rand::thread_rng().gen::<f64>();
        let delay = backoff_delay(self.failures, RETRY_INITIAL, RETRY_MAX, jitter);
        ctx.run_later(delay, |act, ctx| act.open(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shutdown();
    }
}

impl Supervised for LanChannel {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.shutdown();
    }
}
