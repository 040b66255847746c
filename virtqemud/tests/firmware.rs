//! `<os firmware='efi'>` with the real OVMF build and its descriptors (Debian's `ovmf`
//! package): the firmware chosen at start, its variable store, Secure Boot really
//! enforced (the firmware refuses its own unsigned shell), and libvirt's NVRAM rules
//! at undefine.

use std::path::Path;
use std::time::Duration;

mod support;

use support::{bus_err, domain, qemu_cmdline, qemud, wait_serial};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const UNDEFINE_NVRAM: u32 = 4;
const UNDEFINE_KEEP_NVRAM: u32 = 8;

fn efi_xml(name: &str, serial: &Path, firmware: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>{firmware}</os>\
         <devices><serial type='file'><source path='{}'/></serial></devices></domain>",
        serial.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efi_firmware_is_chosen_at_start_with_its_variable_store() {
    let descriptors = Path::new("/usr/share/qemu/firmware/60-edk2-x86_64.json");
    assert!(
        descriptors.exists(),
        "this test needs Debian's 'ovmf' package (scripts/install-deps.sh installs it)"
    );
    let q = qemud(BIN).await;
    let (daemon, conn, qc) = (&q.daemon, &q.conn, &q.qc);
    let root = daemon.dirs.root.path().to_owned();
    let nvram_dir = daemon.dirs.config.join("qemu").join("nvram");

    // Nothing asked: the first descriptor, Secure Boot with enrolled keys and SMM.
    let serial = root.join("secure.serial");
    let path = qc
        .domain_define_xml(&efi_xml("secure", &serial, ""))
        .await
        .expect("define");
    let d = domain(conn, &path).await;
    d.create(0).await.expect("create");
    let live = d.get_xml_desc(0).await.expect("live xml");
    let vars = nvram_dir.join("secure_VARS.fd");
    assert!(
        live.contains(
            "<loader readonly='yes' secure='yes' type='pflash'>\
             /usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"
        ),
        "{live}"
    );
    assert!(
        live.contains("<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>"),
        "{live}"
    );
    assert!(live.contains(&vars.display().to_string()), "{live}");
    assert!(live.contains("<smm state='on'/>"), "{live}");
    let inactive = d.get_xml_desc(2).await.expect("inactive xml");
    assert!(
        !inactive.contains("<loader") && inactive.contains("firmware='efi'"),
        "{inactive}"
    );
    assert_eq!(
        std::fs::metadata(&vars).expect("variable store").len(),
        std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
            .expect("template")
            .len()
    );
    let argv = qemu_cmdline(&daemon.dirs.runtime, "secure");
    assert!(argv.contains("smm=on"), "{argv}");
    assert!(
        argv.contains("driver=cfi.pflash01,property=secure,value=on"),
        "{argv}"
    );
    // Secure Boot is enforced: the firmware will not run its own unsigned shell.
    wait_serial(&serial, "Security Violation", Duration::from_secs(90)).await;
    d.destroy(0).await.expect("destroy");

    // libvirt's rules: a domain with NVRAM is undefined only with a flag saying what
    // to do with it; the refusal changes nothing.
    let e = bus_err(d.undefine(0).await);
    assert_eq!(
        e,
        "Requested operation is not valid: cannot undefine domain with nvram"
    );
    assert!(d.persistent().await.expect("still defined") && vars.exists());
    d.undefine(UNDEFINE_NVRAM).await.expect("undefine + nvram");
    assert!(!vars.exists(), "NVRAM flag removes the variable store");

    // Secure Boot turned off: the plain firmware, no SMM, and its shell starts.
    let serial = root.join("plain.serial");
    let path = qc
        .domain_define_xml(&efi_xml(
            "plain",
            &serial,
            "<firmware><feature enabled='no' name='secure-boot'/></firmware>",
        ))
        .await
        .expect("define plain");
    let d = domain(conn, &path).await;
    d.create(0).await.expect("create plain");
    let live = d.get_xml_desc(0).await.expect("live xml");
    assert!(live.contains("/usr/share/OVMF/OVMF_CODE_4M.fd"), "{live}");
    assert!(!live.contains("<smm"), "{live}");
    let argv = qemu_cmdline(&daemon.dirs.runtime, "plain");
    assert!(!argv.contains("property=secure"), "{argv}");
    let text = wait_serial(
        &serial,
        "starting Boot0001 \"EFI Internal Shell\"",
        Duration::from_secs(90),
    )
    .await;
    assert!(!text.contains("Security Violation"), "{text}");
    d.destroy(0).await.expect("destroy plain");
    let vars = nvram_dir.join("plain_VARS.fd");
    d.undefine(UNDEFINE_KEEP_NVRAM)
        .await
        .expect("undefine, keep");
    assert!(vars.exists(), "KEEP_NVRAM keeps the variable store");

    // What cannot be honoured is refused at start, naming it, and nothing runs.
    let path = qc
        .domain_define_xml(&efi_xml(
            "odd",
            &root.join("odd.serial"),
            "<firmware><feature enabled='yes' name='fancy-boot'/></firmware>",
        ))
        .await
        .expect("define odd");
    let d = domain(conn, &path).await;
    let e = bus_err(d.create(0).await);
    assert!(
        e.starts_with("unsupported configuration: os/firmware/feature") && e.contains("fancy-boot"),
        "{e}"
    );
    assert!(!d.active().await.expect("active"));
    let path = qc
        .domain_define_xml(&efi_xml(
            "oldpc",
            &root.join("oldpc.serial"),
            "<firmware><feature enabled='yes' name='secure-boot'/></firmware>",
        ))
        .await
        .expect("define oldpc");
    let d = domain(conn, &path).await;
    // Secure Boot firmware needs SMM, which the domain switched off.
    let xml = d.get_xml_desc(2).await.expect("xml");
    let xml = xml.replace("<features>", "<features><smm state='off'/>");
    let xml = if xml.contains("<features>") {
        xml
    } else {
        xml.replace("</os>", "</os><features><smm state='off'/></features>")
    };
    qc.domain_define_xml(&xml).await.expect("redefine");
    let e = bus_err(d.create(0).await);
    assert!(e.contains("no UEFI firmware"), "{e}");
}
