//! Changes short of a redefinition, through virtqemud's D-Bus API: metadata (title,
//! description, applications' namespaced elements) of the config and of a running QEMU,
//! with their MetadataChange signals, kept across a daemon killed with -9; and the CPU
//! model names of the emulator.

use std::time::Duration;

mod support;

use futures_util::StreamExt;
use support::{bus_err, domain, qcow2, qemu_pid};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const DESCRIPTION: i32 = 0;
const TITLE: i32 = 1;
const ELEMENT: i32 = 2;
const LIVE: u32 = 1;
const CONFIG: u32 = 2;
const URI: &str = "http://app.example.org/v1/";

fn xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

async fn next_change(
    s: &mut common::proxies::libvirt::domain::MetadataChangeStream,
) -> (i32, String) {
    let sig = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("MetadataChange within 10 s")
        .expect("stream open");
    let a = sig.args().expect("args");
    (a.r#type, a.nsuri.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_of_config_and_live_domain_survives_kill9() {
    let mut q = support::qemud(BIN).await;
    let path = q.qc.domain_define_xml(&xml("meta")).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let mut changes = d.receive_metadata_change().await.expect("subscribe");

    // Nothing yet: libvirt's "metadata not found".
    assert_eq!(
        bus_err(d.get_metadata(TITLE, "", 0).await),
        "metadata not found: Requested metadata element is not present"
    );
    // Inactive: "current" is the config.
    d.set_metadata(TITLE, "Web server", "", "", 0)
        .await
        .expect("title");
    assert_eq!(next_change(&mut changes).await, (TITLE, String::new()));
    d.set_metadata(DESCRIPTION, "Serves\nthe web", "", "", 0)
        .await
        .expect("description");
    assert_eq!(
        next_change(&mut changes).await,
        (DESCRIPTION, String::new())
    );
    d.set_metadata(ELEMENT, "<role tier='front'>web</role>", "app", URI, 0)
        .await
        .expect("element");
    assert_eq!(next_change(&mut changes).await, (ELEMENT, URI.to_owned()));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );
    assert_eq!(
        d.get_metadata(DESCRIPTION, "", CONFIG).await.expect("get"),
        "Serves\nthe web"
    );
    assert_eq!(
        d.get_metadata(ELEMENT, URI, 0).await.expect("get"),
        format!("<app:role xmlns:app='{URI}' tier='front'>web</app:role>")
    );
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(xml.contains("<title>Web server</title>"), "{xml}");
    assert!(
        xml.contains(&format!("<app:role xmlns:app='{URI}'")),
        "{xml}"
    );

    // Refused, and nothing changed: a title of two lines, LIVE of an inactive domain,
    // an element without its namespace, both LIVE and CONFIG for a read.
    assert!(bus_err(d.set_metadata(TITLE, "a\nb", "", "", 0).await).contains("newlines"));
    assert_eq!(
        bus_err(d.set_metadata(TITLE, "x", "", "", LIVE).await),
        "Requested operation is not valid: domain is not running"
    );
    assert!(bus_err(d.set_metadata(ELEMENT, "<a/>", "k", "", 0).await).contains("uri"));
    assert!(bus_err(d.get_metadata(TITLE, "", LIVE | CONFIG).await).contains("exclusive"));
    assert!(bus_err(d.set_metadata(7, "x", "", "", 0).await).contains("unknown metadata type"));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );

    // Running: "current" is the live definition; the config keeps its own.
    d.create(0).await.expect("create");
    d.set_metadata(TITLE, "Web server (draining)", "", "", 0)
        .await
        .expect("live title");
    assert_eq!(next_change(&mut changes).await, (TITLE, String::new()));
    d.set_metadata(ELEMENT, "", "", URI, LIVE | CONFIG)
        .await
        .expect("remove element");
    assert_eq!(next_change(&mut changes).await, (ELEMENT, URI.to_owned()));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("live"),
        "Web server (draining)"
    );
    assert_eq!(
        d.get_metadata(TITLE, "", CONFIG).await.expect("config"),
        "Web server"
    );
    assert!(d.get_metadata(ELEMENT, URI, LIVE).await.is_err());
    assert!(d.get_metadata(ELEMENT, URI, CONFIG).await.is_err());

    // kill -9 and restart: the live definition comes back from the status file, the
    // config from its file.
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert!(d.active().await.expect("active"));
    assert_eq!(
        d.get_metadata(TITLE, "", LIVE).await.expect("live"),
        "Web server (draining)"
    );
    assert_eq!(
        d.get_metadata(TITLE, "", CONFIG).await.expect("config"),
        "Web server"
    );
    assert_eq!(
        d.get_metadata(DESCRIPTION, "", CONFIG)
            .await
            .expect("config"),
        "Serves\nthe web"
    );
    d.destroy(0).await.expect("destroy");
    // Shut off, the domain is its config again.
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_model_names_come_from_the_emulator() {
    let q = support::qemud(BIN).await;
    let models = q.qc.get_cpu_model_names("x86_64", 0).await.expect("x86_64");
    for want in ["qemu64", "Skylake-Client"] {
        assert!(
            models.iter().any(|m| m == want),
            "{want} missing: {models:?}"
        );
    }
    assert!(!models.iter().any(|m| m == "host" || m == "max"));
    assert_eq!(
        q.qc.get_cpu_model_names("i686", 0).await.expect("i686"),
        models
    );
    assert_eq!(
        bus_err(q.qc.get_cpu_model_names("z80", 0).await),
        "invalid argument: cannot find architecture z80"
    );
    assert!(bus_err(q.qc.get_cpu_model_names("aarch64", 0).await).contains("aarch64"));
    assert!(bus_err(q.qc.get_cpu_model_names("x86_64", 1).await).contains("flags"));
}

