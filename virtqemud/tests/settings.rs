//! Changes short of a redefinition, through virtqemud's D-Bus API: metadata (title,
//! description, applications' namespaced elements) of the config and of a running QEMU,
//! with their MetadataChange signals, kept across a daemon killed with -9; and the CPU
//! model names of the emulator.

use std::time::Duration;

mod support;

use futures_util::StreamExt;
use support::domain;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const DESCRIPTION: i32 = 0;
const TITLE: i32 = 1;
const ELEMENT: i32 = 2;
const LIVE: u32 = 1;
const CONFIG: u32 = 2;
const URI: &str = "http://app.example.org/v1/";

fn xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

fn bus_err(r: zbus::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            msg.unwrap_or_default()
        }
        other => panic!("expected org.libvirt.Error, got {other:?}"),
    }
}

async fn next_change(
    s: &mut common::proxies::libvirt::domain::MetadataChangeStream,
) -> (i32, String) {
    let sig = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("MetadataChange within 10 s")
        .expect("stream open");
    let a = sig.args().expect("args");
    (a.r#type, a.nsuri.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_of_config_and_live_domain_survives_kill9() {
    let mut q = support::qemud(BIN).await;
    let path = q.qc.domain_define_xml(&xml("meta")).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let mut changes = d.receive_metadata_change().await.expect("subscribe");

    // Nothing yet: libvirt's "metadata not found".
    assert_eq!(
        bus_err(d.get_metadata(TITLE, "", 0).await),
        "metadata not found: Requested metadata element is not present"
    );
    // Inactive: "current" is the config.
    d.set_metadata(TITLE, "Web server", "", "", 0)
        .await
        .expect("title");
    assert_eq!(next_change(&mut changes).await, (TITLE, String::new()));
    d.set_metadata(DESCRIPTION, "Serves\nthe web", "", "", 0)
        .await
        .expect("description");
    assert_eq!(
        next_change(&mut changes).await,
        (DESCRIPTION, String::new())
    );
    d.set_metadata(ELEMENT, "<role tier='front'>web</role>", "app", URI, 0)
        .await
        .expect("element");
    assert_eq!(next_change(&mut changes).await, (ELEMENT, URI.to_owned()));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );
    assert_eq!(
        d.get_metadata(DESCRIPTION, "", CONFIG).await.expect("get"),
        "Serves\nthe web"
    );
    assert_eq!(
        d.get_metadata(ELEMENT, URI, 0).await.expect("get"),
        format!("<app:role xmlns:app='{URI}' tier='front'>web</app:role>")
    );
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(xml.contains("<title>Web server</title>"), "{xml}");
    assert!(
        xml.contains(&format!("<app:role xmlns:app='{URI}'")),
        "{xml}"
    );

    // Refused, and nothing changed: a title of two lines, LIVE of an inactive domain,
    // an element without its namespace, both LIVE and CONFIG for a read.
    assert!(bus_err(d.set_metadata(TITLE, "a\nb", "", "", 0).await).contains("newlines"));
    assert_eq!(
        bus_err(d.set_metadata(TITLE, "x", "", "", LIVE).await),
        "Requested operation is not valid: domain is not running"
    );
    assert!(bus_err(d.set_metadata(ELEMENT, "<a/>", "k", "", 0).await).contains("uri"));
    assert!(bus_err(d.get_metadata(TITLE, "", LIVE | CONFIG).await).contains("exclusive"));
    assert!(bus_err(d.set_metadata(7, "x", "", "", 0).await).contains("unknown metadata type"));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );

    // Running: "current" is the live definition; the config keeps its own.
    d.create(0).await.expect("create");
    d.set_metadata(TITLE, "Web server (draining)", "", "", 0)
        .await
        .expect("live title");
    assert_eq!(next_change(&mut changes).await, (TITLE, String::new()));
    d.set_metadata(ELEMENT, "", "", URI, LIVE | CONFIG)
        .await
        .expect("remove element");
    assert_eq!(next_change(&mut changes).await, (ELEMENT, URI.to_owned()));
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("live"),
        "Web server (draining)"
    );
    assert_eq!(
        d.get_metadata(TITLE, "", CONFIG).await.expect("config"),
        "Web server"
    );
    assert!(d.get_metadata(ELEMENT, URI, LIVE).await.is_err());
    assert!(d.get_metadata(ELEMENT, URI, CONFIG).await.is_err());

    // kill -9 and restart: the live definition comes back from the status file, the
    // config from its file.
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert!(d.active().await.expect("active"));
    assert_eq!(
        d.get_metadata(TITLE, "", LIVE).await.expect("live"),
        "Web server (draining)"
    );
    assert_eq!(
        d.get_metadata(TITLE, "", CONFIG).await.expect("config"),
        "Web server"
    );
    assert_eq!(
        d.get_metadata(DESCRIPTION, "", CONFIG)
            .await
            .expect("config"),
        "Serves\nthe web"
    );
    d.destroy(0).await.expect("destroy");
    // Shut off, the domain is its config again.
    assert_eq!(
        d.get_metadata(TITLE, "", 0).await.expect("get"),
        "Web server"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_model_names_come_from_the_emulator() {
    let q = support::qemud(BIN).await;
    let models = q.qc.get_cpu_model_names("x86_64", 0).await.expect("x86_64");
    for want in ["qemu64", "Skylake-Client"] {
        assert!(
            models.iter().any(|m| m == want),
            "{want} missing: {models:?}"
        );
    }
    assert!(!models.iter().any(|m| m == "host" || m == "max"));
    assert_eq!(
        q.qc.get_cpu_model_names("i686", 0).await.expect("i686"),
        models
    );
    assert_eq!(
        bus_err(q.qc.get_cpu_model_names("z80", 0).await),
        "invalid argument: cannot find architecture z80"
    );
    assert!(bus_err(q.qc.get_cpu_model_names("aarch64", 0).await).contains("aarch64"));
    assert!(bus_err(q.qc.get_cpu_model_names("x86_64", 1).await).contains("flags"));
}
