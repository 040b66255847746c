//! A restarted daemon adopts what still runs: each status file names a QEMU that is
//! either reattached (the right process, its monitor answering) or released; then the
//! autostart domains start.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::event::{
    CrashedReason, DomainEvent, PausedReason, RunningReason, ShutdownReason, ShutoffReason,
    StateReason, StoppedDetail,
};
use serde_json::Value;
use tokio::sync::watch;

use super::domain::Live;
use super::start::Held;
use super::status::Status;
use super::{Dom, Driver};
use crate::model::DomainDef;
use common::child::ChildWatch;

use crate::process;
use crate::qmp::Qmp;

impl Driver {
    pub(super) async fn reattach_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.run) else {
            return;
        };
        let files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
            .collect();
        for f in files {
            let st: Status = match std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("ignoring status file {}: {e}", f.display());
                    let _ = std::fs::remove_file(&f);
                    continue;
                }
            };
            if st.id >= self.next_id.load(Ordering::SeqCst) {
                self.next_id.store(st.id + 1, Ordering::SeqCst);
            }
            self.reattach(st, &f).await;
        }
    }

    async fn reattach(&self, st: Status, file: &Path) {
        let Ok(def) = DomainDef::parse(&st.xml) else {
            tracing::warn!("status of '{}' holds an unusable definition", st.name);
            let _ = std::fs::remove_file(file);
            return;
        };
        let dom = {
            let mut reg = self.reg();
            match reg.by_uuid.get(&st.uuid).cloned() {
                Some(d) => Some((d, false)),
                None if reg.by_name.contains_key(&st.name) => None,
                None => {
                    let d = Dom::new(st.uuid, st.name.clone(), None, false);
                    reg.insert(st.name.clone(), d.clone());
                    Some((d, true))
                }
            }
        };
        let Some((dom, added)) = dom else {
            let _ = std::fs::remove_file(file);
            return;
        };
        if added {
            self.publish_added(&dom).await;
        }
        // The pidfd first: it pins the process, so the checks below are of the same
        // one that is then watched (a recycled PID cannot slip in between).
        let marker = st.qmp.to_string_lossy().into_owned();
        let qemu = ChildWatch::new(st.pid as i32)
            .ok()
            .filter(|w| !w.has_exited() && process::cmdline_mentions(st.pid, &marker));
        let attached = match qemu {
            Some(w) => match Qmp::connect(&st.qmp, Duration::from_secs(5)).await {
                Ok((qmp, events)) => Some((w, qmp, events)),
                Err(e) => {
                    tracing::warn!("domain '{}': monitor unusable: {e}", st.name);
                    None
                }
            },
            None => None,
        };
        let Some((qemu, qmp, events)) = attached else {
            tracing::warn!("domain '{}' died while the daemon was away", st.name);
            self.release(&dom, &def.dom, Held::all(st.qmp.clone(), st.owners.clone()))
                .await;
            dom.lock().state = StateReason::Shutoff(ShutoffReason::Crashed);
            self.lifecycle(&dom, DomainEvent::Stopped(StoppedDetail::Failed))
                .await;
            if !dom.persistent() {
                self.remove(&dom).await;
            }
            return;
        };
        let status = qmp.execute("query-status", None).await.ok();
        let run_state = status
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("running")
            .to_string();
        let new_state = state_after_restart(&run_state, st.state());
        let (exit_tx, exit_rx) = watch::channel(false);
        {
            let mut g = dom.lock();
            g.state = new_state;
            g.live = Some(Live {
                id: st.id,
                pid: st.pid,
                owners: st.owners.clone(),
                qmp_path: st.qmp.clone(),
                qmp,
                def,
                destroying: false,
                shutdown_seen: run_state == "shutdown",
                crashed: false,
                fake_reboot: false,
                exited: exit_rx,
            });
        }
        self.save_status(&dom).await;
        tracing::info!(domain = %st.name, pid = st.pid, "reattached ({run_state})");
        if let Some(d) = self.arc() {
            tokio::spawn(super::monitor::monitor(
                d,
                dom.clone(),
                events,
                qemu,
                exit_tx,
            ));
        }
    }

    pub(super) fn autostart_all(&self) {
        let doms: Vec<Arc<Dom>> = self
            .reg()
            .by_uuid
            .values()
            .filter(|d| d.autostart() && !d.active())
            .cloned()
            .collect();
        for dom in doms {
            let Some(d) = self.arc() else { return };
            tokio::spawn(async move {
                if let Err(e) = d.create(&dom, 0).await {
                    tracing::warn!(domain = %dom.name(), "autostart failed: {e}");
                }
            });
        }
    }
}

/// The state of an adopted QEMU from its run state, keeping the reason the status
/// file recorded where the state is still the same.
fn state_after_restart(run_state: &str, before: Option<StateReason>) -> StateReason {
    match run_state {
        "running" => match before {
            Some(s @ StateReason::Running(_)) => s,
            _ => StateReason::Running(RunningReason::Unknown),
        },
        "shutdown" => StateReason::Shutdown(ShutdownReason::User),
        "guest-panicked" => StateReason::Crashed(CrashedReason::Panicked),
        "suspended" => StateReason::PmSuspended,
        _ => match before {
            Some(s @ StateReason::Paused(_)) => s,
            _ => StateReason::Paused(PausedReason::Unknown),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::event::DomainState;

    #[test]
    fn adopted_state_keeps_the_recorded_reason() {
        let booted = StateReason::Running(RunningReason::Booted);
        assert_eq!(state_after_restart("running", Some(booted)), booted);
        let user = StateReason::Paused(PausedReason::User);
        assert_eq!(
            state_after_restart("running", Some(user)),
            StateReason::Running(RunningReason::Unknown)
        );
        assert_eq!(state_after_restart("paused", Some(user)), user);
        assert_eq!(
            state_after_restart("prelaunch", None).state(),
            DomainState::Paused
        );
    }
}
