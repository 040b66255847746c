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
