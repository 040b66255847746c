//! The whole stack for the front's tests: a private bus on which the four daemons are
//! bus-activatable (each with its own folders, virtnetworkd in a network namespace of
//! its own) and virtproxyd running in front of them.

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use serde::Serialize;
use zbus::zvariant::{DynamicType, OwnedObjectPath};

pub const FRONT: &str = env!("CARGO_BIN_EXE_virtproxyd");
pub const CONNECT: &str = "/org/libvirt/QEMU";
pub const BACKENDS: [&str; 4] = ["virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd"];

/// A daemon built beside virtproxyd (`cargo build --workspace`).
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(FRONT).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: these tests need {name}, run `cargo build --workspace` first",
        p.display()
    );
    p
}

// Fields drop in order: the client, the front, then the bus (its activated daemons lose
// it), then the namespace and folders, which kill whatever is left by PID.
pub struct Stack {
    pub conn: zbus::Connection,
    pub front: Daemon,
    pub bus: TestBus,
    pub ns: NetNs,
    pub dirs: Vec<Arc<TestDirs>>,
    pub scratch: tempfile::TempDir,
}

impl Stack {
    /// The four daemons activatable, the front started with `front_args`.
    pub async fn start(front_args: &[&str]) -> Stack {
        Stack::start_with(front_args, None).await
    }

    /// As [`Stack::start`], virtnodedevd reading the sysfs tree at `sysfs` if given.
    pub async fn start_with(front_args: &[&str], sysfs: Option<&Path>) -> Stack {
        let bus = TestBus::start().expect("bus");
        let ns = NetNs::new().expect("netns");
        let mut dirs = Vec::new();
        for d in BACKENDS {
            let dir = TestDirs::new().expect("dirs");
            let mut argv: Vec<OsString> = Vec::new();
            if d == "virtnetworkd" {
                // Bridges and firewall rules stay inside the test's namespace. The bus
                // runs activation lines without a PATH search.
                let nsenter = ["/usr/bin/nsenter", "/bin/nsenter"]
                    .into_iter()
                    .find(|p| Path::new(p).exists())
                    .expect("nsenter (util-linux) is needed");
                argv.push(nsenter.into());
                argv.push(format!("--net={}", ns.path().display()).into());
            }
            let mut daemon = Daemon::builder(sibling(d), d);
            if let (Some(root), "virtnodedevd") = (sysfs, d) {
                daemon = daemon.arg("--sysfs-root").arg(root);
            }
            argv.extend(daemon.command_line(&dir));
            bus.add_activatable(d, &argv).expect("activation file");
            dirs.push(dir);
        }
        let mut b = Daemon::builder(FRONT, "virtproxyd");
        for a in front_args {
            b = b.arg(*a);
        }
        let front = b.spawn(&bus).await.expect("virtproxyd");
        let conn = bus.connection().await.expect("conn");
        Stack {
            conn,
            front,
            bus,
            ns,
            dirs,
            scratch: tempfile::tempdir().expect("tempdir"),
        }
    }
}

/// A call to `org.libvirt`, answered with the raw reply.
pub async fn call<B: Serialize + DynamicType>(
    conn: &zbus::Connection,
    path: &str,
    iface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<zbus::Message> {
    conn.call_method(Some("org.libvirt"), path, Some(iface), member, body)
        .await
}

/// Like [`call`], panicking with the error (tests only).
pub async fn ok<B: Serialize + DynamicType>(
    conn: &zbus::Connection,
    path: &str,
    iface: &str,
    member: &str,
    body: &B,
) -> zbus::Message {
    call(conn, path, iface, member, body)
        .await
        .unwrap_or_else(|e| panic!("{iface}.{member} on {path}: {e}"))
}

pub fn path_of(reply: &zbus::Message) -> String {
    let p: OwnedObjectPath = reply.body().deserialize().expect("an object path");
    p.to_string()
}

pub fn paths_of(reply: &zbus::Message) -> Vec<String> {
    let p: Vec<OwnedObjectPath> = reply.body().deserialize().expect("object paths");
    p.into_iter().map(|p| p.to_string()).collect()
}

pub fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

pub const NETWORK_XML: &str = "<network><name>front</name><bridge name='vtfront0' stp='off'/>\
                               <ip address='10.87.0.1' prefix='24'/></network>";

pub fn pool_xml(dir: &Path) -> String {
    format!(
        "<pool type='dir'><name>front</name><target><path>{}</path></target></pool>",
        dir.display()
    )
}

pub const VOL_XML: &str =
    "<volume><name>front.img</name><capacity unit='MiB'>1</capacity></volume>";
