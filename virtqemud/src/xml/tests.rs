use super::*;
use crate::caps::tests::fake;
use crate::caps::DefaultCaps;

const MINIMAL: &str = "<domain type='qemu'><name>t1</name><memory unit='MiB'>64</memory>\
<os><type>hvm</type><kernel>/k</kernel></os></domain>";

#[test]
fn parse_minimal_fills_uuid_and_defaults() {
    let mut d = Domain::parse(MINIMAL).unwrap();
    assert_eq!(d.name.as_str(), "t1");
    assert_eq!(d.memory_kib, 65536);
    assert_eq!(d.current_memory_kib, 65536);
    assert_eq!(d.vcpus, 1);
    assert!(!d.uuid.is_nil());
    d.fill_defaults(&fake()).unwrap();
    assert_eq!(d.os.machine.as_deref(), Some("pc-i440fx-7.2"));
    assert_eq!(d.os.arch.as_deref(), Some("x86_64"));
    assert_eq!(
        d.devices.memballoon.as_ref().map(|m| m.model.as_str()),
        Some("virtio")
    );
    assert!(d.devices.memballoon.as_ref().unwrap().address.is_some());
}

#[test]
fn round_trip_is_stable_and_keeps_metadata() {
    let xml = "<domain type='kvm'><name>r</name><uuid>11111111-2222-3333-4444-555555555555</uuid>\
<title>T</title><metadata><my:x xmlns:my='urn:x'>v</my:x></metadata>\
<memory>131072</memory><currentMemory>65536</currentMemory><vcpu current='1'>2</vcpu>\
<os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>\
<features><acpi/><apic/></features><cpu mode='host-model'/><clock offset='utc'/>\
<on_crash>preserve</on_crash><pm><suspend-to-mem enabled='no'/></pm>\
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>\
<source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/><serial>abc</serial></disk>\
<interface type='network'><source network='default'/><mac address='52:54:00:aa:bb:cc'/></interface>\
<channel type='unix'><source mode='bind' path='/run/x.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
<weird foo='1'/></devices><seclabel type='none'/></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let out = d.to_xml(XmlOpts::default());
    assert!(out.contains("urn:x"), "{out}");
    assert!(out.contains("<weird foo='1'/>"), "{out}");
    // libvirt names the 'none' model of an unlabelled domain.
    assert!(
        out.contains("<seclabel type='none' model='none'/>"),
        "{out}"
    );
    assert!(out.contains("machine='pc-q35-7.2'"), "{out}");
    let mut again = Domain::parse(&out).unwrap();
    again.fill_defaults(&fake()).unwrap();
    assert_eq!(again, d);
    assert_eq!(again.to_xml(XmlOpts::default()), out);
    assert_eq!(d.on_crash, LifecycleAction::Preserve);
    assert_eq!(
        d.devices.interfaces[0].mac.unwrap().to_string(),
        "52:54:00:aa:bb:cc"
    );
}

#[test]
fn macs_and_pci_slots_are_assigned_uniquely() {
    let xml = "<domain type='qemu'><name>n</name><memory>65536</memory><os><type>hvm</type></os><devices>\
<interface type='user'/><interface type='user'/><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
<video><model type='vga'/></video></devices></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let m0 = d.devices.interfaces[0].mac.unwrap();
    let m1 = d.devices.interfaces[1].mac.unwrap();
    assert_ne!(m0, m1);
    assert_eq!(&m0.0[..3], &[0x52, 0x54, 0x00]);
    let mut slots: Vec<u8> = d
        .devices
        .interfaces
        .iter()
        .filter_map(|i| i.address.as_ref().and_then(Address::pci))
        .chain(
            d.devices
                .rngs
                .iter()
                .filter_map(|r| r.address.as_ref().and_then(Address::pci)),
        )
        .chain(
            d.devices
                .videos
                .iter()
                .filter_map(|r| r.address.as_ref().and_then(Address::pci)),
        )
        .map(|p| p.slot)
        .collect();
    assert_eq!(slots.len(), 4);
    assert!(slots.contains(&2), "video on slot 2: {slots:?}");
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 4);
    assert!(!slots.contains(&1));
    // Idempotent: a second fill changes nothing.
    let before = d.clone();
    d.fill_defaults(&fake()).unwrap();
    assert_eq!(before, d);
}

fn err(xml: &str) -> String {
    let r = Domain::parse(xml).and_then(|mut d| d.fill_defaults(&fake()).map(|_| d));
    match r {
        Ok(_) => panic!("accepted: {xml}"),
        Err(e) => e.to_string(),
    }
}

