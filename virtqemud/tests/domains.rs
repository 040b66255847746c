//! virtqemud through its public D-Bus API, with real QEMU processes (domains without a
//! guest OS: cheap, no kernel needed): lifecycle, events, errors, restarts, concurrency.

use std::time::Duration;

mod support;

use common::event::{
    DefinedDetail, DomainEvent, DomainState, ResumedDetail, RunningReason, ShutdownDetail,
    ShutoffReason, StartedDetail, StateReason, StoppedDetail, SuspendedDetail,
};
use common::harness::{wait_gone, Daemon, TestBus};
use common::proxies::qemu::QemuConnectProxy;
use futures_util::StreamExt;
use support::{domain, qemu_pid, state, test_guest};
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn xml(name: &str, uuid: Option<&str>) -> String {
    let uuid = uuid
        .map(|u| format!("<uuid>{u}</uuid>"))
        .unwrap_or_default();
    format!(
        "<domain type='qemu'><name>{name}</name>{uuid}<memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <metadata><app:x xmlns:app='urn:test'>keep me</app:x></metadata></domain>"
    )
}

fn bus_err(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            msg.unwrap_or_default()
        }
        other => panic!("expected org.libvirt.Error, got {other:?}"),
    }
}

/// Waits for the next DomainEvent for `path`, skipping other domains.
async fn next_event(
    events: &mut (impl futures_util::Stream<Item = common::proxies::qemu::DomainEvent> + Unpin),
    path: &OwnedObjectPath,
) -> DomainEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("event within 20 s")
            .expect("signal stream open");
        let a = ev.args().expect("args");
        if a.domain == *path {
            return DomainEvent::from_wire(a.event, a.detail)
                .unwrap_or_else(|| panic!("event ({}, {}) is not libvirt's", a.event, a.detail));
        }
    }
}

/// A virtqemud on a private bus, subscribed to DomainEvent, with the persistent domain
/// `alpha` defined (its DEFINED/ADDED event already seen) but not started.
struct Alpha {
    q: support::Qemud,
    events: common::proxies::qemu::DomainEventStream,
    path: OwnedObjectPath,
    d: common::proxies::qemu::DomainProxy<'static>,
}

async fn alpha() -> Alpha {
    let q = support::qemud(BIN).await;
    let mut events = q.qc.receive_domain_event().await.expect("subscribe");
    let path =
        q.qc.domain_define_xml(&xml("alpha", None))
            .await
            .expect("define");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Defined(DefinedDetail::Added)
    );
    let d = domain(&q.conn, &path).await;
    Alpha { q, events, path, d }
}

/// Define keeps the definition verbatim (metadata) with a generated uuid; the domain is
/// found by name and uuid, and listed as inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defined_domain_is_kept_verbatim_and_found() {
    let Alpha { q, path, d, .. } = alpha().await;
    let qc = &q.qc;
    assert_eq!(d.name().await.expect("name"), "alpha");
    assert!(d.persistent().await.expect("persistent"));
    assert!(!d.active().await.expect("active"));
    let uuid = d.uuid().await.expect("uuid");
    assert!(d.get_xml_desc(0).await.expect("xml").contains("keep me"));
    assert_eq!(
        qc.domain_lookup_by_name("alpha").await.expect("by name"),
        path
    );
    assert_eq!(
        qc.domain_lookup_by_uuid(&uuid).await.expect("by uuid"),
        path
    );
    assert_eq!(
        state(&d).await,
        StateReason::Shutoff(ShutoffReason::Unknown)
    );
    assert_eq!(
        qc.list_domains(2).await.expect("inactive"),
        vec![path.clone()]
    );
    assert!(qc.list_domains(1).await.expect("active").is_empty());
}

