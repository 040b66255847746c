//! Changes to what a domain is, live and in its config, short of redefining it:
//! metadata (title, description, applications' elements), vCPUs and memory, CPU
//! pinning.

use std::sync::Arc;

use common::error::VirError;

use super::{io_err, no_definition, not_running, Change, Dom, Driver, Impact, VcpuFlags};
use crate::events::{DomainSignal, Tuned};
use crate::metadata;
use crate::model::DomainDef;

bitflags::bitflags! {
    /// `virDomainVcpuFlags` as SetVcpus takes them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SetVcpuFlags: u32 {
        const LIVE = 1;
        const CONFIG = 2;
        const MAXIMUM = 4;
        const GUEST = 8;
        const HOTPLUGGABLE = 16;
    }

    /// `virDomainMemoryModFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MemoryFlags: u32 {
        const LIVE = 1;
        const CONFIG = 2;
        const MAXIMUM = 4;
    }
}

fn no_agent() -> VirError {
    VirError::new(
        common::error::ErrorCode::OperationUnsupported,
        "the guest agent's view of vCPUs is not served yet",
    )
}

/// Which definitions a change with `flags` (`virDomainModificationImpact`) affects:
/// (live, config). "Current" is the live one of a running domain, else the config.
pub(super) fn affected(dom: &Dom, flags: u32) -> Result<(bool, bool), VirError> {
    let impact: Impact = common::error::flags(flags)?;
    let g = dom.lock();
    let (active, persistent) = (g.live.is_some(), g.config.is_some());
    let (mut live, mut config) = (
        impact.contains(Impact::LIVE),
        impact.contains(Impact::CONFIG),
    );
    if !live && !config {
        live = active;
        config = !active;
    }
    if live && !active {
        return Err(not_running());
    }
    if config && !persistent {
        return Err(VirError::operation_invalid(
            "transient domains do not have any persistent config",
        ));
    }
    Ok((live, config))
}

impl Driver {
    /// Writes `def` as the config of `dom`, then makes it the config (a failed write
    /// changes nothing).
    pub(super) async fn put_config(&self, dom: &Dom, def: DomainDef) -> Result<(), VirError> {
        let name = dom.name();
        let text = def.to_xml(None);
        self.configs
            .put(&format!("{name}.xml"), text.as_bytes(), 0o600)
            .await
            .map_err(|e| io_err("write", &self.config_file(&name), &e))?;
        dom.lock().config = Some(def);
        Ok(())
    }

    pub(super) fn config_of(dom: &Dom) -> Result<DomainDef, VirError> {
        dom.lock().config.clone().ok_or_else(no_definition)
    }

    /// `SetMetadata`: the config is written first (a failed write changes nothing),
    /// then the live definition, kept in the run's status file.
    pub async fn set_metadata(
        &self,
        dom: &Arc<Dom>,
        change: metadata::Change,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        if config {
            let mut def = Self::config_of(dom)?;
            change.apply(&mut def.dom);
            self.put_config(dom, def).await?;
        }
        if live {
            if let Some(l) = dom.lock().live.as_mut() {
                change.apply(&mut l.def.dom);
            }
            self.save_status(dom).await;
        }
        let kind = change.kind() as i32;
        self.outbox
            .send(Change::Metadata(dom.clone(), kind, change.uri().to_owned()))
            .await;
        Ok(())
    }

    /// `GetMetadata` of the live definition or (`Impact::CONFIG`) the config.
    pub fn metadata(
        &self,
        dom: &Dom,
        kind: metadata::Kind,
        uri: &str,
        flags: u32,
    ) -> Result<String, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        dom.read_definition(
            impact.contains(Impact::LIVE),
            impact.contains(Impact::CONFIG),
            |def| metadata::get(&def.dom, kind, uri),
        )?
    }
}

