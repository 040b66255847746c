//! polkit decides who may call the daemons on the system bus (docs/access.md).
//!
//! A private system bus with the project's policy files (systemd/dbus-1/system.d) and a
//! real polkitd with the project's action and rules files (systemd/polkit-1), both in a
//! private mount namespace: polkitd's folders are compiled in, so the test's files are
//! bind-mounted over them there, with test users in that namespace's /etc/passwd and
//! /etc/group only (the host is untouched). The four daemons and the front run as root
//! in system mode on that bus (virtnetworkd in a network namespace); callers are other
//! processes run under the test users' numeric uids:
//! - 4301 `vtadmin`, in group `libvirt`: manages (the shipped 60-libvirt.rules);
//! - 4302 `vtviewer`: reads; a test rule says NO to manage ("access denied");
//! - 4303 `vtnobody`: a test rule says NO to monitor ("access denied"); manage falls to
//!   the default auth_admin_keep, a challenge a daemon cannot answer ("authentication
//!   failed"); introspection still works.
//!
//! Root passes without polkit. The run ends with the measured cost of the check.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::harness::NetNs;

const FRONT: &str = env!("CARGO_BIN_EXE_virtproxyd");
const CONNECT: &str = "/org/libvirt/QEMU";
const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
const ADMIN: u32 = 4301;
const VIEWER: u32 = 4302;
const NOBODY: u32 = 4303;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(FRONT).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: this test needs {name}, run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The test's rules: tried before the shipped 60-libvirt.rules (files sort by name).
const TEST_RULES: &str = r#"
polkit.addRule(function(action, subject) {
    if (subject.user == "vtviewer" && action.id == "org.libvirt.unix.manage")
        return polkit.Result.NO;
    if (subject.user == "vtnobody" && action.id == "org.libvirt.unix.monitor")
        return polkit.Result.NO;
});
"#;

/// Private system bus + polkitd in a private mount namespace. Dropping it stops both.
struct Lab {
    dir: tempfile::TempDir,
    ns: Child,
    address: String,
}

