//! cockpit-machines in a real browser through `org.libvirt` (issue 13, item 3).
//!
//! Debian's cockpit-ws runs a local session (no TLS, no login) on loopback inside a
//! network namespace the test creates; its cockpit-bridge, like cockpit-machines, talks
//! to the system bus, which here is a private dbus-daemon (`DBUS_SYSTEM_BUS_ADDRESS`) on
//! which the four daemons (bus-activated, `--system`) and virtproxyd (bus-activated as
//! `org.libvirt`) run. Debian's headless Chromium, in the same namespace, is driven over
//! the DevTools protocol by `tests/cockpit/drive.py` (python3 + python3-websocket):
//! the Virtual Machines page lists both domains shut off, starts one and sees it running,
//! opens its overview (vCPUs, memory, the disk and the NIC of its XML), forces it off
//! and deletes it. The test then checks over D-Bus that the deletion reached the daemons.
//!
//! Screenshots are kept in `target/tmp/cockpit/` (`CARGO_TARGET_TMPDIR`).
//! Needs `scripts/install-deps.sh` (cockpit-ws, cockpit-bridge, chromium,
//! python3-websocket, and Debian's cockpit-machines unpacked; docs/cockpit.md says why)
//! and `cargo build --workspace`.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::harness::{wait_gone, NetNs, TestBus, TestDirs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod support;
use support::*;

const COCKPIT_WS: &str = "/usr/lib/cockpit/cockpit-ws";
const CHROMIUM: &str = "/usr/bin/chromium";
const PYTHON: &str = "/usr/bin/python3";
const PORT: u16 = 9090;
const VM: &str = "cockpit-a";
const OTHER: &str = "cockpit-b";
const MAC: &str = "52:54:00:c0:c4:01";

/// A process started in a process group of its own: dropping it ends the whole group
/// (Chromium's and cockpit-ws's children with it), by its id.
struct Group {
    child: Child,
    what: &'static str,
}

impl Group {
    fn spawn(ns: &NetNs, cmd: &mut Command, what: &'static str) -> Group {
        cmd.process_group(0).stdin(Stdio::null());
        let child = ns
            .spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Group { child, what }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(-(self.child.id() as i32));
        let _ = kill(pgid, Signal::SIGTERM);
        if !wait_gone(self.child.id(), Duration::from_secs(5)) {
            eprintln!("{} did not stop on SIGTERM, killing its group", self.what);
        }
        let _ = kill(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: this test needs {what} (run scripts/install-deps.sh as root)"
    );
}

/// Where Debian's cockpit-machines is: installed, or unpacked by install-deps.sh.
fn require_machines() {
    let found = [
        "/usr/share/cockpit/machines",
        "/usr/local/share/cockpit/machines",
    ]
    .iter()
    .any(|d| Path::new(d).join("manifest.json").exists());
    assert!(
        found,
        "cockpit-machines is missing (run scripts/install-deps.sh as root; docs/cockpit.md)"
    );
}

/// The command line of a daemon in system mode on the private bus: `--system` instead of
/// the harness' `--session`, the bus named by `DBUS_SYSTEM_BUS_ADDRESS`, all inside `ns`
/// (a guest's NIC, a network's bridge and its firewall stay there).
fn system_command_line(ns: &NetNs, bus: &TestBus, bin: &Path, dirs: &TestDirs) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "/usr/bin/nsenter".into(),
        format!("--net={}", ns.path().display()).into(),
        "/usr/bin/env".into(),
        format!("DBUS_SYSTEM_BUS_ADDRESS={}", bus.address).into(),
        bin.into(),
        "--system".into(),
    ];
    argv.extend(dirs.args().into_iter().filter(|a| a != "--session"));
    argv
}

fn domain_a(disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{VM}</name><memory unit='MiB'>96</memory><vcpu>2</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><mac address='{MAC}'/><model type='virtio'/></interface>\
         </devices></domain>",
        disk.display()
    )
}

