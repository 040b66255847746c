//! Guest NICs across daemons: virtqemud makes the taps and asks virtnetworkd for ports.
//! Everything runs inside network namespaces these tests create; both daemons share
//! one test bus.

mod support;

use std::time::Duration;

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{
    NetworkConnectProxy, NetworkPortProxy, NetworkPortsProxy, NetworkProxy,
};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use support::{bus_err, domain, sibling_daemon};
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

/// `ip -j link show dev NAME` in `ns`: (master, MAC, up), or None when it does not exist.
fn link(ns: &NetNs, name: &str) -> Option<(Option<String>, String, bool)> {
    link_json(ns, name).and_then(|l| {
        Some((
            l.get("master").and_then(|m| m.as_str()).map(str::to_owned),
            l.get("address")?.as_str()?.to_owned(),
            l.get("flags")?
                .as_array()?
                .iter()
                .any(|f| f.as_str() == Some("UP")),
        ))
    })
}

fn link_json(ns: &NetNs, name: &str) -> Option<serde_json::Value> {
    let out = ns.run(&["ip", "-j", "link", "show", "dev", name]).ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

/// The value of `attr` on the first `<elem` of `xml` that has it.
fn attr_of(xml: &str, elem: &str, attr: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .filter(|n| n.has_tag_name(elem))
        .find_map(|n| n.attribute(attr).map(str::to_owned))
}

/// How many of `pid`'s descriptors are /dev/net/tun.
fn tun_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t == std::path::Path::new("/dev/net/tun"))
                })
                .count()
        })
        .unwrap_or(0)
}

