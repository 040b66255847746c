//! NICs: the host side as `-netdev` (user networking, a tap or macvtap the runtime
//! opened, a tap QEMU opens by name, or a socket to another guest) and the guest NIC as
//! a device bound to it.

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
        if let Some(c) = nic.unhandled.first() {
            return Err(unsupported(
                &format!("interface/{}", c.name),
                nic.mac.map(|m| m.to_string()).as_deref().unwrap_or(""),
                "not implemented",
            ));
        }
        let fd = match nic.kind {
            InterfaceKind::User | InterfaceKind::Socket(_) => None,
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
        (InterfaceKind::User, _, _) => format!("user,id={id}"),
        (InterfaceKind::Socket(s), _, _) => format!("socket,{},id={id}", socket(s)?),
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
