//! Guest NICs at start and stop: what virtqemud asks of virtnetworkd and of the kernel.
//!
//! - `type='network'`: the network is looked up on virtnetworkd by name, a port is made
//!   for the NIC (`Network.PortCreateXML`, owner = the domain, the guest's MAC, the
//!   portgroup), and the port's `<plug bridge=>` names the bridge to enslave the tap to.
//! - `type='bridge'`: the same tap, onto the named bridge, without virtnetworkd.
//! - `type='ethernet'`: an unattached tap; with `<target dev managed='no'>` QEMU opens
//!   the existing device by name instead. Its `<source><ip>` and `<route>` are put on
//!   the tap, its `<script path>` runs with the tap's name once the tap is up, its
//!   `<downscript path>` at stop, as libvirt does.
//! - `type='direct'`: a macvtap on the named host link, deleted again at stop.
//! - `type='server'|'client'|'mcast'|'udp'|'vhostuser'`: nothing on the host; QEMU
//!   opens the socket.
//!
//! - `<filterref filter=...>` on a tap-backed NIC: once the tap exists, virtnetworkd
//!   is asked to bind the filter to it (`NWFilterBindingCreateXML`, libvirt's
//!   virNWFilterBindingCreateXML, owner = the domain), and the binding is deleted at
//!   stop, as libvirt's qemu driver does with virtnwfilterd.
//!
//! The live definition records what was made (`<target dev>`, `<source portid bridge>`),
//! so after a daemon restart a stop still deletes the ports. Taps need no cleanup: they
//! vanish with the last descriptor, QEMU's.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use common::cli::Mode;
use common::error::VirError;
use common::proxies::network::{
    NWFilterBindingProxy, NWFilterBindingsProxy, NetworkConnectProxy, NetworkPortProxy,
    NetworkPortsProxy,
};
use common::xml::Element;
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::tap;
use crate::xml::{Domain, InterfaceKind};

/// What a start made: one entry per tap-backed NIC, in interface order (`None`: QEMU
/// opens it by name), and the ports to delete if the start fails.
#[derive(Default)]
pub struct Prepared {
    pub taps: Vec<Option<OwnedFd>>,
    ports: Vec<OwnedObjectPath>,
    /// Macvtap links made, deleted if the start fails.
    macvtaps: Vec<String>,
    /// Taps a filter was bound to, unbound if the start fails.
    filtered: Vec<String>,
}

impl Prepared {
    /// The descriptors as the command line wants them.
    pub fn raw_fds(&self) -> Vec<Option<i32>> {
        use std::os::fd::AsRawFd;
        self.taps
            .iter()
            .map(|t| t.as_ref().map(|f| f.as_raw_fd()))
            .collect()
    }
}

static BUS: Mutex<Option<zbus::Connection>> = Mutex::new(None);

/// The daemon's bus as a client (session bus in session mode, system bus in system
/// mode, as the runtime chooses it), opened on first need and kept.
pub(crate) async fn bus(mode: Mode) -> Result<zbus::Connection, VirError> {
    if let Some(c) = BUS.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Ok(c);
    }
    let want = match mode {
        Mode::System => "system",
        Mode::Session => "session",
    };
    let address = match std::env::var("DBUS_STARTER_ADDRESS") {
        Ok(a) if std::env::var("DBUS_STARTER_BUS_TYPE").as_deref() == Ok(want) => a,
        _ => match mode {
            Mode::System => std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".to_owned()),
            Mode::Session => std::env::var("DBUS_SESSION_BUS_ADDRESS").map_err(|_| {
                VirError::operation_failed("no session bus to reach virtnetworkd on")
            })?,
        },
    };
    let conn = zbus::connection::Builder::address(address.as_str())
        .map(|b| b.method_timeout(std::time::Duration::from_secs(30)))
        .map_err(|e| VirError::operation_failed(format!("bus address '{address}': {e}")))?
        .build()
        .await
        .map_err(|e| VirError::operation_failed(format!("cannot connect to the bus: {e}")))?;
    *BUS.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    Ok(conn)
}

/// A remote call's failure: org.libvirt.Error keeps libvirt's message and code; anything else
/// (virtnetworkd not running, no activation) says so.
fn remote(what: &str, e: zbus::Error) -> VirError {
    VirError::from_remote(&e).unwrap_or_else(|| {
        VirError::operation_failed(format!("{what}: virtnetworkd did not answer: {e}"))
    })
}

async fn network_proxy<'a>(
    conn: &zbus::Connection,
    name: &str,
) -> Result<NetworkPortsProxy<'a>, VirError> {
    let c = NetworkConnectProxy::new(conn)
        .await
        .map_err(|e| remote("network lookup", e))?;
    let path = c
        .network_lookup_by_name(name)
        .await
        .map_err(|e| remote("network lookup", e))?;
    NetworkPortsProxy::builder(conn)
        .path(path)
        .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
        .map_err(|e| remote("network", e))?
        .build()
        .await
        .map_err(|e| remote("network", e))
}