/// A VNC client that gets through the RFB 3.8 handshake (no authentication) and
/// leaves.
async fn vnc_client(path: &std::path::Path) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .expect("vnc socket");
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await.expect("server version");
    assert_eq!(&version, b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").await.expect("client version");
    let mut n = [0u8; 1];
    s.read_exact(&mut n).await.expect("security types");
    let mut types = vec![0u8; usize::from(n[0])];
    s.read_exact(&mut types).await.expect("security types");
    assert!(types.contains(&1), "no 'None' security: {types:?}");
    s.write_all(&[1]).await.expect("choose None");
    let mut result = [0u8; 4];
    s.read_exact(&mut result).await.expect("security result");
    assert_eq!(result, [0, 0, 0, 0]);
    s.write_all(&[1]).await.expect("ClientInit, shared");
    let mut init = [0u8; 24];
    s.read_exact(&mut init).await.expect("ServerInit");
}

/// How many vCPUs QEMU reports (`vcpu.N.state` come from query-cpus-fast, not from
/// the definition).
async fn vcpus_in_qemu(d: &common::proxies::qemu::DomainProxy<'_>) -> usize {
    let s = d.get_stats(8, 0).await.expect("vcpu stats");
    s.keys()
        .filter(|k| k.starts_with("vcpu.") && k.ends_with(".state"))
        .count()
}

