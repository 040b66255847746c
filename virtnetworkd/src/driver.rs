//! The driver: the registry of networks, their job locks, and the operations the D-Bus
//! interfaces translate to (define, start, destroy, update, ports, leases, adoption).
//! It does not know D-Bus: what clients must see goes out as a typed [`Change`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::child::ChildWatch;
use common::error::{ErrorCode, VirError};
use common::event::NetworkEvent;
use common::job::InFlight;
use common::publish::Outbox;
use common::runtime::Context;
use common::xml::{parse, XmlError};
use nix::sys::signal::Signal;
use uuid::Uuid;

use crate::bridge::{BridgeError, Netlink};
use crate::dnsmasq::{self, DnsmasqError, Lease, Paths};
use crate::firewall::{self, Firewall, FirewallError, FwNet};
use crate::xml::{self, overlaps, Ip, Network, Port};

/// What clients must see of a change, in the order it happened. Publishing is awaited:
/// an added object is served before the reply that names it and before its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NetworkAdded(Uuid),
    NetworkRemoved(Uuid),
    Lifecycle(Uuid, NetworkEvent),
    /// The network started (true) or stopped (false) and stays defined.
    ActiveChanged(Uuid, bool),
    PortAdded(Uuid),
    PortRemoved(Uuid),
}

/// `virNetworkUpdateCommand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateCommand {
    Modify,
    Delete,
    AddLast,
    AddFirst,
}

impl UpdateCommand {
    /// None for NONE (0) and numbers libvirt does not define.
    pub fn from_wire(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::Modify),
            2 => Some(Self::Delete),
            3 => Some(Self::AddLast),
            4 => Some(Self::AddFirst),
            _ => None,
        }
    }
}

/// The `virNetworkUpdateSection`s this driver can edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateSection {
    IpDhcpHost,
    DnsHost,
}

impl UpdateSection {
    /// None for every other section, which Update refuses by number.
    pub fn from_wire(n: u32) -> Option<Self> {
        match n {
            4 => Some(Self::IpDhcpHost),
            10 => Some(Self::DnsHost),
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// `virNetworkUpdateFlags` (AFFECT_CURRENT is the empty set).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct UpdateFlags: u32 {
        const AFFECT_LIVE = 1;
        const AFFECT_CONFIG = 2;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("no network with matching {0}")]
    NoNetwork(String),
    #[error("network '{0}' is already active")]
    Active(String),
    #[error("network '{0}' is not active")]
    Inactive(String),
    #[error("'{0}'")]
    Exists(String),
    #[error("network '{0}' is already defined with uuid {1}")]
    NameTaken(String, Uuid),
    #[error("bridge name '{0}' already in use.")]
    BridgeInUse(String),
    #[error("bridge '{0}' does not exist")]
    NoBridge(String),
    #[error("network {new} subnet {subnet} overlaps network {other}")]
    Overlap {
        new: String,
        subnet: String,
        other: String,
    },
    #[error("no network port with matching uuid '{0}'")]
    NoPort(String),
    #[error("network port with uuid '{0}'")]
    PortExists(Uuid),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadArg(String),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Dnsmasq(#[from] DnsmasqError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

impl From<NetError> for VirError {
    fn from(e: NetError) -> VirError {
        use NetError::*;
        match &e {
            Xml(x) => VirError::xml(x),
            NoNetwork(_) => VirError::new(ErrorCode::NoNetwork, e),
            Active(_) | Inactive(_) => VirError::operation_invalid(e),
            Exists(_) => VirError::new(ErrorCode::NetworkExist, e),
            NameTaken(..) | BridgeInUse(_) | Overlap { .. } | NoBridge(_) => {
                VirError::operation_failed(e)
            }
            NoPort(_) => VirError::new(ErrorCode::NoNetworkPort, e),
            PortExists(_) => VirError::new(ErrorCode::NetworkPortExist, e),
            Unsupported(_) => VirError::unsupported(e),
            BadArg(_) => VirError::invalid_arg(e),
            Bridge(_) | Firewall(_) => VirError::internal(e),
            Dnsmasq(_) => VirError::xml(e),
            Io { what, err } => VirError::system(what, err),
        }
    }
}

impl From<NetError> for common::error::BusError {
    fn from(e: NetError) -> Self {
        VirError::from(e).into()
    }
}

pub type Result<T> = std::result::Result<T, NetError>;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.to_string();
    move |err| NetError::Io { what, err }
}

/// Runs file work that may fsync (or fork) off the async worker threads: a slow disk
/// must not stall every other call served by the same worker.
async fn blocking_io<T: Send + 'static>(
    what: impl std::fmt::Display,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let what = what.to_string();
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io(what)),
        Err(e) => Err(NetError::Io {
            what,
            err: std::io::Error::other(e.to_string()),
        }),
    }
}

/// `persist::write_atomic` (temp, fsync, rename) off the async threads.
async fn write_durable(path: PathBuf, data: String, mode: u32, what: String) -> Result<()> {
    blocking_io(what, move || {
        common::persist::write_atomic(&path, data.as_bytes(), mode)
    })
    .await
}

/// `persist::remove_durable` (unlink, fsync of the folder) off the async threads.
async fn remove_durable(path: PathBuf, what: &str) -> Result<()> {
    blocking_io(what, move || common::persist::remove_durable(&path)).await
}

/// One network's mutable state, behind its short state lock.
pub struct NetState {
    /// The persistent (or, for transient networks, the only) definition.
    pub def: Network,
    /// The running definition.
    pub live: Option<Network>,
    pub persistent: bool,
    pub autostart: bool,
    pub dnsmasq: Option<Arc<ChildWatch>>,
    pub ports: BTreeMap<Uuid, Port>,
    /// Bumped on each start/stop so a supervisor of an old run stands down.
    pub generation: u64,
}

