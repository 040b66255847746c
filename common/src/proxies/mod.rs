//! Client proxies of what the daemons serve, used by daemons to call each other and by
//! the tests and tools.

/// The part of `org.libvirt.Connect` that every daemon answers.
#[zbus::proxy(interface = "org.libvirt.Connect", default_path = "/org/libvirt/QEMU")]
pub trait Connect {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn lib_version(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn hostname(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn encrypted(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn secure(&self) -> zbus::Result<bool>;
}

pub mod network;
pub mod nodedev;
pub mod qemu;
pub mod storage;