const MAC: &str = "52:54:00:91:00:07";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_nic_gets_a_port_a_tap_and_a_dhcp_lease() {
    let netd = sibling_daemon("virtnetworkd");
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let _net = Daemon::builder(&netd, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let mut qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let nc = NetworkConnectProxy::new(&conn).await.expect("net proxy");
    let npath = nc
        .network_define_xml(
            "<network><name>qn</name><forward mode='nat'/><bridge name='vqbr0'/>\
             <ip address='10.91.0.1' prefix='24'><dhcp><range start='10.91.0.100' \
             end='10.91.0.150'/></dhcp></ip></network>",
        )
        .await
        .expect("define network");
    let net = NetworkProxy::builder(&conn)
        .path(npath.clone())
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("network");
    let net_ports = NetworkPortsProxy::builder(&conn)
        .path(npath)
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("network");
    net.create().await.expect("start network");

    let qc = QemuConnectProxy::new(&conn).await.expect("qemu proxy");

    // A network that does not exist: a clear error, nothing made.
    let p = qc
        .domain_define_xml(&support::guest_xml(
            "lost",
            &qemud.dirs.state.join("lost.serial"),
            "<interface type='network'><source network='nowhere'/></interface>",
        ))
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &p).await.create(0).await);
    assert!(e.starts_with("Network not found"), "{e}");
    // A start that fails after the port was made (the second NIC's bridge is missing):
    // the port is deleted again.
    let p = qc
        .domain_define_xml(&support::guest_xml(
            "half",
            &qemud.dirs.state.join("half.serial"),
            "<interface type='network'><source network='qn'/></interface>\
             <interface type='bridge'><source bridge='nobr0'/></interface>",
        ))
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &p).await.create(0).await);
    assert!(e.contains("cannot use bridge 'nobr0'"), "{e}");
    assert!(net_ports.list_ports(0).await.expect("ports").is_empty());
    assert!(link(&ns, "vnet0").is_none(), "no tap left behind");

    // The real thing: the guest boots, gets a lease through the port's bridge.
    let serial = qemud.dirs.state.join("netg.serial");
    let path = qc
        .domain_define_xml(&support::guest_xml(
            "netg",
            &serial,
            &format!(
                "<interface type='network'><mac address='{MAC}'/>\
                 <source network='qn' portgroup='pg1'/><model type='virtio'/></interface>"
            ),
        ))
        .await
        .expect("define guest");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start guest");
    let ports = net_ports.list_ports(0).await.expect("ports");
    assert_eq!(ports.len(), 1, "one port while running");
    let port = NetworkPortProxy::builder(&conn)
        .path(ports[0].clone())
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("port");
    let px = port.get_xml_desc(0).await.expect("port xml");
    assert!(px.contains("<name>netg</name>"), "{px}");
    assert!(px.contains(MAC), "{px}");
    let live = d.get_xml_desc(0).await.expect("live xml");
    let tap = attr_of(&live, "target", "dev").expect("live XML names the tap");
    assert!(tap.starts_with("vnet"), "{tap}");
    assert_eq!(
        attr_of(&live, "source", "portid").as_deref(),
        Some(port.uuid().await.expect("port uuid").as_str())
    );
    assert_eq!(attr_of(&live, "source", "bridge").as_deref(), Some("vqbr0"));
    assert_eq!(
        attr_of(&live, "source", "portgroup").as_deref(),
        Some("pg1")
    );
    let inactive = d.get_xml_desc(2).await.expect("inactive xml");
    assert!(
        attr_of(&inactive, "source", "portid").is_none(),
        "{inactive}"
    );
    let (master, hostmac, up) = link(&ns, &tap).expect("tap exists");
    assert_eq!(master.as_deref(), Some("vqbr0"));
    assert_eq!(hostmac, "fe:54:00:91:00:07");
    assert!(up);
    let pid = qemud_pid(&d).await;
    assert_eq!(tun_fds(pid), 1, "QEMU holds exactly its one tap");

    support::wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
    // The guest image's DHCP hook prints its "TINYGUEST-DHCP bound" marker to udhcpc's
    // stdout, which its init sends to /dev/null; the lease and a ping show the same.
    let mut ip = None;
    for _ in 0..300 {
        let leases = net.get_dhcp_leases(MAC, 0).await.expect("leases");
        if let Some(l) = leases.iter().find(|l| l.3 == MAC) {
            ip = Some(l.5.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ip = ip.expect("GetDHCPLeases lists the guest's MAC within 60 s");
    assert!(ip.starts_with("10.91.0."), "{ip}");
    let mut answered = false;
    for _ in 0..20 {
        if ns
            .run(&["busybox", "ping", "-c", "1", "-W", "1", &ip])
            .is_ok_and(|o| o.status.success())
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "the guest answers ping at {ip} through its tap");
    addresses_from_lease_and_arp(&d, &tap, &ip).await;

    // kill -9 of virtqemud: the port stays (the domain lives), and after the restart a
    // Destroy still deletes it.
    qemud.kill9();
    let qemud2 = qemud
        .restart_builder()
        .spawn(&bus)
        .await
        .expect("virtqemud again");
    assert_eq!(net_ports.list_ports(0).await.expect("ports").len(), 1);
    assert!(link(&ns, &tap).is_some());
    let d = domain(&conn, &path).await;
    assert_eq!(qemud_pid(&d).await, pid, "same QEMU adopted");
    d.destroy(0).await.expect("destroy");
    assert!(net_ports.list_ports(0).await.expect("ports").is_empty());
    assert!(link(&ns, &tap).is_none(), "tap gone with QEMU");
    drop(qemud2);
}

/// The guest's addresses as virtqemud reports them: from its network's DHCP leases
/// (virtnetworkd), and from the ARP table a ping filled, both on its tap.
async fn addresses_from_lease_and_arp(d: &DomainProxy<'_>, tap: &str, ip: &str) {
    let by_lease = d.interface_addresses(0, 0).await.expect("lease source");
    assert_eq!(
        by_lease,
        vec![(tap.to_owned(), MAC.to_owned(), vec![(0, ip.to_owned(), 24)])]
    );
    let by_arp = d.interface_addresses(2, 0).await.expect("arp source");
    assert_eq!(
        by_arp,
        vec![(tap.to_owned(), MAC.to_owned(), vec![(0, ip.to_owned(), 0)])]
    );
}

/// QEMU's PID as the stats report it? Not exposed: read it from the pid file folder.
async fn qemud_pid(d: &DomainProxy<'_>) -> u32 {
    let name = d.name().await.expect("name");
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains("id="), "running");
    pid_of(&name)
}

fn pid_of(name: &str) -> u32 {
    // The only QEMU whose command line names this guest (`-name guest=NAME,...`).
    let want = format!("guest={name},");
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw
            .split(|b| *b == 0)
            .any(|a| String::from_utf8_lossy(a).starts_with(&want))
        {
            return pid;
        }
    }
    panic!("no QEMU for {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_ethernet_nics_get_taps() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "add", "tbr0", "type", "bridge"])
        .expect("bridge");
    ns.run_ok(&["ip", "link", "set", "tbr0", "mtu", "1400", "up"])
        .expect("bridge up");
    let _qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    // No guest OS: a paused start is enough to see the taps.
    let path = qc
        .domain_define_xml(
            "<domain type='qemu'><name>br</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='bridge'><mac address='52:54:00:92:00:01'/>\
             <source bridge='tbr0'/></interface>\
             <interface type='ethernet'><mac address='52:54:00:92:00:02'/>\
             <target dev='mytap0'/><mtu size='1300'/><model type='virtio'/><alias name='net1'/></interface>\
             <interface type='user'/></devices></domain>",
        )
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(1).await.expect("start paused");
    let live = d.get_xml_desc(0).await.expect("live xml");
    let doc = roxmltree::Document::parse(&live).expect("xml");
    let taps: Vec<String> = doc
        .descendants()
        .filter(|n| {
            n.has_tag_name("target") && n.parent().is_some_and(|p| p.has_tag_name("interface"))
        })
        .filter_map(|n| n.attribute("dev").map(str::to_owned))
        .collect();
    assert_eq!(taps.len(), 2, "{live}");
    assert!(taps[0].starts_with("vnet"), "{taps:?}");
    assert_eq!(taps[1], "mytap0");
    let (master, mac, up) = link(&ns, &taps[0]).expect("bridge tap");
    assert_eq!(master.as_deref(), Some("tbr0"));
    assert_eq!(mac, "fe:54:00:92:00:01");
    assert!(up);
    let mtu = link_json(&ns, &taps[0]).and_then(|l| l.get("mtu").and_then(|m| m.as_u64()));
    assert_eq!(mtu, Some(1400), "the bridge's MTU");
    let (master, mac, _) = link(&ns, "mytap0").expect("ethernet tap");
    assert_eq!(master, None);
    assert_eq!(mac, "fe:54:00:92:00:02");
    let mtu = link_json(&ns, "mytap0").and_then(|l| l.get("mtu").and_then(|m| m.as_u64()));
    assert_eq!(mtu, Some(1300), "the NIC's own <mtu>");
    let pid = pid_of("br");
    assert_eq!(tun_fds(pid), 2);
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let argv = String::from_utf8_lossy(&argv).into_owned();
    assert!(
        argv.split('\0')
            .any(|a| a.contains("mac=52:54:00:92:00:02") && a.ends_with(",host_mtu=1300")),
        "{argv}"
    );
    assert!(live.contains("<mtu size='1300'/>"), "{live}");

    // A second domain may not take a tap name that is in use.
    let p2 = qc
        .domain_define_xml(
            "<domain type='qemu'><name>br2</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='ethernet'><target dev='mytap0'/></interface></devices></domain>",
        )
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &p2).await.create(1).await);
    assert!(e.contains("cannot create tap device 'mytap0'"), "{e}");

    // A bridge name no kernel can have defines, as libvirt lets oVirt's ';vdsmdummy;'
    // define; starting on it is refused by name, before any tap is made.
    let p4 = qc
        .domain_define_xml(
            "<domain type='qemu'><name>br4</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='bridge'><source bridge=';vdsmdummy;'/></interface></devices></domain>",
        )
        .await
        .expect("define with an odd bridge name");
    let e = bus_err(domain(&conn, &p4).await.create(1).await);
    assert!(
        e.contains(";vdsmdummy;") && e.contains("not a valid interface name"),
        "{e}"
    );

    d.destroy(0).await.expect("destroy");
    assert!(link(&ns, &taps[0]).is_none());
    assert!(link(&ns, "mytap0").is_none());
    // The bridge itself is the test's and stays.
    assert!(link(&ns, "tbr0").is_some());
}

