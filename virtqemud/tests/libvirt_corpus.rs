//! libvirt's own domain XML corpus (issue 14, item 1): the x86 documents of libvirt
//! 9.0's `tests/qemuxml2argvdata` that libvirt's `tests/qemuxml2argvtest.c` expects to
//! succeed, fetched at test time from Debian 12's libvirt source package (never kept in
//! this repository), each run as the daemon runs a user's document:
//! define (parse + defaults) -> dumpxml -> define again (must give the same domain),
//! then the argv builder with the capabilities of Debian 12's QEMU 7.2 (probed from the
//! installed emulator, as the daemon does, with KVM marked usable so the result does
//! not depend on /dev/kvm). Nothing may panic, and every refusal must name its element.
//!
//! Selection: every `DO_TEST*` invocation of qemuxml2argvtest.c is read; one whose macro
//! or flags say PARSE_ERROR or FAILURE is a failure line, any other a success line. A
//! document is taken when at least one success line names it for an x86 arch and its
//! `<os><type arch>` is x86_64, i686 or absent. Capability-dependent variants (the same
//! document expected to fail with an old QEMU's capabilities, e.g. `DO_TEST_CAPS_VER_FAILURE`,
//! and to succeed with the latest) count as accepted: libvirt accepts them with a
//! current QEMU, which Debian 12's 7.2 is for this purpose; the document is run once.
//!
//! The outcome of every document is asserted against `libvirt_corpus.pass` (one line
//! per document reaching a stage: `argv NAME` = defines and builds argv, `define NAME` =
//! defines, argv refused): a regression fails, and so does a new pass until it is
//! added. `UPDATE_CORPUS=1` rewrites the list. The figures and refusal groups are
//! printed (`--nocapture`).
//!
//! Needs network access to deb.debian.org once (the tarball is kept in
//! ~/.cache/virt-rs/libvirt) or `VIRT_LIBVIRT_SRC` naming an unpacked libvirt 9.0 tree.

mod support;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;

use virtqemud::caps::{Caps, DefaultCaps};
use virtqemud::command_line::{build, Accel, LaunchContext};
use virtqemud::xml::{Domain, GraphicsKind, XmlOpts};

const VERSION: &str = "9.0.0";
const PASS_LIST: &str = "tests/libvirt_corpus.pass";
/// What this test reads of libvirt's source tree.
const PARTS: [&str; 4] = [
    "tests/qemuxml2argvdata",
    "tests/qemuxml2argvtest.c",
    "tests/qemuxml2xmloutdata",
    "tests/qemuxml2xmltest.c",
];

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The unpacked test data of Debian 12's libvirt (the tarball from
/// `common::harness::debian_source_tarball`): only the `PARTS` this test reads.
fn libvirt_source() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRT_LIBVIRT_SRC") {
        return PathBuf::from(dir);
    }
    let cache = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".cache/virt-rs/libvirt");
    let tree = cache.join(format!("libvirt-{VERSION}"));
    if PARTS.iter().all(|p| tree.join(p).exists()) {
        return tree;
    }
    let tarball = common::harness::debian_source_tarball("libvirt", &cache)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        tarball
            .to_string_lossy()
            .contains(&format!("libvirt_{VERSION}.orig.tar")),
        "Debian 12's libvirt is {VERSION}, the source fetched is {} (bookworm moved on?)",
        tarball.display()
    );
    let top = format!("libvirt-{VERSION}");
    let out = run(Command::new("tar")
        .arg("xf")
        .arg(&tarball)
        .args(PARTS.iter().map(|p| format!("{top}/{p}")))
        .current_dir(&cache));
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree
}

/// The C file without its comments and preprocessor lines (the macro definitions).
fn code_of(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    let mut rest = c;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `DO_TEST*(...)` line: the document, the arch it names (if any), and whether
/// libvirt expects it to succeed.
struct Invocation {
    name: String,
    arch: Option<String>,
    success: bool,
}

/// Every `DO_TEST*(...)` call of a test C file: the macro's name, its argument text
/// and the string literals in it.
fn macro_calls(c: &str) -> Vec<(String, String, Vec<String>)> {
    let code = code_of(c);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("DO_TEST") {
        let start = at + i;
        let macro_end = code[start..]
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .map_or(code.len(), |j| start + j);
        let mac = &code[start..macro_end];
        at = macro_end;
        let Some(open) = code[macro_end..].trim_start().strip_prefix('(') else {
            continue;
        };
        let open_at = code.len() - open.len();
        let mut depth = 1;
        let mut end = open_at;
        for (k, ch) in code[open_at..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = open_at + k;
                break;
            }
        }
        let args = &code[open_at..end];
        at = end;
        let strings = args
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        found.push((mac.to_owned(), args.to_owned(), strings));
    }
    found
}

