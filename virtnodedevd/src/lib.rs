//! virtnodedevd: the daemon that manages host devices and node resources.

pub mod dbus;
pub mod driver;

pub use driver::Driver;
