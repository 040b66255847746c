//! One uid per guest (qemu.conf `dynamic_user_range`): two guests run under different
//! uids from the range, each owns its disk for the run and nothing of the other's, the
//! uid stays reserved across a kill -9 of the daemon, a full range refuses a start by
//! name, a stopped guest's uid is given out again, and a configured user that does not
//! exist stops the start with its name (no fallback to nobody). Needs root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod support;

use common::harness::{Daemon, TestBus, TestDirs};
use common::proxies::qemu::QemuConnectProxy;
use support::{bus_err, domain, ids};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
/// Three uids no account on the test machines has (checked below).
const FIRST: u32 = 66990;
const LAST: u32 = 66992;

fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).expect("metadata");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// What `cat FILE` says on stderr when run as `uid`:`uid` with no other group.
fn cat_as(uid: u32, file: &Path) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dir` and everything below it, symlinks not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            all.extend(walk(&e.path()));
        }
    }
    all
}

fn guest_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        disk.display()
    )
}

/// A running guest as the files show it: its QEMU's PID and its monitor socket.
struct Run {
    pid: u32,
    monitor: PathBuf,
}

fn run_of(run: &Path, name: &str) -> Run {
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join(format!("{name}.json"))).expect("status"))
            .expect("json");
    let pid = std::fs::read_to_string(run.join(format!("{name}.pid")))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    Run {
        pid,
        monitor: PathBuf::from(status["qmp"].as_str().expect("qmp path")),
    }
}

/// The one uid (real, effective, saved, fs) QEMU runs under, also its gids.
fn uid_of(r: &Run) -> u32 {
    let uid = ids(r.pid, "Uid:");
    assert!(uid.iter().all(|u| *u == uid[0]), "uids {uid:?}");
    assert_eq!(ids(r.pid, "Gid:"), vec![uid[0]; 4], "its gid is its uid");
    uid[0]
}

/// An emulated TPM: swtpm runs under the guest's uid, its socket in the run's folder;
/// its state (manufactured now) is root's again after the run, all of it.
async fn swtpm_runs_as_its_guest(
    qc: &QemuConnectProxy<'_>,
    conn: &zbus::Connection,
    run: &Path,
    config: &Path,
) {
    let tpm = qc
        .domain_define_xml(
            "<domain type='qemu'><name>t</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
             <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
             </devices></domain>",
        )
        .await
        .expect("define t");
    let t = domain(conn, &tpm).await;
    t.create(1).await.expect("start t");
    let tr = run_of(run, "t");
    let ut = uid_of(&tr);
    let swtpm: u32 = std::fs::read_to_string(tr.monitor.with_file_name("swtpm.pid"))
        .expect("swtpm's pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(ids(swtpm, "Uid:"), vec![ut; 4], "swtpm runs as its guest");
    t.destroy(0).await.expect("destroy t");
    let state = config
        .join("qemu/swtpm")
        .join(t.uuid().await.expect("uuid"));
    let mut seen = 0;
    for e in walk(&state) {
        assert_eq!(owner(&e).0, 0, "{} given back", e.display());
        seen += 1;
    }
    assert!(seen > 2, "the TPM state was made: {seen} entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guest_runs_under_a_uid_of_its_own() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts QEMU as other users and needs root"
    );
    for id in FIRST..=LAST {
        assert!(
            nix::unistd::User::from_uid(id.into())
                .ok()
                .flatten()
                .is_none()
                && nix::unistd::Group::from_gid(id.into())
                    .ok()
                    .flatten()
                    .is_none(),
            "uid/gid {id} exists on this machine; the test needs it free"
        );
    }
    let files = tempfile::Builder::new()
        .prefix("vtuid")
        .tempdir_in("/tmp")
        .expect("tmp");
    std::fs::set_permissions(files.path(), PermissionsExt::from_mode(0o711)).expect("chmod");
    let disk = |n: &str| files.path().join(format!("{n}.img"));
    for n in ["a", "b", "c", "d"] {
        std::fs::write(disk(n), vec![0u8; 1 << 20]).expect("disk");
        std::fs::set_permissions(disk(n), PermissionsExt::from_mode(0o600)).expect("chmod");
    }

    let dirs = TestDirs::new().expect("dirs");
    std::fs::create_dir_all(&dirs.config).expect("config dir");
    std::fs::write(
        dirs.config.join("qemu.conf"),
        format!("dynamic_user_range = \"{FIRST}-{LAST}\"\n"),
    )
    .expect("qemu.conf");
    let bus = TestBus::start().expect("bus");
    let mut daemon = Daemon::builder(BIN, "virtqemud")
        .dirs(dirs.clone())
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let run = dirs.runtime.join("qemu");
    let mut paths = Vec::new();
    for n in ["a", "b", "c", "d"] {
        paths.push(
            qc.domain_define_xml(&guest_xml(n, &disk(n)))
                .await
                .expect("define"),
        );
    }
    // Paused (VIR_DOMAIN_START_PAUSED): QEMU holds its disk, the CPU stays idle.
    for p in &paths[..2] {
        domain(&conn, p).await.create(1).await.expect("start");
    }
    let (a, b) = (run_of(&run, "a"), run_of(&run, "b"));
    let (ua, ub) = (uid_of(&a), uid_of(&b));
    assert_ne!(ua, ub, "two guests, two uids");
    for u in [ua, ub] {
        assert!((FIRST..=LAST).contains(&u), "uid {u} outside the range");
    }
    if let Ok(Some(kvm)) = nix::unistd::Group::from_name("kvm") {
        assert!(ids(a.pid, "Groups:").contains(&kvm.gid.as_raw()));
    }
    assert_eq!(owner(&disk("a")), (ua, ua, 0o600), "a's disk is a's");
    assert_eq!(owner(&disk("b")), (ub, ub, 0o600), "b's disk is b's");
    // Only its uid and root reach a run's folder, monitor, pidfiles and log.
    for (r, u) in [(&a, ua), (&b, ub)] {
        let dir = r.monitor.parent().expect("run folder");
        assert_eq!(owner(dir), (u, u, 0o700), "{}", dir.display());
        assert_eq!(owner(&r.monitor).0, u);
        assert_eq!(owner(&r.monitor).2 & 0o077, 0, "monitor socket mode");
        assert_eq!(owner(&dir.join("qemu.pid")).2 & 0o077, 0, "QEMU's pidfile");
    }
    assert_eq!(owner(&run.join("a.pid")).2, 0o600);
    assert_eq!(owner(&dirs.state.join("log/qemu/a.log")).2, 0o600);
    // Guest a's uid has its own disk and nothing of b's.
    assert!(cat_as(ua, &disk("a")).0, "a's uid reads a's disk");
    let (ok, err) = cat_as(ua, &disk("b"));
    assert!(
        !ok && err.contains("Permission denied"),
        "a opens b's disk: {err}"
    );
    let (ok, err) = cat_as(ua, &b.monitor);
    assert!(
        !ok && err.contains("Permission denied"),
        "a reaches b's monitor: {err}"
    );
    // Its own monitor is reachable (a socket cannot be opened as a file: ENXIO).
    let (_, err) = cat_as(ua, &a.monitor);
    assert!(!err.contains("Permission denied"), "{err}");
    // A second guest on a's disk would take it from a: refused, a keeps it.
    let e_path = qc
        .domain_define_xml(&guest_xml("e", &disk("a")))
        .await
        .expect("define e");
    let e = bus_err(domain(&conn, &e_path).await.create(1).await);
    assert!(e.contains("in use by another running guest"), "{e}");
    assert_eq!(owner(&disk("a")), (ua, ua, 0o600), "a keeps its disk");

    // kill -9 of the daemon: the restarted one keeps both uids reserved.
    daemon.kill9();
    let daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
    let c = domain(&conn, &paths[2]).await;
    c.create(1).await.expect("start c");
    let uc = uid_of(&run_of(&run, "c"));
    assert!(uc != ua && uc != ub, "c got a running guest's uid {uc}");
    // The range is full now: a clear refusal, never a shared or a fallback user.
    let d = domain(&conn, &paths[3]).await;
    let e = bus_err(d.create(1).await);
    assert!(
        e.contains("no free uid") && e.contains(&format!("dynamic_user_range {FIRST}-{LAST}")),
        "{e}"
    );
    assert_eq!(
        owner(&disk("d")),
        (0, 0, 0o600),
        "a refused start takes nothing"
    );

    // A stopped guest gives its disk and its uid back; the next guest gets that uid.
    domain(&conn, &paths[0])
        .await
        .destroy(0)
        .await
        .expect("destroy a");
    assert!(common::harness::wait_gone(a.pid, Duration::from_secs(10)));
    assert_eq!(owner(&disk("a")), (0, 0, 0o600), "a's disk given back");
    assert!(
        !a.monitor.parent().expect("dir").exists(),
        "a's folder left"
    );
    d.create(1).await.expect("start d in a's place");
    assert_eq!(uid_of(&run_of(&run, "d")), ua, "a's uid is free again");
    assert_eq!(owner(&disk("d")), (ua, ua, 0o600));
    for p in &paths[1..] {
        domain(&conn, p).await.destroy(0).await.expect("destroy");
    }
    for n in ["a", "b", "c", "d"] {
        assert_eq!(owner(&disk(n)), (0, 0, 0o600), "{n}'s disk given back");
    }

    swtpm_runs_as_its_guest(&qc, &conn, &run, &dirs.config).await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_user_stops_the_start_by_name() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let dirs = TestDirs::new().expect("dirs");
    std::fs::create_dir_all(&dirs.config).expect("config dir");
    std::fs::write(
        dirs.config.join("qemu.conf"),
        "user = \"no-such-qemu-user\"\n",
    )
    .expect("qemu.conf");
    let bus = TestBus::start().expect("bus");
    let _daemon = Daemon::builder(BIN, "virtqemud")
        .dirs(dirs.clone())
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let files = tempfile::tempdir().expect("tmp");
    let img = files.path().join("x.img");
    std::fs::write(&img, b"").expect("disk");
    let path = qc
        .domain_define_xml(&guest_xml("x", &img))
        .await
        .expect("define");
    let e = bus_err(domain(&conn, &path).await.create(1).await);
    assert!(
        e.contains("'no-such-qemu-user'") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        std::fs::read_dir(dirs.runtime.join("qemu"))
            .expect("run dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("domain-")),
        "a refused start leaves no run folder"
    );
}
