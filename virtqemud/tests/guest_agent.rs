//! The QEMU guest agent of the tiny test guest (qemu-ga 7.2 over virtio-serial),
//! through virtqemud's D-Bus API: AgentEvent when the guest opens its channel, the
//! hostname, time, CPUs, filesystems and addresses the guest reports, and a shutdown
//! by the agent rather than the ACPI button. The daemon runs in a network namespace of
//! the test's, so the guest's user-mode NIC reaches nothing outside it.

use std::time::Duration;

mod support;

use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::qemu::QemuConnectProxy;
use futures_util::StreamExt;
use support::{bus_err, domain, test_guest, wait_serial};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const MAC: &str = "52:54:00:77:00:10";

fn text_of(v: &zbus::zvariant::OwnedValue) -> String {
    // libvirt-dbus's typed parameters: a variant around the value.
    match &**v {
        zbus::zvariant::Value::Value(inner) => String::try_from(&**inner).unwrap_or_default(),
        other => String::try_from(other).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_agent_answers_and_shuts_the_guest_down() {
    let guest = test_guest();
    let ns = NetNs::new().expect("netns");
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("daemon");
    let serial = daemon.dirs.state.join("agent.serial");
    let xml = format!(
        "<domain type='kvm'><name>agent</name><memory unit='MiB'>256</memory><vcpu>2</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 tg.hostname=agentguest</cmdline></os>\
         <devices><serial type='file'><source path='{}'/></serial>\
         <interface type='user'><mac address='{MAC}'/><model type='virtio'/></interface>\
         <channel type='unix'><source mode='bind'/>\
         <target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display(),
        serial.display()
    );
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&conn, &path).await;
    let mut agent_events = d.receive_agent_event().await.expect("subscribe");

    // Not running, and before the guest opens its channel: libvirt's errors.
    assert_eq!(
        bus_err(d.get_hostname(0).await),
        "Requested operation is not valid: domain is not running"
    );
    d.create(0).await.expect("create");
    let early = d.get_hostname(0).await;
    if let Err(zbus::Error::MethodError(_, Some(msg), _)) = &early {
        assert!(msg.contains("QEMU guest agent is not connected"), "{msg}");
    }

    let ev = tokio::time::timeout(Duration::from_secs(120), agent_events.next())
        .await
        .expect("AgentEvent within 120 s")
        .expect("stream");
    let a = ev.args().expect("args");
    assert_eq!((a.state, a.reason), (1, 2), "connected, by a channel event");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(60)).await;

    assert_eq!(d.get_hostname(0).await.expect("hostname"), "agentguest");
    assert_eq!(d.get_hostname(2).await.expect("by agent"), "agentguest");
    assert!(bus_err(d.get_hostname(3).await).contains("mutually exclusive"));
    // A user-mode NIC has no network, so no lease names the guest.
    assert!(d.get_hostname(1).await.is_err());

    let (secs, nsecs) = d.get_time(0).await.expect("time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(secs.abs_diff(now) < 300, "guest {secs} vs host {now}");
    assert!(nsecs < 1_000_000_000);
    // qemu-ga writes the time it sets to the RTC too: QEMU reports the RTC's new
    // offset from the host's clock, libvirt's RTCChange.
    let mut rtc = d.receive_rtc_change().await.expect("subscribe");
    d.set_time(now - 3600, 5, 0).await.expect("set time");
    let sig = tokio::time::timeout(Duration::from_secs(10), rtc.next())
        .await
        .expect("RTCChange within 10 s")
        .expect("stream");
    let offset = sig.args().expect("args").utcoffset;
    assert!((-3700..=-3500).contains(&offset), "RTC offset {offset}");
    d.set_time(0, 0, 1).await.expect("sync from the RTC");
    let (back, _) = d.get_time(0).await.expect("time");
    assert!(
        back.abs_diff(now - 3600) < 300,
        "guest {back} after the sync"
    );
    d.set_time(now, 0, 0).await.expect("set time back");
    assert!(bus_err(d.set_time(now, 1_000_000_000, 0).await).contains("nseconds"));

    let cpus = d.get_guest_vcpus(0).await.expect("guest vcpus");
    assert_eq!(text_of(&cpus["vcpus"]), "0-1");
    assert_eq!(text_of(&cpus["online"]), "0-1");
    assert!(
        bus_err(d.set_guest_vcpus(vec![false, false, true], 1, 0).await).contains("not present")
    );
    assert_eq!(text_of(&cpus["offlinable"]), "1");
    d.set_guest_vcpus(vec![false, true], 0, 0)
        .await
        .expect("CPU 1 offline");
    let cpus = d.get_guest_vcpus(0).await.expect("guest vcpus");
    assert_eq!(text_of(&cpus["online"]), "0");
    assert!(bus_err(d.set_guest_vcpus(vec![true], 0, 0).await).contains("can't be offlined"));
    d.set_guest_vcpus(vec![false, true], 1, 0)
        .await
        .expect("CPU 1 online");
    let cpus = d.get_guest_vcpus(0).await.expect("guest vcpus");
    assert_eq!(text_of(&cpus["online"]), "0-1");
    // The tiny guest has no passwd program; the agent's own error comes through.
    assert!(bus_err(d.set_user_password("root", "secret", 0).await)
        .contains("unable to execute QEMU agent command 'guest-set-user-password'"));
    assert!(bus_err(d.set_user_password("", "secret", 0).await).contains("user name"));

    // No block filesystems in an initramfs guest.
    assert_eq!(d.fs_freeze(&[], 0).await.expect("freeze"), 0);
    assert_eq!(d.fs_thaw(&[], 0).await.expect("thaw"), 0);
    assert!(bus_err(d.fs_thaw(&["/"], 0).await).contains("mountpoints"));
    assert_eq!(d.get_fs_info(0).await.expect("fsinfo"), vec![]);

    // The guest's own view of its NICs: slirp's DHCP gives eth0 10.0.2.15/24.
    let start = std::time::Instant::now();
    let eth0 = loop {
        let ifaces = d.interface_addresses(1, 0).await.expect("agent addresses");
        let eth0 = ifaces.into_iter().find(|i| i.1 == MAC);
        if let Some(e) = eth0.filter(|e| e.2.iter().any(|a| a.0 == 0)) {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no IPv4 on eth0");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(eth0.0, "eth0");
    assert!(
        eth0.2.contains(&(0, "10.0.2.15".to_owned(), 24)),
        "{eth0:?}"
    );
    assert_eq!(d.interface_addresses(0, 0).await.expect("leases"), vec![]);
    assert!(bus_err(d.interface_addresses(3, 0).await).contains("data source"));

    // Shutdown prefers the agent when the guest runs it: the guest powers off without
    // ever seeing the ACPI power button.
    let mut events = qc.receive_domain_event().await.expect("subscribe");
    d.shutdown(0).await.expect("shutdown");
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = events.next().await {
            let a = ev.args().expect("args");
            if a.domain == path && a.event == 5 {
                return a.detail;
            }
        }
        -1
    })
    .await
    .expect("STOPPED within 60 s");
    assert_eq!(stopped, 0, "STOPPED/SHUTDOWN");
    let log = String::from_utf8_lossy(&std::fs::read(&serial).expect("serial")).into_owned();
    assert!(log.contains("TINYGUEST-POWEROFF"), "{log}");
    assert!(
        !log.contains("TINYGUEST-ACPI"),
        "the ACPI button was used:\n{log}"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_agent_channel_the_calls_say_so() {
    let q = support::qemud(BIN).await;
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>plain</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    for e in [
        bus_err(d.get_hostname(0).await),
        bus_err(d.get_time(0).await),
        bus_err(d.fs_freeze(&[], 0).await),
        bus_err(d.interface_addresses(1, 0).await),
        bus_err(d.shutdown(2).await),
    ] {
        assert_eq!(
            e,
            "argument unsupported: QEMU guest agent is not configured"
        );
    }
    assert!(bus_err(d.shutdown(4).await).contains("flags"));
    // No flags and no agent: the ACPI button, as before.
    d.shutdown(0).await.expect("acpi");
    d.destroy(0).await.expect("destroy");
}
