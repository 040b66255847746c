//! Who answers what: the one place that decides, from a call's path, interface and
//! member, whether the front answers it itself, merges the four daemons' answers, or
//! forwards it to the one daemon that owns the object (or the Connect member).

/// One of the four daemons behind the front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Qemu,
    Network,
    Storage,
    NodeDev,
}

impl Backend {
    /// In the order merged answers take them: the first one's answer wins a tie.
    pub const ALL: [Backend; 4] = [
        Backend::Qemu,
        Backend::Network,
        Backend::Storage,
        Backend::NodeDev,
    ];

    pub fn daemon(self) -> &'static str {
        match self {
            Backend::Qemu => "virtqemud",
            Backend::Network => "virtnetworkd",
            Backend::Storage => "virtstoraged",
            Backend::NodeDev => "virtnodedevd",
        }
    }

    pub fn bus_name(self) -> &'static str {
        match self {
            Backend::Qemu => "org.libvirt.virtqemud",
            Backend::Network => "org.libvirt.virtnetworkd",
            Backend::Storage => "org.libvirt.virtstoraged",
            Backend::NodeDev => "org.libvirt.virtnodedevd",
        }
    }
}

pub const CONNECT_PATH: &str = "/org/libvirt/QEMU";
pub const CONNECT_IFACE: &str = "org.libvirt.Connect";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";

/// The object kinds under `/org/libvirt/QEMU/<kind>/...` and their owner.
const KINDS: &[(&str, Backend)] = &[
    ("domain", Backend::Qemu),
    ("domainsnapshot", Backend::Qemu),
    ("network", Backend::Network),
    ("networkport", Backend::Network),
    ("interface", Backend::Network),
    ("nwfilter", Backend::Network),
    ("nwfilterbinding", Backend::Network),
    ("storagepool", Backend::Storage),
    ("storagevol", Backend::Storage),
    ("secret", Backend::Storage),
    ("nodedev", Backend::NodeDev),
];

/// Every member of `org.libvirt.Connect` (libvirt-dbus's and the additions) and the
/// daemon that owns it. Methods by the daemon that serves them today, and the ones not
/// served yet by the daemon libvirt's split daemons give them. Checked against
/// common/api by a unit test and against the running daemons by tests/front.rs.
pub const CONNECT_MEMBERS: &[(&str, Backend)] = &[
    // Domains and the hypervisor: virtqemud.
    ("BaselineCPU", Backend::Qemu),
    ("CompareCPU", Backend::Qemu),
    ("DomainCreateXML", Backend::Qemu),
    ("DomainCreateXMLWithFiles", Backend::Qemu),
    ("DomainDefineXML", Backend::Qemu),
    ("DomainLookupByID", Backend::Qemu),
    ("DomainLookupByName", Backend::Qemu),
    ("DomainLookupByUUID", Backend::Qemu),
    ("DomainRestore", Backend::Qemu),
    ("DomainSaveImageDefineXML", Backend::Qemu),
    ("DomainSaveImageGetXMLDesc", Backend::Qemu),
    ("GetAllDomainStats", Backend::Qemu),
    ("GetCapabilities", Backend::Qemu),
    ("GetCPUModelNames", Backend::Qemu),
    ("GetDomainCapabilities", Backend::Qemu),
    ("ListDomains", Backend::Qemu),
    ("NodeGetSecurityModel", Backend::Qemu),
    ("DomainEvent", Backend::Qemu),
    // The shared properties: every daemon serves the same values; virtqemud answers.
    ("Encrypted", Backend::Qemu),
    ("Hostname", Backend::Qemu),
    ("LibVersion", Backend::Qemu),
    ("Secure", Backend::Qemu),
    ("Version", Backend::Qemu),
    // Networks, host interfaces, filters: virtnetworkd.
    ("InterfaceChangeBegin", Backend::Network),
    ("InterfaceChangeCommit", Backend::Network),
    ("InterfaceChangeRollback", Backend::Network),
    ("InterfaceDefineXML", Backend::Network),
    ("InterfaceLookupByMAC", Backend::Network),
    ("InterfaceLookupByName", Backend::Network),
    ("ListInterfaces", Backend::Network),
    ("ListNetworks", Backend::Network),
    ("ListNWFilters", Backend::Network),
    ("NetworkCreateXML", Backend::Network),
    ("NetworkDefineXML", Backend::Network),
    ("NetworkLookupByName", Backend::Network),
    ("NetworkLookupByUUID", Backend::Network),
    ("NWFilterDefineXML", Backend::Network),
    ("NWFilterBindingCreateXML", Backend::Network),
    ("NWFilterBindingLookupByPortDev", Backend::Network),
    ("ListNWFilterBindings", Backend::Network),
    ("NWFilterLookupByName", Backend::Network),
    ("NWFilterLookupByUUID", Backend::Network),
    ("NetworkEvent", Backend::Network),
    // Storage and secrets: virtstoraged.
    ("FindStoragePoolSources", Backend::Storage),
    ("ListSecrets", Backend::Storage),
    ("ListStoragePools", Backend::Storage),
    ("SecretDefineXML", Backend::Storage),
    ("SecretLookupByUUID", Backend::Storage),
    ("SecretLookupByUsage", Backend::Storage),
    ("StoragePoolCreateXML", Backend::Storage),
    ("StoragePoolDefineXML", Backend::Storage),
    ("StoragePoolLookupByName", Backend::Storage),
    ("StoragePoolLookupByUUID", Backend::Storage),
    ("StoragePoolLookupByVolume", Backend::Storage),
    ("StorageVolLookupByKey", Backend::Storage),
    ("StorageVolLookupByPath", Backend::Storage),
    ("SecretEvent", Backend::Storage),
    ("StoragePoolEvent", Backend::Storage),
    // Host devices and the node's resources: virtnodedevd.
    ("GetSysinfo", Backend::NodeDev),
    ("ListNodeDevices", Backend::NodeDev),
    ("NodeDeviceCreateXML", Backend::NodeDev),
    ("NodeDeviceLookupByName", Backend::NodeDev),
    ("NodeDeviceLookupSCSIHostByWWN", Backend::NodeDev),
    ("NodeGetCPUMap", Backend::NodeDev),
    ("NodeGetCPUStats", Backend::NodeDev),
    ("NodeGetCellsFreeMemory", Backend::NodeDev),
    ("NodeGetFreeMemory", Backend::NodeDev),
    ("NodeGetHostCapabilities", Backend::NodeDev),
    ("NodeGetInfo", Backend::NodeDev),
    ("NodeGetMemoryParameters", Backend::NodeDev),
    ("NodeGetMemoryStats", Backend::NodeDev),
    ("NodeSetMemoryParameters", Backend::NodeDev),
    ("NodeDeviceEvent", Backend::NodeDev),
    ("NodeDeviceUpdate", Backend::NodeDev),
];

