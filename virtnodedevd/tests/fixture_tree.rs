//! The sysfs layer, XML writer and PCI detach sequence against the fixture tree in
//! tests/fixtures/sysfs (hardware this machine lacks: SR-IOV, USB, an FC HBA).

use std::path::{Path, PathBuf};
use std::process::Command;

use virtnodedevd::sysfs::{self, Cap, Device, PciAddr, Roots};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs")
}

fn devices() -> Vec<Device> {
    sysfs::enumerate(&Roots::fixture(fixture()))
}

fn get<'a>(devs: &'a [Device], name: &str) -> &'a Device {
    devs.iter().find(|d| d.name == name).unwrap_or_else(|| {
        panic!(
            "no device {name} in {:?}",
            devs.iter().map(|d| &d.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn fixture_devices_have_libvirt_names_and_parents() {
    let devs = devices();
    let mut tree: Vec<(String, Option<String>)> = devs
        .iter()
        .map(|d| (d.name.clone(), d.parent.clone()))
        .collect();
    tree.sort();
    let want: Vec<(&str, Option<&str>)> = vec![
        (
            "block_sdb_3600601601e80230092a6f4b83e5f2311",
            Some("scsi_5_0_0_0"),
        ),
        ("computer", None),
        ("drm_card0", Some("pci_0000_00_02_0")),
        ("drm_renderD128", Some("pci_0000_00_02_0")),
        (
            "mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_00_02_0",
            Some("pci_0000_00_02_0"),
        ),
        ("net_enp3s0_00_1b_21_3a_4f_10", Some("pci_0000_03_00_0")),
        ("pci_0000_00_01_0", Some("computer")),
        ("pci_0000_00_02_0", Some("computer")),
        ("pci_0000_00_14_0", Some("computer")),
        ("pci_0000_00_1f_2", Some("computer")),
        ("pci_0000_03_00_0", Some("pci_0000_00_01_0")),
        ("pci_0000_03_10_0", Some("pci_0000_00_01_0")),
        ("pci_0000_03_10_2", Some("pci_0000_00_01_0")),
        ("scsi_5_0_0_0", Some("scsi_target5_0_0")),
        ("scsi_generic_sg1", Some("scsi_5_0_0_0")),
        ("scsi_host5", Some("pci_0000_00_1f_2")),
        ("scsi_target5_0_0", Some("scsi_host5")),
        ("usb_1_1", Some("usb_usb1")),
        ("usb_1_1_1_0", Some("usb_1_1")),
        ("usb_usb1", Some("pci_0000_00_14_0")),
    ];
    let want: Vec<(String, Option<String>)> = want
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.map(str::to_string)))
        .collect();
    assert_eq!(tree, want);
}

#[test]
fn sriov_pf_and_vfs_point_at_each_other() {
    let devs = devices();
    let Cap::Pci(pf) = &get(&devs, "pci_0000_03_00_0").cap else {
        panic!("PF is not PCI")
    };
    let vf0 = PciAddr::parse("0000:03:10.0").expect("addr");
    let vf1 = PciAddr::parse("0000:03:10.2").expect("addr");
    assert_eq!(pf.virt_functions, vec![vf0, vf1]);
    assert_eq!(pf.max_vfs, Some(7));
    assert_eq!(pf.iommu_group.as_ref().map(|g| g.0), Some(5));
    assert_eq!(pf.vendor_id, 0x8086);
    assert_eq!(
        get(&devs, "pci_0000_03_00_0").caps(),
        vec!["pci", "virt_functions"]
    );
    let Cap::Pci(vf) = &get(&devs, "pci_0000_03_10_2").cap else {
        panic!("VF is not PCI")
    };
    assert_eq!(vf.phys_function, PciAddr::parse("0000:03:00.0"));
    assert_eq!(
        get(&devs, "pci_0000_03_10_2").caps(),
        vec!["pci", "phys_function"]
    );
    assert_eq!(
        get(&devs, "pci_0000_03_10_2").driver.as_deref(),
        Some("igbvf")
    );
}

#[test]
fn fc_host_has_wwns_and_vports() {
    let devs = devices();
    let h = get(&devs, "scsi_host5");
    assert_eq!(h.caps(), vec!["scsi_host", "fc_host", "vports"]);
    let Cap::ScsiHost(sh) = &h.cap else {
        panic!("not a scsi host")
    };
    let fc = sh.fc.as_ref().expect("fc_host");
    assert_eq!(fc.wwnn, "20000000c9848140");
    assert_eq!(fc.wwpn, "10000000c9848140");
    assert_eq!(sh.vports, Some((255, 0)));
    use sysfs::ListFlags;
    assert!(h.matches(ListFlags::FC_HOST));
    assert!(h.matches(ListFlags::VPORTS | ListFlags::NET));
    assert!(!h.matches(ListFlags::PCI_DEV));
    assert!(get(&devs, "scsi_generic_sg1").matches(ListFlags::SCSI_GENERIC));
    assert!(get(&devs, "drm_renderD128").matches(ListFlags::DRM));
    assert_eq!(
        get(&devs, "pci_0000_00_02_0").caps(),
        vec!["pci", "mdev_types"]
    );
    assert!(get(&devs, "pci_0000_00_02_0").matches(ListFlags::MDEV_TYPES));
    assert!(get(
        &devs,
        "mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_00_02_0"
    )
    .matches(ListFlags::MDEV));
    assert!(get(&devs, "usb_1_1").matches(ListFlags::USB_DEV));
    assert!(!get(&devs, "usb_1_1").matches(ListFlags::USB_INTERFACE));
    assert!(get(&devs, "usb_1_1_1_0").matches(ListFlags::USB_INTERFACE));
}

/// Golden XML, one file per device kind: tests/golden/<name>.xml.
#[test]
fn xml_matches_golden_files() {
    let roots = Roots::fixture(fixture());
    let devs = sysfs::enumerate(&roots);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for d in &devs {
        let got = virtnodedevd::xml::device_xml(&roots, d);
        let file = dir.join(format!("{}.xml", d.name));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", file.display()));
        assert_eq!(got, want, "{}", d.name);
        // The document parses with the project's safe reader.
        let el = common::xml::parse_root(&got, "device").expect("parses");
        assert_eq!(el.child_text("name").as_deref(), Some(d.name.as_str()));
        checked += 1;
    }
    assert_eq!(checked, devs.len());
}

/// A private copy of the fixture tree (the PCI tests write into it).
fn copy_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let st = Command::new("cp")
        .arg("-a")
        .arg(fixture())
        .arg(tmp.path())
        .status()
        .expect("cp");
    assert!(st.success());
    tmp
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn detach_and_reattach_write_the_kernel_files() {
    let tmp = copy_fixture();
    let root = tmp.path().join("sysfs");
    let roots = Roots::fixture(root.clone());
    let dev = root.join("devices/pci0000:00/0000:00:01.0/0000:03:10.0");
    let addr = PciAddr::parse("0000:03:10.0").expect("addr");
    let intents = tmp.path().join("rebind");
    let records = || std::fs::read_dir(&intents).map_or(0, |rd| rd.count());

    virtnodedevd::pci::detach(&roots, &intents, &dev, addr, "vfio-pci").expect("detach");
    assert_eq!(records(), 0, "a finished rebind leaves no record");
    assert_eq!(read(&dev.join("driver_override")), "vfio-pci\n");
    assert_eq!(
        read(&root.join("bus/pci/drivers/igbvf/unbind")),
        "0000:03:10.0"
    );
    assert_eq!(read(&root.join("bus/pci/drivers_probe")), "0000:03:10.0");

    // Play the kernel: the probe bound it to vfio-pci.
    std::fs::remove_file(dev.join("driver")).expect("rm");
    std::os::unix::fs::symlink("../../../../bus/pci/drivers/vfio-pci", dev.join("driver"))
        .expect("ln");
    std::fs::write(root.join("bus/pci/drivers_probe"), "").expect("clear");
    // Detaching again is a no-op.
    virtnodedevd::pci::detach(&roots, &intents, &dev, addr, "vfio-pci").expect("detach again");
    assert_eq!(read(&root.join("bus/pci/drivers_probe")), "");

    virtnodedevd::pci::reattach(&roots, &intents, &dev, addr).expect("reattach");
    assert_eq!(records(), 0);
    assert_eq!(read(&dev.join("driver_override")), "\n");
    assert_eq!(
        read(&root.join("bus/pci/drivers/vfio-pci/unbind")),
        "0000:03:10.0"
    );
    assert_eq!(read(&root.join("bus/pci/drivers_probe")), "0000:03:10.0");

    virtnodedevd::pci::reset(&dev, addr).expect("reset");
    assert_eq!(read(&dev.join("reset")), "1");
    std::fs::remove_file(dev.join("reset")).expect("rm reset");
    let e = virtnodedevd::pci::reset(&dev, addr).expect_err("no reset file");
    assert_eq!(
        e.to_string(),
        "PCI device 0000:03:10.0 has no reset function"
    );
}

/// A rebind recorded but cut short (the daemon killed after the unbind) is finished
/// by the next start: the probe is written and the record goes.
#[test]
fn a_recorded_rebind_is_finished_at_start() {
    let tmp = copy_fixture();
    let root = tmp.path().join("sysfs");
    let roots = Roots::fixture(root.clone());
    let dev = root.join("devices/pci0000:00/0000:00:01.0/0000:03:10.2");
    let intents = tmp.path().join("rebind");
    std::fs::create_dir_all(&intents).expect("mkdir");
    let record = format!(
        "{{\"dir\":{},\"driver\":\"vfio-pci\"}}",
        serde_json::to_string(&dev).expect("json")
    );
    std::fs::write(intents.join("0000:03:10.2"), record).expect("record");
    std::fs::write(intents.join(".0000:03:10.0.tmp77"), "{").expect("cut write");
    virtnodedevd::pci::finish_rebinds(&roots, &intents);
    assert_eq!(read(&dev.join("driver_override")), "vfio-pci\n");
    assert_eq!(read(&root.join("bus/pci/drivers_probe")), "0000:03:10.2");
    assert_eq!(std::fs::read_dir(&intents).expect("dir").count(), 0);
}
