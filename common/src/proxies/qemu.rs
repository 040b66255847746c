//! Proxies of what virtqemud serves: its part of `org.libvirt.Connect` (domains),
//! `org.libvirt.Domain` and `org.libvirt.DomainSnapshot`, all generated from
//! libvirt-dbus's table; virtqemud serves nothing beyond it.

pub use super::libvirt::qemu_connect::{DomainEvent, DomainEventArgs, DomainEventStream};
pub use super::libvirt::{DomainProxy, DomainSnapshotProxy, QemuConnectProxy};