/// One network. Operations hold `job` (libvirt's job model: one at a time, held across
/// the awaits on the kernel and dnsmasq); reads take only the state lock, held for a
/// copy and never across an await, so a property read never waits behind a start.
pub struct NetObj {
    pub uuid: Uuid,
    pub name: String,
    /// Its object is served on every connection: only then do lookups and lists hand
    /// out its path (no UnknownObject for a path a client was given).
    served: std::sync::atomic::AtomicBool,
    job: tokio::sync::Mutex<()>,
    state: Mutex<NetState>,
}

impl NetObj {
    fn served(&self) -> bool {
        self.served.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn state(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What other networks need to know about an active one.
#[derive(Clone)]
struct ActiveInfo {
    name: String,
    fw: FwNet,
    ips: Vec<Ip>,
}

pub struct Driver {
    pub ctx: Context,
    nets: Mutex<BTreeMap<Uuid, Arc<NetObj>>>,
    active: Mutex<BTreeMap<Uuid, ActiveInfo>>,
    fw: Arc<dyn Firewall>,
    fw_lock: tokio::sync::Mutex<()>,
    nl: Netlink,
    jobs: InFlight,
    pub outbox: Outbox<Change>,
    /// Host interfaces (libvirt's virtinterfaced), a subsystem of their own.
    pub ifaces: Arc<crate::interface::Ifaces>,
    /// Network filters and their bindings (libvirt's virtnwfilterd).
    pub nwfilters: Arc<crate::nwfilter::NwFilters>,
    /// Who dnsmasq runs as (`dnsmasq::pick_user`).
    dnsmasq_user: Option<String>,
    config_dir: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
}

impl Driver {
    /// Builds the driver with nothing loaded yet. [`Driver::load`] reads the disk once
    /// the outbox is connected, so every network it finds is published.
    pub fn new(ctx: Context) -> anyhow::Result<Arc<Driver>> {
        let s = &ctx.settings;
        let config_dir = s.config_dir.join("network");
        let run_dir = s.runtime_dir.join("network");
        let state_dir = s.state_dir.join("network");
        for d in [
            &config_dir,
            &config_dir.join("autostart"),
            &run_dir,
            &state_dir,
        ] {
            common::persist::create_dir_all(d, 0o755)?;
        }
        let configured = std::env::var(dnsmasq::USER_ENV).ok();
        let dnsmasq_user =
            dnsmasq::pick_user(s.mode == common::cli::Mode::System, configured.as_deref())?;
        let ifaces = crate::interface::Ifaces::new(&s.config_dir, &s.runtime_dir)?;
        let nwfilters = crate::nwfilter::NwFilters::new(&s.config_dir, &s.runtime_dir)?;
        let driver = Arc::new(Driver {
            dnsmasq_user,
            nl: Netlink::new()?,
            ctx,
            nets: Mutex::new(BTreeMap::new()),
            active: Mutex::new(BTreeMap::new()),
            fw: firewall::backend(),
            fw_lock: tokio::sync::Mutex::new(()),
            jobs: InFlight::new(),
            outbox: Outbox::new(),
            ifaces,
            nwfilters,
            config_dir,
            run_dir,
            state_dir,
        });
        // Watch before load so a flush during adoption is not missed.
        driver.watch_firewall();
        Ok(driver)
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }
    fn autostart_path(&self, name: &str) -> PathBuf {
        self.config_dir
            .join("autostart")
            .join(format!("{name}.xml"))
    }
    fn status_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.xml"))
    }
    /// A start or stop in progress: the network's XML, on disk before the first piece
    /// is made (or taken down). Found at load, it means a kill -9 cut the operation
    /// short, and everything the XML names is taken down.
    fn pending_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.pending"))
    }
    fn ports_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.ports"))
    }
    pub fn paths(&self, name: &str) -> Paths {
        Paths::new(&self.run_dir, &self.state_dir, name)
    }

    pub fn list(&self) -> Vec<Arc<NetObj>> {
        self.lock_nets()
            .values()
            .filter(|n| n.served())
            .cloned()
            .collect()
    }