impl Driver {
    /// `GetVcpus`: the current count (or with MAXIMUM the maximum) of the running
    /// definition, or with CONFIG of the config.
    pub fn vcpus(&self, dom: &Dom, flags: u32) -> Result<u32, VirError> {
        let f: VcpuFlags = common::error::flags(flags)?;
        if f.contains(VcpuFlags::GUEST) {
            return Err(no_agent());
        }
        dom.read_definition(
            f.contains(VcpuFlags::LIVE),
            f.contains(VcpuFlags::CONFIG),
            |def| {
                if f.contains(VcpuFlags::MAXIMUM) {
                    def.dom.vcpus
                } else {
                    def.vcpus
                }
            },
        )
    }

    /// `SetVcpus`: the config's current or (MAXIMUM) maximum count, and the running
    /// QEMU's vCPUs by hotplug up to the maximum it was started with.
    pub async fn set_vcpus(&self, dom: &Arc<Dom>, count: u32, flags: u32) -> Result<(), VirError> {
        let f: SetVcpuFlags = common::error::flags(flags)?;
        if f.contains(SetVcpuFlags::GUEST) {
            return Err(no_agent());
        }
        if count == 0 {
            return Err(VirError::invalid_arg("the vCPU count must not be zero"));
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags & (Impact::all().bits()))?;
        let maximum = f.contains(SetVcpuFlags::MAXIMUM);
        if maximum && live {
            return Err(VirError::invalid_arg(
                "the maximum vCPU count of a running domain cannot change",
            ));
        }
        if config {
            let mut def = Self::config_of(dom)?;
            let d = &mut def.dom;
            if maximum {
                if d.cpu.as_ref().and_then(|c| c.topology).is_some() && count != d.vcpus {
                    return Err(VirError::new(
                        common::error::ErrorCode::ConfigUnsupported,
                        "the maximum vCPU count of a domain with a <cpu><topology> must match it",
                    ));
                }
                let current = d.current_vcpus.unwrap_or(d.vcpus).min(count);
                d.vcpus = count;
                d.current_vcpus = (current != count).then_some(current);
            } else {
                if count > d.vcpus {
                    return Err(VirError::invalid_arg(format!(
                        "requested vcpus is greater than max allowable vcpus for the persistent domain: {count} > {}",
                        d.vcpus
                    )));
                }
                d.current_vcpus = (count != d.vcpus).then_some(count);
            }
            self.put_config(dom, DomainDef::from(def.dom)).await?;
        }
        if live {
            let (qmp, max) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                (l.qmp.clone(), l.def.dom.vcpus)
            };
            if count > max {
                return Err(VirError::invalid_arg(format!(
                    "requested vcpus is greater than max allowable vcpus for the live domain: {count} > {max}"
                )));
            }
            let changed = crate::vcpus::set_online(&qmp, count).await;
            // What QEMU has now, also after an unplug the guest did not finish.
            let online = crate::vcpus::slots_online(&qmp).await?;
            if let Some(l) = dom.lock().live.as_mut() {
                let mut d = l.def.dom.clone();
                d.current_vcpus = (online != d.vcpus).then_some(online);
                let ids = std::mem::take(&mut l.def.ids);
                l.def = DomainDef::from(d);
                l.def.ids = ids;
            }
            self.save_status(dom).await;
            // New vCPU threads start in the emulator group: each to its own.
            self.regroup_vcpus(dom).await;
            changed?;
        }
        Ok(())
    }

    /// `SetMemory`: the current memory (or with MAXIMUM the config's maximum), of the
    /// running QEMU through its balloon.
    pub async fn set_memory(&self, dom: &Arc<Dom>, kib: u64, flags: u32) -> Result<(), VirError> {
        let f: MemoryFlags = common::error::flags(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags & (Impact::all().bits()))?;
        let maximum = f.contains(MemoryFlags::MAXIMUM);
        if maximum && live {
            return Err(VirError::operation_invalid(
                "cannot resize the maximum memory on an active domain",
            ));
        }
        if kib == 0 {
            return Err(VirError::invalid_arg("the memory size must not be zero"));
        }
        let too_much = |max: u64| {
            VirError::invalid_arg(format!(
                "cannot set memory higher than max memory: {kib} > {max} KiB"
            ))
        };
        if config {
            let mut def = Self::config_of(dom)?;
            let d = &mut def.dom;
            if maximum {
                d.memory_kib = kib;
                d.current_memory_kib = d.current_memory_kib.min(kib);
            } else {
                if kib > d.memory_kib {
                    return Err(too_much(d.memory_kib));
                }
                d.current_memory_kib = kib;
            }
            self.put_config(dom, DomainDef::from(def.dom)).await?;
        }
        if live {
            let (qmp, max, balloon) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                let balloon = l
                    .def
                    .dom
                    .devices
                    .memballoon
                    .as_ref()
                    .is_some_and(|m| m.model == "virtio");
                (l.qmp.clone(), l.def.dom.memory_kib, balloon)
            };
            if kib > max {
                return Err(too_much(max));
            }
            if !balloon {
                return Err(VirError::operation_invalid(
                    "Unable to change memory of active domain without the balloon device and guest OS balloon driver",
                ));
            }
            qmp.execute("balloon", Some(serde_json::json!({ "value": kib * 1024 })))
                .await?;
            if let Some(l) = dom.lock().live.as_mut() {
                l.def.dom.current_memory_kib = kib;
            }
            self.save_status(dom).await;
        }
        Ok(())
    }

    /// `SetMemoryStatsPeriod`: how often the balloon driver reports the guest's memory
    /// statistics, in seconds (0 stops them).
    pub async fn set_memory_stats_period(
        &self,
        dom: &Arc<Dom>,
        period: i32,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        let period = u32::try_from(period)
            .map_err(|_| VirError::invalid_arg("the statistics period must not be negative"))?;
        let no_balloon = || {
            VirError::operation_invalid(
                "Unable to change balloon collection period without a balloon device",
            )
        };
        let with_balloon = |def: &DomainDef| {
            def.dom
                .devices
                .memballoon
                .as_ref()
                .is_some_and(|m| m.model == "virtio")
        };
        if config {
            let mut def = Self::config_of(dom)?;
            if !with_balloon(&def) {
                return Err(no_balloon());
            }
            if let Some(m) = def.dom.devices.memballoon.as_mut() {
                m.stats_period = (period != 0).then_some(period);
            }
            self.put_config(dom, def).await?;
        }
        if live {
            let qmp = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                if !with_balloon(&l.def) {
                    return Err(no_balloon());
                }
                l.qmp.clone()
            };
            qmp.execute(
                "qom-set",
                Some(serde_json::json!({
                    "path": "/machine/peripheral/balloon0",
                    "property": "guest-stats-polling-interval",
                    "value": period,
                })),
            )
            .await?;
            if let Some(m) = dom
                .lock()
                .live
                .as_mut()
                .and_then(|l| l.def.dom.devices.memballoon.as_mut())
            {
                m.stats_period = (period != 0).then_some(period);
            }
            self.save_status(dom).await;
        }
        Ok(())
    }
}

