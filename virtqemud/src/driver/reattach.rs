//! A restarted daemon adopts what still runs: each status file names a QEMU that is
//! either reattached (the right process, its monitor answering) or ended and released.
//! A run that was still starting is always ended, as libvirt ends a domain whose start
//! was interrupted: its QEMU, if it got that far, is found and killed. Then the
//! autostart domains start.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::event::{
    CrashedReason, DomainEvent, PausedReason, RunningReason, ShutdownReason, ShutoffReason,
    StateReason, StoppedDetail,
};
use futures_util::StreamExt;
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

/// How many guests are adopted at once after a restart.
const REATTACH_AT_ONCE: usize = 16;

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
        let mut records = Vec::new();
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
            records.push((st, f));
        }
        // Each guest's monitor answers on its own: adopt them side by side, so a restart
        // with many guests takes about as long as with a few.
        futures_util::stream::iter(records)
            .for_each_concurrent(REATTACH_AT_ONCE, |(st, f)| async move {
                self.reattach(st, &f).await;
            })
            .await;
    }

    async fn reattach(&self, st: Status, file: &Path) {
        let Ok(mut def) = DomainDef::parse(&st.xml) else {
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
            if st.starting {
                // Another domain has the name now: this run is nobody's, end it quietly.
                let orphan = Dom::new(st.uuid, st.name.clone(), None, false);
                self.end_interrupted_start(&orphan, &st, &def).await;
            }
            let _ = std::fs::remove_file(file);
            return;
        };
        if added {
            self.publish_added(&dom).await;
        }
        if st.starting {
            self.end_interrupted_start(&dom, &st, &def).await;
            dom.lock().state = StateReason::Shutoff(ShutoffReason::Failed);
            self.lifecycle(&dom, DomainEvent::Stopped(StoppedDetail::Failed))
                .await;
            if !dom.persistent() {
                self.remove(&dom).await;
            }
            return;
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
                    // A QEMU nobody can drive is not left running unknown.
                    tracing::warn!("domain '{}': monitor unusable, killing it: {e}", st.name);
                    kill_and_wait(&w).await;
                    None
                }
            },
            None => None,
        };
        let Some((qemu, qmp, events)) = attached else {
            tracing::warn!("domain '{}' died while the daemon was away", st.name);
            self.release(
                &dom,
                &def.dom,
                Held::all(st.qmp.clone(), st.owners.clone(), st.dynamic_uid)
                    .with_cgroup(self.cgroup_of(st.id, &st.name)),
            )
            .await;
            // A save whose image is whole ended the run as a save does.
            let saved = match &st.saving {
                Some(i) if i.image.exists() => {
                    tracing::warn!(domain = %st.name, "its save had finished: the image is whole");
                    true
                }
                Some(i) => {
                    let _ = std::fs::remove_file(&i.temp);
                    false
                }
                None => {
                    self.drop_consumed_managed_save(&dom);
                    false
                }
            };
            let (reason, event) = if saved {
                (ShutoffReason::Saved, StoppedDetail::Saved)
            } else {
                (ShutoffReason::Crashed, StoppedDetail::Failed)
            };
            dom.lock().state = StateReason::Shutoff(reason);
            self.lifecycle(&dom, DomainEvent::Stopped(event)).await;
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
        def.ids = st.ids.clone();
        let new_state = state_after_restart(&run_state, st.state());
        let changed = Some(new_state) != st.state();
        let (exit_tx, exit_rx) = watch::channel(false);
        {
            let mut g = dom.lock();
            g.state = new_state;
            g.live = Some(Live {
                id: st.id,
                pid: st.pid,
                owners: st.owners.clone(),
                dynamic_uid: st.dynamic_uid,
                qmp_path: st.qmp.clone(),
                qmp,
                perf: crate::perf::Counters::reopen(&def.dom.other, st.pid, &st.name),
                def,
                destroying: false,
                shutdown_seen: run_state == "shutdown",
                crashed: false,
                fake_reboot: false,
                saved: false,
                dumped_crash: false,
                saving: st.saving.clone(),
                plugging: st.plugging.clone(),
                copying: st.copying.clone(),
                migration: st.migration.clone(),
                exited: exit_rx,
            });
        }
        // Devices and vCPUs as QEMU has them: a hotplug the kill cut is finished or
        // undone here, before any event or call can read the definition.
        let reconciled = self.reconcile_devices(&dom).await;
        // Its uid stays its own: no new run may get it while this QEMU runs.
        if let (Some(uid), Some(pool)) = (st.dynamic_uid, self.run_as.pool()) {
            pool.reserve(uid);
        }
        // The record on disk is already this run's, unless its state moved on.
        if changed || reconciled {
            self.save_status(&dom).await;
        }
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
        match st.saving {
            Some(intent) => self.finish_interrupted_save(&dom, intent).await,
            None => self.drop_consumed_managed_save(&dom),
        }
        if let Some(m) = st.migration {
            self.settle_migration(&dom, m).await;
        }
    }

    /// Ends a run whose start the daemon did not see through: kills its QEMU if one got
    /// spawned, and releases what the run took.
    async fn end_interrupted_start(&self, dom: &Dom, st: &Status, def: &DomainDef) {
        match find_starting_qemu(st) {
            Some(w) => {
                tracing::warn!(domain = %st.name, pid = w.pid(),
                    "start was interrupted by the daemon's exit: killing its QEMU");
                kill_and_wait(&w).await;
            }
            None => tracing::warn!(domain = %st.name, "start was interrupted before QEMU ran"),
        }
        if let Some(dir) = st.qmp.parent() {
            crate::tpm::kill(dir).await;
        }
        let held = Held {
            hostdevs: st.holds_hostdevs,
            nics: st.holds_nics,
            ..Held::all(st.qmp.clone(), st.owners.clone(), st.dynamic_uid)
                .with_cgroup(self.cgroup_of(st.id, &st.name))
        };
        self.release(dom, &def.dom, held).await;
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

/// The QEMU of a run that was starting, if it runs: by the recorded PID, else by its
/// own pidfile, else by a command line naming the run's monitor socket (a QEMU spawned
/// just before the daemon died has no PID recorded and may not have written its
/// pidfile yet). Each candidate's pidfd is opened before it is checked.
fn find_starting_qemu(st: &Status) -> Option<ChildWatch> {
    let marker = st.qmp.to_string_lossy().into_owned();
    let from_pidfile = st
        .pidfile
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    let ours = |pid: u32| {
        ChildWatch::new(pid as i32)
            .ok()
            .filter(|w| !w.has_exited() && process::cmdline_mentions(pid, &marker))
    };
    [Some(st.pid).filter(|p| *p != 0), from_pidfile]
        .into_iter()
        .flatten()
        .find_map(ours)
        .or_else(|| process::pids_mentioning(&marker).into_iter().find_map(ours))
}

/// SIGKILL, then waits (bounded) until the process is gone.
async fn kill_and_wait(w: &ChildWatch) {
    w.signal(nix::sys::signal::Signal::SIGKILL);
    if tokio::time::timeout(Duration::from_secs(10), w.exited())
        .await
        .is_err()
    {
        tracing::error!(pid = w.pid(), "QEMU did not exit after SIGKILL");
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
