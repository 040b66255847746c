//! LUKS-encrypted disks with their passphrase in a libvirt secret: virtstoraged keeps
//! it (private: no client reads it back), virtqemud asks for it at start and hands it
//! to QEMU as a `secret` object read from a file that is gone once QEMU runs. QEMU
//! itself checks the passphrase: a wrong one fails the start with its own error.

use std::path::Path;

use common::harness::{Daemon, TestBus, TestDirs};
use common::proxies::qemu::QemuConnectProxy;
use common::proxies::storage::{SecretProxy, StorageConnectProxy};

mod support;
use support::{bus_err, domain, sibling_daemon};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const PASS: &str = "correct horse battery staple";

/// A LUKS image made by qemu-img: raw LUKS or qcow2 with LUKS inside.
fn luks_image(dir: &Path, name: &str, format: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "--object"])
        .arg(format!("secret,id=sec0,data={PASS}"))
        .args(["-f", format, "-o"])
        .arg(if format == "qcow2" {
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
        } else {
            "key-secret=sec0,iter-time=10"
        })
        .arg(&img)
        .arg("16M");
    let st = cmd.status().expect("qemu-img");
    assert!(st.success(), "qemu-img create {}", img.display());
    img
}

fn domain_xml(name: &str, disks: &[(&Path, &str, &str)]) -> String {
    let mut devs = String::new();
    for (i, (img, format, secret)) in disks.iter().enumerate() {
        let dev = format!("vd{}", char::from(b'a' + i as u8));
        devs.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
             <source file='{}'><encryption format='luks'><secret type='passphrase' {secret}/>\
             </encryption></source><target dev='{dev}' bus='virtio'/></disk>",
            img.display()
        ));
    }
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{devs}</devices></domain>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn luks_disks_open_with_the_secret_virtstoraged_keeps() {
    let bus = TestBus::start().expect("bus");
    let storaged = Daemon::builder(sibling_daemon("virtstoraged"), "virtstoraged")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let qemud = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let sc = StorageConnectProxy::new(&conn).await.expect("proxy");
    let scratch = tempfile::tempdir().expect("scratch");
    let raw = luks_image(scratch.path(), "raw.luks", "luks");
    let qcow = luks_image(scratch.path(), "disk.qcow2", "qcow2");

    // One secret by UUID (private), one by the volume's path as its usage.
    let by_uuid = sc
        .secret_define_xml(
            "<secret ephemeral='no' private='yes'><uuid>6dd3e4a5-1d76-44ce-961f-f119f5aad935</uuid>\
             <usage type='ceph'><name>luks-test</name></usage></secret>",
            0,
        )
        .await
        .expect("define");
    let by_usage = sc
        .secret_define_xml(
            &format!(
                "<secret ephemeral='no' private='yes'><usage type='volume'><volume>{}</volume></usage></secret>",
                qcow.display()
            ),
            0,
        )
        .await
        .expect("define");
    for p in [&by_uuid, &by_usage] {
        let s = SecretProxy::builder(&conn)
            .path(p.clone())
            .expect("path")
            .build()
            .await
            .expect("proxy");
        s.set_value(PASS.as_bytes(), 0).await.expect("set value");
        assert!(bus_err(s.get_value(0).await).contains("secret is private"));
    }

    let xml = domain_xml(
        "luks",
        &[
            (&raw, "raw", "uuid='6dd3e4a5-1d76-44ce-961f-f119f5aad935'"),
            (&qcow, "qcow2", &format!("usage='{}'", qcow.display())),
        ],
    );
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("QEMU opens both LUKS disks");
    let log = qemud.log_text();
    assert!(
        !log.contains(PASS),
        "the passphrase is in no command line or log"
    );
    let argv = log
        .lines()
        .rfind(|l| l.contains("starting:"))
        .expect("argv logged");
    for want in [
        "\"id\":\"libvirt-0-format-encryption-secret0\",\"qom-type\":\"secret\"",
        "\"driver\":\"luks\",\"key-secret\":\"libvirt-0-format-encryption-secret0\"",
        "\"encrypt\":{\"format\":\"luks\",\"key-secret\":\"libvirt-1-format-encryption-secret0\"}",
    ] {
        assert!(argv.contains(want), "{want} missing in {argv}");
    }
    let leftovers: Vec<_> = walk(qemud.dirs.root.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("-luks.secret"))
        .collect();
    assert!(leftovers.is_empty(), "passphrase files left: {leftovers:?}");
    d.destroy(0).await.expect("destroy");

    // A wrong passphrase: QEMU refuses the disk, and the start fails saying so.
    let s = SecretProxy::builder(&conn)
        .path(by_uuid.clone())
        .expect("path")
        .build()
        .await
        .expect("proxy");
    s.set_value(b"wrong", 0).await.expect("set value");
    let e = bus_err(d.create(0).await);
    assert!(
        e.contains("Invalid password, cannot unlock any keyslot"),
        "{e}"
    );
    assert!(!d.active().await.expect("active"));

    // No such secret: the start fails naming it, before QEMU.
    s.undefine().await.expect("undefine");
    let e = bus_err(d.create(0).await);
    assert!(
        e.contains(
            "Secret not found: no secret with matching uuid '6dd3e4a5-1d76-44ce-961f-f119f5aad935'"
        ),
        "{e}"
    );
    drop(storaged);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
