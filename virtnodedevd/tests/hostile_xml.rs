//! Nothing panics on input: NodeDeviceCreateXML documents (NPIV vports and mdevs),
//! mutated thousands of times from a fixed seed, go through the parser. Errors are
//! fine; a panic is a failure. `VIRT_MUTATIONS` raises the count per base.

use common::mutate::{assert_no_panics, Target};
use virtnodedevd::create::{parse, Request};

const BASES: &[&str] = &[
    "<device><name>scsi_host9</name><parent>scsi_host5</parent>\
     <capability type='scsi_host'><capability type='fc_host'>\
     <wwnn>20000000c9848140</wwnn><wwpn>10000000c9848140</wwpn>\
     </capability></capability></device>",
    "<device><parent wwnn='20000000c9848140' wwpn='10000000c9848140'/>\
     <capability type='scsi_host'><capability type='fc_host'/></capability></device>",
    "<device><parent fabric_wwn='2000000533ab5e3f'/>\
     <capability type='scsi_host'><capability type='fc_host'/></capability></device>",
    "<device><parent>pci_0000_03_00_0</parent><capability type='mdev'>\
     <type id='nvidia-11'/><uuid>4b20d080-1b54-4048-85b3-a6a62d165c01</uuid>\
     </capability></device>",
];

const SPLICES: &[&str] = &[
    "<capability type='mdev'><type id='../../x'/></capability>",
    "<wwnn>zz</wwnn>",
    "<wwpn>0</wwpn>",
    "<uuid>not-a-uuid</uuid>",
    "<parent>../..</parent>",
    "<capability type='fc_host'/>",
];

/// How far an input got: 0 refused by the parser, 1 a request.
fn exercise(text: &str) -> usize {
    match parse(text) {
        Err(_) => 0,
        // The parent is only a name: the driver looks it up among the devices it
        // knows and never joins it into a path, so any string is safe here.
        Ok(Request::Mdev { type_id, uuid, .. }) => {
            // What does reach sysfs paths is checked by the parser.
            assert!(!type_id.as_str().contains('/'), "mdev type from:\n{text}");
            assert!(!uuid.as_str().contains('/'), "mdev uuid from:\n{text}");
            1
        }
        Ok(Request::Vport { .. }) => 1,
    }
}

#[test]
fn mutated_node_device_xml_never_panics() {
    let per_base = std::env::var("VIRT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2500);
    assert_no_panics(
        0x6e6f_6465_6465_7621,
        per_base,
        1,
        &[Target {
            bases: BASES,
            splices: SPLICES,
            check: &exercise,
        }],
    );
}
