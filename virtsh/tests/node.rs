//! virsh's node commands against a real virtnodedevd reading the fixture sysfs tree of
//! virtnodedevd's own tests (copied, as its tests do, since detach writes into it).

use std::path::Path;
use std::process::Command;

use common::harness::{Daemon, TestBus};

mod support;
use support::{fails, field, json, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_devices_and_resources() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../virtnodedevd/tests/fixtures/sysfs");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(tmp.path())
        .status()
        .expect("cp");
    assert!(st.success());
    let root = tmp.path().join("sysfs");
    let bus = TestBus::start().expect("bus");
    let _d = Daemon::builder(sibling("virtnodedevd"), "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await
        .expect("virtnodedevd");

    let pci = json(virtsh(&bus, &["nodedev-list", "--cap", "pci", "--json"]));
    assert_eq!(pci.as_array().map(Vec::len), Some(7), "{pci}");
    assert!(fails(virtsh(&bus, &["nodedev-list", "--cap", "nope"])).contains("'nope'"));

    let vf = "pci_0000_03_10_0";
    let dev = root.join("devices/pci0000:00/0000:00:01.0/0000:03:10.0");
    assert_eq!(
        ok(virtsh(&bus, &["nodedev-detach", vf, "--driver", "vfio"])),
        format!("Device {vf} detached\n")
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).expect("o"),
        "vfio-pci\n"
    );
    assert_eq!(
        ok(virtsh(&bus, &["nodedev-reattach", vf])),
        format!("Device {vf} re-attached\n")
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).expect("o"),
        "\n"
    );
    assert_eq!(
        ok(virtsh(&bus, &["nodedev-reset", vf])),
        format!("Device {vf} reset\n")
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("reset")).expect("reset"),
        "1"
    );
    let err = fails(virtsh(&bus, &["nodedev-reset", "usb_1_1"]));
    assert_eq!(
        err,
        "error: invalid argument: device 'usb_1_1' is not a PCI device\n"
    );

    // Memory from /proc/meminfo in virsh's layout: `total  :  <20 wide> KiB`.
    let mem = ok(virtsh(&bus, &["nodememstats"]));
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let total: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    assert_eq!(
        mem.lines().next(),
        Some(format!("total  : {total:>20} KiB").as_str()),
        "{mem}"
    );
    let names: Vec<&str> = mem.lines().map(|l| l[..7].trim()).collect();
    assert_eq!(names, ["total", "free", "buffers", "cached"]);
    let j = json(virtsh(&bus, &["nodememstats", "--json"]));
    assert_eq!(j["total"], total);

    let cpu = ok(virtsh(&bus, &["nodecpustats"]));
    let names: Vec<&str> = cpu
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["user", "system", "idle", "iowait"], "{cpu}");
    let j = json(virtsh(&bus, &["nodecpustats", "--cpu", "0", "--json"]));
    assert!(j["idle"].as_u64().is_some_and(|v| v > 0), "{j}");
    assert!(fails(virtsh(&bus, &["nodecpustats", "--cpu", "100000"])).starts_with("error: "));

    let sys = ok(virtsh(&bus, &["sysinfo"]));
    assert!(sys.starts_with("<sysinfo type='smbios'>"), "{sys}");
    assert!(sys.contains("Standard PC (Q35 + ICH9, 2009)"), "{sys}");

    let info = ok(virtsh(&bus, &["nodeinfo"]));
    assert!(info.starts_with("CPU model:           "), "{info}");
    let j = json(virtsh(&bus, &["nodeinfo", "--json"]));
    assert_eq!(
        j["memory_size"].to_string(),
        field(&info, "Memory size").trim_end_matches(" KiB")
    );
}

/// cpu-compare and cpu-baseline against a real virtqemud, which asks its emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_compare_and_baseline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bus = TestBus::start().expect("bus");
    let _q = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let old = write("old.xml", "<cpu match='exact'><model>qemu64</model></cpu>");
    assert_eq!(
        ok(virtsh(&bus, &["cpu-compare", &old])),
        format!("Host CPU is a superset of CPU described in {old}\n")
    );
    let dom = write(
        "dom.xml",
        "<?xml version='1.0'?>\n<domain type='qemu'><name>d</name><cpu mode='host-passthrough'/></domain>",
    );
    assert_eq!(
        ok(virtsh(&bus, &["cpu-compare", &dom])),
        format!("CPU described in {dom} is identical to host CPU\n")
    );
    let big = write(
        "big.xml",
        "<cpu match='exact'><model>qemu64</model><feature name='avx512f'/></cpu>",
    );
    assert!(fails(virtsh(&bus, &["cpu-compare", &big])).contains("incompatible"));
    assert!(fails(virtsh(&bus, &["cpu-compare", "--error", &big])).contains("avx512f"));
    // Two hosts in one file, one <cpu> after the other, as virsh reads them.
    let hosts = write(
        "hosts.xml",
        "<cpu><arch>x86_64</arch><model>Skylake-Client</model><vendor>Intel</vendor></cpu>\n\
         <cpu><arch>x86_64</arch><model>Westmere</model><vendor>Intel</vendor>\
         <feature name='avx'/></cpu>",
    );
    let b = ok(virtsh(&bus, &["cpu-baseline", &hosts]));
    assert!(b.starts_with("<cpu mode='custom' match='exact'>"), "{b}");
    assert!(b.contains("<feature policy='require' name='avx'/>"), "{b}");
    let empty = write("empty.xml", "<domain/>");
    assert!(fails(virtsh(&bus, &["cpu-baseline", &empty])).contains("no CPU definitions"));
}