    fn lock_nets(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Arc<NetObj>>> {
        self.nets.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_active(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, ActiveInfo>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn by_uuid(&self, uuid: &Uuid) -> Result<Arc<NetObj>> {
        self.lock_nets()
            .get(uuid)
            .filter(|n| n.served())
            .cloned()
            .ok_or_else(|| NetError::NoNetwork(format!("uuid '{uuid}'")))
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<NetObj>> {
        self.lock_nets()
            .values()
            .find(|n| n.name == name && n.served())
            .cloned()
            .ok_or_else(|| NetError::NoNetwork(format!("name '{name}'")))
    }

    /// Parses a document, checks name/uuid clashes and fills defaults.
    fn prepare(&self, text: &str) -> Result<(Network, Option<Arc<NetObj>>)> {
        let mut net = Network::from_xml(text)?;
        let nets = self.lock_nets();
        let mut existing = None;
        for o in nets.values() {
            if o.name == net.name && o.uuid != net.uuid {
                return Err(NetError::NameTaken(net.name.clone(), o.uuid));
            }
            if o.uuid == net.uuid {
                if o.name != net.name {
                    return Err(NetError::Exists(format!(
                        "{}' is already defined with uuid '{}",
                        o.name, o.uuid
                    )));
                }
                existing = Some(o.clone());
            }
        }
        drop(nets);
        let taken = self.taken_bridges(existing.as_ref().map(|o| o.uuid));
        if let Some(b) = &net.bridge.name {
            if net.owns_bridge() && taken.iter().any(|t| t == b) {
                return Err(NetError::BridgeInUse(b.clone()));
            }
        }
        net.fill_defaults(&taken);
        Ok((net, existing))
    }

    /// Bridge names of every defined network but `except` (from the cached names).
    fn taken_bridges(&self, except: Option<Uuid>) -> Vec<String> {
        let objs = self.list();
        objs.iter()
            .filter(|o| Some(o.uuid) != except)
            .map(|o| o.state().def.bridge_name().to_owned())
            .chain(self.lock_active().values().map(|a| a.fw.bridge.clone()))
            .collect()
    }

    pub async fn define(self: &Arc<Self>, text: &str) -> Result<Arc<NetObj>> {
        let _j = self.jobs.enter();
        let (net, existing) = self.prepare(text)?;
        write_durable(
            self.config_path(&net.name),
            net.to_xml(),
            0o600,
            format!("cannot write config of network '{}'", net.name),
        )
        .await?;
        let obj = match existing {
            Some(o) => {
                {
                    let _job = o.job.lock().await;
                    let mut st = o.state();
                    st.def = net;
                    st.persistent = true;
                }
                o
            }
            None => self.insert(net, true, false, None).await,
        };
        self.lifecycle(&obj, NetworkEvent::Defined).await;
        Ok(obj)
    }

    async fn insert(
        &self,
        def: Network,
        persistent: bool,
        autostart: bool,
        live: Option<Network>,
    ) -> Arc<NetObj> {
        let obj = Arc::new(NetObj {
            uuid: def.uuid,
            name: def.name.clone(),
            served: std::sync::atomic::AtomicBool::new(false),
            job: tokio::sync::Mutex::new(()),
            state: Mutex::new(NetState {
                def,
                live,
                persistent,
                autostart,
                dnsmasq: None,
                ports: BTreeMap::new(),
                generation: 0,
            }),
        });
        self.lock_nets().insert(obj.uuid, obj.clone());
        self.outbox.send(Change::NetworkAdded(obj.uuid)).await;
        obj.served.store(true, std::sync::atomic::Ordering::Release);
        obj
    }

    pub async fn create_xml(self: &Arc<Self>, text: &str) -> Result<Arc<NetObj>> {
        let _j = self.jobs.enter();
        let (net, existing) = self.prepare(text)?;
        if existing.is_some() {
            return Err(NetError::Exists(net.name));
        }
        let obj = self.insert(net, false, false, None).await;
        let res = {
            let _job = obj.job.lock().await;
            self.start_locked(&obj).await
        };
        if let Err(e) = res {
            self.remove(&obj).await;
            return Err(e);
        }
        self.lifecycle(&obj, NetworkEvent::Started).await;
        Ok(obj)
    }

    async fn remove(&self, obj: &Arc<NetObj>) {
        self.lock_nets().remove(&obj.uuid);
        self.outbox.send(Change::NetworkRemoved(obj.uuid)).await;
    }

    pub async fn create(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.jobs.enter();
        let job = obj.job.lock().await;
        self.start_locked(obj).await?;
        drop(job);
        self.lifecycle(obj, NetworkEvent::Started).await;
        self.outbox
            .send(Change::ActiveChanged(obj.uuid, true))
            .await;
        Ok(())
    }

    /// Starts the network (the caller holds its job): checks, the intent on disk, bridge,
    /// rules, dnsmasq, then the intent becomes the status file. Undoes what it did on
    /// failure; a kill -9 on the way leaves the intent, and the next load undoes it.
    async fn start_locked(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let net = {
            let st = obj.state();
            if st.live.is_some() {
                return Err(NetError::Active(obj.name.clone()));
            }
            st.def.clone()
        };
        self.check_clashes(&net)?;
        self.check_bridge(&net).await?;
        let ports = self.ports_dir(&net.name);
        let pending = self.pending_path(&net.name);
        let xml = net.to_xml();
        blocking_io("cannot write network status", move || {
            // A run starts with no ports: records an older run left must not come
            // back with this one's adoption.
            match std::fs::remove_dir_all(&ports) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            common::persist::write_atomic(&pending, xml.as_bytes(), 0o600)
        })
        .await?;
        let mut res = self.bring_up_bridge(&net).await;
        if res.is_ok() {
            res = self.start_rest(obj, &net).await;
        }
        if let Err(e) = res {
            self.stop_pieces(obj, &net).await;
            return Err(e);
        }
        Ok(())
    }

    /// Refuses a start whose bridge or subnets another active network has.
    fn check_clashes(&self, net: &Network) -> Result<()> {
        let br = net.bridge_name();
        let active = self.lock_active();
        for a in active.values() {
            if net.owns_bridge() && a.fw.bridge == br {
                return Err(NetError::BridgeInUse(br.to_owned()));
            }
            for mine in &net.ips {
                if a.ips.iter().any(|o| overlaps(mine, o)) {
                    return Err(NetError::Overlap {
                        new: net.name.clone(),
                        subnet: format!("{}/{}", mine.network(), mine.prefix),
                        other: a.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks that the bridge a network owns is free, or that the one it uses exists.
    async fn check_bridge(&self, net: &Network) -> Result<()> {
        let br = net.bridge_name();
        match (net.owns_bridge(), self.nl.index(br).await?) {
            (true, Some(_)) => Err(NetError::BridgeInUse(br.to_owned())),
            (false, None) => Err(NetError::NoBridge(br.to_owned())),
            _ => Ok(()),
        }
    }

    /// Creates the bridge a network owns (checked free by [`Self::check_bridge`]).
    async fn bring_up_bridge(&self, net: &Network) -> Result<()> {
        if !net.owns_bridge() {
            return Ok(());
        }
        let br = net.bridge_name().to_owned();
        let addrs: Vec<_> = net.ips.iter().map(|i| (i.address, i.prefix)).collect();
        let opts = crate::bridge::BridgeOpts {
            mac: net.mac,
            mtu: net.mtu,
            stp: net.bridge.stp.unwrap_or(true),
            delay: net.bridge.delay.unwrap_or(0),
        };
        if let Err(e) = self.nl.create_bridge(&br, opts, &addrs).await {
            let _ = self.nl.delete(&br).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn start_rest(self: &Arc<Self>, obj: &Arc<NetObj>, net: &Network) -> Result<()> {
        self.lock_active().insert(
            obj.uuid,
            ActiveInfo {
                name: net.name.clone(),
                fw: FwNet::of(net),
                ips: net.ips.clone(),
            },
        );
        // Rules and dnsmasq are independent: set them up concurrently. On failure the
        // caller tears down whatever did come up (dnsmasq is recorded first).
        let dns = async {
            if dnsmasq::needed(net) {
                self.spawn_dnsmasq(net).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (fw, dns) = tokio::join!(self.apply_firewall(), dns);
        // Everything is up: the intent becomes the status file, in one rename.
        let done = match (&fw, &dns) {
            (Ok(()), Ok(_)) => {
                self.commit(&net.name, true, "cannot write network status")
                    .await
            }
            _ => Ok(()),
        };
        let generation = {
            let mut st = obj.state();
            st.generation += 1;
            if let Ok(Some(w)) = &dns {
                st.dnsmasq = Some(w.clone());
            }
            if fw.is_ok() && dns.is_ok() && done.is_ok() {
                // Active only once everything is up: a reader never sees a half start.
                st.live = Some(net.clone());
            }
            st.generation
        };
        if let Ok(Some(w)) = &dns {
            self.supervise(obj.clone(), w.clone(), generation);
        }
        fw?;
        dns?;
        done?;
        tracing::info!(network = %net.name, "started");
        Ok(())
    }

    /// Renames the intent to the status file (`started`) or the status file to the
    /// intent (a stop begins), and makes the rename durable.
    async fn commit(&self, name: &str, started: bool, what: &str) -> Result<()> {
        let (pending, status) = (self.pending_path(name), self.status_path(name));
        let (from, to) = if started {
            (pending, status)
        } else {
            (status, pending)
        };
        let dir = self.run_dir.clone();
        blocking_io(what, move || {
            std::fs::rename(&from, &to)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
    }

    async fn apply_firewall(&self) -> Result<()> {
        let _g = self.fw_lock.lock().await;
        let nets: Vec<FwNet> = self.lock_active().values().map(|a| a.fw.clone()).collect();
        let fw = self.fw.clone();
        // nft is a short-lived process; run it off the async threads.
        tokio::task::spawn_blocking(move || fw.apply(&nets))
            .await
            .map_err(|e| FirewallError::Apply(e.to_string()))??;
        Ok(())
    }

    /// Checks our tables against the active networks and re-applies them when someone
    /// else flushed or deleted any of it. Returns whether it had to re-apply.
    pub async fn heal_firewall(&self) -> Result<bool> {
        let _g = self.fw_lock.lock().await;
        let nets: Vec<FwNet> = self.lock_active().values().map(|a| a.fw.clone()).collect();
        if nets.is_empty() {
            return Ok(false);
        }
        let fw = self.fw.clone();
        let healed = tokio::task::spawn_blocking(move || {
            if fw.intact(&nets)? {
                return Ok(false);
            }
            fw.apply(&nets).map(|()| true)
        })
        .await
        .map_err(|e| FirewallError::Apply(e.to_string()))??;
        if healed {
            tracing::warn!("firewall rules were changed behind our back; put them back");
        }
        Ok(healed)
    }

    /// Follows nftables change events: when something deletes from our tables, waits
    /// until the changes settle (debounce) and heals.
    fn watch_firewall(self: &Arc<Self>) {
        const SETTLE: Duration = Duration::from_millis(50);
        let mut watch = match firewall::watch::NftWatch::open() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch nftables changes ({e}); flushed rules are only put back at the next start");
                return;
            }
        };
        let tables = self.fw.tables();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match watch.next(tables).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!("nftables watch failed: {e}");
                        return;
                    }
                }
                // Debounce: swallow events until SETTLE passes without one.
                while let Ok(r) = tokio::time::timeout(SETTLE, watch.next(tables)).await {
                    if let Err(e) = r {
                        tracing::error!("nftables watch failed: {e}");
                        return;
                    }
                }
                let Some(d) = me.upgrade() else { return };
                if let Err(e) = d.heal_firewall().await {
                    tracing::error!("cannot put firewall rules back: {e}");
                }
            }
        });
    }

    /// Writes dnsmasq's files and starts it; returns once it wrote its pidfile.
    async fn spawn_dnsmasq(&self, net: &Network) -> Result<Arc<ChildWatch>> {
        let p = self.paths(&net.name);
        let files = [
            (p.conf.clone(), dnsmasq::config(net, &p)?),
            (p.hostsfile.clone(), dnsmasq::hostsfile(net)?),
            (p.addnhosts.clone(), dnsmasq::addnhosts(net)?),
        ];
        let argv = dnsmasq::argv(&p, self.dnsmasq_user.as_deref());
        let pidfile = p.pid.clone();
        // Three fsyncs and a fork: off the async threads.
        let watch = blocking_io("cannot start dnsmasq", move || {
            for (path, text) in &files {
                common::persist::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
            }
            let _ = std::fs::remove_file(&pidfile);
            let child = std::process::Command::new("dnsmasq")
                .args(argv)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            // The pidfd is opened while the child cannot have been reaped yet; from
            // here on the watch reaps it.
            let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
            ChildWatch::new(pid)
        })
        .await?;
        let watch = Arc::new(watch);
        let pid = watch.pid();
        // dnsmasq writes its pidfile once it is listening; give up waiting after a
        // while and let it run (as before), but notice at once if it exits.
        let written = async {
            for _ in 0..400 {
                if read_pid(&p.pid) == Some(pid) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::select! {
            () = written => Ok(watch),
            () = watch.exited() => {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                Err(NetError::Unsupported(format!(
                    "dnsmasq exited at start: {}",
                    log.lines().last().unwrap_or("")
                )))
            }
        }
    }

    /// Restarts dnsmasq when it dies while its network is active.
    fn supervise(self: &Arc<Self>, obj: Arc<NetObj>, watch: Arc<ChildWatch>, generation: u64) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut watch = watch;
            loop {
                watch.exited().await;
                let Some(d) = me.upgrade() else { return };
                let _job = obj.job.lock().await;
                let net = {
                    let st = obj.state();
                    let current = st.dnsmasq.as_ref().is_some_and(|w| Arc::ptr_eq(w, &watch));
                    if st.generation != generation || !current {
                        return;
                    }
                    let Some(net) = st.live.clone() else { return };
                    net
                };
                tracing::warn!(network = %net.name, "dnsmasq {} died; restarting it", watch.pid());
                match d.spawn_dnsmasq(&net).await {
                    Ok(w) => {
                        obj.state().dnsmasq = Some(w.clone());
                        watch = w;
                    }
                    Err(e) => {
                        tracing::error!(network = %net.name, "cannot restart dnsmasq: {e}");
                        obj.state().dnsmasq = None;
                        return;
                    }
                }
            }
        });
    }

    pub async fn destroy(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.jobs.enter();
        let job = obj.job.lock().await;
        let (net, persistent) = {
            let st = obj.state();
            let Some(net) = st.live.clone() else {
                return Err(NetError::Inactive(obj.name.clone()));
            };
            (net, st.persistent)
        };
        // The status file becomes the intent before anything is taken down, so a
        // kill -9 on the way leaves the next load the list of what is left to take down.
        if self
            .commit(&net.name, false, "cannot write network status")
            .await
            .is_err()
        {
            write_durable(
                self.pending_path(&net.name),
                net.to_xml(),
                0o600,
                "cannot write network status".into(),
            )
            .await?;
        }
        self.stop_pieces(obj, &net).await;
        drop(job);
        self.lifecycle(obj, NetworkEvent::Stopped).await;
        if persistent {
            self.outbox
                .send(Change::ActiveChanged(obj.uuid, false))
                .await;
        } else {
            self.remove(obj).await;
        }
        Ok(())
    }

    /// Tears down everything a start made (best effort: each piece is attempted). The
    /// caller holds the job.
    async fn stop_pieces(&self, obj: &NetObj, net: &Network) {
        let (dns, ports) = {
            let mut st = obj.state();
            st.generation += 1;
            st.live = None;
            (st.dnsmasq.take(), std::mem::take(&mut st.ports))
        };
        // A port lives only as long as its network runs.
        for uuid in ports.into_keys() {
            self.outbox.send(Change::PortRemoved(uuid)).await;
        }
        self.lock_active().remove(&obj.uuid);
        // The three pieces are independent: take them down concurrently.
        let fw = async {
            if let Err(e) = self.apply_firewall().await {
                tracing::error!(network = %net.name, "{e}");
            }
        };
        let dns = async {
            if let Some(w) = dns {
                w.terminate(Duration::from_secs(2)).await;
            }
        };
        let br = async {
            if net.owns_bridge() {
                if let Err(e) = self.nl.delete(net.bridge_name()).await {
                    tracing::error!(network = %net.name, "cannot delete bridge: {e}");
                }
            }
        };
        tokio::join!(fw, dns, br);
        self.remove_run_files(&net.name).await;
        tracing::info!(network = %net.name, "stopped");
    }

    /// Removes a network's runtime files; the intent goes last, once nothing it names
    /// is left.
    async fn remove_run_files(&self, name: &str) {
        let p = self.paths(name);
        let files = [
            p.conf,
            p.pid,
            p.hostsfile,
            p.addnhosts,
            self.status_path(name),
        ];
        let ports = self.ports_dir(name);
        let pending = self.pending_path(name);
        // Unlinks without fsync, but a folder tree of port files: off the async threads.
        let _ = blocking_io("cannot clean up", move || {
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir_all(&ports);
            let _ = std::fs::remove_file(&pending);
            Ok(())
        })
        .await;
    }

    pub async fn undefine(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.jobs.enter();
        let job = obj.job.lock().await;
        if !obj.state().persistent {
            return Err(NetError::BadArg(format!(
                "network '{}' is not persistent",
                obj.name
            )));
        }
        remove_durable(self.config_path(&obj.name), "cannot remove network config").await?;
        // A plain unlink (no fsync), as before: short enough for an async thread.
        let _ = std::fs::remove_file(self.autostart_path(&obj.name));
        let active = {
            let mut st = obj.state();
            st.persistent = false;
            st.autostart = false;
            st.live.is_some()
        };
        drop(job);
        self.lifecycle(obj, NetworkEvent::Undefined).await;
        if !active {
            self.remove(obj).await;
        }
        Ok(())
    }

    pub async fn set_autostart(&self, obj: &NetObj, on: bool) -> Result<()> {
        let _job = obj.job.lock().await;
        let def = {
            let st = obj.state();
            if !st.persistent {
                return Err(NetError::BadArg(
                    "cannot set autostart for transient network".into(),
                ));
            }
            st.def.to_xml()
        };
        let path = self.autostart_path(&obj.name);
        if on {
            write_durable(path, def, 0o600, "cannot write autostart marker".into()).await?;
        } else {
            let _ = remove_durable(path, "cannot remove autostart marker").await;
        }
        obj.state().autostart = on;
        Ok(())
    }

    pub fn xml_desc(&self, obj: &NetObj, inactive: bool) -> String {
        let st = obj.state();
        match (&st.live, inactive) {
            (Some(l), false) => l.to_xml(),
            _ => st.def.to_xml(),
        }
    }

    pub fn leases(&self, obj: &NetObj, mac: &str) -> Result<Vec<(String, Lease, u8)>> {
        let Some(net) = obj.state().live.clone() else {
            return Err(NetError::Inactive(obj.name.clone()));
        };
        let text = std::fs::read_to_string(self.paths(&net.name).leases).unwrap_or_default();
        let mac = mac.to_ascii_lowercase();
        Ok(dnsmasq::parse_leases(&text)
            .into_iter()
            .filter(|l| mac.is_empty() || l.mac.eq_ignore_ascii_case(&mac))
            .map(|l| {
                let prefix = net
                    .ips
                    .iter()
                    .find(|i| i.contains(&l.ip))
                    .map(|i| i.prefix)
                    .unwrap_or(0);
                (net.bridge_name().to_owned(), l, prefix)
            })
            .collect())
    }

    /// `Update` for DHCP host entries and DNS hosts (add first/last, delete, modify).
    pub async fn update(
        &self,
        obj: &NetObj,
        command: u32,
        section: u32,
        parent_index: i32,
        text: &str,
        flags: UpdateFlags,
    ) -> Result<()> {
        let _j = self.jobs.enter();
        let el = parse(text)?;
        let _job = obj.job.lock().await;
        let (mut new_live, mut new_def, persistent) = {
            let st = obj.state();
            (st.live.clone(), st.def.clone(), st.persistent)
        };
        let (live, config) = if flags.is_empty() {
            (new_live.is_some(), persistent)
        } else {
            (
                flags.contains(UpdateFlags::AFFECT_LIVE),
                flags.contains(UpdateFlags::AFFECT_CONFIG),
            )
        };
        if live && new_live.is_none() {
            return Err(NetError::Inactive(obj.name.clone()));
        }
        let apply = |net: &mut Network| apply_update(net, &el, command, section, parent_index);
        if live {
            if let Some(n) = new_live.as_mut() {
                apply(n)?;
            }
        }
        if config {
            apply(&mut new_def)?;
        }
        if config && persistent {
            write_durable(
                self.config_path(&obj.name),
                new_def.to_xml(),
                0o600,
                "cannot write network config".into(),
            )
            .await?;
        }
        if config {
            obj.state().def = new_def;
        }
        if live {
            if let Some(n) = &new_live {
                self.write_live_files(n).await?;
                if let Some(w) = &obj.state().dnsmasq {
                    // dnsmasq re-reads dhcp-hostsfile and addn-hosts on SIGHUP.
                    w.signal(Signal::SIGHUP);
                }
            }
            obj.state().live = new_live;
        }
        Ok(())
    }

    /// dnsmasq's host files and the status file of a running network after an update.
    async fn write_live_files(&self, n: &Network) -> Result<()> {
        let p = self.paths(&n.name);
        write_durable(
            p.hostsfile,
            dnsmasq::hostsfile(n)?,
            0o644,
            "cannot write hostsfile".into(),
        )
        .await?;
        write_durable(
            p.addnhosts,
            dnsmasq::addnhosts(n)?,
            0o644,
            "cannot write addnhosts".into(),
        )
        .await?;
        write_durable(
            self.status_path(&n.name),
            n.to_xml(),
            0o600,
            "cannot write network status".into(),
        )
        .await
    }

    pub async fn port_create(&self, obj: &NetObj, text: &str) -> Result<Uuid> {
        let _j = self.jobs.enter();
        let mut port = Port::from_xml(text)?;
        let _job = obj.job.lock().await;
        {
            let st = obj.state();
            let Some(net) = &st.live else {
                return Err(NetError::Inactive(obj.name.clone()));
            };
            if st.ports.contains_key(&port.uuid) {
                return Err(NetError::PortExists(port.uuid));
            }
            port.bridge = Some(net.bridge_name().to_owned());
            port.mac_table_manager = net.bridge.mac_table_manager.clone();
        }
        let dir = self.ports_dir(&obj.name);
        let file = dir.join(format!("{}.xml", port.uuid));
        let xml = port.to_xml();
        blocking_io("cannot write port status", move || {
            common::persist::create_dir_all(&dir, 0o755)?;
            common::persist::write_atomic(&file, xml.as_bytes(), 0o600)
        })
        .await?;
        let uuid = port.uuid;
        obj.state().ports.insert(uuid, port);
        self.outbox.send(Change::PortAdded(uuid)).await;
        Ok(uuid)
    }

    pub async fn port_delete(&self, obj: &NetObj, port: &Uuid) -> Result<()> {
        let _job = obj.job.lock().await;
        if obj.state().ports.remove(port).is_none() {
            return Err(NetError::NoPort(port.to_string()));
        }
        // A plain unlink (no fsync): short enough for an async thread.
        let _ = std::fs::remove_file(self.ports_dir(&obj.name).join(format!("{port}.xml")));
        self.outbox.send(Change::PortRemoved(*port)).await;
        Ok(())
    }

    /// Finds a port across networks: (network, port).
    pub fn find_port(&self, port: &Uuid) -> Result<(Arc<NetObj>, Port)> {
        for o in self.list() {
            if let Some(p) = o.state().ports.get(port) {
                return Ok((o.clone(), p.clone()));
            }
        }
        Err(NetError::NoPort(port.to_string()))
    }

    async fn lifecycle(&self, obj: &NetObj, ev: NetworkEvent) {
        self.outbox.send(Change::Lifecycle(obj.uuid, ev)).await;
    }

    /// Reads configs and runtime status; adopts what runs, cleans what died, puts
    /// the rules back, starts autostart networks. Call it once, after the outbox is
    /// connected: every network it finds is published.
    pub async fn load(self: &Arc<Self>) {
        let read_dir = |d: &Path| -> Vec<(String, String)> {
            let Ok(rd) = std::fs::read_dir(d) else {
                return vec![];
            };
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "xml"))
                .filter_map(|e| {
                    let name = e.path().file_stem()?.to_string_lossy().into_owned();
                    Some((name, std::fs::read_to_string(e.path()).ok()?))
                })
                .collect()
        };
        let autostart: Vec<String> = read_dir(&self.config_dir.join("autostart"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for (file, text) in read_dir(&self.config_dir) {
            match Network::from_xml(&text) {
                Ok(net) if net.name == file => {
                    let auto = autostart.contains(&net.name);
                    self.insert(net, true, auto, None).await;
                }
                Ok(_) => tracing::warn!("{file}.xml: name does not match the file name"),
                Err(e) => tracing::warn!("cannot load network config {file}.xml: {e}"),
            }
        }
        remove_stale_temp_files(&[
            &self.config_dir,
            &self.config_dir.join("autostart"),
            &self.run_dir,
        ]);
        let running = dnsmasq_processes(&self.run_dir);
        let cut = self.take_down_cut_operations(&running).await;
        for (file, text) in read_dir(&self.run_dir) {
            let net = match Network::from_xml(&text) {
                Ok(n) if n.name == file && !cut.contains(&file) => n,
                _ => continue,
            };
            let obj = match self.by_uuid(&net.uuid) {
                Ok(o) => o,
                Err(_) => self.insert(net.clone(), false, false, None).await,
            };
            self.adopt(&obj, net, &running).await;
        }
        // Puts back rules flushed while the daemon was away, and takes out those of a
        // cut start or stop. With nothing active and nothing cut short the firewall is
        // left alone.
        if !self.lock_active().is_empty() || !cut.is_empty() {
            if let Err(e) = self.apply_firewall().await {
                tracing::error!("{e}");
            }
        }
        for obj in self.list() {
            let start = {
                let st = obj.state();
                st.autostart && st.live.is_none()
            };
            if start {
                if let Err(e) = self.create(&obj).await {
                    tracing::error!(network = %obj.name, "autostart failed: {e}");
                }
            }
        }
    }

    /// Starts and stops a kill -9 cut short (their `NAME.pending`): takes down whatever
    /// they left. Returns the names of those networks.
    async fn take_down_cut_operations(&self, running: &[(i32, PathBuf)]) -> Vec<String> {
        let mut cut = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.run_dir) {
            for e in rd.flatten() {
                let path = e.path();
                if path.extension().is_none_or(|x| x != "pending") {
                    continue;
                }
                let Some(file) = path.file_stem().map(|f| f.to_string_lossy().into_owned()) else {
                    continue;
                };
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Network::from_xml(&t).map_err(|e| e.to_string()))
                {
                    Ok(net) if net.name == file => {
                        tracing::warn!(network = %file, "a start or stop was cut short; taking down what it left");
                        self.take_down_leftovers(&net, running).await;
                    }
                    _ => {
                        tracing::warn!("unreadable {}: removed", path.display());
                        let _ = std::fs::remove_file(&path);
                    }
                }
                cut.push(file);
            }
        }
        cut
    }

    /// Takes down what a network's XML names, without a live record of it: its
    /// dnsmasq (found by its `--conf-file`, so also one that had not written its pidfile
    /// yet), its bridge, and its runtime files. Its rules go with the next apply.
    async fn take_down_leftovers(&self, net: &Network, running: &[(i32, PathBuf)]) {
        let conf = self.paths(&net.name).conf;
        for (pid, _) in running.iter().filter(|(_, c)| *c == conf) {
            // The pidfd is opened before the check, so the PID cannot be recycled
            // between the check and the signal.
            if let Ok(w) = ChildWatch::new(*pid) {
                if is_our_dnsmasq(*pid, &conf) {
                    tracing::info!(network = %net.name, "stopping dnsmasq {pid}");
                    w.terminate(Duration::from_secs(2)).await;
                }
            }
        }
        if net.owns_bridge() {
            if let Err(e) = self.nl.delete(net.bridge_name()).await {
                tracing::error!(network = %net.name, "cannot delete bridge: {e}");
            }
        }
        self.remove_run_files(&net.name).await;
    }

    async fn adopt(self: &Arc<Self>, obj: &Arc<NetObj>, net: Network, running: &[(i32, PathBuf)]) {
        let job = obj.job.lock().await;
        let bridge_ok =
            !net.owns_bridge() || matches!(self.nl.index(net.bridge_name()).await, Ok(Some(_)));
        if !bridge_ok {
            tracing::warn!(network = %net.name, "bridge is gone; network is stopped");
            self.take_down_leftovers(&net, running).await;
            let transient = !obj.state().persistent;
            drop(job);
            if transient {
                self.remove(obj).await;
            }
            return;
        }
        self.lock_active().insert(
            obj.uuid,
            ActiveInfo {
                name: net.name.clone(),
                fw: FwNet::of(&net),
                ips: net.ips.clone(),
            },
        );
        let ports = self.read_ports(&net.name);
        let generation = {
            let mut st = obj.state();
            st.live = Some(net.clone());
            st.generation += 1;
            st.ports = ports;
            st.generation
        };
        let adopted: Vec<Uuid> = obj.state().ports.keys().copied().collect();
        for uuid in adopted {
            self.outbox.send(Change::PortAdded(uuid)).await;
        }
        if dnsmasq::needed(&net) {
            let watch = self.adopt_dnsmasq(&net, running).await;
            obj.state().dnsmasq = watch.clone();
            if let Some(w) = watch {
                self.supervise(obj.clone(), w, generation);
            }
        }
        tracing::info!(network = %net.name, "adopted running network");
    }

    fn read_ports(&self, name: &str) -> BTreeMap<Uuid, Port> {
        let mut ports = BTreeMap::new();
        let dir = self.ports_dir(name);
        remove_stale_temp_files(&[&dir]);
        if let Ok(rd) = std::fs::read_dir(dir) {
            // Only `UUID.xml`: the temp file of a cut write must never count as a port.
            for e in rd
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "xml"))
            {
                if let Ok(p) = std::fs::read_to_string(e.path())
                    .map_err(drop)
                    .and_then(|t| Port::from_xml(&t).map_err(drop))
                {
                    ports.insert(p.uuid, p);
                }
            }
        }
        ports
    }

    /// The dnsmasq of an adopted network: the one still running (the pidfile's, else
    /// any with our `--conf-file`; others are stopped), or a new one.
    async fn adopt_dnsmasq(
        &self,
        net: &Network,
        running: &[(i32, PathBuf)],
    ) -> Option<Arc<ChildWatch>> {
        let p = self.paths(&net.name);
        let mut found: Vec<i32> = running
            .iter()
            .filter(|(_, c)| *c == p.conf)
            .map(|(pid, _)| *pid)
            .collect();
        // The pidfile's first: that is the one clients and logs know.
        if let Some(pos) = read_pid(&p.pid).and_then(|pid| found.iter().position(|f| *f == pid)) {
            found.swap(0, pos);
        }
        let mut keep = None;
        for pid in found {
            let Ok(w) = ChildWatch::new(pid) else {
                continue;
            };
            if !is_our_dnsmasq(pid, &p.conf) {
                continue;
            }
            if keep.is_none() {
                keep = Some(Arc::new(w));
            } else {
                tracing::warn!(network = %net.name, "stopping a second dnsmasq {pid}");
                w.terminate(Duration::from_secs(2)).await;
            }
        }
        if keep.is_some() {
            return keep;
        }
        match self.spawn_dnsmasq(net).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(network = %net.name, "cannot start dnsmasq: {e}");
                None
            }
        }
    }
}

/// Removes the temp files of atomic writes a killed daemon left (`.NAME.tmpPID`).
fn remove_stale_temp_files(dirs: &[&Path]) {
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Every dnsmasq whose `--conf-file` is in `run_dir`, zombies left out: (PID, conf).
fn dnsmasq_processes(run_dir: &Path) -> Vec<(i32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = raw.split(|b| *b == 0);
        if !args.next().is_some_and(|a| a.ends_with(b"dnsmasq")) {
            continue;
        }
        for a in args {
            let a = String::from_utf8_lossy(a);
            if let Some(conf) = a.strip_prefix("--conf-file=").map(PathBuf::from) {
                if conf.parent() == Some(run_dir) {
                    out.push((pid, conf));
                }
            }
        }
    }
    out
}

/// Applies one `Update` edit to a definition.
fn apply_update(
    net: &mut Network,
    el: &common::xml::Element,
    command: u32,
    section: u32,
    parent_index: i32,
) -> Result<()> {
    match UpdateSection::from_wire(section) {
        Some(UpdateSection::IpDhcpHost) => {
            let host = xml::parse_dhcp_host(el)?;
            let idx = if parent_index < 0 {
                net.ips
                    .iter()
                    .position(|i| i.dhcp.is_some() && i.contains(&host.ip))
            } else {
                Some(parent_index as usize)
            };
            let ip = idx
                .and_then(|i| net.ips.get_mut(i))
                .ok_or_else(|| NetError::BadArg("no <ip> with <dhcp> for this host".into()))?;
            let hosts = &mut ip.dhcp.get_or_insert_with(Default::default).hosts;
            let same = |h: &xml::DhcpHost| {
                (h.mac.is_some() && h.mac == host.mac) || (h.name.is_some() && h.name == host.name)
            };
            edit(hosts, host.clone(), command, same, "DHCP host")?;
        }
        Some(UpdateSection::DnsHost) => {
            let host = xml::parse_dns_host(el)?;
            let hosts = &mut net.dns.get_or_insert_with(Default::default).hosts;
            let same = |h: &xml::DnsHost| h.ip == host.ip;
            edit(hosts, host.clone(), command, same, "DNS host")?;
        }
        None => {
            return Err(NetError::Unsupported(format!(
                "can't update section {section} of a network"
            )))
        }
    }
    net.validate()?;
    Ok(())
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_our_dnsmasq(pid: i32, conf: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let want = format!("--conf-file={}", conf.display());
            c.split(|b| *b == 0).any(|a| a == want.as_bytes())
        })
        .unwrap_or(false)
}

fn edit<T: Clone>(
    list: &mut Vec<T>,
    item: T,
    command: u32,
    same: impl Fn(&T) -> bool,
    what: &str,
) -> Result<()> {
    let pos = list.iter().position(&same);
    match UpdateCommand::from_wire(command) {
        Some(c @ (UpdateCommand::AddLast | UpdateCommand::AddFirst)) => {
            if pos.is_some() {
                return Err(NetError::BadArg(format!(
                    "there is already a {what} entry like this"
                )));
            }
            if c == UpdateCommand::AddLast {
                list.push(item);
            } else {
                list.insert(0, item);
            }
        }
        Some(UpdateCommand::Delete) => match pos {
            Some(i) => {
                list.remove(i);
            }
            None => return Err(NetError::BadArg(format!("no matching {what} entry"))),
        },
        Some(UpdateCommand::Modify) => match pos {
            Some(i) => list[i] = item,
            None => return Err(NetError::BadArg(format!("no matching {what} entry"))),
        },
        None => {
            return Err(NetError::BadArg(format!(
                "unknown update command {command}"
            )))
        }
    }
    Ok(())
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        !self.jobs.idle()
            || !self.ifaces.idle()
            || !self.nwfilters.idle()
            || !self.lock_active().is_empty()
    }

    async fn shutdown(&self) {
        // Wait for running jobs; networks stay up (their status is already on disk).
        for _ in 0..500 {
            if self.jobs.idle() && self.ifaces.idle() && self.nwfilters.idle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
