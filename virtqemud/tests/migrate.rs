//! Live migration between two virtqemud instances, each on a private bus of its own (two
//! "nodes" on one machine), through libvirt-dbus's `MigrateToURI3` with PEER2PEER: the
//! source dials the destination's bus by `qemu+unix:///session?socket=ADDRESS`, the
//! guest's disk is shared by path, and QEMU's stream runs on 127.0.0.1 inside a network
//! namespace of the test (both daemons and their QEMUs run in it).
//!
//! `a_guest_migrates_and_keeps_running`: refusals that change nothing (no PEER2PEER, a
//! bad URI, a name taken at the destination), a slow migration's job info, AbortJob
//! bringing it back, then the migration: the guest goes on there (one boot, its agent
//! answers), events on both sides, the source's domain gone (UNDEFINE_SOURCE), and back
//! again with the source left defined and shut off. It prints the migration time and
//! the guest's downtime.
//!
//! `kill9_during_migration_keeps_the_guest_in_one_place`: either daemon is killed at a
//! random point of a migration and started again; after settling, the guest runs in
//! exactly one place. `VIRT_CHAOS_ROUNDS` (4 by default) and `VIRT_CHAOS_SEED`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use common::event::{DomainEvent, ResumedDetail, StartedDetail, StoppedDetail, SuspendedDetail};
use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use futures_util::StreamExt;
use support::{bus_err, domain, qcow2, test_guest, wait_serial};
use zbus::zvariant::{OwnedObjectPath, Value};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const LIVE: u32 = 1;
const P2P: u32 = 2;
const PERSIST_DEST: u32 = 8;
const UNDEFINE_SOURCE: u32 = 16;
const PAUSED: u32 = 32;
const COMPRESSED: u32 = 2048;
const AUTO_CONVERGE: u32 = 8192;

/// One node: a bus, a virtqemud on it, a client connection.
struct Node {
    bus: TestBus,
    daemon: Daemon,
    conn: zbus::Connection,
    qc: QemuConnectProxy<'static>,
    events: Arc<Mutex<Vec<(OwnedObjectPath, DomainEvent)>>>,
}

impl Node {
    async fn start(ns: &NetNs) -> Node {
        let bus = TestBus::start().expect("bus");
        let daemon = Daemon::builder(BIN, "virtqemud")
            .netns(ns)
            .spawn(&bus)
            .await
            .expect("virtqemud");
        let (conn, qc, events) = Self::client(&bus).await;
        Node {
            bus,
            daemon,
            conn,
            qc,
            events,
        }
    }

    async fn client(
        bus: &TestBus,
    ) -> (
        zbus::Connection,
        QemuConnectProxy<'static>,
        Arc<Mutex<Vec<(OwnedObjectPath, DomainEvent)>>>,
    ) {
        let conn = bus.connection().await.expect("conn");
        let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut stream = qc.receive_domain_event().await.expect("subscribe");
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                if let Ok(a) = ev.args() {
                    if let Some(e) = DomainEvent::from_wire(a.event, a.detail) {
                        sink.lock().expect("events").push((a.domain.clone(), e));
                    }
                }
            }
        });
        (conn, qc, events)
    }

    /// After a restart: a new client on the same bus.
    async fn reconnect(&mut self) {
        let (conn, qc, events) = Self::client(&self.bus).await;
        (self.conn, self.qc, self.events) = (conn, qc, events);
    }

    /// What the source dials to reach this node's virtqemud.
    fn uri(&self) -> String {
        format!("qemu+unix:///session?socket={}", self.bus.address)
    }

    fn events_of(&self, path: &OwnedObjectPath) -> Vec<DomainEvent> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, e)| *e)
            .collect()
    }

    /// The QEMUs of domain `name` this node's daemon started.
    fn qemus(&self, name: &str) -> Vec<u32> {
        qemu_pids(self.daemon.dirs.root.path(), name)
    }

    async fn dom(&self, name: &str) -> Option<DomainProxy<'static>> {
        let path = self.qc.domain_lookup_by_name(name).await.ok()?;
        Some(domain(&self.conn, &path).await)
    }

    /// (state, reason) of `name`, None when the node has no such domain.
    async fn state(&self, name: &str) -> Option<(i32, i32)> {
        self.dom(name).await?.get_state(0).await.ok()
    }
}