/// QEMU's vCPU threads: (vCPU index, thread id), from query-cpus-fast.
pub(super) async fn vcpu_threads(qmp: &crate::qmp::Qmp) -> Result<Vec<(u32, u32)>, VirError> {
    let cpus = qmp.execute("query-cpus-fast", None).await?;
    Ok(cpus
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                u32::try_from(c.get("cpu-index")?.as_u64()?).ok()?,
                u32::try_from(c.get("thread-id")?.as_u64()?).ok()?,
            ))
        })
        .collect())
}

/// QEMU's I/O threads: (id, thread id), from query-iothreads (`iothreadN`).
pub(super) async fn iothread_threads(qmp: &crate::qmp::Qmp) -> Result<Vec<(u32, u32)>, VirError> {
    let list = qmp.execute("query-iothreads", None).await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t.get("id")?
                    .as_str()?
                    .strip_prefix("iothread")?
                    .parse()
                    .ok()?,
                u32::try_from(t.get("thread-id")?.as_u64()?).ok()?,
            ))
        })
        .collect())
}

/// Pins the thread of each `<cputune>` child `element` (by its `key` attribute, a
/// vCPU or I/O thread number) among `threads` (number, thread id) to its cpuset.
fn pin_listed(
    tune: &common::xml::Element,
    element: &str,
    key: &str,
    threads: &[(u32, u32)],
) -> Result<(), VirError> {
    for p in tune.children_named(element) {
        let (Some(n), Some(set)) = (
            p.parse_attr::<u32>(key).ok().flatten(),
            p.get_attr("cpuset"),
        ) else {
            continue;
        };
        if let Some((_, tid)) = threads.iter().find(|(i, _)| *i == n) {
            crate::pinning::pin(*tid, &crate::pinning::parse_list(set)?)?;
        }
    }
    Ok(())
}

