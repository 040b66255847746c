//! Secrets on a private bus: define and look up by UUID and usage, values, libvirt's
//! rules (one secret per usage, private values only for virtqemud), events, files as
//! libvirt keeps them, a kill -9 losing nothing persistent, and racing Undefines.

use std::os::unix::fs::PermissionsExt;

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{SecretProxy, StorageConnectProxy};
use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");
const UUID: &str = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";

async fn secret<'a>(c: &zbus::Connection, path: &OwnedObjectPath) -> SecretProxy<'a> {
    SecretProxy::builder(c)
        .path(path.clone())
        .expect("path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("secret proxy")
}

fn err_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error", "{msg:?}");
            msg.unwrap_or_default()
        }
        other => panic!("expected libvirt's error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_defined_kept_and_guarded() {
    let bus = TestBus::start().expect("bus");
    let mut daemon = Daemon::builder(BIN, "virtstoraged")
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let c = bus.connection().await.expect("conn");
    let conn = StorageConnectProxy::new(&c).await.expect("proxy");
    let mut events = conn.receive_secret_event().await.expect("events");

    // A persistent private secret for a LUKS volume.
    let xml = format!(
        "<secret ephemeral='no' private='yes'><uuid>{UUID}</uuid>\
         <description>LUKS passphrase</description>\
         <usage type='volume'><volume>/var/lib/libvirt/images/mail.img</volume></usage></secret>"
    );
    let path = conn.secret_define_xml(&xml, 0).await.expect("define");
    assert_eq!(
        path.as_str(),
        format!("/org/libvirt/QEMU/secret/_{}", UUID.replace('-', "_"))
    );
    let ev = events.next().await.expect("event");
    let args = ev.args().expect("args");
    assert_eq!(
        (args.secret.as_str(), args.event, args.detail),
        (path.as_str(), 0, 0)
    );
    let s = secret(&c, &path).await;
    assert_eq!(s.uuid().await.expect("uuid"), UUID);
    assert_eq!(s.usage_type().await.expect("usage type"), 1);
    assert_eq!(
        s.usage_id().await.expect("usage id"),
        "/var/lib/libvirt/images/mail.img"
    );
    let back = s.get_xml_desc(0).await.expect("xml");
    assert!(
        back.contains("private='yes'")
            && back.contains("<description>LUKS passphrase</description>"),
        "{back}"
    );
    assert_eq!(
        conn.secret_lookup_by_usage(1, "/var/lib/libvirt/images/mail.img")
            .await
            .expect("by usage"),
        path
    );
    assert_eq!(
        conn.secret_lookup_by_uuid(UUID).await.expect("by uuid"),
        path
    );
    // Private comes first, as in libvirt: even "no value" is not told.
    assert_eq!(
        err_text(s.get_value(0).await),
        "Invalid secret: secret is private"
    );
    s.set_value(b"correct horse", 0).await.expect("set value");
    assert_eq!(
        err_text(s.get_value(0).await),
        "Invalid secret: secret is private",
        "a client never reads a private value"
    );

    // virtqemud (the owner of its bus name) reads it, as libvirt's drivers do.
    let qemud = bus.connection().await.expect("conn");
    qemud
        .request_name("org.libvirt.virtqemud")
        .await
        .expect("own virtqemud's name");
    let as_qemud = secret(&qemud, &path).await;
    assert_eq!(
        as_qemud.get_value(0).await.expect("internal read"),
        b"correct horse"
    );

    refuses_what_libvirt_refuses(&conn, &xml).await;

    // A public ephemeral secret: readable, never on disk.
    let eph = conn
        .secret_define_xml(
            "<secret ephemeral='yes' private='no'><usage type='ceph'><name>client.admin</name></usage></secret>",
            0,
        )
        .await
        .expect("ephemeral");
    let e = secret(&c, &eph).await;
    assert!(err_text(e.get_value(0).await).contains("does not have a value"));
    e.set_value(&[0, 1, 2, 255], 0).await.expect("set");
    assert_eq!(e.get_value(0).await.expect("get"), [0, 1, 2, 255]);
    assert_eq!(conn.list_secrets(0).await.expect("list").len(), 2);
    assert_eq!(
        conn.list_secrets(1).await.expect("ephemeral only"),
        std::slice::from_ref(&eph)
    );
    assert_eq!(
        conn.list_secrets(8).await.expect("not private"),
        std::slice::from_ref(&eph)
    );
    assert_eq!(
        conn.list_secrets(4 | 2).await.expect("private, persistent"),
        std::slice::from_ref(&path)
    );

    // On disk as libvirt keeps them: UUID.xml and UUID.base64, 0600.
    let dir = daemon.dirs.config.join("secrets");
    for f in [format!("{UUID}.xml"), format!("{UUID}.base64")] {
        let m = std::fs::metadata(dir.join(&f)).expect(&f);
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{UUID}.base64"))).expect("value"),
        "Y29ycmVjdCBob3JzZQ=="
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        2,
        "nothing of the ephemeral one"
    );

    // kill -9: the persistent secret and its value stay, the ephemeral one is gone.
    daemon.kill9();
    let _daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
    let conn = StorageConnectProxy::new(&c).await.expect("proxy");
    assert_eq!(
        conn.list_secrets(0).await.expect("list"),
        std::slice::from_ref(&path)
    );
    let as_qemud = secret(&qemud, &path).await;
    assert_eq!(
        as_qemud.get_value(0).await.expect("value after restart"),
        b"correct horse"
    );

    // 20 racing Undefines: exactly one wins.
    let s = secret(&c, &path).await;
    let results = futures_util::future::join_all((0..20).map(|_| s.undefine())).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(conn.list_secrets(0).await.expect("list").is_empty());
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "its files are gone"
    );
}

