//! virtqemud: the daemon that manages domains (QEMU/KVM).

pub mod dbus;
pub mod driver;

pub use driver::Driver;
