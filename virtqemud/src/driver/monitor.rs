//! The state machine of a running domain: one monitor task per QEMU turns its QMP
//! events into state changes and events, and its exit into the end of the run.

use std::sync::Arc;
use std::time::Duration;

use common::event::DomainEvent::{self, Crashed, PmSuspended, Resumed, Started, Suspended};
use common::event::StateReason::{self, Paused, Running};
use common::event::{
    CrashedDetail, CrashedReason, DomainState, PausedReason, PmSuspendedDetail, ResumedDetail,
    RunningReason, ShutdownDetail, ShutdownReason, ShutoffReason, StartedDetail, StoppedDetail,
    SuspendedDetail,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::start::Held;
use super::{Dom, Driver};
use crate::model::Action;
use crate::qmp;
use common::child::ChildWatch;
use nix::sys::signal::Signal;

impl Driver {
    pub(super) async fn on_event(&self, dom: &Arc<Dom>, ev: &qmp::Event) {
        let signal = {
            let g = dom.lock();
            g.live
                .as_ref()
                .and_then(|l| crate::events::signal_of(ev, &l.def))
        };
        if let Some(s) = signal {
            self.outbox
                .send(super::Change::Signal(dom.clone(), s))
                .await;
        }
        let migrating_out = matches!(
            dom.lock().live.as_ref().and_then(|l| l.migration.as_ref()),
            Some(super::migrate::Migration::Out { .. })
        );
        match ev.name.as_str() {
            // QEMU stops a migrating guest to send the last of it: libvirt's
            // PAUSED/MIGRATION and SUSPENDED/MIGRATED.
            "STOP"
                if migrating_out
                    && self.transition(
                        dom,
                        &[DomainState::Running],
                        Paused(PausedReason::Migration),
                    ) =>
            {
                self.lifecycle(dom, Suspended(SuspendedDetail::Migrated))
                    .await;
                self.save_status(dom).await;
            }
            "STOP"
                if self.transition(dom, &[DomainState::Running], Paused(PausedReason::Unknown)) =>
            {
                self.lifecycle(dom, Suspended(SuspendedDetail::Paused))
                    .await;
                self.save_status(dom).await;
            }
            "RESUME"
                if self.transition(
                    dom,
                    &[DomainState::Paused, DomainState::PmSuspended],
                    Running(RunningReason::Unpaused),
                ) =>
            {
                self.lifecycle(dom, Resumed(ResumedDetail::Unpaused)).await;
                self.save_status(dom).await;
            }
            "SUSPEND"
                if self.transition(dom, &[DomainState::Running], StateReason::PmSuspended) =>
            {
                self.lifecycle(dom, PmSuspended(PmSuspendedDetail::Memory))
                    .await;
                self.save_status(dom).await;
            }
            "WAKEUP"
                if self.transition(
                    dom,
                    &[DomainState::PmSuspended],
                    Running(RunningReason::Wakeup),
                ) =>
            {
                self.lifecycle(dom, Started(StartedDetail::Wakeup)).await;
                self.save_status(dom).await;
            }
            "VSERPORT_CHANGE" => self.on_port_change(dom, &ev.data).await,
            // A copy's job ended (pivoted, cancelled or failed): the disk is settled.
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" if is_copy_job(ev) => {
                self.settle_copy(dom).await;
            }
            // A device the guest let go of (its virtio backend's event has no id).
            "DEVICE_DELETED" => {
                if let Some(id) = ev.data.get("device").and_then(Value::as_str) {
                    self.device_deleted(dom, id).await;
                }
            }
            "SHUTDOWN" => {
                let guest = ev
                    .data
                    .get("guest")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let reset = ev.data.get("reason").and_then(Value::as_str) == Some("guest-reset");
                let (fake_reboot, action, qmp) = {
                    let mut g = dom.lock();
                    let Some(l) = g.live.as_mut() else { return };
                    if l.destroying {
                        // Our own SIGTERM: the exit is reported as destroyed, not shutdown.
                        return;
                    }
                    let fr = std::mem::take(&mut l.fake_reboot);
                    let action = if reset {
                        l.def.on_reboot
                    } else {
                        l.def.on_poweroff
                    };
                    (fr, action, l.qmp.clone())
                };
                if fake_reboot || action == Action::Restart {
                    let _ = qmp.execute("system_reset", None).await;
                    let _ = qmp.execute("cont", None).await;
                    return;
                }
                let both = [DomainState::Running, DomainState::Paused];
                if self.transition(dom, &both, StateReason::Shutdown(ShutdownReason::User)) {
                    let by = if guest {
                        ShutdownDetail::Guest
                    } else {
                        ShutdownDetail::Host
                    };
                    self.lifecycle(dom, DomainEvent::Shutdown(by)).await;
                    self.save_status(dom).await;
                }
                if action == Action::Destroy {
                    if let Some(l) = dom.lock().live.as_mut() {
                        l.shutdown_seen = true;
                    }
                    let _ = qmp.execute("quit", None).await;
                }
            }
            "GUEST_PANICKED" => {
                let (action, qmp) = {
                    let mut g = dom.lock();
                    let Some(l) = g.live.as_mut() else { return };
                    l.crashed = true;
                    (l.def.on_crash, l.qmp.clone())
                };
                let both = [DomainState::Running, DomainState::Paused];
                if self.transition(dom, &both, StateReason::Crashed(CrashedReason::Panicked)) {
                    self.lifecycle(dom, Crashed(CrashedDetail::Panicked)).await;
                    self.save_status(dom).await;
                }
                match action {
                    Action::Destroy => {
                        let _ = qmp.execute("quit", None).await;
                    }
                    Action::Restart => {
                        let _ = qmp.execute("system_reset", None).await;
                        let _ = qmp.execute("cont", None).await;
                        let running = Running(RunningReason::Unknown);
                        if self.transition(dom, &[DomainState::Crashed], running) {
                            self.save_status(dom).await;
                        }
                    }
                    Action::Preserve => {}
                }
            }
            _ => {}
        }
    }

    async fn on_exit(&self, dom: &Arc<Dom>) {
        let (live, persistent) = {
            let mut g = dom.lock();
            let live = g.live.take();
            (live, g.config.is_some())
        };
        let Some(l) = live else { return };
        use super::migrate::{Migration, OutPhase};
        let (reason, detail) = if let Some(Migration::Out {
            phase: OutPhase::Confirm,
            ..
        }) = l.migration
        {
            (ShutoffReason::Migrated, StoppedDetail::Migrated)
        } else if let Some(Migration::In { .. }) = l.migration {
            // An incoming migration that did not finish.
            (ShutoffReason::Failed, StoppedDetail::Failed)
        } else if l.saved {
            (ShutoffReason::Saved, StoppedDetail::Saved)
        } else if l.dumped_crash {
            (ShutoffReason::Crashed, StoppedDetail::Crashed)
        } else if l.destroying {
            (ShutoffReason::Destroyed, StoppedDetail::Destroyed)
        } else if l.shutdown_seen {
            (ShutoffReason::Shutdown, StoppedDetail::Shutdown)
        } else if l.crashed {
            (ShutoffReason::Crashed, StoppedDetail::Crashed)
        } else {
            (ShutoffReason::Crashed, StoppedDetail::Failed)
        };
        dom.lock().state = StateReason::Shutoff(reason);
        tracing::info!(domain = %dom.name(), pid = l.pid, ?reason, "QEMU exited");
        self.release(
            dom,
            &l.def.dom,
            Held::all(l.qmp_path, l.owners, l.dynamic_uid)
                .with_cgroup(self.cgroup_of(l.id, &l.def.name)),
        )
        .await;
        self.lifecycle(dom, DomainEvent::Stopped(detail)).await;
        if persistent {
            self.props_changed(dom).await;
        } else {
            self.remove(dom).await;
        }
    }
}

