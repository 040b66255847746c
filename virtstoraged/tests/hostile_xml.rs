//! Nothing panics on input: pool and volume XML, mutated thousands of times from a
//! fixed seed, go through parse and the XML writer, and what was written must parse
//! again. Volume names that could leave the pool never get through. Errors are fine;
//! a panic is a failure.

use common::mutate::{assert_no_panics, Target};
use virtstoraged::xml::{PoolDef, VolDef};

const POOLS: &[&str] = &[
    "<pool type='dir'><name>p</name><uuid>2b6a1a9e-8c3d-4a4f-9b1e-0c7d5e3f2a10</uuid>\
     <capacity unit='G'>10</capacity><target><path>/var/lib/pools/p</path>\
     <permissions><mode>0711</mode><owner>0</owner><group>0</group></permissions>\
     </target></pool>",
    "<pool type='fs'><name>f</name><source><device path='/dev/loop7'/>\
     <format type='ext4'/></source><target><path>/mnt/f</path></target></pool>",
    "<pool type='logical'><name>vg0</name><source><device path='/dev/loop8'/>\
     <name>vg0</name><format type='lvm2'/></source><target><path>/dev/vg0</path>\
     </target></pool>",
];

const VOLS: &[&str] = &[
    "<volume><name>a.img</name><capacity unit='M'>64</capacity>\
     <allocation unit='M'>64</allocation><target><format type='raw'/>\
     <permissions><mode>0600</mode></permissions></target></volume>",
    "<volume><name>b.qcow2</name><capacity unit='G'>1</capacity>\
     <target><format type='qcow2'/><compat>1.1</compat></target>\
     <backingStore><path>/var/lib/pools/p/a.img</path><format type='raw'/>\
     </backingStore></volume>",
];

const SPLICES: &[&str] = &[
    "<name>../escape</name>",
    "<name>a/b</name>",
    "<name>.</name>",
    "<capacity unit='EiB'>16</capacity>",
    "<capacity>18446744073709551616</capacity>",
    "<format type='vmdk'/>",
    "<device path='/dev/sda,x'/>",
];

fn check_pool(text: &str) -> usize {
    let Ok(p) = PoolDef::parse(text) else {
        return 0;
    };
    PoolDef::parse(&p.to_xml()).expect("written pool XML parses again");
    1
}

fn check_vol(text: &str) -> usize {
    let Ok(v) = VolDef::parse(text) else {
        return 0;
    };
    let name = v.name.as_str();
    assert!(
        !name.contains('/') && name != "." && name != ".." && !name.is_empty(),
        "volume name {name:?} accepted"
    );
    VolDef::parse(&v.to_xml()).expect("written volume XML parses again");
    1
}

#[test]
fn mutated_pool_and_volume_xml_never_panics() {
    assert_no_panics(
        0x706f_6f6c_766f_6c73,
        2000,
        1,
        &[
            Target {
                bases: POOLS,
                splices: SPLICES,
                check: &check_pool,
            },
            Target {
                bases: VOLS,
                splices: SPLICES,
                check: &check_vol,
            },
        ],
    );
}

/// A secret that parses is written back and reads the same; its usage ID never carries
/// control characters (it names files and appears in errors).
fn check_secret(text: &str) -> usize {
    use virtstoraged::secret::SecretDef;
    let Ok(s) = SecretDef::parse(text) else {
        return 0;
    };
    assert!(!s.usage.id().chars().any(char::is_control), "{:?}", s.usage);
    assert_eq!(
        SecretDef::parse(&s.to_xml()).expect("written secret XML parses again"),
        s
    );
    1
}

#[test]
fn mutated_secret_xml_never_panics() {
    assert_no_panics(
        0x7365_6372_6574_0001,
        3000,
        1,
        &[Target {
            bases: &[
                "<secret ephemeral='no' private='yes'><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>\
                 <description>LUKS</description><usage type='volume'><volume>/var/lib/a.img</volume></usage></secret>",
                "<secret><usage type='iscsi'><target>libvirtiscsi</target></usage></secret>",
                "<secret ephemeral='yes'><usage type='ceph'><name>client.admin secret</name></usage></secret>",
            ],
            splices: &["<usage type='tls'><name>t</name></usage>", "<uuid>zz</uuid>", "&#1;"],
            check: &check_secret,
        }],
    );
}
