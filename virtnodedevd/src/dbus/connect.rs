//! virtnodedevd's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`: node devices,
//! their events, and the node's resources.

use std::collections::HashMap;
use std::sync::Arc;

use common::connect as base;
use common::error::{check_flags, flags as read_flags, BusError, VirError};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, Value};

use crate::driver::Driver;
use crate::node;

pub struct Connect {
    pub driver: Arc<Driver>,
}

bitflags::bitflags! {
    /// The `virTypedParameterFlags` a typed-parameter getter accepts here.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TypedParamFlags: u32 {
        const STRING_OKAY = 1 << 2;
    }
}

fn map(pairs: Vec<(String, u64)>) -> HashMap<String, u64> {
    pairs.into_iter().collect()
}

#[zbus::interface(name = "org.libvirt.Connect")]
impl Connect {
    #[zbus(property(emits_changed_signal = "false"))]
    fn version(&self) -> u64 {
        base::own_version()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn lib_version(&self) -> u64 {
        base::LIB_VERSION
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn hostname(&self) -> String {
        base::hostname()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn encrypted(&self) -> bool {
        base::ENCRYPTED
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn secure(&self) -> bool {
        base::SECURE
    }

    #[zbus(name = "ListNodeDevices")]
    async fn list_node_devices(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .list(flags)?
            .iter()
            .map(|n| common::objpath::node_device(n))
            .collect())
    }

    #[zbus(name = "NodeDeviceLookupByName")]
    async fn node_device_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = self.driver.lookup(name)?;
        Ok(common::objpath::node_device(&d.name))
    }

    #[zbus(name = "NodeDeviceLookupSCSIHostByWWN")]
    async fn node_device_lookup_scsi_host_by_wwn(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        wwnn: &str,
        wwpn: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = self.driver.lookup_scsi_host_by_wwn(wwnn, wwpn, flags)?;
        Ok(common::objpath::node_device(&d.name))
    }

    #[zbus(name = "NodeDeviceCreateXML")]
    async fn node_device_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let name = self.driver.create(xml, flags).await?;
        Ok(common::objpath::node_device(&name))
    }

    #[zbus(name = "NodeGetCPUMap")]
    async fn node_get_cpu_map(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<bool>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(node::cpu_map(&self.driver.roots))
    }

    #[zbus(name = "NodeGetCPUStats")]
    async fn node_get_cpu_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        cpu_num: i32,
        flags: u32,
    ) -> Result<HashMap<String, u64>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(map(
            node::cpu_stats(&self.driver.roots, cpu_num).map_err(VirError::from)?
        ))
    }

    #[zbus(name = "NodeGetMemoryStats")]
    async fn node_get_memory_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        cell_num: i32,
        flags: u32,
    ) -> Result<HashMap<String, u64>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(map(
            node::memory_stats(&self.driver.roots, cell_num).map_err(VirError::from)?
        ))
    }

    #[zbus(name = "NodeGetFreeMemory")]
    async fn node_get_free_memory(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<u64, BusError> {
        common::access::check(&hdr).await?;
        Ok(node::free_memory(&self.driver.roots))
    }

    #[zbus(name = "NodeSetMemoryParameters")]
    async fn node_set_memory_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        params: common::typed_params::TypedParams,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let params: Vec<(String, Option<u32>)> = params
            .iter()
            .map(|(k, v)| (k.clone(), u32::try_from(v).ok()))
            .collect();
        node::set_memory_parameters(&self.driver.roots, &params)?;
        Ok(())
    }

    #[zbus(name = "NodeGetMemoryParameters")]
    async fn node_get_memory_parameters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<common::typed_params::TypedParams, BusError> {
        common::access::check(&hdr).await?;
        // VIR_TYPED_PARAM_STRING_OKAY is the only flag clients pass.
        read_flags::<TypedParamFlags>(flags)?;
        let mut out = HashMap::new();
        for (name, v, small) in node::memory_parameters(&self.driver.roots) {
            let value = if small {
                Value::from(u32::try_from(v).unwrap_or(u32::MAX))
            } else {
                Value::from(v)
            };
            if let Ok(ov) = value.try_to_owned() {
                out.insert(name.to_string(), ov);
            }
        }
        Ok(out.into())
    }

    #[zbus(name = "GetSysinfo")]
    async fn get_sysinfo(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(node::sysinfo_xml(&self.driver.roots))
    }

    /// Addition: libvirt's `virNodeGetInfo` as (model, memory KiB, cpus, mhz, nodes,
    /// sockets per node, cores per socket, threads per core).
    #[zbus(name = "NodeGetInfo")]
    async fn node_get_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(String, u64, u32, u32, u32, u32, u32, u32), BusError> {
        common::access::check(&hdr).await?;
        let i = node::node_info(&self.driver.roots).map_err(VirError::from)?;
        Ok((
            i.model,
            i.memory_kib,
            i.cpus,
            i.mhz,
            i.nodes,
            i.sockets,
            i.cores,
            i.threads,
        ))
    }

    /// Addition: libvirt's `virNodeGetCellsFreeMemory` (bytes per cell).
    #[zbus(name = "NodeGetCellsFreeMemory")]
    async fn node_get_cells_free_memory(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        start_cell: i32,
        max_cells: i32,
        flags: u32,
    ) -> Result<Vec<u64>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(
            node::cells_free_memory(&self.driver.roots, start_cell, max_cells)
                .map_err(VirError::from)?,
        )
    }

    /// Addition: the `<host>` element of the capabilities XML, for virtqemud.
    #[zbus(name = "NodeGetHostCapabilities")]
    async fn node_get_host_capabilities(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(node::host_capabilities_xml(&self.driver.roots))
    }

    /// Lifecycle of a node device (virNodeDeviceEventLifecycleType), emitted by
    /// `dbus::Bus`.
    #[zbus(signal, name = "NodeDeviceEvent")]
    pub async fn node_device_event(
        emitter: &SignalEmitter<'_>,
        dev: ObjectPath<'_>,
        event: i32,
        detail: i32,
    ) -> zbus::Result<()>;

    /// Addition: libvirt's separate UPDATE event (a device's description changed).
    #[zbus(signal, name = "NodeDeviceUpdate")]
    pub async fn node_device_update(
        emitter: &SignalEmitter<'_>,
        dev: ObjectPath<'_>,
    ) -> zbus::Result<()>;
}
