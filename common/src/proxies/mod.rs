//! Client proxies of what the daemons serve, used by daemons to call each other and by
//! the tests and tools.

/// The part of `org.libvirt.Connect` every daemon answers (its properties), with no
/// default destination: callers name the daemon.
pub use libvirt::ConnectProxy;

pub mod network;
pub mod nodedev;
pub mod qemu;
pub mod storage;

/// Every libvirt-dbus interface, generated from `api/libvirt-dbus.tsv` by the build
/// script; the per-daemon modules re-export them with the additions beside them.
#[allow(clippy::too_many_arguments)]
pub mod libvirt {
    include!(concat!(env!("OUT_DIR"), "/libvirt_dbus.rs"));
}
