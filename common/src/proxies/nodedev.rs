//! Proxies of what virtnodedevd serves: its part of `org.libvirt.Connect` (node devices
//! and node resources) and `org.libvirt.NodeDevice`.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// virtnodedevd's part of the connect object.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtnodedevd",
    default_path = "/org/libvirt/QEMU"
)]
pub trait NodeDevConnect {
    #[zbus(name = "ListNodeDevices")]
    fn list_node_devices(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "NodeDeviceLookupByName")]
    fn node_device_lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NodeDeviceLookupSCSIHostByWWN")]
    fn node_device_lookup_scsi_host_by_wwn(
        &self,
        wwnn: &str,
        wwpn: &str,
        flags: u32,
    ) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NodeDeviceCreateXML")]
    fn node_device_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NodeGetCPUMap")]
    fn node_get_cpu_map(&self, flags: u32) -> zbus::Result<Vec<bool>>;
    #[zbus(name = "NodeGetCPUStats")]
    fn node_get_cpu_stats(&self, cpu_num: i32, flags: u32) -> zbus::Result<HashMap<String, u64>>;
    #[zbus(name = "NodeGetMemoryStats")]
    fn node_get_memory_stats(
        &self,
        cell_num: i32,
        flags: u32,
    ) -> zbus::Result<HashMap<String, u64>>;
    #[zbus(name = "NodeGetFreeMemory")]
    fn node_get_free_memory(&self) -> zbus::Result<u64>;
    #[zbus(name = "NodeGetMemoryParameters")]
    fn node_get_memory_parameters(&self, flags: u32) -> zbus::Result<HashMap<String, OwnedValue>>;
    #[zbus(name = "GetSysinfo")]
    fn get_sysinfo(&self, flags: u32) -> zbus::Result<String>;
    /// Addition: (model, memory KiB, cpus, mhz, nodes, sockets, cores, threads).
    #[zbus(name = "NodeGetInfo")]
    fn node_get_info(&self) -> zbus::Result<(String, u64, u32, u32, u32, u32, u32, u32)>;
    /// Addition: free bytes of each NUMA cell from `start_cell`.
    #[zbus(name = "NodeGetCellsFreeMemory")]
    fn node_get_cells_free_memory(
        &self,
        start_cell: i32,
        max_cells: i32,
        flags: u32,
    ) -> zbus::Result<Vec<u64>>;
    /// Addition: the `<host>` element of the capabilities XML.
    #[zbus(name = "NodeGetHostCapabilities")]
    fn node_get_host_capabilities(&self, flags: u32) -> zbus::Result<String>;

    #[zbus(signal, name = "NodeDeviceEvent")]
    fn node_device_event(&self, dev: OwnedObjectPath, event: i32, detail: i32) -> zbus::Result<()>;
    /// Addition: a device's description changed (libvirt's UPDATE event).
    #[zbus(signal, name = "NodeDeviceUpdate")]
    fn node_device_update(&self, dev: OwnedObjectPath) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.libvirt.NodeDevice",
    default_service = "org.libvirt.virtnodedevd"
)]
pub trait NodeDevice {
    #[zbus(name = "Destroy")]
    fn destroy(&self) -> zbus::Result<()>;
    #[zbus(name = "Detach")]
    fn detach(&self, driver_name: &str, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    #[zbus(name = "ListCaps")]
    fn list_caps(&self) -> zbus::Result<Vec<String>>;
    #[zbus(name = "ReAttach")]
    fn re_attach(&self) -> zbus::Result<()>;
    #[zbus(name = "Reset")]
    fn reset(&self) -> zbus::Result<()>;
    #[zbus(property, name = "Name")]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Parent")]
    fn parent(&self) -> zbus::Result<String>;
}