fn invocations(c: &str) -> Vec<Invocation> {
    let mut found = Vec::new();
    for (mac, args, strings) in macro_calls(c) {
        let Some(name) = strings.first() else {
            continue;
        };
        let arch = if mac.contains("PPC64") {
            Some("ppc64".to_owned())
        } else if mac.contains("_ARCH_") || mac == "DO_TEST_CAPS_INTERNAL" {
            strings.get(1).cloned()
        } else if mac.starts_with("DO_TEST_CAPS_") {
            Some("x86_64".to_owned())
        } else if let Some(i) = args.find("ARG_CAPS_ARCH") {
            args[i..].split('"').nth(1).map(str::to_owned)
        } else {
            None
        };
        let failure = mac.contains("FAILURE")
            || mac.contains("PARSE_ERROR")
            || args.contains("FLAG_EXPECT_FAILURE")
            || args.contains("FLAG_EXPECT_PARSE_ERROR");
        found.push(Invocation {
            name: name.clone(),
            arch,
            success: !failure,
        });
    }
    found
}

/// The output file suffixes qemuxml2xmltest.c compares NAME's inactive definition
/// with (`.x86_64-latest`, `.x86_64-7.2.0`, or none for the tests with fixed caps).
fn xml2xml_suffixes(c: &str) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (mac, args, strings) in macro_calls(c) {
        let Some(name) = strings.first() else {
            continue;
        };
        let s = |i: usize| strings.get(i).cloned().unwrap_or_default();
        let suffix = match mac.as_str() {
            "DO_TEST_FULL" if args.contains("WHEN_ACTIVE") => continue,
            "DO_TEST_FULL" => s(1),
            "DO_TEST_CAPS_LATEST" => ".x86_64-latest".to_owned(),
            "DO_TEST_CAPS_VER" => format!(".x86_64-{}", s(1)),
            "DO_TEST_CAPS_ARCH_LATEST" | "DO_TEST_CAPS_ARCH_LATEST_FULL" => {
                format!(".{}-latest", s(1))
            }
            "DO_TEST_CAPS_ARCH_VER" | "DO_TEST_CAPS_ARCH_VER_FULL" => {
                format!(".{}-{}", s(1), s(2))
            }
            "DO_TEST" | "DO_TEST_NOCAPS" => String::new(),
            _ => continue,
        };
        found.entry(name.clone()).or_default().push(suffix);
    }
    found
}

/// The `QEMU_CAPS_*` flags of each document's run with fixed capabilities
/// (`DO_TEST(name, QEMU_CAPS_...)`; none for `DO_TEST_NOCAPS`): libvirt's test starts
/// those from an empty set, not from a real QEMU's.
fn fixed_caps_flags(c: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for (mac, args, strings) in macro_calls(c) {
        let Some(name) = strings.first() else {
            continue;
        };
        let fixed = match mac.as_str() {
            "DO_TEST" | "DO_TEST_NOCAPS" => true,
            "DO_TEST_FULL" => strings.get(1).is_some_and(String::is_empty),
            _ => false,
        };
        if !fixed {
            continue;
        }
        let flags = args
            .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .filter(|w| w.starts_with("QEMU_CAPS_") && *w != "QEMU_CAPS_LAST")
            .map(str::to_owned)
            .collect();
        found.entry(name.clone()).or_insert(flags);
    }
    found
}

/// What libvirt's defaults read of QEMU (`DefaultCaps`), from a fixed-caps test's flags.
fn defaults_of(flags: &BTreeSet<String>) -> DefaultCaps {
    let has = |f: &str| flags.contains(f);
    DefaultCaps {
        qemu_xhci: has("QEMU_CAPS_DEVICE_QEMU_XHCI"),
        nec_usb_xhci: has("QEMU_CAPS_NEC_USB_XHCI"),
        ich9_usb_ehci1: has("QEMU_CAPS_ICH9_USB_EHCI1"),
        piix3_usb_uhci: has("QEMU_CAPS_PIIX3_USB_UHCI"),
        pcie_root_port: has("QEMU_CAPS_DEVICE_PCIE_ROOT_PORT"),
        cpu_migratable: has("QEMU_CAPS_CPU_MIGRATABLE"),
    }
}

