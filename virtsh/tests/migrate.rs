//! `virtsh migrate` between two virtqemud on two buses (the source dials the
//! destination's bus by its socket), `domjobinfo --completed` on the source, and the
//! refusal of a bad destination URI. A guest without a kernel (QEMU sits in its
//! firmware) is enough: what moves is QEMU's state. Both daemons run in a network
//! namespace of the test, where the stream goes over 127.0.0.1.

use common::harness::{Daemon, NetNs, TestBus};

mod support;
use support::{fails, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_running_domain() {
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let (bus_a, bus_b) = (
        TestBus::start().expect("bus"),
        TestBus::start().expect("bus"),
    );
    let mut daemons = Vec::new();
    for bus in [&bus_a, &bus_b] {
        daemons.push(
            Daemon::builder(sibling("virtqemud"), "virtqemud")
                .netns(&ns)
                .spawn(bus)
                .await
                .expect("virtqemud"),
        );
    }
    let xml = daemons[0].dirs.root.path().join("m.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>m1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
    )
    .expect("xml");
    ok(virtsh(&bus_a, &["define", xml.to_str().expect("utf-8")]));
    ok(virtsh(&bus_a, &["start", "m1"]));
    let dest = format!(
        "qemu+unix:///session?socket={}",
        bus_b.address.trim_start_matches("unix:path=")
    );
    let e = fails(virtsh(
        &bus_a,
        &["migrate", "m1", "xen:///system", "--live"],
    ));
    assert!(e.contains("Failed to connect to remote libvirt URI"), "{e}");
    assert_eq!(ok(virtsh(&bus_a, &["domstate", "m1"])), "running\n");
    ok(virtsh(&bus_a, &["migrate-setspeed", "m1", "500"]));
    assert_eq!(ok(virtsh(&bus_a, &["migrate-getspeed", "m1"])), "500\n");
    let out = ok(virtsh(
        &bus_a,
        &["migrate", "m1", &dest, "--live", "--p2p", "--persistent"],
    ));
    assert!(out.contains("Migration: [100 %]"), "{out}");
    assert_eq!(
        ok(virtsh(&bus_b, &["domstate", "m1", "--reason"])),
        "running (migrated)\n"
    );
    assert_eq!(
        ok(virtsh(&bus_a, &["domstate", "m1", "--reason"])),
        "shut off (migrated)\n"
    );
    let info = ok(virtsh(&bus_a, &["domjobinfo", "m1", "--completed"]));
    assert!(info.starts_with("Job type:        Completed"), "{info}");
    assert!(info.contains("memory_total:"), "{info}");
    ok(virtsh(&bus_b, &["destroy", "m1"]));
}
