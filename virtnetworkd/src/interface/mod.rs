//! Host interfaces (libvirt's virtinterfaced): the links the kernel has, as libvirt's
//! udev backend lists them, and stored definitions, as its netcf backend adds them,
//! brought up and down over rtnetlink. Definitions live in `<config>/interface/`, a
//! transaction's snapshot in `<config>/interface.snapshot/`, and what a Create made
//! in `<runtime>/interface/NAME.json` (written as `NAME.pending` before anything is
//! made, so a kill -9 mid-way is undone at the next start).

pub mod link;
pub mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use common::error::{ErrorCode, VirError};
use common::job::InFlight;
use common::publish::Outbox;
use common::xml::XmlError;
use serde::{Deserialize, Serialize};

use self::link::{Link, LinkError, Links};
use self::xml::{Family, IfName, Iface, Kind, LinkState, Protocol};
use crate::xml::Mac;

/// What clients must see: an interface appeared (a link or a definition) or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfaceChange {
    Added(String),
    Removed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("couldn't find interface named '{0}'")]
    NoName(String),
    #[error("couldn't find interface with MAC address '{0}'")]
    NoMac(String),
    #[error("the MAC address '{0}' matches multiple interfaces")]
    MultipleMac(String),
    #[error("interface '{0}' has no stored definition")]
    NotDefined(String),
    #[error("failed to create (start) interface {0}: {1}")]
    Start(String, String),
    #[error("failed to destroy (stop) interface {0}: {1}")]
    Stop(String, String),
    #[error("failed to {0} transaction: {1}")]
    Transaction(&'static str, String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

impl From<IfaceError> for VirError {
    fn from(e: IfaceError) -> VirError {
        use IfaceError::*;
        match &e {
            Xml(x) => VirError::xml(x),
            NoName(_) | NoMac(_) => VirError::new(ErrorCode::NoInterface, e),
            MultipleMac(_) => VirError::new(ErrorCode::MultipleInterfaces, e),
            NotDefined(_) => VirError::operation_invalid(e),
            Start(..) | Stop(..) | Transaction(..) => VirError::operation_failed(e),
            Link(_) => VirError::internal(e),
            Io { what, err } => VirError::system(what, err),
        }
    }
}

impl From<IfaceError> for common::error::BusError {
    fn from(e: IfaceError) -> Self {
        VirError::from(e).into()
    }
}

pub type Result<T> = std::result::Result<T, IfaceError>;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> IfaceError {
    let what = what.to_string();
    move |err| IfaceError::Io { what, err }
}

/// What a Create made, on disk before it is made: the links this daemon created
/// (deleted again by Destroy) and the definition it applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub created: Vec<String>,
    pub def: String,
}

/// The kernel's view at one moment: every link and every address.
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addrs: Vec<(u32, IpAddr, u8)>,
}

impl Snapshot {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

pub struct Ifaces {
    links: Links,
    config_dir: PathBuf,
    snapshot_dir: PathBuf,
    run_dir: PathBuf,
    defs: Mutex<BTreeMap<String, Iface>>,
    /// One change at a time, as libvirt's netcf backend locks its driver per call.
    job: tokio::sync::Mutex<()>,
    /// The names served on the bus; changed only under its own lock, in order.
    served: tokio::sync::Mutex<BTreeSet<String>>,
    jobs: InFlight,
    pub outbox: Outbox<IfaceChange>,
}

mod apply;
mod store;

impl Ifaces {
    pub fn new(config: &Path, runtime: &Path) -> anyhow::Result<Arc<Ifaces>> {
        let config_dir = config.join("interface");
        let run_dir = runtime.join("interface");
        for d in [&config_dir, &run_dir] {
            common::persist::create_dir_all(d, 0o755)?;
        }
        Ok(Arc::new(Ifaces {
            links: Links::new()?,
            snapshot_dir: config.join("interface.snapshot"),
            config_dir,
            run_dir,
            defs: Mutex::new(BTreeMap::new()),
            job: tokio::sync::Mutex::new(()),
            served: tokio::sync::Mutex::new(BTreeSet::new()),
            jobs: InFlight::new(),
            outbox: Outbox::new(),
        }))
    }

    pub fn idle(&self) -> bool {
        self.jobs.idle()
    }

    fn lock_defs(&self) -> MutexGuard<'_, BTreeMap<String, Iface>> {
        self.defs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn definition(&self, name: &str) -> Option<Iface> {
        self.lock_defs().get(name).cloned()
    }

