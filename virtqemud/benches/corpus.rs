//! libvirt's corpus through our XML path, documents per second: parse + defaults +
//! firmware choice + argv for every document of `tests/libvirt_corpus.pass` (the x86
//! documents of libvirt 9.0's qemuxml2argvdata that libvirt's suite accepts and that
//! define here), with Debian 12's QEMU capabilities probed as the daemon does. The same
//! documents go through libvirt's `virsh domxml-to-native qemu-argv` in
//! scripts/reference-libvirt-domxml-to-native.sh; both figures are in
//! docs/performance-vs-libvirt.md. Prints; asserts nothing.
//!
//!     cargo test -p virtqemud --test libvirt_corpus   (once: fetches the corpus)
//!     cargo bench -p virtqemud --bench corpus          (VIRT_BENCH_PASSES=N, default 20)

use std::path::{Path, PathBuf};
use std::time::Instant;

use virtqemud::caps::Caps;
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::{Domain, GraphicsKind};

fn corpus() -> Vec<String> {
    let src = std::env::var_os("VIRT_LIBVIRT_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/virt-rs/libvirt/libvirt-9.0.0")
        })
        .join("tests/qemuxml2argvdata");
    let pass = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirt_corpus.pass");
    let list = std::fs::read_to_string(&pass).expect("tests/libvirt_corpus.pass");
    list.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| {
            let f = src.join(format!("{n}.xml"));
            std::fs::read_to_string(&f).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run cargo test -p virtqemud --test libvirt_corpus once)",
                    f.display()
                )
            })
        })
        // libvirtd 9.0 crashes on these; the reference script leaves them out, so do we.
        .filter(|x| !x.contains("<interface type='hostdev'"))
        .collect()
}

/// One document as the daemon takes it to a start: true when argv was built.
fn convert(text: &str, caps: &Caps) -> bool {
    let Ok(mut dom) = Domain::parse(text) else {
        return false;
    };
    if dom.fill_defaults(caps).is_err()
        || virtqemud::firmware::choose(
            &mut dom,
            &[Path::new("/usr/share/qemu/firmware")],
            Path::new("/var/lib/libvirt/qemu/nvram"),
        )
        .is_err()
    {
        return false;
    }
    for g in &mut dom.devices.graphics {
        if g.kind == GraphicsKind::Spice && g.port.is_none_or(|p| p <= 0) {
            g.port = Some(5900);
        }
    }
    let mut ctx = LaunchContext::new(
        dom.devices
            .emulator
            .clone()
            .unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into()),
        "/run/virtqemud/dom-1.qmp".into(),
        "/run/virtqemud/dom-1.pid".into(),
        "/run/virtqemud".into(),
    );
    ctx.accel = Accel::Kvm;
    ctx.tpm_socket = Some("/run/virtqemud/swtpm-1.sock".into());
    ctx.tap_fds = (30..62).map(Some).collect();
    build(&dom, &ctx).is_ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let passes: usize = std::env::var("VIRT_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let docs = corpus();
    let dir = tempfile::tempdir().expect("tmp");
    let mut caps = Caps::load_or_probe(Path::new("/usr/bin/qemu-system-x86_64"), dir.path())
        .await
        .expect("probe /usr/bin/qemu-system-x86_64");
    caps.kvm_present = true;
    caps.kvm_usable = true;
    let converted = docs.iter().filter(|d| convert(d, &caps)).count();
    let t = Instant::now();
    for _ in 0..passes {
        for d in &docs {
            std::hint::black_box(convert(d, &caps));
        }
    }
    let el = t.elapsed().as_secs_f64();
    let n = docs.len() * passes;
    println!(
        "parse+defaults+firmware+argv, libvirt corpus, all: {} documents ({converted} to argv, {} refused at argv) x {passes} passes in {:.2} s = {:.0} documents/s ({:.1} us each)",
        docs.len(),
        docs.len() - converted,
        el,
        n as f64 / el,
        el * 1e6 / n as f64
    );
    // The same over only the documents that reach argv: a refusal can end early.
    let full: Vec<&String> = docs.iter().filter(|d| convert(d, &caps)).collect();
    let t = Instant::now();
    for _ in 0..passes {
        for d in &full {
            std::hint::black_box(convert(d, &caps));
        }
    }
    let el = t.elapsed().as_secs_f64();
    let n = full.len() * passes;
    println!(
        "parse+defaults+firmware+argv, libvirt corpus, the ones turned into argv: {} documents x {passes} passes in {:.2} s = {:.0} documents/s ({:.1} us each)",
        full.len(),
        el,
        n as f64 / el,
        el * 1e6 / n as f64
    );
}
