//! virsh's pool and volume commands against a real virtstoraged with a dir pool.

use std::path::Path;
use std::process::Stdio;

use common::harness::{Daemon, TestBus};

mod support;
use support::{command, fails, field, json, ok, sibling, virtsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_volumes() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtstoraged"), "virtstoraged")
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let dir = daemon.dirs.root.path();
    let target = dir.join("pool");
    let xml = dir.join("p.xml");
    std::fs::write(
        &xml,
        format!(
            "<pool type='dir'><name>p</name><target><path>{}</path></target></pool>",
            target.display()
        ),
    )
    .expect("xml");
    ok(virtsh(&bus, &["pool-define", xml.to_str().expect("utf-8")]));
    // Inactive: no sizes; not in the default (active) list, in --all.
    let info = ok(virtsh(&bus, &["pool-info", "p"]));
    assert_eq!(field(&info, "State"), "inactive");
    assert!(!info.contains("Capacity"), "{info}");
    assert!(!ok(virtsh(&bus, &["pool-list"])).contains(" p "));
    assert!(ok(virtsh(&bus, &["pool-list", "--all"])).contains(" p "));
    assert_eq!(
        ok(virtsh(&bus, &["pool-list", "--inactive", "--name"])),
        "p\n"
    );
    ok(virtsh(&bus, &["pool-build", "p"]));
    ok(virtsh(&bus, &["pool-start", "p"]));
    assert_eq!(
        ok(virtsh(&bus, &["pool-autostart", "p"])),
        "Pool p marked as autostarted\n"
    );
    let info = ok(virtsh(&bus, &["pool-info", "p"]));
    assert_eq!(field(&info, "State"), "running");
    assert_eq!(field(&info, "Autostart"), "yes");
    assert!(field(&info, "Capacity").ends_with("iB"), "{info}");
    let j = json(virtsh(&bus, &["pool-info", "p", "--json"]));
    assert_eq!(j["state"], "running");
    assert!(j["capacity"].as_u64().is_some_and(|c| c > 0), "{j}");
    assert_eq!(
        ok(virtsh(&bus, &["pool-autostart", "p", "--disable"])),
        "Pool p unmarked as autostarted\n"
    );

    volumes(&bus, dir, &target);
}

