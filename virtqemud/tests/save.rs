//! Save images through virtqemud's D-Bus API, with real QEMU: `Save` and
//! `DomainRestore` of the tiny guest (it goes on where it was, no second boot, its agent
//! answers), `ManagedSave` and `Create` resuming from the image, the image's definition
//! read and replaced, and the refusals that leave everything as it was.

use std::time::Duration;

mod support;

use common::event::{DomainEvent, StartedDetail, StoppedDetail, SuspendedDetail};
use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::qemu::QemuConnectProxy;
use futures_util::StreamExt;
use support::{bus_err, domain, state, test_guest, wait_serial};
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
/// `VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE` / `_NO_MANAGEDSAVE`.
const LIST_MANAGEDSAVE: u32 = 256;
const LIST_NO_MANAGEDSAVE: u32 = 512;

async fn next_event(
    events: &mut common::proxies::qemu::DomainEventStream,
    path: &OwnedObjectPath,
) -> DomainEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("event within 60 s")
            .expect("stream");
        let a = ev.args().expect("args");
        if a.domain == *path {
            return DomainEvent::from_wire(a.event, a.detail).expect("libvirt's event");
        }
    }
}

fn markers(serial: &std::path::Path) -> usize {
    String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default())
        .matches("TINYGUEST-BOOTED")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_guest_goes_on_where_it_was() {
    let guest = test_guest();
    let ns = NetNs::new().expect("netns");
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("daemon");
    let scratch = tempfile::tempdir().expect("scratch");
    let serial = scratch.path().join("guest.serial");
    let image = scratch.path().join("guest.save");
    let xml = format!(
        "<domain type='kvm'><name>saver</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 tg.hostname=saver</cmdline></os>\
         <devices><serial type='file'><source path='{}' append='on'/></serial>\
         <channel type='unix'><source mode='bind'/>\
         <target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display(),
        serial.display()
    );
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let mut events = qc.receive_domain_event().await.expect("subscribe");
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&conn, &path).await;
    let mut agent = d.receive_agent_event().await.expect("subscribe");
    assert_eq!(
        bus_err(d.save(&image.display().to_string(), "", 0).await),
        "Requested operation is not valid: domain is not running"
    );
    d.create(0).await.expect("create");
    tokio::time::timeout(Duration::from_secs(120), agent.next())
        .await
        .expect("agent within 120 s");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(60)).await;
    assert_eq!(d.get_hostname(0).await.expect("hostname"), "saver");
    while !matches!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(_)
    ) {}

    // Save: the state goes to the image and QEMU ends, STOPPED/SAVED.
    assert!(bus_err(d.save("relative.save", "", 0).await).contains("absolute"));
    d.save(&image.display().to_string(), "", 0)
        .await
        .expect("save");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Suspended(SuspendedDetail::Paused)
    );
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Saved)
    );
    assert_eq!(state(&d).await.state(), common::event::DomainState::Shutoff);
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (5, 5),
        "shut off, saved"
    );
    assert!(std::fs::metadata(&image).expect("image").len() > 1 << 20);
    let saved_xml = qc
        .domain_save_image_get_xml_desc(&image.display().to_string(), 0)
        .await
        .expect("image xml");
    assert!(saved_xml.contains("<name>saver</name>"), "{saved_xml}");

    // Restore: the same guest goes on (no second boot marker) and its agent answers.
    qc.domain_restore(&image.display().to_string(), "", 0)
        .await
        .expect("restore");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Restored)
    );
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (1, 3),
        "running, restored"
    );
    let start = std::time::Instant::now();
    let hostname = loop {
        match d.get_hostname(0).await {
            Ok(h) => break h,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(30), "agent: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(hostname, "saver");
    assert_eq!(markers(&serial), 1, "the guest booted again");
    assert!(
        bus_err(qc.domain_restore(&image.display().to_string(), "", 0).await)
            .contains("already active")
    );

    // Managed save, then Create resumes from it (paused, as asked) and drops the image.
    assert!(bus_err(d.managed_save(2 | 4).await).contains("mutually exclusive"));
    d.managed_save(4)
        .await
        .expect("managed save, to resume paused");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Suspended(SuspendedDetail::Paused)
    );
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Saved)
    );
    assert!(d.has_managed_save_image(0).await.expect("has"));
    assert_eq!(
        qc.list_domains(LIST_MANAGEDSAVE).await.expect("list"),
        vec![path.clone()]
    );
    assert!(qc
        .list_domains(LIST_NO_MANAGEDSAVE)
        .await
        .expect("list")
        .is_empty());
    assert!(bus_err(d.undefine(0).await).contains("managed save image exists"));
    d.create(0).await.expect("create from the managed save");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Restored)
    );
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Suspended(SuspendedDetail::Restored)
    );
    assert!(!d.has_managed_save_image(0).await.expect("has"));
    d.resume().await.expect("resume");
    assert_eq!(d.get_hostname(0).await.expect("hostname"), "saver");
    assert_eq!(markers(&serial), 1, "the guest booted again");

    d.save(&image.display().to_string(), "", 0)
        .await
        .expect("save again");
    image_definition(&qc, &image, &saved_xml, scratch.path()).await;
    drop(daemon);
}