/// The argv builder's refusal of a document that defines.
fn start_err(xml: &str) -> String {
    let mut d = Domain::parse(xml).expect("defines");
    d.fill_defaults(&fake()).expect("defaults");
    let ctx = crate::command_line::LaunchContext::new(
        "/usr/bin/qemu-system-x86_64".into(),
        "/run/q.sock".into(),
        "/run/q.pid".into(),
        "/run".into(),
    );
    match crate::command_line::build(&d, &ctx) {
        Ok(_) => panic!("started: {xml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_element_and_value() {
    let base = |body: &str| {
        format!("<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>{body}</domain>")
    };
    assert!(err("<domain type='xen'><name>e</name></domain>").contains("xen"));
    assert!(err("<domain type='qemu'><name>a/b</name><memory>1</memory></domain>").contains("a/b"));
    let e = err(&base("<vcpu>zero</vcpu>"));
    assert!(e.contains("vcpu") && e.contains("zero"), "{e}");
    let e = err(&base("<devices><interface type='nonesuch'/></devices>"));
    assert!(e.contains("interface") && e.contains("nonesuch"), "{e}");
    // Kinds libvirt defines but this daemon cannot start are refused at start, by name.
    let e = start_err(&base("<devices><interface type='vdpa'/></devices>"));
    assert!(e.contains("interface") && e.contains("vdpa"), "{e}");
    // A kind that runs needs what it runs on.
    let e = err(&base("<devices><interface type='vhostuser'/></devices>"));
    assert!(
        e.contains("interface") && e.contains("<source path>"),
        "{e}"
    );
    let e = start_err(&base("<devices><graphics type='rdp'/></devices>"));
    assert!(e.contains("graphics") && e.contains("rdp"), "{e}");
    let e = err(&base(
        "<devices><disk type='network'><target dev='vda'/></disk></devices>",
    ));
    assert!(e.contains("disk") && e.contains("network"), "{e}");
    let e = err(&base(
        "<devices><interface type='user'><mac address='01:00:00:00:00:01'/></interface></devices>",
    ));
    assert!(e.contains("mac") && e.contains("01:00:00:00:00:01"), "{e}");
    let e = err(&base("<on_reboot>explode</on_reboot>"));
    assert!(e.contains("on_reboot") && e.contains("explode"), "{e}");
    let e = err(&base(
        "<vcpu>2</vcpu><cpu mode='maximum'><topology sockets='1' cores='4' threads='1'/></cpu>",
    ));
    assert!(e.contains("topology"), "{e}");
    let e = err("<domain type='qemu'><name>e</name><memory>65536</memory><os><type machine='nonesuch'>hvm</type></os></domain>");
    assert!(e.contains("nonesuch"), "{e}");
    let e = err(&base("<devices><disk type='file'><source file='/a'/><target dev='vda'/></disk><disk type='file'><source file='/b'/><target dev='vda'/></disk></devices>"));
    assert!(e.contains("vda") && e.contains("twice"), "{e}");
    let v: common::error::VirError =
        Domain::parse(&base("<devices><graphics type='nonesuch'/></devices>"))
            .unwrap_err()
            .into();
    assert!(v.to_string().contains("nonesuch"), "{v}");
}

#[test]
fn memory_units() {
    let d = Domain::parse("<domain type='qemu'><name>u</name><memory unit='GiB'>2</memory><currentMemory unit='MB'>1000</currentMemory><os><type>hvm</type></os></domain>").unwrap();
    assert_eq!(d.memory_kib, 2 * 1024 * 1024);
    assert_eq!(d.current_memory_kib, 976563);
}

#[test]
fn cpu_model_checked_against_caps() {
    let x = |m: &str| {
        format!("<domain type='qemu'><name>c</name><memory>65536</memory><os><type>hvm</type></os><cpu mode='custom'><model fallback='forbid'>{m}</model></cpu></domain>")
    };
    let mut ok = Domain::parse(&x("Skylake-Client")).unwrap();
    ok.fill_defaults(&fake()).unwrap();
    assert_eq!(ok.cpu.as_ref().unwrap().fallback.as_deref(), Some("forbid"));
    let e = err(&x("Pentium9000"));
    assert!(e.contains("cpu model") && e.contains("Pentium9000"), "{e}");
}

/// What libvirt 9.0 writes into a minimal i440fx definition (its
/// qemuxml2xmloutdata for a current QEMU): default audio, PS/2 inputs, PIIX3's USB
/// and IDE controllers at their fixed functions, the default CPU, clock and boot.
#[test]
fn libvirts_define_time_defaults() {
    let xml = "<domain type='qemu'><name>d</name><memory>65536</memory>\
<vcpu cpuset='1-2'>1</vcpu><os><type machine='pc'>hvm</type></os><devices>\
<disk type='file' device='cdrom'><target dev='hdc'/></disk>\
<console type='pty'/></devices></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let out = d.to_xml(XmlOpts::default());
    for want in [
        "<audio id='1' type='none'/>",
        "<input type='mouse' bus='ps2'/>",
        "<input type='keyboard' bus='ps2'/>",
        "<controller type='usb' index='0' model='piix3-uhci'>",
        "slot='0x01' function='0x2'",
        "<controller type='ide' index='0'>",
        "slot='0x01' function='0x1'",
        "<cpu mode='custom' match='exact' check='none'>",
        "<model fallback='forbid'>qemu64</model>",
        "<clock offset='utc'/>",
        "<boot dev='hd'/>",
        "<driver name='qemu' type='raw'/>",
        "<vcpu placement='static' cpuset='1-2'>1</vcpu>",
        "<serial type='pty'>",
        "<model name='isa-serial'/>",
    ] {
        assert!(out.contains(want), "{want} missing from {out}");
    }
    let mut again = Domain::parse(&out).unwrap();
    again.fill_defaults(&fake()).unwrap();
    assert_eq!(again, d, "defaults are stable");
}

/// virt-install's i440fx USB: `ich9-ehci1` and its `ich9-uhciN` companions, none with an
/// index. The companions share the EHCI's index (QEMU's `masterbus=usb.0`), as in
/// libvirt; numbering them 1..3 made QEMU refuse the missing `usb1.0` bus.
#[test]
fn usb_companions_without_index_share_their_masters() {
    let xml = "<domain type='qemu'><name>c</name><memory unit='MiB'>64</memory>\
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
<controller type='usb' model='ich9-ehci1'/>\
<controller type='usb' model='ich9-uhci1'><master startport='0'/></controller>\
<controller type='usb' model='ich9-uhci2'><master startport='2'/></controller>\
<controller type='usb' model='ich9-uhci3'><master startport='4'/></controller>\
<controller type='usb' index='1' model='qemu-xhci'/>\
</devices></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let usb: Vec<(Option<&str>, u32)> = d
        .devices
        .controllers
        .iter()
        .filter(|c| c.kind == "usb")
        .map(|c| (c.model.as_deref(), c.index))
        .collect();
    assert_eq!(
        usb,
        [
            (Some("ich9-ehci1"), 0),
            (Some("ich9-uhci1"), 0),
            (Some("ich9-uhci2"), 0),
            (Some("ich9-uhci3"), 0),
            (Some("qemu-xhci"), 1),
        ]
    );
}

/// A domain with `devices` (and `extra` top-level elements) on `machine`, defined:
/// its inactive XML.
fn defined_with(machine: &str, devices: &str, extra: &str) -> String {
    let xml = format!(
        "<domain type='qemu'><name>d</name><memory unit='MiB'>64</memory>{extra}\
         <os><type arch='x86_64' machine='{machine}'>hvm</type></os>\
         <devices>{devices}</devices></domain>"
    );
    let mut d = Domain::parse(&xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let out = d.to_xml(XmlOpts::default());
    // Defaults are stable: defining the result again changes nothing.
    let mut again = Domain::parse(&out).unwrap();
    again.fill_defaults(&fake()).unwrap();
    assert_eq!(again.to_xml(XmlOpts::default()), out, "defaults not stable");
    out
}

/// Defined (twice, to check stability) against the fixture with `qemu` as what
/// libvirt's defaults read of QEMU.
fn defined_with_caps(machine: &str, devices: &str, extra: &str, qemu: DefaultCaps) -> String {
    let xml = format!(
        "<domain type='qemu'><name>d</name><memory unit='MiB'>64</memory>{extra}\
         <os><type arch='x86_64' machine='{machine}'>hvm</type></os>\
         <devices>{devices}</devices></domain>"
    );
    let mut caps = fake();
    caps.defaults = qemu;
    let mut d = Domain::parse(&xml).unwrap();
    d.fill_defaults(&caps).unwrap();
    let out = d.to_xml(XmlOpts::default());
    let mut again = Domain::parse(&out).unwrap();
    again.fill_defaults(&caps).unwrap();
    assert_eq!(again.to_xml(XmlOpts::default()), out, "defaults not stable");
    out
}

#[test]
fn q35_usb_default_follows_what_qemu_has() {
    let none = DefaultCaps::none();
    let nec = DefaultCaps {
        nec_usb_xhci: true,
        ..none.clone()
    };
    let x = defined_with_caps("q35", "", "", nec);
    assert!(
        x.contains("<controller type='usb' index='0' model='nec-xhci'>"),
        "{x}"
    );
    // USB2: EHCI and its three companions on ports 0, 2 and 4, in ICH9's slot.
    let ehci = DefaultCaps {
        ich9_usb_ehci1: true,
        ..none.clone()
    };
    let x = defined_with_caps("q35", "", "", ehci);
    for (n, port) in [(1, 0), (2, 2), (3, 4)] {
        let c = format!("<controller type='usb' index='0' model='ich9-uhci{n}'>");
        let at = x.find(&c).unwrap_or_else(|| panic!("{c} missing: {x}"));
        assert!(
            x[at..].contains(&format!("<master startport='{port}'/>")),
            "{x}"
        );
    }
    assert!(x.contains("model='ich9-ehci1'"), "{x}");
    assert!(x.contains("slot='0x1d' function='0x7'/>"), "{x}");
    // Neither: no USB controller, so no root port for one either.
    let x = defined_with_caps("q35", "<memballoon model='none'/>", "", none);
    assert!(!x.contains("type='usb'"), "{x}");
    assert!(!x.contains("pcie-root-port"), "{x}");
    // QEMU 7.2: qemu-xhci.
    let x = defined_with_caps("q35", "", "", DefaultCaps::default());
    assert!(x.contains("model='qemu-xhci'"), "{x}");
}

#[test]
fn usb_controller_without_model_is_piix3_uhci_on_every_machine() {
    for machine in ["pc", "q35"] {
        let x = defined(machine, "<controller type='usb' index='0'/>");
        assert!(
            x.contains("<controller type='usb' index='0' model='piix3-uhci'>"),
            "{machine}: {x}"
        );
    }
    // A QEMU without PIIX3's UHCI: the model stays unwritten (QEMU's default).
    let x = defined_with_caps(
        "pc",
        "<controller type='usb' index='0'/>",
        "",
        DefaultCaps::none(),
    );
    assert!(x.contains("<controller type='usb' index='0'>"), "{x}");
}

#[test]
fn root_ports_are_ioh3420_without_the_generic_port() {
    let x = defined_with_caps(
        "q35",
        "<interface type='user'><model type='virtio'/></interface>",
        "",
        DefaultCaps {
            qemu_xhci: true,
            ..DefaultCaps::none()
        },
    );
    assert!(x.contains("model='pcie-root-port'>"), "{x}");
    assert!(x.contains("<model name='ioh3420'/>"), "{x}");
    assert!(!x.contains("<model name='pcie-root-port'/>"), "{x}");
    // A written model name is kept.
    let x = defined_with_caps(
        "q35",
        "<controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/></controller>",
        "",
        DefaultCaps::none(),
    );
    assert!(x.contains("<model name='pcie-root-port'/>"), "{x}");
}

#[test]
fn host_passthrough_is_migratable_when_qemu_knows_it() {
    let cpu = "<cpu mode='host-passthrough'/>";
    let x = defined_with_caps("pc", "", cpu, DefaultCaps::default());
    assert!(x.contains("migratable='on'"), "{x}");
    let x = defined_with_caps("pc", "", cpu, DefaultCaps::none());
    assert!(x.contains("migratable='off'"), "{x}");
    let written = "<cpu mode='host-passthrough' migratable='off'/>";
    let x = defined_with_caps("pc", "", written, DefaultCaps::default());
    assert!(x.contains("migratable='off'"), "{x}");
}

fn defined(machine: &str, devices: &str) -> String {
    defined_with(machine, devices, "")
}

#[test]
fn q35_endpoints_get_root_ports_of_their_own_and_a_spare() {
    let x = defined(
        "q35",
        "<interface type='user'><model type='virtio'/></interface><memballoon model='none'/>",
    );
    // The NIC, USB (qemu-xhci) and one spare for hot-plug: three root ports on slot
    // 1 (no video holds it), functions 0-2, numbered as libvirt numbers them.
    for (i, f) in [(1, 0), (2, 1), (3, 2)] {
        assert!(
            x.contains(&format!(
                "<controller type='pci' index='{i}' model='pcie-root-port'>"
            )),
            "{x}"
        );
        assert!(
            x.contains(&format!("<target chassis='{i}' port='0x{:x}'/>", 8 + f)),
            "{x}"
        );
    }
    assert!(x.contains("<model name='pcie-root-port'/>"), "{x}");
    assert!(!x.contains("index='4' model='pcie-root-port'"), "{x}");
    assert!(
        x.contains("slot='0x01' function='0x0' multifunction='on'/>"),
        "{x}"
    );
    // NICs come before controllers: the NIC is behind root port 1, USB behind 2.
    let nic = &x[x.find("<interface").unwrap()..];
    assert!(
        nic.contains("<address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>"),
        "{x}"
    );
}

#[test]
fn q35_pci_only_devices_go_behind_a_pcie_to_pci_bridge() {
    let x = defined(
        "q35",
        "<interface type='user'><model type='e1000'/></interface><memballoon model='none'/>",
    );
    assert!(x.contains("model='pcie-to-pci-bridge'"), "{x}");
    assert!(x.contains("<model name='pcie-pci-bridge'/>"), "{x}");
}

#[test]
fn i440fx_bus_0_full_adds_a_pci_bridge() {
    let nics: String = (0..32)
        .map(|i| {
            format!("<interface type='user'><mac address='52:54:00:00:00:{i:02x}'/></interface>")
        })
        .collect();
    let x = defined("pc", &nics);
    assert!(
        x.contains("<controller type='pci' index='1' model='pci-bridge'>"),
        "{x}"
    );
    assert!(x.contains("<target chassisNr='1'/>"), "{x}");
    assert!(x.contains("bus='0x01' slot='0x01'"), "{x}");
}

#[test]
fn ich9_usb2_shares_one_slot_as_on_real_q35() {
    let x = defined(
        "q35",
        "<controller type='usb' model='ich9-ehci1'/><controller type='usb' model='ich9-uhci1'/>\
         <controller type='usb' model='ich9-uhci2'/><controller type='usb' model='ich9-uhci3'/>",
    );
    assert!(
        x.contains("slot='0x1d' function='0x0' multifunction='on'/>"),
        "{x}"
    );
    assert!(x.contains("slot='0x1d' function='0x7'/>"), "{x}");
    assert!(x.contains("<master startport='4'/>"), "{x}");
}

#[test]
fn usb2_controllers_without_index_join_the_previous_usb2_set() {
    let x = defined(
        "q35",
        "<controller type='usb' model='ich9-ehci1'/><controller type='usb' model='ich9-uhci1'/>\
         <controller type='usb' model='ich9-uhci1'/><controller type='usb' model='nec-xhci'/>",
    );
    assert!(
        x.contains("<controller type='usb' index='0' model='ich9-uhci1'>"),
        "{x}"
    );
    // A second uhci1 cannot join index 0 (it has one): a new index.
    assert!(
        x.contains("<controller type='usb' index='1' model='ich9-uhci1'>"),
        "{x}"
    );
    assert!(
        x.contains("<controller type='usb' index='2' model='nec-xhci'"),
        "{x}"
    );
}

#[test]
fn drive_addresses_follow_the_target_name() {
    assert_eq!(devices::disk_index("sda"), Some(0));
    assert_eq!(devices::disk_index("hdc"), Some(2));
    assert_eq!(devices::disk_index("sdaa"), Some(26));
    assert_eq!(devices::disk_index("vdb1"), Some(1));
    assert_eq!(devices::disk_index("xyz"), None);
    let x = defined(
        "pc",
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\
         <disk type='file'><source file='/a'/><target dev='sdi' bus='scsi'/></disk>",
    );
    assert!(
        x.contains("<address type='drive' controller='0' bus='1' target='0' unit='0'/>"),
        "{x}"
    );
    // Wide SCSI bus: unit 7 is the controller's, so sdi (8) is unit 9... of 15.
    assert!(
        x.contains("<address type='drive' controller='0' bus='0' target='0' unit='9'/>"),
        "{x}"
    );
    // The SCSI controller libvirt adds is LSI's.
    assert!(
        x.contains("<controller type='scsi' index='0' model='lsilogic'>"),
        "{x}"
    );
}

#[test]
fn nic_model_defaults_to_rtl8139_and_takes_libvirts_spelling() {
    let x = defined(
        "pc",
        "<interface type='user'/><interface type='user'><model type='ViRtIo'/></interface>",
    );
    assert!(x.contains("<model type='rtl8139'/>"), "{x}");
    assert!(x.contains("<model type='virtio'/>"), "{x}");
}

#[test]
fn graphics_ports_and_default_audio_as_libvirt() {
    // SPICE without port or autoport listens nowhere; VNC's automatic port is -1.
    let x = defined("pc", "<graphics type='spice'/>");
    assert!(x.contains("<graphics type='spice'>"), "{x}");
    assert!(x.contains("<listen type='none'/>"), "{x}");
    assert!(x.contains("<audio id='1' type='spice'/>"), "{x}");
    let x = defined("pc", "<graphics type='vnc' port='5901' autoport='yes'/>");
    assert!(x.contains("port='-1' autoport='yes'"), "{x}");
    assert!(x.contains("<audio id='1' type='none'/>"), "{x}");
    // SDL passes the host's audio through: libvirt writes no backend.
    let x = defined("pc", "<graphics type='sdl'/>");
    assert!(!x.contains("<audio"), "{x}");
}

#[test]
fn channels_get_virtio_serial_ports_and_pathless_sockets_no_source() {
    let x = defined(
        "pc",
        "<channel type='unix'><source mode='bind'/><target type='virtio' name='a.0'/></channel>\
         <channel type='unix'><target type='virtio' name='b.0'/>\
         <address type='virtio-serial' controller='0' bus='0' port='1'/></channel>",
    );
    assert!(!x.contains("<source mode='bind'/>"), "{x}");
    assert!(x.contains("controller='0' bus='0' port='2'/>"), "{x}");
}

#[test]
fn network_disk_hosts_get_default_ports_and_iscsi_a_lun() {
    let x = defined(
        "pc",
        "<disk type='network'><source protocol='nbd' name='x'><host name='h'/></source>\
         <target dev='vda' bus='virtio'/></disk>\
         <disk type='network'><source protocol='iscsi' name='iqn.2000-01.x:t'>\
         <host name='h'/></source><target dev='vdb' bus='virtio'/></disk>",
    );
    assert!(x.contains("<host name='h' port='10809'/>"), "{x}");
    assert!(x.contains("name='iqn.2000-01.x:t/0'"), "{x}");
    assert!(x.contains("<host name='h' port='3260'/>"), "{x}");
}

#[test]
fn cpu_features_and_top_level_defaults() {
    let x = defined_with(
        "pc",
        "",
        "<features><pmu/><hyperv><relaxed state='on'/></hyperv></features>\
         <cpu mode='host-passthrough'><numa><cell cpus='0' memory='65536'/></numa></cpu>\
         <numatune><memnode cellid='0' mode='strict' nodeset='0-3,^2'/></numatune>\
         <memtune><hard_limit unit='M'>1</hard_limit><soft_limit>9007199254740991</soft_limit></memtune>",
    );
    assert!(x.contains("<pmu state='on'/>"), "{x}");
    assert!(x.contains("<hyperv mode='custom'>"), "{x}");
    assert!(x.contains("migratable='on'"), "{x}");
    assert!(x.contains("<cell id='0' cpus='0'"), "{x}");
    assert!(x.contains("nodeset='0-1,3'"), "{x}");
    assert!(
        x.contains("<hard_limit unit='KiB'>1024</hard_limit>"),
        "{x}"
    );
    assert!(!x.contains("soft_limit"), "{x}");
    assert_eq!(canonical_cpuset("1-2,5-7,^6").as_deref(), Some("1-2,5,7"));
    assert_eq!(canonical_cpuset("3,1,2").as_deref(), Some("1-3"));
    assert_eq!(canonical_cpuset("x"), None);
}

#[test]
fn i686_guest_under_the_x86_64_emulator_gets_qemu64() {
    let xml = "<domain type='qemu'><name>d</name><memory unit='MiB'>64</memory>\
<os><type arch='i686' machine='pc'>hvm</type></os>\
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    assert_eq!(
        d.cpu.as_ref().and_then(|c| c.model.as_deref()),
        Some("qemu64")
    );
    let mut d = Domain::parse(&xml.replace("<emulator>/usr/bin/qemu-system-x86_64</emulator>", ""))
        .unwrap();
    d.fill_defaults(&fake()).unwrap();
    assert_eq!(
        d.cpu.as_ref().and_then(|c| c.model.as_deref()),
        Some("qemu32")
    );
}

#[test]
fn kept_devices_get_libvirts_defaults() {
    let x = defined_with(
        "pc",
        "<shmem name='s'/><smartcard mode='passthrough' type='spicevmc'/>\
         <memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>\
         <vsock><cid auto='no' address='4'/></vsock><panic/>",
        "<maxMemory slots='4' unit='GiB'>4</maxMemory>",
    );
    assert!(x.contains("<model type='ivshmem'/>"), "{x}");
    assert!(x.contains("<size unit='M'>4</size>"), "{x}");
    assert!(
        x.contains("<address type='ccid' controller='0' slot='0'/>"),
        "{x}"
    );
    assert!(x.contains("<address type='dimm' slot='0'/>"), "{x}");
    assert!(x.contains("<vsock model='virtio'>"), "{x}");
    assert!(x.contains("<panic model='isa'/>"), "{x}");
}

/// A whole document of `body` (after `<name>`) defined twice, as the daemon stores it.
fn defined_doc(body: &str) -> String {
    let xml = format!("<domain type='qemu'><name>c</name>{body}</domain>");
    let mut d = Domain::parse(&xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let out = d.to_xml(XmlOpts::default());
    let mut again = Domain::parse(&out).unwrap();
    again.fill_defaults(&fake()).unwrap();
    assert_eq!(again, d, "not stable: {out}");
    out
}

#[test]
fn usb_redirection_filter_versions_as_libvirt_writes_them() {
    assert_eq!(devices::usb_version("9.4").as_deref(), Some("9.40"));
    assert_eq!(devices::usb_version("1.09").as_deref(), Some("1.09"));
    assert_eq!(devices::usb_version("2.0").as_deref(), Some("2.00"));
    for bad in ["100.1", "1.100", "x.1", "1", "1.", ".5", "-1.2"] {
        assert_eq!(devices::usb_version(bad), None, "{bad}");
    }
    let x = defined(
        "pc",
        "<redirfilter><usbdev version='9.4' allow='yes'/></redirfilter>",
    );
    assert!(x.contains("version='9.40'"), "{x}");
    let e = err("<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
        <devices><redirfilter><usbdev version='nine' allow='yes'/></redirfilter></devices></domain>");
    assert!(
        e.contains("redirfilter/usbdev") && e.contains("nine"),
        "{e}"
    );
}

#[test]
fn user_alias_of_a_video_is_kept() {
    let x = defined(
        "pc",
        "<graphics type='vnc'/><video><model type='vga'/><alias name='ua-v'/></video>",
    );
    assert!(x.contains("<alias name='ua-v'/>"), "{x}");
    // libvirt's own aliases are made again at start.
    let x = defined(
        "pc",
        "<graphics type='vnc'/><video><model type='vga'/><alias name='video0'/></video>",
    );
    assert!(!x.contains("<alias"), "{x}");
}

#[test]
fn nvram_source_forms_and_stateless_loader_round_trip() {
    let os = |nvram: &str| {
        format!(
            "<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type>\
             <loader readonly='yes' type='pflash'>/c.fd</loader>{nvram}</os>"
        )
    };
    let x = defined_doc(&os(
        "<nvram type='file'><source file='/v/guest_VARS.fd'/></nvram>",
    ));
    assert!(
        x.contains("<nvram type='file'><source file='/v/guest_VARS.fd'/></nvram>")
            || x.contains("<nvram type='file'>\n      <source file='/v/guest_VARS.fd'/>"),
        "{x}"
    );
    let d = Domain::parse(&format!(
        "<domain type='qemu'><name>c</name>{}</domain>",
        os("<nvram type='file'><source file='/v/guest_VARS.fd'/></nvram>")
    ))
    .unwrap();
    assert_eq!(
        d.os.nvram.as_deref(),
        Some(std::path::Path::new("/v/guest_VARS.fd"))
    );
    let x = defined_doc(&os(
        "<nvram type='network'><source protocol='nbd' name='bar'><host name='h' port='6000'/></source></nvram>",
    ));
    assert!(x.contains("<nvram type='network'>"), "{x}");
    assert!(x.contains("<host name='h' port='6000'/>"), "{x}");
    let body = "<memory unit='MiB'>64</memory><os firmware='bios'><type>hvm</type>\
                <loader stateless='yes'/></os>";
    assert!(defined_doc(body).contains("<loader stateless='yes'/>"));
    for (nvram, want) in [
        ("<nvram type='file'/>", "<source>"),
        (
            "<nvram type='block'><source dev='/d'/></nvram>",
            "nvram type",
        ),
        (
            "<nvram type='network'><source protocol='gopher'/></nvram>",
            "gopher",
        ),
    ] {
        let e = err(&format!(
            "<domain type='qemu'><name>e</name>{}</domain>",
            os(nvram)
        ));
        assert!(e.contains(want), "{nvram}: {e}");
    }
}

#[test]
fn external_tpm_and_persistent_state() {
    let x = defined(
        "q35",
        "<tpm model='tpm-tis'><backend type='external'>\
         <source type='unix' mode='connect' path='/run/t.sock'/></backend></tpm>",
    );
    assert!(
        x.contains("<source type='unix' mode='connect' path='/run/t.sock'/>"),
        "{x}"
    );
    let x = defined(
        "q35",
        "<tpm model='tpm-crb'><backend type='emulator' version='2.0' persistent_state='yes'/></tpm>",
    );
    assert!(x.contains("persistent_state='yes'"), "{x}");
    let doc = |backend: &str| {
        format!(
            "<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
            <devices><tpm>{backend}</tpm></devices></domain>"
        )
    };
    let e = err(&doc("<backend type='external'/>"));
    assert!(e.contains("tpm/backend") && e.contains("<source>"), "{e}");
    let e = err(&doc(
        "<backend type='external'><source type='tcp' path='/x'/></backend>",
    ));
    assert!(
        e.contains("tpm/backend/source type") && e.contains("tcp"),
        "{e}"
    );
}

#[test]
fn sd_disks_ramfb_and_vio_scsi_define_as_in_libvirt() {
    let x = defined(
        "pc",
        "<disk type='file'><source file='/c.img'/><target dev='sda' bus='sd'/></disk>",
    );
    assert!(x.contains("bus='sd'"), "{x}");
    let e = start_err(
        "<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
         <devices><disk type='file'><source file='/c.img'/><target dev='sda' bus='sd'/></disk></devices></domain>",
    );
    assert!(e.contains("<disk target bus> 'sd'"), "{e}");
    // ramfb sits on no PCI bus.
    let x = defined(
        "q35",
        "<graphics type='vnc'/><video><model type='ramfb'/></video>",
    );
    let video = &x[x.find("<video>").unwrap()..x.find("</video>").unwrap()];
    assert!(!video.contains("<address"), "{x}");
    let e = err("<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
        <devices><video><model type='ramfb'/><address type='pci' slot='3'/></video></devices></domain>");
    assert!(e.contains("video/address"), "{e}");
    // libvirt gives VIO SCSI controllers spapr-vio registers from 0x2000, no PCI slot.
    let x = defined(
        "pc",
        "<controller type='scsi' index='0' model='ibmvscsi'/><controller type='scsi' index='1' model='ibmvscsi'/>",
    );
    assert!(
        x.contains("<address type='spapr-vio' reg='0x00002000'/>"),
        "{x}"
    );
    assert!(
        x.contains("<address type='spapr-vio' reg='0x00003000'/>"),
        "{x}"
    );
}

#[test]
fn empty_pci_address_asks_for_one() {
    let x = defined(
        "pc",
        "<graphics type='vnc'/><video><model type='cirrus'/><address type='pci'/></video>\
         <memballoon model='virtio'><address type='pci'/></memballoon>",
    );
    assert!(x.contains("slot='0x02'"), "{x}");
    assert!(!x.contains("<address type='pci'/>"), "{x}");
}

#[test]
fn memory_from_numa_cells_and_namespaced_commandline() {
    let x = defined_doc(
        "<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='65536' unit='KiB'/>\
         <cell id='1' cpus='1' memory='64' unit='MiB'/></numa></cpu><os><type>hvm</type></os>",
    );
    assert!(x.contains("<memory unit='KiB'>131072</memory>"), "{x}");
    let e = err("<domain type='qemu'><name>e</name><os><type>hvm</type></os></domain>");
    assert!(e.contains("<memory>"), "{e}");
    let x = defined_doc(
        "<memory unit='MiB'>64</memory><os><type>hvm</type></os>\
         <ns0:commandline xmlns:ns0='http://libvirt.org/schemas/domain/qemu/1.0'>\
         <ns1:arg value='-S' xmlns:ns1='http://libvirt.org/schemas/domain/qemu/1.0'/></ns0:commandline>",
    );
    assert!(x.contains("<qemu:arg value='-S'/>"), "{x}");
    let e = err(
        "<domain type='hvf'><name>e</name><memory>65536</memory><os><type>hvm</type></os></domain>",
    );
    assert!(e.contains("'hvf'") && e.contains("macOS"), "{e}");
}

#[test]
fn idmap_is_lxcs_and_starts_as_with_libvirts_qemu_driver() {
    let xml = "<domain type='qemu'><name>i</name><memory>65536</memory><os><type>hvm</type></os>\
        <idmap><uid start='0' target='1000' count='10'/><gid start='0' target='1000' count='10'/></idmap>\
        </domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    assert!(d
        .to_xml(XmlOpts::default())
        .contains("<uid start='0' target='1000' count='10'/>"));
    let ctx = crate::command_line::LaunchContext::new(
        "/usr/bin/qemu-system-x86_64".into(),
        "/run/q.sock".into(),
        "/run/q.pid".into(),
        "/run".into(),
    );
    assert!(crate::command_line::build(&d, &ctx).is_ok());
    // Another unknown top-level element is still refused by name.
    let e = start_err(
        "<domain type='qemu'><name>i</name><memory>65536</memory><os><type>hvm</type></os><nosuch/></domain>",
    );
    assert!(e.contains("<nosuch>"), "{e}");
}

#[test]
fn expander_buses_get_libvirts_bus_numbers() {
    let x = defined(
        "pc",
        "<controller type='pci' index='1' model='pci-expander-bus'><target busNr='254'><node>1</node></target></controller>\
         <controller type='pci' index='2' model='pci-expander-bus'/>\
         <controller type='pci' index='3' model='pci-expander-bus'/>",
    );
    assert!(x.contains("<target busNr='254'>"), "{x}");
    assert!(x.contains("<node>1</node>"), "{x}");
    assert!(x.contains("<target busNr='252'/>"), "{x}");
    assert!(x.contains("<target busNr='250'/>"), "{x}");
    let e = err("<domain type='qemu'><name>e</name><memory>65536</memory>\
        <os><type machine='pc'>hvm</type></os><devices>\
        <controller type='pci' index='1' model='pci-expander-bus'><target busNr='2'/></controller>\
        <controller type='pci' index='2' model='pci-expander-bus'/></devices></domain>");
    assert!(e.contains("busNr") && e.contains("index='2'"), "{e}");
}

#[test]
fn usb_redirection_over_sockets_round_trips() {
    let x = defined(
        "q35",
        "<redirdev bus='usb' type='tcp'><source mode='connect' host='localhost' service='4000'/>\
         <protocol type='raw'/></redirdev>\
         <redirdev bus='usb' type='unix'><source mode='bind' path='/run/r.sock'/>\
         <address type='usb' bus='0' port='2'/></redirdev>",
    );
    assert!(x.contains("<redirdev bus='usb' type='tcp'>"), "{x}");
    assert!(x.contains("service='4000'"), "{x}");
    assert!(x.contains("<redirdev bus='usb' type='unix'>"), "{x}");
    assert!(x.contains("<address type='usb' bus='0' port='2'/>"), "{x}");
    // A child the model does not read is not dropped: the device is kept and refused.
    let e = start_err(
        "<domain type='qemu'><name>r</name><memory>65536</memory><os><type>hvm</type></os>\
         <devices><redirdev bus='usb' type='spicevmc'><boot order='1'/></redirdev></devices></domain>",
    );
    assert!(e.contains("<redirdev/boot>"), "{e}");
}

#[test]
fn host_inputs_are_built_as_libvirt_passes_them() {
    let doc = |inputs: &str| {
        format!("<domain type='qemu'><name>h</name><memory>65536</memory>\
            <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{inputs}</devices></domain>")
    };
    let argv = |xml: &str| {
        let mut d = Domain::parse(xml).unwrap();
        d.fill_defaults(&fake()).unwrap();
        let ctx = crate::command_line::LaunchContext::new(
            "/usr/bin/qemu-system-x86_64".into(),
            "/run/q.sock".into(),
            "/run/q.pid".into(),
            "/run".into(),
        );
        crate::command_line::build(&d, &ctx).map(|a| {
            a.iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    let a = argv(&doc(
        "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event3'/></input>\
         <input type='evdev'><source dev='/dev/input/event4' grab='all' repeat='off'/></input>",
    ))
    .unwrap();
    assert!(
        a.contains("virtio-input-host-pci,id=input2,evdev=/dev/input/event3,bus=pci."),
        "{a}"
    );
    assert!(a.contains("\"qom-type\":\"input-linux\""), "{a}");
    assert!(
        a.contains("\"grab_all\":true") && a.contains("\"repeat\":false"),
        "{a}"
    );
    let e = argv(&doc(
        "<input type='evdev'><source dev='/dev/input/event4' grab='some'/></input>",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("<input/source grab>") && e.contains("some"),
        "{e}"
    );
    let e = argv(&doc("<input type='passthrough' bus='virtio'/>"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("<input/source>"), "{e}");
}

#[test]
fn usb_redirection_filter_reaches_usb_redir() {
    let xml = "<domain type='qemu'><name>f</name><memory>65536</memory>\
        <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
        <redirdev bus='usb' type='unix'><source mode='bind' path='/run/r.sock'/>\
        <address type='usb' bus='0' port='3'/></redirdev>\
        <redirfilter><usbdev class='0x08' vendor='0x15e1' product='0x2007' version='9.4' allow='yes'/>\
        <usbdev allow='no'/></redirfilter></devices></domain>";
    let mut d = Domain::parse(xml).unwrap();
    d.fill_defaults(&fake()).unwrap();
    let ctx = crate::command_line::LaunchContext::new(
        "/usr/bin/qemu-system-x86_64".into(),
        "/run/q.sock".into(),
        "/run/q.pid".into(),
        "/run".into(),
    );
    let argv: Vec<String> = crate::command_line::build(&d, &ctx)
        .unwrap()
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    assert!(
        argv.iter().any(|a| a.starts_with("usb-redir,")
            && a.contains("filter=0x08:0x15E1:0x2007:0x0940:1|-1:-1:-1:-1:0")
            && a.ends_with("port=3")),
        "{argv:?}"
    );
}

/// What other tools send and libvirt defines: an empty <uuid/> (vagrant-libvirt), a
/// bridge name no kernel can have (oVirt parks NICs on ';vdsmdummy;'), a listen
/// address QEMU resolves ("0", a host name).
#[test]
fn other_tools_xml_that_libvirt_defines() {
    let base = |extra: &str, devices: &str| {
        format!(
            "<domain type='kvm'><name>t</name><uuid></uuid>{extra}<memory>65536</memory>\
             <os><type>hvm</type></os><devices>{devices}</devices></domain>"
        )
    };
    let d = Domain::parse(&base("", "")).expect("empty uuid");
    assert!(!d.uuid.is_nil());
    let d = Domain::parse(&base(
        "",
        "<interface type='bridge'><source bridge=';vdsmdummy;'/></interface>",
    ))
    .expect("any bridge name defines");
    assert_eq!(d.devices.interfaces.len(), 1);
    for listen in ["0", "vnc.example.org", "::1", "192.0.2.1"] {
        Domain::parse(&base(
            "",
            &format!("<graphics type='vnc' port='-1' listen='{listen}'/>"),
        ))
        .unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
    // What would end QEMU's option is still refused, by name.
    for listen in ["0,password=on", "a b", ""] {
        let e = Domain::parse(&base(
            "",
            &format!("<graphics type='vnc' port='-1' listen='{listen}'/>"),
        ))
        .expect_err(listen)
        .to_string();
        assert!(e.contains("listen address"), "{listen}: {e}");
    }
    let e = Domain::parse(&base(
        "",
        "<interface type='bridge'><source bridge=''/></interface>",
    ))
    .expect_err("empty bridge")
    .to_string();
    assert!(e.contains("<source bridge>"), "{e}");
    let e = Domain::parse(&base("", "").replace("<uuid></uuid>", "<uuid>nope</uuid>"))
        .expect_err("bad uuid")
        .to_string();
    assert!(e.contains("uuid"), "{e}");
}
