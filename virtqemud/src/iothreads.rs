//! I/O threads of a definition (`<iothreads>` count and `<iothreadids>`), as libvirt
//! numbers them: the listed ids, then the lowest free ids up to the count.

use common::xml::{Element, Node};

use crate::xml::Domain;

fn count(dom: &Domain) -> u32 {
    dom.other
        .iter()
        .find(|e| e.name == "iothreads")
        .and_then(|e| e.text().trim().parse().ok())
        .unwrap_or(0)
}

fn listed(dom: &Domain) -> Vec<u32> {
    dom.other
        .iter()
        .filter(|e| e.name == "iothreadids")
        .flat_map(|e| e.children_named("iothread"))
        .filter_map(|t| t.get_attr("id")?.parse().ok())
        .collect()
}

/// Every I/O thread id of `dom`, ascending.
pub fn ids(dom: &Domain) -> Vec<u32> {
    let mut ids = listed(dom);
    let mut next = 1;
    while (ids.len() as u32) < count(dom) {
        if !ids.contains(&next) {
            ids.push(next);
        }
        next += 1;
    }
    ids.sort_unstable();
    ids
}

/// Sets the I/O threads of `dom` to `ids`: all listed in `<iothreadids>`, the count
/// in `<iothreads>` (both gone when there are none).
pub fn set(dom: &mut Domain, ids: &[u32]) {
    let old: Vec<Element> = dom
        .other
        .iter()
        .filter(|e| e.name == "iothreadids")
        .flat_map(|e| e.children_named("iothread").cloned())
        .collect();
    dom.other
        .retain(|e| e.name != "iothreads" && e.name != "iothreadids");
    if ids.is_empty() {
        return;
    }
    dom.other
        .push(Element::with_text("iothreads", ids.len().to_string()));
    let mut list = Element::new("iothreadids");
    for id in ids {
        // An entry the definition had keeps its settings (pool sizes, polling).
        let el = old
            .iter()
            .find(|t| t.get_attr("id") == Some(id.to_string().as_str()))
            .cloned()
            .unwrap_or_else(|| Element::new("iothread").attr("id", id));
        list.children.push(Node::Element(el));
    }
    dom.other.push(list);
}

/// The CPU list `<iothreadpin>` gives I/O thread `id`, else `<vcpu cpuset>`.
pub fn pin(dom: &Domain, id: u32) -> Option<String> {
    dom.other
        .iter()
        .find(|e| e.name == "cputune")
        .and_then(|t| {
            t.children_named("iothreadpin")
                .find(|p| p.get_attr("iothread") == Some(id.to_string().as_str()))
                .and_then(|p| p.get_attr("cpuset").map(str::to_owned))
        })
        .or_else(|| dom.vcpu_cpuset.clone())
}

/// Sets or removes `<cputune><iothreadpin iothread cpuset>`.
pub fn set_pin(dom: &mut Domain, id: u32, cpuset: Option<&str>) {
    if !dom.other.iter().any(|e| e.name == "cputune") {
        dom.other.push(Element::new("cputune"));
    }
    let Some(tune) = dom.other.iter_mut().find(|e| e.name == "cputune") else {
        return;
    };
    let key = id.to_string();
    tune.children.retain(|n| {
        !matches!(n, Node::Element(e)
            if e.name == "iothreadpin" && e.get_attr("iothread") == Some(key.as_str()))
    });
    if let Some(set) = cpuset {
        tune.children.push(Node::Element(
            Element::new("iothreadpin")
                .attr("iothread", id)
                .attr("cpuset", set),
        ));
    }
    if tune.children.is_empty() {
        dom.other.retain(|e| e.name != "cputune");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(extra: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='qemu'><name>io</name><memory>65536</memory>{extra}\
             <os><type>hvm</type></os></domain>"
        ))
        .expect("domain")
    }

    #[test]
    fn ids_as_libvirt_numbers_them() {
        let d = dom("<iothreads>3</iothreads><iothreadids><iothread id='2' thread_pool_max='4'/></iothreadids>");
        assert_eq!(ids(&d), [1, 2, 3]);
        let mut d = d;
        set(&mut d, &[1, 2, 3, 7]);
        assert_eq!(ids(&d), [1, 2, 3, 7]);
        let kept = d
            .other
            .iter()
            .find(|e| e.name == "iothreadids")
            .and_then(|l| {
                l.children_named("iothread")
                    .find(|t| t.get_attr("id") == Some("2"))
            })
            .and_then(|t| t.get_attr("thread_pool_max").map(str::to_owned));
        assert_eq!(kept.as_deref(), Some("4"));
        set(&mut d, &[]);
        assert!(ids(&d).is_empty());
        assert!(d.other.iter().all(|e| e.name != "iothreads"));
    }

    #[test]
    fn pins_in_cputune() {
        let mut d = dom("<vcpu cpuset='1'>1</vcpu>");
        assert_eq!(pin(&d, 1).as_deref(), Some("1"));
        set_pin(&mut d, 1, Some("0"));
        assert_eq!(pin(&d, 1).as_deref(), Some("0"));
        set_pin(&mut d, 1, None);
        assert!(d.other.iter().all(|e| e.name != "cputune"));
    }
}
