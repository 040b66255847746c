//! The driver: the device registry (kept current by uevents), the node-resource calls
//! and PCI detach, which the D-Bus interfaces translate to. It does not know D-Bus:
//! what clients must see goes out as a typed [`Change`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use common::error::{check_flags, flags as read_flags, ErrorCode, VirError};
use common::job::InFlight;
use common::publish::Outbox;
use common::runtime::Context;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::create::{self, Request, VportParent};
use crate::pci;
use crate::sysfs::{self, Cap, Device, ListFlags, Roots};
use crate::uevent::Uevent;

#[derive(Default)]
pub struct Registry {
    devices: BTreeMap<String, Arc<Device>>,
    by_devpath: HashMap<String, String>,
}

impl Registry {
    fn insert(&mut self, d: Device) {
        if let Some(p) = &d.devpath {
            self.by_devpath.insert(p.clone(), d.name.clone());
        }
        self.devices.insert(d.name.clone(), Arc::new(d));
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Device>> {
        let d = self.devices.remove(name)?;
        if let Some(p) = &d.devpath {
            if self.by_devpath.get(p).map(String::as_str) == Some(name) {
                self.by_devpath.remove(p);
            }
        }
        Some(d)
    }
}

/// What a change to the registry means for clients (by device name), in the order it
/// happened. Publishing is awaited: a created device is served before its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A device appeared (libvirt's NodeDeviceEvent CREATED).
    Created(String),
    /// A device went away (NodeDeviceEvent DELETED).
    Deleted(String),
    /// A device's description changed (libvirt's separate UPDATE event).
    Updated(String),
}

bitflags::bitflags! {
    /// `virNodeDeviceXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct XmlFlags: u32 {
        const INACTIVE = 1;
    }

    /// `virNodeDeviceCreateXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CreateFlags: u32 {
        const VALIDATE = 1;
    }
}

/// The registry is read under a short std lock (lists, lookups and properties never
/// wait); operations on one device (detach, reattach, reset, destroy, and a create on
/// its parent) take that device's job lock, so two of them never interleave.
pub struct Driver {
    pub ctx: Context,
    pub roots: Roots,
    registry: RwLock<Registry>,
    jobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Operations running now: the daemon does not exit idle under one.
    in_flight: InFlight,
    pub outbox: Outbox<Change>,
}

fn no_device(name: &str) -> VirError {
    VirError::new(
        ErrorCode::NoNodeDevice,
        format!("no node device with matching name '{name}'"),
    )
}

/// Starts listening to uevents. Call it before [`Driver::new`] enumerates, so that
/// nothing happening in between is missed; hand the receiver to [`Driver::follow`].
pub fn listen(roots: &Roots) -> anyhow::Result<UnboundedReceiver<Uevent>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if roots.real {
        match crate::uevent::open() {
            Ok(fd) => crate::uevent::spawn(fd, tx)?,
            Err(e) => {
                tracing::warn!("no uevent socket, device list will not follow hotplug: {e}")
            }
        }
    } else {
        tracing::info!(
            "sysfs root {} (test fixture): no hotplug",
            roots.sys.display()
        );
    }
    Ok(rx)
}