/// The pins a definition gives, applied to a QEMU just started: its vCPU threads per
/// `<vcpupin>`, its other threads per `<emulatorpin>` (`<vcpu cpuset>` was applied to
/// the whole process before exec).
pub(super) async fn apply_pins(
    qmp: &crate::qmp::Qmp,
    pid: u32,
    def: &DomainDef,
) -> Result<(), VirError> {
    let tune = def.dom.other.iter().find(|e| e.name == "cputune");
    let Some(tune) = tune.filter(|t| {
        t.first("vcpupin").is_some()
            || t.first("emulatorpin").is_some()
            || t.first("iothreadpin").is_some()
    }) else {
        return Ok(());
    };
    let threads = vcpu_threads(qmp).await?;
    let io = iothread_threads(qmp).await?;
    pin_listed(tune, "iothreadpin", "iothread", &io)?;
    pin_listed(tune, "vcpupin", "vcpu", &threads)?;
    if let Some(set) = tune.first("emulatorpin").and_then(|p| p.get_attr("cpuset")) {
        let cpus = crate::pinning::parse_list(set)?;
        // I/O threads are not the emulator's: they keep their own pins.
        let own: Vec<u32> = threads.iter().chain(&io).map(|t| t.1).collect();
        for tid in crate::pinning::emulator_threads(pid, &own) {
            crate::pinning::pin(tid, &cpus)?;
        }
    }
    Ok(())
}

impl Driver {
    /// `GetVcpuPinInfo`: for each vCPU up to the maximum, the host CPUs it may run on:
    /// of a running vCPU its thread's, else what the definition pins it to.
    pub async fn vcpu_pin_info(&self, dom: &Dom, flags: u32) -> Result<Vec<Vec<bool>>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        let count = crate::pinning::host_cpu_count();
        let live =
            impact.contains(Impact::LIVE) || (!impact.contains(Impact::CONFIG) && dom.active());
        let (def, qmp) = {
            let g = dom.lock();
            match (live, &g.live, &g.config) {
                (true, Some(l), _) => (l.def.clone(), Some(l.qmp.clone())),
                (true, None, _) => return Err(not_running()),
                (false, _, Some(c)) => (c.clone(), None),
                (false, Some(l), None) => (l.def.clone(), None),
                (false, None, None) => return Err(no_definition()),
            }
        };
        let threads = match &qmp {
            Some(q) => vcpu_threads(q).await?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for vcpu in 0..def.dom.vcpus {
            let map = match threads.iter().find(|(i, _)| *i == vcpu) {
                Some((_, tid)) => crate::pinning::affinity(*tid, count)?,
                None => match crate::pinning::vcpu_pin(&def.dom, vcpu) {
                    Some(set) => crate::pinning::map_of(&crate::pinning::parse_list(&set)?, count),
                    None => vec![true; count],
                },
            };
            out.push(map);
        }
        Ok(out)
    }

