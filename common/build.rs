//! Generates the client proxies of libvirt-dbus's interfaces from the reference table
//! (`api/libvirt-dbus.tsv`), so that a client and a server can never share a mistake in
//! a signature: the servers are written by hand, their proxies come from the table.

#[path = "src/contract.rs"]
#[allow(dead_code)]
mod contract;

use std::fmt::Write as _;

use contract::{split, Arg, Kind, Member};

/// Which proxies to generate: (trait name, interface, default service, default path).
const PROXIES: &[(&str, &str, Option<&str>, Option<&str>)] = &[
    (
        "Connect",
        "org.libvirt.Connect",
        None,
        Some("/org/libvirt/QEMU"),
    ),
    (
        "QemuConnect",
        "org.libvirt.Connect",
        Some("org.libvirt.virtqemud"),
        Some("/org/libvirt/QEMU"),
    ),
    (
        "Domain",
        "org.libvirt.Domain",
        Some("org.libvirt.virtqemud"),
        None,
    ),
    (
        "DomainSnapshot",
        "org.libvirt.DomainSnapshot",
        Some("org.libvirt.virtqemud"),
        None,
    ),
    (
        "NetworkConnect",
        "org.libvirt.Connect",
        Some("org.libvirt.virtnetworkd"),
        Some("/org/libvirt/QEMU"),
    ),
    (
        "Network",
        "org.libvirt.Network",
        Some("org.libvirt.virtnetworkd"),
        None,
    ),
    (
        "Interface",
        "org.libvirt.Interface",
        Some("org.libvirt.virtnetworkd"),
        None,
    ),
    (
        "NWFilter",
        "org.libvirt.NWFilter",
        Some("org.libvirt.virtnetworkd"),
        None,
    ),
    (
        "StorageConnect",
        "org.libvirt.Connect",
        Some("org.libvirt.virtstoraged"),
        Some("/org/libvirt/QEMU"),
    ),
    (
        "StoragePool",
        "org.libvirt.StoragePool",
        Some("org.libvirt.virtstoraged"),
        None,
    ),
    (
        "StorageVol",
        "org.libvirt.StorageVol",
        Some("org.libvirt.virtstoraged"),
        None,
    ),
    (
        "Secret",
        "org.libvirt.Secret",
        Some("org.libvirt.virtstoraged"),
        None,
    ),
    (
        "NodeDevConnect",
        "org.libvirt.Connect",
        Some("org.libvirt.virtnodedevd"),
        Some("/org/libvirt/QEMU"),
    ),
    (
        "NodeDevice",
        "org.libvirt.NodeDevice",
        Some("org.libvirt.virtnodedevd"),
        None,
    ),
];

/// `GetXMLDesc` -> `get_xml_desc`, `xmlCPUs` -> `xml_cpus`.
fn snake(name: &str) -> String {
    let c: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, ch) in c.iter().enumerate() {
        if ch.is_uppercase() && i > 0 {
            let prev = c[i - 1];
            let next_lower = c.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(ch.to_lowercase());
    }
    match out.as_str() {
        "type" | "ref" | "match" | "in" | "fn" | "move" | "loop" | "mod" | "use" | "where" => {
            format!("r#{out}")
        }
        _ => out,
    }
}

/// The owned Rust type of a reply value. Every `a{sv}` that libvirt-dbus returns is a
/// typed-parameter list, double-wrapped on the wire: [`TypedParams`] reads that.
fn owned(sig: &str) -> String {
    match sig {
        "y" => "u8".into(),
        "b" => "bool".into(),
        "n" => "i16".into(),
        "q" => "u16".into(),
        "i" => "i32".into(),
        "u" => "u32".into(),
        "x" => "i64".into(),
        "t" => "u64".into(),
        "d" => "f64".into(),
        "s" => "String".into(),
        "o" => "zbus::zvariant::OwnedObjectPath".into(),
        "g" => "zbus::zvariant::OwnedSignature".into(),
        "h" => "zbus::zvariant::OwnedFd".into(),
        "v" => "zbus::zvariant::OwnedValue".into(),
        "a{sv}" => "crate::typed_params::TypedParams".into(),
        s if s.starts_with("a{") => {
            let inner = split(&s[2..s.len() - 1]);
            format!(
                "std::collections::HashMap<{}, {}>",
                owned(inner[0]),
                owned(inner[1])
            )
        }
        s if s.starts_with('a') => format!("Vec<{}>", owned(&s[1..])),
        s if s.starts_with('(') => {
            let parts: Vec<String> = split(&s[1..s.len() - 1]).into_iter().map(owned).collect();
            if parts.len() == 1 {
                format!("({},)", parts[0])
            } else {
                format!("({})", parts.join(", "))
            }
        }
        other => panic!("signature {other:?} has no Rust type here"),
    }
}

