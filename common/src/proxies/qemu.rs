//! Proxies of what virtqemud serves: its part of `org.libvirt.Connect` (domains) and
//! `org.libvirt.Domain`.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// virtqemud's part of the connect object.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtqemud",
    default_path = "/org/libvirt/QEMU"
)]
pub trait QemuConnect {
    #[zbus(name = "ListDomains")]
    fn list_domains(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "DomainDefineXML")]
    fn domain_define_xml(&self, xml: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "DomainCreateXML")]
    fn domain_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "DomainLookupByName")]
    fn domain_lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "DomainLookupByUUID")]
    fn domain_lookup_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "DomainLookupByID")]
    fn domain_lookup_by_id(&self, id: i32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "GetCapabilities")]
    fn get_capabilities(&self) -> zbus::Result<String>;
    #[zbus(name = "GetDomainCapabilities")]
    fn get_domain_capabilities(
        &self,
        emulatorbin: &str,
        arch: &str,
        machine: &str,
        virttype: &str,
        flags: u32,
    ) -> zbus::Result<String>;
    #[zbus(name = "GetAllDomainStats")]
    fn get_all_domain_stats(
        &self,
        stats: u32,
        flags: u32,
    ) -> zbus::Result<Vec<(String, HashMap<String, OwnedValue>)>>;
    #[zbus(signal, name = "DomainEvent")]
    fn domain_event(&self, domain: OwnedObjectPath, event: i32, detail: i32) -> zbus::Result<()>;
}

/// One domain object.
#[zbus::proxy(
    interface = "org.libvirt.Domain",
    default_service = "org.libvirt.virtqemud"
)]
pub trait Domain {
    #[zbus(name = "Create")]
    fn create(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Destroy")]
    fn destroy(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Shutdown")]
    fn shutdown(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Reboot")]
    fn reboot(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Reset")]
    fn reset(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Suspend")]
    fn suspend(&self) -> zbus::Result<()>;
    #[zbus(name = "Resume")]
    fn resume(&self) -> zbus::Result<()>;
    #[zbus(name = "Undefine")]
    fn undefine(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    #[zbus(name = "GetState")]
    fn get_state(&self, flags: u32) -> zbus::Result<(i32, i32)>;
    #[zbus(name = "GetStats")]
    fn get_stats(&self, stats: u32, flags: u32) -> zbus::Result<HashMap<String, OwnedValue>>;
    #[zbus(name = "GetBlockIOTune")]
    fn get_block_io_tune(
        &self,
        disk: &str,
        flags: u32,
    ) -> zbus::Result<HashMap<String, OwnedValue>>;
    #[zbus(name = "GetBlockIOParameters")]
    fn get_block_io_parameters(&self, flags: u32) -> zbus::Result<HashMap<String, OwnedValue>>;
    #[zbus(name = "GetSchedulerParameters")]
    fn get_scheduler_parameters(&self, flags: u32) -> zbus::Result<HashMap<String, OwnedValue>>;
    #[zbus(name = "GetVcpus")]
    fn get_vcpus(&self, flags: u32) -> zbus::Result<u32>;
    #[zbus(name = "MemoryStats")]
    fn memory_stats(&self, flags: u32) -> zbus::Result<HashMap<i32, u64>>;
    #[zbus(property, name = "Name")]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Id")]
    fn id(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "Active")]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Persistent")]
    fn persistent(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Autostart")]
    fn autostart(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Autostart")]
    fn set_autostart(&self, value: bool) -> zbus::Result<()>;
    #[zbus(property, name = "OSType")]
    fn os_type(&self) -> zbus::Result<String>;
    #[zbus(property, name = "SchedulerType")]
    fn scheduler_type(&self) -> zbus::Result<(String, i32)>;
    #[zbus(property, name = "Updated")]
    fn updated(&self) -> zbus::Result<bool>;
}
