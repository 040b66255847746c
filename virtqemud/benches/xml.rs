//! Domain XML benchmark: parse + fill_defaults + to_xml + argv of a typical domain,
//! ×1000, printed (not asserted). Run: `cargo bench -p virtqemud --bench xml`
//! (needs `[[bench]] name = "xml"  harness = false` in virtqemud/Cargo.toml).

use std::path::PathBuf;
use std::time::Instant;

use virtqemud::caps::{Caps, Machine};
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::{Domain, XmlOpts};

const XML: &str = include_str!("../tests/golden/virt-install-debian-linux.xml");

fn caps() -> Caps {
    let m = |name: &str, alias: Option<&str>, def: bool| Machine {
        name: name.into(),
        alias: alias.map(str::to_owned),
        is_default: def,
        cpu_max: 255,
        deprecated: false,
    };
    Caps {
        emulator: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        binary: None,
        arch: "x86_64".into(),
        version: (7, 2, 0),
        machines: vec![
            m("pc-i440fx-7.2", Some("pc"), true),
            m("pc-q35-7.2", Some("q35"), false),
        ],
        kvm_present: true,
        kvm_usable: true,
        cpu_models: vec![],
        device_types: vec![],
    }
}

#[cfg_attr(test, allow(dead_code))]
fn main() {
    const N: u32 = 1000;
    let caps = caps();
    let mut ctx = LaunchContext::new(
        "/usr/bin/qemu-system-x86_64".into(),
        "/run/q.qmp".into(),
        "/run/q.pid".into(),
        "/run".into(),
    );
    ctx.accel = Accel::Kvm;
    ctx.tap_fds = vec![Some(30)];
    let mut bytes = 0usize;
    let t = Instant::now();
    for _ in 0..N {
        let mut d = match Domain::parse(XML) {
            Ok(d) => d,
            Err(e) => return eprintln!("parse failed: {e}"),
        };
        if let Err(e) = d.fill_defaults(&caps) {
            return eprintln!("defaults failed: {e}");
        }
        bytes += d.to_xml(XmlOpts::default()).len();
    }
    let el = t.elapsed();
    println!(
        "parse+fill_defaults+to_xml x{N}: {:.1} ms total, {:.1} us each ({bytes} bytes written)",
        el.as_secs_f64() * 1e3,
        el.as_secs_f64() * 1e6 / f64::from(N)
    );
    let mut d = match Domain::parse(XML) {
        Ok(d) => d,
        Err(e) => return eprintln!("parse failed: {e}"),
    };
    if let Err(e) = d.fill_defaults(&caps) {
        return eprintln!("defaults failed: {e}");
    }
    let t = Instant::now();
    let mut args = 0;
    for _ in 0..N {
        match build(&d, &ctx) {
            Ok(a) => args += a.len(),
            Err(e) => return eprintln!("build failed: {e}"),
        }
    }
    let el = t.elapsed();
    println!(
        "command_line::build x{N}: {:.1} ms total, {:.1} us each ({} args each)",
        el.as_secs_f64() * 1e3,
        el.as_secs_f64() * 1e6 / f64::from(N),
        args / N as usize
    );
}
