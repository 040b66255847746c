//! Domain XML benchmark: parse + fill_defaults + to_xml + argv of a typical domain,
//! ×1000, printed (not asserted). Run: `cargo bench -p virtqemud --bench xml`
//! (needs `[[bench]] name = "xml"  harness = false` in virtqemud/Cargo.toml).

use std::time::Instant;

use virtqemud::caps::Caps;
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::{Domain, XmlOpts};

const XML: &str = include_str!("../tests/golden/virt-install-debian-linux.xml");

#[cfg_attr(test, allow(dead_code))]
fn main() {
    const N: u32 = 1000;
    let caps = Caps::fixture();
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