/// libvirt's rules, against the private volume secret `xml` (UUID) already defined.
async fn refuses_what_libvirt_refuses(conn: &StorageConnectProxy<'_>, xml: &str) {
    let same_usage = "<secret><usage type='volume'><volume>/var/lib/libvirt/images/mail.img</volume></usage></secret>";
    assert!(
        err_text(conn.secret_define_xml(same_usage, 0).await)
            .contains(&format!("a secret with UUID {UUID} already defined for use with /var/lib/libvirt/images/mail.img")),
    );
    let other_usage = format!("<secret private='yes'><uuid>{UUID}</uuid><usage type='ceph'><name>c</name></usage></secret>");
    assert!(err_text(conn.secret_define_xml(&other_usage, 0).await)
        .contains("is already defined for use with volume"));
    let public = xml.replace("private='yes'", "private='no'");
    assert!(
        err_text(conn.secret_define_xml(&public, 0).await).contains("cannot change private flag")
    );
    for bad in [
        "<secret><usage type='volume'/></secret>",
        "<secret",
        "<secret><uuid>x</uuid></secret>",
    ] {
        assert!(
            err_text(conn.secret_define_xml(bad, 0).await).starts_with("XML error"),
            "{bad}"
        );
    }
    assert!(err_text(conn.secret_define_xml(xml, 2).await).contains("unsupported flags"));
    assert!(err_text(conn.secret_lookup_by_uuid("nope").await).starts_with("Secret not found"));
    assert!(
        err_text(conn.secret_lookup_by_usage(9, "x").await).contains("unknown secret usage type 9")
    );
}

