//! Host interfaces (org.libvirt.Interface) for real: the daemon runs inside a network
//! namespace the test creates, and every link the tests make or the daemon makes is in
//! that namespace (veths stand in for NICs: this kernel has no dummy links).

use std::time::Duration;

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{InterfaceProxy, NetworkConnectProxy};
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");

struct Setup {
    bus: TestBus,
    ns: NetNs,
    daemon: Daemon,
    conn: zbus::Connection,
}

async fn setup() -> Setup {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    Setup {
        bus,
        ns,
        daemon,
        conn,
    }
}

impl Setup {
    async fn connect(&self) -> NetworkConnectProxy<'static> {
        NetworkConnectProxy::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("connect proxy")
    }

    async fn iface(&self, p: &OwnedObjectPath) -> InterfaceProxy<'static> {
        InterfaceProxy::builder(&self.conn)
            .path(p.clone())
            .expect("path")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("interface proxy")
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.ns.run_ok(&argv).expect("ip")
    }

    /// A veth pair standing in for a NIC: `name` in the namespace, its peer up so
    /// that `name` gets a carrier when it is brought up.
    fn nic(&self, name: &str) {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    fn mac_of(&self, name: &str) -> String {
        let out = self.ip(&["-o", "link", "show", name]);
        out.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("a MAC")
            .to_owned()
    }

    fn exists(&self, name: &str) -> bool {
        self.ns
            .run(&["ip", "link", "show", name])
            .expect("ip")
            .status
            .success()
    }
}

fn path(name: &str) -> String {
    format!(
        "/org/libvirt/QEMU/interface/{}",
        common::objpath::encode_str(name)
    )
}

fn err_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            format!("{}: {}", name.as_str(), msg.unwrap_or_default())
        }
        other => format!("unexpected: {other:?}"),
    }
}

