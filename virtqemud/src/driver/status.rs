//! The status file of a run (`<run>/NAME.json`): what a daemon restarted after
//! `kill -9` needs to find its QEMU and reattach or end it. Written once before QEMU is
//! spawned (`starting`), again when its PID is known, then after every state change;
//! off the state lock and off the async workers. Writes of one domain are ordered by
//! its `status_write` lock, and its removal takes the same lock, so a late write never
//! brings back the file of a run that has ended.

use std::path::{Path, PathBuf};

use common::event::StateReason;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Dom, Driver};

/// What a restarted daemon needs to reattach to a running QEMU, or to find and end one
/// whose start it did not see through.
#[derive(Serialize, Deserialize)]
pub(super) struct Status {
    pub name: String,
    pub uuid: Uuid,
    pub id: u32,
    /// 0 until the spawn has returned it.
    #[serde(default)]
    pub pid: u32,
    pub qmp: PathBuf,
    /// QEMU's own `-pidfile`, written by QEMU early in its start.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// The run was still starting: QEMU not spawned yet, or spawned but not yet running
    /// the monitor task. What it held so far is in `holds_*`, `owners`, `dynamic_uid`
    /// and `xml` (ports, host devices).
    #[serde(default)]
    pub starting: bool,
    /// What a starting run has taken so far (a record written before this was known
    /// was only written once everything was taken).
    #[serde(default = "yes")]
    pub holds_hostdevs: bool,
    #[serde(default = "yes")]
    pub holds_nics: bool,
    pub xml: String,
    pub persistent: bool,
    /// libvirt's numbers, as the file has always held them.
    pub state: i32,
    pub reason: i32,
    /// Files handed to QEMU's user for this run, with their owners before.
    #[serde(default)]
    pub owners: Vec<crate::security::Owner>,
    /// The uid of its own QEMU runs under: reserved while the run lives, also for a
    /// restarted daemon, and released when it ends.
    #[serde(default)]
    pub dynamic_uid: Option<u32>,
    /// A save in progress, to be finished or undone by a restarted daemon.
    #[serde(default)]
    pub saving: Option<super::save::SaveIntent>,
    /// QEMU's names for the disks and NICs, once hotplug made them differ from places.
    #[serde(default)]
    pub ids: crate::model::QemuIds,
    /// A device being plugged in when the record was written (`super::hotplug`).
    #[serde(default)]
    pub plugging: Option<super::hotplug::Pending>,
    /// A block copy in progress (`super::blockcopy`).
    #[serde(default)]
    pub copying: Option<super::hotplug::Pending>,
    /// A migration in or out, and its phase (`super::migrate`).
    #[serde(default)]
    pub migration: Option<super::migrate::Migration>,
}

fn yes() -> bool {
    true
}

/// QEMU's `-pidfile`, in the run's own folder beside its monitor socket.
pub(super) fn qemu_pidfile(qmp: &Path) -> PathBuf {
    qmp.with_file_name("qemu.pid")
}

impl Status {
    pub fn state(&self) -> Option<StateReason> {
        StateReason::from_wire(self.state, self.reason)
    }
}

impl Driver {
    /// Writes the status of `dom` if it runs; a no-op otherwise.
    pub(super) async fn save_status(&self, dom: &Dom) {
        let _order = dom.status_write.lock().await;
        let snapshot = {
            let g = dom.lock();
            g.live.as_ref().map(|l| {
                let (state, reason) = g.state.wire();
                Status {
                    name: g.name.clone(),
                    uuid: dom.uuid,
                    id: l.id,
                    pid: l.pid,
                    qmp: l.qmp_path.clone(),
                    pidfile: Some(qemu_pidfile(&l.qmp_path)),
                    starting: false,
                    holds_hostdevs: true,
                    holds_nics: true,
                    xml: l.def.to_xml(None),
                    persistent: g.config.is_some(),
                    state,
                    reason,
                    owners: l.owners.clone(),
                    dynamic_uid: l.dynamic_uid,
                    saving: l.saving.clone(),
                    ids: l.def.ids.clone(),
                    plugging: l.plugging.clone(),
                    copying: l.copying.clone(),
                    migration: l.migration.clone(),
                }
            })
        };
        let Some(st) = snapshot else { return };
        if let Err(e) = self.write_status(&st).await {
            tracing::warn!("status not written: {e}");
        }
    }

    /// Writes the record of a run that is still starting (before QEMU is spawned, and
    /// again once its PID is known), ordered with the domain's other status writes.
    pub(super) async fn save_starting(&self, dom: &Dom, st: &Status) -> std::io::Result<()> {
        let _order = dom.status_write.lock().await;
        self.write_status(st).await
    }

    /// Durably, off the async workers: it syncs.
    async fn write_status(&self, st: &Status) -> std::io::Result<()> {
        let file = self.status_file(&st.name);
        let data = serde_json::to_vec(st).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || common::persist::write_atomic(&file, &data, 0o600))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Removes the files of a run that has ended: its folder (monitor, helper sockets),
    /// the pidfile and the status file.
    pub(super) async fn cleanup_files(&self, dom: &Dom, qmp: &Path) {
        let _order = dom.status_write.lock().await;
        let name = dom.name();
        let run = self.paths.run.clone();
        let (qmp, pid, status) = (
            qmp.to_owned(),
            self.pid_file(&name),
            self.status_file(&name),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&qmp);
            // The domain's own folder, never the run folder itself.
            if let Some(dir) = qmp.parent().filter(|d| {
                d.parent() == Some(run.as_path())
                    && d.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("domain-"))
            }) {
                let _ = std::fs::remove_dir_all(dir);
            }
            let _ = std::fs::remove_file(pid);
            let _ = common::persist::remove_durable(&status);
        })
        .await;
    }
}