/// The DHCP leases of `mac` on the network `name` (virtnetworkd's GetDHCPLeases).
pub async fn dhcp_leases(
    mode: Mode,
    name: &str,
    mac: &str,
) -> Result<Vec<common::proxies::network::Lease>, VirError> {
    let conn = bus(mode).await?;
    let c = NetworkConnectProxy::new(&conn)
        .await
        .map_err(|e| remote("network lookup", e))?;
    let path = c
        .network_lookup_by_name(name)
        .await
        .map_err(|e| remote("network lookup", e))?;
    let n = common::proxies::network::NetworkProxy::builder(&conn)
        .path(path)
        .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
        .map_err(|e| remote("network", e))?
        .build()
        .await
        .map_err(|e| remote("network", e))?;
    n.get_dhcp_leases(mac, 0)
        .await
        .map_err(|e| remote("DHCP leases", e))
}

async fn port_proxy<'a>(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
) -> Result<NetworkPortProxy<'a>, zbus::Error> {
    NetworkPortProxy::builder(conn)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// Makes the taps and ports of `dom`'s NICs and records them in `dom` (the live
/// definition). On failure everything made so far is undone.
pub async fn prepare(dom: &mut Domain, mode: Mode) -> Result<Prepared, VirError> {
    let mut done = Prepared::default();
    match prepare_into(dom, mode, &mut done).await {
        Ok(()) => Ok(done),
        Err(e) => {
            for tap in &done.filtered {
                unbind_filter(mode, tap, dom.uuid).await;
            }
            release_paths(mode, std::mem::take(&mut done.ports)).await;
            for m in &done.macvtaps {
                tap::delete_link(m).await;
            }
            Err(e)
        }
    }
}

async fn prepare_into(dom: &mut Domain, mode: Mode, done: &mut Prepared) -> Result<(), VirError> {
    let owner_name = dom.name.as_str().to_owned();
    let owner_uuid = dom.uuid;
    for nic in dom.devices.interfaces.iter_mut() {
        let bridge = match &nic.kind {
            InterfaceKind::User | InterfaceKind::Socket(_) | InterfaceKind::VhostUser { .. } => {
                continue
            }
            InterfaceKind::Direct { dev, mode } => {
                let mac = nic
                    .mac
                    .ok_or_else(|| VirError::internal("NIC without a MAC"))?;
                let t = tap::create_macvtap(dev, mode, mac.0).await?;
                tracing::info!(macvtap = %t.name, link = %dev, mode = %mode, "macvtap ready");
                done.macvtaps.push(t.name.clone());
                nic.target_dev = Some(t.name);
                done.taps.push(Some(t.fd));
                continue;
            }
            InterfaceKind::Ethernet if nic.target_managed == Some(false) => {
                if nic.target_dev.is_none() {
                    return Err(VirError::unsupported(
                        "<interface type='ethernet'> with managed='no' needs <target dev>",
                    ));
                }
                done.taps.push(None);
                continue;
            }
            InterfaceKind::Ethernet => None,
            InterfaceKind::Bridge(b) => Some(b.clone()),
            InterfaceKind::Network(net) => {
                let conn = bus(mode).await?;
                let n = network_proxy(&conn, net).await?;
                let mac = nic
                    .mac
                    .ok_or_else(|| VirError::internal("NIC without a MAC"))?;
                let portid = Uuid::new_v4();
                let xml = Element::new("networkport")
                    .child(Element::with_text("uuid", portid.to_string()))
                    .child(
                        Element::new("owner")
                            .child(Element::with_text("name", &owner_name))
                            .child(Element::with_text("uuid", owner_uuid.to_string())),
                    )
                    .child(Element::new("mac").attr("address", mac))
                    .child_opt(
                        nic.portgroup
                            .as_ref()
                            .map(|g| Element::with_text("group", g)),
                    )
                    .to_xml();
                let path = n
                    .port_create_xml(&xml, 0)
                    .await
                    .map_err(|e| remote("port create", e))?;
                done.ports.push(path.clone());
                nic.portid = Some(portid);
                let port = port_proxy(&conn, path)
                    .await
                    .map_err(|e| remote("port", e))?;
                let px = port.get_xml_desc(0).await.map_err(|e| remote("port", e))?;
                let br = common::xml::parse_root(&px, "networkport")
                    .ok()
                    .and_then(|r| {
                        r.first("plug")
                            .and_then(|p| p.get_attr("bridge"))
                            .map(str::to_owned)
                    })
                    .ok_or_else(|| {
                        VirError::operation_failed(format!(
                            "network '{net}' gave its port no bridge to plug into"
                        ))
                    })?;
                nic.source_bridge = Some(br.clone());
                Some(br)
            }
        };
        // A name the user chose is used as is, unless it is in the automatic range.
        let wanted = nic
            .target_dev
            .as_deref()
            .filter(|n| !n.starts_with("vnet") && !n.starts_with("macvtap"));
        let t = tap::create(wanted)?;
        let mac = nic
            .mac
            .ok_or_else(|| VirError::internal("NIC without a MAC"))?;
        nic.target_dev = Some(t.name.clone());
        tap::configure(&t.name, mac.0, bridge.as_deref(), nic.mtu)?;
        tracing::info!(tap = %t.name, bridge = ?bridge, "tap ready");
        if matches!(nic.kind, InterfaceKind::Ethernet) {
            let (ips, routes) = ethernet_source(nic)?;
            if !ips.is_empty() || !routes.is_empty() {
                tap::add_ips(&t.name, &ips, &routes).await?;
            }
            run_script(nic, "script", &t.name).await?;
        }
        let fd = t.fd;
        if let Some(f) = nic.unhandled.iter().find(|c| c.name == "filterref") {
            bind_filter(mode, f, &t.name, &owner_name, owner_uuid, &mac.to_string()).await?;
            done.filtered.push(t.name.clone());
        }
        if let Some(bw) = crate::bandwidth::Bandwidth::of(&nic.unhandled)? {
            crate::bandwidth::apply(&t.name, &bw).await?;
        }
        done.taps.push(Some(fd));
    }
    Ok(())
}

