//! A restarted daemon settles a migration its death cut short.

use super::*;

impl Driver {
    pub(in crate::driver) async fn settle_migration(&self, dom: &Arc<Dom>, m: Migration) {
        let (Some(d), dom) = (self.arc(), dom.clone()) else {
            return;
        };
        // Each waits for the other side or for QEMU: the rest of the restart does not.
        match m {
            Migration::In { .. } => {
                tokio::spawn(async move {
                    d.settle_incoming(&dom).await;
                });
            }
            Migration::Out {
                dconuri,
                phase,
                resume,
                flags,
            } => {
                tokio::spawn(async move {
                    d.settle_outgoing(&dom, &dconuri, phase, resume, flags)
                        .await;
                });
            }
        }
    }

    /// The destination's side: QEMU that never got Finish is ended (its source resumes
    /// the guest); one whose Finish was cut runs the guest if the whole of it arrived.
    pub(super) async fn settle_incoming(&self, dom: &Arc<Dom>) {
        let _lock = dom.begin_job().await;
        self.settle_incoming_locked(dom, "it never got Finish")
            .await;
    }

    /// The source's side: before Finish the guest resumes here (no destination runs a
    /// guest without Finish); after, the destination says whether it runs it.
    pub(super) async fn settle_outgoing(
        &self,
        dom: &Arc<Dom>,
        dconuri: &str,
        phase: OutPhase,
        resume: bool,
        flags: u32,
    ) {
        let uuid = dom.uuid.to_string();
        let runs_there = match phase {
            OutPhase::Confirm => Some(true),
            OutPhase::Perform => {
                // Best effort: the destination also ends it when this daemon's
                // connection went, or at its own restart.
                let _ = ask_destination(dconuri, &uuid, Duration::from_secs(5)).await;
                Some(false)
            }
            OutPhase::Finish => ask_destination(dconuri, &uuid, RECOVER_WAIT).await,
        };
        let lock = dom.begin_job().await;
        match runs_there {
            Some(true) => {
                tracing::warn!(domain = %dom.name(), "the destination runs the guest: ending the source");
                self.set_out_phase(dom, OutPhase::Confirm).await;
                let _ = self.destroy_locked(dom).await;
                drop(lock);
                let undefine = flags & MigrateFlags::UNDEFINE_SOURCE.bits() != 0;
                if undefine && dom.persistent() {
                    let _ = self.undefine(dom, 0).await;
                }
            }
            Some(false) => {
                tracing::warn!(domain = %dom.name(), "undoing a migration cut short: the guest stays here");
                if let Ok(qmp) = self.qmp_of(dom) {
                    let _ = qmp.execute("migrate_cancel", None).await;
                }
                self.end_out(dom, resume).await;
            }
            None => tracing::error!(domain = %dom.name(),
                "cannot learn from {dconuri} whether it runs the guest: it stays paused here"),
        }
    }
}
