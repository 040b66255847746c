//! `org.libvirt.Domain`, one object per domain at `common::objpath::domain(&uuid)`.

use std::collections::HashMap;
use std::sync::Arc;

use common::error::{BusError, VirError};
use common::typed_params::TypedParams;
use serde::Serialize;
use uuid::Uuid;
use zbus::zvariant::Type;

use crate::driver::{Dom, Driver};

/// `GetState`'s reply: state and reason as ONE struct `(ii)`, as libvirt-dbus sends it
/// (returned in a 1-tuple: zbus writes a returned struct's fields as the body itself).
#[derive(Serialize, Type)]
pub struct State(i32, i32);

/// `GetBlockJobInfo`'s reply: type, bandwidth, cur, end as ONE struct `(ittt)`.
#[derive(serde::Serialize, zbus::zvariant::Type)]
pub struct BlockJobInfo(i32, u64, u64, u64);

/// `GetControlInfo`'s reply, ONE struct `(uut)`.
#[derive(Serialize, Type)]
pub struct ControlInfo(u32, u32, u64);

/// `GetJobInfo`'s reply, ONE struct `(ittttttttttt)`: the job type, then libvirt's
/// eleven counters (time elapsed and remaining, data, memory and file totals).
#[derive(Serialize, Type)]
pub struct JobInfo(i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

/// `GetTime`'s reply, ONE struct `(tu)`: seconds and nanoseconds.
#[derive(Serialize, Type)]
pub struct Time(u64, u32);

/// A job's statistics as libvirt's typed parameters.
pub fn stat_params(stats: Vec<(String, crate::events::Stat)>) -> TypedParams {
    use crate::events::Stat;
    use zbus::zvariant::OwnedValue;
    stats
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Stat::U64(n) => OwnedValue::from(n),
                Stat::I32(n) => OwnedValue::from(n),
                Stat::Bool(b) => OwnedValue::from(b),
            };
            (k, v)
        })
        .collect::<HashMap<_, _>>()
        .into()
}

/// The interface's name, for PropertiesChanged.
pub const INTERFACE: &str = "org.libvirt.Domain";

pub struct Domain {
    pub driver: Arc<Driver>,
    pub uuid: Uuid,
}

impl Domain {
    fn dom(&self) -> Result<Arc<Dom>, VirError> {
        self.driver.lookup_uuid(&self.uuid)
    }
    fn prop_dom(&self) -> zbus::fdo::Result<Arc<Dom>> {
        self.dom().map_err(|e| zbus::fdo::Error::Failed(e.message))
    }
}

#[zbus::interface(name = "org.libvirt.Domain")]
impl Domain {
    #[zbus(property(emits_changed_signal = "false"))]
    fn name(&self) -> zbus::fdo::Result<String> {
        Ok(self.prop_dom()?.name())
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.to_string()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn id(&self) -> zbus::fdo::Result<u32> {
        Ok(self.prop_dom()?.id().unwrap_or(u32::MAX))
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn active(&self) -> zbus::fdo::Result<bool> {
        Ok(self.prop_dom()?.active())
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn persistent(&self) -> zbus::fdo::Result<bool> {
        Ok(self.prop_dom()?.persistent())
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn autostart(&self) -> zbus::fdo::Result<bool> {
        Ok(self.prop_dom()?.autostart())
    }

    #[zbus(property)]
    async fn set_autostart(
        &self,
        #[zbus(header)] hdr: Option<zbus::message::Header<'_>>,
        value: bool,
    ) -> zbus::fdo::Result<()> {
        common::access::check_set(hdr.as_ref()).await?;
        let dom = self.prop_dom()?;
        self.driver
            .set_autostart(&dom, value)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.message))
    }

    #[zbus(property(emits_changed_signal = "false"), name = "OSType")]
    fn os_type(&self) -> zbus::fdo::Result<String> {
        Ok(self.prop_dom()?.os_type())
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn updated(&self) -> bool {
        false
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn scheduler_type(&self) -> zbus::fdo::Result<(String, i32)> {
        let dom = self.prop_dom()?;
        self.driver
            .scheduler_type(&dom)
            .map_err(|e| zbus::fdo::Error::Failed(e.message))
    }

    #[zbus(name = "Create")]
    async fn create(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.create(&self.dom()?, flags).await?)
    }

    #[zbus(name = "Destroy")]
    async fn destroy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.destroy(&self.dom()?, flags).await?)
    }

    #[zbus(name = "Shutdown")]
    async fn shutdown(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.shutdown(&self.dom()?, flags).await?)
    }

