//! Golden files: every `golden/NAME.xml` is parsed, given defaults from a fixed
//! capability set and turned into argv, which must equal `golden/NAME.argv` (one
//! argument per line). A `golden/NAME.err` instead holds a text the error must contain.
//! `UPDATE_GOLDEN=1 cargo test -p virtqemud --test golden` rewrites the `.argv` files.

mod support;
use std::path::{Path, PathBuf};

use virtqemud::caps::Caps;
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::{Domain, GraphicsKind, XmlOpts};

fn ctx(dom: &Domain) -> LaunchContext {
    let mut c = LaunchContext::new(
        dom.devices
            .emulator
            .clone()
            .unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into()),
        "/run/virtqemud/dom-1.qmp".into(),
        "/run/virtqemud/dom-1.pid".into(),
        "/run/virtqemud".into(),
    );
    c.accel = Accel::Kvm;
    c.tpm_socket = Some("/run/virtqemud/swtpm-1.sock".into());
    c.tap_fds = vec![Some(30), Some(31), Some(32)];
    // Fixed host resources, not this host's.
    support::fixture_host(&mut c);
    c.volume_paths = vec![(
        "default".into(),
        "data.qcow2".into(),
        "/var/lib/images/data.qcow2".into(),
    )];
    c
}

fn run(xml_path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(xml_path).map_err(|e| e.to_string())?;
    let mut dom = Domain::parse(&text).map_err(|e| e.to_string())?;
    dom.fill_defaults(&Caps::fixture())
        .map_err(|e| e.to_string())?;
    // What is stored must come back the same.
    let stored = dom.to_xml(XmlOpts {
        secure: true,
        ..XmlOpts::default()
    });
    let mut again = Domain::parse(&stored).map_err(|e| format!("reparse: {e}"))?;
    again
        .fill_defaults(&Caps::fixture())
        .map_err(|e| format!("refill: {e}"))?;
    assert_eq!(again, dom, "{} does not round-trip", xml_path.display());
    // The runtime's choice of UEFI firmware, from Debian's ovmf descriptors.
    virtqemud::firmware::choose(
        &mut dom,
        &[Path::new("/usr/share/qemu/firmware")],
        Path::new("/var/lib/libvirt/qemu/nvram"),
    )
    .map_err(|e| e.to_string())?;
    // The runtime gives SPICE a free port; here always the first.
    for g in &mut dom.devices.graphics {
        if g.kind == GraphicsKind::Spice && g.port.is_none_or(|p| p <= 0) {
            g.port = Some(5900);
        }
    }
    let argv = build(&dom, &ctx(&dom)).map_err(|e| e.to_string())?;
    Ok(argv
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect())
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut xmls: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    xmls.sort();
    assert!(xmls.len() >= 8, "golden folder lost files: {xmls:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for x in &xmls {
        let argv_file = x.with_extension("argv");
        let err_file = x.with_extension("err");
        let got = run(x);
        if err_file.exists() {
            let want = std::fs::read_to_string(&err_file).unwrap();
            match got {
                Err(e) if e.contains(want.trim()) => {}
                other => failures.push(format!(
                    "{}: expected error containing {:?}, got {other:?}",
                    x.display(),
                    want.trim()
                )),
            }
            continue;
        }
        let got = match got {
            Ok(g) => g.join("\n") + "\n",
            Err(e) => {
                failures.push(format!("{}: {e}", x.display()));
                continue;
            }
        };
        if update {
            std::fs::write(&argv_file, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&argv_file) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}: argv differs\n--- want\n{want}--- got\n{got}",
                x.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", argv_file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Kills the QEMU started by a test when the test ends, however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The argv built from a typical domain really starts the installed QEMU (TCG, no
/// guest OS): QMP answers, the devices exist, the VM waits paused (-S).
#[tokio::test]
async fn built_argv_starts_real_qemu() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let emu = Path::new("/usr/bin/qemu-system-x86_64");
    let caps = Caps::load_or_probe(emu, &dir.path().join("caps"))
        .await
        .unwrap();
    let serial = dir.path().join("serial.log");
    let agent = dir.path().join("agent.sock");
    let xml = format!(
        "<domain type='qemu'><name>smoke,1</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
         <os><type machine='q35'>hvm</type></os><cpu mode='maximum'/>\
         <devices><serial type='file'><source path='{}'/></serial>\
         <channel type='unix'><source mode='bind' path='{}'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <interface type='user'/><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
         <input type='tablet' bus='usb'/><video><model type='virtio'/></video><memballoon model='virtio'/></devices></domain>",
        serial.display(),
        agent.display()
    );
    let mut dom = Domain::parse(&xml).unwrap();
    dom.fill_defaults(&caps).unwrap();
    let mut ctx = LaunchContext::new(
        emu.to_path_buf(),
        dir.path().join("qmp.sock"),
        dir.path().join("qemu.pid"),
        dir.path().to_path_buf(),
    );
    ctx.accel = Accel::Tcg;
    let argv = build(&dom, &ctx).unwrap();
    let child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::UnixStream::connect(&ctx.qmp_socket).await {
            stream = Some(s);
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("qemu exited with {status}: {err}\nargv: {argv:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stream = stream.expect("QMP socket never appeared");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    let mut ask = async |cmd: &str| -> String {
        let msg = if cmd.starts_with('{') {
            format!("{cmd}\n")
        } else {
            format!("{{\"execute\":\"{cmd}\"}}\n")
        };
        w.write_all(msg.as_bytes()).await.unwrap();
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.contains("\"return\"") || l.contains("\"error\"") {
                return l;
            }
        }
    };
    ask("qmp_capabilities").await;
    let status = ask("query-status").await;
    assert!(status.contains("\"prelaunch\""), "{status}");
    let name = ask("query-name").await;
    assert!(name.contains("smoke,1"), "{name}");
    let devs = ask(r#"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}"#).await;
    for id in [
        "net0",
        "rng0",
        "balloon0",
        "channel0",
        "serial0",
        "input0",
        "usb0",
        "video0",
        "virtio-serial0",
    ] {
        assert!(
            devs.contains(&format!("\"{id}\"")),
            "device {id} missing: {devs}"
        );
    }
    assert!(agent.exists(), "the agent channel socket was not created");
    assert!(serial.exists(), "the serial log was not created");
    let pid: u32 = std::fs::read_to_string(&ctx.pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, child.0.id());
    ask("quit").await;
}
