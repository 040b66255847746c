//! NICs: the host side as `-netdev` (user networking, a tap or macvtap the runtime
//! opened, a tap QEMU opens by name, or a socket to another guest) and the guest NIC as
//! a device bound to it.

use common::xml::Element;

use crate::xml::{Domain, Interface, InterfaceKind, SocketNet};

use super::device::{DeviceProps, PciBuses};
use super::{qemu_opt_value, unsupported, Argv, LaunchContext, Result};

pub(super) fn nics(
    a: &mut Argv,
    dom: &Domain,
    ctx: &LaunchContext,
    buses: &PciBuses,
) -> Result<()> {
    // Tap fds are handed over in the order of the tap-backed NICs only.
    let mut tap_index = 0usize;
    for (i, nic) in dom.devices.interfaces.iter().enumerate() {
        // An ethernet NIC's host-side `<ip>` and `<route>` are the runtime's
        // (`nics.rs`, on the tap it makes).
        let host_side = |kept: &Element| {
            matches!(nic.kind, InterfaceKind::Ethernet)
                && nic.target_managed != Some(false)
                && kept.attrs.is_empty()
                && kept.elements().all(|c| c.name == "ip" || c.name == "route")
        };
        if let Some(kept) = nic.source_kept.as_ref().filter(|k| !host_side(k)) {
            let what = match kept.elements().next() {
                Some(c) => format!("interface/source/{}", c.name),
                None => "interface/source".to_owned(),
            };
            return Err(unsupported(
                &what,
                nic.mac.map(|m| m.to_string()).as_deref().unwrap_or(""),
                "not implemented",
            ));
        }
        // `<driver>` and `<rom>` are the guest device's business (`nic_props`).
        if let Some(c) = nic.unhandled.iter().find(|c| !nic_reads(nic, c)) {
            return Err(unsupported(
                &format!("interface/{}", c.name),
                nic.mac.map(|m| m.to_string()).as_deref().unwrap_or(""),
                "not implemented",
            ));
        }
        if let InterfaceKind::VhostUser {
            path,
            server,
            reconnect,
        } = &nic.kind
        {
            a.pair("-chardev", vhostuser_chardev(i, path, *server, *reconnect)?);
        }
        let fd = match nic.kind {
            InterfaceKind::User | InterfaceKind::Socket(_) | InterfaceKind::VhostUser { .. } => {
                None
            }
            _ => {
                tap_index += 1;
                ctx.tap_fds.get(tap_index - 1).copied().flatten()
            }
        };
        a.pair("-netdev", netdev(i, nic, fd)?);
        a.device(&nic_props(i, nic, buses)?)?;
    }
    Ok(())
}

/// The `-netdev` of NIC `i` (id `hostnetI`); `fd` is the tap the runtime opened.
fn netdev(i: usize, nic: &Interface, fd: Option<i32>) -> Result<String> {
    let id = format!("hostnet{i}");
    Ok(match (&nic.kind, fd, &nic.target_dev) {
        (InterfaceKind::User, _, _) => format!("user,{}id={id}", user_ips(nic)?),
        (InterfaceKind::Socket(s), _, _) => format!("socket,{},id={id}", socket(s)?),
        (InterfaceKind::VhostUser { .. }, _, _) => {
            let queues = match queues(nic)? {
                q if q > 1 => format!(",queues={q}"),
                _ => String::new(),
            };
            format!("vhost-user,chardev=charnet{i}{queues},id={id}")
        }
        (_, Some(fd), _) => format!("tap,fd={fd},id={id},vhost=off"),
        (InterfaceKind::Ethernet, None, Some(dev)) => {
            crate::xml::check_ifname("interface/target", dev)
                .map_err(|e| unsupported("interface target", dev, e))?;
            format!(
                "tap,ifname={},script=no,downscript=no,id={id}",
                qemu_opt_value("interface target dev", dev)?
            )
        }
        (InterfaceKind::Ethernet, None, None) => {
            return Err(unsupported(
                "interface",
                "ethernet",
                "needs <target dev> or a tap fd from the runtime",
            ))
        }
        (k, None, _) => {
            return Err(unsupported(
                "interface",
                match k {
                    InterfaceKind::Bridge(_) => "bridge",
                    InterfaceKind::Direct { .. } => "direct",
                    _ => "network",
                },
                "the runtime must open the tap and pass its fd",
            ))
        }
    })
}

