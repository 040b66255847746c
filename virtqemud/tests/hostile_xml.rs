//! Nothing panics on input: every golden domain XML is mutated thousands of times
//! (cut, repeated, bytes changed, numbers made extreme, markup spliced in) and each
//! result goes through parse, defaults, the XML writer and the command-line builder.
//! Errors are fine; a panic is a failure. The mutations come from a fixed seed, so a
//! failure names a case that can be replayed.

use std::path::Path;

use common::mutate::{assert_no_panics, Target};
use virtqemud::caps::Caps;
use virtqemud::command_line::{build, LaunchContext};
use virtqemud::xml::{Domain, XmlOpts};

/// This file's own elements to splice in, beside `common::mutate::SPLICES`.
const DOMAIN_SPLICES: &[&str] = &[
    "<devices/>",
    "<disk type='file'><target dev='vda'/></disk>",
    "<interface type='network'/>",
    "<graphics type='spice' port='70000'/>",
    "<controller type='pci' index='99999'/>",
    "<address type='pci' domain='0xffff' bus='0xff' slot='0x1f' function='0x7'/>",
    "<memory unit='EiB'>16</memory>",
    "<vcpu>4294967295</vcpu>",
    "<tpm model='tpm-crb'><backend type='emulator' version='9'/></tpm>",
    "<audio id='0' type='spice'/>",
    "<redirdev bus='usb' type='spicevmc'/>",
    // Parser branches of the corpus work: network/file variable stores, a stateless
    // loader, an external TPM, USB versions, SD disks, ramfb, VIO SCSI, empty PCI
    // addresses, memory from NUMA cells, namespaced commandline children.
    "<nvram type='network'><source protocol='nbd' name='v'><host name='h' port='99999999999'/></source></nvram>",
    "<nvram type='network'><source protocol='nosuch'/></nvram>",
    "<nvram type='file'/>",
    "<nvram type='block'><source dev='/dev/x'/></nvram>",
    "<loader stateless='maybe' type='pflash'/>",
    "<tpm><backend type='external'><source type='tcp' mode='bind'/></backend></tpm>",
    "<tpm model='tpm-tis'><backend type='external' persistent_state='x'/></tpm>",
    "<redirfilter><usbdev version='99999.1' allow='yes'/><usbdev version='.' allow='no'/></redirfilter>",
    "<disk type='file'><source file='/x'/><target dev='sdzzzzzzzz' bus='sd'/></disk>",
    "<video><model type='ramfb'/><address type='pci'/></video>",
    "<video><model type='ramfb'/><address type='pci' slot='0x1f'/></video>",
    "<controller type='scsi' model='ibmvscsi'><address type='spapr-vio' reg='0xffffffffffffffffff'/></controller>",
    "<cpu><numa><cell cpus='0' memory='18446744073709551615' unit='EiB'/><cell cpus='1' memory='-1'/></numa></cpu>",
    "<controller type='pci' model='pci-expander-bus'><target busNr='99999999999'><node>x</node></target></controller>",
    "<controller type='pci' index='7' model='pcie-expander-bus'><target busNr='1'/></controller>",
    "<redirdev bus='usb' type='tcp'><source mode='connect' service='x'><reconnect enabled='yes' timeout='-1'/></source></redirdev>",
    "<redirdev bus='usb' type='unix'><source mode='listen'/><protocol type='telnet'/></redirdev>",
    "<ns1:commandline xmlns:ns1='http://libvirt.org/schemas/domain/qemu/1.0'><ns2:arg value='x' xmlns:ns2='urn:x'/><ns3:env xmlns:ns3='http://libvirt.org/schemas/domain/qemu/1.0' name='1'/></ns1:commandline>",
];

/// How far an input got: 0 refused by the parser, 1 by the defaults, 2 built (or
/// refused by the builder).
fn exercise(text: &str) -> usize {
    let Ok(mut dom) = Domain::parse(text) else {
        return 0;
    };
    let _ = dom.to_xml(XmlOpts::default());
    if dom.fill_defaults(&Caps::fixture()).is_err() {
        return 1;
    }
    let xml = dom.to_xml(XmlOpts {
        secure: true,
        ..XmlOpts::default()
    });
    // What was accepted and written must be read back the same way.
    let again = Domain::parse(&xml).expect("written XML parses again");
    let _ = again;
    let mut ctx = LaunchContext::new(
        "/usr/bin/qemu-system-x86_64".into(),
        "/run/q.qmp".into(),
        "/run/q.pid".into(),
        "/run".into(),
    );
    ctx.tap_fds = vec![Some(30); 8];
    ctx.tpm_socket = Some("/run/swtpm.sock".into());
    for g in &mut dom.devices.graphics {
        g.port = Some(5900);
    }
    let _ = build(&dom, &ctx);
    2
}

