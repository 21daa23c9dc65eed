//! `AcmeIssuer`: obtains the node's certificate over ACME and renews it
//! (`serve --acme`; the protocol steps are in `crate::acme`). One per node,
//! run under `actix::Supervisor` (`AcmeIssuer::supervised`); the node
//! keeps its `Addr` so the supervisor keeps restarting it.
//!
//! Holds the settings, the TLS resolver the websocket port serves from
//! (`tls::CertResolver`, shared with the rustls configuration), when the
//! certificate in hand is due for renewal, and the failures since the last
//! success. It handles no messages: a timer runs an order when none is in
//! hand or the one in hand is at half its lifetime; the order answers
//! `tls-alpn-01` through the resolver (or `http-01` through the tokens
//! the `--acme-http-listen` listener serves). A new certificate is handed to the
//! resolver only once it is in hand and stored, so the old one serves new
//! handshakes until then and open connections are never touched.
//!
//! A failed order makes the actor stop; the supervisor's restart is the
//! retry, after a jittered, capped backoff kept in the actor and reset by
//! the next issuance. Each failure is one warning saying when the next
//! attempt is and whether the old certificate is still served.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use rand::Rng;

use crate::acme::{AcmeSettings, Http01Tokens, Issued};
use crate::tls::CertResolver;

/// First retry after a failed order; doubles up to `RETRY_MAX`.
pub const RETRY_INITIAL: Duration = Duration::from_secs(2);
/// Longest wait between failed orders (Let's Encrypt limits failed
/// validations per hour; this stays well under).
pub const RETRY_MAX: Duration = Duration::from_secs(60 * 60);

pub struct AcmeIssuer {
    settings: AcmeSettings,
    resolver: Arc<CertResolver>,
    /// The `http-01` answers the `--acme-http-listen` listener serves.
    tokens: Http01Tokens,
    /// When the certificate in hand is renewed; None: none in hand.
    renew_at: Option<SystemTime>,
    not_after: Option<SystemTime>,
    failures: u32,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl AcmeIssuer {
    /// `stored`: a certificate from an earlier run, already in `resolver`.
    pub fn new(
        settings: AcmeSettings,
        resolver: Arc<CertResolver>,
        tokens: Http01Tokens,
        stored: Option<&Issued>,
    ) -> AcmeIssuer {
        AcmeIssuer {
            settings,
            resolver,
            tokens,
            renew_at: stored.map(|s| s.renew_at),
            not_after: stored.map(|s| s.not_after),
            failures: 0,
            metrics: None,
        }
    }

    /// Counts issued certificates and failed orders into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts the issuer under `actix::Supervisor` on the current arbiter.
    pub fn supervised(issuer: AcmeIssuer) -> Addr<Self> {
        Supervisor::start(move |_| issuer)
    }

    /// How long until the next order: the backoff after a failure, else
    /// until the certificate in hand is due (now if there is none).
    fn next_wait(&self) -> Duration {
        if self.failures > 0 {
            let jitter = rand::thread_rng().gen::<f64>();
            return crate::backoff::backoff_delay(self.failures, RETRY_INITIAL, RETRY_MAX, jitter);
        }
        self.renew_at
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO)
    }

    fn run_order(&mut self, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let resolver = self.resolver.clone();
        let tokens = self.tokens.clone();
        tracing::info!(
            host = %settings.host,
            directory = %settings.directory,
            renewal = self.renew_at.is_some(),
            challenge = if settings.http01 { "http-01" } else { "tls-alpn-01" },
            "ACME: ordering a certificate"
        );
        let order = async move { crate::acme::obtain(&settings, &resolver, &tokens).await };
        ctx.spawn(order.into_actor(self).map(|result, act, ctx| match result {
            Ok(issued) => {
                let valid_secs = issued
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                let renew_in_secs = issued
                    .renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                act.resolver.set(issued.key);
                act.renew_at = Some(issued.renew_at);
                act.not_after = Some(issued.not_after);
                act.failures = 0;
                if let Some(m) = &act.metrics {
                    m.acme_certificates_issued.inc();
                }
                tracing::info!(
                    host = %act.settings.host,
                    valid_secs,
                    renew_in_secs,
                    "ACME certificate obtained; new handshakes use it"
                );
                act.schedule(ctx);
            }
            Err(e) => {
                act.failures = act.failures.saturating_add(1);
                if let Some(m) = &act.metrics {
                    m.acme_order_failures.inc();
                }
                let retry_in_secs = act.next_wait().as_secs();
                let now = SystemTime::now();
                let kept = act.not_after.is_some_and(|t| t > now);
                if kept {
                    tracing::warn!(
                        error = %e,
                        failures = act.failures,
                        retry_in_secs,
                        "ACME renewal failed; keeping the current certificate"
                    );
                } else {
                    tracing::warn!(
                        error = %e,
                        failures = act.failures,
                        retry_in_secs,
                        "ACME order failed; TLS handshakes fail until a certificate is obtained"
                    );
                }
                // The supervisor restarts us; `started` waits the backoff.
                ctx.stop();
            }
        }));
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.next_wait(), |act, ctx| act.run_order(ctx));
    }
}

impl Actor for AcmeIssuer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

impl Supervised for AcmeIssuer {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::debug!(failures = self.failures, "ACME issuer restarting");
    }
}
