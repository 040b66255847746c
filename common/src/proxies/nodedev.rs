//! Proxies of what virtnodedevd serves: its part of `org.libvirt.Connect` (node devices
//! and node resources) and `org.libvirt.NodeDevice` generated from libvirt-dbus's table,
//! and by hand this project's additions (api/additions.tsv).

use zbus::zvariant::OwnedObjectPath;

pub use super::libvirt::node_dev_connect::{
    NodeDeviceEvent, NodeDeviceEventArgs, NodeDeviceEventStream,
};
pub use super::libvirt::{NodeDevConnectProxy, NodeDeviceProxy};

/// This project's additions to virtnodedevd's `org.libvirt.Connect`.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtnodedevd",
    default_path = "/org/libvirt/QEMU"
)]
pub trait NodeInfo {
    /// (model, memory KiB, cpus, mhz, nodes, sockets, cores, threads).
    #[zbus(name = "NodeGetInfo")]
    fn node_get_info(&self) -> zbus::Result<(String, u64, u32, u32, u32, u32, u32, u32)>;
    /// Free bytes of each NUMA cell from `start_cell`.
    #[zbus(name = "NodeGetCellsFreeMemory")]
    fn node_get_cells_free_memory(
        &self,
        start_cell: i32,
        max_cells: i32,
        flags: u32,
    ) -> zbus::Result<Vec<u64>>;
    /// The `<host>` element of the capabilities XML.
    #[zbus(name = "NodeGetHostCapabilities")]
    fn node_get_host_capabilities(&self, flags: u32) -> zbus::Result<String>;
    /// A device's description changed (libvirt's UPDATE event).
    #[zbus(signal, name = "NodeDeviceUpdate")]
    fn node_device_update(&self, dev: OwnedObjectPath) -> zbus::Result<()>;
}
