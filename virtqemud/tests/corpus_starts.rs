//! What the libvirt corpus work made definable also reaches QEMU as libvirt passes it:
//! a ramfb display, an external TPM (a swtpm the test runs, not the runtime) and a
//! UEFI variable store on an NBD server (qemu-nbd on a UNIX socket of the test), in one
//! q35 domain defined, defaulted and built as the daemon does, started with the
//! installed QEMU (TCG, paused) and asked over QMP what it has; and virtio devices'
//! `<driver>` options on q35 (behind root ports, so modern-only as `iommu` needs).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use virtqemud::caps::Caps;
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::Domain;

/// Kills a process the test started when the test ends, however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(argv: &[String]) -> Reap {
    Reap(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}")),
    )
}

/// Waits for `sock` to accept connections, failing if `child` exits first.
async fn wait_socket(sock: &Path, child: &mut Reap, what: &str) -> tokio::net::UnixStream {
    for _ in 0..200 {
        if let Ok(s) = tokio::net::UnixStream::connect(sock).await {
            return s;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("{what} exited with {status}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {} never appeared", sock.display());
}

#[tokio::test]
async fn ramfb_external_tpm_and_nbd_nvram_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let emu = Path::new("/usr/bin/qemu-system-x86_64");
    let caps = Caps::load_or_probe(emu, &d.join("caps")).await.unwrap();

    // The external TPM: swtpm on a control socket, as its owner would run it.
    let tpm_sock = d.join("swtpm.sock");
    std::fs::create_dir(d.join("tpm")).unwrap();
    let mut swtpm = spawn(&[
        "swtpm".into(),
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        format!("dir={}", d.join("tpm").display()),
        "--ctrl".into(),
        format!("type=unixio,path={}", tpm_sock.display()),
    ]);
    // Not connected to here: swtpm serves one client on its control socket, QEMU.
    for _ in 0..200 {
        if tpm_sock.exists() {
            break;
        }
        assert!(swtpm.0.try_wait().unwrap().is_none(), "swtpm exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tpm_sock.exists(), "swtpm made no socket");

    // The variable store, a copy of OVMF's template, served by qemu-nbd.
    let vars = d.join("VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let nbd_sock = d.join("nbd.sock");
    let mut nbd = spawn(&[
        "qemu-nbd".into(),
        "--format=raw".into(),
        "--export-name=vars".into(),
        "--persistent".into(),
        format!("--socket={}", nbd_sock.display()),
        vars.display().to_string(),
    ]);
    drop(wait_socket(&nbd_sock, &mut nbd, "qemu-nbd").await);

    let xml = format!(
        "<domain type='qemu'><name>corpus-starts</name><memory unit='MiB'>128</memory>\
         <os><type arch='x86_64' machine='q35'>hvm</type>\
         <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
         <nvram type='network'><source protocol='nbd' name='vars'>\
         <host transport='unix' socket='{}'/></source></nvram></os>\
         <devices><graphics type='vnc'><listen type='none'/></graphics>\
         <video><model type='ramfb'/></video>\
         <tpm model='tpm-crb'><backend type='external'>\
         <source type='unix' mode='connect' path='{}'/></backend></tpm>\
         </devices></domain>",
        nbd_sock.display(),
        tpm_sock.display()
    );
    let mut dom = Domain::parse(&xml).unwrap();
    dom.fill_defaults(&caps).unwrap();
    let mut ctx = LaunchContext::new(
        emu.to_path_buf(),
        d.join("qmp.sock"),
        d.join("qemu.pid"),
        d.to_path_buf(),
    );
    ctx.accel = Accel::Tcg;
    let argv: Vec<String> = build(&dom, &ctx)
        .unwrap()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut qemu = spawn(&argv);
    let stream = wait_socket(&ctx.qmp_socket, &mut qemu, "qemu").await;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    let mut ask = async |cmd: &str| -> String {
        w.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.contains("\"return\"") || l.contains("\"error\"") {
                return l;
            }
        }
    };
    ask(r#"{"execute":"qmp_capabilities"}"#).await;
    let devs = ask(r#"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}"#).await;
    for id in ["video0", "tpm0"] {
        assert!(devs.contains(&format!("\"{id}\"")), "{id} missing: {devs}");
    }
    let ty = |id: &str| {
        format!(
            r#"{{"execute":"qom-get","arguments":{{"path":"/machine/peripheral/{id}","property":"type"}}}}"#
        )
    };
    let video = ask(&ty("video0")).await;
    assert!(video.contains("\"ramfb\""), "{video}");
    let tpm = ask(&ty("tpm0")).await;
    assert!(tpm.contains("\"tpm-crb\""), "{tpm}");
    let tpms = ask(r#"{"execute":"query-tpm"}"#).await;
    assert!(tpms.contains("\"emulator\""), "{tpms}");
    // pflash1 is the NBD export.
    let nodes = ask(r#"{"execute":"query-named-block-nodes"}"#).await;
    let storage = nodes
        .split("\"node-name\"")
        .find(|n| n.contains("libvirt-pflash1-storage"));
    assert!(
        nodes.contains("libvirt-pflash1-storage") && nodes.contains("\"drv\": \"nbd\""),
        "pflash1 is not on NBD: {storage:?} in {nodes}"
    );
    ask(r#"{"execute":"quit"}"#).await;
}

/// Starts `argv` and returns QEMU (reaped on drop) with a QMP session past
/// `qmp_capabilities`.
async fn started(
    argv: &[String],
    qmp: &Path,
) -> (
    Reap,
    tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    tokio::net::unix::OwnedWriteHalf,
) {
    let mut qemu = spawn(argv);
    let stream = wait_socket(qmp, &mut qemu, "qemu").await;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines
        .next_line()
        .await
        .expect("QMP greeting")
        .expect("QMP greeting");
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await
        .expect("QMP write");
    while let Some(l) = lines.next_line().await.expect("QMP read") {
        if l.contains("\"return\"") {
            break;
        }
    }
    (qemu, lines, w)
}

#[tokio::test]
async fn virtio_driver_options_reach_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let emu = Path::new("/usr/bin/qemu-system-x86_64");
    let caps = Caps::load_or_probe(emu, &d.join("caps")).await.unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/virtio-options-input-rng-balloon-fs.xml");
    let xml = std::fs::read_to_string(golden)
        .unwrap()
        .replace("type='kvm'", "type='qemu'")
        .replace("/srv/share", &d.display().to_string());
    let mut dom = Domain::parse(&xml).unwrap();
    dom.fill_defaults(&caps).unwrap();
    let mut ctx = LaunchContext::new(
        emu.to_path_buf(),
        d.join("qmp.sock"),
        d.join("qemu.pid"),
        d.to_path_buf(),
    );
    ctx.accel = Accel::Tcg;
    let argv: Vec<String> = build(&dom, &ctx)
        .unwrap()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (_qemu, mut lines, mut w) = started(&argv, &ctx.qmp_socket).await;
    let mut get = async |id: &str, prop: &str| -> String {
        let cmd = format!(
            "{{\"execute\":\"qom-get\",\"arguments\":{{\"path\":\"/machine/peripheral/{id}\",\"property\":\"{prop}\"}}}}\n"
        );
        w.write_all(cmd.as_bytes()).await.unwrap();
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.contains("\"return\"") || l.contains("\"error\"") {
                return l;
            }
        }
    };
    for (id, prop, want) in [
        ("input0", "iommu_platform", "true"),
        ("input0", "page-per-vq", "true"),
        ("rng0", "iommu_platform", "true"),
        ("rng0", "packed", "false"),
        ("balloon0", "ats", "true"),
        ("fs0", "packed", "true"),
    ] {
        let got = get(id, prop).await;
        assert!(
            got.contains(&format!("\"return\": {want}")),
            "{id}.{prop}: {got}"
        );
    }
}