/// vCPUs and memory of the config and of a running QEMU (hotplug, balloon), the
/// operations on a running domain (NMI, keys, wake-up) and its control, job and disk
/// error reports, kept across a daemon killed with -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpus_memory_and_control_of_a_running_domain() {
    const MAXIMUM: u32 = 4;
    let mut q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let img = qcow2(scratch.path(), "disk.qcow2", "1M");
    let vnc = scratch.path().join("vnc.sock");
    let x = format!(
        "<domain type='qemu'><name>tune</name><memory unit='MiB'>64</memory>\
         <vcpu current='1'>2</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <graphics type='vnc'><listen type='socket' socket='{}'/></graphics>\
         <memballoon model='virtio'/></devices></domain>",
        img.display(),
        vnc.display()
    );
    let path = q.qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&q.conn, &path).await;

    // The config: current 1 of at most 2; the maximum raised to 4.
    assert_eq!(d.get_vcpus(0).await.expect("vcpus"), 1);
    assert_eq!(d.get_vcpus(MAXIMUM).await.expect("max"), 2);
    assert!(bus_err(d.set_vcpus(3, 0).await).contains("greater than max allowable vcpus"));
    assert!(bus_err(d.set_vcpus(0, 0).await).contains("zero"));
    d.set_vcpus(4, CONFIG | MAXIMUM).await.expect("maximum");
    assert_eq!(d.get_vcpus(CONFIG | MAXIMUM).await.expect("max"), 4);
    assert_eq!(d.get_vcpus(CONFIG).await.expect("current"), 1);
    assert!(bus_err(d.set_vcpus(2, LIVE).await).contains("not running"));
    d.set_memory(48 * 1024, CONFIG)
        .await
        .expect("config memory");
    assert!(bus_err(d.set_memory(128 * 1024, 0).await).contains("higher than max memory"));
    assert!(d
        .get_xml_desc(2)
        .await
        .expect("xml")
        .contains("<currentMemory unit='KiB'>49152</currentMemory>"));

    // Running: QEMU starts with 1 of 4 and takes two more.
    d.create(0).await.expect("create");
    assert_eq!(vcpus_in_qemu(&d).await, 1);
    d.set_vcpus(3, LIVE).await.expect("hotplug");
    assert_eq!(vcpus_in_qemu(&d).await, 3);
    assert_eq!(d.get_vcpus(LIVE).await.expect("live"), 3);
    assert_eq!(d.get_vcpus(CONFIG).await.expect("config"), 1);
    assert!(bus_err(d.set_vcpus(5, LIVE).await).contains("5 > 4"));
    assert!(bus_err(d.set_vcpus(4, LIVE | MAXIMUM).await).contains("maximum"));
    // No guest OS to give a vCPU back: QEMU refuses the unplug (with no guest that
    // switched its ACPI to the modern CPU hotplug interface) or the guest never
    // answers; either way the error says so and nothing changed.
    let e = bus_err(d.set_vcpus(2, LIVE).await);
    assert!(e.contains("device_del") || e.contains("timed out"), "{e}");
    assert_eq!(vcpus_in_qemu(&d).await, 3);
    assert_eq!(d.get_vcpus(0).await.expect("live"), 3);

    // The balloon's target, and how often it reports.
    d.set_memory(32 * 1024, LIVE).await.expect("balloon");
    assert!(bus_err(d.set_memory(65 * 1024, LIVE).await).contains("higher than max memory"));
    assert!(bus_err(d.set_memory(65536, LIVE | MAXIMUM).await).contains("maximum memory"));
    d.set_memory_stats_period(5, LIVE).await.expect("period");
    assert!(bus_err(d.set_memory_stats_period(-1, LIVE).await).contains("negative"));
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(
        live.contains("<currentMemory unit='KiB'>32768</currentMemory>"),
        "{live}"
    );
    assert!(live.contains("<stats period='5'/>"), "{live}");

    // What a running domain answers.
    d.inject_nmi(0).await.expect("nmi");
    d.send_key(0, 50, vec![29, 56, 111], 0)
        .await
        .expect("ctrl-alt-del");
    assert!(bus_err(d.send_key(7, 0, vec![4], 0).await).contains("usb"));
    assert!(bus_err(d.send_key(0, 0, vec![1; 17], 0).await).contains("too many"));
    assert!(bus_err(d.pm_wakeup(0).await).contains("not in PM suspended state"));
    assert_eq!(d.get_control_info(0).await.expect("control"), (0, 0, 0));
    let job = d.get_job_info().await.expect("job");
    assert_eq!(job.0, 0, "no job");
    assert_eq!(
        bus_err(d.abort_job().await),
        "Requested operation is not valid: no job is active on the domain"
    );
    assert_eq!(d.get_disk_errors(0).await.expect("disk errors"), vec![]);

    // Signals of the domain's own: a reset is libvirt's Reboot event, a VNC client's
    // connection, handshake and departure are Graphics phases 0, 1 and 2.
    let mut reboots = d.receive_reboot().await.expect("subscribe");
    d.reset(0).await.expect("reset");
    tokio::time::timeout(Duration::from_secs(10), reboots.next())
        .await
        .expect("Reboot within 10 s")
        .expect("stream");
    let mut graphics = d.receive_graphics().await.expect("subscribe");
    vnc_client(&vnc).await;
    for want in [0, 1, 2] {
        let sig = tokio::time::timeout(Duration::from_secs(10), graphics.next())
            .await
            .expect("Graphics within 10 s")
            .expect("stream");
        let a = sig.args().expect("args");
        assert_eq!(a.phase, want);
        assert_eq!(a.local.0, 2, "a Unix socket: {:?}", a.local);
        assert_eq!(a.auth_scheme, "none");
    }

    // kill -9 and restart: the live counts come back from the status file.
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(d.get_vcpus(LIVE).await.expect("live"), 3);
    assert_eq!(vcpus_in_qemu(&d).await, 3);
    assert!(d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains("<currentMemory unit='KiB'>32768</currentMemory>"));

    d.destroy(0).await.expect("destroy");
    assert!(bus_err(d.get_control_info(0).await).contains("not running"));
    assert!(bus_err(d.get_job_info().await).contains("not running"));
    assert!(bus_err(d.inject_nmi(0).await).contains("not running"));
    assert_eq!(d.get_vcpus(0).await.expect("config"), 1);
    drop(daemon);
}

