//! The wire-contract check: what a daemon's object says in its introspection against
//! libvirt-dbus's table (`api/libvirt-dbus.tsv`) and the additions list. Every member
//! libvirt-dbus defines must match it type by type (methods argument by argument in
//! both directions, properties with their access and EmitsChangedSignal, signals);
//! every other member must be on the additions list.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context as _};

use crate::contract::{self, Addition, Arg, Kind, Member};

pub use crate::wire::body_signature as wire_signature;

const EMITS: &str = "org.freedesktop.DBus.Property.EmitsChangedSignal";

/// What one interface of one object serves, as read from its introspection.
pub fn parse_introspection(xml: &str, interface: &str) -> anyhow::Result<Vec<Member>> {
    // Introspection carries the freedesktop DOCTYPE; nothing in it is resolved.
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(xml, opts).context("introspection is not XML")?;
    let iface = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("interface") && n.attribute("name") == Some(interface))
        .ok_or_else(|| anyhow!("the object does not serve {interface}"))?;
    let annotation = |n: roxmltree::Node| {
        n.children()
            .find(|a| a.has_tag_name("annotation") && a.attribute("name") == Some(EMITS))
            .and_then(|a| a.attribute("value"))
            .map(str::to_string)
    };
    let default_emits = annotation(iface).unwrap_or_else(|| "true".into());
    let args = |n: roxmltree::Node, direction: Option<&str>| -> Vec<Arg> {
        n.children()
            .filter(|a| a.has_tag_name("arg"))
            .filter(|a| direction.is_none_or(|d| a.attribute("direction").unwrap_or("in") == d))
            .map(|a| Arg {
                name: a.attribute("name").unwrap_or("").to_string(),
                ty: a.attribute("type").unwrap_or("").to_string(),
            })
            .collect()
    };
    let mut out = Vec::new();
    for n in iface.children().filter(|n| n.is_element()) {
        let Some(name) = n.attribute("name") else {
            continue;
        };
        let kind = match n.tag_name().name() {
            "method" => Kind::Method {
                ins: args(n, Some("in")),
                outs: args(n, Some("out")),
            },
            "property" => Kind::Property {
                ty: n.attribute("type").unwrap_or("").to_string(),
                writable: n.attribute("access") == Some("readwrite"),
                emits: annotation(n).unwrap_or_else(|| default_emits.clone()),
            },
            "signal" => Kind::Signal {
                args: args(n, None),
            },
            _ => continue,
        };
        out.push(Member {
            interface: interface.to_string(),
            name: name.to_string(),
            kind,
        });
    }
    Ok(out)
}

fn types(args: &[Arg]) -> Vec<&str> {
    args.iter().map(|a| a.ty.as_str()).collect()
}

/// Why `ours` differs from libvirt-dbus's `theirs`, if it does.
fn difference(ours: &Member, theirs: &Member) -> Option<String> {
    match (&ours.kind, &theirs.kind) {
        (Kind::Method { ins: a, outs: b }, Kind::Method { ins: c, outs: d }) => {
            (types(a) != types(c) || types(b) != types(d)).then(|| {
                format!(
                    "method takes {:?} and returns {:?}; libvirt-dbus: takes {:?}, returns {:?}",
                    types(a),
                    types(b),
                    types(c),
                    types(d)
                )
            })
        }
        (
            Kind::Property {
                ty: a,
                writable: w1,
                emits: e1,
            },
            Kind::Property {
                ty: b,
                writable: w2,
                emits: e2,
            },
        ) => (a != b || w1 != w2 || e1 != e2).then(|| {
            format!(
                "property {a} writable={w1} EmitsChangedSignal={e1}; \
                 libvirt-dbus: {b} writable={w2} EmitsChangedSignal={e2}"
            )
        }),
        (Kind::Signal { args: a }, Kind::Signal { args: b }) => (types(a) != types(b)).then(|| {
            format!(
                "signal carries {:?}; libvirt-dbus: {:?}",
                types(a),
                types(b)
            )
        }),
        _ => Some(format!(
            "is a {}; libvirt-dbus has a {}",
            ours.kind_name(),
            theirs.kind_name()
        )),
    }
}

/// How much of libvirt-dbus's interface an object serves.
#[derive(Debug, Default)]
pub struct Coverage {
    pub interface: String,
    pub served: usize,
    pub defined: usize,
    pub additions: usize,
}