    pub async fn kernel(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            links: self.links.all().await?,
            addrs: self.links.addresses().await?,
        })
    }

    /// Serves an object for every link and definition, and stops serving those gone.
    /// Called before any reply that names interfaces, so a listed path is served.
    pub async fn sync(&self) -> Result<Vec<String>> {
        let k = self.kernel().await?;
        Ok(self.sync_with(&k).await)
    }

    async fn sync_with(&self, k: &Snapshot) -> Vec<String> {
        let mut names: BTreeSet<String> = k.links.iter().map(|l| l.name.clone()).collect();
        names.extend(self.lock_defs().keys().cloned());
        let mut served = self.served.lock().await;
        let gone: Vec<String> = served.difference(&names).cloned().collect();
        let new: Vec<String> = names.difference(&served).cloned().collect();
        for n in gone {
            served.remove(&n);
            self.outbox.send(IfaceChange::Removed(n)).await;
        }
        for n in new {
            served.insert(n.clone());
            self.outbox.send(IfaceChange::Added(n)).await;
        }
        served.iter().cloned().collect()
    }

    /// Names and whether each is active (its link exists and is up), for a list.
    pub async fn list(&self) -> Result<Vec<(String, bool)>> {
        let k = self.kernel().await?;
        let names = self.sync_with(&k).await;
        Ok(names
            .into_iter()
            .map(|n| {
                let up = k.link(&n).is_some_and(|l| l.up);
                (n, up)
            })
            .collect())
    }

    /// An interface's name if it exists (a link or a definition), served.
    pub async fn by_name(&self, name: &str) -> Result<String> {
        let names = self.sync().await?;
        names
            .into_iter()
            .find(|n| n == name)
            .ok_or_else(|| IfaceError::NoName(name.to_owned()))
    }

    /// The one interface with this MAC: a link that has it, or a definition naming it
    /// whose link does not exist. libvirt's udev backend refuses an ambiguous MAC.
    pub async fn by_mac(&self, mac: &str) -> Result<String> {
        let m = Mac::parse("mac", mac.trim()).map_err(|_| IfaceError::NoMac(mac.to_owned()))?;
        let k = self.kernel().await?;
        self.sync_with(&k).await;
        let mut found: BTreeSet<String> = k
            .links
            .iter()
            .filter(|l| l.mac == Some(m))
            .map(|l| l.name.clone())
            .collect();
        for (n, d) in self.lock_defs().iter() {
            if d.mac == Some(m) && k.link(n).is_none() {
                found.insert(n.clone());
            }
        }
        let mut it = found.into_iter();
        match (it.next(), it.next()) {
            (Some(n), None) => Ok(n),
            (None, _) => Err(IfaceError::NoMac(mac.to_owned())),
            (Some(_), Some(_)) => Err(IfaceError::MultipleMac(mac.to_owned())),
        }
    }

    /// The link of that name, if any; an error when neither a link nor a definition
    /// has the name (a call on an object whose interface went).
    async fn link_of(&self, name: &str) -> Result<Option<Link>> {
        let l = self.links.by_name(name).await?;
        if l.is_none() && !self.lock_defs().contains_key(name) {
            return Err(IfaceError::NoName(name.to_owned()));
        }
        Ok(l)
    }

    pub async fn active(&self, name: &str) -> Result<bool> {
        Ok(self.link_of(name).await?.is_some_and(|l| l.up))
    }

    /// The link's MAC when the link exists, else the definition's, else "".
    pub async fn mac(&self, name: &str) -> Result<String> {
        let mac = self
            .link_of(name)
            .await?
            .and_then(|l| l.mac)
            .or_else(|| self.definition(name).and_then(|d| d.mac));
        Ok(mac.map(|m| m.to_string()).unwrap_or_default())
    }

    /// The live description while active; the stored definition when inactive or
    /// with `inactive` (VIR_INTERFACE_XML_INACTIVE); a link without a definition is
    /// always described as it is.
    pub async fn xml(&self, name: &str, inactive: bool) -> Result<String> {
        let k = self.kernel().await?;
        let def = self.definition(name);
        let link = k.link(name);
        let live = match (link, &def) {
            (Some(l), Some(_)) => !inactive && l.up,
            (Some(_), None) => true,
            (None, _) => false,
        };
        match (live, link, def) {
            (true, Some(l), def) => Ok(describe(l, &k, def.as_ref(), 0).to_xml()),
            (_, _, Some(d)) => Ok(d.to_xml()),
            // Neither a link nor a definition: the interface went.
            _ => Err(IfaceError::NoName(name.to_owned())),
        }
    }
}