/// libvirt's expected inactive dumpxml of NAME, as qemuxml2xmltest.c pairs them
/// (`NAME-inactive.SUFFIX.xml`, else `NAME.SUFFIX.xml`). Of several runs, the one
/// with the latest x86 caps (QEMU 7.2 in libvirt 9.0, as Debian 12's), else the one
/// with fixed caps, else the newest QEMU version.
fn expected_xml(src: &Path, name: &str, suffixes: &[String]) -> Option<PathBuf> {
    let rank = |s: &String| -> (u8, Vec<u32>) {
        let x86 = s.is_empty() || s.starts_with(".x86_64-") || s.starts_with(".i686-");
        let ver: Vec<u32> = s
            .rsplit('-')
            .next()
            .unwrap_or("")
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        match () {
            _ if !x86 => (0, ver),
            _ if s.ends_with("-latest") => (3, ver),
            _ if s.is_empty() => (2, ver),
            _ => (1, ver),
        }
    };
    let best = suffixes
        .iter()
        .filter(|s| rank(s).0 > 0)
        .max_by_key(|s| rank(s))?;
    let dir = src.join("tests/qemuxml2xmloutdata");
    [
        dir.join(format!("{name}-inactive{best}.xml")),
        dir.join(format!("{name}{best}.xml")),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// A document as a multiset of elements, each written as its path, its attributes
/// (sorted) and its text (trimmed): what "the same XML, attribute order and
/// whitespace aside" compares. Children's order is not compared.
fn element_facts(text: &str, norm: &Normalize) -> Vec<(String, String)> {
    fn walk(n: roxmltree::Node, prefix: &str, norm: &Normalize, out: &mut Vec<(String, String)>) {
        for c in n.children().filter(|c| c.is_element()) {
            let path = format!("{prefix}/{}", c.tag_name().name());
            let skip_attrs = norm.skipped_attrs(&path, c);
            if skip_attrs.contains(&"*") {
                walk(c, &path, norm, out);
                continue;
            }
            let mut attrs: Vec<String> = c
                .attributes()
                .filter(|a| !skip_attrs.contains(&a.name()))
                .map(|a| {
                    let v = if path == "/domain/os/type" && a.name() == "machine" {
                        (norm.canon_machine)(a.value())
                    } else {
                        a.value().to_owned()
                    };
                    format!("{}='{v}'", a.name())
                })
                .collect();
            attrs.sort();
            let text: String = c
                .children()
                .filter(|t| t.is_text())
                .filter_map(|t| t.text())
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let leaf = path.rsplit('/').next().unwrap_or("").to_owned();
            let sig = if text.is_empty() {
                format!("<{leaf} {}>", attrs.join(" "))
            } else {
                format!("<{leaf} {}>{text}", attrs.join(" "))
            };
            out.push((path.clone(), sig));
            walk(c, &path, norm, out);
        }
    }
    let mut out = Vec::new();
    if let Ok(doc) = roxmltree::Document::parse(text) {
        walk(doc.root(), "", norm, &mut out);
    }
    out
}

/// What the comparison sets aside. Machine aliases are compared resolved (libvirt's
/// test capabilities have no aliases; a real libvirt resolves `pc` as this daemon
/// does). libvirt's tests with fixed capabilities (no `.x86_64-latest` suffix)
/// describe a QEMU without a default CPU model per machine and without USB model
/// defaults: against those, the default CPU (`qemu64`/`qemu32`, `fallback='forbid'`,
/// with its `mode`/`match`/`check`) and the USB controller's default model are not
/// compared. Everything else libvirt writes counts.
struct Normalize<'a> {
    canon_machine: &'a dyn Fn(&str) -> String,
    fixed_caps: bool,
}

impl Normalize<'_> {
    /// Attribute names of `node` not compared; `"*"`: the element itself is not.
    fn skipped_attrs(&self, path: &str, node: roxmltree::Node) -> Vec<&'static str> {
        if !self.fixed_caps {
            return Vec::new();
        }
        let default_model = |m: roxmltree::Node| {
            matches!(m.text(), Some("qemu64" | "qemu32"))
                && m.attribute("fallback") == Some("forbid")
        };
        match path {
            "/domain/cpu/model" if default_model(node) => vec!["*"],
            "/domain/cpu" => {
                let model = node.children().find(|m| m.has_tag_name("model"));
                if model.is_none_or(default_model) {
                    let others = node
                        .children()
                        .filter(|c| c.is_element() && !c.has_tag_name("model"))
                        .count();
                    if others == 0 {
                        vec!["*"]
                    } else {
                        vec!["mode", "match", "check"]
                    }
                } else {
                    Vec::new()
                }
            }
            "/domain/devices/controller"
                if node.attribute("type") == Some("usb")
                    && matches!(node.attribute("model"), Some("piix3-uhci" | "qemu-xhci")) =>
            {
                vec!["model"]
            }
            _ => Vec::new(),
        }
    }
}

