//! The wire contract, checked on the real daemons: one object of every kind each daemon
//! serves is introspected and compared with libvirt-dbus's table (common/api), and the
//! replies whose shape libvirt-dbus fixes in a way client libraries hide (one struct, not
//! several values; typed parameters double-wrapped) are read as raw messages.

// Scenario tests are long stories by nature; the 150-line limit is for non-test code.
#![allow(clippy::too_many_lines)]

use common::harness::contract::check_object;
use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use serde::Serialize;
use zbus::zvariant::{DynamicType, OwnedObjectPath, OwnedValue, Value};

mod support;
use support::sibling_daemon;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const CONNECT: &str = "/org/libvirt/QEMU";

/// A method call read back as the raw reply, so nothing flattens its shape.
async fn call<B: Serialize + DynamicType>(
    conn: &zbus::Connection,
    daemon: &str,
    path: &str,
    iface: &str,
    member: &str,
    body: &B,
) -> zbus::Message {
    conn.call_method(
        Some(format!("org.libvirt.{daemon}").as_str()),
        path,
        Some(iface),
        member,
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{iface}.{member}: {e}"))
}

fn path_of(reply: &zbus::Message) -> String {
    let p: OwnedObjectPath = reply.body().deserialize().expect("an object path");
    p.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_kind_matches_libvirt_dbus() {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let _q = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let _n = Daemon::builder(sibling_daemon("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let _s = Daemon::builder(sibling_daemon("virtstoraged"), "virtstoraged")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let _d = Daemon::builder(sibling_daemon("virtnodedevd"), "virtnodedevd")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnodedevd");
    let conn = bus.connection().await.expect("conn");
    let mut failures: Vec<String> = Vec::new();
    let mut check = |r: anyhow::Result<Vec<_>>| {
        if let Err(e) = r {
            failures.push(format!("{e:#}"));
        }
    };

    // virtqemud: the connect object and a domain.
    let xml = "<domain type='qemu'><name>wire</name><memory unit='MiB'>64</memory>\
               <os><type arch='x86_64'>hvm</type></os></domain>";
    let dom = path_of(
        &call(
            &conn,
            "virtqemud",
            CONNECT,
            "org.libvirt.Connect",
            "DomainDefineXML",
            &(xml,),
        )
        .await,
    );
    for (daemon, path, ifaces) in [
        (
            "virtqemud",
            CONNECT.to_string(),
            // The second is virtqemud's own, for a migration's source: every member of
            // it must be on the additions list.
            &["org.libvirt.Connect", "org.libvirt.virtqemud.Migration"][..],
        ),
        ("virtqemud", dom.clone(), &["org.libvirt.Domain"][..]),
    ] {
        check(check_object(&conn, &format!("org.libvirt.{daemon}"), &path, ifaces).await);
    }

    // virtnetworkd: the connect object, an active network and one of its ports.
    let net_xml = "<network><name>wire</name><bridge name='vtwire0' stp='off'/>\
                   <ip address='10.86.0.1' prefix='24'/></network>";
    let net = path_of(
        &call(
            &conn,
            "virtnetworkd",
            CONNECT,
            "org.libvirt.Connect",
            "NetworkDefineXML",
            &(net_xml,),
        )
        .await,
    );
    call(
        &conn,
        "virtnetworkd",
        &net,
        "org.libvirt.Network",
        "Create",
        &(),
    )
    .await;
    let port_xml = "<networkport><owner><name>wire</name>\
                    <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
                    <mac address='52:54:00:7b:35:b0'/></networkport>";
    let port = path_of(
        &call(
            &conn,
            "virtnetworkd",
            &net,
            "org.libvirt.Network",
            "PortCreateXML",
            &(port_xml, 0u32),
        )
        .await,
    );
    // A host interface: the namespace's loopback link, always there.
    let lo = path_of(
        &call(
            &conn,
            "virtnetworkd",
            CONNECT,
            "org.libvirt.Connect",
            "InterfaceLookupByName",
            &("lo",),
        )
        .await,
    );
    // A network filter, and a binding of it to the loopback link.
    let nwfilter = path_of(
        &call(
            &conn,
            "virtnetworkd",
            CONNECT,
            "org.libvirt.Connect",
            "NWFilterDefineXML",
            &("<filter name='wire'><rule action='accept' direction='in'><all/></rule></filter>",),
        )
        .await,
    );
    let binding_xml = "<filterbinding><owner><name>wire</name>\
                       <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
                       <portdev name='lo'/><mac address='52:54:00:7b:35:b0'/>\
                       <filterref filter='wire'/></filterbinding>";
    let binding = path_of(
        &call(
            &conn,
            "virtnetworkd",
            CONNECT,
            "org.libvirt.Connect",
            "NWFilterBindingCreateXML",
            &(binding_xml, 0u32),
        )
        .await,
    );
    for (path, iface) in [
        (CONNECT.to_string(), "org.libvirt.Connect"),
        (net.clone(), "org.libvirt.Network"),
        (port.clone(), "org.libvirt.NetworkPort"),
        (lo, "org.libvirt.Interface"),
        (nwfilter, "org.libvirt.NWFilter"),
        (binding, "org.libvirt.NWFilterBinding"),
    ] {
        check(check_object(&conn, "org.libvirt.virtnetworkd", &path, &[iface]).await);
    }

    // virtstoraged: the connect object, an active dir pool and a volume in it.
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_xml = format!(
        "<pool type='dir'><name>wire</name><target><path>{}</path></target></pool>",
        dir.path().display()
    );
    let pool = path_of(
        &call(
            &conn,
            "virtstoraged",
            CONNECT,
            "org.libvirt.Connect",
            "StoragePoolCreateXML",
            &(pool_xml.as_str(), 0u32),
        )
        .await,
    );
    let vol_xml = "<volume><name>wire.img</name><capacity unit='MiB'>1</capacity></volume>";
    let vol = path_of(
        &call(
            &conn,
            "virtstoraged",
            &pool,
            "org.libvirt.StoragePool",
            "StorageVolCreateXML",
            &(vol_xml, 0u32),
        )
        .await,
    );
    let secret = path_of(
        &call(
            &conn,
            "virtstoraged",
            CONNECT,
            "org.libvirt.Connect",
            "SecretDefineXML",
            &(
                "<secret ephemeral='no' private='yes'><usage type='ceph'><name>wire</name></usage></secret>",
                0u32,
            ),
        )
        .await,
    );
    for (path, iface) in [
        (CONNECT.to_string(), "org.libvirt.Connect"),
        (pool.clone(), "org.libvirt.StoragePool"),
        (vol.clone(), "org.libvirt.StorageVol"),
        (secret, "org.libvirt.Secret"),
    ] {
        check(check_object(&conn, "org.libvirt.virtstoraged", &path, &[iface]).await);
    }

    // virtnodedevd: the connect object and the node itself.
    let computer = path_of(
        &call(
            &conn,
            "virtnodedevd",
            CONNECT,
            "org.libvirt.Connect",
            "NodeDeviceLookupByName",
            &("computer",),
        )
        .await,
    );
    for (path, iface) in [
        (CONNECT.to_string(), "org.libvirt.Connect"),
        (computer, "org.libvirt.NodeDevice"),
    ] {
        check(check_object(&conn, "org.libvirt.virtnodedevd", &path, &[iface]).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Raw replies: one struct where libvirt-dbus returns one.
    for (daemon, path, iface, member, want) in [
        (
            "virtqemud",
            dom.as_str(),
            "org.libvirt.Domain",
            "GetState",
            "(ii)",
        ),
        (
            "virtstoraged",
            pool.as_str(),
            "org.libvirt.StoragePool",
            "GetInfo",
            "(ittt)",
        ),
        (
            "virtstoraged",
            vol.as_str(),
            "org.libvirt.StorageVol",
            "GetInfo",
            "(itt)",
        ),
    ] {
        let reply = if member == "GetState" || iface.ends_with("Vol") {
            call(&conn, daemon, path, iface, member, &(0u32,)).await
        } else {
            call(&conn, daemon, path, iface, member, &()).await
        };
        // As the bytes have it: zvariant shows `(ii)` and `ii` bodies alike.
        assert_eq!(
            common::harness::contract::wire_signature(&reply).expect("signature"),
            want,
            "{iface}.{member}"
        );
    }

    // Typed parameters: every value is a variant holding the value's variant.
    let reply = call(
        &conn,
        "virtqemud",
        &dom,
        "org.libvirt.Domain",
        "GetStats",
        &(0u32, 0u32),
    )
    .await;
    assert_eq!(reply.body().signature().to_string(), "a{sv}");
    let stats: std::collections::HashMap<String, OwnedValue> =
        reply.body().deserialize().expect("a{sv}");
    assert!(stats.contains_key("state.state"), "{stats:?}");
    for (k, v) in &stats {
        assert!(
            matches!(&**v, Value::Value(_)),
            "{k} is single-wrapped: {v:?}"
        );
    }
    let reply = call(
        &conn,
        "virtqemud",
        CONNECT,
        "org.libvirt.Connect",
        "GetAllDomainStats",
        &(0u32, 0u32),
    )
    .await;
    let records: Vec<(String, std::collections::HashMap<String, OwnedValue>)> =
        reply.body().deserialize().expect("a(sa{sv})");
    assert_eq!(records.len(), 1);
    for (k, v) in &records[0].1 {
        assert!(
            matches!(&**v, Value::Value(_)),
            "{k} is single-wrapped: {v:?}"
        );
    }

    call(
        &conn,
        "virtnetworkd",
        &net,
        "org.libvirt.Network",
        "Destroy",
        &(),
    )
    .await;
}