async fn release_paths(mode: Mode, ports: Vec<OwnedObjectPath>) {
    if ports.is_empty() {
        return;
    }
    let Ok(conn) = bus(mode).await else { return };
    for p in ports {
        let r = match port_proxy(&conn, p.clone()).await {
            Ok(port) => port.delete(0).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(port = %p, "network port not deleted: {e}");
        }
    }
}

/// Asks virtnetworkd to bind the NIC's `<filterref>` (as written, parameters and
/// all) to its tap.
async fn bind_filter(
    mode: Mode,
    filterref: &Element,
    tap: &str,
    owner_name: &str,
    owner_uuid: Uuid,
    mac: &str,
) -> Result<(), VirError> {
    let xml = Element::new("filterbinding")
        .child(
            Element::new("owner")
                .child(Element::with_text("name", owner_name))
                .child(Element::with_text("uuid", owner_uuid.to_string())),
        )
        .child(Element::new("portdev").attr("name", tap))
        .child(Element::new("mac").attr("address", mac))
        .child(filterref.clone())
        .to_xml();
    let conn = bus(mode).await?;
    let b = NWFilterBindingsProxy::new(&conn)
        .await
        .map_err(|e| remote("filter binding", e))?;
    b.nwfilter_binding_create_xml(&xml, 0)
        .await
        .map_err(|e| remote("filter binding", e))?;
    tracing::info!(tap, "network filter bound");
    Ok(())
}

