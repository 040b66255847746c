//! The driver: the registry of networks, their job locks, and the operations the D-Bus
//! interfaces translate to (define, start, destroy, update, ports, leases, adoption).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::error::{ErrorCode, VirError};
use common::runtime::Context;
use common::xml::{parse, XmlError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use uuid::Uuid;

use crate::bridge::{BridgeError, Netlink};
use crate::dnsmasq::{self, DnsmasqError, Lease, Paths};
use crate::firewall::{self, Firewall, FirewallError, FwNet};
use crate::xml::{self, overlaps, Ip, Network, Port};

/// libvirt's virNetworkEventLifecycleType.
pub mod event {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 3;
}

/// virNetworkUpdateCommand / virNetworkUpdateSection / flags.
pub mod update {
    pub const MODIFY: u32 = 1;
    pub const DELETE: u32 = 2;
    pub const ADD_LAST: u32 = 3;
    pub const ADD_FIRST: u32 = 4;
    pub const SECTION_IP_DHCP_HOST: u32 = 4;
    pub const SECTION_DNS_HOST: u32 = 10;
    pub const AFFECT_LIVE: u32 = 1;
    pub const AFFECT_CONFIG: u32 = 2;
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

/// One network's mutable state, behind its job lock.
pub struct NetState {
    /// The persistent (or, for transient networks, the only) definition.
    pub def: Network,
    /// The running definition.
    pub live: Option<Network>,
    pub persistent: bool,
    pub autostart: bool,
    pub dnsmasq_pid: Option<i32>,
    pub ports: BTreeMap<Uuid, Port>,
    /// Bumped on each start/stop so a supervisor of an old run stands down.
    pub generation: u64,
}

pub struct NetObj {
    pub uuid: Uuid,
    pub name: String,
    pub st: tokio::sync::Mutex<NetState>,
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
    jobs: AtomicUsize,
    /// Who dnsmasq runs as (`dnsmasq::pick_user`).
    dnsmasq_user: Option<String>,
    config_dir: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
}

struct JobGuard<'a>(&'a AtomicUsize);
impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Driver {
    /// Builds the driver, adopts running networks, starts autostart ones and
    /// registers the objects on the hub.
    pub async fn start(ctx: Context) -> anyhow::Result<Arc<Driver>> {
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
        let driver = Arc::new(Driver {
            dnsmasq_user,
            nl: Netlink::new()?,
            ctx,
            nets: Mutex::new(BTreeMap::new()),
            active: Mutex::new(BTreeMap::new()),
            fw: firewall::backend(),
            fw_lock: tokio::sync::Mutex::new(()),
            jobs: AtomicUsize::new(0),
            config_dir,
            run_dir,
            state_dir,
        });
        crate::dbus::serve_connect(&driver).await;
        // Watch before load so a flush during adoption is not missed.
        driver.watch_firewall();
        driver.load().await;
        Ok(driver)
    }

    fn job(&self) -> JobGuard<'_> {
        self.jobs.fetch_add(1, Ordering::SeqCst);
        JobGuard(&self.jobs)
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
    fn ports_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.ports"))
    }
    pub fn paths(&self, name: &str) -> Paths {
        Paths::new(&self.run_dir, &self.state_dir, name)
    }

    pub fn list(&self) -> Vec<Arc<NetObj>> {
        self.lock_nets().values().cloned().collect()
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
            .cloned()
            .ok_or_else(|| NetError::NoNetwork(format!("uuid '{uuid}'")))
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<NetObj>> {
        self.lock_nets()
            .values()
            .find(|n| n.name == name)
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
            .filter_map(|o| o.st.try_lock().ok().map(|s| s.def.bridge_name().to_owned()))
            .chain(self.lock_active().values().map(|a| a.fw.bridge.clone()))
            .collect()
    }

    pub async fn define(self: &Arc<Self>, text: &str) -> Result<Arc<NetObj>> {
        let _j = self.job();
        let (net, existing) = self.prepare(text)?;
        let xml = net.to_xml();
        common::persist::write_atomic(&self.config_path(&net.name), xml.as_bytes(), 0o600)
            .map_err(io(format!("cannot write config of network '{}'", net.name)))?;
        let obj = match existing {
            Some(o) => {
                let mut st = o.st.lock().await;
                st.def = net;
                st.persistent = true;
                drop(st);
                o
            }
            None => self.insert(net, true, false, None).await,
        };
        self.event(&obj, event::DEFINED).await;
        Ok(obj)
    }

    async fn insert(
        self: &Arc<Self>,
        def: Network,
        persistent: bool,
        autostart: bool,
        live: Option<Network>,
    ) -> Arc<NetObj> {
        let obj = Arc::new(NetObj {
            uuid: def.uuid,
            name: def.name.clone(),
            st: tokio::sync::Mutex::new(NetState {
                def,
                live,
                persistent,
                autostart,
                dnsmasq_pid: None,
                ports: BTreeMap::new(),
                generation: 0,
            }),
        });
        self.lock_nets().insert(obj.uuid, obj.clone());
        crate::dbus::serve_network(self, obj.uuid).await;
        obj
    }

    pub async fn create_xml(self: &Arc<Self>, text: &str) -> Result<Arc<NetObj>> {
        let _j = self.job();
        let (net, existing) = self.prepare(text)?;
        if existing.is_some() {
            return Err(NetError::Exists(net.name));
        }
        let obj = self.insert(net, false, false, None).await;
        let res = {
            let mut st = obj.st.lock().await;
            self.start_locked(&obj, &mut st).await
        };
        if let Err(e) = res {
            self.remove(&obj).await;
            return Err(e);
        }
        self.event(&obj, event::STARTED).await;
        Ok(obj)
    }

    async fn remove(&self, obj: &Arc<NetObj>) {
        self.lock_nets().remove(&obj.uuid);
        crate::dbus::unserve_network(self, obj.uuid).await;
    }

    pub async fn create(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.job();
        let mut st = obj.st.lock().await;
        self.start_locked(obj, &mut st).await?;
        drop(st);
        self.event(obj, event::STARTED).await;
        self.active_changed(obj, true).await;
        Ok(())
    }

    /// Starts the network: checks, bridge, status file, rules, dnsmasq. Undoes what
    /// it did on failure.
    async fn start_locked(self: &Arc<Self>, obj: &Arc<NetObj>, st: &mut NetState) -> Result<()> {
        if st.live.is_some() {
            return Err(NetError::Active(obj.name.clone()));
        }
        let net = st.def.clone();
        let br = net.bridge_name().to_owned();
        {
            let active = self.lock_active();
            for a in active.values() {
                if net.owns_bridge() && a.fw.bridge == br {
                    return Err(NetError::BridgeInUse(br));
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
        }
        if net.owns_bridge() {
            if self.nl.index(&br).await?.is_some() {
                return Err(NetError::BridgeInUse(br));
            }
            let addrs: Vec<_> = net.ips.iter().map(|i| (i.address, i.prefix)).collect();
            if let Err(e) = self
                .nl
                .create_bridge(
                    &br,
                    crate::bridge::BridgeOpts {
                        mac: net.mac,
                        mtu: net.mtu,
                        stp: net.bridge.stp.unwrap_or(true),
                        delay: net.bridge.delay.unwrap_or(0),
                    },
                    &addrs,
                )
                .await
            {
                let _ = self.nl.delete(&br).await;
                return Err(e.into());
            }
        } else if self.nl.index(&br).await?.is_none() {
            return Err(NetError::NoBridge(br));
        }
        let res = self.start_rest(obj, st, &net).await;
        if let Err(e) = res {
            self.stop_pieces(obj, st, &net).await;
            return Err(e);
        }
        Ok(())
    }

    async fn start_rest(
        self: &Arc<Self>,
        obj: &Arc<NetObj>,
        st: &mut NetState,
        net: &Network,
    ) -> Result<()> {
        common::persist::write_atomic(&self.status_path(&net.name), net.to_xml().as_bytes(), 0o600)
            .map_err(io("cannot write network status"))?;
        self.lock_active().insert(
            obj.uuid,
            ActiveInfo {
                name: net.name.clone(),
                fw: FwNet::of(net),
                ips: net.ips.clone(),
            },
        );
        st.live = Some(net.clone());
        st.generation += 1;
        // Rules and dnsmasq are independent: set them up concurrently. On failure the
        // caller tears down whatever did come up (the pid is recorded first).
        let dns = async {
            if dnsmasq::needed(net) {
                self.spawn_dnsmasq(net).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (fw, dns) = tokio::join!(self.apply_firewall(), dns);
        if let Ok(Some(pid)) = &dns {
            st.dnsmasq_pid = Some(*pid);
            self.supervise(obj.clone(), *pid, st.generation);
        }
        fw?;
        dns?;
        tracing::info!(network = %net.name, "started");
        Ok(())
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
    async fn spawn_dnsmasq(&self, net: &Network) -> Result<i32> {
        let p = self.paths(&net.name);
        let write = |path: &Path, text: String| {
            common::persist::write_atomic(path, text.as_bytes(), 0o644)
                .map_err(io(format!("cannot write {}", path.display())))
        };
        write(&p.conf, dnsmasq::config(net, &p)?)?;
        write(&p.hostsfile, dnsmasq::hostsfile(net)?)?;
        write(&p.addnhosts, dnsmasq::addnhosts(net)?)?;
        let _ = std::fs::remove_file(&p.pid);
        let child = std::process::Command::new("dnsmasq")
            .args(dnsmasq::argv(&p, self.dnsmasq_user.as_deref()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io("cannot start dnsmasq"))?;
        let pid = child.id() as i32;
        // Reaped by a thread so the supervisor can see it exit.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        for _ in 0..400 {
            if read_pid(&p.pid) == Some(pid) {
                return Ok(pid);
            }
            if !alive(pid) {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                return Err(NetError::Unsupported(format!(
                    "dnsmasq exited at start: {}",
                    log.lines().last().unwrap_or("")
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(pid)
    }

    /// Restarts dnsmasq when it dies while its network is active.
    fn supervise(self: &Arc<Self>, obj: Arc<NetObj>, pid: i32, generation: u64) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pid = pid;
            loop {
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let Some(d) = me.upgrade() else { return };
                let mut st = obj.st.lock().await;
                if st.generation != generation || st.dnsmasq_pid != Some(pid) {
                    return;
                }
                let Some(net) = st.live.clone() else { return };
                tracing::warn!(network = %net.name, "dnsmasq {pid} died; restarting it");
                match d.spawn_dnsmasq(&net).await {
                    Ok(p) => {
                        st.dnsmasq_pid = Some(p);
                        pid = p;
                    }
                    Err(e) => {
                        tracing::error!(network = %net.name, "cannot restart dnsmasq: {e}");
                        st.dnsmasq_pid = None;
                        return;
                    }
                }
            }
        });
    }

    pub async fn destroy(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.job();
        let mut st = obj.st.lock().await;
        let Some(net) = st.live.clone() else {
            return Err(NetError::Inactive(obj.name.clone()));
        };
        self.stop_pieces(obj, &mut st, &net).await;
        let persistent = st.persistent;
        drop(st);
        self.event(obj, event::STOPPED).await;
        if persistent {
            self.active_changed(obj, false).await;
        } else {
            self.remove(obj).await;
        }
        Ok(())
    }

    /// Tears down everything a start made (best effort: each piece is attempted).
    async fn stop_pieces(&self, obj: &NetObj, st: &mut NetState, net: &Network) {
        st.generation += 1;
        st.live = None;
        self.lock_active().remove(&obj.uuid);
        // The three pieces are independent: take them down concurrently.
        let pid = st.dnsmasq_pid.take();
        let fw = async {
            if let Err(e) = self.apply_firewall().await {
                tracing::error!(network = %net.name, "{e}");
            }
        };
        let dns = async {
            if let Some(pid) = pid {
                stop_process(pid).await;
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
        let p = self.paths(&net.name);
        for f in [
            &p.conf,
            &p.pid,
            &p.hostsfile,
            &p.addnhosts,
            &self.status_path(&net.name),
        ] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(self.ports_dir(&net.name));
        st.ports.clear();
        tracing::info!(network = %net.name, "stopped");
    }

    pub async fn undefine(self: &Arc<Self>, obj: &Arc<NetObj>) -> Result<()> {
        let _j = self.job();
        let mut st = obj.st.lock().await;
        if !st.persistent {
            return Err(NetError::BadArg(format!(
                "network '{}' is not persistent",
                obj.name
            )));
        }
        common::persist::remove_durable(&self.config_path(&obj.name))
            .map_err(io("cannot remove network config"))?;
        let _ = std::fs::remove_file(self.autostart_path(&obj.name));
        st.persistent = false;
        st.autostart = false;
        let active = st.live.is_some();
        drop(st);
        self.event(obj, event::UNDEFINED).await;
        if !active {
            self.remove(obj).await;
        }
        Ok(())
    }

    pub async fn set_autostart(&self, obj: &NetObj, on: bool) -> Result<()> {
        let mut st = obj.st.lock().await;
        if !st.persistent {
            return Err(NetError::BadArg(
                "cannot set autostart for transient network".into(),
            ));
        }
        let path = self.autostart_path(&obj.name);
        if on {
            common::persist::write_atomic(&path, st.def.to_xml().as_bytes(), 0o600)
                .map_err(io("cannot write autostart marker"))?;
        } else {
            let _ = common::persist::remove_durable(&path);
        }
        st.autostart = on;
        Ok(())
    }

    pub async fn xml_desc(&self, obj: &NetObj, inactive: bool) -> String {
        let st = obj.st.lock().await;
        match (&st.live, inactive) {
            (Some(l), false) => l.to_xml(),
            _ => st.def.to_xml(),
        }
    }

    pub async fn leases(&self, obj: &NetObj, mac: &str) -> Result<Vec<(String, Lease, u8)>> {
        let st = obj.st.lock().await;
        let Some(net) = st.live.clone() else {
            return Err(NetError::Inactive(obj.name.clone()));
        };
        drop(st);
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
        flags: u32,
    ) -> Result<()> {
        let _j = self.job();
        let el = parse(text)?;
        let mut st = obj.st.lock().await;
        let (live, config) = match flags & (update::AFFECT_LIVE | update::AFFECT_CONFIG) {
            0 => (st.live.is_some(), st.persistent),
            f => (f & update::AFFECT_LIVE != 0, f & update::AFFECT_CONFIG != 0),
        };
        if live && st.live.is_none() {
            return Err(NetError::Inactive(obj.name.clone()));
        }
        let apply = |net: &mut Network| -> Result<()> {
            match section {
                update::SECTION_IP_DHCP_HOST => {
                    let host = xml::parse_dhcp_host(&el)?;
                    let idx = if parent_index < 0 {
                        net.ips
                            .iter()
                            .position(|i| i.dhcp.is_some() && i.contains(&host.ip))
                    } else {
                        Some(parent_index as usize)
                    };
                    let ip = idx.and_then(|i| net.ips.get_mut(i)).ok_or_else(|| {
                        NetError::BadArg("no <ip> with <dhcp> for this host".into())
                    })?;
                    let hosts = &mut ip.dhcp.get_or_insert_with(Default::default).hosts;
                    let same = |h: &xml::DhcpHost| {
                        (h.mac.is_some() && h.mac == host.mac)
                            || (h.name.is_some() && h.name == host.name)
                    };
                    edit(hosts, host.clone(), command, same, "DHCP host")?;
                }
                update::SECTION_DNS_HOST => {
                    let host = xml::parse_dns_host(&el)?;
                    let hosts = &mut net.dns.get_or_insert_with(Default::default).hosts;
                    let same = |h: &xml::DnsHost| h.ip == host.ip;
                    edit(hosts, host.clone(), command, same, "DNS host")?;
                }
                _ => {
                    return Err(NetError::Unsupported(format!(
                        "can't update section {section} of a network"
                    )))
                }
            }
            net.validate()?;
            Ok(())
        };
        let mut new_live = st.live.clone();
        let mut new_def = st.def.clone();
        if live {
            if let Some(n) = new_live.as_mut() {
                apply(n)?;
            }
        }
        if config {
            apply(&mut new_def)?;
        }
        if config && st.persistent {
            common::persist::write_atomic(
                &self.config_path(&obj.name),
                new_def.to_xml().as_bytes(),
                0o600,
            )
            .map_err(io("cannot write network config"))?;
        }
        if config {
            st.def = new_def;
        }
        if live {
            if let Some(n) = &new_live {
                let p = self.paths(&n.name);
                let hf = dnsmasq::hostsfile(n)?;
                let ah = dnsmasq::addnhosts(n)?;
                common::persist::write_atomic(&p.hostsfile, hf.as_bytes(), 0o644)
                    .map_err(io("cannot write hostsfile"))?;
                common::persist::write_atomic(&p.addnhosts, ah.as_bytes(), 0o644)
                    .map_err(io("cannot write addnhosts"))?;
                common::persist::write_atomic(
                    &self.status_path(&n.name),
                    n.to_xml().as_bytes(),
                    0o600,
                )
                .map_err(io("cannot write network status"))?;
                if let Some(pid) = st.dnsmasq_pid {
                    // dnsmasq re-reads dhcp-hostsfile and addn-hosts on SIGHUP.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
                }
            }
            st.live = new_live;
        }
        Ok(())
    }

    pub async fn port_create(&self, obj: &NetObj, text: &str) -> Result<Uuid> {
        let _j = self.job();
        let mut port = Port::from_xml(text)?;
        let mut st = obj.st.lock().await;
        let Some(net) = &st.live else {
            return Err(NetError::Inactive(obj.name.clone()));
        };
        if st.ports.contains_key(&port.uuid) {
            return Err(NetError::PortExists(port.uuid));
        }
        port.bridge = Some(net.bridge_name().to_owned());
        port.mac_table_manager = net.bridge.mac_table_manager.clone();
        let dir = self.ports_dir(&obj.name);
        common::persist::create_dir_all(&dir, 0o755).map_err(io("cannot create ports dir"))?;
        common::persist::write_atomic(
            &dir.join(format!("{}.xml", port.uuid)),
            port.to_xml().as_bytes(),
            0o600,
        )
        .map_err(io("cannot write port status"))?;
        let uuid = port.uuid;
        st.ports.insert(uuid, port);
        Ok(uuid)
    }

    pub async fn port_delete(&self, obj: &NetObj, port: &Uuid) -> Result<()> {
        let mut st = obj.st.lock().await;
        if st.ports.remove(port).is_none() {
            return Err(NetError::NoPort(port.to_string()));
        }
        let _ = std::fs::remove_file(self.ports_dir(&obj.name).join(format!("{port}.xml")));
        Ok(())
    }

    /// Finds a port across networks: (network, port).
    pub async fn find_port(&self, port: &Uuid) -> Result<(Arc<NetObj>, Port)> {
        for o in self.list() {
            if let Some(p) = o.st.lock().await.ports.get(port) {
                return Ok((o.clone(), p.clone()));
            }
        }
        Err(NetError::NoPort(port.to_string()))
    }

    async fn event(&self, obj: &NetObj, ev: i32) {
        let path = common::objpath::network(&obj.uuid);
        self.ctx
            .hub
            .emit(
                &common::objpath::connect(),
                "org.libvirt.Connect",
                "NetworkEvent",
                &(path, ev),
            )
            .await;
    }

    async fn active_changed(&self, obj: &NetObj, active: bool) {
        let path = common::objpath::network(&obj.uuid);
        self.ctx
            .hub
            .properties_changed(
                &path,
                "org.libvirt.Network",
                &[("Active", zbus::zvariant::Value::from(active))],
            )
            .await;
    }

    /// Reads configs and runtime status; adopts what runs, cleans what died, puts
    /// the rules back, starts autostart networks.
    async fn load(self: &Arc<Self>) {
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
        for (file, text) in read_dir(&self.run_dir) {
            let net = match Network::from_xml(&text) {
                Ok(n) if n.name == file => n,
                _ => continue,
            };
            let obj = match self.by_uuid(&net.uuid) {
                Ok(o) => o,
                Err(_) => self.insert(net.clone(), false, false, None).await,
            };
            self.adopt(&obj, net).await;
        }
        // Puts back rules flushed while the daemon was away. With nothing active there
        // is nothing to put back, and the firewall is left alone.
        if !self.lock_active().is_empty() {
            if let Err(e) = self.apply_firewall().await {
                tracing::error!("{e}");
            }
        }
        for obj in self.list() {
            let start = {
                let st = obj.st.lock().await;
                st.autostart && st.live.is_none()
            };
            if start {
                if let Err(e) = self.create(&obj).await {
                    tracing::error!(network = %obj.name, "autostart failed: {e}");
                }
            }
        }
    }

    async fn adopt(self: &Arc<Self>, obj: &Arc<NetObj>, net: Network) {
        let mut st = obj.st.lock().await;
        let bridge_ok =
            !net.owns_bridge() || matches!(self.nl.index(net.bridge_name()).await, Ok(Some(_)));
        if !bridge_ok {
            tracing::warn!(network = %net.name, "bridge is gone; network is stopped");
            st.live = Some(net.clone());
            let n = net.clone();
            self.stop_pieces(obj, &mut st, &n).await;
            let transient = !st.persistent;
            drop(st);
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
        st.live = Some(net.clone());
        st.generation += 1;
        if let Ok(rd) = std::fs::read_dir(self.ports_dir(&net.name)) {
            for e in rd.flatten() {
                if let Ok(p) = std::fs::read_to_string(e.path())
                    .map_err(drop)
                    .and_then(|t| Port::from_xml(&t).map_err(drop))
                {
                    st.ports.insert(p.uuid, p);
                }
            }
        }
        if dnsmasq::needed(&net) {
            let p = self.paths(&net.name);
            let pid = read_pid(&p.pid).filter(|pid| is_our_dnsmasq(*pid, &p.conf));
            let pid = match pid {
                Some(pid) => Some(pid),
                None => match self.spawn_dnsmasq(&net).await {
                    Ok(pid) => Some(pid),
                    Err(e) => {
                        tracing::error!(network = %net.name, "cannot start dnsmasq: {e}");
                        None
                    }
                },
            };
            st.dnsmasq_pid = pid;
            if let Some(pid) = pid {
                self.supervise(obj.clone(), pid, st.generation);
            }
        }
        tracing::info!(network = %net.name, "adopted running network");
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn is_our_dnsmasq(pid: i32, conf: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let want = format!("--conf-file={}", conf.display());
            c.split(|b| *b == 0).any(|a| a == want.as_bytes())
        })
        .unwrap_or(false)
}

/// SIGTERM, then wait for it to go (SIGKILL after 2 s).
async fn stop_process(pid: i32) {
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    for i in 0..2000 {
        if !alive(pid) {
            return;
        }
        if i == 1000 {
            let _ = kill(p, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn edit<T: Clone>(
    list: &mut Vec<T>,
    item: T,
    command: u32,
    same: impl Fn(&T) -> bool,
    what: &str,
) -> Result<()> {
    let pos = list.iter().position(&same);
    match command {
        update::ADD_LAST | update::ADD_FIRST => {
            if pos.is_some() {
                return Err(NetError::BadArg(format!(
                    "there is already a {what} entry like this"
                )));
            }
            if command == update::ADD_LAST {
                list.push(item);
            } else {
                list.insert(0, item);
            }
        }
        update::DELETE => match pos {
            Some(i) => {
                list.remove(i);
            }
            None => return Err(NetError::BadArg(format!("no matching {what} entry"))),
        },
        update::MODIFY => match pos {
            Some(i) => list[i] = item,
            None => return Err(NetError::BadArg(format!("no matching {what} entry"))),
        },
        _ => {
            return Err(NetError::BadArg(format!(
                "unknown update command {command}"
            )))
        }
    }
    Ok(())
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        self.jobs.load(Ordering::SeqCst) > 0 || !self.lock_active().is_empty()
    }

    async fn shutdown(&self) {
        // Wait for running jobs; networks stay up (their status is already on disk).
        for _ in 0..500 {
            if self.jobs.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
