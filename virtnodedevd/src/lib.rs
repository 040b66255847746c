//! virtnodedevd: the daemon that manages host devices and node resources.

pub mod create;
pub mod dbus;
pub mod driver;
pub mod node;
pub mod pci;
pub mod sysfs;
pub mod uevent;
pub mod xml;

pub use driver::Driver;