/// The socket chardev of vhost-user NIC `i` (`charnetI`): QEMU listens (`server=on`,
/// and waits for the backend before the guest starts, as libvirt asks) or connects,
/// with `reconnect=` as `<reconnect>` says.
fn vhostuser_chardev(
    i: usize,
    path: &std::path::Path,
    server: bool,
    reconnect: Option<Option<u32>>,
) -> Result<String> {
    let mut s = format!(
        "socket,id=charnet{i},path={}",
        super::path_opt("interface source path", path)?
    );
    if server {
        s.push_str(",server=on");
    } else if let Some(r) = reconnect {
        s.push_str(&format!(",reconnect={}", r.unwrap_or(0)));
    }
    Ok(s)
}

/// `<driver queues>`: the queue pairs of a NIC (1 when not given).
fn queues(nic: &Interface) -> Result<u32> {
    match nic
        .unhandled
        .iter()
        .find(|c| c.name == "driver")
        .and_then(|d| d.get_attr("queues"))
    {
        None => Ok(1),
        Some(q) => q
            .parse::<u32>()
            .ok()
            .filter(|q| (1..=256).contains(q))
            .ok_or_else(|| unsupported("interface/driver queues", q, "expected 1 to 256")),
    }
}

/// Kept NIC children the command line reads: `<driver>` and `<rom>` (the guest
/// device's), a user NIC's `<ip>` (its network) and an ethernet NIC's `<script>` and
/// `<downscript>` (run by the runtime on the tap it made, `nics.rs`); a tap-backed
/// NIC's `<filterref>` (bound to its tap by virtnetworkd, `nics.rs`).
fn nic_reads(nic: &Interface, c: &Element) -> bool {
    match c.name.as_str() {
        "driver" | "rom" => true,
        // A user's alias names the device in the definition; QEMU's id is ours.
        "alias" => crate::xml::user_alias(c),
        "ip" => matches!(nic.kind, InterfaceKind::User),
        "script" | "downscript" => {
            matches!(nic.kind, InterfaceKind::Ethernet) && nic.target_managed != Some(false)
        }
        "filterref" | "bandwidth" => nic.has_runtime_tap(),
        _ => false,
    }
}

/// A user NIC's `<ip address prefix family>`: the guest network QEMU's slirp hands
/// out (`net=` for IPv4, `ipv6-prefix=` for IPv6), as libvirt passes it.
fn user_ips(nic: &Interface) -> Result<String> {
    let mut out = String::new();
    for ip in nic.unhandled.iter().filter(|c| c.name == "ip") {
        let addr = ip.get_attr("address").unwrap_or_default();
        let bad = |why: &str| unsupported("interface/ip address", addr, why);
        let parsed: std::net::IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let prefix = ip
            .get_attr("prefix")
            .map(|p| p.parse::<u8>().map_err(|_| bad("bad prefix")))
            .transpose()?;
        match parsed {
            std::net::IpAddr::V4(a) => {
                let p = prefix.unwrap_or(24);
                if p > 32 {
                    return Err(bad("prefix above 32"));
                }
                out.push_str(&format!("net={a}/{p},"));
            }
            std::net::IpAddr::V6(a) => {
                let p = prefix.unwrap_or(64);
                if p > 128 {
                    return Err(bad("prefix above 128"));
                }
                out.push_str(&format!("ipv6-prefix={a},ipv6-prefixlen={p},"));
            }
        }
    }
    Ok(out)
}

