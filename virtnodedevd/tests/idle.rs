//! `--timeout` never ends the daemon under an operation: a NodeDeviceCreateXML that
//! waits (5 s, as libvirt) for a device the kernel never adds outlasts a 1 s idle
//! timeout; the daemon keeps its name and answers other calls meanwhile, the create
//! gets libvirt's timeout error as its reply, and only then does the daemon exit idle.
//! Before `busy()` counted operations, the daemon gave up its name 1 s into the call.

use std::time::Duration;

use common::harness::{Daemon, TestBus};
use common::proxies::nodedev::NodeDevConnectProxy;

const BIN: &str = env!("CARGO_BIN_EXE_virtnodedevd");

#[tokio::test(flavor = "multi_thread")]
async fn idle_exit_waits_for_an_operation_in_flight() -> anyhow::Result<()> {
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .arg("--timeout")
        .arg("1")
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    // Nobody plays the kernel: the mediated device never appears.
    let xml = "<device><parent>pci_0000_00_02_0</parent><capability type='mdev'>\
               <type id='i915-GVTg_V5_4'/><uuid>0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6</uuid>\
               </capability></device>";
    let other = async {
        // Well past the idle timeout, while the create still waits.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        c.list_node_devices(0).await
    };
    let (made, listed) = tokio::join!(c.node_device_create_xml(xml, 0), other);
    let listed = listed.expect("the daemon serves other calls during the create");
    assert!(!listed.is_empty());
    let e = made.expect_err("no device appears");
    assert!(
        e.to_string().contains("did not appear within 5 s"),
        "the daemon did not answer the call itself: {e}"
    );
    // Idle now: it exits on its timeout.
    assert!(
        daemon.wait_exit(Duration::from_secs(15)).is_some(),
        "the daemon did not exit once idle"
    );
    Ok(())
}
