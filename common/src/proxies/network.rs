//! Proxies of what virtnetworkd serves: its part of `org.libvirt.Connect` (networks),
//! `org.libvirt.Network` (with this project's port methods) and `org.libvirt.NetworkPort`.

use zbus::zvariant::OwnedObjectPath;

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

/// virtnetworkd's part of the connect object.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtnetworkd",
    default_path = "/org/libvirt/QEMU"
)]
pub trait NetworkConnect {
    #[zbus(name = "ListNetworks")]
    fn list_networks(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "NetworkCreateXML")]
    fn network_create_xml(&self, xml: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NetworkDefineXML")]
    fn network_define_xml(&self, xml: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NetworkLookupByName")]
    fn network_lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "NetworkLookupByUUID")]
    fn network_lookup_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal, name = "NetworkEvent")]
    fn network_event(&self, network: OwnedObjectPath, event: i32) -> zbus::Result<()>;
}

/// `org.libvirt.Network`.
#[zbus::proxy(
    interface = "org.libvirt.Network",
    default_service = "org.libvirt.virtnetworkd"
)]
pub trait Network {
    #[zbus(name = "Create")]
    fn create(&self) -> zbus::Result<()>;
    #[zbus(name = "Destroy")]
    fn destroy(&self) -> zbus::Result<()>;
    #[zbus(name = "Undefine")]
    fn undefine(&self) -> zbus::Result<()>;
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    #[zbus(name = "GetDHCPLeases")]
    fn get_dhcp_leases(&self, mac: &str, flags: u32) -> zbus::Result<Vec<Lease>>;
    #[zbus(name = "Update")]
    fn update(
        &self,
        command: u32,
        section: u32,
        parent_index: i32,
        xml: &str,
        flags: u32,
    ) -> zbus::Result<()>;
    /// This project's addition (libvirt's virNetworkPortCreateXML).
    #[zbus(name = "PortCreateXML")]
    fn port_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "ListPorts")]
    fn list_ports(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "PortLookupByUUID")]
    fn port_lookup_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(property, name = "Name")]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Active")]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Persistent")]
    fn persistent(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Autostart")]
    fn autostart(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Autostart")]
    fn set_autostart(&self, value: bool) -> zbus::Result<()>;
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
