//! QEMU as the one configured user (qemu.conf `user`/`group`) with `-sandbox on`: the
//! tiny guest boots as nobody:nogroup from files only root could open (the DAC hand
//! over makes them usable), the owners come back after the run, also when the daemon
//! was killed -9 in between, and a malformed qemu.conf stops the daemon with the file
//! and line named. Needs root (the test machines run tests as root). Per-guest uids
//! are tested in `per_guest_uid.rs`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

mod support;

use common::harness::{Daemon, TestBus, TestDirs};
use common::proxies::qemu::QemuConnectProxy;
use support::{domain, ids, test_guest, wait_serial};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const NOBODY: u32 = 65534;

fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).expect("metadata");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn traversable(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_as_nobody_with_its_files_handed_over_and_back() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts QEMU as another user and needs root"
    );
    // Files only root can use, in folders nobody may pass through by name (as /var/lib
    // and /run are), not in /root's cache.
    let files = tempfile::Builder::new()
        .prefix("vtpriv")
        .tempdir_in("/tmp")
        .expect("tmp");
    traversable(files.path());
    let guest = test_guest();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(guest.join(f), files.path().join(f)).expect("copy guest");
        std::fs::set_permissions(files.path().join(f), PermissionsExt::from_mode(0o600))
            .expect("chmod");
    }
    let disk = files.path().join("disk.img");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    std::fs::set_permissions(&disk, PermissionsExt::from_mode(0o600)).expect("chmod");
    let serial = files.path().join("serial.log");

    let dirs = TestDirs::new().expect("dirs");
    traversable(dirs.root.path());
    std::fs::create_dir_all(&dirs.config).expect("config dir");
    std::fs::write(
        dirs.config.join("qemu.conf"),
        "# as libvirt's\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
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
    let xml = format!(
        "<domain type='kvm'><name>low</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel>\
         <initrd>{i}</initrd><cmdline>console=ttyS0 panic=-1</cmdline></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{d}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='file'><source path='{s}'/></serial></devices></domain>",
        k = files.path().join("vmlinuz").display(),
        i = files.path().join("initrd.img").display(),
        d = disk.display(),
        s = serial.display(),
    );
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start as nobody");
    wait_serial(&serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;

    let run = dirs.runtime.join("qemu");
    let pid: u32 = std::fs::read_to_string(run.join("low.pid"))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(ids(pid, "Uid:"), vec![NOBODY; 4], "QEMU's uids");
    assert_eq!(ids(pid, "Gid:"), vec![NOBODY; 4], "QEMU's gids");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains("-sandbox on,"), "{argv}");
    assert_eq!(owner(&disk), (NOBODY, NOBODY, 0o600), "disk handed over");
    assert_eq!(owner(&files.path().join("vmlinuz")).0, NOBODY);

    // kill -9 of the daemon: QEMU runs on as nobody; the restarted daemon still knows
    // whose files to give back.
    daemon.kill9();
    let daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
    let d = domain(&conn, &path).await;
    assert!(d.active().await.expect("active"));
    d.destroy(0).await.expect("destroy");
    assert!(common::harness::wait_gone(pid, Duration::from_secs(10)));
    assert_eq!(owner(&disk), (0, 0, 0o600), "disk given back");
    assert_eq!(owner(&files.path().join("vmlinuz")), (0, 0, 0o600));
    assert_eq!(owner(&serial).0, 0);
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .expect("run dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("domain-"))
        .collect();
    assert!(leftovers.is_empty(), "QEMU's folder left: {leftovers:?}");

    // UEFI with its variable store and an emulated TPM, as nobody: the store and
    // swtpm's state are handed over, swtpm runs as nobody too, the firmware runs
    // (Secure Boot refuses its unsigned shell), and all is root's again afterwards.
    let efi_serial = files.path().join("efi.log");
    let path = qc
        .domain_define_xml(&format!(
            "<domain type='qemu'><name>lowefi</name><memory unit='MiB'>128</memory>\
             <vcpu>1</vcpu><os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>\
             </os><devices><serial type='file'><source path='{}'/></serial>\
             <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
             </devices></domain>",
            efi_serial.display()
        ))
        .await
        .expect("define efi");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start efi as nobody");
    let vars = dirs.config.join("qemu/nvram/lowefi_VARS.fd");
    assert_eq!(owner(&vars).0, NOBODY, "variable store handed over");
    let pid: u32 = std::fs::read_to_string(run.join("lowefi.pid"))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(ids(pid, "Uid:"), vec![NOBODY; 4]);
    let swtpm: u32 = std::fs::read_dir(&run)
        .expect("run dir")
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("swtpm.pid")).ok())
        .expect("swtpm's pidfile in the run's folder")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(ids(swtpm, "Uid:"), vec![NOBODY; 4], "swtpm's uids");
    let tpm_state = dirs.config.join("qemu/swtpm");
    wait_serial(&efi_serial, "Security Violation", Duration::from_secs(90)).await;
    d.destroy(0).await.expect("destroy efi");
    assert_eq!(owner(&vars), (0, 0, 0o600), "variable store given back");
    for e in std::fs::read_dir(&tpm_state).expect("tpm state").flatten() {
        for f in std::fs::read_dir(e.path().join("tpm2"))
            .expect("tpm2")
            .flatten()
        {
            assert_eq!(owner(&f.path()).0, 0, "{} given back", f.path().display());
        }
        assert_eq!(owner(&e.path()).0, 0);
    }
    d.undefine(4).await.expect("undefine with its nvram");
    drop(daemon);

    // A malformed qemu.conf stops the daemon, naming the file and the line.
    let bad = TestDirs::new().expect("dirs");
    std::fs::create_dir_all(&bad.config).expect("config dir");
    std::fs::write(
        bad.config.join("qemu.conf"),
        "user = \"nobody\"\ngroup = nogroup\n",
    )
    .expect("qemu.conf");
    let e = Daemon::builder(BIN, "virtqemud")
        .dirs(bad)
        .spawn(&bus)
        .await
        .err()
        .expect("the daemon must refuse a malformed qemu.conf");
    let e = format!("{e:#}");
    assert!(
        e.contains("qemu.conf:2") && e.contains("quoted string"),
        "{e}"
    );
}
