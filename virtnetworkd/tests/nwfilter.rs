//! Network filters for real: the daemon runs in a network namespace the test creates
//! (the "host", with a bridge), a second namespace plays the guest behind a veth whose
//! host end is the "tap" a filter is bound to, and `busybox ping` from the guest to the
//! bridge's address shows what the nftables rules let through.

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{
    NWFilterBindingProxy, NWFilterBindingsProxy, NWFilterProxy, NetworkConnectProxy,
};
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");
const TABLE: &str = "libvirt_rs_nwfilter";
const GUEST_MAC: &str = "52:54:00:aa:bb:01";

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

fn err_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            format!("{}: {}", name.as_str(), msg.unwrap_or_default())
        }
        other => format!("unexpected: {other:?}"),
    }
}

fn binding_xml(tap: &str, mac: &str, filter: &str, params: &[(&str, &str)]) -> String {
    let params: String = params
        .iter()
        .map(|(n, v)| format!("<parameter name='{n}' value='{v}'/>"))
        .collect();
    format!(
        "<filterbinding><owner><name>guest</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
         <portdev name='{tap}'/><mac address='{mac}'/>\
         <filterref filter='{filter}'>{params}</filterref></filterbinding>"
    )
}

impl Setup {
    async fn connect(&self) -> NetworkConnectProxy<'static> {
        NetworkConnectProxy::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("connect proxy")
    }

    async fn bindings(&self) -> NWFilterBindingsProxy<'static> {
        NWFilterBindingsProxy::builder(&self.conn)
            .build()
            .await
            .expect("bindings proxy")
    }

    async fn filter(&self, p: &OwnedObjectPath) -> NWFilterProxy<'static> {
        NWFilterProxy::builder(&self.conn)
            .path(p.clone())
            .expect("path")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("filter proxy")
    }

    async fn binding(&self, p: &OwnedObjectPath) -> NWFilterBindingProxy<'static> {
        NWFilterBindingProxy::builder(&self.conn)
            .path(p.clone())
            .expect("path")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("binding proxy")
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.ns.run_ok(&argv).expect("ip")
    }

    /// Our table as `nft list` prints it ("" when there is none).
    fn table(&self) -> String {
        let out = self
            .ns
            .run(&["nft", "list", "table", "bridge", TABLE])
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host's bridge 10.77.0.1/24 with one port `tap` (a veth) whose peer is the
    /// guest's NIC, 10.77.0.2/24 with GUEST_MAC, in the namespace `guest`.
    fn topology(&self, guest: &NetNs, tap: &str) {
        self.ip(&["link", "add", "fbr0", "type", "bridge"]);
        self.ip(&["addr", "add", "10.77.0.1/24", "dev", "fbr0"]);
        self.ip(&["link", "set", "fbr0", "up"]);
        self.port(guest, tap, GUEST_MAC, "10.77.0.2/24");
    }

    fn port(&self, guest: &NetNs, tap: &str, mac: &str, addr: &str) {
        let peer = format!("{tap}g");
        self.ip(&["link", "add", tap, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", tap, "master", "fbr0", "up"]);
        self.ip(&["link", "set", &peer, "netns", &guest.name]);
        for args in [
            vec!["link", "set", &peer, "address", mac],
            vec!["addr", "add", addr, "dev", &peer],
            vec!["link", "set", &peer, "up"],
        ] {
            let mut argv = vec!["ip"];
            argv.extend(args);
            guest.run_ok(&argv).expect("guest ip");
        }
    }
}

/// One ping from the guest to the host's bridge address, with a fresh ARP entry (a
/// cached one would hide ARP filtering).
fn ping(guest: &NetNs) -> bool {
    let _ = guest.run(&["ip", "neigh", "flush", "all"]);
    guest
        .run(&["busybox", "ping", "-c", "1", "-W", "1", "10.77.0.1"])
        .expect("ping")
        .status
        .success()
}

/// Traffic that should pass may need a moment (the port's first ARP); a few tries.
fn ping_passes(guest: &NetNs) -> bool {
    (0..5).any(|_| ping(guest))
}

const NO_PING: &str = "<filter name='no-ping' chain='root'>\
    <rule action='drop' direction='out' priority='500'><icmp type='8'/></rule></filter>";
const PING_OK: &str = "<filter name='no-ping' chain='root'>\
    <rule action='accept' direction='out' priority='500'><icmp type='8'/></rule></filter>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_defined_looked_up_listed_and_checked() {
    let s = setup().await;
    let c = s.connect().await;
    // libvirt's standard set comes with a fresh config.
    let mut names = Vec::new();
    for p in c.list_nw_filters(0).await.expect("list") {
        names.push(s.filter(&p).await.name().await.expect("Name"));
    }
    for n in [
        "clean-traffic",
        "no-mac-spoofing",
        "no-ip-spoofing",
        "no-arp-spoofing",
        "allow-dhcp",
        "allow-arp",
        "allow-ipv4",
        "no-other-l2-traffic",
        "qemu-announce-self",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }

    let p = c.nw_filter_define_xml(NO_PING).await.expect("define");
    let f = s.filter(&p).await;
    let uuid = f.uuid().await.expect("UUID");
    assert_eq!(
        p.as_str(),
        common::objpath::nwfilter(&uuid.parse().expect("uuid")).as_str()
    );
    assert_eq!(f.name().await.expect("Name"), "no-ping");
    assert_eq!(
        c.nw_filter_lookup_by_name("no-ping")
            .await
            .expect("by name"),
        p
    );
    assert_eq!(c.nw_filter_lookup_by_uuid(&uuid).await.expect("by uuid"), p);
    let xml = f.get_xml_desc(0).await.expect("xml");
    assert!(xml.contains("<icmp type='8'/>"), "{xml}");
    assert!(xml.contains(&format!("<uuid>{uuid}</uuid>")), "{xml}");
    // What GetXMLDesc says defines again to the same filter.
    assert_eq!(c.nw_filter_define_xml(&xml).await.expect("redefine"), p);
    // Without a UUID a redefinition keeps the filter's; another UUID is refused.
    assert_eq!(c.nw_filter_define_xml(PING_OK).await.expect("redefine"), p);
    let other = PING_OK.replace(
        "chain='root'>",
        "chain='root'><uuid>5e2f6c4e-8b3c-4d8e-9a51-2f5f0d6f7a11</uuid>",
    );
    assert_eq!(
        err_text(c.nw_filter_define_xml(&other).await),
        format!(
            "org.libvirt.Error: operation failed: filter 'no-ping' already exists with uuid {uuid}"
        )
    );

    // Every bad attribute is named.
    for (xml, want) in [
        ("<filter name='b'><rule action='drop' direction='in'><ip srcipaddr='1.2.3'/></rule></filter>",
         "XML error: invalid value '1.2.3' for attribute 'srcipaddr' in <ip>: not an IPv4 address"),
        ("<filter name='b'><rule action='drop' direction='in'><tcp dstportstart='70000'/></rule></filter>",
         "attribute 'dstportstart'"),
        ("<filter name='b'><rule action='drop' direction='in'><icmp nonsense='1'/></rule></filter>",
         "'nonsense' for attribute in <icmp>: not an attribute of <icmp>"),
        ("<filter name='b'><rule action='maybe' direction='in'/></filter>", "'maybe' for attribute 'action'"),
        ("<filter name='b' chain='nope'/>", "'nope' for attribute 'chain'"),
        ("<filter name='b' priority='5000'/>", "'5000' for attribute 'priority'"),
        ("<filter/>", "missing attribute 'name' in <filter>"),
    ] {
        let e = err_text(c.nw_filter_define_xml(xml).await);
        assert!(e.starts_with("org.libvirt.Error: XML error: "), "{xml}: {e}");
        assert!(e.contains(want), "{xml}: {e}");
    }

    // Loops in filterref are refused, direct and through another filter.
    let self_ref = "<filter name='loop-a'><filterref filter='loop-a'/></filter>";
    assert_eq!(
        err_text(c.nw_filter_define_xml(self_ref).await),
        "org.libvirt.Error: operation failed: filter would introduce a loop"
    );
    c.nw_filter_define_xml("<filter name='loop-a'><filterref filter='loop-b'/></filter>")
        .await
        .expect("a refers to b (not yet defined, as libvirt allows)");
    assert!(err_text(
        c.nw_filter_define_xml("<filter name='loop-b'><filterref filter='loop-a'/></filter>")
            .await
    )
    .ends_with("filter would introduce a loop"));

    f.undefine().await.expect("undefine");
    assert_eq!(
        err_text(c.nw_filter_lookup_by_name("no-ping").await),
        "org.libvirt.Error: Network filter not found: no nwfilter with matching name 'no-ping'"
    );
    assert!(err_text(f.get_xml_desc(0).await).contains("Unknown object"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_filter_drops_what_it_says_until_redefined_or_unbound() {
    let s = setup().await;
    let guest = NetNs::new().expect("guest netns");
    s.topology(&guest, "vm0");
    assert!(
        ping_passes(&guest),
        "no filter yet: the guest reaches the host"
    );

    let c = s.connect().await;
    let b = s.bindings().await;
    c.nw_filter_define_xml(NO_PING).await.expect("define");
    let bp = b
        .nwfilter_binding_create_xml(&binding_xml("vm0", GUEST_MAC, "no-ping", &[]), 0)
        .await
        .expect("bind");
    assert_eq!(bp.as_str(), "/org/libvirt/QEMU/nwfilterbinding/vm0");
    let table = s.table();
    for chain in [
        "chain I-vm0 ",
        "chain O-vm0 ",
        "chain FI-vm0 ",
        "chain FO-vm0 ",
    ] {
        assert!(table.contains(chain), "{chain} missing:\n{table}");
    }
    assert!(table.contains("icmp type echo-request drop"), "{table}");
    assert!(!ping(&guest), "the icmp drop rule stops the ping");
    // Someone deletes our table while the daemon runs: it is put back at once.
    s.ns.run_ok(&["nft", "delete", "table", "bridge", TABLE])
        .expect("delete table");
    let mut healed = false;
    for _ in 0..100 {
        if s.table().contains("chain I-vm0 ") {
            healed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert!(healed, "the table comes back:\n{}", s.table());
    assert!(!ping(&guest), "and drops the ping again");

    let binding = s.binding(&bp).await;
    assert_eq!(binding.port_dev().await.expect("PortDev"), "vm0");
    assert_eq!(binding.filter_name().await.expect("FilterName"), "no-ping");
    assert!(binding
        .get_xml_desc(0)
        .await
        .expect("binding xml")
        .contains("<filterref filter='no-ping'/>"));
    assert_eq!(
        b.list_nwfilter_bindings(0).await.expect("list"),
        vec![bp.clone()]
    );
    assert_eq!(
        err_text(
            b.nwfilter_binding_create_xml(&binding_xml("vm0", GUEST_MAC, "no-ping", &[]), 0)
                .await
        ),
        "org.libvirt.Error: operation failed: filter binding for port dev 'vm0' already exists"
    );

    // In use: libvirt refuses the undefine; a redefinition re-instantiates at once.
    let f = s
        .filter(&c.nw_filter_lookup_by_name("no-ping").await.expect("lookup"))
        .await;
    assert_eq!(
        err_text(f.undefine().await),
        "org.libvirt.Error: Requested operation is not valid: nwfilter is in use"
    );
    c.nw_filter_define_xml(PING_OK).await.expect("redefine");
    assert!(ping_passes(&guest), "the redefined filter accepts the ping");
    c.nw_filter_define_xml(NO_PING)
        .await
        .expect("redefine back");
    assert!(!ping(&guest), "and drops it again");

    binding.delete().await.expect("unbind");
    assert!(!s.table().contains("I-vm0"), "{}", s.table());
    assert_eq!(
        err_text(b.nwfilter_binding_lookup_by_port_dev("vm0").await),
        "org.libvirt.Error: Network filter binding not found: no nwfilter binding for port dev 'vm0'"
    );
    assert!(ping_passes(&guest), "unbound: the ping passes again");
    f.undefine().await.expect("no longer in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_traffic_drops_a_spoofed_source_ip_and_mac() {
    let s = setup().await;
    let guest = NetNs::new().expect("guest netns");
    s.topology(&guest, "vm0");
    let b = s.bindings().await;

    // Without IP, libvirt would learn it; this daemon refuses with libvirt's message.
    assert!(err_text(
        b.nwfilter_binding_create_xml(&binding_xml("vm0", GUEST_MAC, "clean-traffic", &[]), 0)
            .await
    )
    .contains(
        "Cannot instantiate filter due to unresolvable variables or unavailable list elements: IP"
    ));
    let xml = binding_xml("vm0", GUEST_MAC, "clean-traffic", &[("IP", "10.77.0.2")]);
    b.nwfilter_binding_create_xml(&xml, 0).await.expect("bind");
    let table = s.table();
    assert!(table.contains("chain I-vm0-arp-ip"), "{table}");
    assert!(table.contains("10.77.0.2"), "{table}");
    assert!(ping_passes(&guest), "clean traffic passes");

    let peer = "vm0g";
    guest
        .run_ok(&["ip", "addr", "flush", "dev", peer])
        .expect("flush");
    guest
        .run_ok(&["ip", "addr", "add", "10.77.0.3/24", "dev", peer])
        .expect("spoof ip");
    assert!(!ping(&guest), "a spoofed source IP is dropped");
    guest
        .run_ok(&["ip", "addr", "flush", "dev", peer])
        .expect("flush");
    guest
        .run_ok(&["ip", "addr", "add", "10.77.0.2/24", "dev", peer])
        .expect("own ip");
    assert!(ping_passes(&guest), "its own IP passes again");
    guest
        .run_ok(&["ip", "link", "set", peer, "address", "52:54:00:aa:bb:99"])
        .expect("spoof mac");
    assert!(!ping(&guest), "a spoofed source MAC is dropped");
    guest
        .run_ok(&["ip", "link", "set", peer, "address", GUEST_MAC])
        .expect("own mac");
    assert!(ping_passes(&guest), "its own MAC passes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill9_rebuilds_live_taps_and_drops_gone_ones() {
    let mut s = setup().await;
    let guest = NetNs::new().expect("guest netns");
    s.topology(&guest, "vm0");
    let other = NetNs::new().expect("second guest");
    s.port(&other, "vm1", "52:54:00:aa:bb:02", "10.77.0.4/24");
    let c = s.connect().await;
    let b = s.bindings().await;
    c.nw_filter_define_xml(NO_PING).await.expect("define");
    for (tap, mac) in [("vm0", GUEST_MAC), ("vm1", "52:54:00:aa:bb:02")] {
        b.nwfilter_binding_create_xml(&binding_xml(tap, mac, "no-ping", &[]), 0)
            .await
            .expect("bind");
    }
    assert!(s.table().contains("I-vm1"));

    s.daemon.kill9();
    // While the daemon is dead: one tap goes, and someone flushes our table.
    s.ip(&["link", "del", "vm1"]);
    s.ns.run_ok(&["nft", "delete", "table", "bridge", TABLE])
        .expect("flush");
    assert!(
        ping_passes(&guest),
        "nothing filters while the table is gone"
    );
    // A new tap takes the gone one's name: it must not inherit its filter.
    let third = NetNs::new().expect("third guest");
    s.port(&third, "vm1", "52:54:00:aa:bb:03", "10.77.0.5/24");

    s.daemon = s
        .daemon
        .restart_builder()
        .spawn(&s.bus)
        .await
        .expect("restart");
    let table = s.table();
    assert!(
        table.contains("chain I-vm0 "),
        "vm0 is filtered again:\n{table}"
    );
    assert!(
        !table.contains("I-vm1"),
        "no rule for the gone vm1:\n{table}"
    );
    assert!(!ping(&guest), "vm0's filter holds after the restart");
    let b = s.bindings().await;
    let left = b.list_nwfilter_bindings(0).await.expect("list");
    assert_eq!(
        left.iter()
            .map(|p| p.as_str().to_owned())
            .collect::<Vec<_>>(),
        ["/org/libvirt/QEMU/nwfilterbinding/vm0"]
    );
    let ping3 = third
        .run(&["busybox", "ping", "-c", "1", "-W", "2", "10.77.0.1"])
        .expect("ping");
    assert!(ping3.status.success(), "the new vm1 is not filtered");
}

/// The daemon killed at a random point while a worker binds, unbinds and redefines,
/// and sometimes a tap replaced (same name, new ifindex) while it is dead: after every
/// restart the table has chains exactly for the bindings listed, every listed tap is
/// the link it was bound to, and a replaced tap is bound no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_storm_leaves_rules_exactly_for_live_bound_taps() {
    let rounds: u64 = std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut s = setup().await;
    let taps = ["st0", "st1", "st2", "st3"];
    for t in taps {
        s.ip(&[
            "link",
            "add",
            t,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{t}p"),
        ]);
    }
    s.connect()
        .await
        .nw_filter_define_xml(NO_PING)
        .await
        .expect("define");
    let mut seed: u64 = 0x6e77_6b39;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let (mut cut, mut replaced) = (0, 0);
    for round in 0..rounds {
        let conn = s.conn.clone();
        let ops: Vec<u64> = (0..64).map(|_| next(8)).collect();
        let worker = tokio::spawn(async move {
            let c = NetworkConnectProxy::new(&conn).await.ok()?;
            let b = NWFilterBindingsProxy::new(&conn).await.ok()?;
            for op in ops {
                let tap = ["st0", "st1", "st2", "st3"][(op % 4) as usize];
                let _ = match op {
                    0..=3 => b
                        .nwfilter_binding_create_xml(
                            &binding_xml(tap, GUEST_MAC, "no-ping", &[]),
                            0,
                        )
                        .await
                        .map(|_| ()),
                    4..=6 => match b.nwfilter_binding_lookup_by_port_dev(tap).await {
                        Ok(p) => match NWFilterBindingProxy::builder(&conn).path(p) {
                            Ok(pb) => match pb.build().await {
                                Ok(px) => px.delete().await,
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    },
                    _ => c
                        .nw_filter_define_xml(if round % 2 == 0 { NO_PING } else { PING_OK })
                        .await
                        .map(|_| ()),
                };
            }
            Some(())
        });
        tokio::time::sleep(std::time::Duration::from_millis(next(30))).await;
        s.daemon.kill9();
        if !worker.is_finished() {
            cut += 1;
        }
        worker.abort();
        let gone = if next(3) == 0 {
            let t = taps[next(4) as usize];
            s.ip(&["link", "del", t]);
            s.ip(&[
                "link",
                "add",
                t,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{t}p"),
            ]);
            replaced += 1;
            Some(t)
        } else {
            None
        };
        let mut tries = 0;
        s.daemon = loop {
            match s.daemon.restart_builder().spawn(&s.bus).await {
                Ok(d) => break d,
                Err(e) if tries < 40 && e.to_string().contains("already running") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("restart: {e}"),
            }
        };
        let listed: Vec<String> = s
            .bindings()
            .await
            .list_nwfilter_bindings(0)
            .await
            .expect("list")
            .iter()
            .filter_map(|p| p.as_str().rsplit('/').next())
            .filter_map(common::objpath::decode_str)
            .collect();
        let table = s.table();
        for t in taps {
            assert_eq!(
                table.contains(&format!("chain I-{t} ")),
                listed.iter().any(|l| l == t),
                "round {round}: {t} listed {listed:?}, table:\n{table}"
            );
        }
        let jumps = table.matches("jump I-").count();
        assert_eq!(
            jumps,
            listed.len(),
            "round {round}: one jump per binding:\n{table}"
        );
        if let Some(t) = gone {
            assert!(
                !listed.iter().any(|l| l == t),
                "round {round}: replaced {t} still bound"
            );
        }
    }
    eprintln!("{rounds} kills, {cut} cut the worker mid-way, {replaced} taps replaced while dead");
}