/// Deletes the filter binding of `tap` if it is this domain's (a tap name may have
/// been reused by another guest since). Gone already is not an error.
async fn unbind_filter(mode: Mode, tap: &str, owner: Uuid) {
    let r = async {
        let conn = bus(mode).await?;
        let b = NWFilterBindingsProxy::new(&conn)
            .await
            .map_err(|e| remote("filter binding", e))?;
        let Ok(path) = b.nwfilter_binding_lookup_by_port_dev(tap).await else {
            return Ok(());
        };
        let p = NWFilterBindingProxy::builder(&conn)
            .path(path)
            .map_err(|e| remote("filter binding", e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| remote("filter binding", e))?;
        let xml = p
            .get_xml_desc(0)
            .await
            .map_err(|e| remote("filter binding", e))?;
        if !xml.contains(&format!("<uuid>{owner}</uuid>")) {
            return Ok(());
        }
        p.delete().await.map_err(|e| remote("filter binding", e))
    }
    .await;
    match r {
        Ok(()) => tracing::info!(tap, "network filter unbound"),
        Err(e) => tracing::warn!(tap, "network filter binding not deleted: {e}"),
    }
}

/// Deletes the network ports a live definition records (a stop, a crash, a domain
/// found dead after a restart). A port already gone is not an error.
pub async fn release(dom: &Domain, mode: Mode) {
    for nic in &dom.devices.interfaces {
        if let (true, Some(t)) = (nic.has_runtime_tap(), &nic.target_dev) {
            if nic.unhandled.iter().any(|c| c.name == "filterref") {
                unbind_filter(mode, t, dom.uuid).await;
            }
            // The tap's policer chain outlives the tap in nftables.
            if nic.unhandled.iter().any(|c| c.name == "bandwidth") {
                crate::bandwidth::clear(t).await;
            }
        }
    }
    for nic in &dom.devices.interfaces {
        match (&nic.kind, &nic.target_dev) {
            (InterfaceKind::Direct { .. }, Some(t)) => tap::delete_link(t).await,
            (InterfaceKind::Ethernet, Some(t)) if nic.target_managed != Some(false) => {
                if let Err(e) = run_script(nic, "downscript", t).await {
                    tracing::warn!(tap = %t, "{e}");
                }
            }
            _ => {}
        }
    }
    let ports: Vec<(String, Uuid)> = dom
        .devices
        .interfaces
        .iter()
        .filter_map(|n| match (&n.kind, n.portid) {
            (InterfaceKind::Network(net), Some(id)) => Some((net.clone(), id)),
            _ => None,
        })
        .collect();
    if ports.is_empty() {
        return;
    }
    let conn = match bus(mode).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("network ports not deleted: {e}");
            return;
        }
    };
    for (net, id) in ports {
        let r = async {
            let n = network_proxy(&conn, &net).await?;
            let p = n
                .port_lookup_by_uuid(&id.to_string())
                .await
                .map_err(|e| remote("port lookup", e))?;
            let port = port_proxy(&conn, p).await.map_err(|e| remote("port", e))?;
            port.delete(0).await.map_err(|e| remote("port delete", e))
        }
        .await;
        match r {
            Ok(()) => tracing::info!(network = %net, port = %id, "network port deleted"),
            Err(e) => tracing::warn!(network = %net, port = %id, "network port not deleted: {e}"),
        }
    }
}

/// Runs an ethernet NIC's `<script path>` or `<downscript path>` with the tap's name
/// as its argument and waits for it; a failure names the script and its status.
async fn run_script(nic: &crate::xml::Interface, which: &str, tap: &str) -> Result<(), VirError> {
    let Some(path) = nic
        .unhandled
        .iter()
        .find(|c| c.name == which)
        .and_then(|c| c.get_attr("path"))
    else {
        return Ok(());
    };
    if !path.starts_with('/') {
        return Err(VirError::unsupported(format!(
            "<interface/{which}> path '{path}' must be absolute"
        )));
    }
    let out = tokio::process::Command::new(path)
        .arg(tap)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| VirError::operation_failed(format!("cannot run {which} '{path}': {e}")))?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "{which} '{path}' for '{tap}' failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tracing::info!(tap, script = path, "{which} ran");
    Ok(())
}

/// An ethernet NIC's `<source>`: host-side `<ip address prefix peer>` and
/// `<route address prefix gateway>` for its tap (`family` optional, checked).
fn ethernet_source(
    nic: &crate::xml::Interface,
) -> Result<(Vec<tap::HostIp>, Vec<tap::HostRoute>), VirError> {
    let (mut ips, mut routes) = (Vec::new(), Vec::new());
    let Some(src) = &nic.source_kept else {
        return Ok((ips, routes));
    };
    let bad = |what: &str, v: &str, why: &str| {
        VirError::unsupported(format!("invalid value '{v}' for {what}: {why}"))
    };
    let addr = |el: &Element, key: &str| -> Result<Option<std::net::IpAddr>, VirError> {
        el.get_attr(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(&format!("<{}> {key}", el.name), v, "not an IP address"))
            })
            .transpose()
    };
    for c in src.elements() {
        let address = addr(c, "address")?
            .ok_or_else(|| bad(&format!("<{}> address", c.name), "", "required"))?;
        let v4 = address.is_ipv4();
        match c.get_attr("family") {
            None => {}
            Some("ipv4") if v4 => {}
            Some("ipv6") if !v4 => {}
            Some(f) => return Err(bad(&format!("<{}> family", c.name), f, "not the address's")),
        }
        let max = if v4 { 32 } else { 128 };
        let prefix = match c.get_attr("prefix") {
            None => {
                if v4 {
                    24
                } else {
                    64
                }
            }
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("<{}> prefix", c.name), p, "out of range"))?,
        };
        match c.name.as_str() {
            "ip" => ips.push(tap::HostIp {
                address,
                prefix,
                peer: addr(c, "peer")?,
            }),
            "route" => routes.push(tap::HostRoute {
                address,
                prefix,
                gateway: addr(c, "gateway")?
                    .ok_or_else(|| bad("<route> gateway", "", "required"))?,
            }),
            n => {
                return Err(VirError::unsupported(format!(
                    "<interface/source/{n}> is not supported on an ethernet interface"
                )))
            }
        }
    }
    Ok((ips, routes))
}
