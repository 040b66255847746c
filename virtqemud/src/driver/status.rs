//! The status file of a running domain (`<run>/NAME.json`): what a daemon restarted
//! after `kill -9` needs to reattach to its QEMU. Written after every state change, off
//! the state lock and off the async workers; writes of one domain are ordered by its
//! `status_write` lock, and its removal takes the same lock, so a late write never
//! brings back the file of a run that has ended.

use std::path::{Path, PathBuf};

use common::event::StateReason;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Dom, Driver};

/// What a restarted daemon needs to reattach to a running QEMU.
#[derive(Serialize, Deserialize)]
pub(super) struct Status {
    pub name: String,
    pub uuid: Uuid,
    pub id: u32,
    pub pid: u32,
    pub qmp: PathBuf,
    pub xml: String,
    pub persistent: bool,
    /// libvirt's numbers, as the file has always held them.
    pub state: i32,
    pub reason: i32,
    /// Files handed to QEMU's user for this run, with their owners before.
    #[serde(default)]
    pub owners: Vec<crate::security::Owner>,
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
                    xml: l.def.to_xml(None),
                    persistent: g.config.is_some(),
                    state,
                    reason,
                    owners: l.owners.clone(),
                }
            })
        };
        let Some(st) = snapshot else { return };
        let file = self.status_file(&st.name);
        let written = tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&st).map_err(std::io::Error::other)?;
            common::persist::write_atomic(&file, &data, 0o600)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("status not written: {e}"),
            Err(e) => tracing::warn!("status not written: {e}"),
        }
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