/// Bad XML, a duplicate name, a duplicate uuid, an unknown domain and an operation on an
/// inactive one are refused with libvirt's messages; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_and_requests_are_refused() {
    let Alpha { mut q, d, .. } = alpha().await;
    let qc = &q.qc;
    let uuid = d.uuid().await.expect("uuid");
    let e = bus_err(
        qc.domain_define_xml("<domain type='qemu'><name>")
            .await
            .unwrap_err(),
    );
    assert!(e.starts_with("XML error"), "{e}");
    let e = bus_err(
        qc.domain_define_xml(&xml("alpha", Some("11111111-2222-3333-4444-555555555555")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        format!("operation failed: domain 'alpha' already exists with uuid {uuid}")
    );
    let e = bus_err(
        qc.domain_define_xml(&xml("beta", Some(&uuid)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        format!("operation failed: domain 'alpha' is already defined with uuid {uuid}")
    );
    let e = bus_err(qc.domain_lookup_by_name("nope").await.unwrap_err());
    assert_eq!(e, "Domain not found: no domain with matching name 'nope'");
    let e = bus_err(d.suspend().await.unwrap_err());
    assert_eq!(e, "Requested operation is not valid: domain is not running");
    assert_eq!(qc.list_domains(0).await.expect("all").len(), 1);
    // Nesting of any depth is refused before the parser recurses, not a dead daemon.
    let deep = format!(
        "<domain type='qemu'><name>deep</name>{}{}</domain>",
        "<metadata>".repeat(100_000),
        "</metadata>".repeat(100_000)
    );
    let e = bus_err(q.qc.domain_define_xml(&deep).await.unwrap_err());
    assert!(e.contains("nest deeper than 64 levels"), "{e}");
    assert!(q.daemon.running(), "the daemon died on a deep document");
}

/// Start (an id, a QEMU in its own session), suspend, kill -9 of the daemon: the
/// restarted one finds the same QEMU and learns from QMP query-status that it is
/// paused; resume and destroy then work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_domain_survives_daemon_kill9_and_is_destroyed() {
    let Alpha {
        mut q,
        mut events,
        path,
        d,
    } = alpha().await;
    let (qc, conn) = (&q.qc, &q.conn);

    // Start: running, STARTED/BOOTED, an id, a QEMU in its own session.
    d.create(0).await.expect("create");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Booted)
    );
    assert_eq!(state(&d).await, StateReason::Running(RunningReason::Booted));
    let id = d.id().await.expect("id");
    assert!(id >= 1 && id != u32::MAX);
    assert_eq!(
        qc.domain_lookup_by_id(id as i32).await.expect("by id"),
        path
    );
    assert!(d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains(&format!("id='{id}'")));
    let stats = d.memory_stats(0).await.expect("memstats");
    assert_eq!(stats.get(&6), Some(&(64 * 1024)));
    assert!(stats.get(&7).copied().unwrap_or(0) > 0);
    let dirs = q.daemon.dirs.clone();
    let pid = qemu_pid(&dirs.runtime, "alpha");
    assert!(!wait_gone(pid, Duration::from_millis(1)), "QEMU runs");
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).expect("sid"),
        nix::unistd::Pid::from_raw(pid as i32)
    );
    assert!(dirs.state.join("log/qemu/alpha.log").exists());

    // Suspend, then kill -9 the daemon: the restarted one finds the same QEMU and learns
    // from QMP query-status that it is paused.
    d.suspend().await.expect("suspend");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Suspended(SuspendedDetail::Paused)
    );
    assert_eq!(state(&d).await.state(), DomainState::Paused);
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let qc = QemuConnectProxy::new(conn).await.expect("proxy");
    let mut events = qc.receive_domain_event().await.expect("subscribe");
    let d = domain(conn, &path).await;
    assert!(d.active().await.expect("active"));
    assert_eq!(d.id().await.expect("id"), id);
    assert_eq!(state(&d).await.state(), DomainState::Paused);
    assert!(
        !wait_gone(pid, Duration::from_millis(1)),
        "same QEMU still runs"
    );
    d.resume().await.expect("resume after restart");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Resumed(ResumedDetail::Unpaused)
    );
    assert_eq!(state(&d).await.state(), DomainState::Running);

    // Destroy: shutoff (destroyed), STOPPED/DESTROYED, the process is gone.
    let t = std::time::Instant::now();
    d.destroy(0).await.expect("destroy");
    eprintln!("destroy took {:?}", t.elapsed());
    assert_eq!(
        state(&d).await,
        StateReason::Shutoff(ShutoffReason::Destroyed)
    );
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Destroyed)
    );
    assert!(wait_gone(pid, Duration::from_secs(5)));
    assert!(!d.active().await.expect("active"));
    drop(daemon);
}

/// kill -9 of QEMU: shutoff (crashed) with STOPPED/FAILED; the next start gets a
/// higher id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_leaves_the_domain_shutoff_crashed() {
    let Alpha {
        q,
        mut events,
        path,
        d,
    } = alpha().await;
    d.create(0).await.expect("create");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Booted)
    );
    let id = d.id().await.expect("id");
    let pid = qemu_pid(&q.daemon.dirs.runtime, "alpha");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill qemu");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Failed)
    );
    assert_eq!(
        state(&d).await,
        StateReason::Shutoff(ShutoffReason::Crashed)
    );

    d.create(0).await.expect("create again");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Booted)
    );
    let id2 = d.id().await.expect("id");
    assert!(id2 > id, "ids count up: {id2} after {id}");
    d.destroy(0).await.expect("destroy");
}