/// LUKS volumes: created by qemu-img with the passphrase of the secret the XML names
/// (raw: QEMU's luks format; qcow2: LUKS inside), shown encrypted with their secret,
/// opened by QEMU's tools with that passphrase only; no passphrase file stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn luks_volumes_are_made_with_their_secret() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(BIN, "virtstoraged")
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let c = bus.connection().await.expect("conn");
    let conn = StorageConnectProxy::new(&c).await.expect("proxy");
    let target = daemon.dirs.root.path().join("pool");
    let pool = conn
        .storage_pool_create_xml(
            &format!(
                "<pool type='dir'><name>p</name><target><path>{}</path></target></pool>",
                target.display()
            ),
            1,
        )
        .await
        .expect("pool");
    let pp = common::proxies::storage::StoragePoolProxy::builder(&c)
        .path(pool)
        .expect("path")
        .build()
        .await
        .expect("pool proxy");
    let sp = conn
        .secret_define_xml(
            &format!("<secret private='yes'><uuid>{UUID}</uuid><usage type='volume'><volume>{}</volume></usage></secret>",
                target.join("enc.img").display()),
            0,
        )
        .await
        .expect("secret");
    let vol_xml = |name: &str, format: &str| {
        format!(
            "<volume><name>{name}</name><capacity unit='MiB'>8</capacity><target>\
             <format type='{format}'/><encryption format='luks'>\
             <secret type='passphrase' uuid='{UUID}'/></encryption></target></volume>"
        )
    };
    // No value yet: refused, nothing made.
    let e = err_text(
        pp.storage_vol_create_xml(&vol_xml("enc.img", "raw"), 0)
            .await,
    );
    assert!(e.contains("does not have a value"), "{e}");
    assert!(!target.join("enc.img").exists());
    secret(&c, &sp)
        .await
        .set_value(b"volume pass", 0)
        .await
        .expect("value");
    for (name, format) in [("enc.img", "raw"), ("enc.qcow2", "qcow2")] {
        let v = pp
            .storage_vol_create_xml(&vol_xml(name, format), 0)
            .await
            .expect(name);
        let vp = common::proxies::storage::StorageVolProxy::builder(&c)
            .path(v)
            .expect("path")
            .build()
            .await
            .expect("vol proxy");
        let xml = vp.get_xml_desc(0).await.expect("xml");
        for want in [
            format!("<format type='{format}'/>"),
            "<encryption format='luks'>".to_owned(),
            format!("<secret type='passphrase' uuid='{UUID}'/>"),
            "<mode>0600</mode>".to_owned(),
        ] {
            assert!(xml.contains(&want), "{want} missing:\n{xml}");
        }
        // QEMU's tools read it with the passphrase, and not without.
        let img = target.join(name);
        let out = daemon.dirs.root.path().join("plain.raw");
        let open = |pass: &str| {
            std::process::Command::new("qemu-img")
                .args(["convert", "--object"])
                .arg(format!("secret,id=s,data={pass}"))
                .arg("--image-opts")
                .arg(match format {
                    "raw" => format!("driver=luks,key-secret=s,file.filename={}", img.display()),
                    _ => format!(
                        "driver=qcow2,encrypt.format=luks,encrypt.key-secret=s,file.filename={}",
                        img.display()
                    ),
                })
                .args(["-O", "raw"])
                .arg(&out)
                .output()
                .expect("qemu-img")
        };
        let good = open("volume pass");
        assert!(
            good.status.success(),
            "{}",
            String::from_utf8_lossy(&good.stderr)
        );
        assert_eq!(std::fs::metadata(&out).expect("plain").len(), 8 << 20);
        let bad = open("wrong");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("Invalid password"),
            "a wrong passphrase opens {name}"
        );
    }
    // After a refresh (read from disk) the raw one is still LUKS, its secret by usage,
    // and its capacity the guest's 8 MiB, not the file's.
    pp.refresh(0).await.expect("refresh");
    let v = pp
        .storage_vol_lookup_by_name("enc.img")
        .await
        .expect("lookup");
    let vp = common::proxies::storage::StorageVolProxy::builder(&c)
        .path(v)
        .expect("path")
        .build()
        .await
        .expect("proxy");
    let xml = vp.get_xml_desc(0).await.expect("xml");
    assert!(
        xml.contains(&format!("uuid='{UUID}'"))
            && xml.contains("<capacity unit='bytes'>8388608</capacity>"),
        "{xml}"
    );
    let left: Vec<_> = std::fs::read_dir(daemon.dirs.runtime.join("storage"))
        .expect("runtime")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("luks"))
        .collect();
    assert!(left.is_empty(), "passphrase files left: {left:?}");
    // Bad encryption requests change nothing.
    let no_secret = "<volume><name>x.img</name><capacity>1024</capacity><target><encryption format='luks'/></target></volume>";
    assert!(err_text(pp.storage_vol_create_xml(no_secret, 0).await).contains("no secret provided"));
    let qcow_enc = "<volume><name>x.img</name><capacity>1024</capacity><target><encryption format='qcow'/></target></volume>";
    assert!(err_text(pp.storage_vol_create_xml(qcow_enc, 0).await).contains("only luks"));
    assert!(!target.join("x.img").exists());
}
