//! Emulated TPM 2.0 with real swtpm and QEMU (a domain without a guest OS): swtpm is
//! started before QEMU and manufactures the TPM in the domain's state folder, QEMU is
//! wired to it, swtpm ends with QEMU (also across a kill -9 of virtqemud), and undefine
//! removes the state unless asked to keep it.

use std::path::Path;
use std::time::Duration;

mod support;

use common::harness::wait_gone;
use support::{domain, qemu_cmdline, qemud, Qemud};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const UNDEFINE_KEEP_TPM: u32 = 64;

fn xml(name: &str, uuid: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
         </devices></domain>"
    )
}

fn pid_in(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .expect("pid")
}

/// swtpm's pidfile, in the folder of the one run in `run`.
fn swtpm_pidfile(run: &Path) -> std::path::PathBuf {
    std::fs::read_dir(run)
        .expect("run dir")
        .flatten()
        .map(|e| e.path().join("swtpm.pid"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no domain-*/swtpm.pid in {}", run.display()))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swtpm_lives_and_dies_with_its_qemu() {
    assert!(
        Path::new("/usr/bin/swtpm").exists(),
        "this test needs the 'swtpm' package (scripts/install-deps.sh installs it)"
    );
    let Qemud {
        bus,
        mut daemon,
        conn,
        qc,
    } = qemud(BIN).await;
    let run = daemon.dirs.runtime.join("qemu");
    let swtpm_root = daemon.dirs.config.join("qemu").join("swtpm");

    let uuid = "6d1c0f5e-2b7a-4c39-8e41-0a9b7c3d2e15";
    let path = qc
        .domain_define_xml(&xml("t1", uuid))
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start");
    let swtpm = pid_in(&swtpm_pidfile(&run));
    let qemu = pid_in(&run.join("t1.pid"));
    assert!(alive(swtpm) && alive(qemu));
    let comm = std::fs::read_to_string(format!("/proc/{swtpm}/comm")).expect("comm");
    assert_eq!(comm.trim(), "swtpm");
    let argv = qemu_cmdline(&daemon.dirs.runtime, "t1");
    assert!(
        argv.contains("-tpmdev emulator,id=tpm-tpm0,chardev=chrtpm")
            && argv.contains("tpm-crb,tpmdev=tpm-tpm0"),
        "{argv}"
    );
    // The TPM was manufactured into the domain's own state folder.
    let state = swtpm_root.join(uuid).join("tpm2");
    assert!(
        state.join("tpm2-00.permall").exists(),
        "no TPM state in {}",
        state.display()
    );

    // kill -9 of virtqemud: QEMU and swtpm run on; after the restart a destroy ends both.
    daemon.kill9();
    assert!(alive(swtpm) && alive(qemu));
    daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
    let d = domain(&conn, &path).await;
    assert!(d.active().await.expect("active"));
    d.destroy(0).await.expect("destroy");
    assert!(wait_gone(qemu, Duration::from_secs(10)), "QEMU still runs");
    assert!(
        wait_gone(swtpm, Duration::from_secs(10)),
        "swtpm outlived QEMU"
    );

    // Undefine with KEEP_TPM keeps the state; the domain defined again with the same
    // uuid starts on it; a plain undefine removes it.
    let permall = std::fs::read(state.join("tpm2-00.permall")).expect("state");
    d.undefine(UNDEFINE_KEEP_TPM)
        .await
        .expect("undefine, keep tpm");
    assert_eq!(
        std::fs::read(state.join("tpm2-00.permall")).expect("kept"),
        permall
    );
    let path = qc
        .domain_define_xml(&xml("t1", uuid))
        .await
        .expect("define again");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start on the kept state");
    d.destroy(0).await.expect("destroy again");
    d.undefine(0).await.expect("undefine");
    assert!(
        !swtpm_root.join(uuid).exists(),
        "TPM state left after undefine"
    );
    drop(daemon);
}

/// The detached swtpm comes back to virtqemud (a child subreaper) as its child: when it
/// ends with its QEMU it is reaped, not left a zombie under the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swtpm_is_reaped_not_left_a_zombie() {
    assert!(
        Path::new("/usr/bin/swtpm").exists(),
        "this test needs the 'swtpm' package (scripts/install-deps.sh installs it)"
    );
    let Qemud {
        bus: _bus,
        daemon,
        conn,
        qc,
    } = qemud(BIN).await;
    let run = daemon.dirs.runtime.join("qemu");
    let uuid = "6d1c0f5e-2b7a-4c39-8e41-0a9b7c3d2e16";
    let path = qc
        .domain_define_xml(&xml("t2", uuid))
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("start");
    let swtpm = pid_in(&swtpm_pidfile(&run));
    let parent = std::fs::read_to_string(format!("/proc/{swtpm}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")?
                .1
                .split(' ')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    assert_eq!(parent, Some(daemon.pid), "swtpm is the daemon's child");
    d.destroy(0).await.expect("destroy");
    let start = std::time::Instant::now();
    while alive(swtpm) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(swtpm), "swtpm {swtpm} is still in /proc (a zombie?)");
    d.undefine(0).await.expect("undefine");
}