/// A transient domain (created, not defined) is listed as such and vanishes when it
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_domain_vanishes_when_destroyed() {
    let Alpha { q, mut events, .. } = alpha().await;
    let qc = &q.qc;
    let tpath = qc
        .domain_create_xml(&xml("gamma", None), 1)
        .await
        .expect("create transient paused");
    assert_eq!(
        next_event(&mut events, &tpath).await,
        DomainEvent::Started(StartedDetail::Booted)
    );
    assert_eq!(
        next_event(&mut events, &tpath).await,
        DomainEvent::Suspended(SuspendedDetail::Paused)
    );
    let t = domain(&q.conn, &tpath).await;
    assert!(!t.persistent().await.expect("persistent"));
    assert_eq!(
        qc.list_domains(8).await.expect("transient"),
        vec![tpath.clone()]
    );
    t.destroy(0).await.expect("destroy transient");
    assert!(bus_err(qc.domain_lookup_by_name("gamma").await.unwrap_err()).contains("gamma"));
}

/// Undefining a running domain makes it transient: its config file goes at once and
/// the domain itself when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefining_a_running_domain_makes_it_transient() {
    let Alpha { q, d, .. } = alpha().await;
    let config = q.daemon.dirs.config.join("qemu/alpha.xml");
    d.create(0).await.expect("create");
    assert!(config.exists());
    d.undefine(0).await.expect("undefine running");
    assert!(!d.persistent().await.expect("persistent"));
    assert!(!config.exists());
    d.destroy(0).await.expect("destroy");
    assert!(q.qc.list_domains(0).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_clients() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("daemon");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let conn = bus.connection().await.expect("conn");
        tasks.push(tokio::spawn(async move {
            let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
            let name = format!("c{i}");
            let path = qc
                .domain_define_xml(&xml(&name, None))
                .await
                .expect("define");
            let d = domain(&conn, &path).await;
            // Paused start: a real QEMU, no guest CPU burnt.
            d.create(1).await.expect("create");
            assert_eq!(state(&d).await.state(), DomainState::Paused);
            if i % 2 == 0 {
                d.destroy(0).await.expect("destroy");
                assert_eq!(state(&d).await.state(), DomainState::Shutoff);
            }
            path
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    assert_eq!(qc.list_domains(0).await.expect("all").len(), 20);
    assert_eq!(qc.list_domains(1).await.expect("active").len(), 10);
    assert_eq!(qc.list_domains(64).await.expect("shutoff").len(), 10);
    let stats = qc.get_all_domain_stats(0, 0).await.expect("stats");
    assert_eq!(stats.len(), 20);
    // Exactly one QEMU per active domain, and the rest gone.
    let run = daemon.dirs.runtime.join("qemu");
    let pids: Vec<u32> = std::fs::read_dir(&run)
        .expect("run dir")
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 10);
    for p in &pids {
        assert!(!wait_gone(*p, Duration::from_millis(1)));
    }
    for path in qc.list_domains(1).await.expect("active") {
        domain(&conn, &path)
            .await
            .destroy(0)
            .await
            .expect("destroy");
    }
    for p in pids {
        assert!(wait_gone(p, Duration::from_secs(5)), "QEMU {p} gone");
    }
    assert!(qc.list_domains(1).await.expect("active").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_boots_and_shuts_down() {
    let guest = test_guest();
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("daemon");
    let serial = daemon.dirs.state.join("tiny.serial");
    let xml = format!(
        "<domain type='kvm'><name>tiny</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1</cmdline></os>\
         <devices><serial type='file'><source path='{}'/></serial></devices></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display(),
        serial.display()
    );
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let mut events = qc.receive_domain_event().await.expect("subscribe");
    let path = qc.domain_define_xml(&xml).await.expect("define");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Defined(DefinedDetail::Added)
    );
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("create");
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Started(StartedDetail::Booted)
    );
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains("TINYGUEST-BOOTED") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no boot marker within 90 s; serial:\n{}",
            String::from_utf8_lossy(&text)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("booted in {:?}", start.elapsed());
    assert_eq!(state(&d).await.state(), DomainState::Running);
    // ACPI shutdown: the guest powers off; QEMU (-no-shutdown) is told to quit.
    d.shutdown(0).await.expect("shutdown");
    let t = std::time::Instant::now();
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Shutdown(ShutdownDetail::Guest),
        "SHUTDOWN/GUEST"
    );
    assert_eq!(
        next_event(&mut events, &path).await,
        DomainEvent::Stopped(StoppedDetail::Shutdown),
        "STOPPED/SHUTDOWN"
    );
    eprintln!("powered off in {:?}", t.elapsed());
    assert_eq!(
        state(&d).await,
        StateReason::Shutoff(ShutoffReason::Shutdown)
    );
    let text = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    assert!(text.contains("TINYGUEST-POWEROFF"), "serial:\n{text}");
}

/// Capabilities come from probing the real emulator once; the probe is cached in the
/// state folder and the daemon never runs an emulator a caller names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_come_from_the_probed_emulator() {
    let bus = TestBus::start().unwrap();
    let d = Daemon::builder(BIN, "virtqemud").spawn(&bus).await.unwrap();
    let conn = bus.connection().await.unwrap();
    let c = QemuConnectProxy::new(&conn).await.unwrap();
    let caps = c.get_capabilities().await.unwrap();
    assert!(caps.contains("<capabilities>"), "{caps}");
    assert!(caps.contains("/usr/bin/qemu-system-x86_64"), "{caps}");
    // Machine types come from QEMU itself, not from a fixed list.
    assert!(caps.contains("pc-i440fx-"), "{caps}");
    let cache = d.dirs.state.join("cache").join("qemu");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "probe not cached"
    );

    let dom = c
        .get_domain_capabilities("", "x86_64", "pc", "qemu", 0)
        .await
        .unwrap();
    assert!(dom.contains("<domainCapabilities>"), "{dom}");
    assert!(dom.contains("pc-i440fx-"), "{dom}");

    let err = bus_err(
        c.get_domain_capabilities("/bin/sh", "", "", "", 0)
            .await
            .unwrap_err(),
    );
    assert!(err.contains("emulator '/bin/sh' is not supported"), "{err}");
    let err = bus_err(
        c.get_domain_capabilities("", "aarch64", "", "", 0)
            .await
            .unwrap_err(),
    );
    assert!(err.contains("architecture 'aarch64'"), "{err}");
}

