//! Domain cgroups on real QEMU with a system-mode virtqemud: the group
//! `/machine/qemu-ID-NAME.libvirt-qemu` with QEMU in it and its emulator, vCPU and I/O
//! thread groups; `<cputune>`, `<memtune>`, `<blkiotune>` and `<numatune>` written at
//! start; Get/Set{Scheduler,Memory,BlockIO,Numa}Parameters reading and changing the
//! files live and the definition in the config; libvirt's errors for bad input with
//! nothing changed; the group found again after kill -9 of the daemon and removed
//! with QEMU, also when QEMU died while the daemon was away. Session mode places no
//! group and answers as libvirt's session daemon.
//!
//! The harness's daemons run in session mode, so these tests start virtqemud with
//! `--system` themselves ([`System`]), on the test bus, with the harness's folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness::{TestBus, TestDirs};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use common::typed_params::TypedParams;
use futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

mod support;
use support::{bus_err, domain};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const LIVE: u32 = 1;
const CONFIG: u32 = 2;
const UNLIMITED: u64 = 9_007_199_254_740_991;
const CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "cpuset", "memory", "blkio"];

/// The cgroup hierarchy of this host, as the test reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    V1,
    V2,
}

fn kind() -> Kind {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let v2 = info
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    if v2 {
        Kind::V2
    } else {
        Kind::V1
    }
}