    /// `GetEmulatorPinInfo`: the host CPUs QEMU's own threads may run on.
    pub fn emulator_pin_info(&self, dom: &Dom, flags: u32) -> Result<Vec<bool>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        let count = crate::pinning::host_cpu_count();
        let live =
            impact.contains(Impact::LIVE) || (!impact.contains(Impact::CONFIG) && dom.active());
        if live {
            let pid = dom.pid().ok_or_else(not_running)?;
            return crate::pinning::affinity(pid, count);
        }
        let set = dom.read_definition(false, true, |d| crate::pinning::emulator_pin(&d.dom))?;
        Ok(match set {
            Some(s) => crate::pinning::map_of(&crate::pinning::parse_list(&s)?, count),
            None => vec![true; count],
        })
    }

    /// `PinVcpu` (`vcpu` set) and `PinEmulator` (`vcpu` None): the running threads
    /// and/or the config's `<cputune>`.
    pub async fn pin(
        &self,
        dom: &Arc<Dom>,
        vcpu: Option<u32>,
        map: &[bool],
        flags: u32,
    ) -> Result<(), VirError> {
        let (cpus, set) = crate::pinning::requested(map)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        if let Some(v) = vcpu {
            let max = dom.read_definition(live, config && !live, |d| d.dom.vcpus)?;
            if v >= max {
                return Err(VirError::invalid_arg(format!(
                    "vcpu {v} is out of range of the domain's {max} vCPUs"
                )));
            }
        }
        if config {
            let mut def = Self::config_of(dom)?;
            crate::pinning::set_pin(&mut def.dom, vcpu, Some(&set));
            self.put_config(dom, def).await?;
        }
        if live {
            let (qmp, pid) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                (l.qmp.clone(), l.pid)
            };
            let threads = vcpu_threads(&qmp).await?;
            match vcpu {
                Some(v) => {
                    let (_, tid) = threads.iter().find(|(i, _)| *i == v).ok_or_else(|| {
                        VirError::operation_invalid(format!("vcpu {v} is not online"))
                    })?;
                    crate::pinning::pin(*tid, &cpus)?;
                }
                None => {
                    let vcpus: Vec<u32> = threads.iter().map(|t| t.1).collect();
                    for tid in crate::pinning::emulator_threads(pid, &vcpus) {
                        crate::pinning::pin(tid, &cpus)?;
                    }
                }
            }
            if let Some(l) = dom.lock().live.as_mut() {
                crate::pinning::set_pin(&mut l.def.dom, vcpu, Some(&set));
            }
            self.save_status(dom).await;
            let name = vcpu.map_or_else(
                || "cputune.emulatorpin".to_owned(),
                |v| format!("cputune.vcpupin{v}"),
            );
            self.tuned(dom, vec![(name, Tuned::Text(set))]).await;
        }
        Ok(())
    }

    /// libvirt's Tunable signal for a change to the running domain.
    pub(super) async fn tuned(&self, dom: &Arc<Dom>, params: Vec<(String, Tuned)>) {
        self.outbox
            .send(super::Change::Signal(
                dom.clone(),
                DomainSignal::Tunable(params),
            ))
            .await;
    }
}

impl Driver {
    /// `GetIOThreadInfo`: each I/O thread's id and the host CPUs it may run on.
    pub async fn iothread_info(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<Vec<(u32, Vec<bool>)>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        let count = crate::pinning::host_cpu_count();
        let live =
            impact.contains(Impact::LIVE) || (!impact.contains(Impact::CONFIG) && dom.active());
        if live {
            let qmp = {
                let g = dom.lock();
                g.live.as_ref().ok_or_else(not_running)?.qmp.clone()
            };
            let mut out = Vec::new();
            for (id, tid) in iothread_threads(&qmp).await? {
                out.push((id, crate::pinning::affinity(tid, count)?));
            }
            out.sort_by_key(|t| t.0);
            return Ok(out);
        }
        let pins = dom.read_definition(false, true, |d| {
            crate::iothreads::ids(&d.dom)
                .into_iter()
                .map(|id| (id, crate::iothreads::pin(&d.dom, id)))
                .collect::<Vec<_>>()
        })?;
        pins.into_iter()
            .map(|(id, set)| {
                Ok((
                    id,
                    match set {
                        Some(s) => crate::pinning::map_of(&crate::pinning::parse_list(&s)?, count),
                        None => vec![true; count],
                    },
                ))
            })
            .collect()
    }