/// The type a caller passes: borrowed where that saves the caller a copy. Typed
/// parameters going in are single-wrapped, as libvirt-dbus reads them.
fn borrowed(sig: &str) -> String {
    match sig {
        "s" => "&str".into(),
        "o" => "&zbus::zvariant::ObjectPath<'_>".into(),
        "h" => "zbus::zvariant::Fd<'_>".into(),
        "as" => "&[&str]".into(),
        "ao" => "&[zbus::zvariant::ObjectPath<'_>]".into(),
        "ah" => "&[zbus::zvariant::Fd<'_>]".into(),
        "ay" => "&[u8]".into(),
        "a{sv}" => "&std::collections::HashMap<&str, zbus::zvariant::Value<'_>>".into(),
        other => owned(other),
    }
}

fn reply(outs: &[Arg]) -> String {
    match outs {
        [] => "()".into(),
        [one] => owned(&one.ty),
        many => format!(
            "({})",
            many.iter()
                .map(|a| owned(&a.ty))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn member(out: &mut String, m: &Member) {
    let rust = snake(&m.name);
    match &m.kind {
        Kind::Method { ins, outs } => {
            let params: String = ins
                .iter()
                .map(|a| format!(", {}: {}", snake(&a.name), borrowed(&a.ty)))
                .collect();
            let _ = writeln!(out, "    #[zbus(name = \"{}\")]", m.name);
            let _ = writeln!(
                out,
                "    fn {rust}(&self{params}) -> zbus::Result<{}>;",
                reply(outs)
            );
        }
        Kind::Property { ty, writable, .. } => {
            let _ = writeln!(out, "    #[zbus(property, name = \"{}\")]", m.name);
            let _ = writeln!(out, "    fn {rust}(&self) -> zbus::Result<{}>;", owned(ty));
            if *writable {
                let _ = writeln!(out, "    #[zbus(property, name = \"{}\")]", m.name);
                let _ = writeln!(
                    out,
                    "    fn set_{rust}(&self, value: {}) -> zbus::Result<()>;",
                    owned(ty)
                );
            }
        }
        Kind::Signal { args } => {
            let params: String = args
                .iter()
                .map(|a| format!(", {}: {}", snake(&a.name), owned(&a.ty)))
                .collect();
            let _ = writeln!(out, "    #[zbus(signal, name = \"{}\")]", m.name);
            let _ = writeln!(out, "    fn {rust}(&self{params}) -> zbus::Result<()>;");
        }
    }
}

fn main() {
    println!("cargo::rerun-if-changed=api/libvirt-dbus.tsv");
    println!("cargo::rerun-if-changed=src/contract.rs");
    let members = contract::parse(contract::LIBVIRT_DBUS).expect("api/libvirt-dbus.tsv");
    let mut out =
        String::from("// Generated by common/build.rs from api/libvirt-dbus.tsv. Do not edit.\n");
    for (name, iface, service, path) in PROXIES {
        let mut attrs = format!("interface = \"{iface}\"");
        if let Some(s) = service {
            let _ = write!(attrs, ", default_service = \"{s}\"");
        }
        if let Some(p) = path {
            let _ = write!(attrs, ", default_path = \"{p}\"");
        }
        let module = snake(name);
        let _ = writeln!(
            out,
            "\n/// libvirt-dbus's `{iface}` as `{name}Proxy`, with its signal streams."
        );
        let _ = writeln!(out, "pub mod {module} {{");
        let _ = writeln!(
            out,
            "/// libvirt-dbus's `{iface}`, every member, generated from the table."
        );
        let _ = writeln!(out, "#[zbus::proxy({attrs})]\npub trait {name} {{");
        let mut seen = std::collections::BTreeSet::new();
        for m in members.iter().filter(|m| m.interface == *iface) {
            let rust = snake(&m.name);
            assert!(
                seen.insert((rust.clone(), m.kind_name() == "signal")),
                "{iface}.{}: two members map to `{rust}`",
                m.name
            );
            member(&mut out, m);
        }
        out.push_str("}\n}\n");
        let _ = writeln!(out, "pub use {module}::{name}Proxy;");
    }
    let dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{dir}/libvirt_dbus.rs"), out).expect("write the generated proxies");
}