/// `<vcpu cpuset>`: QEMU and every thread it starts run on those host CPUs only (as
/// libvirt pins them); a set of CPUs this host lacks is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpu_cpuset_pins_qemu() {
    let q = support::qemud(BIN).await;
    let x = |name: &str, set: &str| {
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu cpuset='{set}'>2</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>\
             </domain>"
        )
    };
    let path =
        q.qc.domain_define_xml(&x("pinned", "0"))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    let threads = thread_cpus(qemu_pid(&q.daemon.dirs.runtime, "pinned"));
    assert!(threads.len() >= 3, "QEMU's threads: {threads:?}");
    for (name, cpus) in &threads {
        assert_eq!(cpus, "0", "thread {name}");
    }
    d.destroy(0).await.expect("destroy");
    let path =
        q.qc.domain_define_xml(&x("nowhere", "4000"))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    assert!(bus_err(d.create(0).await).contains("names no CPU this host"));
}

/// The CPUs each thread of QEMU `pid` may run on, by thread name (`CPU 0/TCG`, ...).
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            (comm.trim().to_owned(), allowed)
        })
        .collect()
}

/// `<cputune>` pins applied at start, then changed through PinVcpu and PinEmulator,
/// live and in the config, and reported by GetVcpuPinInfo and GetEmulatorPinInfo. Needs
/// a host with two CPUs or more (these machines have two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpu_and_emulator_pinning() {
    let q = support::qemud(BIN).await;
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>pins</name><memory unit='MiB'>64</memory>\
             <vcpu>2</vcpu><cputune><vcpupin vcpu='1' cpuset='0'/><emulatorpin cpuset='1'/>\
             </cputune><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    // Inactive: what the config pins.
    assert_eq!(
        d.get_vcpu_pin_info(0).await.expect("pins"),
        vec![vec![true, true], vec![true, false]]
    );
    assert_eq!(
        d.get_emulator_pin_info(0).await.expect("emulator"),
        vec![false, true]
    );
    d.create(0).await.expect("create");
    let pid = qemu_pid(&q.daemon.dirs.runtime, "pins");
    let threads = thread_cpus(pid);
    for (name, cpus) in &threads {
        let want = match name.as_str() {
            "CPU 0/TCG" => "0-1",
            "CPU 1/TCG" => "0",
            _ => "1",
        };
        assert_eq!(cpus, want, "{name}: {threads:?}");
    }
    assert!(threads.iter().any(|t| t.0 == "CPU 1/TCG"), "{threads:?}");
    // Running: the threads' own affinity, changed live, told by the Tunable signal.
    let mut tunables = d.receive_tunable().await.expect("subscribe");
    d.pin_vcpu(0, vec![false, true], LIVE)
        .await
        .expect("pin vcpu 0");
    let sig = tokio::time::timeout(Duration::from_secs(10), tunables.next())
        .await
        .expect("a Tunable signal")
        .expect("stream");
    let args = sig.args().expect("args");
    let pin = args
        .params()
        .get("cputune.vcpupin0")
        .expect("cputune.vcpupin0");
    assert_eq!(
        String::try_from(pin.try_clone().expect("clone")).expect("text"),
        "1"
    );
    d.pin_emulator(vec![true, false], LIVE | CONFIG)
        .await
        .expect("pin the emulator");
    let threads = thread_cpus(pid);
    for (name, cpus) in &threads {
        let want = match name.as_str() {
            "CPU 0/TCG" => "1",
            "CPU 1/TCG" => "0",
            _ => "0",
        };
        assert_eq!(cpus, want, "{name}: {threads:?}");
    }
    assert_eq!(
        d.get_vcpu_pin_info(0).await.expect("pins"),
        vec![vec![false, true], vec![true, false]]
    );
    assert_eq!(
        d.get_emulator_pin_info(0).await.expect("emulator"),
        vec![true, false]
    );
    // The config got the emulator pin only.
    let config = d.get_xml_desc(2).await.expect("config");
    assert!(config.contains("<emulatorpin cpuset='0'/>"), "{config}");
    assert!(!config.contains("<vcpupin vcpu='0'"), "{config}");
    assert!(bus_err(d.pin_vcpu(2, vec![true], LIVE).await).contains("out of range"));
    assert!(bus_err(d.pin_vcpu(0, vec![false, false], LIVE).await).contains("no CPU"));
    d.destroy(0).await.expect("destroy");
}