    /// `AddIOThread` (`add`) and `DelIOThread`: an I/O thread of the running QEMU
    /// (object-add/-del; QEMU refuses to delete one a disk uses) and/or the config.
    pub async fn change_iothread(
        &self,
        dom: &Arc<Dom>,
        id: u32,
        add: bool,
        flags: u32,
    ) -> Result<(), VirError> {
        if id == 0 {
            return Err(VirError::invalid_arg("I/O thread ids start at 1"));
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        let change = |d: &mut crate::xml::Domain| -> Result<(), VirError> {
            let mut ids = crate::iothreads::ids(d);
            match (add, ids.contains(&id)) {
                (true, true) => Err(VirError::invalid_arg(format!(
                    "an IOThread is already using iothread_id '{id}'"
                ))),
                (false, false) => Err(VirError::invalid_arg(format!(
                    "cannot find IOThread '{id}' in iothreadids list"
                ))),
                (true, false) => {
                    ids.push(id);
                    ids.sort_unstable();
                    crate::iothreads::set(d, &ids);
                    Ok(())
                }
                (false, true) => {
                    ids.retain(|i| *i != id);
                    crate::iothreads::set(d, &ids);
                    crate::iothreads::set_pin(d, id, None);
                    Ok(())
                }
            }
        };
        if live {
            let (qmp, mut def) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                (l.qmp.clone(), l.def.dom.clone())
            };
            change(&mut def)?;
            let name = format!("iothread{id}");
            if add {
                let args = serde_json::json!({ "qom-type": "iothread", "id": name });
                qmp.execute("object-add", Some(args)).await?;
            } else {
                qmp.execute("object-del", Some(serde_json::json!({ "id": name })))
                    .await?;
            }
            if let Some(l) = dom.lock().live.as_mut() {
                let ids = std::mem::take(&mut l.def.ids);
                l.def = DomainDef::from(def);
                l.def.ids = ids;
            }
            self.save_status(dom).await;
        }
        if config {
            let mut def = Self::config_of(dom)?;
            change(&mut def.dom)?;
            self.put_config(dom, DomainDef::from(def.dom)).await?;
        }
        Ok(())
    }

    /// `PinIOThread`: the running I/O thread's CPUs and/or the config's `<iothreadpin>`.
    pub async fn pin_iothread(
        &self,
        dom: &Arc<Dom>,
        id: u32,
        map: &[bool],
        flags: u32,
    ) -> Result<(), VirError> {
        let (cpus, set) = crate::pinning::requested(map)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        let missing =
            || VirError::invalid_arg(format!("cannot find IOThread '{id}' in iothreadids list"));
        if config {
            let mut def = Self::config_of(dom)?;
            if !crate::iothreads::ids(&def.dom).contains(&id) {
                return Err(missing());
            }
            crate::iothreads::set_pin(&mut def.dom, id, Some(&set));
            self.put_config(dom, def).await?;
        }
        if live {
            let qmp = {
                let g = dom.lock();
                g.live.as_ref().ok_or_else(not_running)?.qmp.clone()
            };
            let (_, tid) = iothread_threads(&qmp)
                .await?
                .into_iter()
                .find(|(i, _)| *i == id)
                .ok_or_else(missing)?;
            crate::pinning::pin(tid, &cpus)?;
            if let Some(l) = dom.lock().live.as_mut() {
                crate::iothreads::set_pin(&mut l.def.dom, id, Some(&set));
            }
            self.save_status(dom).await;
            self.tuned(
                dom,
                vec![(format!("cputune.iothreadpin{id}"), Tuned::Text(set))],
            )
            .await;
        }
        Ok(())
    }
}
