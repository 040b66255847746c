//! What a domain is and does, read without changing it: XML, vCPUs, statistics,
//! block and scheduler parameters.

use std::collections::HashMap;

use common::error::{check_flags, VirError};

use super::{no_definition, not_running, Dom, Driver, Impact, VcpuFlags, XmlFlags};

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

    pub fn vcpus(&self, dom: &Dom, flags: u32) -> Result<u32, VirError> {
        common::error::flags::<VcpuFlags>(flags)?;
        dom.def().map(|d| d.vcpus).ok_or_else(no_definition)
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
        crate::stats::record(&src, groups).await
    }

    /// GetBlockIOTune: QEMU's throttle settings of one disk.
    pub async fn block_io_tune(
        &self,
        dom: &Dom,
        disk: &str,
        flags: u32,
    ) -> Result<HashMap<String, zbus::zvariant::OwnedValue>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        let (live, config) = {
            let g = dom.lock();
            (
                g.live.as_ref().map(|l| (l.def.clone(), l.qmp.clone())),
                g.config.clone(),
            )
        };
        match (live, config) {
            (Some((def, qmp)), _) if !impact.contains(Impact::CONFIG) => {
                crate::stats::block_io_tune(&def, &qmp, disk).await
            }
            (_, Some(def)) => crate::stats::block_io_tune_inactive(&def, disk),
            (Some((def, _)), None) => crate::stats::block_io_tune_inactive(&def, disk),
            (None, None) => Err(no_definition()),
        }
    }

    /// GetBlockIOParameters / GetSchedulerParameters: cgroup readers. QEMU runs in no
    /// cgroup of this daemon's, so a running domain gets libvirt's "not mounted" answer
    /// and an inactive one the unset defaults of its config.
    pub fn cgroup_parameters(
        &self,
        dom: &Dom,
        controller: &str,
        flags: u32,
    ) -> Result<HashMap<String, zbus::zvariant::OwnedValue>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        if dom.active() && !impact.contains(Impact::CONFIG) {
            return Err(crate::stats::no_cgroup(controller));
        }
        Ok(if controller == "blkio" {
            crate::stats::blkio_inactive()
        } else {
            crate::stats::sched_inactive()
        })
    }

    /// The SchedulerType property: libvirt answers ("posix", 9) for an inactive domain
    /// and needs the cpu cgroup controller for a running one.
    pub fn scheduler_type(&self, dom: &Dom) -> Result<(String, i32), VirError> {
        if dom.active() {
            return Err(crate::stats::no_cgroup("CPU"));
        }
        Ok(("posix".into(), 9))
    }
}