/// BlockPeek reads a raw image as the host sees it, BlockResize grows a running
/// disk (qemu-img sees the new size), MemoryPeek reads guest memory through QEMU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_resize_and_peeks() {
    use std::io::{Seek, SeekFrom, Write};
    let q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let raw = scratch.path().join("a.raw");
    let mut f = std::fs::File::create(&raw).expect("raw");
    f.set_len(1 << 20).expect("size");
    f.seek(SeekFrom::Start(4096)).expect("seek");
    f.write_all(b"PEEKME").expect("write");
    drop(f);
    let qcow = qcow2(scratch.path(), "b.qcow2", "16M");
    let x = format!(
        "<domain type='qemu'><name>peek</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vdb' bus='virtio'/></disk></devices></domain>",
        raw.display(),
        qcow.display()
    );
    let path = q.qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        d.block_peek("vda", 4096, 6, 0).await.expect("peek"),
        b"PEEKME"
    );
    assert!(bus_err(d.block_peek("vdb", 0, 16, 0).await).contains("'raw' format"));
    assert!(bus_err(d.block_peek("vda", (1 << 20) - 2, 6, 0).await).contains("past the end"));
    assert!(bus_err(d.block_peek("vda", 0, 8 << 20, 0).await).contains("larger than"));
    assert!(bus_err(d.block_peek("vdz", 0, 1, 0).await).contains("not found"));
    assert!(bus_err(d.block_resize("vdb", 32768, 0).await).contains("not running"));
    assert_eq!(
        d.get_security_label_list().await.expect("labels"),
        vec![(String::new(), false)]
    );
    assert!(bus_err(d.get_job_stats(0).await).contains("not running"));

    d.create(0).await.expect("create");
    d.block_resize("vdb", 32768, 0)
        .await
        .expect("resize to 32 MiB");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&qcow)
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["virtual-size"], 32 << 20, "{info}");
    d.block_resize("vdb", (40 << 20) + 1, 1)
        .await
        .expect("bytes, rounded up");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&qcow)
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["virtual-size"], (40 << 20) + 512, "{info}");

    // A write threshold on vda's image: QEMU keeps it (libvirt's block.N.threshold).
    d.set_block_threshold("vda", 8192, 0)
        .await
        .expect("threshold");
    let stats = d.get_stats(32, 0).await.expect("block stats");
    let t = stats.get("block.0.threshold").expect("block.0.threshold");
    assert_eq!(u64::try_from(t).expect("u64"), 8192);
    assert!(bus_err(d.set_block_threshold("vda[1]", 1, 0).await).contains("backing"));
    assert!(bus_err(d.set_block_threshold("vdz", 1, 0).await).contains("not found"));
    // No async job, and QEMU's DAC label: its uid and gid (the daemon's, in session mode).
    let (kind, params) = d.get_job_stats(0).await.expect("job stats");
    assert_eq!((kind, params.len()), (0, 0));
    let me = nix::unistd::getuid();
    let g = nix::unistd::getgid();
    assert_eq!(
        d.get_security_label_list().await.expect("labels"),
        vec![(format!("+{me}:+{g}"), false)]
    );

    // The BIOS area of guest memory (0xf0000-0xfffff) holds SeaBIOS.
    let bios = d.memory_peek(0xf0000, 0x10000, 2).await.expect("physical");
    assert_eq!(bios.len(), 0x10000);
    assert!(bios.iter().any(|b| *b != 0), "all zero");
    let v = d.memory_peek(0, 16, 1).await.expect("virtual");
    assert_eq!(v.len(), 16);
    assert!(bus_err(d.memory_peek(0, 16, 3).await).contains("exactly one"));
    d.destroy(0).await.expect("destroy");
}

