//! Operations on a running domain: destroy, shutdown, reboot, reset, suspend, resume,
//! NMI, wake-up, keys.
//! Each holds the domain's job lock; state changes go through [`Driver::transition`].

use std::sync::Arc;

use common::error::{check_flags, VirError};
use common::event::{
    DomainEvent, DomainState, PausedReason, ResumedDetail, RunningReason, StateReason,
    SuspendedDetail,
};
use tokio::sync::watch;

use super::{not_running, DestroyFlags, Dom, Driver, ShutdownFlags, DESTROY_GRACE};
use crate::process;
use crate::qmp::Qmp;

impl Driver {
    pub(super) fn qmp_of(&self, dom: &Dom) -> Result<Qmp, VirError> {
        dom.lock()
            .live
            .as_ref()
            .map(|l| l.qmp.clone())
            .ok_or_else(not_running)
    }

    pub async fn destroy(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        common::error::flags::<DestroyFlags>(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.destroy_locked(dom).await
    }

    pub(super) async fn destroy_locked(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let (pid, mut exited) = {
            let mut g = dom.lock();
            let l = g.live.as_mut().ok_or_else(not_running)?;
            l.destroying = true;
            (l.pid, l.exited.clone())
        };
        process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        let wait = |rx: &mut watch::Receiver<bool>| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|e| *e).await;
            }
        };
        if tokio::time::timeout(DESTROY_GRACE, wait(&mut exited))
            .await
            .is_err()
        {
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            if tokio::time::timeout(DESTROY_GRACE, wait(&mut exited))
                .await
                .is_err()
            {
                return Err(VirError::operation_failed(
                    "QEMU did not exit after SIGKILL",
                ));
            }
        }
        Ok(())
    }

    /// `Shutdown`: the guest agent first when asked for or (no flags) when the guest
    /// has it running, else or after its failure the ACPI power button, as libvirt.
    pub async fn shutdown(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        if self.power_by_agent(dom, flags, "powerdown").await? {
            return Ok(());
        }
        self.qmp_of(dom)?.execute("system_powerdown", None).await?;
        Ok(())
    }

    /// `Reboot`: by the guest agent as [`Driver::shutdown`] chooses it, else libvirt's
    /// "fake reboot": ACPI power-off, then reset and continue on SHUTDOWN.
    pub async fn reboot(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        if self.power_by_agent(dom, flags, "reboot").await? {
            return Ok(());
        }
        let qmp = self.qmp_of(dom)?;
        if let Some(l) = dom.lock().live.as_mut() {
            l.fake_reboot = true;
        }
        qmp.execute("system_powerdown", None).await?;
        Ok(())
    }

    /// Tries the guest agent for `mode` where `flags` ask for it or leave the choice;
    /// true when the agent took it. Only the ACPI button (1) and the agent (2) exist for
    /// QEMU guests.
    async fn power_by_agent(&self, dom: &Dom, flags: u32, mode: &str) -> Result<bool, VirError> {
        let f: ShutdownFlags = common::error::flags(flags)?;
        check_flags(
            flags,
            (ShutdownFlags::ACPI_POWER_BTN | ShutdownFlags::GUEST_AGENT).bits(),
        )?;
        self.qmp_of(dom)?;
        let agent = f.contains(ShutdownFlags::GUEST_AGENT);
        let acpi = f.contains(ShutdownFlags::ACPI_POWER_BTN);
        if !(agent || (f.is_empty() && self.agent_available(dom).await)) {
            return Ok(false);
        }
        match self.agent_shutdown(dom, mode).await {
            Ok(()) => Ok(true),
            Err(e) if agent && !acpi => Err(e),
            Err(e) => {
                tracing::info!(domain = %dom.name(), "guest agent {mode} failed, using ACPI: {e}");
                Ok(false)
            }
        }
    }

    pub async fn reset(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.qmp_of(dom)?.execute("system_reset", None).await?;
        Ok(())
    }

    pub async fn suspend(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let qmp = self.qmp_of(dom)?;
        if dom.state().state() == DomainState::Paused {
            return Ok(());
        }
        qmp.execute("stop", None).await?;
        let paused = StateReason::Paused(PausedReason::User);
        if self.transition(dom, &[DomainState::Running], paused) {
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Paused))
                .await;
            self.save_status(dom).await;
        }
        Ok(())
    }

    pub async fn resume(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let qmp = self.qmp_of(dom)?;
        qmp.execute("cont", None).await?;
        let running = StateReason::Running(RunningReason::Unpaused);
        if self.transition(dom, &[DomainState::Paused], running) {
            self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::Unpaused))
                .await;
            self.save_status(dom).await;
        }
        Ok(())
    }

    /// Moves `dom` to `to` when its state is one of `from`; true when it did. The
    /// caller emits the event, then writes the status ([`Self::save_status`]): the
    /// signal does not wait for the file, and a daemon that dies in between reads the
    /// state back from QEMU when it reattaches.
    pub(super) fn transition(&self, dom: &Dom, from: &[DomainState], to: StateReason) -> bool {
        let mut g = dom.lock();
        if g.live.is_some() && from.contains(&g.state.state()) {
            g.state = to;
            true
        } else {
            false
        }
    }
}

impl Driver {
    pub async fn inject_nmi(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.qmp_of(dom)?.execute("inject-nmi", None).await?;
        Ok(())
    }

    /// `PMWakeup`: a guest suspended to RAM (S3) runs again.
    pub async fn pm_wakeup(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let qmp = self.qmp_of(dom)?;
        if dom.state().state() != DomainState::PmSuspended {
            return Err(VirError::operation_invalid(
                "Unable to wake up domain not in PM suspended state",
            ));
        }
        qmp.execute("system_wakeup", None).await?;
        Ok(())
    }

    /// `SendKey`: keys pressed together for `hold_ms` (QEMU's default when 0).
    pub async fn send_key(
        &self,
        dom: &Arc<Dom>,
        codeset: u32,
        hold_ms: u32,
        keycodes: &[u32],
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let keys = crate::keys::to_qnum(codeset, keycodes)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let qmp = self.qmp_of(dom)?;
        let mut args = serde_json::json!({
            "keys": keys
                .iter()
                .map(|k| serde_json::json!({"type": "number", "data": k}))
                .collect::<Vec<_>>(),
        });
        if hold_ms > 0 {
            args["hold-time"] = hold_ms.into();
        }
        qmp.execute("send-key", Some(args)).await?;
        Ok(())
    }
}
