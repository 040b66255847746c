//! Through `org.libvirt` only: objects of every kind defined, started, listed and
//! stopped; a volume written and read through fds; the daemons' signals arriving from
//! the front; `GetAll` double-wrapped as libvirt-dbus does it and `Get` not.

// Scenario tests are long stories by nature; the 150-line limit is for non-test code.
#![allow(clippy::too_many_lines)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{Fd, OwnedValue, Value};
use zbus::{MatchRule, MessageStream};

mod support;
use support::*;

/// Signals of `iface`.`member` sent by the owner of `org.libvirt`.
async fn signals(conn: &zbus::Connection, iface: &str, member: &str) -> MessageStream {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.libvirt")
        .expect("sender")
        .interface(iface.to_owned())
        .expect("interface")
        .member(member.to_owned())
        .expect("member")
        .build();
    MessageStream::for_match_rule(rule, conn, Some(256))
        .await
        .expect("match rule")
}

/// The next signal on `stream` whose first argument is `path`.
async fn next_for(stream: &mut MessageStream, path: &str) -> zbus::Message {
    let wait = async {
        while let Some(Ok(m)) = stream.next().await {
            let body = m.body();
            // DomainEvent and the others are `oii`, NetworkEvent `oi`.
            let first = body
                .deserialize::<(zbus::zvariant::OwnedObjectPath, i32, i32)>()
                .map(|(p, _, _)| p)
                .or_else(|_| {
                    body.deserialize::<(zbus::zvariant::OwnedObjectPath, i32)>()
                        .map(|(p, _)| p)
                });
            if first.is_ok_and(|p| p.as_str() == path) {
                return m;
            }
        }
        panic!("signal stream ended");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no signal for {path} within 30 s"))
}

/// (read end, write end)
fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (r.into(), w.into())
}

fn get_all(reply: &zbus::Message) -> HashMap<String, OwnedValue> {
    assert_eq!(reply.body().signature().to_string(), "a{sv}");
    reply.body().deserialize().expect("a{sv}")
}

