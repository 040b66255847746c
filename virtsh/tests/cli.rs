//! virtsh against a real virtqemud on a private bus, and peer-to-peer on its socket.
//! The daemon binary is the workspace's (`cargo build --workspace` builds it first).

use std::path::PathBuf;
use std::process::{Command, Output};

use common::harness::{Daemon, TestBus};

fn sibling(name: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_virtsh"));
    let p = me.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

fn virtsh(bus: &TestBus, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtsh"))
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .expect("run virtsh")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "virtsh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_lifecycle_through_virtsh() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let xml = daemon.dirs.root.path().join("d.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>cli1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
    )
    .expect("xml");
    let xml = xml.to_str().expect("utf-8 path");

    assert!(ok(virtsh(&bus, &["define", xml])).contains("Domain 'cli1' defined"));
    assert!(ok(virtsh(&bus, &["list", "--all"])).contains("cli1"));
    assert!(!ok(virtsh(&bus, &["list"])).contains("cli1"));
    ok(virtsh(&bus, &["start", "cli1", "--paused"]));
    assert_eq!(ok(virtsh(&bus, &["domstate", "cli1"])).trim(), "paused");
    let listed = ok(virtsh(&bus, &["list"]));
    assert!(
        listed.contains(" 1 ") && listed.contains("paused"),
        "{listed}"
    );
    // By ID, as virsh accepts it.
    ok(virtsh(&bus, &["resume", "1"]));
    assert_eq!(ok(virtsh(&bus, &["domstate", "cli1"])).trim(), "running");
    assert!(ok(virtsh(&bus, &["dumpxml", "cli1"])).contains("<name>cli1</name>"));

    // Peer-to-peer on the daemon's socket, no bus involved.
    let addr = format!("unix:path={}", daemon.socket().display());
    assert!(ok(virtsh(&bus, &["--address", &addr, "list"])).contains("cli1"));

    ok(virtsh(&bus, &["destroy", "cli1"]));
    assert_eq!(ok(virtsh(&bus, &["domstate", "cli1"])).trim(), "shut off");
    ok(virtsh(&bus, &["undefine", "cli1"]));

    // libvirt's message on stderr, exit status 1, nothing on stdout.
    let out = virtsh(&bus, &["start", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: Domain not found") && err.contains("'nosuch'"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = virtsh(&bus, &["define", "/nonexistent/x.xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read '/nonexistent/x.xml'"));
}
