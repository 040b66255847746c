//! The firewall backend: one trait, chosen once at the edge. The rules are a pure
//! function of the set of active networks; every change rebuilds the project's own
//! tables in ONE transaction, so a flushed or half-applied ruleset heals on the next
//! apply and nobody else's tables are touched.

pub mod nft;
pub mod watch;

use std::net::IpAddr;

use crate::xml::{ForwardMode, NatRange, Network};

/// What the firewall needs to know about one active network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNet {
    pub bridge: String,
    pub mode: Option<ForwardMode>,
    /// IPv4/IPv6 subnets: (network address, prefix).
    pub subnets: Vec<(IpAddr, u8)>,
    /// `<nat>` address/port ranges (validated at define time).
    pub nat: NatRange,
}

impl FwNet {
    pub fn of(net: &Network) -> FwNet {
        FwNet {
            bridge: net.bridge_name().to_owned(),
            mode: net.forward_mode(),
            subnets: net.ips.iter().map(|i| (i.network(), i.prefix)).collect(),
            nat: net.nat().unwrap_or_default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot apply firewall rules: {0}")]
    Apply(String),
    #[error("cannot build firewall rules: {0}")]
    Build(String),
}

pub trait Firewall: Send + Sync {
    /// Makes the kernel's rules exactly those for `nets` (empty: remove our tables).
    fn apply(&self, nets: &[FwNet]) -> Result<(), FirewallError>;
    /// True when the kernel's rules are still those `apply(nets)` made (nothing of
    /// ours flushed or deleted by someone else).
    fn intact(&self, nets: &[FwNet]) -> Result<bool, FirewallError>;
    /// The names of the tables this backend owns (for the change watcher).
    fn tables(&self) -> &'static [&'static str];
}

/// Picks the backend once.
pub fn backend() -> std::sync::Arc<dyn Firewall> {
    std::sync::Arc::new(nft::Nft)
}