/// The owner of a Connect member; members nobody has yet go to virtqemud, which
/// answers D-Bus's "unknown method" as any daemon would.
pub fn connect_member(member: &str) -> Backend {
    CONNECT_MEMBERS
        .iter()
        .find(|(m, _)| *m == member)
        .map_or(Backend::Qemu, |(_, b)| *b)
}

/// What the front does with one method call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `org.freedesktop.DBus.Hello` on a peer socket (busctl greets every connection).
    Hello,
    /// `org.freedesktop.DBus.Peer.Ping` / `GetMachineId`: the front's own.
    Peer,
    /// Introspection of `/`, `/org`, `/org/libvirt` or `/org/libvirt/QEMU`: all four.
    MergedIntrospect,
    /// `Properties.GetAll` of the Connect object: all four, double-wrapped.
    MergedGetAll,
    /// To one daemon; a `GetAll` reply is double-wrapped on its way back.
    Forward { to: Backend, double_wrap: bool },
    /// Nobody serves that path.
    UnknownObject,
}

/// True for the paths every daemon serves part of.
pub fn is_shared_node(path: &str) -> bool {
    matches!(path, "/" | "/org" | "/org/libvirt" | CONNECT_PATH)
}

/// The owner of an object path below the Connect object, by its kind.
pub fn object_owner(path: &str) -> Option<Backend> {
    let rest = path.strip_prefix(CONNECT_PATH)?.strip_prefix('/')?;
    let kind = rest.split('/').next()?;
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, b)| *b)
}

/// Decides what to do with a call to `path` `iface`.`member`; `property` is the
/// property a `Properties.Get`/`Set` names.
pub fn classify(path: &str, iface: Option<&str>, member: &str, property: Option<&str>) -> Action {
    match (iface, member) {
        (Some("org.freedesktop.DBus"), "Hello") => return Action::Hello,
        (Some("org.freedesktop.DBus.Peer"), _) => return Action::Peer,
        _ => {}
    }
    let properties = iface == Some(PROPERTIES);
    if is_shared_node(path) {
        if iface == Some(INTROSPECTABLE) {
            return Action::MergedIntrospect;
        }
        if path != CONNECT_PATH {
            return Action::UnknownObject;
        }
        if properties && member == "GetAll" {
            return Action::MergedGetAll;
        }
        // Every daemon serves the same Connect properties; the table picks one.
        let to = if properties {
            connect_member(property.unwrap_or_default())
        } else {
            connect_member(member)
        };
        return Action::Forward {
            to,
            double_wrap: false,
        };
    }
    match object_owner(path) {
        Some(to) => Action::Forward {
            to,
            double_wrap: properties && member == "GetAll",
        },
        None => Action::UnknownObject,
    }
}

