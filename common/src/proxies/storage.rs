//! Proxies of what virtstoraged serves: its part of `org.libvirt.Connect` (pools and
//! volumes), `org.libvirt.StoragePool` and `org.libvirt.StorageVol` generated from
//! libvirt-dbus's table, and by hand this project's additions (api/additions.tsv).

use zbus::zvariant::{Fd, OwnedObjectPath};

pub use super::libvirt::storage_connect::{
    SecretEvent, SecretEventArgs, SecretEventStream, StoragePoolEvent, StoragePoolEventArgs,
    StoragePoolEventStream,
};
pub use super::libvirt::storage_pool::{Refresh, RefreshStream};
pub use super::libvirt::{SecretProxy, StorageConnectProxy, StoragePoolProxy, StorageVolProxy};

/// This project's addition to virtstoraged's `org.libvirt.Connect`.
#[zbus::proxy(
    interface = "org.libvirt.Connect",
    default_service = "org.libvirt.virtstoraged",
    default_path = "/org/libvirt/QEMU"
)]
pub trait StoragePoolOfVolume {
    /// libvirt's virStoragePoolLookupByVolume.
    #[zbus(name = "StoragePoolLookupByVolume")]
    fn storage_pool_lookup_by_volume(
        &self,
        vol: &zbus::zvariant::ObjectPath<'_>,
    ) -> zbus::Result<OwnedObjectPath>;
}

/// This project's additions to `org.libvirt.StorageVol`: content through a passed file
/// descriptor (libvirt-dbus has no streams) and its progress.
#[zbus::proxy(
    interface = "org.libvirt.StorageVol",
    default_service = "org.libvirt.virtstoraged"
)]
pub trait StorageVolTransfer {
    #[zbus(name = "Upload")]
    fn upload(&self, fd: Fd<'_>, offset: u64, length: u64, flags: u32) -> zbus::Result<()>;
    #[zbus(name = "Download")]
    fn download(&self, fd: Fd<'_>, offset: u64, length: u64, flags: u32) -> zbus::Result<()>;
    #[zbus(property, name = "TransferBytes")]
    fn transfer_bytes(&self) -> zbus::Result<u64>;
}