/// Many definitions in flight on one connection (they share journal syncs) and a
/// kill -9 right after the last reply: the restarted daemon has exactly what was
/// acknowledged, in libvirt's one-file-per-domain layout. (Replay after a power cut is
/// covered by common::journal's own tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_definitions_survive_kill9() {
    use futures_util::stream::{self, TryStreamExt};
    let bus = TestBus::start().expect("bus");
    let mut daemon = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let paths: Vec<OwnedObjectPath> = stream::iter(0..60)
        .map(|i| {
            let qc = &qc;
            async move { qc.domain_define_xml(&xml(&format!("j{i:02}"), None)).await }
        })
        .buffered(16)
        .try_collect()
        .await
        .expect("pipelined defines");
    // Undefine every third one, again many at once.
    let gone: Vec<&OwnedObjectPath> = paths.iter().step_by(3).collect();
    stream::iter(gone.iter())
        .map(|p| {
            let conn = &conn;
            async move { domain(conn, p).await.undefine(0).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .expect("pipelined undefines");
    daemon.kill9();
    let daemon2 = daemon.restart_builder().spawn(&bus).await.expect("restart");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let mut listed: Vec<String> = qc
        .list_domains(0)
        .await
        .expect("list")
        .iter()
        .map(|p| p.to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = paths
        .iter()
        .filter(|p| !gone.contains(p))
        .map(|p| p.to_string())
        .collect();
    want.sort();
    assert_eq!(listed.len(), 40);
    assert_eq!(listed, want);
    // The per-domain files carry the definitions (libvirt's layout) after the replay.
    let cfg = daemon2.dirs.config.join("qemu");
    for i in (1..60).filter(|i| i % 3 != 0) {
        let text = std::fs::read_to_string(cfg.join(format!("j{i:02}.xml"))).expect("config");
        assert!(text.contains(&format!("<name>j{i:02}</name>")));
    }
    assert!(!cfg.join("j00.xml").exists());
}

/// An integer field of a stats record, whatever its D-Bus integer type.
fn val_u64(m: &std::collections::HashMap<String, zbus::zvariant::OwnedValue>, k: &str) -> u64 {
    use zbus::zvariant::Value;
    let v = m.get(k).unwrap_or_else(|| panic!("{k} missing in {m:?}"));
    match &**v {
        Value::U64(x) => *x,
        Value::U32(x) => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => panic!("{k}: not an unsigned integer: {other:?}"),
    }
}

fn val_str(m: &std::collections::HashMap<String, zbus::zvariant::OwnedValue>, k: &str) -> String {
    let v = m.get(k).unwrap_or_else(|| panic!("{k} missing in {m:?}"));
    String::try_from(v.try_clone().expect("clone")).unwrap_or_else(|_| panic!("{k}: {v:?}"))
}

/// GetStats groups with libvirt's names, GetBlockIOTune from QEMU, and libvirt's session
/// answers for the cgroup readers (tests/tuning.rs has system mode), on a running domain with a raw disk and a user-mode NIC (the
/// daemon runs in a network namespace of the test's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_running_domain() {
    let ns = common::harness::NetNs::new().expect("netns");
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let img = daemon.dirs.root.path().join("disk.raw");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let x = format!(
        "<domain type='qemu'><name>st</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><model type='virtio'/></interface></devices></domain>",
        img.display()
    );
    let path = qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&conn, &path).await;

    // Inactive: only the state group; libvirt's cgroup-less defaults.
    let s = d.get_stats(0, 0).await.expect("stats");
    assert_eq!(
        DomainState::from_wire(val_u64(&s, "state.state") as i32),
        Some(DomainState::Shutoff)
    );
    assert!(!s.contains_key("cpu.time") && !s.contains_key("block.count"));
    assert_eq!(
        d.scheduler_type().await.expect("sched"),
        ("posix".into(), 9)
    );
    // The daemon runs in session mode: libvirt's session daemon tunes no cgroup.
    assert_eq!(
        bus_err(d.get_block_io_parameters(0).await.unwrap_err()),
        "unsupported configuration: Block I/O tuning is not available in session mode"
    );
    let t = d.get_block_io_tune("vda", 0).await.expect("iotune");
    assert_eq!(val_u64(&t, "total_bytes_sec"), 0);

    d.create(0).await.expect("create");
    let s = d.get_stats(0, 0).await.expect("stats");
    assert_eq!(
        DomainState::from_wire(val_u64(&s, "state.state") as i32),
        Some(DomainState::Running)
    );
    let cpu = val_u64(&s, "cpu.time");
    assert_eq!(cpu, val_u64(&s, "cpu.user") + val_u64(&s, "cpu.system"));
    assert_eq!(val_u64(&s, "balloon.maximum"), 64 * 1024);
    assert!(val_u64(&s, "balloon.rss") > 0);
    assert_eq!(val_u64(&s, "vcpu.current"), 2);
    assert_eq!(val_u64(&s, "vcpu.1.state"), 1);
    assert_eq!(val_u64(&s, "block.count"), 1);
    assert_eq!(val_str(&s, "block.0.name"), "vda");
    assert_eq!(val_str(&s, "block.0.path"), img.display().to_string());
    assert_eq!(val_u64(&s, "block.0.capacity"), 16 << 20);
    assert_eq!(val_u64(&s, "block.0.wr.bytes"), 0);
    assert_eq!(val_u64(&s, "net.count"), 1);
    assert_eq!(val_str(&s, "net.0.name"), "");
    // Groups asked for are the groups answered; unsupported ones fail when enforced.
    let s = d.get_stats(32, 0).await.expect("block only");
    assert!(s.contains_key("block.count") && !s.contains_key("state.state"));
    let e = bus_err(d.get_stats(128, 1 << 31).await.unwrap_err());
    assert!(e.contains("not supported"), "{e}");
    let all = qc.get_all_domain_stats(2, 1).await.expect("all stats");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "st");
    assert!(val_u64(&all[0].1, "cpu.time") >= cpu);

    let t = d.get_block_io_tune("vda", 0).await.expect("iotune");
    assert_eq!(val_u64(&t, "read_iops_sec"), 0);
    assert_eq!(val_str(&t, "group_name"), "");
    let e = bus_err(d.get_block_io_tune("vdz", 0).await.unwrap_err());
    assert!(e.contains("'vdz'"), "{e}");
    let e = bus_err(d.get_scheduler_parameters(0).await.unwrap_err());
    assert_eq!(
        e,
        "unsupported configuration: CPU tuning is not available in session mode"
    );
    assert!(d.scheduler_type().await.is_err());
    d.destroy(0).await.expect("destroy");
}