async fn names(conn: &zbus::Connection) -> Vec<String> {
    let mut out = Vec::new();
    let list = ok(
        conn,
        CONNECT,
        "org.libvirt.Connect",
        "ListDomains",
        &(0u32,),
    )
    .await;
    for p in paths_of(&list) {
        let r = conn
            .call_method(
                Some("org.libvirt"),
                p.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.libvirt.Domain", "Name"),
            )
            .await
            .expect("Name");
        let v: zbus::zvariant::OwnedValue = r.body().deserialize().expect("a variant");
        out.push(String::try_from(v).expect("a string"));
    }
    out.sort();
    out
}

fn require_all() {
    require(COCKPIT_WS, "cockpit-ws");
    require("/usr/bin/cockpit-bridge", "cockpit-bridge");
    require(CHROMIUM, "chromium");
    require_machines();
    let check = Command::new(PYTHON)
        .args(["-c", "import websocket"])
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "the browser driver needs python3-websocket (run scripts/install-deps.sh as root)"
    );
}

/// The four daemons and the front, bus-activatable in system mode; their folders.
fn system_stack(ns: &NetNs, bus: &TestBus) -> Vec<Arc<TestDirs>> {
    let mut dirs = Vec::new();
    for d in BACKENDS {
        let dir = TestDirs::new().expect("dirs");
        let argv = system_command_line(ns, bus, &sibling(d), &dir);
        bus.add_activatable(d, &argv).expect("activation file");
        dirs.push(dir);
    }
    // The front is activated by its name, as systemd's BusName=org.libvirt does.
    let front_dirs = TestDirs::new().expect("dirs");
    let argv = system_command_line(ns, bus, Path::new(FRONT), &front_dirs);
    let exec: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::fs::write(
        bus.service_dir().join("org.libvirt.service"),
        format!(
            "[D-BUS Service]\nName=org.libvirt\nExec={}\n",
            exec.join(" ")
        ),
    )
    .expect("front activation file");
    dirs.push(front_dirs);
    dirs
}

fn log_file(scratch: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(scratch.join(name)).expect("log file")
}

/// cockpit-ws with a local session on loopback in `ns`, on the private bus.
fn cockpit_ws(ns: &NetNs, bus: &TestBus, scratch: &Path) -> Group {
    Group::spawn(
        ns,
        Command::new(COCKPIT_WS)
            .arg("--no-tls")
            .arg("--local-session=cockpit-bridge")
            .args(["--address", "127.0.0.1", "--port", &PORT.to_string()])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            // cockpit-machines may also ask the session bus (qemu:///session): the same
            // private bus answers, never the host's.
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("HOME", scratch)
            .env("XDG_RUNTIME_DIR", scratch)
            // The bridge spawns python3, udevadm, virsh...: Debian's, not a developer's
            // PATH (a pyenv python3 lacks python3-gi).
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdout(log_file(scratch, "cockpit-ws.log"))
            .stderr(log_file(scratch, "cockpit-ws.err")),
        "cockpit-ws",
    )
}

/// Headless Chromium in `ns`; it writes its DevTools port into `profile`.
fn chromium(ns: &NetNs, scratch: &Path, profile: &Path) -> Group {
    Group::spawn(
        ns,
        Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .env("HOME", scratch)
            .stdout(Stdio::null())
            .stderr(log_file(scratch, "chromium.log")),
        "chromium",
    )
}

