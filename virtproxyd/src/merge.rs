//! Answers made of several daemons' answers: the introspection of the nodes every
//! daemon serves part of (`/` down to `/org/libvirt/QEMU`), and `Properties.GetAll`
//! replies in libvirt-dbus's shape (every value a variant inside a variant).

use std::collections::{BTreeMap, HashMap};

use zbus::zvariant::{OwnedValue, Value};

const DOCTYPE: &str = "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n";

/// One interface as the daemons describe it: its members (and annotations) in first-seen
/// order, each the element's own text, keyed by element and name so a member two
/// daemons serve (the shared Connect properties) appears once.
#[derive(Default)]
struct Interface {
    order: Vec<(String, String)>,
    text: HashMap<(String, String), String>,
}

/// Merges introspection documents of one path: every interface once with the members of
/// all, every child node once. The first document's text wins for a member several
/// serve (they are the same member; the wire contract test checks each daemon's).
pub fn introspection(docs: &[String]) -> Result<String, roxmltree::Error> {
    let mut interfaces: Vec<(String, Interface)> = Vec::new();
    let mut children: Vec<String> = Vec::new();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    for doc in docs {
        let parsed = roxmltree::Document::parse_with_options(doc, opts)?;
        for node in parsed.root_element().children().filter(|n| n.is_element()) {
            let name = node.attribute("name").unwrap_or_default().to_owned();
            match node.tag_name().name() {
                "interface" => {
                    let at = match interfaces.iter().position(|(n, _)| *n == name) {
                        Some(i) => i,
                        None => {
                            interfaces.push((name, Interface::default()));
                            interfaces.len() - 1
                        }
                    };
                    add_members(&mut interfaces[at].1, doc, node);
                }
                "node" if !children.contains(&name) => children.push(name),
                _ => {}
            }
        }
    }
    children.sort();
    let mut out = String::from(DOCTYPE);
    out.push_str("<node>\n");
    for (name, iface) in &interfaces {
        out.push_str(&format!(" <interface name=\"{}\">\n", escape(name)));
        for key in &iface.order {
            out.push_str("  ");
            out.push_str(&iface.text[key]);
            out.push('\n');
        }
        out.push_str(" </interface>\n");
    }
    for c in &children {
        out.push_str(&format!(" <node name=\"{}\"/>\n", escape(c)));
    }
    out.push_str("</node>\n");
    Ok(out)
}

fn add_members(iface: &mut Interface, doc: &str, node: roxmltree::Node<'_, '_>) {
    for m in node.children().filter(|n| n.is_element()) {
        let key = (
            m.tag_name().name().to_owned(),
            m.attribute("name").unwrap_or_default().to_owned(),
        );
        if !iface.text.contains_key(&key) {
            iface.order.push(key.clone());
            iface.text.insert(key, doc[m.range()].to_owned());
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

/// `GetAll`'s dictionaries merged (the first daemon's value wins a name several serve),
/// each value wrapped once more: libvirt-dbus's GetAll adds a variant around each
/// property's variant (src/gdbus.c), and clients written for it (cockpit-machines)
/// unwrap twice.
pub fn double_wrapped(dicts: Vec<HashMap<String, OwnedValue>>) -> BTreeMap<String, Value<'static>> {
    let mut out: BTreeMap<String, Value<'static>> = BTreeMap::new();
    for dict in dicts {
        for (k, v) in dict {
            out.entry(k)
                .or_insert_with(|| Value::Value(Box::new(Value::from(v))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.libvirt.Connect">
    <method name="ListDomains"><arg name="flags" type="u" direction="in"/><arg type="ao" direction="out"/></method>
    <property name="Hostname" type="s" access="read"/>
    <signal name="DomainEvent"><arg name="domain" type="o"/></signal>
  </interface>
  <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>
  <node name="domain"/>
</node>"#;
    const NET: &str = r#"<node>
  <interface name="org.libvirt.Connect">
    <method name="ListNetworks"><arg name="flags" type="u" direction="in"/><arg type="ao" direction="out"/></method>
    <property name="Hostname" type="s" access="read"/>
  </interface>
  <node name="network"/>
  <node name="domain"/>
</node>"#;

    #[test]
    fn members_and_children_of_all_once_each() {
        let xml = introspection(&[QEMU.to_owned(), NET.to_owned()]).unwrap();
        for want in ["ListDomains", "ListNetworks", "DomainEvent", "Ping"] {
            assert!(xml.contains(want), "{want} missing:\n{xml}");
        }
        assert_eq!(xml.matches("name=\"Hostname\"").count(), 1, "{xml}");
        assert_eq!(xml.matches("<node name=\"domain\"/>").count(), 1, "{xml}");
        assert!(xml.contains("<node name=\"network\"/>"), "{xml}");
        assert_eq!(
            xml.matches("<interface name=\"org.libvirt.Connect\">")
                .count(),
            1
        );
        // The result is itself a document the same reader takes.
        introspection(&[xml]).unwrap();
    }

    #[test]
    fn broken_introspection_is_an_error_not_a_panic() {
        assert!(introspection(&["<node><interface".to_owned()]).is_err());
    }

    #[test]
    fn getall_values_are_wrapped_twice_and_the_first_wins() {
        let a = HashMap::from([(
            "Hostname".to_owned(),
            OwnedValue::try_from(Value::from("qemu-host")).unwrap(),
        )]);
        let b = HashMap::from([
            (
                "Hostname".to_owned(),
                OwnedValue::try_from(Value::from("other")).unwrap(),
            ),
            ("Version".to_owned(), OwnedValue::from(7u64)),
        ]);
        let m = double_wrapped(vec![a, b]);
        // In an a{sv} this value is the `v`, so on the wire: variant(variant(s)).
        assert_eq!(
            m["Hostname"],
            Value::Value(Box::new(Value::from("qemu-host")))
        );
        assert!(matches!(&m["Version"], Value::Value(inner) if **inner == Value::U64(7)));
    }
}
