//! What a domain is and does, read without changing it: XML, vCPUs, statistics,
//! block and scheduler parameters.

use std::collections::HashMap;

use common::error::{check_flags, VirError};

use super::{no_definition, not_running, Dom, Driver, XmlFlags};

/// `GetControlInfo`'s answer: libvirt's `virDomainControlInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlInfo {
    /// `virDomainControlState`: 0 OK, 1 JOB (an operation runs), 3 ERROR.
    pub state: u32,
    /// `virDomainControlErrorReason` when ERROR: 2 MONITOR (its monitor is gone).
    pub details: u32,
    /// Milliseconds in that state, for JOB.
    pub state_time_ms: u64,
}

impl Driver {
    pub fn xml_desc(&self, dom: &Dom, flags: u32) -> Result<String, VirError> {
        let flags: XmlFlags = common::error::flags(flags)?;
        let g = dom.lock();
        let secure = flags.contains(XmlFlags::SECURE);
        if flags.contains(XmlFlags::INACTIVE) {
            if let Some(c) = &g.config {
                return Ok(c.to_xml_for(None, secure));
            }
        }
        match (&g.live, &g.config) {
            (Some(l), _) => Ok(l.def.to_xml_for(Some(l.id), secure)),
            (None, Some(c)) => Ok(c.to_xml_for(None, secure)),
            (None, None) => Err(no_definition()),
        }
    }

    /// `GetCPUModelNames`: the CPU models the emulator for `arch` offers (libvirt
    /// reads its own CPU map; here the emulator is asked, which is what a guest can get).
    /// `host`, `max` and `base` are modes, not models, as in libvirt's list.
    pub async fn cpu_model_names(&self, arch: &str, flags: u32) -> Result<Vec<String>, VirError> {
        check_flags(flags, 0)?;
        match arch {
            "x86_64" | "i686" => {}
            "aarch64" | "armv7l" | "ppc64" | "ppc64le" | "s390x" | "riscv64" | "mips64" => {
                return Err(VirError::new(
                    common::error::ErrorCode::NoSupport,
                    format!("no emulator for architecture '{arch}' on this host"),
                ))
            }
            _ => {
                return Err(VirError::invalid_arg(format!(
                    "cannot find architecture {arch}"
                )))
            }
        }
        let caps = self.caps().await?;
        Ok(caps
            .cpu_models
            .iter()
            .filter(|m| !matches!(m.as_str(), "host" | "max" | "base"))
            .cloned()
            .collect())
    }

    /// `GetControlInfo`: whether the daemon can talk to the domain's QEMU now.
    pub fn control_info(&self, dom: &Dom, flags: u32) -> Result<ControlInfo, VirError> {
        check_flags(flags, 0)?;
        let closed = {
            let g = dom.lock();
            g.live.as_ref().ok_or_else(not_running)?.qmp.is_closed()
        };
        Ok(match (closed, dom.job_since()) {
            (true, _) => ControlInfo {
                state: 3,
                details: 2,
                state_time_ms: 0,
            },
            (false, Some(since)) => ControlInfo {
                state: 1,
                details: 0,
                state_time_ms: since.elapsed().as_millis() as u64,
            },
            (false, None) => ControlInfo {
                state: 0,
                details: 0,
                state_time_ms: 0,
            },
        })
    }

    /// `GetSecurityLabelList`: one label per security driver; this host's only one is
    /// DAC, whose label is QEMU's `+uid:+gid` (empty for an inactive domain), never
    /// enforcing, as libvirt's DAC driver reports it.
    pub fn security_labels(&self, dom: &Dom) -> Result<Vec<(String, bool)>, VirError> {
        let Some(pid) = dom.pid() else {
            return Ok(vec![(String::new(), false)]);
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| VirError::system(format!("reading QEMU's status (pid {pid})"), &e))?;
        let first = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("0")
                .to_owned()
        };
        Ok(vec![(
            format!("+{}:+{}", first("Uid:"), first("Gid:")),
            false,
        )])
    }

    /// `GetDiskErrors`: the disks QEMU saw an I/O error on (query-block's io-status),
    /// with `virDomainDiskErrorCode` 1 (unspecified) or 2 (no space).
    pub async fn disk_errors(&self, dom: &Dom, flags: u32) -> Result<Vec<(String, i32)>, VirError> {
        check_flags(flags, 0)?;
        let (def, qmp) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (l.def.clone(), l.qmp.clone())
        };
        let blocks = qmp.execute("query-block", None).await?;
        Ok(crate::stats::disk_errors(&def, &blocks))
    }

    /// Memory statistics (virDomainMemoryStatTags): actual balloon (6) and RSS (7), KiB.
    pub fn memory_stats(&self, dom: &Dom, flags: u32) -> Result<HashMap<i32, u64>, VirError> {
        check_flags(flags, 0)?;
        let (pid, mem) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (l.pid, l.def.memory_kib)
        };
        let mut m = HashMap::new();
        m.insert(6, mem);
        if let Some(rss) = crate::stats::proc_rss_kib(pid) {
            m.insert(7, rss);
        }
        Ok(m)
    }

    /// A stats record as virDomainListGetStats fills it, for the groups in `groups`
    /// (see `stats::requested_groups`).
    pub async fn stats(
        &self,
        dom: &Dom,
        groups: u32,
    ) -> HashMap<String, zbus::zvariant::OwnedValue> {
        let (st, def, live) = {
            let g = dom.lock();
            (
                g.state,
                g.live.as_ref().map(|l| l.def.clone()).or(g.config.clone()),
                g.live.as_ref().map(|l| (l.pid, l.qmp.clone())),
            )
        };
        let src = crate::stats::Source {
            state: st.wire(),
            def: def.as_ref(),
            live: live.as_ref().map(|(pid, q)| (*pid, q)),
        };
        let mut record = crate::stats::record(&src, groups).await;
        if groups & crate::stats::group::PERF != 0 {
            for (name, v) in self.perf_stats(dom) {
                if let Ok(v) = zbus::zvariant::OwnedValue::try_from(zbus::zvariant::Value::from(v))
                {
                    record.insert(format!("perf.{name}"), v);
                }
            }
        }
        record
    }
}
