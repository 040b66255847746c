//! virsh's iface-* commands against a real virtnetworkd inside a network namespace the
//! test creates (the links it makes never touch the host).

use common::harness::{Daemon, NetNs, TestBus, TestDirs};

mod support;
use support::{json, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iface_define_start_dumpxml_destroy_undefine() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let daemon = Daemon::builder(sibling("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    ns.run_ok(&[
        "ip", "link", "add", "vsp0", "type", "veth", "peer", "name", "vsp0p",
    ])
    .expect("veth");
    let xml = daemon.dirs.root.path().join("br.xml");
    std::fs::write(
        &xml,
        "<interface type='bridge' name='vsbr0'><start mode='onboot'/>\
         <protocol family='ipv4'><ip address='10.77.0.1' prefix='24'/></protocol>\
         <bridge stp='off'><interface type='ethernet' name='vsp0'/></bridge></interface>",
    )
    .expect("xml");
    let file = xml.to_str().expect("utf-8");
    assert_eq!(
        ok(virtsh(&bus, &["iface-define", file])),
        format!("Interface vsbr0 defined from {file}\n")
    );
    // Active ones by default: the loopback link is up, the bridge not yet made.
    let list = ok(virtsh(&bus, &["iface-list"]));
    assert_eq!(
        list,
        " Name   State    MAC Address\n\
         ------------------------------------\n \
         lo     active   00:00:00:00:00:00\n"
    );
    let all = json(virtsh(&bus, &["iface-list", "--all", "--json"]));
    let names: Vec<&str> = all
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["lo", "vsbr0", "vsp0", "vsp0p"]);
    let inactive = ok(virtsh(&bus, &["iface-list", "--inactive"]));
    assert!(
        inactive.contains(" vsbr0 ") && !inactive.contains(" lo "),
        "{inactive}"
    );

    assert_eq!(
        ok(virtsh(&bus, &["iface-start", "vsbr0"])),
        "Interface vsbr0 started\n"
    );
    assert!(ns
        .run_ok(&["ip", "link", "show", "vsp0"])
        .expect("ip")
        .contains("master vsbr0"));
    let dump = ok(virtsh(&bus, &["iface-dumpxml", "vsbr0"]));
    assert!(
        dump.contains("<ip address='10.77.0.1' prefix='24'/>"),
        "{dump}"
    );
    assert!(
        dump.contains("<interface type='ethernet' name='vsp0'>"),
        "{dump}"
    );
    let stored = ok(virtsh(&bus, &["iface-dumpxml", "vsbr0", "--inactive"]));
    assert!(!stored.contains("<link "), "{stored}");
    let mac = ok(virtsh(&bus, &["iface-mac", "vsbr0"]));
    // A bridge takes its port's MAC, so the MAC names two links.
    assert!(!virtsh(&bus, &["iface-name", mac.trim()]).status.success());
    assert_eq!(
        ok(virtsh(&bus, &["iface-name", "00:00:00:00:00:00"])),
        "lo\n"
    );

    assert_eq!(
        ok(virtsh(&bus, &["iface-begin"])),
        "Network config change transaction started\n"
    );
    ok(virtsh(&bus, &["iface-undefine", "vsbr0"]));
    assert_eq!(
        ok(virtsh(&bus, &["iface-rollback"])),
        "Network config change transaction rolled back\n"
    );
    assert!(ok(virtsh(&bus, &["iface-dumpxml", "vsbr0", "--inactive"])).contains("10.77.0.1"));

    assert_eq!(
        ok(virtsh(&bus, &["iface-destroy", "vsbr0"])),
        "Interface vsbr0 destroyed\n"
    );
    assert!(
        ns.run(&["ip", "link", "show", "vsbr0"])
            .expect("ip")
            .status
            .code()
            != Some(0)
    );
    assert_eq!(
        ok(virtsh(&bus, &["iface-undefine", "vsbr0"])),
        "Interface vsbr0 undefined\n"
    );
    let out = virtsh(&bus, &["iface-start", "vsbr0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("couldn't find interface named 'vsbr0'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
