//! virsh's network commands against a real virtnetworkd inside a network namespace the
//! test creates (its bridge never touches the host).

use common::harness::{Daemon, NetNs, TestBus, TestDirs};

mod support;
use support::{field, json, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_info_autostart_and_lists() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let daemon = Daemon::builder(sibling("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let xml = daemon.dirs.root.path().join("n.xml");
    std::fs::write(
        &xml,
        "<network><name>n1</name><bridge name='vsbr1' stp='off'/></network>",
    )
    .expect("xml");
    ok(virtsh(&bus, &["net-define", xml.to_str().expect("utf-8")]));

    let info = ok(virtsh(&bus, &["net-info", "n1"]));
    assert!(
        info.starts_with("Name:           n1\nUUID:           "),
        "{info}"
    );
    assert_eq!(field(&info, "Active"), "no");
    assert_eq!(field(&info, "Persistent"), "yes");
    assert_eq!(field(&info, "Autostart"), "no");
    // virsh's default lists active networks only.
    assert!(!ok(virtsh(&bus, &["net-list"])).contains("n1"));
    let all = json(virtsh(&bus, &["net-list", "--all", "--json"]));
    assert_eq!(all[0]["name"], "n1");
    assert_eq!(all[0]["state"], "inactive");

    ok(virtsh(&bus, &["net-start", "n1"]));
    assert_eq!(
        ok(virtsh(&bus, &["net-autostart", "n1"])),
        "Network n1 marked as autostarted\n"
    );
    let info = ok(virtsh(&bus, &["net-info", "n1"]));
    assert_eq!(field(&info, "Active"), "yes");
    assert_eq!(field(&info, "Autostart"), "yes");
    assert_eq!(field(&info, "Bridge"), "vsbr1");
    let j = json(virtsh(&bus, &["net-info", "n1", "--json"]));
    assert_eq!(j["active"], true);
    assert_eq!(j["bridge"], "vsbr1");
    // The bridge exists in the daemon's namespace, not on the host.
    assert!(ns.run_ok(&["ip", "link", "show", "vsbr1"]).is_ok());

    let list = ok(virtsh(&bus, &["net-list"]));
    assert_eq!(
        list,
        " Name   State    Autostart   Persistent\n\
         -----------------------------------------\n \
         n1     active   yes         yes\n"
    );
    assert_eq!(
        ok(virtsh(&bus, &["net-autostart", "n1", "--disable"])),
        "Network n1 unmarked as autostarted\n"
    );
    assert_eq!(ok(virtsh(&bus, &["net-list", "--name"])), "n1\n");
    let leases = json(virtsh(&bus, &["net-dhcp-leases", "n1", "--json"]));
    assert_eq!(leases, serde_json::json!([]));
    ok(virtsh(&bus, &["net-destroy", "n1"]));
    ok(virtsh(&bus, &["net-undefine", "n1"]));
}
