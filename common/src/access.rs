//! Who may call what, on the system bus: libvirt's polkit model.
//!
//! Every call is classified by its interface and member ([`action_for`]) as a read
//! (`org.libvirt.unix.monitor`) or a change (`org.libvirt.unix.manage`), libvirt's two
//! actions. [`Access::check`] then decides for the call's sender: session mode,
//! peer-to-peer connections (the socket is root-only) and uid 0 pass without asking
//! anyone; everyone else is asked of polkit (`CheckAuthorization`, subject
//! `system-bus-name`, no interaction). A yes is remembered per (unique name, action):
//! the bus never reuses a unique name, and libvirt too decides once per connection.
//! docs/access.md has the why of each rule.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use zbus::zvariant::Value;

use crate::cli::Mode;
use crate::error::{ErrorCode, VirError};

/// What a call needs, as libvirt's polkit actions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Introspection and `org.freedesktop.DBus.Peer`: the API's shape, no data. Never
    /// checked (and the daemons cannot check zbus's own Introspect anyway).
    Open,
    /// Reads: `org.libvirt.unix.monitor`, what libvirt allows a read-only connection.
    Monitor,
    /// Anything that changes state, and the reads libvirt refuses a read-only
    /// connection (guest memory, disk contents, guest agent): `org.libvirt.unix.manage`.
    Manage,
}

impl Action {
    /// polkit's action id, `None` for [`Action::Open`].
    pub fn polkit_id(self) -> Option<&'static str> {
        match self {
            Action::Open => None,
            Action::Monitor => Some("org.libvirt.unix.monitor"),
            Action::Manage => Some("org.libvirt.unix.manage"),
        }
    }
}

/// Reads that libvirt refuses on a read-only connection (`virCheckReadOnlyGoto` in
/// libvirt.c's entry points, or the guest agent): they expose guest memory, disk or
/// file contents, or act inside the guest. They need `manage`.
const PRIVILEGED_READS: &[&str] = &[
    "BlockPeek",
    "MemoryPeek",
    "GetFSInfo",
    "GetGuestVcpus",
    "GetHostname",
    "GetTime",
    "DomainSaveImageGetXMLDesc",
    "Download",
    "OpenGraphicsFD",
    "InterfaceAddresses",
    "GetValue",
    "FindStoragePoolSources",
];

/// Reads whose names do not start with a read prefix.
const OTHER_READS: &[&str] = &[
    "MemoryStats",
    "IsCurrent",
    "HasManagedSaveImage",
    "BaselineCPU",
    "CompareCPU",
    "MigrateGetCompressionCache",
    "MigrateGetMaxSpeed",
    "SnapshotCurrent",
];

/// The prefixes of libvirt's read methods.
const READ_PREFIXES: &[&str] = &["Get", "List", "Lookup", "NodeGet"];

/// The action a call of `member` on `interface` needs. Properties: `Get`/`GetAll` are
/// reads, `Set` a change. Introspection and Peer are open.
pub fn action_for(interface: &str, member: &str) -> Action {
    match interface {
        "org.freedesktop.DBus.Introspectable" | "org.freedesktop.DBus.Peer" => return Action::Open,
        "org.freedesktop.DBus.Properties" => {
            return match member {
                "Get" | "GetAll" => Action::Monitor,
                _ => Action::Manage,
            }
        }
        _ => {}
    }
    if PRIVILEGED_READS.contains(&member) {
        return Action::Manage;
    }
    let lookup = member.contains("Lookup");
    if lookup
        || OTHER_READS.contains(&member)
        || READ_PREFIXES.iter().any(|p| member.starts_with(p))
    {
        return Action::Monitor;
    }
    Action::Manage
}

/// libvirt's `VIR_DOMAIN_XML_SECURE`: the XML with secrets (graphics passwords).
pub const DOMAIN_XML_SECURE: u32 = 1;

/// [`action_for`] where a flag changes it: the domain XML with secrets needs manage,
/// as libvirt refuses `VIR_DOMAIN_XML_SECURE` to a read-only connection.
pub fn action_for_flags(interface: &str, member: &str, flags: u32) -> Action {
    if interface == "org.libvirt.Domain" && member == "GetXMLDesc" && flags & DOMAIN_XML_SECURE != 0
    {
        return Action::Manage;
    }
    action_for(interface, member)
}

/// The decision for one caller: the access-control state of a daemon (or the front).
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    bus: OnceLock<zbus::Connection>,
    /// Unique name → uid, from the bus.
    uids: Mutex<HashMap<String, u32>>,
    /// (unique name, action) that polkit said yes to.
    granted: Mutex<HashSet<(String, Action)>>,
    /// polkitd is serial and the bus allows 128 pending replies per connection.
    polkit_slots: tokio::sync::Semaphore,
}