/// Rename: an inactive persistent domain takes a new name (its files and autostart
/// follow, its object stays), with libvirt's UNDEFINED/RENAMED and DEFINED/RENAMED,
/// kept across a kill -9; a running domain or a taken name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_an_inactive_domain() {
    use common::event::{DefinedDetail, DomainEvent, UndefinedDetail};
    let mut q = support::qemud(BIN).await;
    let mut events = q.qc.receive_domain_event().await.expect("subscribe");
    let path =
        q.qc.domain_define_xml(&xml("before"))
            .await
            .expect("define");
    q.qc.domain_define_xml(&xml("taken")).await.expect("define");
    let d = domain(&q.conn, &path).await;
    d.set_autostart(true).await.expect("autostart");
    assert!(bus_err(d.rename("taken", 0).await).contains("already exists"));
    assert!(bus_err(d.rename("a/b", 0).await).contains("name"));
    d.rename("after", 0).await.expect("rename");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("event")
            .expect("stream");
        let a = ev.args().expect("args");
        if a.domain == path {
            seen.push(DomainEvent::from_wire(a.event, a.detail).expect("event"));
        }
    }
    assert_eq!(
        seen,
        [
            DomainEvent::Defined(DefinedDetail::Added),
            DomainEvent::Undefined(UndefinedDetail::Renamed),
            DomainEvent::Defined(DefinedDetail::Renamed),
        ]
    );
    assert_eq!(d.name().await.expect("name"), "after");
    assert_eq!(
        q.qc.domain_lookup_by_name("after").await.expect("lookup"),
        path
    );
    assert!(q.qc.domain_lookup_by_name("before").await.is_err());
    let config = q.daemon.dirs.config.join("qemu");
    assert!(config.join("after.xml").exists() && !config.join("before.xml").exists());
    assert!(config.join("autostart/after.xml").exists());
    assert!(!config.join("autostart/before.xml").exists());
    d.create(0).await.expect("create");
    assert!(bus_err(d.rename("again", 0).await).contains("active"));
    d.destroy(0).await.expect("destroy");
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(d.name().await.expect("name"), "after");
    assert!(d.autostart().await.expect("autostart"));
    drop(daemon);
}

/// I/O threads: listed from the definition and from QEMU, added and removed live and
/// in the config, pinned (`<iothreadpin>` at start and PinIOThread live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iothreads_added_removed_and_pinned() {
    let q = support::qemud(BIN).await;
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>io</name><memory unit='MiB'>64</memory>\
             <iothreads>2</iothreads><cputune><iothreadpin iothread='2' cpuset='1'/></cputune>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        d.get_io_thread_info(0).await.expect("info"),
        vec![(1, vec![true, true]), (2, vec![false, true])]
    );
    d.add_io_thread(5, CONFIG).await.expect("add to the config");
    assert!(bus_err(d.add_io_thread(5, CONFIG).await).contains("already using"));
    d.create(0).await.expect("create");
    // Running: QEMU's own threads, the pin applied at start.
    let info = d.get_io_thread_info(0).await.expect("info");
    assert_eq!(
        info,
        vec![
            (1, vec![true, true]),
            (2, vec![false, true]),
            (5, vec![true, true])
        ]
    );
    d.pin_io_thread(5, vec![true, false], LIVE)
        .await
        .expect("pin");
    d.add_io_thread(7, LIVE).await.expect("add live");
    d.del_io_thread(1, LIVE | CONFIG).await.expect("del");
    assert!(bus_err(d.del_io_thread(9, LIVE).await).contains("cannot find IOThread"));
    assert_eq!(
        d.get_io_thread_info(LIVE).await.expect("info"),
        vec![
            (2, vec![false, true]),
            (5, vec![true, false]),
            (7, vec![true, true])
        ]
    );
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains("<iothreads>3</iothreads>"), "{live}");
    let config = d.get_xml_desc(2).await.expect("config");
    assert!(config.contains("<iothreads>2</iothreads>"), "{config}");
    assert!(!config.contains("iothread id='1'"), "{config}");
    d.destroy(0).await.expect("destroy");
}