/// The socket netdev's end points, as libvirt writes them: `listen=`, `connect=`,
/// `mcast=` or `udp=` with `host:port`, and `localaddr=` for the local end.
fn socket(s: &SocketNet) -> Result<String> {
    let host = |h: Option<&str>| -> Result<String> {
        h.map(|h| qemu_opt_value("interface source address", h))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let key = match s.mode.as_str() {
        "server" => "listen",
        "client" => "connect",
        "mcast" => "mcast",
        "udp" => "udp",
        m => return Err(unsupported("interface", m, "not a socket type")),
    };
    let mut out = format!("{key}={}:{}", host(s.address.as_deref())?, s.port);
    match (s.mode.as_str(), &s.local_address, s.local_port) {
        ("udp", a, p) => {
            out.push_str(&format!(
                ",localaddr={}:{}",
                host(a.as_deref())?,
                p.unwrap_or(0)
            ));
        }
        // QEMU's mcast localaddr is an address without a port.
        ("mcast", Some(a), _) => out.push_str(&format!(",localaddr={}", host(Some(a))?)),
        _ => {}
    }
    Ok(out)
}

/// The guest NIC `i`, bound to netdev `hostnetI`.
pub(super) fn nic_props(i: usize, nic: &Interface, buses: &PciBuses) -> Result<DeviceProps> {
    let model = match nic.model.as_deref().unwrap_or("virtio") {
        "virtio" => "virtio-net-pci",
        "e1000" => "e1000",
        "e1000e" => "e1000e",
        "rtl8139" => "rtl8139",
        "virtio-transitional" => "virtio-net-pci-transitional",
        "virtio-non-transitional" => "virtio-net-pci-non-transitional",
        m @ ("ne2k_pci" | "pcnet" | "i82551" | "i82557b" | "i82559er" | "vmxnet3"
        | "e1000-82544gc" | "e1000-82545em") => m,
        m => return Err(unsupported("interface model", m, "not implemented")),
    };
    let mac = nic
        .mac
        .ok_or_else(|| unsupported("interface", "", "no MAC (fill_defaults first)"))?;
    let mut dev = DeviceProps::new(model)
        .str("netdev", format!("hostnet{i}"))
        .str("id", format!("net{i}"))
        .str("mac", mac.to_string())
        .pci(buses, &nic.address)
        .opt_uint("bootindex", nic.boot_order.map(u64::from));
    if let Some(d) = nic.unhandled.iter().find(|c| c.name == "driver") {
        let vhost_user = matches!(nic.kind, InterfaceKind::VhostUser { .. });
        dev = driver_props(dev, d, model, vhost_user)?;
        // Several queue pairs (vhost-user only): multiqueue, with 2N+2 MSI-X vectors.
        let q = queues(nic)?;
        if q > 1 {
            dev = dev.on("mq").uint("vectors", 2 * u64::from(q) + 2);
        }
    }
    if let Some(r) = nic.unhandled.iter().find(|c| c.name == "rom") {
        dev = rom_props(dev, r)?;
    }
    match (nic.mtu, model) {
        (Some(m), "virtio-net-pci") => dev = dev.uint("host_mtu", m.into()),
        (Some(_), _) if matches!(nic.kind, InterfaceKind::User | InterfaceKind::Socket(_)) => {
            return Err(unsupported(
                "interface/mtu",
                "user or socket",
                "only tap-backed NICs have an MTU to set",
            ))
        }
        _ => {}
    }
    Ok(dev)
}

/// A virtio NIC's `<driver>` attributes and QEMU's property for each (libvirt's
/// mapping); `txmode` and the offload children are handled apart.
const NIC_DRIVER_BOOLS: &[(&str, &str)] = &[
    ("ioeventfd", "ioeventfd"),
    ("event_idx", "event_idx"),
    ("iommu", "iommu_platform"),
    ("ats", "ats"),
    ("packed", "packed"),
    ("page_per_vq", "page-per-vq"),
    ("rss", "rss"),
    ("rss_hash_report", "hash"),
];

/// `<driver><host>` and `<driver><guest>` offloads: attribute, QEMU's property.
const NIC_HOST_OFFLOADS: &[(&str, &str)] = &[
    ("csum", "csum"),
    ("gso", "gso"),
    ("tso4", "host_tso4"),
    ("tso6", "host_tso6"),
    ("ecn", "host_ecn"),
    ("ufo", "host_ufo"),
    ("mrg_rxbuf", "mrg_rxbuf"),
];
const NIC_GUEST_OFFLOADS: &[(&str, &str)] = &[
    ("csum", "guest_csum"),
    ("tso4", "guest_tso4"),
    ("tso6", "guest_tso6"),
    ("ecn", "guest_ecn"),
    ("ufo", "guest_ufo"),
];

fn nic_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(unsupported(
            &format!("interface/driver {key}"),
            v,
            "expected on or off",
        )),
    }
}

