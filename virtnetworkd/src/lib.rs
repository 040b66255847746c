//! virtnetworkd: the daemon that manages virtual networks.

pub mod dbus;
pub mod driver;

pub use driver::Driver;
