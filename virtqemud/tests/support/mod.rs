//! Helpers shared by the integration tests that boot the tiny guest.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// The tiny guest (vmlinuz, initrd.img), built by scripts/build-test-guest.sh. The script
/// runs once per test process even when a guest is cached: it rebuilds only when its
/// recipe or the kernel changed, so a guest cached by an older recipe is replaced.
pub fn test_guest() -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = std::env::var_os("VIRT_TEST_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/virt-rs/guest")
        });
    BUILT.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/build-test-guest.sh"
        );
        let st = std::process::Command::new(script)
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/build-test-guest.sh");
        // Without apt lists a cached guest of any recipe still boots the older tests.
        let cached = dir.join("vmlinuz").exists() && dir.join("initrd.img").exists();
        assert!(
            st.success() || cached,
            "scripts/build-test-guest.sh failed ({st}); the boot test needs the tiny guest"
        );
    });
    dir
}

/// The recipe of the guest in [`test_guest`] (the `recipe=N` of its manifest's first line).
pub fn guest_recipe() -> u32 {
    std::fs::read_to_string(test_guest().join("manifest.txt"))
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .find_map(|w| w.strip_prefix("recipe=")?.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the guest's serial log (a file) holds `marker`; the log on failure.
pub async fn wait_serial(serial: &Path, marker: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).into_owned();
        if text.contains(marker) {
            return text;
        }
        if start.elapsed() > within {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("no '{marker}' within {within:?}; serial ends:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A direct-kernel-boot domain of the tiny guest with its serial console in `serial`
/// and `nics` (interface elements) as its devices.
pub fn guest_xml(name: &str, serial: &Path, nics: &str) -> String {
    let guest = test_guest();
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1</cmdline></os>\
         <devices>{nics}<serial type='file'><source path='{}'/></serial></devices></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display(),
        serial.display()
    )
}

/// Another daemon's binary, built beside virtqemud by `cargo build --workspace`.
pub fn sibling_daemon(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_virtqemud")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: this test needs {name}, run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The message of an `org.libvirt.Error` reply (panics on anything else).
pub fn bus_err<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            msg.unwrap_or_default()
        }
        other => panic!("expected org.libvirt.Error, got {other:?}"),
    }
}

/// A domain proxy that reads properties afresh on every call.
pub async fn domain<'a>(
    conn: &zbus::Connection,
    path: &zbus::zvariant::OwnedObjectPath,
) -> common::proxies::qemu::DomainProxy<'a> {
    common::proxies::qemu::DomainProxy::builder(conn)
        .path(path.clone())
        .expect("path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("domain proxy")
}

/// The domain's state with its reason, read with GetState and typed.
pub async fn state(d: &common::proxies::qemu::DomainProxy<'_>) -> common::event::StateReason {
    let (state, reason) = d.get_state(0).await.expect("state");
    common::event::StateReason::from_wire(state, reason)
        .unwrap_or_else(|| panic!("state {state} is not libvirt's"))
}

/// A private bus with a virtqemud on it, a client connection and its Connect proxy.
pub struct Qemud {
    pub bus: common::harness::TestBus,
    pub daemon: common::harness::Daemon,
    pub conn: zbus::Connection,
    pub qc: common::proxies::qemu::QemuConnectProxy<'static>,
}

