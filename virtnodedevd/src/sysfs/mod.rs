//! Host device enumeration from sysfs: typed device records with libvirt's names and
//! parents. The sysfs root is configurable (`--sysfs-root`, test only) so
//! that fixture trees stand in for hardware the machine lacks.

mod ethtool;
pub mod ids;
mod probe;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use probe::{enumerate, probe_devpath};

/// Where the kernel's views live. `real` is true for the machine's own `/sys`: then
/// network interfaces come from the daemon's network namespace (sysfs only shows the
/// namespace that mounted it).
#[derive(Debug, Clone)]
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
    /// udev's database (`/run/udev/data`); a fixture tree's sibling `udev/`.
    pub udev: PathBuf,
    pub real: bool,
}

impl Roots {
    pub fn host() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            udev: PathBuf::from("/run/udev/data"),
            real: true,
        }
    }

    /// The host's /sys, unless `--sysfs-root` points at a fixture tree (tests only).
    pub fn from_settings(settings: &common::cli::Settings) -> Roots {
        if settings.sysfs_root == Path::new("/sys") {
            Roots::host()
        } else {
            Roots::fixture(settings.sysfs_root.clone())
        }
    }

    pub fn fixture(sys: PathBuf) -> Roots {
        Roots {
            udev: sys.with_file_name("udev"),
            sys,
            proc: PathBuf::from("/proc"),
            real: false,
        }
    }

    /// The path as the user knows it (`/sys/...`), whatever the root.
    pub fn display_path(&self, p: &Path) -> String {
        match p.strip_prefix(&self.sys) {
            Ok(rel) => format!("/sys/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }
}

/// A PCI address `dddd:bb:ss.f`, checked on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl PciAddr {
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (domain, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (slot, function) = rest.split_once('.')?;
        if domain.len() != 4 || bus.len() != 2 || slot.len() != 2 || function.len() != 1 {
            return None;
        }
        let a = PciAddr {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            slot: u8::from_str_radix(slot, 16).ok()?,
            function: u8::from_str_radix(function, 16).ok()?,
        };
        (a.slot < 32 && a.function < 8).then_some(a)
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

/// One host device as libvirt's node device driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    /// Name of the parent device; `None` only for `computer`.
    pub parent: Option<String>,
    /// Canonical sysfs directory (inside the root), when sysfs shows the device.
    pub sysfs: Option<PathBuf>,
    /// The kernel's DEVPATH (`/devices/...`), the key uevents carry.
    pub devpath: Option<String>,
    pub driver: Option<String>,
    pub devnode: Option<String>,
    pub cap: Cap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cap {
    System(System),
    Pci(Box<Pci>),
    UsbDevice(UsbDevice),
    UsbInterface(UsbInterface),
    Net(Net),
    ScsiHost(ScsiHost),
    ScsiTarget {
        target: String,
    },
    Scsi(Scsi),
    Storage(Storage),
    ScsiGeneric {
        char: String,
    },
    /// `primary`, `render` or `control`.
    Drm {
        kind: String,
    },
    Mdev(Mdev),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mdev {
    pub uuid: String,
    pub type_id: String,
    pub iommu_group: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct System {
    pub product: Option<String>,
    pub hw_vendor: Option<String>,
    pub hw_version: Option<String>,
    pub hw_serial: Option<String>,
    pub hw_uuid: Option<String>,
    pub fw_vendor: Option<String>,
    pub fw_version: Option<String>,
    pub fw_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PciLink {
    pub port: Option<u32>,
    pub speed: Option<String>,
    pub width: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pci {
    pub addr: PciAddr,
    pub class: u32,
    pub vendor_id: u16,
    pub vendor_name: Option<String>,
    pub product_id: u16,
    pub product_name: Option<String>,
    pub iommu_group: Option<(u32, Vec<PciAddr>)>,
    pub numa_node: Option<i32>,
    pub phys_function: Option<PciAddr>,
    pub virt_functions: Vec<PciAddr>,
    pub max_vfs: Option<u32>,
    pub link_cap: Option<PciLink>,
    pub link_sta: Option<PciLink>,
    pub mdev_types: Vec<MdevType>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MdevType {
    pub id: String,
    pub name: Option<String>,
    pub device_api: Option<String>,
    pub available: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsbDevice {
    pub bus: u32,
    pub device: u32,
    pub vendor_id: u16,
    pub vendor_name: Option<String>,
    pub product_id: u16,
    pub product_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsbInterface {
    pub number: u32,
    pub class: u32,
    pub subclass: u32,
    pub protocol: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub interface: String,
    pub address: Option<String>,
    pub state: Option<String>,
    pub speed: Option<u32>,
    /// ARPHRD 1 (Ethernet) gets libvirt's `80203` sub-capability.
    pub ethernet: bool,
    /// Enabled offloads (`rx`, `tx`, `sg`, `tso`, ...), libvirt's names and order.
    pub features: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FcHost {
    pub wwnn: String,
    pub wwpn: String,
    pub fabric_wwn: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScsiHost {
    pub host: u32,
    pub unique_id: Option<u32>,
    pub fc: Option<FcHost>,
    /// (max_vports, vports in use) when the host can create NPIV vports.
    pub vports: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scsi {
    pub host: u32,
    pub bus: u32,
    pub target: u32,
    pub lun: u64,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    pub block: String,
    pub bus: Option<String>,
    pub drive_type: String,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub size: u64,
    pub logical_block_size: u64,
    pub removable: bool,
    pub media_available: bool,
}

bitflags::bitflags! {
    /// libvirt's capability and state bits (`virConnectListAllNodeDeviceFlags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const SYSTEM = 1 << 0;
        const PCI_DEV = 1 << 1;
        const USB_DEV = 1 << 2;
        const USB_INTERFACE = 1 << 3;
        const NET = 1 << 4;
        const SCSI_HOST = 1 << 5;
        const SCSI_TARGET = 1 << 6;
        const SCSI = 1 << 7;
        const STORAGE = 1 << 8;
        const FC_HOST = 1 << 9;
        const VPORTS = 1 << 10;
        const SCSI_GENERIC = 1 << 11;
        const DRM = 1 << 12;
        const MDEV_TYPES = 1 << 13;
        const MDEV = 1 << 14;
        const CCW_DEV = 1 << 15;
        const CSS_DEV = 1 << 16;
        const VDPA = 1 << 17;
        const AP_CARD = 1 << 18;
        const AP_QUEUE = 1 << 19;
        const AP_MATRIX = 1 << 20;
        const VPD = 1 << 21;
        const INACTIVE = 1 << 30;
        const ACTIVE = 1 << 31;
        /// Every capability bit (the rest only select active/inactive).
        const CAPS = (1 << 22) - 1;
    }
}

impl Device {
    /// libvirt's capability names, main one first (`virNodeDeviceListCaps`).
    pub fn caps(&self) -> Vec<&'static str> {
        match &self.cap {
            Cap::System(_) => vec!["system"],
            Cap::Pci(p) => {
                let mut v = vec!["pci"];
                if p.phys_function.is_some() {
                    v.push("phys_function");
                }
                if p.max_vfs.is_some() || !p.virt_functions.is_empty() {
                    v.push("virt_functions");
                }
                if !p.mdev_types.is_empty() {
                    v.push("mdev_types");
                }
                v
            }
            Cap::UsbDevice(_) => vec!["usb_device"],
            Cap::UsbInterface(_) => vec!["usb"],
            Cap::Net(_) => vec!["net"],
            Cap::ScsiHost(h) => {
                let mut v = vec!["scsi_host"];
                if h.fc.is_some() {
                    v.push("fc_host");
                }
                if h.vports.is_some() {
                    v.push("vports");
                }
                v
            }
            Cap::ScsiTarget { .. } => vec!["scsi_target"],
            Cap::Scsi(_) => vec!["scsi"],
            Cap::Storage(_) => vec!["storage"],
            Cap::ScsiGeneric { .. } => vec!["scsi_generic"],
            Cap::Drm { .. } => vec!["drm"],
            Cap::Mdev(_) => vec!["mdev"],
        }
    }

    /// The capability bits this device answers to in `ListNodeDevices`.
    pub fn cap_flags(&self) -> ListFlags {
        self.caps()
            .iter()
            .map(|c| match *c {
                "system" => ListFlags::SYSTEM,
                "pci" => ListFlags::PCI_DEV,
                "usb_device" => ListFlags::USB_DEV,
                "usb" => ListFlags::USB_INTERFACE,
                "net" => ListFlags::NET,
                "scsi_host" => ListFlags::SCSI_HOST,
                "fc_host" => ListFlags::FC_HOST,
                "vports" => ListFlags::VPORTS,
                "scsi_target" => ListFlags::SCSI_TARGET,
                "scsi" => ListFlags::SCSI,
                "storage" => ListFlags::STORAGE,
                "mdev_types" => ListFlags::MDEV_TYPES,
                "scsi_generic" => ListFlags::SCSI_GENERIC,
                "drm" => ListFlags::DRM,
                "mdev" => ListFlags::MDEV,
                _ => ListFlags::empty(),
            })
            .fold(ListFlags::empty(), |a, b| a | b)
    }

    /// True when `flags` (libvirt's list filter) selects this device.
    pub fn matches(&self, filter: ListFlags) -> bool {
        let caps = filter & ListFlags::CAPS;
        // Every device here is active (udev-discovered); none is merely defined.
        let state_ok = !filter.intersects(ListFlags::ACTIVE | ListFlags::INACTIVE)
            || filter.contains(ListFlags::ACTIVE);
        state_ok && (caps.is_empty() || self.cap_flags().intersects(caps))
    }
}

/// libvirt's `udevGenerateDeviceName`: `<subsystem>_<sysname>[_<extra>]` with every
/// byte outside `[A-Za-z0-9]` turned into `_`.
pub fn device_name(subsystem: &str, sysname: &str, extra: Option<&str>) -> String {
    let mut s = format!("{subsystem}_{sysname}");
    if let Some(e) = extra.filter(|e| !e.is_empty()) {
        s.push('_');
        s.push_str(e);
    }
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A device name is a libvirt node device name: non-empty, `[A-Za-z0-9_]`, bounded.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Sets each device's parent: the nearest ancestor directory (by DEVPATH) that is
/// itself a device, else `computer`.
pub fn link_parents(devices: &mut [Device]) {
    let by_path: HashMap<String, String> = devices
        .iter()
        .filter_map(|d| Some((d.devpath.clone()?, d.name.clone())))
        .collect();
    for d in devices.iter_mut() {
        if d.name == "computer" {
            continue;
        }
        d.parent = Some(parent_of(d.devpath.as_deref(), |p| by_path.get(p).cloned()));
    }
}

/// The parent's name for a DEVPATH, given a lookup of known DEVPATHs.
pub fn parent_of(devpath: Option<&str>, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut cur = devpath.unwrap_or("");
    while let Some((up, _)) = cur.rsplit_once('/') {
        if up.is_empty() {
            break;
        }
        if let Some(n) = lookup(up) {
            return n;
        }
        cur = up;
    }
    "computer".to_string()
}

/// Sorted by name, the order `ListNodeDevices` answers in.
pub fn by_name(devices: Vec<Device>) -> BTreeMap<String, Device> {
    devices.into_iter().map(|d| (d.name.clone(), d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_libvirt() {
        assert_eq!(device_name("pci", "0000:00:01.0", None), "pci_0000_00_01_0");
        assert_eq!(
            device_name("net", "eth0", Some("52:54:00:aa:bb:cc")),
            "net_eth0_52_54_00_aa_bb_cc"
        );
        assert_eq!(device_name("usb", "1-1:1.0", None), "usb_1_1_1_0");
        assert_eq!(device_name("scsi", "host0", None), "scsi_host0");
        assert_eq!(device_name("block", "vda", Some("")), "block_vda");
        assert!(valid_name("pci_0000_00_01_0"));
        assert!(!valid_name("pci/../x"));
        assert!(!valid_name(""));
    }

    #[test]
    fn pci_addresses_are_checked() {
        let a = PciAddr::parse("0000:03:10.1").expect("valid");
        assert_eq!((a.bus, a.slot, a.function), (3, 0x10, 1));
        assert_eq!(a.to_string(), "0000:03:10.1");
        for bad in [
            "0000:03:10",
            "0000:03:20.0",
            "0000:03:10.8",
            "zz00:03:10.1",
            "",
        ] {
            assert!(PciAddr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parent_is_nearest_known_ancestor() {
        let known = |p: &str| (p == "/devices/pci0000:00/0000:00:02.0").then(|| "pci".to_string());
        assert_eq!(
            parent_of(
                Some("/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"),
                known
            ),
            "pci"
        );
        assert_eq!(
            parent_of(Some("/devices/virtual/net/lo"), known),
            "computer"
        );
        assert_eq!(parent_of(None, known), "computer");
    }
}
