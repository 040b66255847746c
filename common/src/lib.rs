//! What every virt daemon shares: the runtime (command line, bus, peer-to-peer socket,
//! activation, readiness, idle exit, signals), errors and their wire mapping, object
//! paths, atomic persistence, safe XML reading and the client proxies of every daemon.

pub mod access;
pub mod activation;
pub mod base64;
pub mod child;
pub mod cli;
pub mod connect;
pub mod contract;
pub mod error;
pub mod event;
pub mod hub;
pub mod job;
pub mod journal;
pub mod notify;
pub mod objpath;
pub mod peer_socket;
pub mod persist;
pub mod proxies;
pub mod publish;
pub mod runtime;
pub mod typed_params;
pub mod uri;
pub mod wire;
pub mod xml;

#[cfg(feature = "harness")]
pub mod harness;
#[cfg(feature = "harness")]
pub mod mutate;

pub use error::{BusError, ErrorCode, VirError};
pub use hub::Hub;
pub use runtime::{Context, Driver};