/// `<bandwidth>` and Get/SetInterfaceParameters on a bridge NIC's tap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_shapes_the_tap() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "add", "tbr0", "type", "bridge"])
        .expect("bridge");
    ns.run_ok(&["ip", "link", "set", "tbr0", "up"])
        .expect("bridge up");
    let _qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    // <bandwidth> shapes the tap as libvirt's tc rules do: an htb class for traffic
    // to the guest, a policer for traffic from it (kilobytes per second: 1000 is 8Mbit).
    let p3 = qc
        .domain_define_xml(
            "<domain type='qemu'><name>bw</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='bridge'><mac address='52:54:00:92:00:31'/><source bridge='tbr0'/>\
             <bandwidth><inbound average='1000' peak='2000'/><outbound average='500'/></bandwidth>\
             </interface><interface type='user'/></devices></domain>",
        )
        .await
        .expect("define bw");
    let d3 = domain(&conn, &p3).await;
    d3.create(1).await.expect("start with bandwidth");
    let bw_tap = attr_of(&d3.get_xml_desc(0).await.expect("xml"), "target", "dev").expect("tap");
    let class = ns
        .run_ok(&["tc", "class", "show", "dev", &bw_tap])
        .expect("tc class");
    assert!(
        class.contains("rate 8Mbit") && class.contains("ceil 16Mbit"),
        "{class}"
    );
    let police = ns
        .run_ok(&["nft", "list", "chain", "netdev", "virtqemud_bw", &bw_tap])
        .expect("nft policer");
    assert!(
        police.contains(&format!("device \"{bw_tap}\""))
            && police.contains("limit rate over 500000 bytes/second"),
        "{police}"
    );
    let get = |flags: u32| {
        let d3 = d3.clone();
        async move {
            let p = d3
                .get_interface_parameters("52:54:00:92:00:31", flags)
                .await
                .expect("get");
            let n = |k: &str| u32::try_from(&p[k]).expect(k);
            (
                n("inbound.average"),
                n("inbound.peak"),
                n("outbound.average"),
            )
        }
    };
    assert_eq!(get(1).await, (1000, 2000, 500));
    // Live: the inbound rate doubled, the outbound limit lifted; the config keeps its own.
    let set: std::collections::HashMap<&str, zbus::zvariant::Value> = [
        ("inbound.average", zbus::zvariant::Value::from(2000u32)),
        ("outbound.average", zbus::zvariant::Value::from(0u32)),
    ]
    .into();
    d3.set_interface_parameters(&bw_tap, &set, 1)
        .await
        .expect("set live");
    let class = ns
        .run_ok(&["tc", "class", "show", "dev", &bw_tap])
        .expect("tc class");
    assert!(class.contains("rate 16Mbit"), "{class}");
    assert!(ns
        .run(&["nft", "list", "chain", "netdev", "virtqemud_bw", &bw_tap])
        .expect("nft")
        .stdout
        .is_empty());
    assert_eq!(get(1).await, (2000, 2000, 0));
    assert_eq!(get(2).await, (1000, 2000, 500));
    // Bad requests change nothing.
    for (k, v, says) in [
        ("inbound.floor", zbus::zvariant::Value::from(10u32), "floor"),
        (
            "outbound.floor",
            zbus::zvariant::Value::from(10u32),
            "not supported",
        ),
        (
            "inbound.average",
            zbus::zvariant::Value::from(10u64),
            "unsigned int",
        ),
    ] {
        let m: std::collections::HashMap<&str, zbus::zvariant::Value> = [(k, v)].into();
        let e = bus_err(d3.set_interface_parameters(&bw_tap, &m, 1).await);
        assert!(e.contains(says), "{k}: {e}");
    }
    assert_eq!(get(1).await, (2000, 2000, 0));
    let e = bus_err(d3.get_interface_parameters("vnet999", 0).await);
    assert!(e.contains("Can't find interface: vnet999"), "{e}");
    // Back to an outbound limit, then the end of the run takes the policer with the tap.
    let set: std::collections::HashMap<&str, zbus::zvariant::Value> =
        [("outbound.average", zbus::zvariant::Value::from(100u32))].into();
    d3.set_interface_parameters(&bw_tap, &set, 1)
        .await
        .expect("set outbound");
    assert!(ns
        .run_ok(&["nft", "list", "chain", "netdev", "virtqemud_bw", &bw_tap])
        .expect("policer")
        .contains("100000 bytes/second"));
    d3.destroy(0).await.expect("destroy bw");
    assert!(!ns
        .run_ok(&["nft", "list", "table", "netdev", "virtqemud_bw"])
        .expect("table")
        .contains(&bw_tap));
}