/// The QEMUs whose arguments name the guest `name` and the folder `root`.
fn qemu_pids(root: &Path, name: &str) -> Vec<u32> {
    let root = root.to_string_lossy().into_owned();
    let guest = format!("guest={name},");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a.starts_with(&guest)) && args.iter().any(|a| a.contains(&root))
        })
        .collect()
}

fn guest_xml(name: &str, disk: &Path, serial: &Path, memory_mib: u32) -> String {
    let guest = test_guest();
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>\
         <vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 tg.hostname={name}</cmdline></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='file'><source path='{}' append='on'/></serial>\
         <channel type='unix'><source mode='bind'/>\
         <target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display(),
        disk.display(),
        serial.display()
    )
}

fn boots(serial: &Path) -> usize {
    String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default())
        .matches("TINYGUEST-BOOTED")
        .count()
}

fn params(pairs: &[(&'static str, Value<'static>)]) -> HashMap<&'static str, Value<'static>> {
    pairs.iter().cloned().collect()
}

/// A typed parameter's number, single- or double-wrapped.
fn number(p: &common::typed_params::TypedParams, k: &str) -> u64 {
    let v: &Value = p.get(k).unwrap_or_else(|| panic!("no '{k}' in {p:?}"));
    let v = match v {
        Value::Value(inner) => &**inner,
        other => other,
    };
    match v {
        Value::I32(n) => *n as u64,
        other => u64::try_from(other).unwrap_or(0),
    }
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_migrates_and_keeps_running() {
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let a = Node::start(&ns).await;
    let b = Node::start(&ns).await;
    let shared = tempfile::tempdir().expect("shared storage");
    let disk = qcow2(shared.path(), "migrant.qcow2", "16M");
    let serial = shared.path().join("migrant.serial");
    let xml = guest_xml("migrant", &disk, &serial, 128);
    let path = a.qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&a.conn, &path).await;
    let mut agent = d.receive_agent_event().await.expect("subscribe");
    d.create(0).await.expect("create");
    tokio::time::timeout(Duration::from_secs(120), agent.next())
        .await
        .expect("agent within 120 s");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(60)).await;
    assert_eq!(d.get_hostname(0).await.expect("hostname"), "migrant");

    refusals_change_nothing(&a, &b, &d, &disk, &serial).await;
    abort_brings_it_back(&a, &b, &d).await;

    // The migration: the guest goes on at B; A's domain is gone.
    let mut iterations = d.receive_migration_iteration().await.expect("subscribe");
    let mut completed = d.receive_job_completed().await.expect("subscribe");
    let flags = LIVE | P2P | PERSIST_DEST | UNDEFINE_SOURCE;
    let begun = Instant::now();
    d.migrate_to_uri3(
        &b.uri(),
        &params(&[("bandwidth", Value::from(10_000u64))]),
        flags,
    )
    .await
    .expect("migrate");
    let took = begun.elapsed();
    let done = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .expect("JobCompleted")
        .expect("stream");
    let stats = done.args().expect("args").params;
    let pass = tokio::time::timeout(Duration::from_secs(5), iterations.next())
        .await
        .expect("MigrationIteration")
        .expect("stream");
    assert!(pass.args().expect("args").iteration >= 1);
    println!(
        "migration of the 128 MiB tiny guest: {} ms (the call), downtime {} ms, {} bytes of {} sent",
        took.as_millis(),
        number(&stats, "downtime"),
        number(&stats, "memory_processed"),
        number(&stats, "memory_total"),
    );
    assert_eq!(a.state("migrant").await, None, "undefined on A");
    assert!(a.qemus("migrant").is_empty(), "no QEMU on A");
    assert_eq!(
        b.state("migrant").await,
        Some((1, 2)),
        "running, migrated, on B"
    );
    assert_eq!(b.qemus("migrant").len(), 1);
    let bd = b.dom("migrant").await.expect("on B");
    assert!(bd.persistent().await.expect("persistent"), "PERSIST_DEST");
    assert_eq!(bd.get_hostname(0).await.expect("B's agent"), "migrant");
    assert_eq!(
        boots(&serial),
        1,
        "the guest went on; it did not boot again"
    );
    let bpath = b.qc.domain_lookup_by_name("migrant").await.expect("path");
    wait_for("A's events", Duration::from_secs(10), || {
        a.events_of(&path).ends_with(&[
            DomainEvent::Suspended(SuspendedDetail::Migrated),
            DomainEvent::Stopped(StoppedDetail::Migrated),
            DomainEvent::Undefined(common::event::UndefinedDetail::Removed),
        ])
    })
    .await;
    let on_b = b.events_of(&bpath);
    for e in [
        DomainEvent::Started(StartedDetail::Migrated),
        DomainEvent::Resumed(ResumedDetail::Migrated),
        DomainEvent::Defined(common::event::DefinedDetail::Added),
    ] {
        assert!(on_b.contains(&e), "{e:?} on B: {on_b:?}");
    }

    // And back, without flags beyond LIVE: B keeps its definition, shut off, migrated.
    bd.migrate_to_uri3(&a.uri(), &params(&[]), LIVE | P2P)
        .await
        .expect("migrate back");
    assert_eq!(
        b.state("migrant").await,
        Some((5, 4)),
        "shut off, migrated, on B"
    );
    assert!(b.qemus("migrant").is_empty());
    assert_eq!(a.state("migrant").await, Some((1, 2)), "running on A");
    let ad = a.dom("migrant").await.expect("on A");
    assert!(
        !ad.persistent().await.expect("persistent"),
        "transient on A"
    );
    assert_eq!(ad.get_hostname(0).await.expect("A's agent"), "migrant");
    assert_eq!(boots(&serial), 1);

    // Once more with PAUSED, COMPRESSED and AUTO_CONVERGE: B's defined domain takes it,
    // paused until resumed; A's transient one is gone.
    let flags = LIVE | P2P | PAUSED | COMPRESSED | AUTO_CONVERGE;
    ad.migrate_to_uri3(&b.uri(), &params(&[]), flags)
        .await
        .expect("migrate, paused there");
    assert_eq!(a.state("migrant").await, None, "A's transient domain gone");
    assert_eq!(
        b.state("migrant").await,
        Some((3, 1)),
        "paused by the user's wish"
    );
    let bd = b.dom("migrant").await.expect("on B");
    assert!(
        bd.persistent().await.expect("persistent"),
        "B's definition kept"
    );
    bd.resume().await.expect("resume");
    assert_eq!(bd.get_hostname(0).await.expect("B's agent"), "migrant");
    assert_eq!(boots(&serial), 1);
    bd.destroy(0).await.expect("destroy");
    drop((a, b, ns));
}