fn names(paths: &[OwnedObjectPath]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.as_str().rsplit('/').next())
        .filter_map(common::objpath::decode_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_links_are_listed_as_they_are() {
    let s = setup().await;
    s.nic("hv0");
    s.ip(&["link", "add", "hbr0", "type", "bridge"]);
    s.ip(&["link", "set", "hv0p", "master", "hbr0"]);
    s.ip(&["link", "set", "hv0", "mtu", "1400", "up"]);
    s.ip(&["addr", "add", "10.9.0.2/24", "dev", "hv0"]);
    let c = s.connect().await;
    let all = names(&c.list_interfaces(0).await.expect("list"));
    for n in ["lo", "hv0", "hv0p", "hbr0"] {
        assert!(all.contains(&n.to_owned()), "{n} missing from {all:?}");
    }
    let active = names(&c.list_interfaces(2).await.expect("active"));
    let inactive = names(&c.list_interfaces(1).await.expect("inactive"));
    assert!(active.contains(&"hv0".to_owned()) && !active.contains(&"hbr0".to_owned()));
    assert!(inactive.contains(&"hbr0".to_owned()) && !inactive.contains(&"hv0".to_owned()));
    assert!(err_text(c.list_interfaces(4).await).contains("unsupported flags"));

    let p = c.interface_lookup_by_name("hv0").await.expect("lookup");
    assert_eq!(p.as_str(), path("hv0"));
    let i = s.iface(&p).await;
    assert_eq!(i.name().await.expect("Name"), "hv0");
    assert!(i.active().await.expect("Active"));
    let mac = s.mac_of("hv0");
    assert_eq!(i.mac().await.expect("MAC"), mac);
    assert_eq!(
        c.interface_lookup_by_mac(&mac.to_uppercase())
            .await
            .expect("by MAC"),
        p
    );
    let xml = i.get_xml_desc(0).await.expect("xml");
    for want in [
        "type='ethernet' name='hv0'",
        &format!("<mac address='{mac}'/>"),
        "<mtu size='1400'/>",
        "<ip address='10.9.0.2' prefix='24'/>",
        "<link speed='10000' state='up'/>",
    ] {
        assert!(xml.contains(want), "{want} not in {xml}");
    }
    let br = s
        .iface(&c.interface_lookup_by_name("hbr0").await.expect("hbr0"))
        .await;
    let bxml = br.get_xml_desc(0).await.expect("bridge xml");
    assert!(bxml.contains("type='bridge' name='hbr0'"), "{bxml}");
    assert!(
        bxml.contains("<interface type='ethernet' name='hv0p'>"),
        "{bxml}"
    );
    assert!(!br.active().await.expect("Active"));
    // A bridge takes its port's MAC: two links answer to it, as libvirt refuses.
    let shared = s.mac_of("hv0p");
    assert!(err_text(c.interface_lookup_by_mac(&shared).await)
        .contains("multiple matching interfaces found: the MAC address"));
    assert_eq!(
        err_text(c.interface_lookup_by_name("nope").await),
        "org.libvirt.Error: Interface not found: couldn't find interface named 'nope'"
    );
    assert!(
        err_text(c.interface_lookup_by_mac("52:54:00:00:00:99").await)
            .contains("Interface not found: couldn't find interface with MAC address")
    );
    // A link without a definition is described, not changed.
    assert!(err_text(i.destroy(0).await).contains("has no stored definition"));
    assert!(s.ip(&["link", "show", "hv0"]).contains(",UP"));
    // A link that goes is no longer listed, and its object goes at the next list.
    s.ip(&["link", "del", "hv0"]);
    let all = names(&c.list_interfaces(0).await.expect("list"));
    assert!(!all.contains(&"hv0".to_owned()), "{all:?}");
    assert!(i.name().await.is_err(), "hv0's object is still served");
}

const BRIDGE: &str = "<interface type='bridge' name='dbr0'>
  <start mode='onboot'/>
  <mtu size='1450'/>
  <protocol family='ipv4'>
    <ip address='10.8.0.1' prefix='24'/>
  </protocol>
  <bridge stp='off' delay='0'>
    <interface type='ethernet' name='p0'/>
    <interface type='ethernet' name='p1'/>
  </bridge>
</interface>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defined_bridge_starts_with_its_ports_and_stops_cleanly() {
    let s = setup().await;
    s.nic("p0");
    s.nic("p1");
    let c = s.connect().await;
    let p = c.interface_define_xml(BRIDGE, 0).await.expect("define");
    assert_eq!(p.as_str(), path("dbr0"));
    assert!(names(&c.list_interfaces(1).await.expect("inactive")).contains(&"dbr0".to_owned()));
    let i = s.iface(&p).await;
    assert!(!i.active().await.expect("Active"));
    assert_eq!(i.mac().await.expect("MAC"), "");
    let stored = i.get_xml_desc(1).await.expect("inactive xml");
    assert_eq!(
        c.interface_define_xml(&stored, 0)
            .await
            .expect("define again"),
        p,
        "the stored definition defines again"
    );
    assert_eq!(i.get_xml_desc(1).await.expect("xml"), stored);
    assert!(!s.exists("dbr0"));

    i.create(0).await.expect("create");
    let link = s.ip(&["-d", "link", "show", "dbr0"]);
    assert!(
        link.contains("bridge") && link.contains(",UP") && link.contains("mtu 1450"),
        "{link}"
    );
    for port in ["p0", "p1"] {
        let l = s.ip(&["link", "show", port]);
        assert!(l.contains("master dbr0") && l.contains(",UP"), "{l}");
    }
    assert!(s.ip(&["addr", "show", "dbr0"]).contains("10.8.0.1/24"));
    assert!(i.active().await.expect("Active"));
    assert_eq!(i.mac().await.expect("MAC"), s.mac_of("dbr0"));
    let live = i.get_xml_desc(0).await.expect("live xml");
    assert!(
        live.contains("<interface type='ethernet' name='p0'>"),
        "{live}"
    );
    assert!(
        live.contains("<ip address='10.8.0.1' prefix='24'/>"),
        "{live}"
    );
    assert!(live.contains("<start mode='onboot'/>"), "{live}");
    assert!(live.contains("<bridge stp='off' delay='0'>"), "{live}");
    // Create again is ifup again: not an error, nothing doubled.
    i.create(0).await.expect("create again");
    assert_eq!(
        s.ip(&["-o", "-4", "addr", "show", "dbr0"]).lines().count(),
        1
    );

    i.destroy(0).await.expect("destroy");
    assert!(!s.exists("dbr0"), "the bridge the daemon made is deleted");
    for port in ["p0", "p1"] {
        let l = s.ip(&["link", "show", port]);
        assert!(!l.contains("master") && !l.contains(",UP"), "{l}");
    }
    assert!(!i.active().await.expect("Active"));
    i.destroy(0)
        .await
        .expect("destroy of an inactive interface");
    assert!(names(&c.list_interfaces(0).await.expect("list")).contains(&"dbr0".to_owned()));
    i.undefine().await.expect("undefine");
    assert!(!names(&c.list_interfaces(0).await.expect("list")).contains(&"dbr0".to_owned()));
    // Its object is gone with it (no link, no definition).
    let e = err_text(i.undefine().await);
    assert!(
        e.contains("UnknownObject") || e.contains("Interface not found"),
        "{e}"
    );
    let run = s.daemon.dirs.runtime.join("interface");
    assert_eq!(
        std::fs::read_dir(&run).expect("run dir").count(),
        0,
        "records left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ethernet_definition_configures_the_existing_nic() {
    let s = setup().await;
    s.nic("eth9");
    let c = s.connect().await;
    let xml = "<interface type='ethernet' name='eth9'><start mode='onboot'/>
        <mac address='11:22:33:44:55:66'/><mtu size='1492'/>
        <protocol family='ipv4'><ip address='192.168.15.5' prefix='24'/>
        <route gateway='192.168.15.1'/></protocol></interface>";
    let p = c.interface_define_xml(xml, 0).await.expect("define");
    let i = s.iface(&p).await;
    // The NIC's own MAC: `<mac>` of an ethernet definition is not written to it.
    let mac = s.mac_of("eth9");
    assert_eq!(i.mac().await.expect("MAC"), mac);
    i.create(0).await.expect("create");
    let l = s.ip(&["link", "show", "eth9"]);
    assert!(l.contains("mtu 1492") && l.contains(",UP"), "{l}");
    assert!(s.ip(&["addr", "show", "eth9"]).contains("192.168.15.5/24"));
    assert!(s
        .ip(&["route"])
        .contains("default via 192.168.15.1 dev eth9"));
    assert_eq!(c.interface_lookup_by_mac(&mac).await.expect("by MAC"), p);
    i.destroy(0).await.expect("destroy");
    assert!(s.exists("eth9"), "a NIC is never deleted");
    assert!(!s.ip(&["addr", "show", "eth9"]).contains("192.168.15.5"));
    assert!(!s.ip(&["route"]).contains("default"));
    assert!(!s.ip(&["link", "show", "eth9"]).contains(",UP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_and_failed_starts_change_nothing() {
    let s = setup().await;
    let c = s.connect().await;
    let good = "<interface type='ethernet' name='keep0'><mtu size='1500'/></interface>";
    let p = c.interface_define_xml(good, 0).await.expect("define");
    let cfg = s.daemon.dirs.config.join("interface");
    let before = std::fs::read_to_string(cfg.join("keep0.xml")).expect("stored");
    for (doc, want) in [
        ("<interface type='ethernet' name='keep0'><mtu size='9'/></interface>", "XML error: invalid value '9'"),
        ("<interface type='ethernet' name='a/b'/>", "XML error: invalid value 'a/b'"),
        ("<interface type='ethernet'", "XML error: malformed document"),
        ("<!DOCTYPE x [<!ENTITY e 'x'>]><interface type='ethernet' name='e'/>", "XML error"),
        (&format!("{}<interface/>{}", "<a>".repeat(100), "</a>".repeat(100)), "nest deeper"),
        ("<interface type='vlan' name='v'><vlan tag='0'><interface name='x'/></vlan></interface>", "'0'"),
    ] {
        let e = err_text(c.interface_define_xml(doc, 0).await);
        assert!(e.contains(want), "{doc}: {e}");
    }
    assert_eq!(
        std::fs::read_to_string(cfg.join("keep0.xml")).expect("stored"),
        before
    );
    assert_eq!(
        std::fs::read_dir(&cfg).expect("cfg").count(),
        1,
        "nothing else stored"
    );
    assert!(err_text(c.interface_define_xml(good, 2).await).contains("unsupported flags"));

    // No such NIC: a clear error, and no record or link left.
    let i = s.iface(&p).await;
    let e = err_text(i.create(0).await);
    assert!(
        e.contains("failed to create (start) interface keep0: no link named 'keep0'"),
        "{e}"
    );
    // Bond and vlan links need kernel modules this machine lacks: the kernel's refusal
    // comes back, and the bridge the same call made is deleted again.
    s.nic("q0");
    let xml = "<interface type='bridge' name='fbr0'><bridge>
        <interface type='vlan' name='q0.7'><vlan tag='7'><interface name='q0'/></vlan></interface>
        </bridge></interface>";
    let f = s
        .iface(&c.interface_define_xml(xml, 0).await.expect("define"))
        .await;
    match f.create(0).await {
        Ok(()) => {
            // A kernel with 802.1q: the vlan was made and enslaved.
            assert!(s.ip(&["link", "show", "q0.7"]).contains("master fbr0"));
            f.destroy(0).await.expect("destroy");
        }
        Err(e) => {
            let e = err_text::<()>(Err(e));
            assert!(e.contains("failed to create (start) interface fbr0"), "{e}");
        }
    }
    assert!(!s.exists("fbr0") && !s.exists("q0.7"), "a link left behind");
    assert!(s.exists("q0"));
    // A bridge definition named after an existing NIC: refused, the NIC untouched.
    let xml = "<interface type='bridge' name='q0'><bridge/>\
        <protocol family='ipv4'><ip address='10.66.0.1' prefix='24'/></protocol></interface>";
    let q = s
        .iface(&c.interface_define_xml(xml, 0).await.expect("define"))
        .await;
    let e = err_text(q.create(0).await);
    assert!(e.contains("link 'q0' exists and is not a bridge"), "{e}");
    assert!(s.exists("q0") && !s.ip(&["addr", "show", "q0"]).contains("10.66.0.1"));
    // A failed start leaves a NIC that was up, up: only what the call made is undone.
    s.ip(&["link", "set", "q0", "up"]);
    let xml = "<interface type='bridge' name='fbr1'><bridge>\
        <interface type='ethernet' name='q0'/><interface type='ethernet' name='nosuch0'/>\
        </bridge></interface>";
    let f1 = s
        .iface(&c.interface_define_xml(xml, 0).await.expect("define"))
        .await;
    let e = err_text(f1.create(0).await);
    assert!(e.contains("no link named 'nosuch0'"), "{e}");
    assert!(!s.exists("fbr1"), "the bridge this start made is deleted");
    let l = s.ip(&["link", "show", "q0"]);
    assert!(l.contains(",UP") && !l.contains("master"), "{l}");
    let run = s.daemon.dirs.runtime.join("interface");
    assert_eq!(
        std::fs::read_dir(&run).expect("run dir").count(),
        0,
        "records left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_roll_definitions_back() {
    let s = setup().await;
    let c = s.connect().await;
    let def =
        |n: &str| format!("<interface type='ethernet' name='{n}'><mtu size='1500'/></interface>");
    let listed = |c: &NetworkConnectProxy<'static>| {
        let c = c.clone();
        async move { names(&c.list_interfaces(0).await.expect("list")) }
    };
    c.interface_define_xml(&def("t0"), 0).await.expect("t0");
    assert!(err_text(c.interface_change_commit(0).await)
        .contains("failed to commit transaction: no transaction is open"));
    assert!(
        err_text(c.interface_change_rollback(0).await).contains("failed to rollback transaction")
    );
    c.interface_change_begin(0).await.expect("begin");
    assert!(err_text(c.interface_change_begin(0).await)
        .contains("failed to begin transaction: a transaction is already open"));
    c.interface_define_xml(&def("t1"), 0).await.expect("t1");
    s.iface(&c.interface_lookup_by_name("t0").await.expect("t0"))
        .await
        .undefine()
        .await
        .expect("undefine");
    c.interface_change_rollback(0).await.expect("rollback");
    let l = listed(&c).await;
    assert!(
        l.contains(&"t0".to_owned()) && !l.contains(&"t1".to_owned()),
        "{l:?}"
    );

    c.interface_change_begin(0).await.expect("begin");
    c.interface_define_xml(&def("t2"), 0).await.expect("t2");
    c.interface_change_commit(0).await.expect("commit");
    assert!(listed(&c).await.contains(&"t2".to_owned()));
    assert!(err_text(c.interface_change_rollback(0).await).contains("no transaction is open"));
}

/// Create and Destroy of a bridge with two ports, the daemon killed at a random point
/// in them: after each restart the bridge is either up with its ports and its record
/// (Destroy then deletes it), or gone with no record; never a bridge nobody knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_create_or_destroy_leaves_it_whole_or_undone() {
    let rounds: u64 = std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut s = setup().await;
    s.nic("p0");
    s.nic("p1");
    let c = s.connect().await;
    let p = c.interface_define_xml(BRIDGE, 0).await.expect("define");
    let run = s.daemon.dirs.runtime.join("interface");
    let (mut up, mut down, mut cut) = (0, 0, 0);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = s.iface(&p).await;
        let active = s.exists("dbr0");
        let call = async {
            if active {
                let _ = i.destroy(0).await;
            } else {
                let _ = i.create(0).await;
            }
        };
        let wait = Duration::from_micros(seed % 30_000);
        let _ = tokio::time::timeout(wait, call).await;
        s.daemon.kill9();
        // A record still pending: the kill cut a Create or Destroy half-way.
        cut += usize::from(run.join("dbr0.pending").exists());
        s.daemon = s
            .daemon
            .restart_builder()
            .spawn(&s.bus)
            .await
            .expect("restart");
        let c = s.connect().await;
        let listed = names(&c.list_interfaces(0).await.expect("list"));
        assert!(
            listed.contains(&"dbr0".to_owned()),
            "round {round}: definition lost"
        );
        let exists = s.exists("dbr0");
        let record = run.join("dbr0.json").exists();
        assert!(
            !run.join("dbr0.pending").exists(),
            "round {round}: pending record kept"
        );
        assert_eq!(
            exists, record,
            "round {round}: bridge {exists}, record {record}"
        );
        if exists {
            up += 1;
            for port in ["p0", "p1"] {
                assert!(
                    s.ip(&["link", "show", port]).contains("master dbr0"),
                    "round {round}"
                );
            }
            assert!(
                s.ip(&["addr", "show", "dbr0"]).contains("10.8.0.1/24"),
                "round {round}"
            );
        } else {
            down += 1;
            for port in ["p0", "p1"] {
                assert!(
                    !s.ip(&["link", "show", port]).contains("master"),
                    "round {round}"
                );
            }
        }
        let i = s.iface(&p).await;
        assert_eq!(i.active().await.expect("Active"), exists, "round {round}");
    }
    eprintln!(
        "{rounds} kills: {cut} cut a Create or Destroy half-way; {up} rounds ended up, {down} down"
    );
    let i = s.iface(&p).await;
    i.create(0).await.expect("create after the storm");
    i.destroy(0).await.expect("destroy after the storm");
    assert!(!s.exists("dbr0"));
}
