//! Proxies of what virtnetworkd serves: its part of `org.libvirt.Connect` (networks) and
//! `org.libvirt.Network` generated from libvirt-dbus's table, and by hand this project's
//! additions (api/additions.tsv): network ports.

use zbus::zvariant::OwnedObjectPath;

pub use super::libvirt::network_connect::{NetworkEvent, NetworkEventArgs, NetworkEventStream};
pub use super::libvirt::{InterfaceProxy, NWFilterProxy, NetworkConnectProxy, NetworkProxy};

/// One DHCP lease: (iface, expirytime, type, mac, iaid, ipaddr, prefix, hostname, clientid).
pub type Lease = (
    String,
    i64,
    i32,
    String,
    String,
    String,
    u32,
    String,
    String,
);

/// This project's additions to `org.libvirt.Network`: its ports (libvirt's
/// virNetworkPort* calls) and its bridge.
#[zbus::proxy(
    interface = "org.libvirt.Network",
    default_service = "org.libvirt.virtnetworkd"
)]
pub trait NetworkPorts {
    #[zbus(name = "PortCreateXML")]
    fn port_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "ListPorts")]
    fn list_ports(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "PortLookupByUUID")]
    fn port_lookup_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property, name = "BridgeName")]
    fn bridge_name(&self) -> zbus::Result<String>;
}

/// `org.libvirt.NetworkPort`: this project's addition.
#[zbus::proxy(
    interface = "org.libvirt.NetworkPort",
    default_service = "org.libvirt.virtnetworkd"
)]
pub trait NetworkPort {
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    #[zbus(name = "Delete")]
    fn delete(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Network")]
    fn network(&self) -> zbus::Result<OwnedObjectPath>;
}

/// This project's additions to `org.libvirt.Connect` on virtnetworkd: libvirt's
/// virNWFilterBinding calls.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtnetworkd",
    default_path = "/org/libvirt/QEMU"
)]
pub trait NWFilterBindings {
    #[zbus(name = "NWFilterBindingCreateXML")]
    fn nwfilter_binding_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "ListNWFilterBindings")]
    fn list_nwfilter_bindings(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "NWFilterBindingLookupByPortDev")]
    fn nwfilter_binding_lookup_by_port_dev(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
}

/// `org.libvirt.NWFilterBinding`: this project's addition.
#[zbus::proxy(
    interface = "org.libvirt.NWFilterBinding",
    default_service = "org.libvirt.virtnetworkd"
)]
pub trait NWFilterBinding {
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    #[zbus(name = "Delete")]
    fn delete(&self) -> zbus::Result<()>;
    #[zbus(property, name = "PortDev")]
    fn port_dev(&self) -> zbus::Result<String>;
    #[zbus(property, name = "FilterName")]
    fn filter_name(&self) -> zbus::Result<String>;
}