/// The guest runs on A as booted, with one QEMU, and B has none.
async fn unchanged(a: &Node, b: &Node, why: &str) {
    assert_eq!(
        a.state("migrant").await,
        Some((1, 1)),
        "{why}: runs on A as booted"
    );
    assert_eq!(a.qemus("migrant").len(), 1, "{why}: one QEMU on A");
    assert!(b.qemus("migrant").is_empty(), "{why}: no QEMU on B");
}

/// Refusals that change nothing (the guest runs on A with one QEMU, none on B), and the
/// knobs before a migration.
async fn refusals_change_nothing(
    a: &Node,
    b: &Node,
    d: &DomainProxy<'_>,
    disk: &Path,
    serial: &Path,
) {
    // Refusals that change nothing.
    let none = params(&[]);
    let e = bus_err(d.migrate_to_uri3(&b.uri(), &none, LIVE).await);
    assert_eq!(
        e,
        "argument unsupported: direct migration is not supported by the source host"
    );
    unchanged(a, b, "no PEER2PEER").await;
    let e = bus_err(d.migrate_to_uri3("xen:///system", &none, LIVE | P2P).await);
    assert!(
        e.starts_with("operation failed: Failed to connect to remote libvirt URI xen:///system"),
        "{e}"
    );
    let e = bus_err(
        d.migrate_to_uri3(
            "qemu+unix:///session?socket=/nonexistent/bus",
            &none,
            LIVE | P2P,
        )
        .await,
    );
    assert!(e.contains("Failed to connect to remote libvirt URI"), "{e}");
    unchanged(a, b, "bad URIs").await;
    let other = guest_xml("migrant", disk, serial, 64);
    let clash =
        b.qc.domain_define_xml(&other)
            .await
            .expect("a namesake on B");
    let e = bus_err(d.migrate_to_uri3(&b.uri(), &none, LIVE | P2P).await);
    assert!(
        e.contains("domain 'migrant' already exists with uuid"),
        "{e}"
    );
    unchanged(a, b, "a name taken at the destination").await;
    assert_eq!(
        b.state("migrant").await,
        Some((5, 0)),
        "B's namesake untouched"
    );
    domain(&b.conn, &clash)
        .await
        .undefine(0)
        .await
        .expect("undefine the namesake");
    let e = bus_err(
        d.migrate_to_uri3(
            &b.uri(),
            &params(&[("nonsense", Value::from(1u64))]),
            LIVE | P2P,
        )
        .await,
    );
    assert_eq!(
        e,
        "argument unsupported: parameter 'nonsense' not supported"
    );

    // The knobs: no limit by default, as libvirt; downtime and compression cache to QEMU.
    assert_eq!(
        d.migrate_get_max_speed(0).await.expect("speed"),
        8796093022207
    );
    d.migrate_set_max_downtime(400, 0).await.expect("downtime");
    d.migrate_set_compression_cache(8 << 20, 0)
        .await
        .expect("cache");
    assert_eq!(
        d.migrate_get_compression_cache(0).await.expect("cache"),
        8 << 20
    );
    assert!(bus_err(d.abort_job().await).contains("no job is active"));
    assert!(
        bus_err(d.migrate_start_post_copy(0).await).contains("outgoing migration is in progress")
    );
}