/// libvirt's answer to a libvirt-dbus method no daemon serves yet (the daemon's zbus
/// says `UnknownMethod`): libvirt-dbus would call into a driver that lacks it and
/// answer VIR_ERR_NO_SUPPORT. `None` for members libvirt-dbus does not have either.
pub fn not_supported(interface: &str, member: &str) -> Option<String> {
    static METHODS: std::sync::LazyLock<std::collections::HashSet<(String, String)>> =
        std::sync::LazyLock::new(|| {
            common::contract::parse(common::contract::LIBVIRT_DBUS)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.kind_name() == "method")
                .map(|m| (m.interface, m.name))
                .collect()
        });
    METHODS
        .contains(&(interface.to_owned(), member.to_owned()))
        .then(|| common::VirError::new(common::error::ErrorCode::NoSupport, member).message)
}

/// libvirt's lookup error for `path` when the daemon serving its kind has no such
/// object. libvirt-dbus dispatches every path under a kind's folder and answers an
/// object that is gone (undefined by a racing call, say) with libvirt's error; a
/// daemon's zbus answers `UnknownObject`, which the front turns into this.
pub fn not_found(path: &str) -> Option<String> {
    use common::error::ErrorCode;
    use common::objpath::{decode_str, decode_uuid};
    let rest = path.strip_prefix(CONNECT_PATH)?.strip_prefix('/')?;
    let (kind, tail) = rest.split_once('/')?;
    if tail.contains('/') {
        return None;
    }
    let (code, what) = match kind {
        "domain" => (
            ErrorCode::NoDomain,
            format!("no domain with matching uuid '{}'", decode_uuid(tail)?),
        ),
        "network" => (
            ErrorCode::NoNetwork,
            format!("no network with matching uuid '{}'", decode_uuid(tail)?),
        ),
        "storagepool" => (
            ErrorCode::NoStoragePool,
            format!(
                "no storage pool with matching uuid '{}'",
                decode_uuid(tail)?
            ),
        ),
        "storagevol" => (
            ErrorCode::NoStorageVol,
            format!("no storage vol with matching key {}", decode_str(tail)?),
        ),
        "secret" => (
            ErrorCode::NoSecret,
            format!("no secret with matching uuid '{}'", decode_uuid(tail)?),
        ),
        "nodedev" => (
            ErrorCode::NoNodeDevice,
            format!("no node device with matching name '{}'", decode_str(tail)?),
        ),
        "interface" => (
            ErrorCode::NoInterface,
            format!("couldn't find interface named '{}'", decode_str(tail)?),
        ),
        "nwfilter" => (
            ErrorCode::NoNwfilter,
            format!("no nwfilter with matching uuid '{}'", decode_uuid(tail)?),
        ),
        "nwfilterbinding" => (
            ErrorCode::NoNwfilterBinding,
            format!("no nwfilter binding for port dev '{}'", decode_str(tail)?),
        ),
        _ => return None,
    };
    Some(common::VirError::new(code, what).message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_connect_member_of_the_contract_has_one_owner() {
        let reference = common::contract::parse(common::contract::LIBVIRT_DBUS).unwrap();
        let additions = common::contract::parse_additions(common::contract::ADDITIONS).unwrap();
        let mut contract: BTreeSet<&str> = reference
            .iter()
            .filter(|m| m.interface == CONNECT_IFACE)
            .map(|m| m.name.as_str())
            .collect();
        contract.extend(
            additions
                .iter()
                .filter(|a| a.interface == CONNECT_IFACE)
                .map(|a| a.name.as_str()),
        );
        let table: Vec<&str> = CONNECT_MEMBERS.iter().map(|(m, _)| *m).collect();
        let unique: BTreeSet<&str> = table.iter().copied().collect();
        assert_eq!(unique.len(), table.len(), "a member is listed twice");
        let missing: Vec<_> = contract.difference(&unique).collect();
        let extra: Vec<_> = unique.difference(&contract).collect();
        assert!(missing.is_empty(), "no owner for {missing:?}");
        assert!(extra.is_empty(), "not in common/api: {extra:?}");
    }

    #[test]
    fn connect_members_go_by_subsystem() {
        for (member, want) in [
            ("ListDomains", Backend::Qemu),
            ("DomainDefineXML", Backend::Qemu),
            ("NetworkDefineXML", Backend::Network),
            ("ListInterfaces", Backend::Network),
            ("NWFilterLookupByName", Backend::Network),
            ("StoragePoolCreateXML", Backend::Storage),
            ("StorageVolLookupByPath", Backend::Storage),
            ("SecretDefineXML", Backend::Storage),
            ("ListNodeDevices", Backend::NodeDev),
            ("NodeGetInfo", Backend::NodeDev),
            ("NoSuchMethod", Backend::Qemu),
        ] {
            assert_eq!(connect_member(member), want, "{member}");
        }
    }

    #[test]
    fn objects_go_by_kind() {
        let d = "/org/libvirt/QEMU/domain/_6695eb01_f6a4_8304_79aa_97f2502e193f";
        assert_eq!(
            classify(d, Some("org.libvirt.Domain"), "Create", None),
            Action::Forward {
                to: Backend::Qemu,
                double_wrap: false
            }
        );
        assert_eq!(
            classify(d, Some(PROPERTIES), "GetAll", None),
            Action::Forward {
                to: Backend::Qemu,
                double_wrap: true
            }
        );
        assert_eq!(
            classify(d, Some(PROPERTIES), "Get", Some("Name")),
            Action::Forward {
                to: Backend::Qemu,
                double_wrap: false
            }
        );
        for (path, want) in [
            ("/org/libvirt/QEMU/network/_x", Backend::Network),
            ("/org/libvirt/QEMU/networkport/_x", Backend::Network),
            ("/org/libvirt/QEMU/storagepool/_x", Backend::Storage),
            ("/org/libvirt/QEMU/storagevol/_2fa", Backend::Storage),
            ("/org/libvirt/QEMU/nodedev/computer", Backend::NodeDev),
            ("/org/libvirt/QEMU/domain", Backend::Qemu),
        ] {
            assert_eq!(object_owner(path), Some(want), "{path}");
        }
        for path in [
            "/org/libvirt/QEMU/cats/x",
            "/org/libvirt/QEMUX/domain/x",
            "/x",
        ] {
            assert_eq!(
                classify(path, Some("org.libvirt.Domain"), "Create", None),
                Action::UnknownObject,
                "{path}"
            );
        }
    }

    #[test]
    fn the_shared_nodes_are_merged() {
        for path in ["/", "/org", "/org/libvirt", CONNECT_PATH] {
            assert_eq!(
                classify(path, Some(INTROSPECTABLE), "Introspect", None),
                Action::MergedIntrospect
            );
        }
        assert_eq!(
            classify(CONNECT_PATH, Some(PROPERTIES), "GetAll", None),
            Action::MergedGetAll
        );
        assert_eq!(
            classify(CONNECT_PATH, Some(PROPERTIES), "Get", Some("Hostname")),
            Action::Forward {
                to: Backend::Qemu,
                double_wrap: false
            }
        );
        assert_eq!(
            classify(CONNECT_PATH, None, "ListNetworks", None),
            Action::Forward {
                to: Backend::Network,
                double_wrap: false
            }
        );
        assert_eq!(
            classify("/org", Some(CONNECT_IFACE), "ListDomains", None),
            Action::UnknownObject
        );
        assert_eq!(
            classify("/any", Some("org.freedesktop.DBus.Peer"), "Ping", None),
            Action::Peer
        );
    }

    #[test]
    fn a_gone_object_gets_libvirts_lookup_error() {
        let d = "/org/libvirt/QEMU/domain/_6695eb01_f6a4_8304_79aa_97f2502e193f";
        assert_eq!(
            not_found(d).as_deref(),
            Some("Domain not found: no domain with matching uuid '6695eb01-f6a4-8304-79aa-97f2502e193f'")
        );
        assert_eq!(
            not_found("/org/libvirt/QEMU/nodedev/pci_5f0000_5f03").as_deref(),
            Some("Node device not found: no node device with matching name 'pci_0000_03'")
        );
        assert_eq!(
            not_found("/org/libvirt/QEMU/interface/eth0_2e7").as_deref(),
            Some("Interface not found: couldn't find interface named 'eth0.7'")
        );
        assert_eq!(
            not_found("/org/libvirt/QEMU/nwfilterbinding/vnet0").as_deref(),
            Some("Network filter binding not found: no nwfilter binding for port dev 'vnet0'")
        );
        assert_eq!(not_found("/org/libvirt/QEMU/domain/nonsense"), None);
        assert_eq!(not_found("/org/libvirt/QEMU"), None);
    }

    #[test]
    fn a_method_nobody_serves_is_not_supported() {
        assert_eq!(
            not_supported("org.libvirt.Connect", "ListNWFilters").as_deref(),
            Some("this function is not supported by the connection driver: ListNWFilters")
        );
        assert_eq!(not_supported("org.libvirt.Connect", "NoSuchThing"), None);
    }
}