/// The image's definition: another one of the same domain may replace it, another
/// domain's may not; a file that is no image is refused.
async fn image_definition(
    qc: &QemuConnectProxy<'_>,
    image: &std::path::Path,
    saved_xml: &str,
    scratch: &std::path::Path,
) {
    let other = saved_xml.replace("<name>saver</name>", "<name>other</name>");
    assert!(bus_err(
        qc.domain_save_image_define_xml(&image.display().to_string(), &other, 0)
            .await
    )
    .contains("must be of domain 'saver'"));
    let described = saved_xml.replace(
        "<name>saver</name>",
        "<name>saver</name><description>restored copy</description>",
    );
    qc.domain_save_image_define_xml(&image.display().to_string(), &described, 0)
        .await
        .expect("define the image's xml");
    assert!(qc
        .domain_save_image_get_xml_desc(&image.display().to_string(), 0)
        .await
        .expect("xml")
        .contains("restored copy"));
    let junk = scratch.join("junk.save");
    std::fs::write(&junk, b"not an image").expect("junk");
    assert!(
        bus_err(qc.domain_restore(&junk.display().to_string(), "", 0).await)
            .contains("not a usable save image")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_domain_is_restored_as_transient() {
    let q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let image = scratch.path().join("t.save").display().to_string();
    let path =
        q.qc.domain_create_xml(
            "<domain type='qemu'><name>fleeting</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
            0,
        )
        .await
        .expect("create");
    let d = domain(&q.conn, &path).await;
    assert!(bus_err(d.managed_save(0).await).contains("transient"));
    d.save(&image, "", 0).await.expect("save");
    // A transient domain that stopped is gone.
    assert!(q.qc.list_domains(0).await.expect("list").is_empty());
    q.qc.domain_restore(&image, "", 4)
        .await
        .expect("restore paused");
    let path = q.qc.domain_lookup_by_name("fleeting").await.expect("back");
    let d = domain(&q.conn, &path).await;
    assert!(!d.persistent().await.expect("persistent"));
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (3, 1),
        "paused by the user"
    );
    d.destroy(0).await.expect("destroy");
}

/// CoreDump: QEMU's migration stream by default, an ELF or kdump memory image with
/// MEMORY_ONLY; the guest runs on afterwards, or with CRASH it ends, STOPPED/CRASHED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_dumps() {
    let q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>dumpee</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    let file = |n: &str| scratch.path().join(n).display().to_string();
    assert!(bus_err(d.core_dump(&file("x"), 0, 0).await).contains("not running"));
    d.create(0).await.expect("create");

    d.core_dump(&file("migration.dump"), 0, 0)
        .await
        .expect("dump");
    let m = std::fs::read(file("migration.dump")).expect("dump file");
    assert_eq!(&m[..4], b"QEVM", "QEMU's migration stream");
    assert_eq!(d.get_state(0).await.expect("state").0, 1, "running again");

    d.core_dump(&file("memory.elf"), 0, 16)
        .await
        .expect("ELF dump");
    let elf = std::fs::read(file("memory.elf")).expect("elf");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert!(elf.len() > 64 << 20, "the guest's 64 MiB: {}", elf.len());

    d.core_dump(&file("memory.kdump"), 1, 16 | 2)
        .await
        .expect("kdump, live");
    let kdump = std::fs::read(file("memory.kdump")).expect("kdump");
    // kdump-compressed, in makedumpfile's flattened form or plain.
    assert!(
        kdump.starts_with(b"makedumpfile") || kdump.starts_with(b"KDUMP   "),
        "{:?}",
        &kdump[..16]
    );
    assert!(bus_err(d.core_dump(&file("y"), 1, 0).await).contains("MEMORY_ONLY"));
    assert!(bus_err(d.core_dump(&file("y"), 0, 1 | 8).await).contains("mutually exclusive"));
    assert!(bus_err(d.core_dump("relative", 0, 0).await).contains("absolute"));
    // Nothing half-written is left beside the dumps.
    let names: Vec<String> = std::fs::read_dir(scratch.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".part-")), "{names:?}");

    let mut events = q.qc.receive_domain_event().await.expect("subscribe");
    d.core_dump(&file("last.elf"), 0, 16 | 1)
        .await
        .expect("dump and crash");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Crashed)
    );
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (5, 3),
        "shut off, crashed"
    );
}
