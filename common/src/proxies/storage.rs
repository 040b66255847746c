//! Proxies of what virtstoraged serves: its part of `org.libvirt.Connect` (storage pools),
//! `org.libvirt.StoragePool` and `org.libvirt.StorageVol` (with this project's
//! `Upload`/`Download` by file descriptor).

use zbus::zvariant::{Fd, OwnedObjectPath};

/// virtstoraged's part of the connect object.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtstoraged",
    default_path = "/org/libvirt/QEMU"
)]
pub trait StorageConnect {
    fn find_storage_pool_sources(
        &self,
        kind: &str,
        src_spec: &str,
        flags: u32,
    ) -> zbus::Result<String>;
    fn list_storage_pools(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(name = "StoragePoolCreateXML")]
    fn storage_pool_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "StoragePoolDefineXML")]
    fn storage_pool_define_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    fn storage_pool_lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "StoragePoolLookupByUUID")]
    fn storage_pool_lookup_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
    fn storage_pool_lookup_by_volume(
        &self,
        vol: &zbus::zvariant::ObjectPath<'_>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn storage_vol_lookup_by_key(&self, key: &str) -> zbus::Result<OwnedObjectPath>;
    fn storage_vol_lookup_by_path(&self, path: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn storage_pool_event(
        &self,
        pool: OwnedObjectPath,
        event: i32,
        detail: i32,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.libvirt.StoragePool",
    default_service = "org.libvirt.virtstoraged"
)]
pub trait StoragePool {
    fn build(&self, flags: u32) -> zbus::Result<()>;
    fn create(&self, flags: u32) -> zbus::Result<()>;
    fn delete(&self, flags: u32) -> zbus::Result<()>;
    fn destroy(&self) -> zbus::Result<()>;
    #[zbus(name = "GetInfo")]
    fn get_info(&self) -> zbus::Result<(i32, u64, u64, u64)>;
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    fn list_storage_volumes(&self, flags: u32) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn refresh(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "StorageVolCreateXML")]
    fn storage_vol_create_xml(&self, xml: &str, flags: u32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "StorageVolCreateXMLFrom")]
    fn storage_vol_create_xml_from(
        &self,
        xml: &str,
        key: &str,
        flags: u32,
    ) -> zbus::Result<OwnedObjectPath>;
    fn storage_vol_lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn undefine(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn autostart(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn set_autostart(&self, value: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn persistent(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.libvirt.StorageVol",
    default_service = "org.libvirt.virtstoraged"
)]
pub trait StorageVol {
    fn delete(&self, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "GetInfo")]
    fn get_info(&self, flags: u32) -> zbus::Result<(i32, u64, u64)>;
    #[zbus(name = "GetXMLDesc")]
    fn get_xml_desc(&self, flags: u32) -> zbus::Result<String>;
    fn resize(&self, capacity: u64, flags: u32) -> zbus::Result<()>;
    fn wipe(&self, pattern: u32, flags: u32) -> zbus::Result<()>;
    fn upload(&self, fd: Fd<'_>, offset: u64, length: u64, flags: u32) -> zbus::Result<()>;
    fn download(&self, fd: Fd<'_>, offset: u64, length: u64, flags: u32) -> zbus::Result<()>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn key(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn transfer_bytes(&self) -> zbus::Result<u64>;
}