impl Lab {
    fn start() -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test runs polkitd in a mount namespace and calls as other users: run it as root"
        );
        assert!(
            Path::new(POLKITD).exists(),
            "{POLKITD} is missing: install the package polkitd (scripts/install-deps.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("vtpk")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        // polkitd drops to its own user and must read the folders; callers reach the socket.
        set_mode(d, 0o755);
        for sub in ["actions", "share-rules", "etc-rules", "system.d"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
            set_mode(&d.join(sub), 0o755);
        }
        let copy = |from: PathBuf, to: PathBuf| {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        };
        copy(
            "/usr/share/polkit-1/actions/org.freedesktop.policykit.policy".into(),
            d.join("actions/org.freedesktop.policykit.policy"),
        );
        let shipped = repo().join("systemd");
        copy(
            shipped.join("polkit-1/actions/org.libvirt.unix.policy"),
            d.join("actions/org.libvirt.unix.policy"),
        );
        copy(
            shipped.join("polkit-1/rules.d/60-libvirt.rules"),
            d.join("share-rules/60-libvirt.rules"),
        );
        std::fs::write(d.join("etc-rules/50-test.rules"), TEST_RULES).expect("rules");
        for entry in std::fs::read_dir(shipped.join("dbus-1/system.d")).expect("system.d") {
            let p = entry.expect("entry").path();
            copy(
                p.clone(),
                d.join("system.d").join(p.file_name().expect("name")),
            );
        }
        copy(
            "/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf".into(),
            d.join("system.d/org.freedesktop.PolicyKit1.conf"),
        );
        write_identities(d);
        let socket = d.join("system_bus_socket");
        std::fs::write(d.join("bus.conf"), bus_conf(&socket, &d.join("system.d"))).expect("conf");
        let inner = format!(
            "set -e\n\
             mount --bind {d}/actions /usr/share/polkit-1/actions\n\
             mount --bind {d}/share-rules /usr/share/polkit-1/rules.d\n\
             mount --bind {d}/etc-rules /etc/polkit-1/rules.d\n\
             mount --bind {d}/passwd /etc/passwd\n\
             mount --bind {d}/group /etc/group\n\
             dbus-daemon --config-file={d}/bus.conf --nofork --nopidfile >{d}/dbus.log 2>&1 &\n\
             echo $! > {d}/dbus.pid\n\
             for i in $(seq 200); do [ -S {s} ] && break; sleep 0.05; done\n\
             DBUS_SYSTEM_BUS_ADDRESS=unix:path={s} {POLKITD} >{d}/polkitd.log 2>&1 &\n\
             echo $! > {d}/polkitd.pid\n\
             wait\n",
            d = d.display(),
            s = socket.display()
        );
        let ns = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &inner])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("ns.log")).expect("log"))
            .spawn()
            .expect("unshare (util-linux)");
        Lab {
            address: format!("unix:path={}", socket.display()),
            dir,
            ns,
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for f in ["polkitd.pid", "dbus.pid"] {
            if let Ok(pid) = self.log(f).trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        // The namespace's shell reaps both and ends once they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.ns.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.ns.kill();
        let _ = self.ns.wait();
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
}

/// The host's users and groups plus the test's, for the namespace only.
fn write_identities(d: &Path) {
    let mut passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    let mut group = String::new();
    let mut has_libvirt = false;
    for line in std::fs::read_to_string("/etc/group")
        .expect("group")
        .lines()
    {
        if line.starts_with("libvirt:") {
            has_libvirt = true;
            let sep = if line.ends_with(':') { "" } else { "," };
            group.push_str(&format!("{line}{sep}vtadmin\n"));
        } else {
            group.push_str(line);
            group.push('\n');
        }
    }
    if !has_libvirt {
        group.push_str("libvirt:x:4300:vtadmin\n");
    }
    for (name, id) in [
        ("vtadmin", ADMIN),
        ("vtviewer", VIEWER),
        ("vtnobody", NOBODY),
    ] {
        passwd.push_str(&format!(
            "{name}:x:{id}:{id}::/nonexistent:/usr/sbin/nologin\n"
        ));
        group.push_str(&format!("{name}:x:{id}:\n"));
    }
    std::fs::write(d.join("passwd"), passwd).expect("passwd");
    std::fs::write(d.join("group"), group).expect("group");
    set_mode(&d.join("passwd"), 0o644);
    set_mode(&d.join("group"), 0o644);
}

/// The default-deny shape of Debian's system.conf plus the shipped policy files.
fn bus_conf(socket: &Path, policies: &Path) -> String {
    format!(
        "<busconfig>\n <type>system</type>\n <listen>unix:path={}</listen>\n \
         <auth>EXTERNAL</auth>\n <policy context='default'>\n  <allow user='*'/>\n  \
         <deny own='*'/>\n  <deny send_type='method_call'/>\n  <allow send_type='signal'/>\n  \
         <allow send_requested_reply='true' send_type='method_return'/>\n  \
         <allow send_requested_reply='true' send_type='error'/>\n  \
         <allow receive_type='method_call'/>\n  <allow receive_type='method_return'/>\n  \
         <allow receive_type='error'/>\n  <allow receive_type='signal'/>\n  \
         <allow send_destination='org.freedesktop.DBus' send_interface='org.freedesktop.DBus'/>\n  \
         <allow send_destination='org.freedesktop.DBus' send_interface='org.freedesktop.DBus.Introspectable'/>\n \
         </policy>\n <includedir>{}</includedir>\n</busconfig>\n",
        socket.display(),
        policies.display()
    )
}

/// One daemon in system mode on the lab's bus, with its own folders; stopped on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(lab: &Lab, name: &'static str, netns: Option<&NetNs>) -> Proc {
    let root = lab.dir.path().join(name);
    let bin = if name == "virtproxyd" {
        PathBuf::from(FRONT)
    } else {
        sibling(name)
    };
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["nsenter".into(), format!("--net={}", ns.path().display())]);
    }
    argv.push(bin.display().to_string());
    argv.push("--system".into());
    for (opt, sub) in [
        ("--config-dir", "etc"),
        ("--state-dir", "lib"),
        ("--runtime-dir", "run"),
    ] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        argv.push(opt.into());
        argv.push(root.join(sub).display().to_string());
    }
    let log = lab.dir.path().join(format!("{name}.log"));
    let f = std::fs::File::create(&log).expect("log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &lab.address)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_STARTER_ADDRESS")
        .env_remove("DBUS_STARTER_BUS_TYPE")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { child, log }
}