/// A NIC's `<driver>` as virtio-net properties. QEMU's own virtio-net is what runs
/// (`name='qemu'`); vhost-net and multiqueue taps need descriptors this runtime does
/// not open, and are refused by name.
fn driver_props(
    mut dev: DeviceProps,
    d: &Element,
    model: &str,
    vhost_user: bool,
) -> Result<DeviceProps> {
    let virtio = model.starts_with("virtio-net-pci");
    for (k, v) in &d.attrs {
        let bool_prop = NIC_DRIVER_BOOLS.iter().find(|(a, _)| a == k).map(|p| p.1);
        match (k.as_str(), v.as_str(), bool_prop) {
            ("name", "qemu", _) => continue,
            // Read by `queues`: a vhost-user backend serves several queue pairs on one
            // socket; taps would need one descriptor each.
            ("queues", "1", _) => continue,
            ("queues", _, _) if vhost_user && virtio => continue,
            (k, v, _) if !virtio => {
                return Err(unsupported(
                    &format!("interface/driver {k}"),
                    v,
                    "only for virtio NICs",
                ))
            }
            (_, v, Some(prop)) => dev
                .props
                .push((prop, super::PropValue::Bool(nic_bool(k, v)?))),
            ("txmode", "iothread", _) => dev = dev.str("tx", "bh"),
            ("txmode", "timer", _) => dev = dev.str("tx", "timer"),
            ("rx_queue_size" | "tx_queue_size", v, _) => {
                let n: u64 = v.parse().map_err(|_| {
                    unsupported(&format!("interface/driver {k}"), v, "not a number")
                })?;
                let prop = if k == "rx_queue_size" {
                    "rx_queue_size"
                } else {
                    "tx_queue_size"
                };
                dev = dev.uint(prop, n);
            }
            (k, v, _) => {
                return Err(unsupported(
                    &format!("interface/driver {k}"),
                    v,
                    "not implemented",
                ))
            }
        }
    }
    for c in d.elements() {
        let table = match c.name.as_str() {
            "host" => NIC_HOST_OFFLOADS,
            "guest" => NIC_GUEST_OFFLOADS,
            n => {
                return Err(unsupported(
                    &format!("interface/driver/{n}"),
                    "",
                    "not implemented",
                ))
            }
        };
        if !virtio {
            return Err(unsupported(
                &format!("interface/driver/{}", c.name),
                model,
                "only for virtio NICs",
            ));
        }
        for (k, v) in &c.attrs {
            let prop = table
                .iter()
                .find(|(a, _)| a == k)
                .map(|p| p.1)
                .ok_or_else(|| {
                    unsupported(
                        &format!("interface/driver/{} {k}", c.name),
                        v,
                        "not implemented",
                    )
                })?;
            dev.props
                .push((prop, super::PropValue::Bool(nic_bool(k, v)?)));
        }
    }
    Ok(dev)
}

/// `<rom bar file>`: whether the option ROM is mapped in a BAR, and which image.
/// `enabled='no'` (no ROM at all) needs an empty `romfile=`, which the option
/// renderer does not write: refused by name.
fn rom_props(mut dev: DeviceProps, r: &Element) -> Result<DeviceProps> {
    for (k, v) in &r.attrs {
        dev = match (k.as_str(), v.as_str()) {
            ("bar", "on") => dev.uint("rombar", 1),
            ("bar", "off") => dev.uint("rombar", 0),
            ("file", f) if f.starts_with('/') => dev.str("romfile", f),
            ("enabled", "yes") => dev,
            (k, v) => {
                return Err(unsupported(
                    &format!("interface/rom {k}"),
                    v,
                    "not implemented",
                ))
            }
        };
    }
    Ok(dev)
}

/// For hotplug: the QMP `netdev_add` arguments of NIC `i` of `dom` as backend
/// `hostnetN` (`n`), a tap passed beforehand under the name `fd` (QMP `getfd`), and its
/// guest device `netN`, from the same functions as at start. Only user networking and
/// taps the runtime opened plug in live.
pub fn hotplug_nic(
    dom: &Domain,
    i: usize,
    n: usize,
    fd: Option<&str>,
) -> Result<(serde_json::Value, DeviceProps)> {
    let nic = dom
        .devices
        .interfaces
        .get(i)
        .ok_or_else(|| unsupported("interface", "", "no such NIC"))?;
    if let Some(c) = nic.unhandled.iter().find(|c| !nic_reads(nic, c)) {
        return Err(unsupported(
            &format!("interface/{}", c.name),
            nic.mac.map(|m| m.to_string()).as_deref().unwrap_or(""),
            "not implemented",
        ));
    }
    let id = format!("hostnet{n}");
    let netdev = match (&nic.kind, fd) {
        (InterfaceKind::User, _) => {
            let mut args = serde_json::json!({"type": "user", "id": id});
            // `user_ips` gives `net=A/P,` and `ipv6-net=A/P,` options.
            for opt in user_ips(nic)?.split(',').filter(|o| !o.is_empty()) {
                if let Some((k, v)) = opt.split_once('=') {
                    args[k] = serde_json::Value::from(v);
                }
            }
            args
        }
        (
            InterfaceKind::Bridge(_) | InterfaceKind::Network(_) | InterfaceKind::Ethernet,
            Some(fd),
        ) => serde_json::json!({"type": "tap", "fd": fd, "id": id, "vhost": false}),
        (k, _) => {
            return Err(unsupported(
                "interface",
                match k {
                    InterfaceKind::Direct { .. } => "direct",
                    InterfaceKind::Socket(_) => "socket",
                    InterfaceKind::VhostUser { .. } => "vhostuser",
                    _ => "ethernet",
                },
                "not on hotplug",
            ))
        }
    };
    // Named by `n`, at the PCI address the defaults gave this NIC in `dom`.
    Ok((netdev, nic_props(n, nic, &PciBuses::of(dom))?))
}