    #[zbus(name = "Reboot")]
    async fn reboot(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.reboot(&self.dom()?, flags).await?)
    }

    #[zbus(name = "Reset")]
    async fn reset(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.reset(&self.dom()?, flags).await?)
    }

    #[zbus(name = "Suspend")]
    async fn suspend(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.suspend(&self.dom()?).await?)
    }

    #[zbus(name = "Resume")]
    async fn resume(&self, #[zbus(header)] hdr: zbus::message::Header<'_>) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.resume(&self.dom()?).await?)
    }

    #[zbus(name = "Undefine")]
    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.undefine(&self.dom()?, flags).await?)
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check_with_flags(&hdr, flags).await?;
        let dom = self.dom()?;
        Ok(self.driver.xml_desc(&dom, flags)?)
    }

    #[zbus(name = "GetState", out_args("state"))]
    async fn get_state(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(State,), BusError> {
        common::access::check(&hdr).await?;
        common::error::check_flags(flags, 0)?;
        let (state, reason) = self.dom()?.state().wire();
        Ok((State(state, reason),))
    }

    #[zbus(name = "GetStats")]
    async fn get_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        stats: u32,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        common::error::check_flags(flags, crate::stats::STATS_FLAGS)?;
        let groups = crate::stats::requested_groups(stats, flags)?;
        let dom = self.dom()?;
        Ok(self.driver.stats(&dom, groups).await.into())
    }

    #[zbus(name = "GetBlockIOTune")]
    async fn get_block_io_tune(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.block_io_tune(&dom, disk, flags).await?.into())
    }

    async fn block_pull(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.block_pull(&dom, disk, bandwidth, flags).await?)
    }

    #[zbus(name = "BlockCopy")]
    async fn block_copy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        destxml: &str,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .block_copy(&dom, disk, destxml, &params, flags)
            .await?)
    }

    #[zbus(name = "BlockRebase")]
    async fn block_rebase(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        base: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .block_rebase(&dom, disk, base, bandwidth, flags)
            .await?)
    }

    async fn block_commit(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        base: &str,
        top: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .block_commit(&dom, disk, base, top, bandwidth, flags)
            .await?)
    }

    #[zbus(out_args("blockJobInfo"))]
    async fn get_block_job_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        flags: u32,
    ) -> Result<(BlockJobInfo,), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        let (kind, bw, cur, end) = self.driver.block_job_info(&dom, disk, flags).await?;
        Ok((BlockJobInfo(kind, bw, cur, end),))
    }

    async fn block_job_abort(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.block_job_abort(&dom, disk, flags).await?)
    }

    async fn block_job_set_speed(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .block_job_set_speed(&dom, disk, bandwidth, flags)
            .await?)
    }

    /// Tuning changed on the running domain; typed parameters, double-wrapped as
    /// libvirt-dbus sends them.
    #[zbus(signal)]
    pub async fn tunable(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        params: TypedParams,
    ) -> zbus::Result<()>;

    /// A medium dropped at start.
    #[zbus(signal)]
    pub async fn disk_change(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        old_src_path: &str,
        new_src_path: &str,
        device: &str,
        reason: i32,
    ) -> zbus::Result<()>;

    /// A block job ended or is ready (libvirt-dbus's names).
    #[zbus(signal)]
    pub async fn block_job(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        disk: &str,
        r#type: i32,
        status: i32,
    ) -> zbus::Result<()>;

    #[zbus(name = "OpenGraphicsFD")]
    async fn open_graphics_fd(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        idx: u32,
        flags: u32,
    ) -> Result<zbus::zvariant::OwnedFd, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.open_graphics_fd(&dom, idx, flags).await?.into())
    }

    #[zbus(name = "SetBlockIOTune")]
    async fn set_block_io_tune(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_block_io_tune(&dom, disk, &params, flags)
            .await?)
    }

    #[zbus(name = "GetBlockIOParameters")]
    async fn get_block_io_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.blkio_parameters(&dom, flags)?.into())
    }

    #[zbus(name = "SetBlockIOParameters")]
    async fn set_block_io_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_blkio_parameters(&dom, &params, flags)
            .await?)
    }

    #[zbus(name = "GetMemoryParameters")]
    async fn get_memory_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.memory_parameters(&dom, flags)?.into())
    }

    #[zbus(name = "SetMemoryParameters")]
    async fn set_memory_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_memory_parameters(&dom, &params, flags)
            .await?)
    }

    #[zbus(name = "SetSchedulerParameters")]
    async fn set_scheduler_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_scheduler_parameters(&dom, &params, flags)
            .await?)
    }

    #[zbus(name = "GetNumaParameters")]
    async fn get_numa_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.numa_parameters(&dom, flags)?.into())
    }

    #[zbus(name = "SetNumaParameters")]
    async fn set_numa_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_numa_parameters(&dom, &params, flags)
            .await?)
    }

    #[zbus(name = "GetSchedulerParameters")]
    async fn get_scheduler_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.scheduler_parameters(&dom, flags)?.into())
    }

    #[zbus(name = "GetVcpus")]
    async fn get_vcpus(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<u32, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.vcpus(&dom, flags)?)
    }

    #[zbus(name = "SetVcpus")]
    async fn set_vcpus(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        vcpus: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.set_vcpus(&self.dom()?, vcpus, flags).await?)
    }

    #[zbus(name = "SetMemory")]
    async fn set_memory(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        memory: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.set_memory(&self.dom()?, memory, flags).await?)
    }

    #[zbus(name = "SetMemoryStatsPeriod")]
    async fn set_memory_stats_period(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        period: i32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .set_memory_stats_period(&self.dom()?, period, flags)
            .await?)
    }

    /// As libvirt's QEMU driver: files for a guest's init are an LXC notion.
    #[zbus(name = "CreateWithFiles")]
    async fn create_with_files(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        _files: Vec<zbus::zvariant::OwnedFd>,
        _flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        self.dom()?;
        Err(no_support("virDomainCreateWithFiles"))
    }

    /// As libvirt's QEMU driver: signalling processes inside the guest is an LXC
    /// notion (a QEMU guest's processes are not the host's).
    #[zbus(name = "SendProcessSignal")]
    async fn send_process_signal(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        _pid_value: i64,
        _sig_num: u32,
        _flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        self.dom()?;
        Err(no_support("virDomainSendProcessSignal"))
    }

    #[zbus(name = "GetInterfaceParameters")]
    async fn get_interface_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        device: &str,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(TypedParams(
            self.driver.interface_parameters(&dom, device, flags)?,
        ))
    }

    #[zbus(name = "SetInterfaceParameters")]
    async fn set_interface_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        device: &str,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .set_interface_parameters(&dom, device, &params, flags)
            .await?)
    }

    #[zbus(name = "GetPerfEvents")]
    async fn get_perf_events(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(TypedParams(self.driver.perf_events(&dom, flags)?))
    }

    #[zbus(name = "SetPerfEvents")]
    async fn set_perf_events(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.set_perf_events(&dom, &params, flags).await?)
    }

    #[zbus(name = "InjectNMI")]
    async fn inject_nmi(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.inject_nmi(&self.dom()?, flags).await?)
    }

    #[zbus(name = "PMWakeup")]
    async fn pm_wakeup(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.pm_wakeup(&self.dom()?, flags).await?)
    }

    #[zbus(name = "SendKey")]
    async fn send_key(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        codeset: u32,
        holdtime: u32,
        keycodes: Vec<u32>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .send_key(&self.dom()?, codeset, holdtime, &keycodes, flags)
            .await?)
    }

    #[zbus(name = "AbortJob")]
    async fn abort_job(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.abort_job(&self.dom()?).await?)
    }

    #[zbus(name = "GetJobInfo", out_args("jobInfo"))]
    async fn get_job_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(JobInfo,), BusError> {
        common::access::check(&hdr).await?;
        let (kind, [a, b, c, d, e, f, g, h, i, j, k]) = self.driver.job_info(&*self.dom()?).await?;
        Ok((JobInfo(kind, a, b, c, d, e, f, g, h, i, j, k),))
    }

    #[zbus(name = "GetJobStats", out_args("stats"))]
    async fn get_job_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<((i32, TypedParams),), BusError> {
        common::access::check(&hdr).await?;
        let (kind, stats) = self.driver.job_stats(&*self.dom()?, flags).await?;
        Ok(((kind, stat_params(stats)),))
    }

    #[zbus(name = "MigrateToURI3")]
    async fn migrate_to_uri3(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        dconuri: &str,
        params: TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .migrate_to_uri3(&dom, dconuri, &params, flags)
            .await?)
    }

    #[zbus(name = "MigrateSetMaxSpeed")]
    async fn migrate_set_max_speed(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .migrate_set_max_speed(&dom, bandwidth, flags)
            .await?)
    }

    #[zbus(name = "MigrateGetMaxSpeed")]
    async fn migrate_get_max_speed(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<u64, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.migrate_get_max_speed(&*self.dom()?, flags)?)
    }

    #[zbus(name = "MigrateSetMaxDowntime")]
    async fn migrate_set_max_downtime(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        downtime: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .migrate_set_max_downtime(&dom, downtime, flags)
            .await?)
    }

    #[zbus(name = "MigrateGetCompressionCache")]
    async fn migrate_get_compression_cache(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<u64, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .migrate_get_compression_cache(&dom, flags)
            .await?)
    }

    #[zbus(name = "MigrateSetCompressionCache")]
    async fn migrate_set_compression_cache(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        cache_size: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self
            .driver
            .migrate_set_compression_cache(&dom, cache_size, flags)
            .await?)
    }

    #[zbus(name = "MigrateStartPostCopy")]
    async fn migrate_start_post_copy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.migrate_start_postcopy(&dom, flags).await?)
    }

    /// An outgoing migration's pass over the guest's memory.
    #[zbus(signal)]
    pub async fn migration_iteration(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        iteration: i32,
    ) -> zbus::Result<()>;

    /// A migration completed: its statistics, double-wrapped as libvirt-dbus sends them.
    #[zbus(signal)]
    pub async fn job_completed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        params: TypedParams,
    ) -> zbus::Result<()>;

    #[zbus(name = "GetSecurityLabelList")]
    async fn get_security_label_list(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<Vec<(String, bool)>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.security_labels(&*self.dom()?)?)
    }

    #[zbus(name = "GetControlInfo", out_args("controlInfo"))]
    async fn get_control_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(ControlInfo,), BusError> {
        common::access::check(&hdr).await?;
        let c = self.driver.control_info(&*self.dom()?, flags)?;
        Ok((ControlInfo(c.state, c.details, c.state_time_ms),))
    }

    #[zbus(name = "GetDiskErrors")]
    async fn get_disk_errors(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<(String, i32)>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.disk_errors(&*self.dom()?, flags).await?)
    }

    #[zbus(name = "GetHostname")]
    async fn get_hostname(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.guest_hostname(&self.dom()?, flags).await?)
    }

    #[zbus(name = "GetTime", out_args("time"))]
    async fn get_time(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(Time,), BusError> {
        common::access::check(&hdr).await?;
        let (s, ns) = self.driver.guest_time(&self.dom()?, flags).await?;
        Ok((Time(s, ns),))
    }

    #[zbus(name = "SetTime")]
    async fn set_time(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        seconds: u64,
        nseconds: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .set_guest_time(&self.dom()?, seconds, nseconds, flags)
            .await?)
    }

    #[zbus(name = "FSFreeze")]
    async fn fs_freeze(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        mountpoints: Vec<String>,
        flags: u32,
    ) -> Result<u32, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .fs_freeze(&self.dom()?, &mountpoints, flags)
            .await?)
    }

    #[zbus(name = "FSThaw")]
    async fn fs_thaw(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        mountpoints: Vec<String>,
        flags: u32,
    ) -> Result<u32, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .fs_thaw(&self.dom()?, &mountpoints, flags)
            .await?)
    }

    #[zbus(name = "FSTrim")]
    async fn fs_trim(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        mountpoint: &str,
        minimum: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .fs_trim(&self.dom()?, mountpoint, minimum, flags)
            .await?)
    }

    #[zbus(name = "GetFSInfo")]
    async fn get_fs_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<(String, String, String, Vec<String>)>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.fs_info(&self.dom()?, flags).await?)
    }

    #[zbus(name = "GetGuestVcpus")]
    async fn get_guest_vcpus(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<TypedParams, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.guest_vcpus(&self.dom()?, flags).await?.into())
    }

    #[zbus(name = "SetGuestVcpus")]
    async fn set_guest_vcpus(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        vcpumap: Vec<bool>,
        state: i32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .set_guest_vcpus(&self.dom()?, &vcpumap, state, flags)
            .await?)
    }

    #[zbus(name = "SetUserPassword")]
    async fn set_user_password(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        user: &str,
        password: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .set_user_password(&self.dom()?, user, password, flags)
            .await?)
    }

    #[zbus(name = "InterfaceAddresses")]
    async fn interface_addresses(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        source: u32,
        flags: u32,
    ) -> Result<Vec<crate::driver::GuestInterface>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .interface_addresses(&self.dom()?, source, flags)
            .await?)
    }

    #[zbus(signal, name = "BalloonChange")]
    pub async fn balloon_change(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        actual: u64,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "Reboot")]
    pub async fn reboot_signal(
        emitter: &zbus::object_server::SignalEmitter<'_>,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "RTCChange")]
    pub async fn rtc_change(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        utcoffset: i64,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "Watchdog")]
    pub async fn watchdog(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        action: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "IOError")]
    pub async fn io_error(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        src_path: &str,
        device: &str,
        action: i32,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "TrayChange")]
    pub async fn tray_change(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        device: &str,
        reason: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "BlockThreshold")]
    pub async fn block_threshold(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        device: &str,
        dev_path: &str,
        threshold: u64,
        excess: u64,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "PMSuspend")]
    pub async fn pm_suspend(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        reason: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "PMSuspendDisk")]
    pub async fn pm_suspend_disk(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        reason: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "PMWakeup")]
    pub async fn pm_wakeup_signal(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        reason: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "Graphics")]
    pub async fn graphics(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        phase: i32,
        local: crate::events::GraphicsAddress,
        remote: crate::events::GraphicsAddress,
        auth_scheme: &str,
        identities: Vec<(String, String)>,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "DeviceAdded")]
    pub async fn device_added(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        device: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "DeviceRemoved")]
    pub async fn device_removed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        device: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal, name = "DeviceRemovalFailed")]
    pub async fn device_removal_failed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        device: &str,
    ) -> zbus::Result<()>;

    #[zbus(name = "AttachDevice")]
    async fn attach_device(
        &self,
        xml: &str,
        flags: u32,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.attach_device(&self.dom()?, xml, flags).await?)
    }

    #[zbus(name = "DetachDevice")]
    async fn detach_device(
        &self,
        xml: &str,
        flags: u32,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.detach_device(&self.dom()?, xml, flags).await?)
    }

    #[zbus(name = "UpdateDevice")]
    async fn update_device(
        &self,
        xml: &str,
        flags: u32,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.update_device(&self.dom()?, xml, flags).await?)
    }

    #[zbus(signal, name = "AgentEvent")]
    pub async fn agent_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        state: i32,
        reason: i32,
    ) -> zbus::Result<()>;

    #[zbus(name = "Save")]
    async fn save(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        to: &str,
        xml: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.save(&self.dom()?, Some(to), xml, flags).await?)
    }

    #[zbus(name = "ManagedSave")]
    async fn managed_save(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.save(&self.dom()?, None, "", flags).await?)
    }

    #[zbus(name = "HasManagedSaveImage")]
    async fn has_managed_save_image(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<bool, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.has_managed_save(&*self.dom()?, flags)?)
    }

    #[zbus(name = "ManagedSaveRemove")]
    async fn managed_save_remove(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.managed_save_remove(&self.dom()?, flags).await?)
    }

    #[zbus(name = "SnapshotCreateXML")]
    async fn snapshot_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<zbus::zvariant::OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let name = self
            .driver
            .snapshot_create(&self.dom()?, xml, flags)
            .await?;
        Ok(common::objpath::domain_snapshot(&self.uuid, &name))
    }

    #[zbus(name = "ListDomainSnapshots")]
    async fn list_domain_snapshots(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<zbus::zvariant::OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        let names = self.driver.snapshot_names(&*self.dom()?, flags)?;
        Ok(names
            .iter()
            .map(|n| common::objpath::domain_snapshot(&self.uuid, n))
            .collect())
    }

    #[zbus(name = "SnapshotLookupByName")]
    async fn snapshot_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
        flags: u32,
    ) -> Result<zbus::zvariant::OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        self.driver.snapshot_lookup(&*self.dom()?, name, flags)?;
        Ok(common::objpath::domain_snapshot(&self.uuid, name))
    }

    #[zbus(name = "SnapshotCurrent")]
    async fn snapshot_current(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<zbus::zvariant::OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let name = self.driver.snapshot_current(&*self.dom()?, flags)?;
        Ok(common::objpath::domain_snapshot(&self.uuid, &name))
    }

    #[zbus(name = "GetVcpuPinInfo")]
    async fn get_vcpu_pin_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<Vec<bool>>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vcpu_pin_info(&*self.dom()?, flags).await?)
    }

    #[zbus(name = "PinVcpu")]
    async fn pin_vcpu(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        vcpu: u32,
        cpumap: Vec<bool>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .pin(&self.dom()?, Some(vcpu), &cpumap, flags)
            .await?)
    }

    #[zbus(name = "GetEmulatorPinInfo")]
    async fn get_emulator_pin_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<bool>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.emulator_pin_info(&*self.dom()?, flags)?)
    }

    #[zbus(name = "PinEmulator")]
    async fn pin_emulator(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        cpumap: Vec<bool>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.pin(&self.dom()?, None, &cpumap, flags).await?)
    }

    #[zbus(name = "GetIOThreadInfo")]
    async fn get_io_thread_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<(u32, Vec<bool>)>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.iothread_info(&*self.dom()?, flags).await?)
    }

    #[zbus(name = "AddIOThread")]
    async fn add_io_thread(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        iothread_id: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .change_iothread(&self.dom()?, iothread_id, true, flags)
            .await?)
    }

    #[zbus(name = "DelIOThread")]
    async fn del_io_thread(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        iothread_id: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .change_iothread(&self.dom()?, iothread_id, false, flags)
            .await?)
    }

    #[zbus(name = "PinIOThread")]
    async fn pin_io_thread(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        iothread_id: u32,
        cpumap: Vec<bool>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .pin_iothread(&self.dom()?, iothread_id, &cpumap, flags)
            .await?)
    }

    #[zbus(name = "Rename")]
    async fn rename(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.rename(&self.dom()?, name, flags).await?)
    }

    #[zbus(name = "CoreDump")]
    async fn core_dump(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        to: &str,
        dumpformat: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .core_dump(&self.dom()?, to, dumpformat, flags)
            .await?)
    }

    #[zbus(name = "SetBlockThreshold")]
    async fn set_block_threshold(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        dev: &str,
        threshold: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .set_block_threshold(&self.dom()?, dev, threshold, flags)
            .await?)
    }

    #[zbus(name = "BlockResize")]
    async fn block_resize(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        size: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .block_resize(&self.dom()?, disk, size, flags)
            .await?)
    }

    #[zbus(name = "BlockPeek")]
    async fn block_peek(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        disk: &str,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Result<Vec<u8>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .block_peek(&self.dom()?, disk, offset, size, flags)
            .await?)
    }

    #[zbus(name = "MemoryPeek")]
    async fn memory_peek(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Result<Vec<u8>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .memory_peek(&self.dom()?, offset, size, flags)
            .await?)
    }

    #[zbus(name = "SetMetadata")]
    async fn set_metadata(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        r#type: i32,
        metadata: &str,
        key: &str,
        uri: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let change = crate::metadata::Change::new(
            crate::metadata::Kind::from_wire(r#type)?,
            metadata,
            key,
            uri,
        )?;
        Ok(self
            .driver
            .set_metadata(&self.dom()?, change, flags)
            .await?)
    }

    #[zbus(name = "GetMetadata")]
    async fn get_metadata(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        r#type: i32,
        uri: &str,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        let kind = crate::metadata::Kind::from_wire(r#type)?;
        Ok(self.driver.metadata(&*self.dom()?, kind, uri, flags)?)
    }

    #[zbus(signal, name = "MetadataChange")]
    pub async fn metadata_change(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        r#type: i32,
        nsuri: &str,
    ) -> zbus::Result<()>;

    #[zbus(name = "MemoryStats")]
    async fn memory_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<HashMap<i32, u64>, BusError> {
        common::access::check(&hdr).await?;
        let dom = self.dom()?;
        Ok(self.driver.memory_stats(&dom, flags)?)
    }
}

/// libvirt's "this function is not supported by the connection driver: API".
fn no_support(api: &str) -> BusError {
    common::error::VirError::new(common::error::ErrorCode::NoSupport, api).into()
}