async fn wait_for_name(conn: &zbus::Connection, name: &str, what: impl Fn() -> String) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.expect("DBus proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bus_name = zbus::names::BusName::try_from(name).expect("name");
        if dbus.name_has_owner(bus_name).await.unwrap_or(false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never appeared:\n{}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `busctl ARGS` on the lab's bus as `uid` (its own group, no supplementary groups:
/// polkit reads group membership from the user database, as libvirt relies on).
fn busctl_as(lab: &Lab, uid: u32, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("busctl");
    cmd.arg(format!("--address={}", lab.address))
        .arg("--timeout=20")
        .args(args)
        .stdin(Stdio::null());
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
    let out: Output = cmd.output().expect("busctl (package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Like [`busctl_as`], panicking unless the call succeeds.
fn ok_as(lab: &Lab, uid: u32, args: &[&str]) -> String {
    let (ok, text) = busctl_as(lab, uid, args);
    assert!(ok, "uid {uid}: busctl {args:?} failed: {text}");
    text
}

/// Like [`busctl_as`], panicking unless the call fails with `want` in the message.
fn refused_as(lab: &Lab, uid: u32, args: &[&str], want: &str) {
    let (ok, text) = busctl_as(lab, uid, args);
    assert!(!ok, "uid {uid}: busctl {args:?} succeeded: {text}");
    assert!(
        text.contains(want),
        "uid {uid}: busctl {args:?}: expected {want:?}, got {text}"
    );
}

/// The object path in busctl's `o "/org/..."` answer.
fn path_in(text: &str) -> String {
    text.split('"').nth(1).expect("an object path").to_owned()
}

fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

const QEMUD: &str = "org.libvirt.virtqemud";
const FRONT_NAME: &str = "org.libvirt";
const CONN: &str = "org.libvirt.Connect";
const DOM: &str = "org.libvirt.Domain";

struct Stack {
    // Clients first, then the daemons, then the bus and polkitd.
    root: zbus::Connection,
    _procs: Vec<Proc>,
    _ns: NetNs,
    lab: Lab,
}

async fn start() -> Stack {
    let lab = Lab::start();
    // The bus socket appears first, then polkitd owns its name.
    let deadline = Instant::now() + Duration::from_secs(20);
    let root = loop {
        match zbus::connection::Builder::address(lab.address.as_str())
            .expect("address")
            .build()
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the private system bus never came up: {e}\n{}\n{}",
                    lab.log("ns.log"),
                    lab.log("dbus.log")
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_name(&root, "org.freedesktop.PolicyKit1", || {
        format!("{}\n{}", lab.log("ns.log"), lab.log("polkitd.log"))
    })
    .await;
    let ns = NetNs::new().expect("netns");
    let mut procs = Vec::new();
    for d in [
        "virtnodedevd",
        "virtstoraged",
        "virtnetworkd",
        "virtqemud",
        "virtproxyd",
    ] {
        let p = spawn(&lab, d, (d == "virtnetworkd").then_some(&ns));
        let own = if d == "virtproxyd" {
            FRONT_NAME.to_owned()
        } else {
            format!("org.libvirt.{d}")
        };
        let log = p.log.clone();
        wait_for_name(&root, &own, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
        procs.push(p);
    }
    Stack {
        root,
        _procs: procs,
        _ns: ns,
        lab,
    }
}

fn list(dest: &str) -> Vec<&str> {
    vec!["call", dest, CONNECT, CONN, "ListDomains", "u", "0"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_decides_who_manages_and_who_reads() {
    let s = start().await;
    let lab = &s.lab;

    // Root: everything, without polkit (in-process client and busctl).
    let reply = s
        .root
        .call_method(
            Some(FRONT_NAME),
            CONNECT,
            Some(CONN),
            "ListDomains",
            &(0u32,),
        )
        .await
        .expect("root lists through org.libvirt");
    let _: Vec<zbus::zvariant::OwnedObjectPath> = reply.body().deserialize().expect("ao");
    ok_as(lab, 0, &list(QEMUD));
    ok_as(lab, 0, &["get-property", QEMUD, CONNECT, CONN, "Hostname"]);

    let (dom, pool) = admin_manages(lab);
    viewer_reads(lab, &dom, &pool);
    nobody_only_introspects(lab, &dom);
    every_daemon_checks(lab);

    // Clean up as the admin (and prove Undefine through the front).
    ok_as(
        lab,
        ADMIN,
        &["call", FRONT_NAME, &dom, DOM, "Undefine", "u", "0"],
    );
    ok_as(
        lab,
        ADMIN,
        &[
            "call",
            FRONT_NAME,
            &pool,
            "org.libvirt.StoragePool",
            "Destroy",
        ],
    );

    measure(&s).await;
}

/// The libvirt group manages: through org.libvirt and directly. Returns the domain
/// and pool it leaves defined.
fn admin_manages(lab: &Lab) -> (String, String) {
    let xml = domain_xml("pk-admin");
    let dom = path_in(&ok_as(
        lab,
        ADMIN,
        &[
            "call",
            FRONT_NAME,
            CONNECT,
            CONN,
            "DomainDefineXML",
            "s",
            &xml,
        ],
    ));
    ok_as(
        lab,
        ADMIN,
        &["call", FRONT_NAME, &dom, DOM, "Create", "u", "0"],
    );
    let state = ok_as(
        lab,
        ADMIN,
        &["call", FRONT_NAME, &dom, DOM, "GetState", "u", "0"],
    );
    assert!(
        state.starts_with("(ii) 1 "),
        "running after Create: {state}"
    );
    ok_as(
        lab,
        ADMIN,
        &["call", FRONT_NAME, &dom, DOM, "Destroy", "u", "0"],
    );
    ok_as(
        lab,
        ADMIN,
        &[
            "set-property",
            FRONT_NAME,
            &dom,
            DOM,
            "Autostart",
            "b",
            "true",
        ],
    );
    let pool_dir = lab.dir.path().join("pool");
    std::fs::create_dir(&pool_dir).expect("pool dir");
    let pool_xml = format!(
        "<pool type='dir'><name>pk-pool</name><target><path>{}</path></target></pool>",
        pool_dir.display()
    );
    let pool = path_in(&ok_as(
        lab,
        ADMIN,
        &[
            "call",
            FRONT_NAME,
            CONNECT,
            CONN,
            "StoragePoolCreateXML",
            "su",
            &pool_xml,
            "0",
        ],
    ));
    // ... and directly to a daemon's own name.
    let xml2 = domain_xml("pk-admin-direct");
    let dom2 = path_in(&ok_as(
        lab,
        ADMIN,
        &["call", QEMUD, CONNECT, CONN, "DomainDefineXML", "s", &xml2],
    ));
    ok_as(
        lab,
        ADMIN,
        &["call", QEMUD, &dom2, DOM, "Undefine", "u", "0"],
    );

    (dom, pool)
}

/// The viewer reads, through the front and directly, and changes nothing.
fn viewer_reads(lab: &Lab, dom: &str, pool: &str) {
    // The XML with secrets (VIR_DOMAIN_XML_SECURE) is not a read libvirt allows.
    ok_as(
        lab,
        ADMIN,
        &["call", FRONT_NAME, dom, DOM, "GetXMLDesc", "u", "1"],
    );
    for dest in [FRONT_NAME, QEMUD] {
        let listed = ok_as(lab, VIEWER, &list(dest));
        assert!(
            listed.contains(dom),
            "{dest}: viewer's list lacks {dom}: {listed}"
        );
        ok_as(
            lab,
            VIEWER,
            &["call", dest, dom, DOM, "GetXMLDesc", "u", "0"],
        );
        refused_as(
            lab,
            VIEWER,
            &["call", dest, dom, DOM, "GetXMLDesc", "u", "1"],
            "access denied",
        );
        refused_as(
            lab,
            VIEWER,
            &[
                "call",
                dest,
                CONNECT,
                CONN,
                "DomainDefineXML",
                "s",
                &domain_xml("pk-viewer"),
            ],
            "access denied: polkit denies 'org.libvirt.unix.manage' to uid 4302",
        );
        refused_as(
            lab,
            VIEWER,
            &["call", dest, dom, DOM, "Create", "u", "0"],
            "access denied",
        );
    }
    ok_as(lab, VIEWER, &["get-property", FRONT_NAME, dom, DOM, "Name"]);
    ok_as(
        lab,
        VIEWER,
        &[
            "call",
            FRONT_NAME,
            pool,
            "org.libvirt.StoragePool",
            "GetXMLDesc",
            "u",
            "0",
        ],
    );
    refused_as(
        lab,
        VIEWER,
        &[
            "set-property",
            FRONT_NAME,
            dom,
            DOM,
            "Autostart",
            "b",
            "false",
        ],
        "access denied",
    );
    // Properties of a daemon itself stay root's: zbus answers them before any check.
    refused_as(
        lab,
        VIEWER,
        &["get-property", QEMUD, dom, DOM, "Name"],
        "Access denied",
    );
}

/// Each of the four daemons checks its own callers: a list and a define of each, called
/// straight to the daemon's name, as the viewer (reads only) and the third user.
fn every_daemon_checks(lab: &Lab) {
    let daemons: [(&str, &str, [&str; 2], [&str; 4]); 4] = [
        (
            "virtqemud",
            "ListDomains",
            ["u", "0"],
            ["DomainDefineXML", "s", "<domain/>", ""],
        ),
        (
            "virtnetworkd",
            "ListNetworks",
            ["u", "0"],
            ["NetworkDefineXML", "s", "<network/>", ""],
        ),
        (
            "virtstoraged",
            "ListStoragePools",
            ["u", "0"],
            ["StoragePoolDefineXML", "su", "<pool/>", "0"],
        ),
        (
            "virtnodedevd",
            "ListNodeDevices",
            ["u", "0"],
            ["NodeDeviceCreateXML", "su", "<device/>", "0"],
        ),
    ];
    for (daemon, list, list_args, define) in daemons {
        let dest = format!("org.libvirt.{daemon}");
        let mut list_call = vec!["call", dest.as_str(), CONNECT, CONN, list];
        list_call.extend(list_args);
        let mut define_call = vec!["call", dest.as_str(), CONNECT, CONN];
        define_call.extend(define.iter().filter(|a| !a.is_empty()));
        ok_as(lab, VIEWER, &list_call);
        // Refused before the (invalid) XML is even read.
        refused_as(
            lab,
            VIEWER,
            &define_call,
            "access denied: polkit denies 'org.libvirt.unix.manage'",
        );
        refused_as(
            lab,
            NOBODY,
            &list_call,
            "access denied: polkit denies 'org.libvirt.unix.monitor'",
        );
        refused_as(
            lab,
            NOBODY,
            &define_call,
            "authentication failed: 'org.libvirt.unix.manage'",
        );
        // The admin's define reaches the driver, which rejects the XML itself.
        let (ok, text) = busctl_as(lab, ADMIN, &define_call);
        assert!(
            !ok && !text.contains("access denied") && !text.contains("authentication failed"),
            "{daemon}: the admin's invalid define should fail in the driver: {text}"
        );
    }
}

/// The third user: introspection only.
fn nobody_only_introspects(lab: &Lab, dom: &str) {
    // The Connect properties the front merges from the four: a read.
    let get_all = [
        "call",
        FRONT_NAME,
        CONNECT,
        "org.freedesktop.DBus.Properties",
        "GetAll",
        "s",
        CONN,
    ];
    ok_as(lab, VIEWER, &get_all);
    refused_as(
        lab,
        NOBODY,
        &get_all,
        "access denied: polkit denies 'org.libvirt.unix.monitor'",
    );
    for dest in [FRONT_NAME, QEMUD] {
        let intro = ok_as(
            lab,
            NOBODY,
            &[
                "call",
                dest,
                CONNECT,
                "org.freedesktop.DBus.Introspectable",
                "Introspect",
            ],
        );
        assert!(intro.contains("org.libvirt.Connect"), "{dest}: {intro}");
        refused_as(
            lab,
            NOBODY,
            &list(dest),
            "access denied: polkit denies 'org.libvirt.unix.monitor' to uid 4303",
        );
        // manage: auth_admin_keep by default, a challenge nobody can answer here.
        refused_as(
            lab,
            NOBODY,
            &["call", dest, dom, DOM, "Destroy", "u", "0"],
            "authentication failed: 'org.libvirt.unix.manage'",
        );
    }
    refused_as(
        lab,
        NOBODY,
        &["get-property", FRONT_NAME, CONNECT, CONN, "Hostname"],
        "access denied",
    );
}

/// Prints what the check costs: median latencies straight to virtqemud for a root and
/// a non-root caller, on the first call of a fresh connection (root: one
/// GetConnectionUnixUser; others: that plus one polkit round trip) and on later calls
/// (answered from the caches). `Peer.Ping`, which zbus answers without any check, is
/// the baseline of the same connection pattern.
async fn measure(s: &Stack) {
    const ROUNDS: usize = 40;
    const LATER: usize = 20;
    for (who, uid) in [("root", 0u32), ("vtviewer", VIEWER)] {
        for ping in [true, false] {
            let address = s.lab.address.clone();
            let (first, later) =
                std::thread::spawn(move || timed_as(uid, &address, ROUNDS, LATER, ping))
                    .join()
                    .expect("measuring thread");
            println!(
                "access check: {} to virtqemud as {who}: first call of a connection \
                 {:.3} ms, later calls {:.3} ms (medians, {ROUNDS} connections x {LATER} later calls)",
                if ping { "Peer.Ping (no check)" } else { "ListDomains" },
                median_ms(first),
                median_ms(later)
            );
        }
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// In a thread of its own, which takes `uid` for itself only (raw syscalls: glibc's
/// wrappers would change every thread of the test): connections it opens are that
/// user's on the bus.
fn timed_as(
    uid: u32,
    address: &str,
    rounds: usize,
    later: usize,
    ping: bool,
) -> (Vec<Duration>, Vec<Duration>) {
    if uid != 0 {
        // SAFETY: raw set*id syscalls change only the calling thread's credentials;
        // this thread does nothing else and ends after measuring.
        unsafe {
            assert_eq!(
                nix::libc::syscall(
                    nix::libc::SYS_setgroups,
                    0,
                    std::ptr::null::<nix::libc::gid_t>()
                ),
                0
            );
            assert_eq!(
                nix::libc::syscall(nix::libc::SYS_setresgid, uid, uid, uid),
                0
            );
            assert_eq!(
                nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid),
                0
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let conn = zbus::connection::Builder::address(address)
                .expect("address")
                .build()
                .await
                .expect("connect");
            for i in 0..=later {
                let t = Instant::now();
                if ping {
                    conn.call_method(
                        Some(QEMUD),
                        CONNECT,
                        Some("org.freedesktop.DBus.Peer"),
                        "Ping",
                        &(),
                    )
                    .await
                    .expect("Ping");
                } else {
                    conn.call_method(Some(QEMUD), CONNECT, Some(CONN), "ListDomains", &(0u32,))
                        .await
                        .expect("ListDomains");
                }
                let dt = t.elapsed();
                if i == 0 {
                    first.push(dt);
                } else {
                    rest.push(dt);
                }
            }
        }
        (first, rest)
    })
}

/// Every method and property setter of the four daemons' D-Bus layers starts with the
/// access check (the runtime test above calls only some of them). A source scan:
/// a method's first statement must be `common::access::check...`.
#[test]
fn every_daemon_method_checks_its_caller_first() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for daemon in ["virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd"] {
        let dir = repo().join(daemon).join("src/dbus");
        for entry in std::fs::read_dir(&dir).expect("src/dbus") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            let lines: Vec<&str> = text.lines().collect();
            let mut in_interface = false;
            for (i, line) in lines.iter().enumerate() {
                if line.starts_with("#[zbus::interface") {
                    in_interface = true;
                } else if in_interface && line.starts_with('}') {
                    in_interface = false;
                }
                let t = line.trim_start();
                let is_fn = t.starts_with("fn ")
                    || t.starts_with("async fn ")
                    || t.starts_with("pub async fn ");
                if !in_interface || !is_fn {
                    continue;
                }
                // The attributes above it: signals and property getters are not calls
                // the daemon answers itself.
                let attrs: String = lines[..i]
                    .iter()
                    .rev()
                    .take_while(|l| {
                        l.trim_start().starts_with("#[") || l.trim_start().starts_with("///")
                    })
                    .copied()
                    .collect();
                let name = t
                    .split("fn ")
                    .nth(1)
                    .unwrap_or("")
                    .split('(')
                    .next()
                    .unwrap_or("");
                if attrs.contains("signal")
                    || (attrs.contains("property") && !name.starts_with("set_"))
                {
                    continue;
                }
                // The first statement after the signature's opening brace.
                let open = (i..lines.len())
                    .find(|&j| lines[j].trim_end().ends_with('{'))
                    .expect("a body");
                let first = lines.get(open + 1).map_or("", |l| l.trim());
                if first.starts_with("common::access::check") {
                    checked += 1;
                } else {
                    missing.push(format!("{}: {name}", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "methods without the access check first:\n{}",
        missing.join("\n")
    );
    assert!(
        checked > 50,
        "only {checked} methods found: is the scan still right?"
    );
    println!("{checked} daemon methods and setters check their caller first");
}