#[test]
fn mutated_domain_xml_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    assert!(texts.len() >= 8, "golden files missing");
    let bases: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_no_panics(
        0x5eed_1234_abcd_ef01,
        1500,
        2,
        &[Target {
            bases: &bases,
            splices: DOMAIN_SPLICES,
            check: &exercise,
        }],
    );
}

/// Snapshot requests (`SnapshotCreateXML`), and the metadata files the daemon reads back
/// at start: a request that parses must have a usable name; a stored file that parses
/// is written again and read back the same.
fn exercise_snapshot(text: &str) -> usize {
    use virtqemud::snapshot::{Request, Snapshot};
    let request = Request::parse(text);
    if let Ok(Request { name: Some(n), .. }) = &request {
        virtqemud::snapshot::check_name(n).expect("a parsed name is a valid name");
    }
    let Ok(stored) = Snapshot::from_file(text) else {
        return usize::from(request.is_ok());
    };
    let written = stored.to_file();
    if let Ok(w) = written {
        let again = Snapshot::from_file(&w).expect("a written snapshot file reads back");
        assert_eq!(again.name, stored.name);
        assert_eq!(again.disks, stored.disks);
    }
    2
}

const SNAPSHOT_SPLICES: &[&str] = &[
    "<name>../../etc</name>",
    "<name>.hidden</name>",
    "<memory snapshot='external' file='/etc/passwd'/>",
    "<disks><disk name='vda' snapshot='external'><source file='/x'/></disk></disks>",
    "<parent><name>p</name></parent>",
    "<creationTime>-9223372036854775808</creationTime>",
    "<domain type='qemu'><name>d</name></domain>",
];

#[test]
fn mutated_snapshot_xml_never_panics() {
    let domain = "<domain type='qemu'><name>d</name><memory>65536</memory>\
                  <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><source file='/var/lib/d.qcow2'/>\
                  <target dev='vda' bus='virtio'/></disk></devices></domain>";
    let stored = format!(
        "<domainsnapshot><name>s1</name><description>before</description>\
         <state>running</state><parent><name>s0</name></parent>\
         <creationTime>1764579600</creationTime><memory snapshot='internal'/>\
         <disks><disk name='vda' snapshot='internal'/></disks>{domain}</domainsnapshot>"
    );
    let bases = [
        "<domainsnapshot><name>before-upgrade</name><description>d</description>\
         <memory snapshot='internal'/><disks><disk name='vda'/>\
         <disk name='vdb' snapshot='no'/></disks></domainsnapshot>",
        "<domainsnapshot/>",
        stored.as_str(),
    ];
    assert_no_panics(
        0x5eed_5a95_0000_0001,
        3000,
        2,
        &[Target {
            bases: &bases,
            splices: SNAPSHOT_SPLICES,
            check: &exercise_snapshot,
        }],
    );
}

const BASE_DOMAIN: &str = "<domain type='qemu'><name>m</name><memory>65536</memory>\
                           <os><type arch='x86_64'>hvm</type></os></domain>";

/// `SetMetadata` element fragments: whatever parses is put in the domain's namespace
/// and written into the definition, which must still parse.
#[test]
fn mutated_metadata_never_panics() {
    use virtqemud::metadata::{Change, Kind};
    let check = |text: &str| -> usize {
        let Ok(change) = Change::new(Kind::Element, text, "app", "http://example.org/app/1") else {
            return 0;
        };
        let mut dom = Domain::parse(BASE_DOMAIN).expect("base domain");
        change.apply(&mut dom);
        let xml = dom.to_xml(XmlOpts::default());
        Domain::parse(&xml).expect("a definition with metadata parses again");
        let _ = virtqemud::metadata::get(&dom, Kind::Element, "http://example.org/app/1");
        2
    };
    assert_no_panics(
        0x5eed_0e7a_0000_0001,
        3000,
        2,
        &[Target {
            bases: &[
                "<instance><flavor id='3'>m1.small</flavor><owner/></instance>",
                "<a xmlns:b='urn:b'><b:c d='e'>text</b:c><![CDATA[<x>]]></a>",
            ],
            splices: &["<app:x xmlns:app='urn:other'/>", "<?pi x?>", "&amp;&lt;"],
            check: &check,
        }],
    );
}