/// Entries kept before a cache is emptied: unique names are never reused, so stale
/// entries only cost memory, and emptying costs one lookup per caller.
const CACHE_LIMIT: usize = 4096;

/// How long a CheckAuthorization may take (D-Bus's default reply timeout).
const POLKIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

static GLOBAL: OnceLock<Access> = OnceLock::new();

/// Installs the process' access control (the runtime does, once, before serving).
pub fn install(access: Access) {
    let _ = GLOBAL.set(access);
}

/// Checks the call whose header is `hdr` with the process' access control: the
/// daemons' interfaces call this first thing in every method and property setter.
pub async fn check(hdr: &zbus::message::Header<'_>) -> Result<(), VirError> {
    check_with_flags(hdr, 0).await
}

/// [`check`] for a method whose `flags` argument can raise the action it needs
/// ([`action_for_flags`]).
pub async fn check_with_flags(hdr: &zbus::message::Header<'_>, flags: u32) -> Result<(), VirError> {
    let interface = hdr.interface().map_or("", |i| i.as_str());
    let member = hdr.member().map_or("", |m| m.as_str());
    let action = action_for_flags(interface, member, flags);
    match GLOBAL.get() {
        Some(a) => {
            a.check(hdr.sender().map(|s| s.as_str()), action, member)
                .await
        }
        // Only the runtime builds a daemon: fail closed if it did not install one.
        None => Err(VirError::new(
            ErrorCode::AuthFailed,
            "access control is not initialised",
        )),
    }
}

/// True when the caller is this project's daemon `daemon` (e.g. `virtqemud`): the
/// current owner of its bus name. Such a caller may read what libvirt lets only its own
/// drivers read (a private secret's value, for a disk QEMU opens). False on a
/// peer-to-peer connection, where no bus vouches for the caller.
pub async fn caller_is_daemon(hdr: &zbus::message::Header<'_>, daemon: &str) -> bool {
    let (Some(sender), Some(access)) = (hdr.sender(), GLOBAL.get()) else {
        return false;
    };
    let Some(bus) = access.inner.bus.get() else {
        return false;
    };
    let owner = bus
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetNameOwner",
            &(crate::runtime::bus_name(daemon),),
        )
        .await
        .ok()
        .and_then(|r| r.body().deserialize::<String>().ok());
    owner.as_deref() == Some(sender.as_str())
}

/// [`check`] for a property setter, whose header zbus gives as an `Option` (`None`
/// when the process itself sets the property, not a call).
pub async fn check_set(hdr: Option<&zbus::message::Header<'_>>) -> zbus::fdo::Result<()> {
    match hdr {
        Some(h) => check(h)
            .await
            .map_err(|e| zbus::fdo::Error::AccessDenied(e.message)),
        None => Ok(()),
    }
}

impl Access {
    pub fn new(mode: Mode) -> Access {
        Access {
            inner: Arc::new(Inner {
                mode,
                bus: OnceLock::new(),
                uids: Mutex::new(HashMap::new()),
                granted: Mutex::new(HashSet::new()),
                polkit_slots: tokio::sync::Semaphore::new(32),
            }),
        }
    }

    /// The bus connection to ask the bus and polkit on (set before any object is served).
    pub fn attach(&self, bus: zbus::Connection) {
        let _ = self.inner.bus.set(bus);
    }

    /// True when the call passes without asking the bus or polkit: an open action,
    /// session mode (the bus is the user's own), a peer-to-peer connection (`None`: the
    /// socket is 0600 root), a caller known to be root, or a yes already given.
    pub fn allowed_now(&self, sender: Option<&str>, action: Action) -> bool {
        let (Some(_), Some(sender)) = (action.polkit_id(), sender) else {
            return true;
        };
        self.inner.mode == Mode::Session
            || lock(&self.inner.uids).get(sender) == Some(&0)
            || lock(&self.inner.granted).contains(&(sender.to_owned(), action))
    }