/// The elements libvirt writes and we do not (`-`) and those we write and libvirt
/// does not (`+`), as (path, "-/+ signature").
fn xml_differences(
    ours: &str,
    libvirt: &str,
    caps: &Caps,
    fixed_caps: bool,
) -> Vec<(String, String)> {
    let canon = |m: &str| caps.machine_alias(m).unwrap_or(m).to_owned();
    let norm = Normalize {
        canon_machine: &canon,
        fixed_caps,
    };
    let mut count: BTreeMap<(String, String), i32> = BTreeMap::new();
    for f in element_facts(libvirt, &norm) {
        *count.entry(f).or_default() += 1;
    }
    for f in element_facts(ours, &norm) {
        *count.entry(f).or_default() -= 1;
    }
    let mut out = Vec::new();
    for ((path, sig), n) in count {
        let mark = if n > 0 { '-' } else { '+' };
        for _ in 0..n.unsigned_abs() {
            out.push((path.clone(), format!("{mark} {sig}")));
        }
    }
    out
}

fn is_x86(arch: &str) -> bool {
    arch == "x86_64" || arch == "i686"
}

/// `<os><type arch>`, x86_64 when absent (libvirt's default on this host).
fn doc_arch(text: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let ty = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("os"))?
        .children()
        .find(|n| n.has_tag_name("type"))?;
    Some(ty.attribute("arch").unwrap_or("x86_64").to_owned())
}

