//! PCI topology as libvirt writes it in `virsh dumpxml`: devices behind PCIe root ports
//! (buses 1..N, root ports as functions of one multifunction slot). A real QEMU is
//! asked through a second monitor (`<qemu:commandline>`) which bus each device is on.

mod support;

use support::{domain, qemud, Probe};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn port(index: u32, function: u32, multi: bool) -> String {
    format!(
        "<controller type='pci' index='{index}' model='pcie-root-port'>\
         <model name='pcie-root-port'/><target chassis='{index}' port='0x{:x}'/>\
         <alias name='pci.{index}'/><address type='pci' domain='0x0000' bus='0x00' \
         slot='0x02' function='0x{function:x}'{}/></controller>",
        0x10 + index - 1,
        if multi { " multifunction='on'" } else { "" }
    )
}

fn on_bus(bus: u32) -> String {
    format!("<address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sit_behind_root_ports_as_dumpxml_says() {
    let q = qemud(BIN).await;
    let (conn, qc) = (&q.conn, &q.qc);
    let mon = q.daemon.dirs.root.path().join("pci.qmp");
    let xml = format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
         <name>topo</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <controller type='pci' index='0' model='pcie-root'/>{p1}{p2}{p3}\
         <controller type='usb' index='0' model='qemu-xhci' ports='15'>{b1}</controller>\
         <controller type='virtio-serial' index='0'>{b2}</controller>\
         <interface type='user'><mac address='52:54:00:6b:2e:12'/><model type='virtio'/>\
         <link state='down'/>{b3}\
         </interface><memballoon model='none'/></devices>{m}</domain>",
        p1 = port(1, 0, true),
        p2 = port(2, 1, false),
        p3 = port(3, 2, false),
        b1 = on_bus(1),
        b2 = on_bus(2),
        b3 = on_bus(3),
        m = Probe::commandline(&mon),
    );
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(conn, &path).await;
    d.create(0).await.expect("start");
    let live = d.get_xml_desc(0).await.expect("live");
    assert!(live.contains("<target chassis='2' port='0x11'/>"), "{live}");
    // The NIC started with its link down (QEMU's set_link found `net0`, or the start
    // would have failed).
    assert!(live.contains("<link state='down'/>"), "{live}");

    // Each device's parent bus is its root port's (QOM `parent_bus`).
    let mut probe = Probe::connect(&mon);
    let mut parent = |id: &str| -> String {
        let v = probe.execute(serde_json::json!({
            "execute": "qom-get",
            "arguments": {"path": format!("/machine/peripheral/{id}"), "property": "parent_bus"}
        }));
        v["return"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: {v}"))
            .to_owned()
    };
    assert_eq!(parent("usb0"), "/machine/peripheral/pci.1/pci.1");
    assert_eq!(parent("virtio-serial0"), "/machine/peripheral/pci.2/pci.2");
    assert_eq!(parent("net0"), "/machine/peripheral/pci.3/pci.3");
    assert_eq!(parent("pci.2"), "/machine/q35/pcie.0");
    d.destroy(0).await.expect("destroy");

    // A bus no controller makes gets the controllers libvirt adds for it (root ports
    // for a PCIe device on q35); a slot a root port does not have is refused at
    // define, naming the address.
    let e = qc
        .domain_define_xml(
            "<domain type='qemu'><name>noslot</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
             <interface type='user'><model type='virtio'/><address type='pci' \
             domain='0x0000' bus='0x07' slot='0x03' function='0x0'/></interface>\
             </devices></domain>",
        )
        .await
        .expect_err("a root port has one slot");
    assert!(e.to_string().contains("0000:07:03.0"), "{e}");
    let auto = qc
        .domain_define_xml(&format!(
            "<domain type='qemu'><name>autobus</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
             <interface type='user'><model type='virtio'/>{}</interface></devices></domain>",
            on_bus(7)
        ))
        .await
        .expect("libvirt adds the root ports bus 7 needs");
    let xml = domain(conn, &auto)
        .await
        .get_xml_desc(0)
        .await
        .expect("xml");
    assert!(
        xml.contains("<controller type='pci' index='7' model='pcie-root-port'>"),
        "{xml}"
    );
}