    /// Decides for a call of `member` needing `action` from `sender` (`None` on a
    /// peer-to-peer connection, where no bus stamps a sender).
    pub async fn check(
        &self,
        sender: Option<&str>,
        action: Action,
        member: &str,
    ) -> Result<(), VirError> {
        if self.allowed_now(sender, action) {
            return Ok(());
        }
        let (Some(id), Some(sender)) = (action.polkit_id(), sender) else {
            return Ok(());
        };
        let key = (sender.to_owned(), action);
        let Some(bus) = self.inner.bus.get() else {
            return Err(auth_failed(id, member, "not connected to the bus"));
        };
        let uid = self.uid(bus, sender).await.map_err(|e| {
            auth_failed(
                id,
                member,
                format!("cannot identify the caller {sender}: {e}"),
            )
        })?;
        if uid == 0 {
            return Ok(());
        }
        let (authorized, challenge) = self.polkit(bus, sender, id).await.map_err(|e| {
            tracing::warn!("polkit: {e}");
            auth_failed(id, member, format!("polkit is unavailable: {e}"))
        })?;
        if authorized {
            let mut granted = lock(&self.inner.granted);
            if granted.len() >= CACHE_LIMIT {
                granted.clear();
            }
            granted.insert(key);
            return Ok(());
        }
        if challenge {
            return Err(auth_failed(
                id,
                member,
                format!("polkit requires interactive authentication of uid {uid}, which a system service cannot obtain"),
            ));
        }
        Err(VirError::new(
            ErrorCode::AccessDenied,
            format!("polkit denies '{id}' to uid {uid} (calling {member})"),
        ))
    }

    async fn uid(&self, bus: &zbus::Connection, sender: &str) -> zbus::Result<u32> {
        if let Some(&uid) = lock(&self.inner.uids).get(sender) {
            return Ok(uid);
        }
        let reply = bus
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetConnectionUnixUser",
                &(sender,),
            )
            .await?;
        let uid: u32 = reply.body().deserialize()?;
        let mut uids = lock(&self.inner.uids);
        if uids.len() >= CACHE_LIMIT {
            uids.clear();
        }
        uids.insert(sender.to_owned(), uid);
        Ok(uid)
    }

    /// polkit's `(is_authorized, is_challenge)` for `sender` and action `id`.
    async fn polkit(
        &self,
        bus: &zbus::Connection,
        sender: &str,
        id: &str,
    ) -> zbus::Result<(bool, bool)> {
        let _slot = self
            .inner
            .polkit_slots
            .acquire()
            .await
            .map_err(|e| zbus::Error::Failure(e.to_string()))?;
        let subject: (&str, HashMap<&str, Value<'_>>) = (
            "system-bus-name",
            HashMap::from([("name", Value::from(sender))]),
        );
        let details: HashMap<&str, &str> = HashMap::new();
        // No AllowUserInteraction: a system service has no agent to ask.
        let body = (subject, id, details, 0u32, "");
        let call = bus.call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &body,
        );
        // A hung polkitd must not hang the caller: D-Bus's default reply timeout.
        let reply = tokio::time::timeout(POLKIT_TIMEOUT, call)
            .await
            .map_err(|_| zbus::Error::Failure("no answer from polkit in 25 s".into()))??;
        let (authorized, challenge, _details): (bool, bool, HashMap<String, String>) =
            reply.body().deserialize()?;
        Ok((authorized, challenge))
    }
}

