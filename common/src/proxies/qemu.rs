//! Proxies of what virtqemud serves: its part of `org.libvirt.Connect` (domains),
//! `org.libvirt.Domain` and `org.libvirt.DomainSnapshot`, generated from libvirt-dbus's
//! table, and by hand its own `org.libvirt.virtqemud.Migration` (api/additions.tsv),
//! which a migration's source calls on the destination.

pub use super::libvirt::qemu_connect::{DomainEvent, DomainEventArgs, DomainEventStream};
pub use super::libvirt::{DomainProxy, DomainSnapshotProxy, QemuConnectProxy};

/// The destination's half of a peer-to-peer migration (virtqemud's own interface).
#[zbus::proxy(
    interface = "org.libvirt.virtqemud.Migration",
    default_service = "org.libvirt.virtqemud",
    default_path = "/org/libvirt/QEMU"
)]
pub trait Migration {
    /// Starts the domain of `xml` waiting for the stream; the URI to send it to.
    #[zbus(name = "Prepare")]
    fn prepare(
        &self,
        xml: &str,
        params: &crate::typed_params::TypedParams,
        flags: u32,
    ) -> zbus::Result<String>;
    /// Runs the migrated guest, or with `cancelled` ends the incoming QEMU.
    #[zbus(name = "Finish")]
    fn finish(&self, uuid: &str, flags: u32, cancelled: bool) -> zbus::Result<()>;
    /// 1 if the guest runs there; an incoming QEMU that never got Finish is ended.
    #[zbus(name = "Recover")]
    fn recover(&self, uuid: &str) -> zbus::Result<i32>;
}
