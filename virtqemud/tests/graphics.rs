//! Graphics with real QEMU (domains without a guest OS): SPICE with what virt-install
//! adds around it (qxl, the agent channel, USB redirection, SPICE audio), ports chosen
//! at start and shown in the live XML, and passwords that never reach QEMU's command
//! line or an insecure GetXMLDesc, yet are enforced (VNC offers only password auth).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod support;

use support::{bus_err, domain, qemu_cmdline, qemud};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const XML_SECURE: u32 = 1;

fn xml(name: &str, devices: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{devices}</devices></domain>"
    )
}

/// The `port='N'` of the live XML's `<graphics>`.
fn live_port(live: &str) -> u16 {
    let g = &live[live.find("<graphics").expect("graphics")..];
    let p = &g[g.find("port='").expect("port") + 6..];
    p[..p.find('\'').expect("quote")]
        .parse()
        .expect("port number")
}

/// The security types a VNC server offers (RFB 3.8 handshake).
fn vnc_security_types(port: u16) -> Vec<u8> {
    rfb_security_types(TcpStream::connect(("127.0.0.1", port)).expect("connect to VNC"))
}

/// The same over any stream to the server.
fn rfb_security_types<S: Read + Write>(mut s: S) -> Vec<u8> {
    let mut version = [0u8; 12];
    s.read_exact(&mut version).expect("RFB version");
    assert_eq!(&version[..4], b"RFB ");
    s.write_all(b"RFB 003.008\n").expect("send version");
    let mut n = [0u8; 1];
    s.read_exact(&mut n).expect("number of types");
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).expect("types");
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spice_vnc_ports_and_passwords() {
    let q = qemud(BIN).await;
    let (daemon, conn, qc) = (&q.daemon, &q.conn, &q.qc);
    let run = daemon.dirs.runtime.clone();

    // SPICE the way virt-install writes it, with a password.
    let spice = "<controller type='usb' model='qemu-xhci' ports='15'/>\
        <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>\
        <graphics type='spice' port='-1' tlsPort='-1' autoport='yes' passwd='s3cr3t-pw'/>\
        <sound model='ich9'/><audio id='1' type='spice'/>\
        <video><model type='qxl' vram='16384' heads='1'/></video>\
        <redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>";
    let path = qc
        .domain_define_xml(&xml("sp", spice))
        .await
        .expect("define spice");
    let d = domain(conn, &path).await;
    let inactive = d.get_xml_desc(2).await.expect("xml");
    assert!(!inactive.contains("s3cr3t-pw"), "{inactive}");
    assert!(d
        .get_xml_desc(2 | XML_SECURE)
        .await
        .expect("secure xml")
        .contains("passwd='s3cr3t-pw'"));
    assert!(
        inactive.contains("<audio id='1' type='spice'/>")
            && inactive
                .matches("<redirdev bus='usb' type='spicevmc'")
                .count()
                == 2,
        "{inactive}"
    );
    d.create(0).await.expect("start spice");
    let live = d.get_xml_desc(0).await.expect("live");
    let port = live_port(&live);
    assert!(port >= 5900, "{live}");
    let argv = qemu_cmdline(&run, "sp");
    assert!(
        argv.contains(&format!(
            "-spice port={port},addr=127.0.0.1,seamless-migration=on"
        )),
        "{argv}"
    );
    assert!(!argv.contains("disable-ticketing"), "{argv}");
    assert!(
        !argv.contains("s3cr3t-pw"),
        "the password is on argv: {argv}"
    );
    for part in [
        "spicevmc,id=charchannel0,name=vdagent",
        "usb-redir,chardev=charredir1",
        "id=audio1,driver=spice",
        "audiodev=audio1",
        "qxl-vga",
    ] {
        assert!(argv.contains(part), "{part} missing: {argv}");
    }
    TcpStream::connect(("127.0.0.1", port)).expect("SPICE listens on its live port");

    // A second SPICE domain gets another port.
    let path2 = qc
        .domain_define_xml(&xml(
            "sp2",
            "<graphics type='spice' autoport='yes'/><video><model type='qxl'/></video>",
        ))
        .await
        .expect("define sp2");
    let d2 = domain(conn, &path2).await;
    d2.create(0).await.expect("start sp2");
    let port2 = live_port(&d2.get_xml_desc(0).await.expect("live2"));
    assert_ne!(port, port2);
    assert!(qemu_cmdline(&run, "sp2").contains("disable-ticketing=on"));

    // VNC: the chosen display is in the live XML; a password makes VNC auth (2) the
    // only security type, without one it is None (1).
    let path3 = qc
        .domain_define_xml(&xml(
            "vn",
            "<graphics type='vnc' port='-1' autoport='yes' passwd='vnc-pass-77'/>",
        ))
        .await
        .expect("define vnc");
    let d3 = domain(conn, &path3).await;
    d3.create(0).await.expect("start vnc");
    let vport = live_port(&d3.get_xml_desc(0).await.expect("live3"));
    assert_eq!(vnc_security_types(vport), vec![2]);
    let argv = qemu_cmdline(&run, "vn");
    assert!(
        argv.contains(",password=on") && !argv.contains("vnc-pass-77"),
        "{argv}"
    );
    let path4 = qc
        .domain_define_xml(&xml("vo", "<graphics type='vnc' autoport='yes'/>"))
        .await
        .expect("define open vnc");
    let d4 = domain(conn, &path4).await;
    d4.create(0).await.expect("start open vnc");
    let oport = live_port(&d4.get_xml_desc(0).await.expect("live4"));
    assert_ne!(oport, vport);
    assert_eq!(vnc_security_types(oport), vec![1]);

    // SPICE-only devices without SPICE graphics are refused at start, by name.
    let path5 = qc
        .domain_define_xml(&xml(
            "nospice",
            "<graphics type='vnc'/><redirdev bus='usb' type='spicevmc'/>\
             <controller type='usb' model='qemu-xhci'/>",
        ))
        .await
        .expect("define nospice");
    let e = bus_err(domain(conn, &path5).await.create(0).await);
    assert!(
        e.contains("redirdev") && e.contains("needs <graphics type='spice'>"),
        "{e}"
    );
    for d in [&d, &d2, &d3, &d4] {
        d.destroy(0).await.expect("destroy");
    }
}

/// OpenGraphicsFD: a connection to the VNC server through a socket pair, no listener
/// needed (`<listen type='none'/>`); the password holds unless SKIPAUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_graphics_fd_connects_to_vnc_without_a_listener() {
    let q = qemud(BIN).await;
    let path =
        q.qc.domain_define_xml(&xml(
            "fdvnc",
            "<graphics type='vnc' passwd='fd-pass-1'><listen type='none'/></graphics>",
        ))
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    assert!(bus_err(d.open_graphics_fd(0, 0).await).contains("not running"));
    d.create(0).await.expect("start");
    let stream = |fd: zbus::zvariant::OwnedFd| {
        let s = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(fd));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    let fd = d.open_graphics_fd(0, 0).await.expect("open");
    assert_eq!(
        rfb_security_types(stream(fd)),
        vec![2],
        "VNC auth, as the password asks"
    );
    let fd = d.open_graphics_fd(0, 1).await.expect("open with SKIPAUTH");
    assert_eq!(
        rfb_security_types(stream(fd)),
        vec![1],
        "no auth with SKIPAUTH"
    );
    let e = bus_err(d.open_graphics_fd(1, 0).await);
    assert!(e.contains("No graphics backend with index 1"), "{e}");
    assert!(bus_err(d.open_graphics_fd(0, 2).await).contains("unsupported flags"));
    d.destroy(0).await.expect("destroy");
}