fn assert_double_wrapped(what: &str, props: &HashMap<String, OwnedValue>) {
    assert!(!props.is_empty(), "{what}: no properties");
    for (k, v) in props {
        assert!(
            matches!(&**v, Value::Value(_)),
            "{what}.{k} is single-wrapped: {v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_kind_through_org_libvirt() {
    let s = Stack::start(&[]).await;
    let c = &s.conn;
    let mut dom_events = signals(c, "org.libvirt.Connect", "DomainEvent").await;
    let mut net_events = signals(c, "org.libvirt.Connect", "NetworkEvent").await;
    let mut pool_events = signals(c, "org.libvirt.Connect", "StoragePoolEvent").await;

    // Domain: define, list, start (a signal from org.libvirt), state, stop.
    let dom = path_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "DomainDefineXML",
            &(domain_xml("front"),),
        )
        .await,
    );
    next_for(&mut dom_events, &dom).await;
    let listed = paths_of(&ok(c, CONNECT, "org.libvirt.Connect", "ListDomains", &(0u32,)).await);
    assert_eq!(listed, vec![dom.clone()]);
    ok(c, &dom, "org.libvirt.Domain", "Create", &(0u32,)).await;
    let started = next_for(&mut dom_events, &dom).await;
    let (_, event, _): (zbus::zvariant::OwnedObjectPath, i32, i32) =
        started.body().deserialize().expect("oii");
    assert_eq!(event, 2, "VIR_DOMAIN_EVENT_STARTED");
    let state = ok(c, &dom, "org.libvirt.Domain", "GetState", &(0u32,)).await;
    let (st, _): (i32, i32) = state.body().deserialize().expect("ii");
    assert_eq!(st, 1, "running");
    // GetAll is double-wrapped; Get is not (libvirt-dbus's Get returns `(v)`).
    let props = get_all(
        &ok(
            c,
            &dom,
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &("org.libvirt.Domain",),
        )
        .await,
    );
    assert_double_wrapped("Domain", &props);
    assert_eq!(*props["Name"], Value::Value(Box::new(Value::from("front"))));
    let name = ok(
        c,
        &dom,
        "org.freedesktop.DBus.Properties",
        "Get",
        &("org.libvirt.Domain", "Name"),
    )
    .await;
    let name: OwnedValue = name.body().deserialize().expect("v");
    assert_eq!(*name, Value::from("front"));
    ok(c, &dom, "org.libvirt.Domain", "Destroy", &(0u32,)).await;

    // Network (in the test's namespace): define, start, list, GetAll, stop.
    let net = path_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "NetworkDefineXML",
            &(NETWORK_XML,),
        )
        .await,
    );
    ok(c, &net, "org.libvirt.Network", "Create", &()).await;
    next_for(&mut net_events, &net).await;
    let nets = paths_of(&ok(c, CONNECT, "org.libvirt.Connect", "ListNetworks", &(0u32,)).await);
    assert!(nets.contains(&net), "{nets:?}");
    let props = get_all(
        &ok(
            c,
            &net,
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &("org.libvirt.Network",),
        )
        .await,
    );
    assert_double_wrapped("Network", &props);
    assert_eq!(*props["Active"], Value::Value(Box::new(Value::Bool(true))));
    assert!(s
        .ns
        .run_ok(&["ip", "link", "show", "vtfront0"])
        .expect("bridge in the namespace")
        .contains("vtfront0"));
    ok(c, &net, "org.libvirt.Network", "Destroy", &()).await;

    // Storage: a dir pool and a volume, written and read back through fds.
    let pool = path_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "StoragePoolCreateXML",
            &(pool_xml(s.scratch.path()), 0u32),
        )
        .await,
    );
    next_for(&mut pool_events, &pool).await;
    let pools = paths_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "ListStoragePools",
            &(0u32,),
        )
        .await,
    );
    assert!(pools.contains(&pool), "{pools:?}");
    // An object's own signal (a pool's Refresh) comes from org.libvirt on its path.
    let mut refreshes = signals(c, "org.libvirt.StoragePool", "Refresh").await;
    ok(c, &pool, "org.libvirt.StoragePool", "Refresh", &(0u32,)).await;
    let refreshed = tokio::time::timeout(Duration::from_secs(30), refreshes.next())
        .await
        .expect("no Refresh signal within 30 s")
        .expect("stream")
        .expect("message");
    assert_eq!(
        refreshed.header().path().map(|p| p.to_string()),
        Some(pool.clone())
    );
    let vol = path_of(
        &ok(
            c,
            &pool,
            "org.libvirt.StoragePool",
            "StorageVolCreateXML",
            &(VOL_XML, 0u32),
        )
        .await,
    );
    let by_path = path_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "StorageVolLookupByPath",
            &(s.scratch
                .path()
                .join("front.img")
                .to_string_lossy()
                .as_ref(),),
        )
        .await,
    );
    assert_eq!(by_path, vol);
    let payload = b"through the front, fd and all";
    let (r, mut w) = pipe();
    w.write_all(payload).expect("write");
    drop(w);
    ok(
        c,
        &vol,
        "org.libvirt.StorageVol",
        "Upload",
        &(Fd::from(&r), 0u64, payload.len() as u64, 0u32),
    )
    .await;
    let (mut r2, w2) = pipe();
    ok(
        c,
        &vol,
        "org.libvirt.StorageVol",
        "Download",
        &(Fd::from(&w2), 0u64, payload.len() as u64, 0u32),
    )
    .await;
    drop(w2);
    let mut back = Vec::new();
    r2.read_to_end(&mut back).expect("read");
    assert_eq!(back, payload);
    let on_disk = std::fs::read(s.scratch.path().join("front.img")).expect("volume file");
    assert_eq!(&on_disk[..payload.len()], payload);

    // Node devices: list, look up, describe.
    let devs = paths_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "ListNodeDevices",
            &(0u32,),
        )
        .await,
    );
    let computer = path_of(
        &ok(
            c,
            CONNECT,
            "org.libvirt.Connect",
            "NodeDeviceLookupByName",
            &("computer",),
        )
        .await,
    );
    assert!(devs.contains(&computer), "{devs:?}");
    let xml: String = ok(
        c,
        &computer,
        "org.libvirt.NodeDevice",
        "GetXMLDesc",
        &(0u32,),
    )
    .await
    .body()
    .deserialize()
    .expect("s");
    assert!(xml.contains("<name>computer</name>"), "{xml}");

    // Errors pass through with their name and libvirt's message.
    match call(
        c,
        CONNECT,
        "org.libvirt.Connect",
        "DomainLookupByName",
        &("nope",),
    )
    .await
    {
        Err(zbus::Error::MethodError(name, Some(text), _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            assert!(text.starts_with("Domain not found"), "{text}");
        }
        other => panic!("expected org.libvirt.Error, got {other:?}"),
    }
    // A path nobody serves.
    match call(
        c,
        "/org/libvirt/QEMU/cats/x",
        "org.libvirt.Domain",
        "Create",
        &(0u32,),
    )
    .await
    {
        Err(zbus::Error::MethodError(name, _, _)) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.UnknownObject")
        }
        other => panic!("expected UnknownObject, got {other:?}"),
    }
}