/// A slow migration's job info mid-way, then AbortJob brings it back.
async fn abort_brings_it_back(a: &Node, b: &Node, d: &DomainProxy<'static>) {
    // A slow migration: its job info mid-way, then AbortJob brings it back.
    d.migrate_set_max_speed(1, 0).await.expect("1 MiB/s");
    assert_eq!(d.migrate_get_max_speed(0).await.expect("speed"), 1);
    let (dd, uri) = (d.clone(), b.uri());
    let slow =
        tokio::spawn(async move { dd.migrate_to_uri3(&uri, &params(&[]), LIVE | P2P).await });
    let start = Instant::now();
    let info = loop {
        let i = d.get_job_info().await.expect("job info");
        if i.0 == 2 && i.4 > 0 {
            break i;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no job progress: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(info.3 >= info.4, "total {} ≥ processed {}", info.3, info.4);
    let (kind, stats) = d.get_job_stats(0).await.expect("job stats");
    assert_eq!(kind, 2, "unbounded: a migration");
    assert_eq!(number(&stats, "operation"), 5, "migration out");
    assert!(number(&stats, "memory_total") > 0);
    assert!(b.qemus("migrant").len() == 1, "B's incoming QEMU waits");
    assert_eq!(b.state("migrant").await, Some((3, 2)), "paused, migration");
    d.abort_job().await.expect("abort");
    let e = bus_err(slow.await.expect("join"));
    assert_eq!(
        e,
        "operation aborted: job 'migration out' canceled by client"
    );
    unchanged(a, b, "an aborted migration").await;
    wait_for("B's incoming QEMU gone", Duration::from_secs(10), || {
        b.qemus("migrant").is_empty()
    })
    .await;
    assert_eq!(b.state("migrant").await, None, "B's transient domain gone");
}

/// The migration phase the killed daemon's status record held for `name`: "Out/Perform",
/// "In/Finishing", ..., "none" (no migration recorded), "no run" (no status file).
fn recorded_phase(runtime: &Path, name: &str) -> String {
    let Ok(text) = std::fs::read(runtime.join("qemu").join(format!("{name}.json"))) else {
        return "no run".into();
    };
    let st: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    match st.get("migration").and_then(|m| m.as_object()) {
        Some(m) => m
            .iter()
            .next()
            .map(|(side, v)| format!("{side}/{}", v["phase"].as_str().unwrap_or("?")))
            .unwrap_or_else(|| "?".into()),
        None => "none".into(),
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Polls until the guest runs in exactly one place with one QEMU in all, and says where
/// (0 = A, 1 = B), or what is wrong after `within`.
async fn settled(nodes: &[Node; 2], name: &str, within: Duration) -> Result<usize, String> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            seen.push((n.state(name).await, n.qemus(name).len()));
        }
        let running: Vec<usize> = (0..2)
            .filter(|i| seen[*i].0.map(|s| s.0) == Some(1))
            .collect();
        let qemus: usize = seen.iter().map(|s| s.1).sum();
        if running.len() == 1 && qemus == 1 && seen[running[0]].1 == 1 {
            return Ok(running[0]);
        }
        if start.elapsed() > within {
            return Err(format!(
                "not settled: (state, QEMUs) on A {:?}, on B {:?}",
                seen[0], seen[1]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_migration_keeps_the_guest_in_one_place() {
    let rounds: usize = std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("VIRT_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261201);
    let mut rng = Rng(seed);
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let mut nodes = [Node::start(&ns).await, Node::start(&ns).await];
    let shared = tempfile::tempdir().expect("shared storage");
    let disk = qcow2(shared.path(), "storm.qcow2", "16M");
    let serial = shared.path().join("storm.serial");
    let xml = guest_xml("storm", &disk, &serial, 128);
    nodes[0]
        .qc
        .domain_create_xml(&xml, 0)
        .await
        .expect("create");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
    let mut here = 0;
    let (mut broken, mut cut, mut moved) = (0, 0, 0);
    let mut phases: std::collections::BTreeMap<String, usize> = Default::default();
    for round in 0..rounds {
        let there = 1 - here;
        let victim = rng.below(2) as usize;
        let delay = Duration::from_millis(rng.below(3000));
        let d = nodes[here]
            .dom("storm")
            .await
            .expect("the guest where it runs");
        // 40 MiB/s: the stream takes about a second, so kills land before, in and after it.
        let p = params(&[("bandwidth", Value::from(40u64))]);
        let uri = nodes[there].uri();
        let call = tokio::spawn(async move { d.migrate_to_uri3(&uri, &p, LIVE | P2P).await });
        tokio::time::sleep(delay).await;
        let finished = call.is_finished();
        nodes[victim].daemon.kill9();
        let phase = recorded_phase(&nodes[victim].daemon.dirs.runtime, "storm");
        *phases.entry(phase.clone()).or_insert(0) += 1;
        // Started again at once, as a service manager would.
        let restarted = nodes[victim]
            .daemon
            .restart_builder()
            .spawn(&nodes[victim].bus)
            .await
            .expect("restart");
        nodes[victim].daemon = restarted;
        nodes[victim].reconnect().await;
        let replied = tokio::time::timeout(Duration::from_secs(150), call)
            .await
            .ok()
            .and_then(|j| j.ok())
            .map(|r| r.is_ok());
        let verdict = match settled(&nodes, "storm", Duration::from_secs(120)).await {
            Ok(at) => {
                if replied == Some(true) && at != there {
                    broken += 1;
                    format!(
                        "the call succeeded but the guest runs on {}",
                        ["A", "B"][at]
                    )
                } else {
                    moved += usize::from(at == there);
                    here = at;
                    "ok".to_owned()
                }
            }
            Err(e) => {
                broken += 1;
                e
            }
        };
        cut += usize::from(!finished && replied != Some(true));
        eprintln!(
            "round {round}: killed the {} ({}) after {delay:?} at {phase} (call replied: {replied:?}); \
             guest on {}: {verdict}",
            if victim == there { "destination" } else { "source" },
            ["A", "B"][victim],
            ["A", "B"][here],
        );
    }
    eprintln!("{rounds} kills, {cut} migrations cut, {moved} moved, {broken} broken; phases at the kill: {phases:?}");
    assert_eq!(boots(&serial), 1, "the guest never booted again");
    assert_eq!(broken, 0, "the guest was not in exactly one place");
    if let Some(d) = nodes[here].dom("storm").await {
        let _ = d.destroy(0).await;
    }
}

/// The figure: the tiny guest (128 MiB, booted, idle) migrated back and forth
/// `VIRT_MIGRATE_ROUNDS` times (6 by default) with LIVE and no bandwidth limit; prints
/// each migration's time (the MigrateToURI3 call, Prepare to Confirm) and the guest's
/// downtime as QEMU measured it, then min / median / max. Asserts nothing of time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_time_and_downtime() {
    let rounds: usize = std::env::var("VIRT_MIGRATE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let nodes = [Node::start(&ns).await, Node::start(&ns).await];
    let shared = tempfile::tempdir().expect("shared storage");
    let disk = qcow2(shared.path(), "figure.qcow2", "16M");
    let serial = shared.path().join("figure.serial");
    let xml = guest_xml("figure", &disk, &serial, 128);
    nodes[0]
        .qc
        .domain_create_xml(&xml, 0)
        .await
        .expect("create");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
    let (mut times, mut downtimes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (from, to) = (&nodes[round % 2], &nodes[1 - round % 2]);
        let d = from.dom("figure").await.expect("the guest");
        // The source's domain is transient: its statistics come with JobCompleted.
        let mut completed = d.receive_job_completed().await.expect("subscribe");
        let begun = Instant::now();
        d.migrate_to_uri3(&to.uri(), &params(&[]), LIVE | P2P)
            .await
            .expect("migrate");
        let took = begun.elapsed().as_millis() as u64;
        let done = tokio::time::timeout(Duration::from_secs(10), completed.next())
            .await
            .expect("JobCompleted")
            .expect("stream");
        let downtime = number(&done.args().expect("args").params, "downtime");
        println!("round {round}: {took} ms, downtime {downtime} ms");
        times.push(took);
        downtimes.push(downtime);
    }
    let summary = |v: &mut Vec<u64>| {
        v.sort_unstable();
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    println!(
        "{rounds} migrations of the 128 MiB tiny guest: time min/median/max {:?} ms, downtime {:?} ms",
        summary(&mut times),
        summary(&mut downtimes)
    );
    assert_eq!(boots(&serial), 1, "the guest never booted again");
    if let Some(d) = nodes[rounds % 2].dom("figure").await {
        let _ = d.destroy(0).await;
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// The migration phase recorded on disk for `name` under `node`'s runtime folder.
fn phase_of(node: &Node, name: &str) -> String {
    recorded_phase(&node.daemon.dirs.runtime, name)
}

async fn wait_phase(node: &Node, name: &str, want: &str) {
    let start = Instant::now();
    while phase_of(node, name) != want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "phase {want} never recorded: {}",
            phase_of(node, name)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The narrow windows around Finish, made on purpose: the destination daemon is stopped
/// (SIGSTOP) while QEMU streams, so the source waits in Finish. (1) The source is
/// killed there and restarted after the destination goes on: the destination ran the
/// guest, the restarted source learns it and ends its QEMU. (2) The destination is
/// killed there instead (its incoming QEMU never got Finish): the source's Finish loses
/// its reply, it asks the restarted destination, which ended its QEMU, and the guest
/// resumes on the source. Either way the guest runs in exactly one place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_finish_settles_to_one_place() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let mut nodes = [Node::start(&ns).await, Node::start(&ns).await];
    let shared = tempfile::tempdir().expect("shared storage");
    let disk = qcow2(shared.path(), "cut.qcow2", "16M");
    let serial = shared.path().join("cut.serial");
    let xml = guest_xml("cut", &disk, &serial, 128);
    nodes[0]
        .qc
        .domain_create_xml(&xml, 0)
        .await
        .expect("create");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
    let mut here = 0;
    for (case, kill_source) in [(1, true), (2, false)] {
        let (src, dst) = (here, 1 - here);
        let d = nodes[src].dom("cut").await.expect("the guest");
        d.migrate_set_max_speed(2, 0).await.expect("slow");
        let uri = nodes[dst].uri();
        let dd = d.clone();
        let call =
            tokio::spawn(async move { dd.migrate_to_uri3(&uri, &params(&[]), LIVE | P2P).await });
        // Prepare has answered once the source's QEMU streams (its figures grow; they
        // may be the last migration's before).
        wait_phase(&nodes[dst], "cut", "In/Prepared").await;
        let processed = || async { d.get_job_info().await.map(|i| i.4).unwrap_or(0) };
        let first = processed().await;
        let start = Instant::now();
        while processed().await <= first {
            assert!(start.elapsed() < Duration::from_secs(60), "no stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dest_pid = Pid::from_raw(nodes[dst].daemon.pid as i32);
        kill(dest_pid, Signal::SIGSTOP).expect("stop the destination daemon");
        d.migrate_set_max_speed(100_000, 0).await.expect("fast now");
        wait_phase(&nodes[src], "cut", "Out/Finish").await;
        let victim = if kill_source { src } else { dst };
        nodes[victim].daemon.kill9();
        if kill_source {
            kill(dest_pid, Signal::SIGCONT).expect("continue the destination daemon");
        }
        let restarted = nodes[victim]
            .daemon
            .restart_builder()
            .spawn(&nodes[victim].bus)
            .await
            .expect("restart");
        nodes[victim].daemon = restarted;
        nodes[victim].reconnect().await;
        let replied = tokio::time::timeout(Duration::from_secs(120), call)
            .await
            .expect("the call ends")
            .expect("join");
        let at = settled(&nodes, "cut", Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "case {case}: {e}\nA's log:\n{}\nB's log:\n{}",
                    tail(&nodes[0].daemon.log_text()),
                    tail(&nodes[1].daemon.log_text())
                )
            });
        if kill_source {
            // The stopped destination finds two things waiting when it goes on: the
            // source's Finish and the news that the source's bus name is gone.
            // Whichever it takes first decides where the guest runs (Finish: there, and
            // the restarted source learns it by Recover; the news: the incoming QEMU
            // ends and the restarted source resumes the guest). Both are one place.
            assert!(replied.is_err(), "case 1: the killed source never replied");
        } else {
            assert_eq!(at, src, "case 2: back on the source");
            let e = bus_err(replied);
            assert!(e.contains("Failed to connect to remote libvirt URI"), "{e}");
            assert_eq!(
                nodes[src].state("cut").await,
                Some((1, 6)),
                "running, migration canceled"
            );
        }
        assert_eq!(
            phase_of(&nodes[at], "cut"),
            "none",
            "case {case}: settled on disk"
        );
        eprintln!("case {case}: the guest runs on {}", ["A", "B"][at]);
        for (n, node) in nodes.iter().enumerate() {
            for l in node.daemon.log_text().lines() {
                if [
                    "Recover",
                    "asking",
                    "answered",
                    "ending",
                    "undoing",
                    "finished",
                    "runs the guest",
                ]
                .iter()
                .any(|w| l.contains(w))
                {
                    eprintln!(
                        "  {}: {}",
                        ["A", "B"][n],
                        l.chars().take(200).collect::<String>()
                    );
                }
            }
        }
        here = at;
    }
    assert_eq!(boots(&serial), 1, "the guest never booted again");
    let at = settled(&nodes, "cut", Duration::from_secs(5))
        .await
        .expect("settled");
    if let Some(d) = nodes[at].dom("cut").await {
        let _ = d.destroy(0).await;
    }
}