/// The documents libvirt accepts, with their arch, sorted by name.
fn selected(src: &Path) -> Vec<(String, String)> {
    let c = std::fs::read_to_string(src.join("tests/qemuxml2argvtest.c")).expect("test C file");
    let mut names = BTreeSet::new();
    for inv in invocations(&c) {
        if inv.success && inv.arch.as_deref().is_none_or(is_x86) {
            names.insert(inv.name);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let path = src.join(format!("tests/qemuxml2argvdata/{name}.xml"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Some(arch) = doc_arch(&text).filter(|a| is_x86(a)) {
            out.push((name, arch));
        }
    }
    out
}

/// The caps of the installed emulator (Debian 12's QEMU 7.2), probed as the daemon
/// probes them; KVM marked usable so that the outcome is the same on every host.
async fn debian_caps(dir: &Path) -> Caps {
    let mut caps = Caps::load_or_probe(Path::new("/usr/bin/qemu-system-x86_64"), dir)
        .await
        .expect("probe /usr/bin/qemu-system-x86_64");
    assert_eq!(
        (caps.version.0, caps.version.1),
        (7, 2),
        "the corpus figures are for Debian 12's QEMU 7.2"
    );
    caps.kvm_present = true;
    caps.kvm_usable = true;
    caps
}

/// The element paths (`domain/devices/graphics/listen`) of a document.
fn element_paths(text: &str) -> BTreeSet<String> {
    fn walk(n: roxmltree::Node, prefix: &str, out: &mut BTreeSet<String>) {
        for c in n.children().filter(|c| c.is_element()) {
            let p = format!("{prefix}/{}", c.tag_name().name());
            walk(c, &p, out);
            out.insert(p);
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(doc) = roxmltree::Document::parse(text) {
        walk(doc.root(), "", &mut out);
    }
    out
}

/// Element paths of `input` that the stored definition lacks: what define dropped
/// (libvirt's live-only `<alias>` and `<backingStore>` aside).
fn dropped(input: &str, caps: &Caps) -> Vec<String> {
    let Ok(mut dom) = Domain::parse(input) else {
        return Vec::new();
    };
    if dom.fill_defaults(caps).is_err() {
        return Vec::new();
    }
    let kept = element_paths(&dom.to_xml(XmlOpts {
        secure: true,
        ..XmlOpts::default()
    }));
    element_paths(input)
        .into_iter()
        .filter(|p| !kept.contains(p) && !p.contains("/alias") && !p.contains("/backingStore"))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Defines and builds argv.
    Argv,
    /// Defines; the argv builder refuses with this message.
    Define(String),
    /// Define refuses with this message.
    Refused(String),
}

fn launch_ctx(dom: &Domain) -> LaunchContext {
    let mut c = LaunchContext::new(
        dom.devices
            .emulator
            .clone()
            .unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into()),
        "/run/virtqemud/dom-1.qmp".into(),
        "/run/virtqemud/dom-1.pid".into(),
        "/run/virtqemud".into(),
    );
    c.accel = Accel::Kvm;
    // As the daemon: it pins QEMU to <vcpu cpuset> before exec.
    c.pins_cpus = true;
    c.tpm_socket = Some("/run/virtqemud/swtpm-1.sock".into());
    c.tap_fds = (30..62).map(Some).collect();
    // As the runtime: the passphrase of each encrypted disk, fetched from
    // virtstoraged, in a file of the run's folder.
    c.disk_secrets = (dom.devices.disks.iter().enumerate())
        .filter(|(_, d)| virtqemud::secrets::encryption(d).is_some())
        .map(|(i, _)| (i, format!("/run/virtqemud/disk-{i}.secret").into()))
        .collect();
    // Fixed host resources, not this host's.
    support::fixture_host(&mut c);
    c
}

fn define(text: &str, caps: &Caps) -> Result<Domain, String> {
    let mut dom = Domain::parse(text).map_err(|e| e.to_string())?;
    dom.fill_defaults(caps).map_err(|e| e.to_string())?;
    let stored = dom.to_xml(XmlOpts {
        secure: true,
        ..XmlOpts::default()
    });
    let mut again =
        Domain::parse(&stored).map_err(|e| format!("dumpxml does not parse again: {e}"))?;
    again
        .fill_defaults(caps)
        .map_err(|e| format!("dumpxml does not define again: {e}"))?;
    if again != dom {
        return Err("<domain> dumpxml defines to a different domain".to_owned());
    }
    Ok(dom)
}

fn outcome(text: &str, caps: &Caps) -> Outcome {
    let mut dom = match define(text, caps) {
        Ok(d) => d,
        Err(e) => return Outcome::Refused(e),
    };
    let argv = virtqemud::firmware::choose(
        &mut dom,
        &[Path::new("/usr/share/qemu/firmware")],
        Path::new("/var/lib/libvirt/qemu/nvram"),
    )
    .map_err(|e| e.to_string())
    .and_then(|()| {
        // The runtime gives SPICE a free port; here always the first.
        for g in &mut dom.devices.graphics {
            if g.kind == GraphicsKind::Spice && g.port.is_none_or(|p| p <= 0) {
                g.port = Some(5900);
            }
        }
        build(&dom, &launch_ctx(&dom)).map_err(|e| e.to_string())
    });
    match argv {
        Ok(_) => Outcome::Argv,
        Err(e) => Outcome::Define(e),
    }
}

/// A refusal's cause: its message with the quoted values blanked.
fn cause(msg: &str) -> String {
    let mut out = String::new();
    for (i, part) in msg.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        out.push_str(if i % 2 == 1 { "…" } else { part });
    }
    out
}

fn print_groups(title: &str, refusals: &[(&str, &str)]) {
    let mut groups: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
    for &(name, msg) in refusals {
        groups.entry(cause(msg)).or_default().push((name, msg));
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    println!(
        "\n== {title}: {} refusals in {} groups",
        refusals.len(),
        groups.len()
    );
    for (cause, docs) in groups {
        println!("\n[{}] {cause}", docs.len());
        for (name, msg) in docs {
            println!("    {name}: {msg}");
        }
    }
}

/// Compares each document's dumpxml (define, then the inactive secure XML, as
/// `GetXMLDesc` gives it for a defined domain) with libvirt's expected output, prints
/// the share that matches and the differences grouped by element, and returns the
/// names of the documents that match.
fn compare_dumpxml(src: &Path, docs: &[(String, String)], caps: &Caps) -> Vec<String> {
    let c = std::fs::read_to_string(src.join("tests/qemuxml2xmltest.c")).expect("xml2xml C file");
    let suffixes = xml2xml_suffixes(&c);
    let fixed_flags = fixed_caps_flags(&c);
    let mut matched = Vec::new();
    let mut compared = 0;
    let mut by_path: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (name, _) in docs {
        let Some(expected) = suffixes.get(name).and_then(|s| expected_xml(src, name, s)) else {
            continue;
        };
        compared += 1;
        let want = std::fs::read_to_string(&expected).expect("read libvirt's output");
        let input = src.join(format!("tests/qemuxml2argvdata/{name}.xml"));
        let text = std::fs::read_to_string(&input).expect("read document");
        let file = expected
            .file_name()
            .map(|f| f.to_string_lossy().into_owned());
        let fixed_caps = !file.is_some_and(|f| {
            f.ends_with("-latest.xml") || f.contains(".x86_64-") || f.contains(".i686-")
        });
        // The output of a fixed-caps run is compared with what this daemon writes given
        // the same capabilities (as far as its defaults read any).
        let mut doc_caps = caps.clone();
        if fixed_caps {
            doc_caps.defaults = defaults_of(&fixed_flags.get(name).cloned().unwrap_or_default());
        }
        let ours = match define(&text, &doc_caps) {
            Ok(dom) => dom.to_xml(XmlOpts {
                inactive: true,
                secure: true,
                ..XmlOpts::default()
            }),
            Err(_) => {
                by_path
                    .entry("(define refused)".to_owned())
                    .or_default()
                    .entry(name.clone())
                    .or_default();
                continue;
            }
        };
        let diffs = xml_differences(&ours, &want, caps, fixed_caps);
        // One file per differing document (ours, libvirt's, the differences), for
        // working through them.
        if let Some(dir) = std::env::var_os("CORPUS_XML_DIFF_DIR").filter(|_| !diffs.is_empty()) {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("diff dir");
            let lines: Vec<String> = diffs.iter().map(|(p, s)| format!("{p}: {s}")).collect();
            std::fs::write(dir.join(format!("{name}.diff")), lines.join("\n") + "\n")
                .expect("write diff");
            std::fs::write(dir.join(format!("{name}.ours.xml")), &ours).expect("write ours");
            std::fs::copy(&expected, dir.join(format!("{name}.libvirt.xml"))).expect("copy");
        }
        if diffs.is_empty() {
            matched.push(name.clone());
        }
        for (path, sig) in diffs {
            by_path
                .entry(path)
                .or_default()
                .entry(name.clone())
                .or_default()
                .push(sig);
        }
    }
    println!(
        "\n== dumpxml against libvirt's qemuxml2xmloutdata: {} of {compared} documents match ({:.1} %)",
        matched.len(),
        100.0 * matched.len() as f64 / compared.max(1) as f64
    );
    let mut groups: Vec<_> = by_path.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let detail = std::env::var_os("CORPUS_XML_DETAIL").is_some();
    for (path, docs) in groups {
        let names: Vec<&str> = docs.keys().map(String::as_str).collect();
        println!("  [{}] {path}: {}", docs.len(), names.join(" "));
        let example = docs.iter().next();
        for (doc, sigs) in docs
            .iter()
            .take(if detail { usize::MAX } else { 0 })
            .chain(example.filter(|_| !detail))
        {
            for sig in sigs.iter().take(4) {
                println!("      {doc}: {sig}");
            }
        }
    }
    matched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_qemuxml2argv_corpus() {
    let src = libvirt_source();
    let docs = selected(&src);
    assert!(
        docs.len() > 500,
        "only {} documents selected: is {} libvirt {VERSION}?",
        docs.len(),
        src.display()
    );
    let caps_dir = tempfile::tempdir().expect("tempdir");
    let caps = debian_caps(caps_dir.path()).await;
    let mut results: BTreeMap<String, (String, Outcome)> = BTreeMap::new();
    let mut panics = Vec::new();
    let started = std::time::Instant::now();
    for (name, arch) in &docs {
        let path = src.join(format!("tests/qemuxml2argvdata/{name}.xml"));
        let text = std::fs::read_to_string(&path).expect("read document");
        match std::panic::catch_unwind(AssertUnwindSafe(|| outcome(&text, &caps))) {
            Ok(o) => {
                results.insert(name.clone(), (arch.clone(), o));
            }
            Err(_) => panics.push(name.clone()),
        }
    }
    let elapsed = started.elapsed();
    assert!(panics.is_empty(), "panicked on: {panics:?}");

    let total = results.len();
    let count = |arch: Option<&str>, f: &dyn Fn(&Outcome) -> bool| {
        results
            .values()
            .filter(|(a, o)| arch.is_none_or(|x| x == a) && f(o))
            .count()
    };
    let defined = |o: &Outcome| !matches!(o, Outcome::Refused(_));
    let argv = |o: &Outcome| matches!(o, Outcome::Argv);
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    println!("libvirt {VERSION} qemuxml2argvdata, x86 documents libvirt accepts: {total}");
    for arch in [Some("x86_64"), Some("i686"), None] {
        let n = count(arch, &|_| true);
        let d = count(arch, &defined);
        let a = count(arch, &argv);
        println!(
            "  {:7} {n:4} documents: define {d:4} ({:.1} %), argv {a:4} ({:.1} %)",
            arch.unwrap_or("all"),
            pct(d, n),
            pct(a, n)
        );
    }
    println!("  ({} documents in {elapsed:.2?})", total);

    let refused: Vec<(&str, &str)> = results
        .iter()
        .filter_map(|(n, (_, o))| match o {
            Outcome::Refused(m) => Some((n.as_str(), m.as_str())),
            _ => None,
        })
        .collect();
    let argv_refused: Vec<(&str, &str)> = results
        .iter()
        .filter_map(|(n, (_, o))| match o {
            Outcome::Define(m) => Some((n.as_str(), m.as_str())),
            _ => None,
        })
        .collect();
    print_groups("define", &refused);
    print_groups("argv (after a successful define)", &argv_refused);

    // Not asserted (libvirt itself rewrites some elements, e.g. <cpu><model> for
    // host-model): a figure of what define does not keep, to look at.
    let mut lost: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, _) in &docs {
        let path = src.join(format!("tests/qemuxml2argvdata/{name}.xml"));
        let text = std::fs::read_to_string(&path).expect("read document");
        for p in dropped(&text, &caps) {
            lost.entry(p).or_default().push(name);
        }
    }
    let docs_losing: BTreeSet<&str> = lost.values().flatten().copied().collect();
    println!(
        "\n== elements of the input missing from dumpxml: {} paths in {} documents",
        lost.len(),
        docs_losing.len()
    );
    for (p, names) in &lost {
        println!("  [{}] {p}: {}", names.len(), names.join(" "));
    }

    let xml_matched = compare_dumpxml(&src, &docs, &caps);

    let unnamed: Vec<_> = refused
        .iter()
        .chain(&argv_refused)
        .filter(|(_, m)| !m.contains('<'))
        .collect();
    assert!(
        unnamed.is_empty(),
        "refusals that do not name their element: {unnamed:#?}"
    );

    let mut got: String = results
        .iter()
        .filter_map(|(n, (_, o))| match o {
            Outcome::Argv => Some(format!("argv {n}\n")),
            Outcome::Define(_) => Some(format!("define {n}\n")),
            Outcome::Refused(_) => None,
        })
        .collect();
    got.extend(xml_matched.iter().map(|n| format!("xml {n}\n")));
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join(PASS_LIST);
    if std::env::var_os("UPDATE_CORPUS").is_some() {
        std::fs::write(&list, &got).expect("write the pass list");
        return;
    }
    let want = std::fs::read_to_string(&list).expect("the pass list");
    let want: BTreeSet<&str> = want.lines().collect();
    let got: BTreeSet<&str> = got.lines().collect();
    let lost: Vec<_> = want.difference(&got).collect();
    let new: Vec<_> = got.difference(&want).collect();
    assert!(
        lost.is_empty() && new.is_empty(),
        "the corpus outcome changed (UPDATE_CORPUS=1 rewrites {PASS_LIST}).\n\
         No longer reached: {lost:#?}\nNewly reached (add them): {new:#?}"
    );
}