/// Compares what `xml` (an object's introspection) says of `interface` with the table.
/// Fails naming every member that differs from libvirt-dbus or is neither libvirt-dbus's
/// nor on the additions list.
pub fn check(xml: &str, interface: &str) -> anyhow::Result<Coverage> {
    let reference = contract::parse(contract::LIBVIRT_DBUS).map_err(|e| anyhow!(e))?;
    let additions = contract::parse_additions(contract::ADDITIONS).map_err(|e| anyhow!(e))?;
    let theirs: BTreeMap<(&str, &str), &Member> = reference
        .iter()
        .filter(|m| m.interface == interface)
        .map(|m| ((m.kind_name(), m.name.as_str()), m))
        .collect();
    let allowed = |m: &Member| {
        additions.iter().any(|a: &Addition| {
            a.interface == interface && a.kind == m.kind_name() && a.name == m.name
        })
    };
    let ours = parse_introspection(xml, interface)?;
    let mut problems = Vec::new();
    let mut cov = Coverage {
        interface: interface.to_string(),
        defined: theirs.len(),
        ..Coverage::default()
    };
    for m in &ours {
        match theirs.get(&(m.kind_name(), m.name.as_str())) {
            Some(t) => {
                cov.served += 1;
                if let Some(why) = difference(m, t) {
                    problems.push(format!("{interface}.{}: {why}", m.name));
                }
            }
            None if allowed(m) => cov.additions += 1,
            None => problems.push(format!(
                "{interface}.{} ({}) is not libvirt-dbus's and not in api/additions.tsv",
                m.name,
                m.kind_name()
            )),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} differences from the wire contract:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(cov)
}

/// Introspects `path` at `destination` and checks each of `interfaces` (see [`check`]).
pub async fn check_object(
    conn: &zbus::Connection,
    destination: &str,
    path: &str,
    interfaces: &[&str],
) -> anyhow::Result<Vec<Coverage>> {
    let proxy = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(destination.to_string())?
        .path(path.to_string())?
        .build()
        .await?;
    let xml = proxy.introspect().await?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for i in interfaces {
        match check(&xml, i) {
            Ok(c) => {
                eprintln!(
                    "{i}: {} of libvirt-dbus's {} members served, {} additions",
                    c.served, c.defined, c.additions
                );
                out.push(c)
            }
            Err(e) => errors.push(format!("{path}: {e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_GET_STATE: &str = r#"<node><interface name="org.libvirt.Domain">
        <method name="GetState"><arg name="flags" type="u" direction="in"/>
        <arg type="i" direction="out"/><arg type="i" direction="out"/></method>
        </interface></node>"#;

    #[test]
    fn two_values_are_not_one_struct() {
        let e = check(OLD_GET_STATE, "org.libvirt.Domain").unwrap_err();
        assert!(e.to_string().contains("GetState"), "{e}");
        let fixed = OLD_GET_STATE.replace(
            r#"<arg type="i" direction="out"/><arg type="i" direction="out"/>"#,
            r#"<arg name="state" type="(ii)" direction="out"/>"#,
        );
        assert_eq!(check(&fixed, "org.libvirt.Domain").unwrap().served, 1);
    }

    #[test]
    fn unknown_members_need_a_reason() {
        let xml = r#"<node><interface name="org.libvirt.Domain">
            <method name="MakeCoffee"/></interface></node>"#;
        let e = check(xml, "org.libvirt.Domain").unwrap_err();
        assert!(e.to_string().contains("MakeCoffee"), "{e}");
    }

    #[test]
    fn emits_changed_signal_is_part_of_the_contract() {
        let xml = r#"<node><interface name="org.libvirt.Network">
            <property name="Name" type="s" access="read"/></interface></node>"#;
        let e = check(xml, "org.libvirt.Network").unwrap_err();
        assert!(e.to_string().contains("EmitsChangedSignal=true"), "{e}");
    }

    #[test]
    fn the_tables_parse_and_every_addition_has_a_reason() {
        let reference = contract::parse(contract::LIBVIRT_DBUS).unwrap();
        assert!(reference.len() > 250);
        contract::parse_additions(contract::ADDITIONS).unwrap();
    }
}