/// Runs tests/cockpit/drive.py in `ns`; its output and whether it passed.
async fn drive(ns: &NetNs, profile: &Path, shots: &Path, disk: &Path) -> (String, bool) {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cockpit/drive.py");
    let url = format!("http://127.0.0.1:{PORT}/cockpit/@localhost/machines/index.html");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&driver)
        .arg(profile.join("DevToolsActivePort"))
        .arg(&url)
        .arg(shots)
        .args([VM, OTHER, MAC])
        .arg(disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = Group::spawn(ns, &mut cmd, "drive.py");
    let mut out = run.child.stdout.take().expect("stdout");
    let mut err = run.child.stderr.take().expect("stderr");
    tokio::task::spawn_blocking(move || {
        let mut t = String::new();
        let _ = out.read_to_string(&mut t);
        let _ = err.read_to_string(&mut t);
        let status = run.child.wait().expect("driver");
        let passed = status.success() && t.lines().any(|l| l == "PASS");
        (t, passed)
    })
    .await
    .expect("driver")
}

/// The last lines of cockpit-ws's and Chromium's logs, for a failure message.
fn logs(scratch: &Path) -> String {
    let mut s = String::new();
    for f in ["cockpit-ws.err", "chromium.log"] {
        let t = std::fs::read_to_string(scratch.join(f)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        s += &format!("--- {f} (last lines)\n");
        for l in &lines[lines.len().saturating_sub(30)..] {
            s += l;
            s.push('\n');
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cockpit_machines_lists_starts_shows_stops_and_deletes() {
    require_all();

    // Dropped in reverse order: browser, cockpit-ws, the client, the bus, the namespace,
    // then the folders (which kill any daemon or QEMU left over, by pidfile).
    let scratch = tempfile::Builder::new()
        .prefix("vc")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "set", "lo", "up"])
        .expect("lo up");
    let bus = TestBus::start().expect("bus");
    let dirs = system_stack(&ns, &bus);

    let conn = bus.connection().await.expect("conn");
    let disk = scratch.path().join("cockpit-a.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk image");
    for xml in [domain_a(&disk), domain_xml(OTHER)] {
        ok(
            &conn,
            CONNECT,
            "org.libvirt.Connect",
            "DomainDefineXML",
            &(xml,),
        )
        .await;
    }
    assert_eq!(names(&conn).await, [VM, OTHER]);
    // An active network and pool: the page counts them active only if GetAll's values
    // arrive double-wrapped, as libvirt-dbus sends them (docs/virtproxyd.md).
    let net = ok(
        &conn,
        CONNECT,
        "org.libvirt.Connect",
        "NetworkDefineXML",
        &(NETWORK_XML,),
    )
    .await;
    ok(&conn, &path_of(&net), "org.libvirt.Network", "Create", &()).await;
    let pool_dir = scratch.path().join("pool");
    std::fs::create_dir(&pool_dir).expect("pool folder");
    let xml = pool_xml(&pool_dir);
    ok(
        &conn,
        CONNECT,
        "org.libvirt.Connect",
        "StoragePoolCreateXML",
        &(xml, 0u32),
    )
    .await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cockpit");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    for old in [
        "overview-running.png",
        "list-after-delete.png",
        "failure.png",
    ] {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let cockpit = cockpit_ws(&ns, &bus, scratch.path());
    let profile = scratch.path().join("chromium");
    let browser = chromium(&ns, scratch.path(), &profile);
    let (text, passed) = drive(&ns, &profile, &shots, &disk).await;
    eprintln!("drive.py:\n{text}");
    assert!(
        passed,
        "the browser run failed; screenshots in {}\n{}",
        shots.display(),
        logs(scratch.path())
    );

    // The page's deletion reached the daemons: only the other domain is left.
    assert_eq!(names(&conn).await, [OTHER]);
    // Its delete dialog deletes the domain's disk by default, and did.
    assert!(!disk.exists(), "{} is still there", disk.display());
    for shot in ["overview-running.png", "list-after-delete.png"] {
        let len = std::fs::metadata(shots.join(shot)).map(|m| m.len());
        assert!(matches!(len, Ok(n) if n > 10_000), "{shot}: {len:?}");
    }
    drop(browser);
    drop(cockpit);
    drop(conn);
    drop(bus);
    drop(ns);
    drop(dirs);
}