impl Driver {
    /// Keeps the registry current from `uevents` and publishes what changed. Call it
    /// once the outbox is connected.
    pub fn follow(self: &Arc<Self>, mut uevents: UnboundedReceiver<Uevent>) {
        let d = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = uevents.recv().await {
                let changes = d.apply_uevent(&ev);
                d.publish(changes).await;
            }
        });
    }

    /// The driver with its device list read from `roots` (no bus objects yet).
    pub fn new(ctx: Context, roots: Roots) -> Driver {
        let mut reg = Registry::default();
        // Rebinds a kill cut short are finished before the tree is read.
        pci::finish_rebinds(&roots, &pci::intent_dir(&ctx.settings.runtime_dir));
        for d in sysfs::enumerate(&roots) {
            reg.insert(d);
        }
        Driver {
            ctx,
            roots,
            registry: RwLock::new(reg),
            jobs: Mutex::new(HashMap::new()),
            in_flight: InFlight::new(),
            outbox: Outbox::new(),
        }
    }

    /// True while an operation runs (detach, reattach, reset, create, destroy).
    pub fn busy(&self) -> bool {
        !self.in_flight.idle()
    }

    fn intents(&self) -> std::path::PathBuf {
        pci::intent_dir(&self.ctx.settings.runtime_dir)
    }

    /// Waits for and holds the job lock of device `name`.
    async fn job(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn names(&self) -> Vec<String> {
        self.read().devices.keys().cloned().collect()
    }

    /// `ListNodeDevices`: names of the devices `filter` selects, sorted.
    pub fn list(&self, filter: u32) -> Result<Vec<String>, VirError> {
        let filter: ListFlags = read_flags(filter)?;
        Ok(self
            .read()
            .devices
            .values()
            .filter(|d| d.matches(filter))
            .map(|d| d.name.clone())
            .collect())
    }

    pub fn lookup(&self, name: &str) -> Result<Arc<Device>, VirError> {
        if !sysfs::valid_name(name) {
            return Err(no_device(name));
        }
        self.read()
            .devices
            .get(name)
            .cloned()
            .ok_or_else(|| no_device(name))
    }

    /// `NodeDeviceLookupSCSIHostByWWN`: the fc_host with both WWNs (case and a `0x`
    /// prefix do not matter).
    pub fn lookup_scsi_host_by_wwn(
        &self,
        wwnn: &str,
        wwpn: &str,
        flags: u32,
    ) -> Result<Arc<Device>, VirError> {
        check_flags(flags, 0)?;
        let norm = |s: &str| s.trim().trim_start_matches("0x").to_ascii_lowercase();
        let (n, p) = (norm(wwnn), norm(wwpn));
        self.read()
            .devices
            .values()
            .find(|d| match &d.cap {
                Cap::ScsiHost(h) => {
                    h.fc.as_ref()
                        .is_some_and(|fc| norm(&fc.wwnn) == n && norm(&fc.wwpn) == p)
                }
                _ => false,
            })
            .cloned()
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::NoNodeDevice,
                    format!("no node device with matching wwnn '{wwnn}' and wwpn '{wwpn}'"),
                )
            })
    }

    pub fn xml(&self, name: &str, flags: u32) -> Result<String, VirError> {
        // VIR_NODE_DEVICE_XML_INACTIVE: every device here is live, so the same document.
        read_flags::<XmlFlags>(flags)?;
        let d = self.lookup(name)?;
        Ok(crate::xml::device_xml(&self.roots, &d))
    }

    pub fn caps(&self, name: &str) -> Result<Vec<String>, VirError> {
        Ok(self
            .lookup(name)?
            .caps()
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    pub fn parent(&self, name: &str) -> Option<String> {
        self.read().devices.get(name).and_then(|d| d.parent.clone())
    }

    /// The sysfs directory and address of a PCI device, or libvirt's error.
    fn pci_target(&self, name: &str) -> Result<(std::path::PathBuf, sysfs::PciAddr), VirError> {
        let d = self.lookup(name)?;
        match (&d.cap, &d.sysfs) {
            (Cap::Pci(p), Some(dir)) => Ok((dir.clone(), p.addr)),
            _ => Err(VirError::new(
                ErrorCode::InvalidArg,
                format!("device '{name}' is not a PCI device"),
            )),
        }
    }

    pub async fn detach(
        self: &Arc<Self>,
        name: &str,
        driver: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let stub = pci::stub_driver(driver)?;
        let _g = self.in_flight.enter();
        let _job = self.job(name).await;
        let (dir, addr) = self.pci_target(name)?;
        let roots = self.roots.clone();
        let intents = self.intents();
        tracing::info!(device = name, "detaching to {stub}");
        blocking(move || pci::detach(&roots, &intents, &dir, addr, stub)).await?;
        self.refresh(name).await;
        Ok(())
    }

    pub async fn reattach(self: &Arc<Self>, name: &str) -> Result<(), VirError> {
        let _g = self.in_flight.enter();
        let _job = self.job(name).await;
        let (dir, addr) = self.pci_target(name)?;
        let roots = self.roots.clone();
        let intents = self.intents();
        tracing::info!(device = name, "reattaching to its host driver");
        blocking(move || pci::reattach(&roots, &intents, &dir, addr)).await?;
        self.refresh(name).await;
        Ok(())
    }

    pub async fn reset(&self, name: &str) -> Result<(), VirError> {
        let _g = self.in_flight.enter();
        let _job = self.job(name).await;
        let (dir, addr) = self.pci_target(name)?;
        blocking(move || pci::reset(&dir, addr)).await
    }

    /// Destroys a transient device: a mediated device goes through its `remove` file,
    /// an NPIV vport through its parent fc_host's `vport_delete` (the kernel then sends
    /// the remove uevents); nothing else can be destroyed.
    pub async fn destroy(self: &Arc<Self>, name: &str) -> Result<(), VirError> {
        let _g = self.in_flight.enter();
        let _job = self.job(name).await;
        let d = self.lookup(name)?;
        if let Some((file, value)) = self.vport_delete_file(&d) {
            tracing::info!(device = name, "deleting NPIV vport");
            blocking_create(move || create::write_trigger(&file, &value)).await?;
            self.follow_removal(name);
            return Ok(());
        }
        match (&d.cap, &d.sysfs) {
            (Cap::Mdev(_), Some(dir)) => {
                let f = dir.join("remove");
                tracing::info!(device = name, "removing mediated device");
                blocking(move || pci::write_flag(&f)).await
            }
            _ => Err(VirError::operation_invalid(format!(
                "device '{name}' is not a transient device (mdev or NPIV vport) that can be destroyed"
            ))),
        }
    }

    /// The parent's `vport_delete` file and what to write to it, when `d` is an NPIV
    /// vport (an fc_host whose parent scsi_host can create vports).
    fn vport_delete_file(&self, d: &Device) -> Option<(std::path::PathBuf, String)> {
        let Cap::ScsiHost(h) = &d.cap else {
            return None;
        };
        let fc = h.fc.as_ref()?;
        let parent = self.lookup(d.parent.as_deref()?).ok()?;
        let (Cap::ScsiHost(ph), Some(pdir)) = (&parent.cap, &parent.sysfs) else {
            return None;
        };
        ph.vports?;
        let file = fc_dir(pdir, ph.host).join("vport_delete");
        Some((file, format!("{}:{}", fc.wwpn, fc.wwnn)))
    }

    /// `NodeDeviceCreateXML`: creates an NPIV vport or a mediated device through the
    /// kernel's sysfs trigger and returns the new device's name once it shows up.
    pub async fn create(self: &Arc<Self>, text: &str, flags: u32) -> Result<String, VirError> {
        // VIR_NODE_DEVICE_CREATE_XML_VALIDATE: the parser always checks strictly.
        read_flags::<CreateFlags>(flags)?;
        let req = create::parse(text)?;
        // What to write where, what appears then, and on behalf of which device.
        let (file, value, want, on): (std::path::PathBuf, String, Want, String) = match &req {
            Request::Vport { parent, wwnn, wwpn } => {
                if let Ok(d) = self.lookup_scsi_host_by_wwn(wwnn.as_str(), wwpn.as_str(), 0) {
                    return Err(VirError::operation_invalid(format!(
                        "a device with wwnn '{wwnn}' and wwpn '{wwpn}' exists already: '{}'",
                        d.name
                    )));
                }
                let host = self.vport_parent(parent)?;
                let (Cap::ScsiHost(h), Some(dir)) = (&host.cap, &host.sysfs) else {
                    return Err(VirError::internal("vport parent is not a scsi_host"));
                };
                (
                    fc_dir(dir, h.host).join("vport_create"),
                    format!("{wwpn}:{wwnn}"),
                    Want::Wwn(wwnn.as_str().to_string(), wwpn.as_str().to_string()),
                    host.name.clone(),
                )
            }
            Request::Mdev {
                parent,
                type_id,
                uuid,
            } => {
                let p = self.lookup(parent)?;
                let (Cap::Pci(pci), Some(dir)) = (&p.cap, &p.sysfs) else {
                    return Err(VirError::operation_invalid(format!(
                        "device '{parent}' is not a PCI device offering mdev types"
                    )));
                };
                if !pci.mdev_types.iter().any(|t| t.id == type_id.as_str()) {
                    return Err(VirError::operation_invalid(format!(
                        "device '{parent}' does not offer mdev type '{}'",
                        type_id.as_str()
                    )));
                }
                let name = sysfs::device_name("mdev", uuid.as_str(), Some(&pci.addr.to_string()));
                if self.lookup(&name).is_ok() {
                    return Err(VirError::operation_invalid(format!(
                        "mediated device '{}' exists already",
                        uuid.as_str()
                    )));
                }
                (
                    dir.join("mdev_supported_types")
                        .join(type_id.as_str())
                        .join("create"),
                    uuid.as_str().to_string(),
                    Want::Name(name),
                    p.name.clone(),
                )
            }
        };
        tracing::info!("creating node device: '{value}' -> {}", file.display());
        let _g = self.in_flight.enter();
        let _job = self.job(&on).await;
        blocking_create(move || create::write_trigger(&file, &value)).await?;
        self.wait_for(&want).await
    }

    /// libvirt's `<parent>` forms for a vport: a named, WWN-addressed or fabric-matched
    /// fc_host that can create vports, or any such host.
    fn vport_parent(&self, parent: &VportParent) -> Result<Arc<Device>, VirError> {
        let capable =
            |d: &Device| matches!(&d.cap, Cap::ScsiHost(h) if h.fc.is_some() && h.vports.is_some());
        let found = match parent {
            VportParent::Name(n) => Some(self.lookup(n)?),
            VportParent::Wwn { wwnn, wwpn } => {
                Some(self.lookup_scsi_host_by_wwn(wwnn.as_str(), wwpn.as_str(), 0)?)
            }
            VportParent::Fabric(f) => self.read().devices.values().find(|d| {
                capable(d) && matches!(&d.cap, Cap::ScsiHost(h) if h.fc.as_ref().and_then(|fc| fc.fabric_wwn.as_deref()) == Some(f.as_str()))
            }).cloned(),
            VportParent::Any => self.read().devices.values().find(|d| {
                capable(d) && matches!(&d.cap, Cap::ScsiHost(h) if h.vports.is_some_and(|(max, used)| used < max))
            }).cloned(),
        };
        match found {
            Some(d) if capable(&d) => Ok(d),
            Some(d) => Err(VirError::operation_invalid(format!(
                "parent device '{}' is not capable of vport operations",
                d.name
            ))),
            None => Err(VirError::new(
                ErrorCode::NoNodeDevice,
                "no fc_host capable of vport operations matches the <parent>",
            )),
        }
    }

    /// Waits (as libvirt does, up to 5 s) for the device the kernel creates after a
    /// trigger write. The uevent listener adds it on a real sysfs; a fixture tree has
    /// no kernel behind it, so there the tree is read again.
    async fn wait_for(self: &Arc<Self>, want: &Want) -> Result<String, VirError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if !self.roots.real {
                let changes = self.rescan();
                self.publish(changes).await;
            }
            let hit = match want {
                Want::Name(n) => self.lookup(n).ok(),
                Want::Wwn(n, p) => self.lookup_scsi_host_by_wwn(n, p, 0).ok(),
            };
            if let Some(d) = hit {
                return Ok(d.name.clone());
            }
            if std::time::Instant::now() >= deadline {
                return Err(VirError::new(
                    ErrorCode::OperationTimeout,
                    format!("the new device ({want}) did not appear within 5 s"),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// As libvirt, `Destroy` returns once the kernel has the request, and the device's
    /// DELETED event follows its removal. The uevent listener sees that on a real sysfs;
    /// a fixture tree has no kernel behind it, so there the tree is read again for a
    /// while (as [`Driver::wait_for`] does for a new device).
    fn follow_removal(self: &Arc<Self>, name: &str) {
        if self.roots.real {
            return;
        }
        let (d, name) = (Arc::clone(self), name.to_owned());
        tokio::spawn(async move {
            let _g = d.in_flight.enter();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while d.lookup(&name).is_ok() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let changes = d.rescan();
                d.publish(changes).await;
            }
        });
    }

    /// Re-reads one device (after Detach/ReAttach changed its driver).
    async fn refresh(self: &Arc<Self>, name: &str) {
        let Ok(old) = self.lookup(name) else { return };
        let (Some(devpath), Some(subsystem)) = (old.devpath.clone(), subsystem_of(&old)) else {
            return;
        };
        let ev = Uevent {
            action: "change".into(),
            devpath,
            subsystem: subsystem.into(),
            env: HashMap::new(),
        };
        let changes = self.apply_uevent(&ev);
        self.publish(changes).await;
    }

    /// Brings the registry in line with one uevent and says what changed.
    pub fn apply_uevent(&self, ev: &Uevent) -> Vec<Change> {
        if ev.action == "rescan" {
            return self.rescan();
        }
        let mut changes = Vec::new();
        if ev.action == "move" {
            if let Some(old) = ev.env.get("DEVPATH_OLD") {
                changes.extend(self.replace(old, None));
            }
        }
        let new = if ev.action == "remove" {
            None
        } else {
            sysfs::probe_devpath(&self.roots, &ev.devpath, &ev.subsystem, &ev.env)
        };
        changes.extend(self.replace(&ev.devpath, new));
        changes
    }

    fn replace(&self, devpath: &str, new: Option<Device>) -> Vec<Change> {
        let mut reg = self.write();
        let old = reg
            .by_devpath
            .get(devpath)
            .cloned()
            .and_then(|n| reg.devices.get(&n).cloned());
        let mut out = Vec::new();
        match (old, new) {
            (None, None) => {}
            (Some(o), None) => {
                reg.remove(&o.name);
                out.push(Change::Deleted(o.name.clone()));
            }
            (old, Some(mut n)) => {
                n.parent = Some(sysfs::parent_of(n.devpath.as_deref(), |p| {
                    reg.by_devpath.get(p).cloned()
                }));
                match old {
                    Some(o) if o.name == n.name => {
                        if *o != n {
                            out.push(Change::Updated(n.name.clone()));
                            reg.insert(n);
                        }
                    }
                    Some(o) => {
                        reg.remove(&o.name);
                        out.push(Change::Deleted(o.name.clone()));
                        out.push(Change::Created(n.name.clone()));
                        reg.insert(n);
                    }
                    None => {
                        let existed = reg.devices.contains_key(&n.name);
                        out.push(if existed {
                            Change::Updated(n.name.clone())
                        } else {
                            Change::Created(n.name.clone())
                        });
                        reg.insert(n);
                    }
                }
            }
        }
        out
    }

    /// After lost uevents: enumerate again and diff.
    fn rescan(&self) -> Vec<Change> {
        let fresh = sysfs::by_name(sysfs::enumerate(&self.roots));
        let mut reg = self.write();
        let mut out = Vec::new();
        let gone: Vec<String> = reg
            .devices
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for g in gone {
            reg.remove(&g);
            out.push(Change::Deleted(g));
        }
        for (name, d) in fresh {
            match reg.devices.get(&name) {
                None => out.push(Change::Created(name)),
                Some(o) if **o != d => out.push(Change::Updated(name)),
                Some(_) => continue,
            }
            reg.insert(d);
        }
        out
    }

    /// Hands `changes` to the outbox, in order.
    pub async fn publish(&self, changes: Vec<Change>) {
        for c in changes {
            if let Change::Deleted(n) = &c {
                // A holder keeps its own handle; the next device of that name starts afresh.
                self.jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(n);
            }
            tracing::info!("node device {c:?}");
            self.outbox.send(c).await;
        }
    }
}

fn subsystem_of(d: &Device) -> Option<&'static str> {
    Some(match d.cap {
        Cap::Pci(_) => "pci",
        Cap::Net(_) => "net",
        Cap::Storage(_) => "block",
        Cap::UsbDevice(_) | Cap::UsbInterface(_) => "usb",
        Cap::ScsiHost(_) | Cap::ScsiTarget { .. } | Cap::Scsi(_) => "scsi",
        Cap::ScsiGeneric { .. } => "scsi_generic",
        Cap::Drm { .. } => "drm",
        Cap::Mdev(_) => "mdev",
        Cap::System(_) => return None,
    })
}

/// What a create waits for: a device name, or the (wwnn, wwpn) of a new fc_host.
enum Want {
    Name(String),
    Wwn(String, String),
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Name(n) => write!(f, "'{n}'"),
            Want::Wwn(n, p) => write!(f, "wwnn '{n}', wwpn '{p}'"),
        }
    }
}

/// An fc_host's class folder below its scsi_host device folder.
fn fc_dir(host_dir: &std::path::Path, host: u32) -> std::path::PathBuf {
    host_dir.join("fc_host").join(format!("host{host}"))
}

async fn blocking_create<F>(f: F) -> Result<(), VirError>
where
    F: FnOnce() -> Result<(), create::CreateError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VirError::internal(format!("sysfs task failed: {e}")))?
        .map_err(VirError::from)
}

async fn blocking<F>(f: F) -> Result<(), VirError>
where
    F: FnOnce() -> Result<(), pci::PciError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VirError::internal(format!("sysfs task failed: {e}")))?
        .map_err(VirError::from)
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        Driver::busy(self)
    }

    /// Waits for the running operations: a rebind stopped halfway would leave its
    /// device with no driver until the next start finishes it.
    async fn shutdown(&self) {
        for _ in 0..1000 {
            if self.in_flight.idle() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