/// Volume commands in the started pool `p` whose folder is `target`.
fn volumes(bus: &TestBus, dir: &Path, target: &Path) {
    // vol-create-as with a scaled size, then its info and XML.
    assert_eq!(
        ok(virtsh(
            bus,
            &["vol-create-as", "p", "v1", "4M", "--format", "raw"]
        )),
        "Vol v1 created\n"
    );
    let info = ok(virtsh(bus, &["vol-info", "v1", "--pool", "p"]));
    assert_eq!(field(&info, "Name"), "v1");
    assert_eq!(field(&info, "Type"), "file");
    assert_eq!(field(&info, "Capacity"), "4.00 MiB");
    let path = target.join("v1").display().to_string();
    // By path, without --pool, as virsh takes it.
    let j = json(virtsh(bus, &["vol-info", &path, "--json"]));
    assert_eq!(j["capacity"], 4 << 20);
    assert!(ok(virtsh(bus, &["vol-dumpxml", "v1", "--pool", "p"])).contains("<name>v1</name>"));
    let err = fails(virtsh(bus, &["vol-create-as", "p", "v9", "4Q"]));
    assert!(err.contains("malformed"), "{err}");

    // Upload 1 MiB of a pattern, download it back (stderr not a terminal: no bar).
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let src = dir.join("up.bin");
    std::fs::write(&src, &data).expect("data");
    let out = virtsh(
        bus,
        &[
            "vol-upload",
            "v1",
            src.to_str().expect("utf-8"),
            "--pool",
            "p",
        ],
    );
    assert!(ok(out.clone()).is_empty());
    assert!(out.stderr.is_empty(), "{out:?}");
    // On a terminal (a pty from script(1)) the bar is drawn on stderr and ends at 100 %.
    let line = format!(
        "{} vol-upload v1 {} --pool p",
        env!("CARGO_BIN_EXE_virtsh"),
        src.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("\rUpload: [100 %] [##############################] 1.00 MiB / 1.00 MiB"),
        "{tty:?}"
    );
    let back = dir.join("down.bin");
    let b = back.to_str().expect("utf-8");
    ok(virtsh(
        bus,
        &[
            "vol-download",
            "v1",
            b,
            "--pool",
            "p",
            "--length",
            "1048576",
        ],
    ));
    assert_eq!(std::fs::read(&back).expect("read back"), data);

    // Clone (into the source's pool, found without --pool), then resize and wipe it.
    assert_eq!(
        ok(virtsh(bus, &["vol-clone", &path, "v2"])),
        "Vol v2 cloned from v1\n"
    );
    let clone = target.join("v2");
    assert_eq!(
        std::fs::read(&clone).expect("clone")[..data.len()],
        data[..]
    );
    assert_eq!(
        ok(virtsh(bus, &["vol-resize", "v2", "8M", "--pool", "p"])),
        "Size of volume 'v2' successfully changed to 8M\n"
    );
    assert_eq!(
        field(
            &ok(virtsh(bus, &["vol-info", "v2", "--pool", "p"])),
            "Capacity"
        ),
        "8.00 MiB"
    );
    let err = fails(virtsh(bus, &["vol-resize", "v2", "1M", "--pool", "p"]));
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        ok(virtsh(bus, &["vol-wipe", "v2", "--pool", "p"])),
        "Vol v2 wiped\n"
    );
    assert!(std::fs::read(&clone).expect("wiped")[..data.len()]
        .iter()
        .all(|b| *b == 0));
    let err = fails(virtsh(
        bus,
        &["vol-wipe", "v2", "--pool", "p", "--algorithm", "nope"],
    ));
    assert!(err.contains("nope"), "{err}");

    // A file put into the folder behind the daemon's back shows after pool-refresh.
    std::fs::write(target.join("v3"), b"x").expect("v3");
    assert_eq!(
        ok(virtsh(bus, &["pool-refresh", "p"])),
        "Pool p refreshed\n"
    );
    let list = ok(virtsh(bus, &["vol-list", "p"]));
    for v in ["v1", "v2", "v3"] {
        assert!(list.contains(&format!(" {v} ")), "{list}");
    }
    let j = json(virtsh(bus, &["vol-list", "p", "--details", "--json"]));
    assert_eq!(j.as_array().map(Vec::len), Some(3));
    assert_eq!(j[0]["name"], "v1");
    assert_eq!(j[0]["type"], "file");
    assert_eq!(
        ok(virtsh(bus, &["vol-delete", "v3", "--pool", "p"])),
        "Vol v3 deleted\n"
    );
    assert_eq!(
        ok(virtsh(bus, &["vol-delete", "p", "v2"])),
        "Vol v2 deleted\n"
    );

    // vol-list piped into a reader that has gone: no panic.
    let mut child = command(bus, &["vol-list", "p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virtsh");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// virsh's secret-* commands against virtstoraged, which serves libvirt's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtstoraged"), "virtstoraged")
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let dir = daemon.dirs.root.path();
    let xml = dir.join("s.xml");
    let uuid = "c6b4b3a2-0f6d-4e4b-9b4f-2f1c3d4e5f60";
    std::fs::write(
        &xml,
        format!(
            "<secret ephemeral='no' private='no'><uuid>{uuid}</uuid>\
             <usage type='ceph'><name>client.admin</name></usage></secret>"
        ),
    )
    .expect("xml");
    assert_eq!(
        ok(virtsh(
            &bus,
            &["secret-define", xml.to_str().expect("utf-8")]
        )),
        format!("Secret {uuid} created\n")
    );
    let list = ok(virtsh(&bus, &["secret-list"]));
    assert!(
        list.contains(uuid) && list.contains("ceph client.admin"),
        "{list}"
    );
    assert!(!ok(virtsh(&bus, &["secret-list", "--private"])).contains(uuid));
    assert!(ok(virtsh(&bus, &["secret-dumpxml", uuid])).contains("<name>client.admin</name>"));
    ok(virtsh(
        &bus,
        &["secret-set-value", uuid, "--base64", "c2VjcmV0IGtleQ=="],
    ));
    assert_eq!(
        ok(virtsh(&bus, &["secret-get-value", uuid])),
        "c2VjcmV0IGtleQ==\n"
    );
    let value = dir.join("v.bin");
    std::fs::write(&value, [0u8, 1, 254, 255]).expect("value");
    ok(virtsh(
        &bus,
        &[
            "secret-set-value",
            uuid,
            "--file",
            value.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(ok(virtsh(&bus, &["secret-get-value", uuid])), "AAH+/w==\n");
    assert!(fails(virtsh(&bus, &["secret-set-value", uuid, "--base64", "%%%"])).contains("base64"));
    assert_eq!(
        ok(virtsh(&bus, &["secret-undefine", uuid])),
        format!("Secret {uuid} deleted\n")
    );
    let e = fails(virtsh(&bus, &["secret-dumpxml", uuid]));
    assert!(e.contains("Secret not found"), "{e}");
}
