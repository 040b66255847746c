//! virsh's nwfilter-* and nwfilter-binding-* commands against a real virtnetworkd in a
//! network namespace the test creates (the rules it writes never touch the host).

use common::harness::{Daemon, NetNs, TestBus, TestDirs};

mod support;
use support::{fails, json, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nwfilter_define_list_dumpxml_bind_undefine() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let daemon = Daemon::builder(sibling("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    ns.run_ok(&[
        "ip", "link", "add", "vsf0", "type", "veth", "peer", "name", "vsf0p",
    ])
    .expect("veth");
    let dir = daemon.dirs.root.path();
    let filter = dir.join("f.xml");
    std::fs::write(
        &filter,
        "<filter name='vs-web' chain='ipv4'><rule action='accept' direction='in'>\
         <tcp dstportstart='80'/></rule></filter>",
    )
    .expect("xml");
    let file = filter.to_str().expect("utf-8");
    assert_eq!(
        ok(virtsh(&bus, &["nwfilter-define", file])),
        format!("Network filter vs-web defined from {file}\n")
    );
    let rows = json(virtsh(&bus, &["nwfilter-list", "--json"]));
    let names: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"vs-web") && names.contains(&"clean-traffic"),
        "{names:?}"
    );
    let text = ok(virtsh(&bus, &["nwfilter-list"]));
    assert!(text.starts_with(" UUID "), "{text}");
    let xml = ok(virtsh(&bus, &["nwfilter-dumpxml", "vs-web"]));
    assert!(xml.contains("<tcp dstportstart='80'/>"), "{xml}");

    let binding = dir.join("b.xml");
    std::fs::write(
        &binding,
        "<filterbinding><owner><name>g</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
         <portdev name='vsf0'/><mac address='52:54:00:00:00:01'/>\
         <filterref filter='vs-web'/></filterbinding>",
    )
    .expect("xml");
    let bfile = binding.to_str().expect("utf-8");
    assert_eq!(
        ok(virtsh(&bus, &["nwfilter-binding-create", bfile])),
        format!("Network filter binding on vsf0 created from {bfile}\n")
    );
    let list = ok(virtsh(&bus, &["nwfilter-binding-list"]));
    assert!(list.contains(" vsf0 ") && list.contains("vs-web"), "{list}");
    assert!(
        ok(virtsh(&bus, &["nwfilter-binding-dumpxml", "vsf0"])).contains("<portdev name='vsf0'/>")
    );
    assert!(fails(virtsh(&bus, &["nwfilter-undefine", "vs-web"])).contains("nwfilter is in use"));
    assert_eq!(
        ok(virtsh(&bus, &["nwfilter-binding-delete", "vsf0"])),
        "Network filter binding on vsf0 deleted\n"
    );
    assert_eq!(
        ok(virtsh(&bus, &["nwfilter-undefine", "vs-web"])),
        "Network filter vs-web undefined\n"
    );
    assert!(fails(virtsh(&bus, &["nwfilter-dumpxml", "vs-web"]))
        .contains("Network filter not found: no nwfilter with matching name 'vs-web'"));
}