/// A link as a definition would say it: its kind's element with its ports, MAC,
/// MTU, `<link state speed>` and its addresses as `<protocol>`s.
pub fn describe(l: &Link, k: &Snapshot, def: Option<&Iface>, depth: u8) -> Iface {
    let ports = || -> Vec<Iface> {
        if depth > 1 {
            return Vec::new();
        }
        k.links
            .iter()
            .filter(|p| p.controller == Some(l.index))
            .map(|p| describe(p, k, None, depth + 1))
            .collect()
    };
    let kind = match l.kind.as_deref() {
        Some("bridge") => Kind::Bridge {
            stp: l.bridge.map(|b| b.0),
            delay_cs: l.bridge.map(|b| b.1),
            ports: ports(),
        },
        Some("bond") => Kind::Bond {
            mode: l.bond_mode,
            miimon: None,
            ports: ports(),
        },
        Some("vlan") => match l.vlan.and_then(|(tag, p)| {
            let dev = k.links.iter().find(|x| x.index == p)?;
            Some((tag, IfName::parse("interface", &dev.name).ok()?))
        }) {
            Some((tag, device)) => Kind::Vlan { tag, device },
            None => Kind::Ethernet,
        },
        _ => Kind::Ethernet,
    };
    let mut protocols = Vec::new();
    for family in [Family::V4, Family::V6] {
        let ips: Vec<(IpAddr, u8)> = k
            .addrs
            .iter()
            .filter(|(i, a, _)| *i == l.index && a.is_ipv4() == (family == Family::V4))
            .map(|(_, a, p)| (*a, *p))
            .collect();
        if !ips.is_empty() {
            protocols.push(Protocol {
                family,
                dhcp: false,
                autoconf: false,
                ips,
                gateway: None,
            });
        }
    }
    let speed = if l.oper == "up" {
        link::speed(&l.name)
    } else {
        None
    };
    Iface {
        name: IfName::from_kernel(&l.name),
        kind,
        start: def.and_then(|d| d.start),
        mac: l.mac,
        mtu: l.mtu,
        link: Some(LinkState {
            state: l.oper.to_owned(),
            speed,
        }),
        protocols,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(Into::into),
            mac: Some(Mac([0x52, 0x54, 0, 0, 0, index as u8])),
            mtu: Some(1500),
            up: true,
            oper: "down",
            controller: None,
            vlan: None,
            bond_mode: None,
            bridge: None,
            loopback: false,
        }
    }

    /// Bonds and vlans as the kernel reports them (this machine's kernel cannot make
    /// them, so their description is checked on made-up links).
    #[test]
    fn bonds_vlans_and_bridges_are_described_with_their_ports() {
        let mut bond = link(3, "bond0", Some("bond"));
        bond.bond_mode = Some(1);
        bond.controller = Some(5);
        let mut e1 = link(1, "eth1", None);
        e1.controller = Some(3);
        let mut e2 = link(2, "eth2", None);
        e2.controller = Some(3);
        let mut vlan = link(4, "eth1.42", Some("vlan"));
        vlan.vlan = Some((42, 1));
        let mut br = link(5, "br0", Some("bridge"));
        br.bridge = Some((true, 150));
        let k = Snapshot {
            links: vec![e1, e2, bond.clone(), vlan.clone(), br.clone()],
            addrs: vec![
                (5, "10.1.0.1".parse().unwrap(), 24),
                (5, "fd00::1".parse().unwrap(), 64),
            ],
        };
        let b = describe(&bond, &k, None, 0);
        assert_eq!(
            b.to_xml(),
            "<interface type='bond' name='bond0'>\n  <mac address='52:54:00:00:00:03'/>\n  \
             <mtu size='1500'/>\n  <link state='down'/>\n  <bond mode='active-backup'>\n    \
             <interface type='ethernet' name='eth1'>\n      <mac address='52:54:00:00:00:01'/>\n      \
             <mtu size='1500'/>\n      <link state='down'/>\n    </interface>\n    \
             <interface type='ethernet' name='eth2'>\n      <mac address='52:54:00:00:00:02'/>\n      \
             <mtu size='1500'/>\n      <link state='down'/>\n    </interface>\n  </bond>\n</interface>\n"
        );
        let v = describe(&vlan, &k, None, 0).to_xml();
        assert!(
            v.contains("<vlan tag='42'>\n    <interface name='eth1'/>"),
            "{v}"
        );
        let def = Iface::from_xml(
            "<interface type='bridge' name='br0'><start mode='onboot'/><bridge/></interface>",
        )
        .unwrap();
        let x = describe(&br, &k, Some(&def), 0);
        let text = x.to_xml();
        assert!(text.contains("<start mode='onboot'/>"), "{text}");
        assert!(text.contains("<bridge stp='on' delay='1.5'>"), "{text}");
        assert!(
            text.contains("<interface type='bond' name='bond0'>"),
            "{text}"
        );
        assert!(
            text.contains("<protocol family='ipv4'>\n    <ip address='10.1.0.1' prefix='24'/>"),
            "{text}"
        );
        assert!(
            text.contains("<protocol family='ipv6'>\n    <ip address='fd00::1' prefix='64'/>"),
            "{text}"
        );
        // What is described defines again.
        assert_eq!(Iface::from_xml(&text).unwrap().name.as_str(), "br0");
    }
}
