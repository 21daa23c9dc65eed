//! Anti-entropy between servers of ours (the `reconcile` extension): on
//! connect and every `reconcile_every_secs` the side with the smaller
//! address starts; storage answers each step in its pool, and the records a
//! peer lacks travel as ordinary puts (it verifies them like any). A CRDT
//! key goes to a peer that speaks signed lists as those lists, each a
//! crdtPut that verifies whole; a merged set would be refused.

use actix::prelude::*;

use super::{record_frame, Hub};
use crate::flow::Credit;
use crate::messages::hub::ConnId;
use crate::messages::storage::{ReconcileStart, ReconcileStep};
use crate::messages::wire::{new_message_id, Reconcile, WireMessage};

impl Hub {
    /// Starts a reconciliation with a server of ours, if we are the side
    /// that starts (the smaller address, so only one side does).
    pub(super) fn maybe_reconcile(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        self.reconcile_if(conn, false, ctx)
    }

    /// Starts a round with `conn` if it reconciles and either we are the
    /// side that starts (the smaller address) or `anyway`: a link proved
    /// only now by our dial ignored the round its peer started while it was
    /// unproved, so we start one ourselves.
    pub(super) fn reconcile_if(&mut self, conn: ConnId, anyway: bool, ctx: &mut Context<Self>) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        let starts = c.reconcile
            && c.address
                .as_deref()
                .is_some_and(|a| anyway || self.settings.address.as_str() < a);
        if !starts {
            return;
        }
        self.metrics.anti_entropy_rounds.inc();
        let storage = self.storage.clone();
        ctx.spawn(
            async move { storage.send(ReconcileStart).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(step)) => act.send_reconcile(conn, step),
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot start a reconciliation"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }),
        );
    }

    /// Sends the records a reconciliation owes `conn` while its output is
    /// not congested; the rest goes on when it drains (`OutboxDrained`).
    pub(super) fn pump_backlog(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(conn) else {
            self.backlog.remove(&conn);
            return;
        };
        let client = c.client_id.clone();
        let outbox = c.handle.outbox.clone();
        loop {
            if outbox.is_congested() {
                self.watch_drain(conn);
                return;
            }
            let Some(record) = self.backlog.get_mut(&conn).and_then(|b| b.pop_front()) else {
                self.backlog.remove(&conn);
                return;
            };
            let kind = if record.crdt.is_some() {
                "crdtPut"
            } else {
                "put"
            };
            self.sent.mark(&client, &record.hash);
            let text = record_frame(kind, &new_message_id(), self.own_to(), &record);
            self.send_to_conn(conn, text.into());
        }
    }

    fn send_reconcile(&mut self, conn: ConnId, step: crate::reconcile::Step) {
        let msg = WireMessage::Reconcile(Reconcile {
            id: new_message_id(),
            to: self.own_to(),
            step,
        });
        self.send_to_conn(conn, msg.to_text().into());
    }

    /// Answers a reconciliation step from a server of ours: replies, and the
    /// records it lacks, sent as ordinary puts. The step's credit is held
    /// until the answer is queued.
    pub(super) fn on_reconcile(
        &mut self,
        conn: ConnId,
        msg: Reconcile,
        credit: Credit,
        ctx: &mut Context<Self>,
    ) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if !c.reconcile {
            tracing::debug!(client = %c.client_id, "ignored a reconcile step from a peer that did not offer it");
            return;
        }
        let signed_lists = c.crdt_lists;
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let max_records = self.settings.reconcile_max_records;
        ctx.spawn(
            async move {
                let answer = storage
                    .send(ReconcileStep {
                        step: msg.step,
                        max_records,
                        signed_lists,
                    })
                    .await;
                durability.synced().await;
                answer
            }
            .into_actor(self)
            .map(move |res, act, _| {
                match res {
                    Ok(Ok(answer)) => {
                        if !answer.records.is_empty() {
                            tracing::debug!(
                                conn,
                                records = answer.records.len(),
                                "reconcile: sending records"
                            );
                        }
                        act.metrics
                            .anti_entropy_records
                            .inc_by(answer.records.len() as u64);
                        act.backlog.entry(conn).or_default().extend(answer.records);
                        act.pump_backlog(conn);
                        for step in answer.reply {
                            act.send_reconcile(conn, step);
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "reconcile step failed"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }
                drop(credit);
            }),
        );
    }
}