impl Driver {
    /// A virtio-serial port opened or closed by the guest: for the agent's channel,
    /// libvirt's agent lifecycle event (1 connected, 2 disconnected; reason 2, a
    /// channel event).
    async fn on_port_change(&self, dom: &Arc<Dom>, data: &Value) {
        let (Some(id), Some(open)) = (
            data.get("id").and_then(Value::as_str),
            data.get("open").and_then(Value::as_bool),
        ) else {
            return;
        };
        let is_agent = dom.lock().live.as_ref().is_some_and(|l| {
            crate::agent::channel(&l.def.dom, &l.qmp_path)
                .is_ok_and(|(i, _)| id == format!("channel{i}"))
        });
        if is_agent {
            let state = if open { 1 } else { 2 };
            self.outbox
                .send(super::Change::Agent(dom.clone(), state, 2))
                .await;
        }
    }
}

/// Whether a block job event is about a copy (`super::blockcopy`).
fn is_copy_job(ev: &qmp::Event) -> bool {
    ev.data
        .get("device")
        .and_then(Value::as_str)
        .is_some_and(|d| d.starts_with("libvirt-copy-"))
}

/// One per running domain: QMP events drive the state machine; process exit ends it.
pub(super) async fn monitor(
    driver: Arc<Driver>,
    dom: Arc<Dom>,
    mut events: mpsc::UnboundedReceiver<qmp::Event>,
    qemu: ChildWatch,
    exited: watch::Sender<bool>,
) {
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => driver.on_event(&dom, &ev).await,
                None => {
                    // The monitor closed: QEMU is exiting. If it lingers, it is killed.
                    if tokio::time::timeout(Duration::from_secs(10), qemu.exited()).await.is_err() {
                        qemu.signal(Signal::SIGKILL);
                        qemu.exited().await;
                    }
                    break;
                }
            },
            _ = qemu.exited() => break,
        }
    }
    // Events QEMU sent just before exiting still count (e.g. SHUTDOWN before quit).
    while let Ok(ev) = events.try_recv() {
        driver.on_event(&dom, &ev).await;
    }
    driver.on_exit(&dom).await;
    let _ = exited.send(true);
}