/// The folder of the domain group (or its thread group `sub`) for controller `ctl`.
fn dir(group: &str, ctl: &str, sub: &str) -> PathBuf {
    let mut p = match kind() {
        Kind::V1 => Path::new("/sys/fs/cgroup").join(ctl),
        Kind::V2 => PathBuf::from("/sys/fs/cgroup"),
    };
    p.push("machine");
    p.push(group);
    if !sub.is_empty() {
        p.push(sub);
    }
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// The knobs by libvirt's meaning, read from this hierarchy's files.
struct Knobs(String);

impl Knobs {
    fn shares(&self) -> u64 {
        let f = if kind() == Kind::V1 {
            "cpu.shares"
        } else {
            "cpu.weight"
        };
        read(&dir(&self.0, "cpu", "").join(f))
            .parse()
            .expect("shares")
    }
    /// (period, quota) of thread group `sub` ("" for the domain group).
    fn bw(&self, sub: &str) -> (u64, i64) {
        let d = dir(&self.0, "cpu", sub);
        match kind() {
            Kind::V1 => (
                read(&d.join("cpu.cfs_period_us")).parse().expect("period"),
                read(&d.join("cpu.cfs_quota_us")).parse().expect("quota"),
            ),
            Kind::V2 => {
                let t = read(&d.join("cpu.max"));
                let (q, p) = t.split_once(' ').expect("cpu.max");
                (p.parse().expect("period"), q.parse().unwrap_or(-1))
            }
        }
    }
    /// Bytes; None when unlimited.
    fn mem(&self, v1: &str, v2: &str) -> Option<u64> {
        let f = if kind() == Kind::V1 { v1 } else { v2 };
        let t = read(&dir(&self.0, "memory", "").join(f));
        // The kernel's "no limit" is the page-aligned largest value (or `max`).
        t.parse::<u64>().ok().filter(|b| *b < 1 << 62)
    }
    fn hard(&self) -> Option<u64> {
        self.mem("memory.limit_in_bytes", "memory.max")
    }
    fn soft(&self) -> Option<u64> {
        self.mem("memory.soft_limit_in_bytes", "memory.high")
    }
    fn swap(&self) -> Option<u64> {
        self.mem("memory.memsw.limit_in_bytes", "memory.swap.max")
    }
    /// The throttle of `dev` (MAJ:MIN): v1's file, v2's io.max key.
    fn throttle(&self, v1: &str, v2: &str, dev: &str) -> u64 {
        let d = dir(&self.0, "blkio", "");
        match kind() {
            Kind::V1 => read(&d.join(v1))
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{dev} "))?.parse().ok())
                .unwrap_or(0),
            Kind::V2 => read(&d.join("io.max"))
                .lines()
                .filter(|l| l.starts_with(&format!("{dev} ")))
                .flat_map(|l| l.split_whitespace())
                .find_map(|kv| kv.strip_prefix(&format!("{v2}="))?.parse().ok())
                .unwrap_or(0),
        }
    }
    fn mems(&self, sub: &str) -> String {
        read(&dir(&self.0, "cpuset", sub).join("cpuset.mems"))
    }
    fn procs(&self, ctl: &str, sub: &str) -> Vec<u32> {
        let f = if sub.is_empty() || kind() == Kind::V1 {
            if sub.is_empty() {
                "cgroup.procs"
            } else {
                "tasks"
            }
        } else {
            "cgroup.threads"
        };
        read(&dir(&self.0, ctl, sub).join(f))
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
    /// True when no controller has the group any more.
    fn gone(&self) -> bool {
        CONTROLLERS.iter().all(|c| !dir(&self.0, c, "").exists())
    }
    /// Waits (bounded) until the group is gone.
    async fn wait_gone(&self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.gone() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// A block device of this host, as (path, MAJ:MIN): the throttles need a real one.
fn block_device() -> (String, String) {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| Path::new("/dev").join(n).exists())
        .collect();
    // A disk before loop and zram devices.
    names.sort_by_key(|n| (n.starts_with("loop") || n.starts_with("zram"), n.clone()));
    let n = names.first().expect("a block device");
    let dev = read(&Path::new("/sys/block").join(n).join("dev"));
    (format!("/dev/{n}"), dev)
}

/// A system-mode virtqemud on the test bus, in the harness's folders. Dropping it
/// kills the daemon, then QEMU (the folders' leftovers), then removes any group of
/// `names` left behind.
struct System {
    bus: TestBus,
    dirs: Arc<TestDirs>,
    child: Option<Child>,
    groups: Vec<String>,
}

impl System {
    async fn start() -> System {
        Self::start_with("").await
    }

    /// With `qemu_conf` as the daemon's qemu.conf.
    async fn start_with(qemu_conf: &str) -> System {
        let bus = TestBus::start().expect("bus");
        let dirs = TestDirs::new().expect("dirs");
        std::fs::write(dirs.config.join("qemu.conf"), qemu_conf).expect("qemu.conf");
        let mut s = System {
            bus,
            dirs,
            child: None,
            groups: Vec::new(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dirs.root.path().join("virtqemud.log"))
            .expect("log");
        let child = Command::new(BIN)
            .arg("--system")
            .arg("--config-dir")
            .arg(&self.dirs.config)
            .arg("--state-dir")
            .arg(&self.dirs.state)
            .arg("--runtime-dir")
            .arg(&self.dirs.runtime)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus.address)
            .env_remove("DBUS_STARTER_ADDRESS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn virtqemud");
        let pid = child.id();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self
                .bus
                .owner_pid("org.libvirt.virtqemud")
                .await
                .ok()
                .flatten()
                == Some(pid)
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "virtqemud --system did not take its name: {}",
                std::fs::read_to_string(self.dirs.root.path().join("virtqemud.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// As a crash: SIGKILL, reaped; QEMU keeps running.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn client(&self) -> (zbus::Connection, QemuConnectProxy<'static>) {
        let conn = self.bus.connection().await.expect("conn");
        let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
        (conn, qc)
    }

    fn qemu_pid(&self, name: &str) -> u32 {
        support::qemu_pid(&self.dirs.runtime, name)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.kill9();
        self.dirs.kill_leftovers();
        for g in &self.groups {
            let k = Knobs(g.clone());
            let start = Instant::now();
            while !k.gone() && start.elapsed() < Duration::from_secs(10) {
                for c in CONTROLLERS {
                    let d = dir(g, c, "");
                    if let Ok(subs) = std::fs::read_dir(&d) {
                        for s in subs.flatten().filter(|s| s.path().is_dir()) {
                            let _ = std::fs::remove_dir(s.path());
                        }
                    }
                    let _ = std::fs::remove_dir(&d);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A TCG domain that idles in its firmware: QEMU with two vCPUs and an I/O thread is
/// all a cgroup needs.
fn xml(name: &str, tuning: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>2</vcpu><iothreads>1</iothreads>{tuning}\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

fn u(p: &TypedParams, k: &str) -> u64 {
    u64::try_from(p.get(k).unwrap_or_else(|| panic!("{k} missing: {p:?}")))
        .unwrap_or_else(|_| panic!("{k} is not a ullong: {p:?}"))
}

fn i(p: &TypedParams, k: &str) -> i64 {
    i64::try_from(p.get(k).unwrap_or_else(|| panic!("{k} missing: {p:?}")))
        .unwrap_or_else(|_| panic!("{k} is not a llong: {p:?}"))
}

fn s(p: &TypedParams, k: &str) -> String {
    p.get(k)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_else(|| panic!("{k} missing or not a string: {p:?}"))
}

fn params<'a>(pairs: Vec<(&'a str, Value<'static>)>) -> HashMap<&'a str, Value<'static>> {
    pairs.into_iter().collect()
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Defines and starts `name`; its group is left to [`System`]'s drop if a check fails.
async fn started(
    sys: &mut System,
    conn: &zbus::Connection,
    qc: &QemuConnectProxy<'_>,
    name: &str,
    tuning: &str,
) -> (DomainProxy<'static>, OwnedObjectPath) {
    let path = qc
        .domain_define_xml(&xml(name, tuning))
        .await
        .expect("define");
    let d = domain(conn, &path).await;
    let t = Instant::now();
    d.create(0).await.expect("create");
    // Figures, not checks: Create with the group made, tuned and filled.
    println!(
        "figure: Create with a cgroup (system mode): {:?}",
        t.elapsed()
    );
    let log =
        std::fs::read_to_string(sys.dirs.root.path().join("virtqemud.log")).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("cgroup made") || l.contains("threads placed"))
    {
        println!(
            "figure: daemon log: {}",
            l.split("INFO").last().unwrap_or(l).trim()
        );
    }
    let id = d.id().await.expect("id");
    sys.groups.push(format!("qemu-{id}-{name}.libvirt-qemu"));
    (d, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_values_and_live_changes() {
    let mut sys = System::start().await;
    let (conn, qc) = sys.client().await;
    let name = unique("tune");
    let (disk, dev) = block_device();
    let tuning = format!(
        "<cputune><shares>512</shares><period>100000</period><quota>50000</quota>\
         <emulator_period>200000</emulator_period><emulator_quota>-1</emulator_quota>\
         <iothread_period>100000</iothread_period><iothread_quota>30000</iothread_quota></cputune>\
         <memtune><hard_limit unit='MiB'>1024</hard_limit><soft_limit unit='MiB'>512</soft_limit>\
         <swap_hard_limit unit='MiB'>2048</swap_hard_limit></memtune>\
         <blkiotune><device><path>{disk}</path><read_bytes_sec>10485760</read_bytes_sec>\
         <write_iops_sec>1000</write_iops_sec></device></blkiotune>\
         <numatune><memory mode='strict' nodeset='0'/></numatune>"
    );
    let (d, path) = started(&mut sys, &conn, &qc, &name, &tuning).await;
    let k = Knobs(sys.groups[0].clone());
    let pid = sys.qemu_pid(&name);

    placed_with_the_values(&k, pid, &dev);
    gets_read_the_files(&d, &k, &disk).await;
    live_changes(&d, &k, &disk, &dev).await;
    bad_input_changes_nothing(&d, &k, &disk, &dev).await;

    // The config, alone, atomically written: the inactive XML has it, the live one not.
    d.set_memory_parameters(
        &params(vec![("soft_limit", Value::from(262_144u64))]),
        CONFIG,
    )
    .await
    .expect("config");
    let inactive = d.get_xml_desc(2).await.expect("inactive xml");
    assert!(
        inactive.contains("<soft_limit unit='KiB'>262144</soft_limit>"),
        "{inactive}"
    );
    assert_eq!(k.soft(), None, "the live limit did not move");

    // kill -9 of the daemon: the restarted one finds the group by the run's id.
    sys.kill9();
    sys.spawn().await;
    let d = domain(&conn, &path).await;
    let p = d
        .get_scheduler_parameters(0)
        .await
        .expect("sched after restart");
    assert_eq!((u(&p, "cpu_shares"), i(&p, "vcpu_quota")), (1024, 20_000));
    assert!(k.procs("memory", "").contains(&pid));
    let m = d
        .get_memory_parameters(CONFIG)
        .await
        .expect("config after restart");
    assert_eq!(u(&m, "soft_limit"), 262_144);

    // Destroy removes the group from every controller before it returns (QEMU's end
    // is released before Destroy's wait ends).
    let t = Instant::now();
    d.destroy(0).await.expect("destroy");
    println!("figure: Destroy, group removed: {:?}", t.elapsed());
    assert!(k.gone(), "group left after destroy");
}

/// QEMU in its group, its threads in theirs, the definition's values in the files.
fn placed_with_the_values(k: &Knobs, pid: u32, dev: &str) {
    // QEMU is in the group: the domain group of every controller, its threads in the
    // emulator group but for each vCPU and the I/O thread in their own.
    for c in ["memory", "blkio"] {
        assert!(k.procs(c, "").contains(&pid), "QEMU {pid} in the {c} group");
    }
    let tasks: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let (v0, v1, io) = (
        k.procs("cpu", "vcpu0"),
        k.procs("cpu", "vcpu1"),
        k.procs("cpu", "iothread1"),
    );
    assert_eq!((v0.len(), v1.len(), io.len()), (1, 1, 1), "one thread each");
    for t in v0.iter().chain(&v1).chain(&io) {
        assert!(tasks.contains(t), "thread {t} is QEMU's ({tasks:?})");
    }
    let emulator = k.procs("cpu", "emulator");
    assert!(!emulator.is_empty() && emulator.iter().all(|t| tasks.contains(t)));
    assert_eq!(
        emulator.len() + 3,
        tasks.len(),
        "every other thread in emulator"
    );

    // The values of the definition.
    assert_eq!(k.shares(), 512);
    assert_eq!(k.bw("vcpu0"), (100_000, 50_000));
    assert_eq!(k.bw("vcpu1"), (100_000, 50_000));
    assert_eq!(k.bw("emulator"), (200_000, -1));
    assert_eq!(k.bw("iothread1"), (100_000, 30_000));
    assert_eq!(k.hard(), Some(1 << 30));
    assert_eq!(k.soft(), Some(512 << 20));
    assert_eq!(k.swap(), Some(2 << 30));
    assert_eq!(
        k.throttle("blkio.throttle.read_bps_device", "rbps", dev),
        10_485_760
    );
    assert_eq!(
        k.throttle("blkio.throttle.write_iops_device", "wiops", dev),
        1000
    );
    assert_eq!(
        (k.mems("emulator"), k.mems("vcpu0")),
        ("0".into(), "0".into())
    );
}

/// Get reads the files (live) or the definition (CONFIG).
async fn gets_read_the_files(d: &DomainProxy<'_>, k: &Knobs, disk: &str) {
    // Get reads the files.
    let p = d.get_scheduler_parameters(0).await.expect("sched");
    assert_eq!(
        (
            u(&p, "cpu_shares"),
            u(&p, "vcpu_period"),
            i(&p, "vcpu_quota")
        ),
        (512, 100_000, 50_000)
    );
    assert_eq!(
        (u(&p, "emulator_period"), i(&p, "emulator_quota")),
        (200_000, -1)
    );
    assert_eq!(i(&p, "iothread_quota"), 30_000);
    let m = d.get_memory_parameters(0).await.expect("mem");
    assert_eq!(
        (
            u(&m, "hard_limit"),
            u(&m, "soft_limit"),
            u(&m, "swap_hard_limit")
        ),
        (1 << 20, 512 << 10, 2 << 20)
    );
    let n = d.get_numa_parameters(0).await.expect("numa");
    assert_eq!(
        (
            i32::try_from(n.get("numa_mode").expect("mode")).expect("int"),
            s(&n, "numa_nodeset")
        ),
        (0, "0".to_owned())
    );
    assert_eq!(
        d.scheduler_type().await.expect("SchedulerType"),
        ("posix".to_owned(), 9)
    );
    let b = d
        .get_block_io_parameters(CONFIG)
        .await
        .expect("blkio config");
    assert_eq!(s(&b, "device_read_bytes_sec"), format!("{disk},10485760"));
    // Live, the weight comes from the cgroup: libvirt's error where the host's I/O
    // scheduler has none.
    let weight_file = match kind() {
        Kind::V1 => ["blkio.bfq.weight", "blkio.weight"],
        Kind::V2 => ["io.bfq.weight", "io.weight"],
    }
    .iter()
    .any(|f| dir(&k.0, "blkio", "").join(f).exists());
    match d.get_block_io_parameters(0).await {
        Ok(b) => {
            assert!(weight_file, "a weight without a weight file: {b:?}");
            assert_eq!(s(&b, "device_write_iops_sec"), format!("{disk},1000"));
        }
        Err(e) => {
            assert!(!weight_file);
            assert!(bus_err::<()>(Err(e)).contains("valid only for bfq or cfq scheduler"));
        }
    }
}

/// Set, live: the files change, Get reads them, the config stays.
async fn live_changes(d: &DomainProxy<'_>, k: &Knobs, disk: &str, dev: &str) {
    // Set, live: the files change, Get reads them, the config stays.
    let mut tunables = d.receive_tunable().await.expect("subscribe");
    let t = Instant::now();
    d.set_scheduler_parameters(
        &params(vec![
            ("cpu_shares", Value::from(1024u64)),
            ("vcpu_quota", Value::from(20_000i64)),
        ]),
        LIVE,
    )
    .await
    .expect("set sched");
    println!(
        "figure: SetSchedulerParameters (shares, quota of 2 vCPUs), live: {:?}",
        t.elapsed()
    );
    assert_eq!(
        (k.shares(), k.bw("vcpu0").1, k.bw("vcpu1").1),
        (1024, 20_000, 20_000)
    );
    let sig = tokio::time::timeout(Duration::from_secs(10), tunables.next())
        .await
        .expect("Tunable")
        .expect("stream");
    let args = sig.args().expect("args");
    assert_eq!(u(args.params(), "cputune.cpu_shares"), 1024);
    assert_eq!(i(args.params(), "cputune.vcpu_quota"), 20_000);
    let p = d.get_scheduler_parameters(0).await.expect("sched");
    assert_eq!((u(&p, "cpu_shares"), i(&p, "vcpu_quota")), (1024, 20_000));
    let p = d
        .get_scheduler_parameters(CONFIG)
        .await
        .expect("sched config");
    assert_eq!((u(&p, "cpu_shares"), i(&p, "vcpu_quota")), (512, 50_000));

    d.set_memory_parameters(&params(vec![("hard_limit", Value::from(786_432u64))]), LIVE)
        .await
        .expect("lower the hard limit");
    assert_eq!(k.hard(), Some(768 << 20));
    d.set_memory_parameters(&params(vec![("soft_limit", Value::from(UNLIMITED))]), LIVE)
        .await
        .expect("lift the soft limit");
    assert_eq!(k.soft(), None);
    let m = d.get_memory_parameters(0).await.expect("mem");
    assert_eq!(
        (u(&m, "hard_limit"), u(&m, "soft_limit")),
        (768 << 10, UNLIMITED)
    );
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(
        live.contains("<hard_limit unit='KiB'>786432</hard_limit>"),
        "{live}"
    );
    assert!(!live.contains("<soft_limit"), "{live}");

    d.set_block_io_parameters(
        &params(vec![(
            "device_write_bytes_sec",
            Value::from(format!("{disk},2097152")),
        )]),
        LIVE,
    )
    .await
    .expect("set blkio");
    assert_eq!(
        k.throttle("blkio.throttle.write_bps_device", "wbps", dev),
        2_097_152
    );
    assert_eq!(
        k.throttle("blkio.throttle.read_bps_device", "rbps", dev),
        10_485_760
    );

    d.set_numa_parameters(&params(vec![("numa_nodeset", Value::from("0"))]), LIVE)
        .await
        .expect("same nodes");
    assert_eq!(
        bus_err(
            d.set_numa_parameters(&params(vec![("numa_mode", Value::from(1i32))]), LIVE)
                .await
        ),
        "Requested operation is not valid: can't change numatune mode for running domain"
    );
}

/// Bad input: libvirt's errors, nothing changed.
async fn bad_input_changes_nothing(d: &DomainProxy<'_>, k: &Knobs, disk: &str, dev: &str) {
    // Bad input: libvirt's errors, nothing changed.
    let before = (k.shares(), k.bw("vcpu0"), k.hard(), k.swap());
    let bad: Vec<(HashMap<&str, Value<'static>>, &str)> = vec![
        (
            params(vec![("hard_limit", Value::from(5u32))]),
            "invalid argument: invalid type 'uint' for parameter 'hard_limit', expected 'ullong'",
        ),
        (
            params(vec![("min_guarantee", Value::from(5u64))]),
            "argument unsupported: parameter 'min_guarantee' not supported",
        ),
        (
            params(vec![("hard_limit", Value::from(4u64 << 20))]),
            "invalid argument: memory hard_limit tunable value must be lower than or equal to swap_hard_limit",
        ),
        // Below what QEMU uses: the kernel refuses, the error names the file.
        (
            params(vec![("hard_limit", Value::from(1024u64))]),
            "Unable to write to '",
        ),
    ];
    for (p, want) in bad {
        let e = bus_err(d.set_memory_parameters(&p, LIVE).await);
        assert!(e.contains(want), "{want} <- {e}");
    }
    let bad_sched: Vec<(HashMap<&str, Value<'static>>, &str)> = vec![
        (
            params(vec![("vcpu_period", Value::from(10u64))]),
            "invalid argument: value of 'vcpu_period' is out of range [1000, 1000000]",
        ),
        (
            params(vec![("cpu_shares", Value::from(1u64))]),
            "invalid argument: shares '1' must be in range",
        ),
        (
            params(vec![("vcpu_quota", Value::from(5u64))]),
            "invalid type 'ullong' for parameter 'vcpu_quota', expected 'llong'",
        ),
        (
            params(vec![("nosuch", Value::from(5u64))]),
            "argument unsupported: parameter 'nosuch' not supported",
        ),
    ];
    for (p, want) in bad_sched {
        let e = bus_err(d.set_scheduler_parameters(&p, LIVE).await);
        assert!(e.contains(want), "{want} <- {e}");
    }
    let e = bus_err(
        d.set_block_io_parameters(
            &params(vec![("device_weight", Value::from(disk.to_owned()))]),
            LIVE,
        )
        .await,
    );
    assert!(
        e.contains(&format!(
            "unable to parse blkio device 'device_weight' '{disk}'"
        )),
        "{e}"
    );
    let e = bus_err(
        d.set_block_io_parameters(
            &params(vec![("device_read_bytes_sec", Value::from("/dev/null,5"))]),
            LIVE,
        )
        .await,
    );
    assert!(e.contains("Path '/dev/null' must be a block device"), "{e}");
    assert_eq!(
        (k.shares(), k.bw("vcpu0"), k.hard(), k.swap()),
        before,
        "nothing changed"
    );
    assert_eq!(
        k.throttle("blkio.throttle.read_bps_device", "rbps", dev),
        10_485_760
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_a_qemu_that_died_meanwhile_is_removed_at_restart() {
    let mut sys = System::start().await;
    let (conn, qc) = sys.client().await;
    let name = unique("gone");
    let (_, path) = started(
        &mut sys,
        &conn,
        &qc,
        &name,
        "<cputune><shares>300</shares></cputune>",
    )
    .await;
    let k = Knobs(sys.groups[0].clone());
    let pid = sys.qemu_pid(&name);
    assert_eq!(k.shares(), 300);
    sys.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    assert!(
        common::harness::wait_gone(pid, Duration::from_secs(10)),
        "QEMU gone"
    );
    assert!(!k.gone(), "the group outlives QEMU while nobody watches");
    let t = Instant::now();
    sys.spawn().await;
    assert!(
        k.wait_gone().await,
        "the restart removes the group of the dead QEMU"
    );
    println!(
        "figure: restart to the dead QEMU's group removed: {:?}",
        t.elapsed()
    );
    let d = domain(&conn, &path).await;
    assert!(!d.active().await.expect("active"));
    // An inactive domain answers from its config.
    let p = d.get_scheduler_parameters(0).await.expect("sched inactive");
    assert_eq!(u(&p, "cpu_shares"), 300);
    let e = bus_err(d.get_scheduler_parameters(LIVE).await);
    assert_eq!(e, "Requested operation is not valid: domain is not running");
}

/// A vCPU plugged into the running domain gets its own group, tuned as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplugged_vcpu_gets_its_group() {
    let mut sys = System::start().await;
    let (conn, qc) = sys.client().await;
    let name = unique("plug");
    let path = qc
        .domain_define_xml(&format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu current='1'>2</vcpu><cputune><period>100000</period><quota>40000</quota></cputune>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
        ))
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("create");
    let id = d.id().await.expect("id");
    sys.groups.push(format!("qemu-{id}-{name}.libvirt-qemu"));
    let k = Knobs(sys.groups[0].clone());
    assert_eq!(k.procs("cpu", "vcpu0").len(), 1);
    assert!(
        !dir(&k.0, "cpu", "vcpu1").exists(),
        "no group for an offline vCPU"
    );
    d.set_vcpus(2, LIVE).await.expect("plug a vCPU");
    let pid = sys.qemu_pid(&name);
    let v1 = k.procs("cpu", "vcpu1");
    assert_eq!(v1.len(), 1, "the new vCPU's thread in vcpu1");
    assert!(std::path::Path::new(&format!("/proc/{pid}/task/{}", v1[0])).exists());
    assert!(!k.procs("cpu", "emulator").contains(&v1[0]));
    assert_eq!(k.bw("vcpu1"), (100_000, 40_000));
    d.destroy(0).await.expect("destroy");
    assert!(k.gone());
}

/// The cpuset groups do not undo pinning: a move into a cpuset group resets a thread's
/// affinity, so `<vcpu cpuset>` and `vcpupin` must hold after the threads are placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_survives_the_groups() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let last = cpus - 1;
    let mut sys = System::start().await;
    let (conn, qc) = sys.client().await;
    let name = unique("pin");
    let path = qc
        .domain_define_xml(&format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu cpuset='{last}'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/></cputune>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
        ))
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("create");
    let id = d.id().await.expect("id");
    sys.groups.push(format!("qemu-{id}-{name}.libvirt-qemu"));
    let k = Knobs(sys.groups[0].clone());
    let pid = sys.qemu_pid(&name);
    let allowed = |tid: u32| {
        read(Path::new(&format!("/proc/{pid}/task/{tid}/status")))
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
            .expect("Cpus_allowed_list")
    };
    assert_eq!(allowed(k.procs("cpu", "vcpu0")[0]), "0", "vcpupin");
    assert_eq!(
        allowed(k.procs("cpu", "vcpu1")[0]),
        last.to_string(),
        "<vcpu cpuset>"
    );
    for t in k.procs("cpu", "emulator") {
        assert_eq!(allowed(t), last.to_string(), "emulator thread {t}");
    }
    d.destroy(0).await.expect("destroy");
}

/// qemu.conf `cgroup_controllers`: the group only where listed; a tunable of a
/// controller left out is refused with libvirt's message; none at all with `[ ]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_conf_chooses_the_controllers() {
    let mut sys =
        System::start_with("cgroup_controllers = [ \"cpu\", \"cpuacct\", \"cpuset\" ]\n").await;
    let (conn, qc) = sys.client().await;
    let name = unique("ctl");
    let path = qc
        .domain_define_xml(&xml(
            &name,
            "<memtune><hard_limit unit='MiB'>512</hard_limit></memtune>",
        ))
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    assert_eq!(
        bus_err(d.create(0).await),
        "unsupported configuration: Memory cgroup is not available on this host"
    );
    // The refused start made its group first: gone with the run.
    assert!(Knobs(format!("qemu-1-{name}.libvirt-qemu")).gone());
    // A value the cgroup layer refuses at start: libvirt's message, nothing left.
    let bad = unique("bad");
    let path = qc
        .domain_define_xml(&xml(&bad, "<cputune><shares>1</shares></cputune>"))
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &path).await.create(0).await);
    assert!(e.contains("shares '1' must be in range"), "{e}");
    assert!(Knobs(format!("qemu-2-{bad}.libvirt-qemu")).gone());
    let (_, path) = started(
        &mut sys,
        &conn,
        &qc,
        &unique("ctl2"),
        "<cputune><shares>600</shares></cputune>",
    )
    .await;
    let k = Knobs(sys.groups[0].clone());
    assert_eq!(k.shares(), 600);
    if kind() == Kind::V1 {
        assert!(!dir(&k.0, "memory", "").exists() && !dir(&k.0, "blkio", "").exists());
    }
    let d = domain(&conn, &path).await;
    assert_eq!(
        bus_err(d.get_memory_parameters(0).await),
        "Requested operation is not valid: cgroup memory controller is not mounted"
    );
    d.destroy(0).await.expect("destroy");
    assert!(k.gone());
    drop(sys);

    let mut sys = System::start_with("cgroup_controllers = [ ]\n").await;
    let (conn, qc) = sys.client().await;
    let (d, _) = started(&mut sys, &conn, &qc, &unique("none"), "").await;
    assert!(
        Knobs(sys.groups[0].clone()).gone(),
        "no controller, no group"
    );
    d.destroy(0).await.expect("destroy");
}

/// Session mode: no group, the tunables kept in the definition and skipped at start,
/// the cgroup calls refused as libvirt's session daemon refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_places_no_group() {
    let q = support::qemud(BIN).await;
    let name = unique("sess");
    let path = q
        .qc
        .domain_define_xml(&xml(&name, "<cputune><shares>700</shares></cputune><memtune><hard_limit unit='MiB'>512</hard_limit></memtune>"))
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    let t = Instant::now();
    d.create(0).await.expect("create (tunables skipped)");
    println!(
        "figure: Create without a cgroup (session mode): {:?}",
        t.elapsed()
    );
    let id = d.id().await.expect("id");
    assert!(Knobs(format!("qemu-{id}-{name}.libvirt-qemu")).gone());
    assert_eq!(
        bus_err(d.get_memory_parameters(0).await),
        "Operation not supported: Memory tuning is not available in session mode"
    );
    assert_eq!(
        bus_err(d.get_scheduler_parameters(0).await),
        "unsupported configuration: CPU tuning is not available in session mode"
    );
    assert_eq!(
        bus_err(
            d.set_block_io_parameters(&params(vec![("weight", Value::from(500u32))]), 0)
                .await
        ),
        "unsupported configuration: Block I/O tuning is not available in session mode"
    );
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(xml.contains("<shares>700</shares>"), "{xml}");
    d.destroy(0).await.expect("destroy");
}
