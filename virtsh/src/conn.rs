//! Connections by libvirt URI: the parsing and the transports live in `common::uri`,
//! shared with virtqemud, which dials a migration's destination the same way.

pub use common::uri::*;