fn auth_failed(id: &str, member: &str, why: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::AuthFailed, format!("'{id}' for {member}: {why}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (interface, kind, member) of every member the daemons serve.
    fn contract() -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for text in [
            include_str!("../api/libvirt-dbus.tsv"),
            include_str!("../api/additions.tsv"),
        ] {
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let f: Vec<&str> = line.split('\t').collect();
                out.push((f[0].to_owned(), f[1].to_owned(), f[2].to_owned()));
            }
        }
        out
    }

    /// The reviewed list of libvirt-dbus's reads: every method NOT named here needs
    /// manage. A member added to the contract lands on the manage side until someone
    /// puts it here, and this test names it either way.
    const MONITOR: &[&str] = &[
        "BaselineCPU",
        "CompareCPU",
        "DomainLookupByID",
        "DomainLookupByName",
        "DomainLookupByUUID",
        "GetAllDomainStats",
        "GetBlockIOParameters",
        "GetBlockIOTune",
        "GetBlockJobInfo",
        "GetCPUModelNames",
        "GetCapabilities",
        "GetControlInfo",
        "GetDHCPLeases",
        "GetDiskErrors",
        "GetDomainCapabilities",
        "GetEmulatorPinInfo",
        "GetIOThreadInfo",
        "GetInfo",
        "GetInterfaceParameters",
        "GetJobInfo",
        "GetJobStats",
        "GetMemoryParameters",
        "GetMetadata",
        "GetNumaParameters",
        "GetParent",
        "GetPerfEvents",
        "GetSchedulerParameters",
        "GetSecurityLabelList",
        "GetState",
        "GetStats",
        "GetSysinfo",
        "GetVcpuPinInfo",
        "GetVcpus",
        "GetXMLDesc",
        "HasManagedSaveImage",
        "InterfaceLookupByMAC",
        "InterfaceLookupByName",
        "IsCurrent",
        "ListCaps",
        "ListChildren",
        "ListDomainSnapshots",
        "ListDomains",
        "ListInterfaces",
        "ListNWFilterBindings",
        "ListNWFilters",
        "ListNetworks",
        "ListNodeDevices",
        "ListPorts",
        "ListSecrets",
        "ListStoragePools",
        "ListStorageVolumes",
        "MemoryStats",
        "MigrateGetCompressionCache",
        "MigrateGetMaxSpeed",
        "NWFilterBindingLookupByPortDev",
        "NWFilterLookupByName",
        "NWFilterLookupByUUID",
        "NetworkLookupByName",
        "NetworkLookupByUUID",
        "NodeDeviceLookupByName",
        "NodeDeviceLookupSCSIHostByWWN",
        "NodeGetCPUMap",
        "NodeGetCPUStats",
        "NodeGetCellsFreeMemory",
        "NodeGetFreeMemory",
        "NodeGetHostCapabilities",
        "NodeGetInfo",
        "NodeGetMemoryParameters",
        "NodeGetMemoryStats",
        "NodeGetSecurityModel",
        "PortLookupByUUID",
        "SecretLookupByUUID",
        "SecretLookupByUsage",
        "SnapshotCurrent",
        "SnapshotLookupByName",
        "StoragePoolLookupByName",
        "StoragePoolLookupByUUID",
        "StoragePoolLookupByVolume",
        "StorageVolLookupByKey",
        "StorageVolLookupByName",
        "StorageVolLookupByPath",
    ];

    #[test]
    fn every_method_of_the_contract_is_classified_as_reviewed() {
        let mut wrong = Vec::new();
        for (iface, kind, member) in contract() {
            if kind != "method" {
                continue;
            }
            let want = if MONITOR.contains(&member.as_str()) {
                Action::Monitor
            } else {
                Action::Manage
            };
            let got = action_for(&iface, &member);
            if got != want {
                wrong.push(format!("{iface}.{member}: {got:?}, reviewed {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
        // The reviewed list names only real members.
        let members: HashSet<String> = contract().into_iter().map(|(_, _, m)| m).collect();
        for m in MONITOR {
            assert!(members.contains(*m), "{m} is not in the contract");
        }
    }

    #[test]
    fn changes_and_privileged_reads_need_manage() {
        for m in [
            "DomainDefineXML",
            "Create",
            "Destroy",
            "Undefine",
            "SetVcpus",
            "Delete",
            "StoragePoolCreateXML",
            "Upload",
            "Download",
            "BlockPeek",
            "MemoryPeek",
            "GetFSInfo",
            "GetTime",
            "GetHostname",
            "OpenGraphicsFD",
            "InterfaceAddresses",
        ] {
            assert_eq!(action_for("org.libvirt.Domain", m), Action::Manage, "{m}");
        }
    }

    #[test]
    fn the_domain_xml_with_secrets_needs_manage() {
        let d = "org.libvirt.Domain";
        assert_eq!(action_for_flags(d, "GetXMLDesc", 0), Action::Monitor);
        assert_eq!(action_for_flags(d, "GetXMLDesc", 2), Action::Monitor);
        assert_eq!(
            action_for_flags(d, "GetXMLDesc", DOMAIN_XML_SECURE),
            Action::Manage
        );
        assert_eq!(
            action_for_flags("org.libvirt.Network", "GetXMLDesc", 1),
            Action::Monitor
        );
    }

    #[test]
    fn properties_and_introspection() {
        let p = "org.freedesktop.DBus.Properties";
        assert_eq!(action_for(p, "Get"), Action::Monitor);
        assert_eq!(action_for(p, "GetAll"), Action::Monitor);
        assert_eq!(action_for(p, "Set"), Action::Manage);
        assert_eq!(
            action_for("org.freedesktop.DBus.Introspectable", "Introspect"),
            Action::Open
        );
        assert_eq!(
            action_for("org.freedesktop.DBus.Peer", "Ping"),
            Action::Open
        );
        assert_eq!(Action::Open.polkit_id(), None);
    }

    #[tokio::test]
    async fn session_mode_and_peer_connections_pass_without_a_bus() {
        let session = Access::new(Mode::Session);
        assert!(session
            .check(Some(":1.9"), Action::Manage, "Create")
            .await
            .is_ok());
        let system = Access::new(Mode::System);
        assert!(system.check(None, Action::Manage, "Create").await.is_ok());
        assert!(system
            .check(Some(":1.9"), Action::Open, "Introspect")
            .await
            .is_ok());
        // A bus caller with no bus to ask about it: refused, never let through.
        let e = system
            .check(Some(":1.9"), Action::Monitor, "ListDomains")
            .await
            .expect_err("no bus");
        assert!(e
            .message
            .starts_with("authentication failed: 'org.libvirt.unix.monitor'"));
    }
}