/// Starts [`Qemud`] with the virtqemud binary `bin` (the test's `CARGO_BIN_EXE_virtqemud`).
pub async fn qemud(bin: &str) -> Qemud {
    let bus = common::harness::TestBus::start().expect("bus");
    let daemon = common::harness::Daemon::builder(bin, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = common::proxies::qemu::QemuConnectProxy::new(&conn)
        .await
        .expect("proxy");
    Qemud {
        bus,
        daemon,
        conn,
        qc,
    }
}

/// The PID of the QEMU of the running domain `name`, from its pidfile in `run_dir`.
pub fn qemu_pid(run_dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(run_dir.join("qemu").join(format!("{name}.pid")))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid")
}

/// A new qcow2 image `name` of `size` (qemu-img's syntax, `16M`) in `dir`.
pub fn qcow2(dir: &Path, name: &str, size: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg(size)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img create {}", img.display());
    img
}

/// Fixed host resources for building command lines without this host's: hugetlbfs
/// mounts (2 MiB the default), a desktop's display and render node, SCSI generic
/// devices and USB devices (a hub and two devices).
pub fn fixture_host(c: &mut virtqemud::command_line::LaunchContext) {
    c.hugetlbfs = vec![
        (2048, "/dev/hugepages".into()),
        (1048576, "/dev/hugepages1G".into()),
    ];
    c.display = Some(":0".into());
    c.render_node = Some("/dev/dri/renderD128".into());
    c.scsi_generic = (0..3)
        .map(|u| (format!("0:0:0:{u}"), format!("/dev/sg{u}").into()))
        .collect();
    c.usb_devices = [
        (0x1d6b, 0x0002, 14, 6),
        (0x1234, 0xbeef, 14, 7),
        (0x0781, 0x5581, 15, 6),
    ]
    .into_iter()
    .map(
        |(vendor, product, bus, device)| virtqemud::command_line::UsbHostDev {
            vendor,
            product,
            bus,
            device,
        },
    )
    .collect();
}

/// QEMU's argv of the running domain `name`, found by its pidfile in `run_dir`, joined
/// with spaces.
pub fn qemu_cmdline(run_dir: &Path, name: &str) -> String {
    std::fs::read(format!("/proc/{}/cmdline", qemu_pid(run_dir, name)))
        .expect("cmdline")
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A QMP monitor of QEMU's own, added by a test through `<qemu:commandline>`, to ask
/// QEMU things the D-Bus API does not tell.
pub struct Probe {
    stream: std::os::unix::net::UnixStream,
    lines: std::io::Lines<std::io::BufReader<std::os::unix::net::UnixStream>>,
}

impl Probe {
    /// Connects to the monitor at `path` and negotiates capabilities.
    pub fn connect(path: &Path) -> Probe {
        use std::io::BufRead;
        let stream = std::os::unix::net::UnixStream::connect(path).expect("probe monitor");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let lines = std::io::BufReader::new(stream.try_clone().expect("clone")).lines();
        let mut p = Probe { stream, lines };
        let greeting = p.line();
        assert!(greeting["QMP"].is_object(), "{greeting}");
        p.execute(serde_json::json!({"execute": "qmp_capabilities"}));
        p
    }

    fn line(&mut self) -> serde_json::Value {
        let l = self.lines.next().expect("monitor open").expect("read");
        serde_json::from_str(&l).expect("json")
    }

    /// Sends one command; returns its reply (events in between are skipped).
    pub fn execute(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.stream, "{cmd}").expect("send");
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// The XML that adds this monitor, listening at `path`, to a domain (inside a
    /// `<domain xmlns:qemu=...>`).
    pub fn commandline(path: &Path) -> String {
        format!(
            "<qemu:commandline><qemu:arg value='-chardev'/>\
             <qemu:arg value='socket,id=probe,path={},server=on,wait=off'/>\
             <qemu:arg value='-mon'/><qemu:arg value='chardev=probe,mode=control'/>\
             </qemu:commandline>",
            path.display()
        )
    }
}

/// The ids a `/proc/PID/status` line holds (`Uid:`, `Gid:`, `Groups:`).
pub fn ids(pid: u32, key: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .expect("ids")
}

/// One kill of a storm: `call` runs, the daemon is killed `delay` into it and started
/// again. Whether the call got a successful reply, and the new daemon.
pub async fn kill_during<T: Send + 'static>(
    mut daemon: common::harness::Daemon,
    bus: &common::harness::TestBus,
    delay: Duration,
    call: tokio::task::JoinHandle<zbus::Result<T>>,
) -> (bool, common::harness::Daemon) {
    tokio::time::sleep(delay).await;
    daemon.kill9();
    let replied = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .and_then(|j| j.ok())
        .is_some_and(|r| r.is_ok());
    let daemon = daemon.restart_builder().spawn(bus).await.expect("restart");
    (replied, daemon)
}

/// A storm round's verdict for its log line: "ok", or what broke.
pub fn verdict(problems: &[String]) -> String {
    if problems.is_empty() {
        "ok".to_owned()
    } else {
        problems.join("; ")
    }
}
