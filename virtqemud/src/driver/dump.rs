//! `CoreDump`: a running guest's state written to a file for later analysis, as
//! libvirt's QEMU driver writes it: QEMU's migration stream, or with MEMORY_ONLY the
//! guest memory as QEMU's `dump-guest-memory` writes it (ELF, kdump, Windows dump).
//! The file is written under a temporary name and renamed once complete.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::{ErrorCode, VirError};
use common::event::{DomainState, PausedReason, RunningReason, StateReason};
use serde_json::{json, Value};

use super::{io_err, not_running, Dom, Driver};

bitflags::bitflags! {
    /// `virDomainCoreDumpFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DumpFlags: u32 {
        const CRASH = 1;
        const LIVE = 2;
        const BYPASS_CACHE = 4;
        const RESET = 8;
        const MEMORY_ONLY = 16;
    }
}

/// `virDomainCoreDumpFormat` as `dump-guest-memory` names it.
fn format_name(format: u32) -> Result<&'static str, VirError> {
    Ok(match format {
        0 => "elf",
        1 => "kdump-zlib",
        2 => "kdump-lzo",
        3 => "kdump-snappy",
        4 => "win-dmp",
        f => return Err(VirError::invalid_arg(format!("unknown dump format {f}"))),
    })
}

/// Waits for `dump-guest-memory` to finish (query-dump).
async fn dump_done(qmp: &crate::qmp::Qmp) -> Result<(), VirError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let q = qmp.execute("query-dump", None).await?;
        match q.get("status").and_then(Value::as_str).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" => return Err(VirError::operation_failed("QEMU's memory dump failed")),
            _ if Instant::now() >= deadline => {
                return Err(VirError::new(
                    ErrorCode::OperationTimeout,
                    "QEMU's memory dump did not finish in 10 minutes",
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl Driver {
    pub async fn core_dump(
        &self,
        dom: &Arc<Dom>,
        to: &str,
        format: u32,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: DumpFlags = common::error::flags(flags)?;
        if f.contains(DumpFlags::CRASH | DumpFlags::RESET) {
            return Err(VirError::invalid_arg(
                "flags 'crash' and 'reset' are mutually exclusive",
            ));
        }
        let format_name = format_name(format)?;
        if format != 0 && !f.contains(DumpFlags::MEMORY_ONLY) {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                "a dump format needs a memory-only dump (MEMORY_ONLY)",
            ));
        }
        let target = crate::save::check_path(to)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (qmp, dom_dir, state) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let dir = l.qmp_path.parent().map(Path::to_path_buf);
            (l.qmp.clone(), dir, g.state.state())
        };
        let dom_dir = dom_dir.ok_or_else(|| VirError::internal("the run has no folder"))?;
        let pause = state == DomainState::Running && !f.contains(DumpFlags::LIVE);
        if pause {
            self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Dump),
            );
            qmp.execute("stop", None).await?;
        }
        let tmp = crate::save::temp_beside(&target);
        let r = async {
            if f.contains(DumpFlags::MEMORY_ONLY) {
                // QEMU writes it as its user, into its own folder; the daemon moves it.
                let inner = dom_dir.join("core.dump");
                let _ = std::fs::remove_file(&inner);
                qmp.execute(
                    "dump-guest-memory",
                    Some(json!({
                        "paging": false,
                        "protocol": format!("file:{}", inner.display()),
                        "format": format_name,
                        "detach": true,
                    })),
                )
                .await?;
                dump_done(&qmp).await?;
                let (from, t) = (inner.clone(), tmp.clone());
                tokio::task::spawn_blocking(move || {
                    std::fs::copy(&from, &t).map_err(|e| io_err("copy to", &t, &e))?;
                    let _ = std::fs::remove_file(&from);
                    Ok::<_, VirError>(())
                })
                .await
                .map_err(|e| VirError::internal(format!("file task: {e}")))??;
            } else {
                let file = crate::save::create(&tmp).map_err(|e| io_err("create", &tmp, &e))?;
                super::save::migrate_out(&qmp, &dom_dir, file).await?;
            }
            std::fs::rename(&tmp, &target).map_err(|e| io_err("rename", &target, &e))
        }
        .await;
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        if f.contains(DumpFlags::CRASH) && r.is_ok() {
            if let Some(l) = dom.lock().live.as_mut() {
                l.dumped_crash = true;
            }
            return self.destroy_locked(dom).await;
        }
        if f.contains(DumpFlags::RESET) {
            qmp.execute("system_reset", None).await?;
        }
        if pause {
            self.transition(
                dom,
                &[DomainState::Paused],
                StateReason::Running(RunningReason::Unpaused),
            );
            qmp.execute("cont", None).await?;
        }
        r
    }
}
