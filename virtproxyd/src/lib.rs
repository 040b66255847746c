//! virtproxyd: the `org.libvirt` compatibility front. One bus name serves the whole
//! libvirt-dbus tree by forwarding each call, as its raw bytes and fds, to the daemon
//! that owns the object (`route`), merging what all four serve part of (`merge`), and
//! re-emitting the daemons' signals (`front`). It keeps no state of its own.

pub mod front;
pub mod merge;
pub mod route;
pub mod runtime;
