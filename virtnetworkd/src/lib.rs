//! virtnetworkd: the daemon that manages virtual networks.

pub mod bridge;
pub mod dbus;
pub mod dnsmasq;
pub mod driver;
pub mod firewall;
pub mod xml;

pub use driver::Driver;
