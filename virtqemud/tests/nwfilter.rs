//! A guest NIC's `<filterref>`: virtqemud binds the filter to the NIC's tap through
//! virtnetworkd when the domain starts or the NIC is plugged, and unbinds it when the
//! domain stops or the NIC is unplugged. A tiny guest on a
//! NAT network (its lease from dnsmasq) is pinged from the host's namespace; the filter
//! decides whether the ping reaches it. Everything runs in a namespace the test makes.

mod support;

use std::time::Duration;

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{NWFilterBindingsProxy, NetworkConnectProxy, NetworkProxy};
use common::proxies::qemu::QemuConnectProxy;
use support::{bus_err, domain, sibling_daemon};
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const MAC: &str = "52:54:00:93:00:07";

fn filter(action: &str) -> String {
    format!(
        "<filter name='guard' chain='root'><rule action='{action}' direction='in' priority='500'>\
         <icmp type='8'/></rule></filter>"
    )
}

fn ping(ns: &NetNs, ip: &str) -> bool {
    ns.run(&["busybox", "ping", "-c", "1", "-W", "1", ip])
        .is_ok_and(|o| o.status.success())
}

fn table(ns: &NetNs) -> String {
    let out = ns
        .run(&["nft", "list", "table", "bridge", "libvirt_rs_nwfilter"])
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_filter_is_bound_at_start_and_hotplug_follows_redefinition_and_goes_at_stop() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let _net = Daemon::builder(sibling_daemon("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let nc = NetworkConnectProxy::new(&conn).await.expect("net proxy");
    let npath = nc
        .network_define_xml(
            "<network><name>fn</name><forward mode='nat'/><bridge name='vfbr0'/>\
             <ip address='10.93.0.1' prefix='24'><dhcp><range start='10.93.0.100' \
             end='10.93.0.150'/></dhcp></ip></network>",
        )
        .await
        .expect("define network");
    let net = NetworkProxy::builder(&conn)
        .path(npath)
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("network");
    net.create().await.expect("start network");
    nc.nw_filter_define_xml(&filter("accept"))
        .await
        .expect("define filter");
    let bindings = NWFilterBindingsProxy::new(&conn).await.expect("bindings");
    let qc = QemuConnectProxy::new(&conn).await.expect("qemu proxy");

    // A filter that does not exist: the start fails with virtnetworkd's error and
    // leaves no tap, port or binding behind.
    let p = qc
        .domain_define_xml(&support::guest_xml(
            "nofilter",
            &qemud.dirs.state.join("nofilter.serial"),
            "<interface type='network'><source network='fn'/>\
             <filterref filter='absent'/></interface>",
        ))
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &p).await.create(0).await);
    assert_eq!(e, "internal error: referenced filter 'absent' is missing");
    assert!(bindings
        .list_nwfilter_bindings(0)
        .await
        .expect("list")
        .is_empty());

    let serial = qemud.dirs.state.join("fg.serial");
    let path = qc
        .domain_define_xml(&support::guest_xml(
            "fg",
            &serial,
            &format!(
                "<interface type='network'><mac address='{MAC}'/><source network='fn'/>\
                 <model type='virtio'/><filterref filter='guard'>\
                 <parameter name='IP' value='10.93.0.77'/></filterref></interface>"
            ),
        ))
        .await
        .expect("define guest");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start guest");
    let live = d.get_xml_desc(0).await.expect("live xml");
    assert!(live.contains("<filterref filter='guard'>"), "{live}");
    let tap = roxmltree::Document::parse(&live)
        .expect("xml")
        .descendants()
        .find(|n| n.has_tag_name("target"))
        .and_then(|n| n.attribute("dev").map(str::to_owned))
        .expect("tap");
    let bound = bindings
        .nwfilter_binding_lookup_by_port_dev(&tap)
        .await
        .expect("bound at start");
    assert!(bound.as_str().ends_with(&common::objpath::encode_str(&tap)));
    assert!(
        table(&ns).contains(&format!("chain O-{tap} ")),
        "{}",
        table(&ns)
    );

    support::wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
    let mut ip = None;
    for _ in 0..300 {
        let leases = net.get_dhcp_leases(MAC, 0).await.expect("leases");
        if let Some(l) = leases.iter().find(|l| l.3 == MAC) {
            ip = Some(l.5.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ip = ip.expect("the guest gets its lease through the filtered tap");
    assert!(
        (0..20).any(|_| ping(&ns, &ip)),
        "accepted: the guest answers"
    );

    nc.nw_filter_define_xml(&filter("drop"))
        .await
        .expect("redefine");
    assert!(!ping(&ns, &ip) && !ping(&ns, &ip), "dropped: no answer");
    nc.nw_filter_define_xml(&filter("accept"))
        .await
        .expect("redefine back");
    assert!((0..5).any(|_| ping(&ns, &ip)), "accepted again");

    hotplug_filtered_nic(&d, &bindings, &tap).await;

    d.destroy(0).await.expect("destroy");
    assert!(
        bindings
            .list_nwfilter_bindings(0)
            .await
            .expect("list")
            .is_empty(),
        "the binding goes with the domain"
    );
    assert!(!table(&ns).contains(&tap), "{}", table(&ns));
}

/// A second NIC with a filter is bound when plugged into the running guest, unbound
/// when the guest lets it go; the first NIC (on `tap`) keeps its binding.
async fn hotplug_filtered_nic(
    d: &common::proxies::qemu::DomainProxy<'_>,
    bindings: &NWFilterBindingsProxy<'_>,
    tap: &str,
) {
    let nic = "<interface type='bridge'><mac address='52:54:00:93:00:08'/>\
               <source bridge='vfbr0'/><model type='virtio'/>\
               <filterref filter='guard'/></interface>";
    d.attach_device(nic, 0).await.expect("attach");
    assert_eq!(
        bindings
            .list_nwfilter_bindings(0)
            .await
            .expect("list")
            .len(),
        2,
        "the plugged NIC's tap is bound"
    );
    d.detach_device(nic, 0).await.expect("detach");
    let mut left = 2;
    for _ in 0..300 {
        left = bindings
            .list_nwfilter_bindings(0)
            .await
            .expect("list")
            .len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "the unplugged NIC's binding goes");
    assert!(
        bindings
            .nwfilter_binding_lookup_by_port_dev(tap)
            .await
            .is_ok(),
        "the first NIC keeps its own"
    );
}
