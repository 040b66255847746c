//! virtproxyd's files in systemd/: the units pass `systemd-analyze verify`, both of its
//! names are activatable on both buses, and its system-bus policy lets root own both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(systemd_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn units_activation_files_and_policy() {
    let service = read("virtproxyd.service");
    assert!(service.contains("Type=notify"));
    assert!(service.contains("BusName=org.libvirt\n"));
    let socket = read("virtproxyd.socket");
    assert!(socket.contains("ListenStream=/run/libvirt/virtproxyd-sock"));
    assert!(socket.contains("SocketMode=0600"));
    for name in ["org.libvirt", "org.libvirt.virtproxyd"] {
        let sys = read(&format!("dbus-1/system-services/{name}.service"));
        assert!(sys.contains(&format!("Name={name}\n")), "{name}");
        assert!(sys.contains("SystemdService=virtproxyd.service"), "{name}");
        assert!(sys.contains("virtproxyd --system"), "{name}");
        let ses = read(&format!("dbus-1/services/{name}.service"));
        assert!(ses.contains(&format!("Name={name}\n")) && ses.contains("--session"));
    }
    let policy = read("dbus-1/system.d/org.libvirt.virtproxyd.conf");
    let body: String = policy
        .lines()
        .filter(|l| !l.starts_with("<!DOCTYPE") && !l.starts_with(" \"http"))
        .collect::<Vec<_>>()
        .join("\n");
    let doc = roxmltree::Document::parse(&body).expect("policy XML");
    let owned: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("allow"))
        .filter_map(|n| n.attribute("own"))
        .collect();
    assert_eq!(owned, ["org.libvirt", "org.libvirt.virtproxyd"]);
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = systemd_dir();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("virtproxyd.service"))
        .arg(dir.join("virtproxyd.socket"))
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The binaries are not installed on a build machine; anything else is a defect.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{stderr}");
}
