//! What libvirt's XML describes runs here, on real QEMU (TCG): network disks through
//! QEMU's block layer, socket NICs between two guests, macvtap on a veth, chardevs of
//! every host-side type, USB/SATA/SCSI controllers and an automatically added PCI
//! bridge, and an i686 guest on qemu-system-i386. Each test starts its own bus and
//! virtqemud inside a network namespace it creates, and asks QEMU itself (a second QMP
//! monitor added with `<qemu:commandline>`) or the kernel what runs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::qemu::QemuConnectProxy;
use serde_json::{json, Value};
use support::{domain, Probe};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

/// A bus and a virtqemud inside a fresh network namespace.
struct Env {
    // Field order is drop order: the daemon (and its QEMUs) before the namespace.
    daemon: Daemon,
    conn: zbus::Connection,
    qc: QemuConnectProxy<'static>,
    _bus: TestBus,
    ns: NetNs,
}

impl Env {
    async fn start() -> Env {
        let ns = NetNs::new().expect("netns");
        let bus = TestBus::start().expect("bus");
        let daemon = Daemon::builder(BIN, "virtqemud")
            .netns(&ns)
            .spawn(&bus)
            .await
            .expect("virtqemud");
        let conn = bus.connection().await.expect("conn");
        let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
        Env {
            daemon,
            conn,
            qc,
            _bus: bus,
            ns,
        }
    }

    fn dir(&self) -> PathBuf {
        self.daemon.dirs.root.path().to_path_buf()
    }

    /// Defines and starts a domain of `machine` (`pc`, `q35`) and `arch` with `devices`
    /// and a probe monitor; returns the probe and the domain's path.
    async fn run(
        &self,
        name: &str,
        arch: &str,
        machine: &str,
        devices: &str,
    ) -> (Probe, zbus::zvariant::OwnedObjectPath) {
        let mon = self.dir().join(format!("{name}.qmp"));
        let xml = format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
             <name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>\
             <os><type arch='{arch}' machine='{machine}'>hvm</type></os>\
             <devices>{devices}<memballoon model='none'/></devices>{}</domain>",
            Probe::commandline(&mon)
        );
        let path = self.qc.domain_define_xml(&xml).await.expect("define");
        let d = domain(&self.conn, &path).await;
        if let Err(e) = d.create(0).await {
            let log = std::fs::read_to_string(
                self.daemon.dirs.state.join(format!("log/qemu/{name}.log")),
            )
            .unwrap_or_default();
            panic!("start {name}: {e}\nQEMU log:\n{log}");
        }
        (Probe::connect(&mon), path)
    }

    async fn live_xml(&self, path: &zbus::zvariant::OwnedObjectPath) -> String {
        domain(&self.conn, path)
            .await
            .get_xml_desc(0)
            .await
            .expect("xml")
    }

    /// A helper process inside the namespace, killed (by its PID) when dropped.
    fn spawn(&self, argv: &[&str]) -> Helper {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Helper(self.ns.spawn(&mut cmd).expect("spawn helper"))
    }
}

struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HMP through the probe (for what QMP does not show, such as netdev peers).
fn hmp(p: &mut Probe, cmd: &str) -> String {
    let r = p.execute(json!({"execute": "human-monitor-command",
        "arguments": {"command-line": cmd}}));
    r["return"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

/// Asks until `f` is true of HMP `cmd`'s answer (QEMU connects sockets asynchronously).
fn hmp_until(p: &mut Probe, cmd: &str, f: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = hmp(p, cmd);
        if f(&out) || start.elapsed() > Duration::from_secs(15) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn qmp_return(p: &mut Probe, cmd: &str) -> Value {
    let r = p.execute(json!({ "execute": cmd }));
    r.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{cmd}: {r}"))
}

/// Waits until `addr` accepts TCP connections inside the namespace (a helper started).
fn wait_listening(ns: &NetNs, port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let out = ns.run_ok(&["ss", "-Hltn"]).unwrap_or_default();
        if out.contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_disks_nbd_and_http_run_through_qemus_block_layer() {
    let env = Env::start().await;
    let dir = env.dir();
    // An nbd export served by qemu-nbd and a cdrom image by busybox's httpd, both on
    // the namespace's loopback.
    let img = dir.join("nbd.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
    let web = dir.join("www");
    std::fs::create_dir(&web).expect("www");
    std::fs::write(web.join("install.iso"), vec![0u8; 2 << 20]).expect("iso");
    let _nbd = env.spawn(&[
        "qemu-nbd",
        "--persistent",
        "--shared=4",
        "--format=raw",
        "--export-name=disk0",
        "--bind=127.0.0.1",
        "--port=10809",
        img.to_str().expect("utf-8"),
    ]);
    let _http = env.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:8080",
        "-h",
        web.to_str().expect("utf-8"),
    ]);
    wait_listening(&env.ns, 10809);
    wait_listening(&env.ns, 8080);

    let devices = "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
         <source protocol='nbd' name='disk0'><host name='127.0.0.1' port='10809'/></source>\
         <target dev='vda' bus='virtio'/></disk>\
         <disk type='network' device='cdrom'><driver name='qemu' type='raw'/>\
         <source protocol='http' name='/install.iso'><host name='127.0.0.1' port='8080'/>\
         </source><target dev='sda' bus='sata'/><readonly/></disk>";
    let (mut probe, path) = env.run("netdisk", "x86_64", "pc", devices).await;
    let blocks = qmp_return(&mut probe, "query-block");
    let by_dev = |qdev: &str| -> Value {
        blocks
            .as_array()
            .expect("list")
            .iter()
            .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains(qdev)))
            .unwrap_or_else(|| panic!("no {qdev} in {blocks}"))
            .clone()
    };
    let nbd = by_dev("disk0");
    assert_eq!(nbd["inserted"]["image"]["virtual-size"], 1 << 20, "{nbd}");
    let file = nbd["inserted"]["file"].as_str().unwrap_or_default();
    assert!(file.contains("nbd://127.0.0.1:10809/disk0"), "{nbd}");
    let cd = by_dev("disk1");
    assert_eq!(cd["inserted"]["image"]["virtual-size"], 2 << 20, "{cd}");
    assert_eq!(cd["inserted"]["ro"], true, "{cd}");
    let file = cd["inserted"]["file"].as_str().unwrap_or_default();
    assert!(file.contains("http://127.0.0.1:8080/install.iso"), "{cd}");
    // The SATA cdrom of an i440fx guest sits on the AHCI controller libvirt adds.
    let live = env.live_xml(&path).await;
    assert!(live.contains("<controller type='sata' index='0'"), "{live}");
    let parent = probe.execute(json!({"execute": "qom-get", "arguments":
        {"path": "/machine/peripheral/disk1", "property": "parent_bus"}}));
    assert!(
        parent["return"]
            .as_str()
            .is_some_and(|b| b.contains("sata0")),
        "{parent}"
    );

    // QEMU reads the guest's blocks from the nbd server: write through QEMU, read on
    // the host.
    let w = hmp(
        &mut probe,
        "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x5a 4096 512\"",
    );
    // (qemu-io's report goes to QEMU's stdout; an error would come back here.)
    assert!(!w.contains("rror"), "{w}");
    let back = std::fs::read(&img).expect("read image");
    assert!(
        back[4096..4608].iter().all(|b| *b == 0x5a),
        "nbd write lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_nics_connect_two_guests() {
    let env = Env::start().await;
    // Multicast needs a route: the namespace has only its loopback.
    env.ns
        .run_ok(&["ip", "link", "set", "lo", "multicast", "on"])
        .expect("lo multicast");
    env.ns
        .run_ok(&["ip", "route", "add", "224.0.0.0/4", "dev", "lo"])
        .expect("mcast route");
    let a = "<interface type='server'><mac address='52:54:00:5c:00:01'/>\
             <source address='127.0.0.1' port='5558'/><model type='e1000'/></interface>\
             <interface type='mcast'><mac address='52:54:00:5c:00:02'/>\
             <source address='230.0.0.1' port='5559'/></interface>\
             <interface type='udp'><mac address='52:54:00:5c:00:03'/>\
             <source address='127.0.0.1' port='5560'><local address='127.0.0.1' port='5561'/>\
             </source></interface>";
    let b = "<interface type='client'><mac address='52:54:00:5c:00:11'/>\
             <source address='127.0.0.1' port='5558'/><model type='e1000'/></interface>\
             <interface type='mcast'><mac address='52:54:00:5c:00:12'/>\
             <source address='230.0.0.1' port='5559'/></interface>\
             <interface type='udp'><mac address='52:54:00:5c:00:13'/>\
             <source address='127.0.0.1' port='5561'><local address='127.0.0.1' port='5560'/>\
             </source></interface>";
    let (mut pa, path_a) = env.run("sock-a", "x86_64", "pc", a).await;
    let (mut pb, _) = env.run("sock-b", "x86_64", "pc", b).await;

    let argv = support::qemu_cmdline(&env.daemon.dirs.runtime, "sock-a");
    assert!(
        argv.contains("-netdev socket,listen=127.0.0.1:5558,id=hostnet0")
            && argv.contains("-netdev socket,mcast=230.0.0.1:5559,id=hostnet1")
            && argv
                .contains("-netdev socket,udp=127.0.0.1:5560,localaddr=127.0.0.1:5561,id=hostnet2"),
        "{argv}"
    );
    // The server took the client's connection; both ends say so.
    let na = hmp_until(&mut pa, "info network", |o| o.contains("connection from"));
    assert!(
        na.contains("hostnet0: index=0,type=socket,socket: connection from 127.0.0.1:"),
        "{na}"
    );
    assert!(na.contains("mcast=230.0.0.1:5559"), "{na}");
    // QEMU shows the remote end of a udp socket.
    assert!(na.contains("udp=127.0.0.1:5560"), "{na}");
    let nb = hmp(&mut pb, "info network");
    assert!(nb.contains("socket: connect to 127.0.0.1:5558"), "{nb}");
    assert!(nb.contains("udp=127.0.0.1:5561"), "{nb}");
    // The sockets are QEMU's, on the namespace's loopback.
    let ss = env
        .ns
        .run_ok(&["ss", "-Htn", "state", "established"])
        .expect("ss");
    assert!(ss.contains("127.0.0.1:5558"), "{ss}");

    // Written back as libvirt writes them.
    let live = env.live_xml(&path_a).await;
    assert!(
        live.contains("<interface type='server'>")
            && live.contains("<source address='127.0.0.1' port='5558'/>")
            && live.contains("<local address='127.0.0.1' port='5561'/>"),
        "{live}"
    );
    // A client must say where to connect: refused at define, naming the attribute.
    let e = env
        .qc
        .domain_define_xml(
            "<domain type='qemu'><name>lonely</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='client'><source port='5999'/></interface>\
             </devices></domain>",
        )
        .await
        .expect_err("no address");
    assert!(
        e.to_string().contains("interface/source") && e.to_string().contains("address"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_interface_is_a_macvtap_on_a_veth() {
    let env = Env::start().await;
    env.ns
        .run_ok(&[
            "ip", "link", "add", "vtup0", "type", "veth", "peer", "name", "vtpeer0",
        ])
        .expect("veth");
    env.ns
        .run_ok(&["ip", "link", "set", "vtup0", "up"])
        .expect("up");
    let mac = "52:54:00:d1:ec:70";
    let nic = format!(
        "<interface type='direct'><mac address='{mac}'/>\
         <source dev='vtup0' mode='bridge'/><model type='virtio'/></interface>"
    );
    let (mut probe, path) = env.run("direct", "x86_64", "pc", &nic).await;
    let live = env.live_xml(&path).await;
    assert!(live.contains("<target dev='macvtap0'/>"), "{live}");
    // The kernel has a macvtap in bridge mode on the veth, with the guest's MAC.
    let j: Value = serde_json::from_str(
        &env.ns
            .run_ok(&["ip", "-j", "-d", "link", "show", "dev", "macvtap0"])
            .expect("ip link"),
    )
    .expect("json");
    let l = &j[0];
    assert_eq!(l["link"], "vtup0", "{l}");
    assert_eq!(l["address"], mac, "{l}");
    assert_eq!(l["linkinfo"]["info_kind"], "macvtap", "{l}");
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "bridge", "{l}");
    // QEMU holds its character device, and the NIC uses it.
    let pid: u32 = std::fs::read_to_string(env.daemon.dirs.runtime.join("qemu/direct.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let index = l["ifindex"].as_u64().expect("ifindex");
    let tapdev = PathBuf::from(format!("/dev/tap{index}"));
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == tapdev));
    assert!(held, "QEMU does not hold {}", tapdev.display());
    let net = hmp(&mut probe, "info network");
    assert!(net.contains("hostnet0: index=0,type=tap,fd="), "{net}");

    // Stopping the guest deletes the macvtap.
    domain(&env.conn, &path)
        .await
        .destroy(0)
        .await
        .expect("destroy");
    let out = env
        .ns
        .run(&["ip", "link", "show", "dev", "macvtap0"])
        .expect("ip");
    assert!(!out.status.success(), "macvtap0 left behind");

    // A host link that does not exist: a clear error, nothing left.
    let p = env
        .qc
        .domain_define_xml(
            "<domain type='qemu'><name>nolink</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='direct'><source dev='nosuch0'/></interface></devices></domain>",
        )
        .await
        .expect("define");
    let e = domain(&env.conn, &p)
        .await
        .create(0)
        .await
        .expect_err("no link");
    assert!(e.to_string().contains("'nosuch0'"), "{e}");
}

/// The `filename` QEMU reports for chardev `label`.
fn chardev_file(list: &Value, label: &str) -> String {
    list.as_array()
        .expect("list")
        .iter()
        .find(|c| c["label"] == label)
        .and_then(|c| c["filename"].as_str())
        .unwrap_or_else(|| panic!("no chardev {label} in {list}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chardevs_of_every_host_type_start() {
    let env = Env::start().await;
    let dir = env.dir();
    let pipe = dir.join("pipe0");
    for end in ["in", "out"] {
        nix::unistd::mkfifo(
            &PathBuf::from(format!("{}.{end}", pipe.display())),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .expect("mkfifo");
    }
    let file = dir.join("serial.log");
    let log = dir.join("udp-serial.log");
    let sock = dir.join("chan.sock");
    // serial0 listens on TCP; channel0 connects to it with <reconnect>, so QEMU shows
    // both ends of one connection.
    let devices = format!(
        "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/>\
         <protocol type='raw'/><target port='0'/></serial>\
         <serial type='udp'><source mode='bind' host='127.0.0.1' service='4556'/>\
         <source mode='connect' host='127.0.0.1' service='4557'/><target port='1'/>\
         <log file='{}' append='on'/></serial>\
         <serial type='file'><source path='{}'/><target port='2'/></serial>\
         <serial type='pipe'><source path='{}'/><target port='3'/></serial>\
         <channel type='tcp'><source mode='connect' host='127.0.0.1' service='4555'>\
         <reconnect enabled='yes' timeout='1'/></source><protocol type='raw'/>\
         <target type='virtio' name='org.example.tcp'/></channel>\
         <channel type='unix'><source mode='bind' path='{}'/>\
         <target type='virtio' name='org.example.unix'/></channel>",
        log.display(),
        file.display(),
        pipe.display(),
        sock.display()
    );
    let (mut probe, path) = env.run("chars", "x86_64", "pc", &devices).await;
    let mut list = qmp_return(&mut probe, "query-chardev");
    let start = Instant::now();
    while chardev_file(&list, "charserial0").starts_with("disconnected")
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
        list = qmp_return(&mut probe, "query-chardev");
    }
    let s0 = chardev_file(&list, "charserial0");
    assert!(
        s0.starts_with("tcp:127.0.0.1:4555,server=on <-> 127.0.0.1:"),
        "{s0}"
    );
    let c0 = chardev_file(&list, "charchannel0");
    assert!(
        c0.starts_with("tcp:127.0.0.1:") && c0.ends_with("<-> 127.0.0.1:4555"),
        "{c0}"
    );
    // QEMU names only its socket chardevs' ends; the others by their backend.
    for (label, backend) in [
        ("charserial1", "udp"),
        ("charserial2", "file"),
        ("charserial3", "pipe"),
    ] {
        assert_eq!(chardev_file(&list, label), backend, "{list}");
    }
    // The file and both ends of the pipe are QEMU's.
    let pid = std::fs::read_to_string(env.daemon.dirs.runtime.join("qemu/chars.pid")).expect("pid");
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", pid.trim()))
        .expect("fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    // ... and so is the udp serial's <log>.
    for f in [
        log.clone(),
        file.clone(),
        PathBuf::from(format!("{}.in", pipe.display())),
        PathBuf::from(format!("{}.out", pipe.display())),
    ] {
        assert!(
            fds.contains(&f),
            "QEMU does not hold {}: {fds:?}",
            f.display()
        );
    }
    let c1 = chardev_file(&list, "charchannel1");
    assert!(
        c1.starts_with(&format!("disconnected:unix:{}", sock.display())),
        "{c1}"
    );
    // The unix channel listens: the host connects to it.
    std::os::unix::net::UnixStream::connect(&sock).expect("connect to the unix channel");
    // UDP's local end is bound.
    let ss = env.ns.run_ok(&["ss", "-Hun"]).expect("ss");
    assert!(ss.contains("127.0.0.1:4556"), "{ss}");
    // Written back with the reconnect options.
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<reconnect enabled='yes' timeout='1'/>"),
        "{live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usb_sata_scsi_controllers_and_pci_bridges_are_where_libvirt_puts_them() {
    let env = Env::start().await;
    let dir = env.dir();
    let mut devices = String::from(
        "<controller type='usb' index='0' model='ich9-ehci1'/>\
         <controller type='usb' index='0' model='ich9-uhci1'><master startport='0'/></controller>\
         <controller type='usb' index='0' model='ich9-uhci2'><master startport='2'/></controller>\
         <controller type='usb' index='0' model='ich9-uhci3'><master startport='4'/></controller>\
         <controller type='usb' index='1' model='piix3-uhci'/>\
         <controller type='scsi' index='0' model='lsilogic'/>\
         <hub type='usb'><address type='usb' bus='0' port='1'/></hub>\
         <input type='tablet' bus='usb'><address type='usb' bus='0' port='1.2'/></input>",
    );
    for (i, t) in ["sda", "sdb"].iter().enumerate() {
        let img = dir.join(format!("{t}.raw"));
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        let bus = if i == 0 { "sata" } else { "scsi" };
        devices.push_str(&format!(
            "<disk type='file' device='disk'><source file='{}'/><target dev='{t}' bus='{bus}'/></disk>",
            img.display()
        ));
    }
    // More PCI devices than bus 0 has slots: a pci-bridge is added for the rest.
    for i in 0..32 {
        devices.push_str(&format!(
            "<interface type='user'><mac address='52:54:00:00:10:{i:02x}'/><model type='e1000'/></interface>"
        ));
    }
    let (mut probe, path) = env.run("ctrl", "x86_64", "pc", &devices).await;
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("model='pci-bridge'"),
        "no pci-bridge added: {live}"
    );
    assert!(live.contains("<controller type='sata' index='0'"), "{live}");
    let mut parent = |id: &str| -> String {
        let v = probe.execute(json!({"execute": "qom-get", "arguments":
            {"path": format!("/machine/peripheral/{id}"), "property": "parent_bus"}}));
        v["return"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: {v}"))
            .to_owned()
    };
    assert!(
        parent("disk0").contains("sata0"),
        "SATA disk not on the AHCI"
    );
    assert!(
        parent("disk1").contains("scsi0"),
        "SCSI disk not on lsilogic"
    );
    assert!(
        parent("net31").contains("pci.1"),
        "last NIC not behind the bridge"
    );
    assert!(parent("pci.1").ends_with("pci.0"), "bridge not on bus 0");
    // libvirt's slot order (qemuDomainAssignDevicePCISlots): bridges, NICs, then the
    // other controllers, so 32 NICs fill bus 0 and the controllers go behind the
    // bridge (whose bus QEMU enumerates only once the guest's firmware has run, so
    // their place is asked of QOM, not query-pci).
    assert!(parent("net0").ends_with("pci.0"), "first NIC not on bus 0");
    for id in ["usb0", "usb1", "scsi0", "sata0"] {
        assert!(parent(id).ends_with("pci.1"), "{id} not behind the bridge");
    }
    // The EHCI's three UHCI companions serve usb0's USB 1 ports.
    let argv = support::qemu_cmdline(&env.daemon.dirs.runtime, "ctrl");
    assert_eq!(argv.matches("masterbus=usb0.0").count(), 3, "{argv}");
    let usb = hmp(&mut probe, "info usb");
    assert!(usb.contains("Product QEMU USB Hub"), "{usb}");
    assert!(
        usb.contains("Port 1.2") && usb.contains("QEMU USB Tablet"),
        "{usb}"
    );

    // A SCSI model QEMU 7.2 does not have: refused at define, naming the element.
    let e = env
        .qc
        .domain_define_xml(
            "<domain type='qemu'><name>buslogic</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <controller type='scsi' index='0' model='buslogic'/></devices></domain>",
        )
        .await
        .expect_err("buslogic");
    assert!(
        e.to_string().contains("<controller scsi model>")
            || e.to_string().contains("controller scsi model"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i686_guest_runs_on_qemu_system_i386() {
    let env = Env::start().await;
    let (mut probe, path) = env.run("i686", "i686", "pc", "").await;
    let target = qmp_return(&mut probe, "query-target");
    assert_eq!(target["arch"], "i386", "{target}");
    let argv = support::qemu_cmdline(&env.daemon.dirs.runtime, "i686");
    let argv0 = argv.split(' ').next().unwrap_or_default();
    assert!(
        Path::new(argv0)
            .file_name()
            .is_some_and(|n| n == "qemu-system-i386"),
        "{argv}"
    );
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<type arch='i686' machine='pc-i440fx-7.2'>hvm</type>")
            && live.contains("qemu-system-i386</emulator>"),
        "{live}"
    );
    // The guest CPU is the 32-bit default.
    let cpus = qmp_return(&mut probe, "query-cpus-fast");
    assert_eq!(cpus[0]["target"], "i386", "{cpus}");
}

/// A QOM property of a device, through the probe.
fn qom(p: &mut Probe, path: &str, prop: &str) -> Value {
    let v = p.execute(json!({"execute": "qom-get",
        "arguments": {"path": path, "property": prop}}));
    v.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{path} {prop}: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_options_of_disks_nics_and_controllers_reach_qemu() {
    let env = Env::start().await;
    let img = env.dir().join("opts.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
    let devices = format!(
        "<controller type='pci' index='0' model='pci-root'>\
         <pcihole64 unit='KiB'>1048576</pcihole64></controller>\
         <controller type='scsi' index='0' model='virtio-scsi'>\
         <driver queues='4' cmd_per_lun='50' max_sectors='512' ioeventfd='on'/></controller>\
         <disk type='file' device='disk'><driver name='qemu' type='raw' detect_zeroes='on' \
         copy_on_read='on' error_policy='report' rerror_policy='ignore' queues='2' \
         queue_size='128' packed='on' event_idx='off'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><mac address='52:54:00:0d:00:01'/><model type='virtio'/>\
         <driver txmode='iothread' rx_queue_size='512' tx_queue_size='256' packed='on'>\
         <host csum='off' mrg_rxbuf='off'/><guest tso4='off'/></driver></interface>",
        img.display()
    );
    let (mut p, path) = env.run("opts", "x86_64", "pc", &devices).await;
    assert_eq!(
        qom(&mut p, "/machine/i440fx", "pci-hole64-size"),
        1u64 << 30
    );
    let scsi = "/machine/peripheral/scsi0";
    assert_eq!(qom(&mut p, scsi, "num_queues"), 4);
    assert_eq!(qom(&mut p, scsi, "cmd_per_lun"), 50);
    assert_eq!(qom(&mut p, scsi, "max_sectors"), 512);
    assert_eq!(qom(&mut p, scsi, "ioeventfd"), true);
    let disk = "/machine/peripheral/disk0";
    assert_eq!(qom(&mut p, disk, "num-queues"), 2);
    assert_eq!(qom(&mut p, disk, "queue-size"), 128);
    assert_eq!(qom(&mut p, disk, "werror"), "report");
    assert_eq!(qom(&mut p, disk, "rerror"), "ignore");
    assert_eq!(qom(&mut p, disk, "packed"), true);
    assert_eq!(qom(&mut p, disk, "event_idx"), false);
    let nodes = qmp_return(&mut p, "query-named-block-nodes");
    let node = |name: &str| -> Value {
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["node-name"] == name)
            .unwrap_or_else(|| panic!("no node {name}: {nodes}"))
            .clone()
    };
    assert_eq!(node("libvirt-CoR-vda")["drv"], "copy-on-read");
    assert_eq!(node("libvirt-0-format")["detect_zeroes"], "on");
    let blocks = qmp_return(&mut p, "query-block");
    assert!(
        blocks
            .to_string()
            .contains("\"node-name\":\"libvirt-CoR-vda\""),
        "the guest does not read through the copy-on-read node: {blocks}"
    );
    let nic = "/machine/peripheral/net0";
    assert_eq!(qom(&mut p, nic, "tx"), "bh");
    assert_eq!(qom(&mut p, nic, "rx_queue_size"), 512);
    assert_eq!(qom(&mut p, nic, "tx_queue_size"), 256);
    assert_eq!(qom(&mut p, nic, "packed"), true);
    assert_eq!(qom(&mut p, nic, "csum"), false);
    assert_eq!(qom(&mut p, nic, "mrg_rxbuf"), false);
    assert_eq!(qom(&mut p, nic, "guest_tso4"), false);
    // The definition comes back as written.
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<host csum='off' mrg_rxbuf='off'/>")
            && live.contains("<pcihole64 unit='KiB'>1048576</pcihole64>")
            && live.contains("copy_on_read='on'"),
        "{live}"
    );
    // vhost-net is not used here: refused at start, naming the attribute.
    let d = env
        .qc
        .domain_define_xml(
            "<domain type='qemu'><name>vhost</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <interface type='user'><model type='virtio'/><driver name='vhost'/></interface>\
             </devices></domain>",
        )
        .await
        .expect("define");
    let e = domain(&env.conn, &d)
        .await
        .create(0)
        .await
        .expect_err("vhost");
    assert!(e.to_string().contains("<interface/driver name>"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consoles_parallel_debugcon_and_channels_on_several_controllers() {
    let env = Env::start().await;
    let devices = "<controller type='virtio-serial' index='1'/>\
         <serial type='pty'><target port='0'/><address type='isa' iobase='0x2f8' irq='0x3'/></serial>\
         <serial type='null'><target type='isa-debug'/><address type='isa' iobase='0x402'/></serial>\
         <parallel type='tcp'><source mode='bind' host='127.0.0.1' service='9999'/>\
         <protocol type='raw'/><target port='0'/></parallel>\
         <console type='pty'><target type='serial' port='0'/></console>\
         <console type='pty'><target type='virtio' port='1'/></console>\
         <console type='null'><target type='virtio' port='2'/></console>\
         <channel type='pty'><target type='virtio' name='org.example.a'/></channel>\
         <channel type='pty'><target type='virtio' name='org.example.b'/>\
         <address type='virtio-serial' controller='1' bus='0' port='3'/></channel>\
         <channel type='pty'><target type='virtio' name='org.example.c'/>\
         <address type='virtio-serial' controller='1' bus='0'/></channel>\
         <channel type='pty'><target type='virtio' name='org.example.d'/>\
         <address type='virtio-serial' controller='2' bus='0'/></channel>";
    let (mut p, path) = env.run("chars2", "x86_64", "pc", devices).await;
    let dev = |id: &str| format!("/machine/peripheral/{id}");
    assert_eq!(qom(&mut p, &dev("serial0"), "iobase"), 0x2f8);
    assert_eq!(qom(&mut p, &dev("serial0"), "irq"), 3);
    assert_eq!(qom(&mut p, &dev("serial1"), "iobase"), 0x402);
    assert_eq!(qom(&mut p, &dev("serial1"), "type"), "isa-debugcon");
    assert_eq!(qom(&mut p, &dev("parallel0"), "type"), "isa-parallel");
    // Ports as libvirt assigns them: consoles 0 and 1 on controller 0, then the
    // channels' explicit and next free ports on the controllers they name.
    for (id, bus, nr) in [
        ("console1", "virtio-serial0", 0),
        ("console2", "virtio-serial0", 1),
        ("channel0", "virtio-serial0", 2),
        ("channel1", "virtio-serial1", 3),
        ("channel2", "virtio-serial1", 1),
        ("channel3", "virtio-serial2", 1),
    ] {
        assert_eq!(qom(&mut p, &dev(id), "nr"), nr, "{id}");
        let parent = qom(&mut p, &dev(id), "parent_bus");
        assert!(
            parent
                .as_str()
                .is_some_and(|b| b.contains(&format!("{bus}.0"))),
            "{id}: {parent}"
        );
    }
    // The parallel port's TCP server listens in the namespace.
    wait_listening(&env.ns, 9999);
    // libvirt's implicit virtio-serial controllers 0 and 2 are in the definition.
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<controller type='virtio-serial' index='0'")
            && live.contains("<controller type='virtio-serial' index='2'")
            && live.contains("<parallel type='tcp'>"),
        "{live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iotune_becomes_qemus_throttle_groups() {
    let env = Env::start().await;
    let mut devices = String::new();
    for (t, tune) in [
        (
            "vda",
            "<total_bytes_sec>1000000</total_bytes_sec><total_iops_sec>500</total_iops_sec>",
        ),
        (
            "vdb",
            "<read_iops_sec>300</read_iops_sec><group_name>shared</group_name>",
        ),
        (
            "vdc",
            "<read_iops_sec>300</read_iops_sec><group_name>shared</group_name>",
        ),
    ] {
        let img = env.dir().join(format!("{t}.raw"));
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        devices.push_str(&format!(
            "<disk type='file' device='disk'><source file='{}'/><target dev='{t}' bus='virtio'/>\
             <iotune>{tune}</iotune></disk>",
            img.display()
        ));
    }
    let (mut p, _) = env.run("iotune", "x86_64", "pc", &devices).await;
    let limits = qom(&mut p, "/objects/throttle-libvirt-0", "limits");
    assert_eq!(limits["bps-total"], 1000000, "{limits}");
    assert_eq!(limits["iops-total"], 500, "{limits}");
    let shared = qom(&mut p, "/objects/shared", "limits");
    assert_eq!(shared["iops-read"], 300, "{shared}");
    // Each guest disk reads through its throttle node; vdb and vdc share one group.
    let nodes = qmp_return(&mut p, "query-named-block-nodes");
    for i in 0..3 {
        let name = format!("libvirt-{i}-throttle");
        assert!(
            nodes
                .as_array()
                .expect("nodes")
                .iter()
                .any(|n| n["node-name"] == name.as_str() && n["drv"] == "throttle"),
            "no {name}: {nodes}"
        );
    }
    let blocks = qmp_return(&mut p, "query-block").to_string();
    for i in 0..3 {
        assert!(
            blocks.contains(&format!("\"node-name\":\"libvirt-{i}-throttle\"")),
            "{blocks}"
        );
    }
    let groups: Vec<Value> = p
        .execute(json!({"execute": "qom-list", "arguments": {"path": "/objects"}}))["return"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["type"] == "child<throttle-group>")
        .cloned()
        .collect();
    assert_eq!(groups.len(), 2, "{groups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethernet_scripts_run_and_user_networks_take_their_ip() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    let log = env.dir().join("script.log");
    let script = env.dir().join("ifup.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $1 $(cat /sys/class/net/$1/operstate 2>/dev/null || echo seen)\" >> {}\nip link show dev \"$1\" >/dev/null\n",
            log.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let down = env.dir().join("ifdown.sh");
    std::fs::copy(&script, &down).expect("copy");
    let devices = format!(
        "<interface type='ethernet'><mac address='52:54:00:e7:00:01'/>\
         <source><ip address='192.168.125.1' family='ipv4' prefix='24' peer='192.168.125.2'/>\
         <route family='ipv4' address='10.20.0.0' prefix='16' gateway='192.168.125.2'/></source>\
         <script path='{}'/><downscript path='{}'/><model type='e1000'/></interface>\
         <interface type='user'><mac address='52:54:00:e7:00:02'/>\
         <ip address='172.17.2.0' family='ipv4' prefix='24'/>\
         <ip address='2001:db8:ac10:fd01::' family='ipv6' prefix='64'/></interface>",
        script.display(),
        down.display()
    );
    let (mut p, path) = env.run("scripts", "x86_64", "pc", &devices).await;
    let live = env.live_xml(&path).await;
    assert!(live.contains("<target dev='vnet0'/>"), "{live}");
    // The script ran with the tap's name, which existed then (`ip link show` in the
    // namespace the daemon runs in succeeded, or the start would have failed).
    let ran = std::fs::read_to_string(&log).expect("script log");
    assert!(ran.starts_with("ifup.sh vnet0 "), "{ran}");
    let net = hmp(&mut p, "info network");
    assert!(net.contains("net=172.17.2.0,"), "{net}");
    // The tap has its host-side address (point to point) and the route through it.
    let addrs = env
        .ns
        .run_ok(&["ip", "-4", "-j", "addr", "show", "dev", "vnet0"])
        .expect("ip addr");
    let a: Value = serde_json::from_str(&addrs).expect("json");
    let info = &a[0]["addr_info"][0];
    assert_eq!(info["local"], "192.168.125.1", "{a}");
    assert_eq!(info["address"], "192.168.125.2", "{a}");
    assert_eq!(info["prefixlen"], 24, "{a}");
    let routes = env
        .ns
        .run_ok(&["ip", "-4", "route", "show", "10.20.0.0/16"])
        .expect("ip route");
    assert!(routes.contains("via 192.168.125.2 dev vnet0"), "{routes}");
    assert!(net.contains("type=tap,fd="), "{net}");
    domain(&env.conn, &path)
        .await
        .destroy(0)
        .await
        .expect("destroy");
    let ran = std::fs::read_to_string(&log).expect("script log");
    assert!(
        ran.lines().any(|l| l.starts_with("ifdown.sh vnet0")),
        "{ran}"
    );

    // A script that fails stops the start, naming it.
    std::fs::write(&script, "#!/bin/sh\necho nope >&2\nexit 3\n").expect("script");
    let e = domain(&env.conn, &path)
        .await
        .create(0)
        .await
        .expect_err("failing script");
    assert!(
        e.to_string().contains("ifup.sh") && e.to_string().contains("nope"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_identity_geometry_and_block_sizes_reach_qemu() {
    let env = Env::start().await;
    let mut devices = String::new();
    for (t, bus, extra) in [
        (
            "sda",
            "scsi",
            "<wwn>5000c50015ea71ac</wwn><vendor>SEAGATE</vendor><product>ST3146707LC</product>",
        ),
        (
            "hda",
            "ide",
            "<geometry cyls='1024' heads='16' secs='63' trans='lba'/>\
             <blockio logical_block_size='512' physical_block_size='4096'/>",
        ),
    ] {
        let img = env.dir().join(format!("{t}.raw"));
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        devices.push_str(&format!(
            "<disk type='file' device='disk'><source file='{}'/><target dev='{t}' bus='{bus}'/>{extra}</disk>",
            img.display()
        ));
    }
    let (mut p, _) = env.run("diskid", "x86_64", "pc", &devices).await;
    let d0 = "/machine/peripheral/disk0";
    assert_eq!(qom(&mut p, d0, "wwn"), 0x5000c50015ea71acu64);
    assert_eq!(qom(&mut p, d0, "vendor"), "SEAGATE");
    assert_eq!(qom(&mut p, d0, "product"), "ST3146707LC");
    let d1 = "/machine/peripheral/disk1";
    assert_eq!(qom(&mut p, d1, "cyls"), 1024);
    assert_eq!(qom(&mut p, d1, "heads"), 16);
    assert_eq!(qom(&mut p, d1, "secs"), 63);
    assert_eq!(qom(&mut p, d1, "bios-chs-trans"), "lba");
    assert_eq!(qom(&mut p, d1, "physical_block_size"), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_adds_root_ports_when_bus_0_is_full() {
    let env = Env::start().await;
    let mut devices = String::new();
    for i in 0..40 {
        devices.push_str(&format!(
            "<interface type='user'><mac address='52:54:00:00:35:{i:02x}'/>\
             <model type='virtio'/></interface>"
        ));
    }
    let (mut p, path) = env.run("rootports", "x86_64", "q35", &devices).await;
    let live = env.live_xml(&path).await;
    // As libvirt: each PCIe endpoint behind a root port of its own, eight ports to a
    // slot of bus 0 (40 NICs, the USB controller, the balloon and a spare).
    let ports = live.matches("model='pcie-root-port'").count();
    assert!(ports >= 40, "{ports} root ports: {live}");
    // Every NIC is on QEMU's root bus or alone behind a root port.
    let mut behind = 0;
    for i in 0..40 {
        let parent = qom(&mut p, &format!("/machine/peripheral/net{i}"), "parent_bus");
        let parent = parent.as_str().expect("bus").to_owned();
        if parent.ends_with("pcie.0") {
            continue;
        }
        behind += 1;
        let port = parent.rsplit('/').next().expect("bus name").to_owned();
        assert!(port.starts_with("pci."), "net{i} on {parent}");
        let port_bus = qom(&mut p, &format!("/machine/peripheral/{port}"), "parent_bus");
        assert_eq!(port_bus, "/machine/q35/pcie.0", "{port}");
        assert_eq!(
            qom(&mut p, &format!("/machine/peripheral/{port}"), "type"),
            "pcie-root-port"
        );
    }
    assert_eq!(behind, 40, "every virtio NIC behind a root port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guestfwd_channels_are_user_networks_of_their_own() {
    let env = Env::start().await;
    let sock = env.dir().join("fwd.sock");
    let devices = format!(
        "<channel type='unix'><source mode='bind' path='{}'/>\
         <target type='guestfwd' address='10.0.2.1' port='4600'/></channel>\
         <channel type='unix'><source mode='bind'/>\
         <target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
        sock.display()
    );
    let (mut p, path) = env.run("fwd", "x86_64", "pc", &devices).await;
    let net = hmp(&mut p, "info network");
    assert!(net.contains("channel0: index=0,type=user"), "{net}");
    let list = qmp_return(&mut p, "query-chardev");
    let c0 = chardev_file(&list, "charchannel0");
    assert!(c0.contains(&format!("unix:{}", sock.display())), "{c0}");
    // The virtio channel after it still gets port 1 of virtio-serial0.
    assert_eq!(qom(&mut p, "/machine/peripheral/channel1", "nr"), 1);
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<target type='guestfwd' address='10.0.2.1' port='4600'/>"),
        "{live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scsi_model_qemu_has_runs_with_its_disks() {
    let env = Env::start().await;
    let models = [
        ("lsilogic", "lsi53c895a"),
        ("lsisas1068", "mptsas1068"),
        ("lsisas1078", "megasas-gen2"),
        ("vmpvscsi", "pvscsi"),
        ("am53c974", "am53c974"),
        ("dc390", "dc390"),
        ("virtio-scsi", "virtio-scsi-pci"),
    ];
    let mut devices = String::new();
    for (i, (model, _)) in models.iter().enumerate() {
        let img = env.dir().join(format!("scsi{i}.raw"));
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        devices.push_str(&format!(
            "<controller type='scsi' index='{i}' model='{model}'/>\
             <disk type='file' device='disk'><source file='{}'/>\
             <target dev='sd{}' bus='scsi'/>\
             <address type='drive' controller='{i}' bus='0' target='0' unit='{}'/></disk>",
            img.display(),
            (b'a' + i as u8) as char,
            // A second unit on the HBAs with one LUN per target is a second target.
            if i == 0 { 2 } else { 0 },
        ));
    }
    let (mut p, _) = env.run("scsis", "x86_64", "pc", &devices).await;
    for (i, (_, qemu)) in models.iter().enumerate() {
        let ctrl = format!("/machine/peripheral/scsi{i}");
        assert_eq!(qom(&mut p, &ctrl, "type"), *qemu, "scsi{i}");
        let disk = format!("/machine/peripheral/disk{i}");
        let bus = qom(&mut p, &disk, "parent_bus");
        assert!(
            bus.as_str()
                .is_some_and(|b| b.ends_with(&format!("scsi{i}.0"))),
            "disk{i} on {bus}"
        );
    }
    // lsilogic takes the unit as the target (scsi-id), virtio-scsi as the LUN.
    assert_eq!(qom(&mut p, "/machine/peripheral/disk0", "scsi-id"), 2);
    assert_eq!(qom(&mut p, "/machine/peripheral/disk0", "lun"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhostuser_nic_reaches_qemus_vhost_user_netdev() {
    use std::io::Read;
    // No vhost-user backend (a DPDK switch) runs here: the test listens on the socket
    // itself, reads the first message QEMU's vhost-user netdev sends and hangs up.
    let env = Env::start().await;
    let sock = env.dir().join("vhost.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("listen");
    let backend = std::thread::spawn(move || -> std::io::Result<[u8; 12]> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut header = [0u8; 12];
        conn.read_exact(&mut header)?;
        Ok(header)
    });
    let xml = format!(
        "<domain type='qemu'><name>vu</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <interface type='vhostuser'><source type='unix' path='{}' mode='client'/>\
         <model type='virtio'/><driver queues='2'/></interface></devices></domain>",
        sock.display()
    );
    let path = env.qc.domain_define_xml(&xml).await.expect("define");
    // The backend hangs up after the first message: QEMU gives up, the start fails.
    let e = domain(&env.conn, &path)
        .await
        .create(0)
        .await
        .expect_err("the backend hung up");
    let header = backend
        .join()
        .expect("backend thread")
        .expect("a vhost-user message");
    let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // VHOST_USER_GET_FEATURES, protocol version 1.
    assert_eq!((request, flags & 3), (1, 1), "{header:?}; {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcie_switch_ports_sit_where_libvirt_puts_them() {
    let env = Env::start().await;
    let devices = "<controller type='pci' index='0' model='pcie-root'/>\
         <controller type='pci' index='1' model='pcie-root-port'>\
         <model name='ioh3420'/><target hotplug='off'/></controller>\
         <controller type='pci' index='2' model='pcie-switch-upstream-port'/>\
         <controller type='pci' index='3' model='pcie-switch-downstream-port'>\
         <target hotplug='off'/></controller>\
         <controller type='pci' index='4' model='pcie-switch-downstream-port'/>\
         <interface type='user'><mac address='52:54:00:5e:00:01'/>\
         <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></interface>";
    let (mut p, path) = env.run("switch", "x86_64", "q35", devices).await;
    let dev = |id: &str| format!("/machine/peripheral/{id}");
    assert_eq!(qom(&mut p, &dev("pci.1"), "type"), "ioh3420");
    assert_eq!(qom(&mut p, &dev("pci.1"), "hotplug"), false);
    assert_eq!(qom(&mut p, &dev("pci.2"), "type"), "x3130-upstream");
    assert_eq!(qom(&mut p, &dev("pci.3"), "type"), "xio3130-downstream");
    assert_eq!(qom(&mut p, &dev("pci.3"), "hotplug"), false);
    assert_eq!(qom(&mut p, &dev("pci.4"), "hotplug"), true);
    // upstream behind the root port, downstream ports in slots 0 and 1 of its bus,
    // the NIC behind the second downstream port.
    for (id, bus) in [
        ("pci.2", "pci.1"),
        ("pci.3", "pci.2"),
        ("pci.4", "pci.2"),
        ("net0", "pci.4"),
    ] {
        let parent = qom(&mut p, &dev(id), "parent_bus");
        assert_eq!(parent, format!("{}/{bus}", dev(bus)), "{id}");
    }
    // QOM shows devfn: slot 1, function 0.
    assert_eq!(qom(&mut p, &dev("pci.4"), "addr"), 1 << 3);
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<model name='ioh3420'/>") && live.contains("hotplug='off'"),
        "{live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floppies_boot_through_their_controller_on_q35_and_pc() {
    let env = Env::start().await;
    for machine in ["q35", "pc"] {
        let img = env.dir().join(format!("fd-{machine}.img"));
        std::fs::write(&img, vec![0u8; 1474560]).expect("image");
        let devices = format!(
            "<disk type='file' device='floppy'><source file='{}'/>\
             <target dev='fda' bus='fdc'/><boot order='1'/></disk>",
            img.display()
        );
        let (mut p, path) = env
            .run(&format!("fd-{machine}"), "x86_64", machine, &devices)
            .await;
        // One floppy controller, ISA (q35: added, without an id; pc: built in), with
        // drive A first to boot; the drive on it.
        let mut fdcs = Vec::new();
        for dir in ["/machine/peripheral-anon", "/machine/unattached"] {
            let list = p.execute(json!({"execute": "qom-list", "arguments": {"path": dir}}));
            for c in list["return"].as_array().expect("children") {
                if c["type"] == "child<isa-fdc>" {
                    fdcs.push(format!("{dir}/{}", c["name"].as_str().expect("name")));
                }
            }
        }
        assert_eq!(fdcs.len(), 1, "{machine}: {fdcs:?}");
        assert_eq!(qom(&mut p, &fdcs[0], "bootindexA"), 1, "{machine}");
        let qtree = hmp(&mut p, "info qtree");
        assert!(
            qtree.contains("dev: floppy, id \"disk0\""),
            "{machine}: {qtree}"
        );
        let blocks = qmp_return(&mut p, "query-block").to_string();
        assert!(blocks.contains(img.to_str().expect("utf-8")), "{blocks}");
        if machine == "q35" {
            let live = env.live_xml(&path).await;
            assert!(live.contains("<controller type='fdc' index='0'"), "{live}");
        }
    }
}

/// The guest agent of a running tiny guest, on the unix socket of its channel.
struct Agent {
    stream: std::os::unix::net::UnixStream,
    lines: std::io::Lines<std::io::BufReader<std::os::unix::net::UnixStream>>,
}

impl Agent {
    /// Connects and syncs (the agent may start after the socket exists).
    fn connect(path: &Path) -> Agent {
        use std::io::BufRead;
        let stream = std::os::unix::net::UnixStream::connect(path).expect("agent socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let lines = std::io::BufReader::new(stream.try_clone().expect("clone")).lines();
        let mut a = Agent { stream, lines };
        let start = Instant::now();
        loop {
            let id = start.elapsed().as_millis() as u64 + 1;
            if a.call(json!({"execute": "guest-sync", "arguments": {"id": id}}))
                .is_some_and(|r| r["return"] == id)
            {
                return a;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "agent silent");
        }
    }

    /// One command; its answer, or None when none came in time.
    fn call(&mut self, cmd: Value) -> Option<Value> {
        use std::io::Write;
        writeln!(self.stream, "{cmd}").ok()?;
        loop {
            let line = self.lines.next()?.ok()?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return Some(v);
            }
        }
    }

    /// Runs `sh -c script` in the guest; its exit code.
    fn sh(&mut self, script: &str) -> i64 {
        let r = self
            .call(json!({"execute": "guest-exec", "arguments":
                {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}))
            .expect("guest-exec");
        let pid = r["return"]["pid"].as_i64().unwrap_or_else(|| panic!("{r}"));
        let start = Instant::now();
        loop {
            let s = self
                .call(json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}))
                .expect("guest-exec-status");
            if s["return"]["exited"] == true {
                return s["return"]["exitcode"].as_i64().unwrap_or(-1);
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{script}: {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_ping_each_other_over_a_socket_nic() {
    let env = Env::start().await;
    let guest = support::test_guest();
    let mut agents = Vec::new();
    for (name, nic) in [
        (
            "wire-a",
            "<interface type='server'><mac address='52:54:00:99:00:01'/>\
                    <source address='127.0.0.1' port='5600'/><model type='virtio'/></interface>",
        ),
        (
            "wire-b",
            "<interface type='client'><mac address='52:54:00:99:00:02'/>\
                    <source address='127.0.0.1' port='5600'/><model type='virtio'/></interface>",
        ),
    ] {
        let serial = env.dir().join(format!("{name}.serial"));
        let agent = env.dir().join(format!("{name}.agent"));
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
             <cmdline>console=ttyS0 panic=-1</cmdline></os><devices>{nic}\
             <serial type='file'><source path='{}'/></serial>\
             <channel type='unix'><source mode='bind' path='{}'/>\
             <target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             <memballoon model='none'/></devices></domain>",
            guest.join("vmlinuz").display(),
            guest.join("initrd.img").display(),
            serial.display(),
            agent.display()
        );
        let path = env.qc.domain_define_xml(&xml).await.expect("define");
        domain(&env.conn, &path)
            .await
            .create(0)
            .await
            .expect("start");
        agents.push((serial, agent));
    }
    let mut ips = ["10.99.0.1", "10.99.0.2"].into_iter();
    let mut conns = Vec::new();
    for (serial, agent) in &agents {
        support::wait_serial(serial, "TINYGUEST-BOOTED", Duration::from_secs(120)).await;
        let mut a = Agent::connect(agent);
        // No DHCP on a wire between two guests: stop udhcpc (it would flush the
        // address) and give eth0 a static one.
        let ip = ips.next().expect("ip");
        let set = format!(
            "kill $(cat /run/udhcpc.pid) 2>/dev/null; sleep 0.2; ip addr flush dev eth0; \
             ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
        );
        assert_eq!(a.sh(&set), 0, "address on {}", agent.display());
        conns.push(a);
    }
    // Packets cross QEMU's socket netdevs: B reaches A, and nobody else.
    assert_eq!(
        conns[1].sh("ping -c 3 -W 3 10.99.0.1"),
        0,
        "B cannot ping A"
    );
    assert_eq!(
        conns[0].sh("ping -c 1 -W 3 10.99.0.2"),
        0,
        "A cannot ping B"
    );
    assert_ne!(
        conns[1].sh("ping -c 1 -W 1 10.99.0.77"),
        0,
        "a ghost answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vc_serial_and_qemu_vdagent_channel_start() {
    let env = Env::start().await;
    let devices = "<serial type='vc'><target port='0'/></serial>\
         <channel type='qemu-vdagent'><source><clipboard copypaste='yes'/>\
         <mouse mode='client'/></source><target type='virtio' name='com.redhat.spice.0'/>\
         </channel><graphics type='vnc' autoport='yes' listen='127.0.0.1'/>";
    let (mut p, path) = env.run("vdagent", "x86_64", "pc", devices).await;
    let list = qmp_return(&mut p, "query-chardev");
    assert_eq!(chardev_file(&list, "charserial0"), "vc", "{list}");
    assert_eq!(
        chardev_file(&list, "charchannel0"),
        "qemu-vdagent",
        "{list}"
    );
    let argv = support::qemu_cmdline(&env.daemon.dirs.runtime, "vdagent");
    assert!(
        argv.contains("qemu-vdagent,id=charchannel0,name=vdagent,clipboard=on,mouse=on"),
        "{argv}"
    );
    assert_eq!(
        qom(&mut p, "/machine/peripheral/channel0", "name"),
        "com.redhat.spice.0"
    );
    let live = env.live_xml(&path).await;
    assert!(
        live.contains("<clipboard copypaste='yes'/>") && live.contains("<mouse mode='client'/>"),
        "{live}"
    );
}