/// The merged Connect `GetAll` holds every shared property, each double-wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_get_all_is_merged_and_double_wrapped() {
    let s = Stack::start(&[]).await;
    let raw = ok(
        &s.conn,
        CONNECT,
        "org.freedesktop.DBus.Properties",
        "GetAll",
        &("org.libvirt.Connect",),
    )
    .await;
    let props = get_all(&raw);
    assert_double_wrapped("Connect", &props);
    for k in ["Encrypted", "Hostname", "LibVersion", "Secure", "Version"] {
        assert!(props.contains_key(k), "{k} missing: {props:?}");
    }
    assert_eq!(
        *props["Hostname"],
        Value::Value(Box::new(Value::from(common::connect::hostname())))
    );
    // GetAll of the Connect object asked each daemon: all four are running now.
    for d in BACKENDS {
        assert!(
            s.bus
                .owner_pid(&format!("org.libvirt.{d}"))
                .await
                .expect("owner")
                .is_some(),
            "{d} was not asked"
        );
    }
}

/// A path whose object is gone (undefined by a racing call, or never there) gets
/// libvirt's lookup error, as libvirt-dbus answers it, not the bus' UnknownObject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_object_answers_libvirts_not_found() {
    let s = Stack::start(&[]).await;
    let defined = ok(
        &s.conn,
        CONNECT,
        "org.libvirt.Connect",
        "DomainDefineXML",
        &(domain_xml("gone").as_str(),),
    )
    .await;
    let path = path_of(&defined);
    ok(&s.conn, &path, "org.libvirt.Domain", "Undefine", &(0u32,)).await;
    let uuid =
        common::objpath::decode_uuid(path.rsplit('/').next().expect("segment")).expect("uuid path");
    for (iface, member) in [
        ("org.libvirt.Domain", "GetState"),
        ("org.libvirt.Domain", "Undefine"),
    ] {
        match call(&s.conn, &path, iface, member, &(0u32,)).await {
            Err(zbus::Error::MethodError(name, Some(text), _)) => {
                assert_eq!(name.as_str(), "org.libvirt.Error", "{member}");
                assert_eq!(
                    text,
                    format!("Domain not found: no domain with matching uuid '{uuid}'"),
                    "{member}"
                );
            }
            other => panic!("{member} on a gone domain: {other:?}"),
        }
    }
    // A host interface defined and undefined (no link of that name): its path answers
    // libvirt's interface error.
    let xml = "<interface type='ethernet' name='gone0'/>";
    let p = path_of(
        &ok(
            &s.conn,
            CONNECT,
            "org.libvirt.Connect",
            "InterfaceDefineXML",
            &(xml, 0u32),
        )
        .await,
    );
    ok(&s.conn, &p, "org.libvirt.Interface", "Undefine", &()).await;
    match call(&s.conn, &p, "org.libvirt.Interface", "GetXMLDesc", &(0u32,)).await {
        Err(zbus::Error::MethodError(name, Some(text), _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            assert_eq!(
                text,
                "Interface not found: couldn't find interface named 'gone0'"
            );
        }
        other => panic!("GetXMLDesc on a gone interface: {other:?}"),
    }
}

/// A folder's introspection lists its children by name only, as libvirt-dbus's does:
/// zbus inlines their interfaces, which busctl misreads ("Unexpected signal <arg>
/// direction value 'in'") when it walks the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_list_children_by_name() {
    let s = Stack::start(&[]).await;
    let dom = ok(
        &s.conn,
        CONNECT,
        "org.libvirt.Connect",
        "DomainDefineXML",
        &(
            "<domain type='qemu'><name>kids</name><memory>65536</memory>\
           <os><type arch='x86_64'>hvm</type></os></domain>",
        ),
    )
    .await;
    let path: zbus::zvariant::OwnedObjectPath = dom.body().deserialize().expect("path");
    let reply = ok(
        &s.conn,
        "/org/libvirt/QEMU/domain",
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
        &(),
    )
    .await;
    let xml: String = reply.body().deserialize().expect("xml");
    let child = path.as_str().rsplit('/').next().expect("last segment");
    assert!(xml.contains(&format!("<node name=\"{child}\"/>")), "{xml}");
    assert!(
        !xml.contains("org.libvirt.Domain"),
        "a child's interfaces inlined:\n{xml}"
    );
    let out = std::process::Command::new("busctl")
        .arg(format!("--address={}", s.bus.address))
        .args(["--list", "tree", "org.libvirt"])
        .output()
        .expect("busctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("Unexpected"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(path.as_str()));
}
