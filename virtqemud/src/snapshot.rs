//! Domain snapshots as libvirt's QEMU driver makes internal ones: the disks' state
//! inside their qcow2 images (and, for a running domain, the memory and device state
//! beside it), named by the snapshot; here their `<domainsnapshot>` XML and the tree
//! they form (parent, children, the current one).

use common::error::{ErrorCode, VirError};
use common::xml::Element;

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub description: Option<String>,
    /// The domain's state when taken: `running`, `paused` or `shutoff`.
    pub state: String,
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub creation_time: i64,
    /// The memory and device state is in the images too (the domain ran).
    pub memory: bool,
    /// The disks (targets) whose images hold it.
    pub disks: Vec<String>,
    /// The domain's definition when taken (with secrets: for reverting).
    pub domain_xml: String,
}

/// What a client asks for in `SnapshotCreateXML`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `<memory snapshot='no'>` of a running domain: disks only (refused: that is an
    /// external snapshot in libvirt's terms).
    pub no_memory: bool,
    /// Targets given `snapshot='no'`.
    pub skip: Vec<String>,
}

fn invalid(detail: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::XmlError, detail)
}

fn unsupported(detail: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::ConfigUnsupported, detail)
}

/// A snapshot name: what a file name and a path segment can carry.
pub fn check_name(name: &str) -> Result<(), VirError> {
    if name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(VirError::invalid_arg(format!(
            "invalid snapshot name '{}'",
            name.escape_debug()
        )));
    }
    Ok(())
}

impl Request {
    pub fn parse(xml: &str) -> Result<Request, VirError> {
        let root = common::xml::parse_root(xml, "domainsnapshot")
            .map_err(|e| invalid(format!("domain snapshot: {e}")))?;
        let name = root.child_text("name").map(|n| n.trim().to_owned());
        if let Some(n) = &name {
            check_name(n)?;
        }
        let memory = root.first("memory").and_then(|m| m.get_attr("snapshot"));
        let no_memory = match memory {
            None | Some("internal") => false,
            Some("no") => true,
            Some(m @ "external") => {
                return Err(unsupported(format!(
                    "<memory snapshot='{m}'>: only internal snapshots are supported here"
                )))
            }
            Some(m) => return Err(invalid(format!("unknown <memory snapshot='{m}'>"))),
        };
        if root
            .first("memory")
            .and_then(|m| m.get_attr("file"))
            .is_some()
        {
            return Err(unsupported(
                "<memory file>: only internal snapshots are supported here",
            ));
        }
        let mut skip = Vec::new();
        for d in root
            .first("disks")
            .into_iter()
            .flat_map(|d| d.children_named("disk"))
        {
            let target = d.req_attr("name").map_err(|e| invalid(e.to_string()))?;
            match d.get_attr("snapshot") {
                None | Some("internal") => {
                    if d.first("source").is_some() {
                        return Err(unsupported(format!(
                            "<disk name='{target}'> with a <source>: only internal snapshots are supported here"
                        )));
                    }
                }
                Some("no") => skip.push(target.to_owned()),
                Some(s) => {
                    return Err(unsupported(format!(
                        "<disk name='{target}' snapshot='{s}'>: only internal snapshots are supported here"
                    )))
                }
            }
        }
        Ok(Request {
            name,
            description: root.child_text("description"),
            no_memory,
            skip,
        })
    }
}

impl Snapshot {
    /// libvirt's `<domainsnapshot>`; with `secure` the domain keeps its passwords.
    pub fn to_element(&self, domain: Option<Element>) -> Element {
        let mut disks = Element::new("disks");
        for d in &self.disks {
            disks.push(
                Element::new("disk")
                    .attr("name", d)
                    .attr("snapshot", "internal"),
            );
        }
        Element::new("domainsnapshot")
            .child(Element::with_text("name", &self.name))
            .child_opt(
                self.description
                    .as_ref()
                    .map(|d| Element::with_text("description", d)),
            )
            .child(Element::with_text("state", &self.state))
            .child_opt(
                self.parent
                    .as_ref()
                    .map(|p| Element::new("parent").child(Element::with_text("name", p))),
            )
            .child(Element::with_text(
                "creationTime",
                self.creation_time.to_string(),
            ))
            .child(
                Element::new("memory")
                    .attr("snapshot", if self.memory { "internal" } else { "no" }),
            )
            .child(disks)
            .child_opt(domain)
    }

    /// What the daemon keeps on disk: the public XML with the full domain.
    pub fn to_file(&self) -> Result<String, VirError> {
        let domain = common::xml::parse(&self.domain_xml)
            .map_err(|e| VirError::internal(format!("snapshot domain XML: {e}")))?;
        Ok(self.to_element(Some(domain)).to_xml())
    }

    /// Reads back what [`Snapshot::to_file`] wrote.
    pub fn from_file(text: &str) -> Result<Snapshot, VirError> {
        let root = common::xml::parse_root(text, "domainsnapshot")
            .map_err(|e| invalid(format!("snapshot file: {e}")))?;
        let text_of = |n: &str| root.child_text(n);
        let name = text_of("name").ok_or_else(|| invalid("snapshot file without <name>"))?;
        check_name(&name)?;
        let domain = root
            .first("domain")
            .ok_or_else(|| invalid("snapshot file without <domain>"))?;
        Ok(Snapshot {
            name,
            description: text_of("description"),
            state: text_of("state").unwrap_or_else(|| "shutoff".into()),
            parent: root.first("parent").and_then(|p| p.child_text("name")),
            creation_time: text_of("creationTime")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            memory: root.first("memory").and_then(|m| m.get_attr("snapshot")) == Some("internal"),
            disks: root
                .first("disks")
                .into_iter()
                .flat_map(|d| d.children_named("disk"))
                .filter_map(|d| d.get_attr("name").map(str::to_owned))
                .collect(),
            domain_xml: domain.to_xml(),
        })
    }
}

/// The snapshots of one domain and which is current.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub snapshots: Vec<Snapshot>,
    pub current: Option<String>,
}

bitflags::bitflags! {
    /// `virDomainSnapshotListFlags` (the same for children: bit 0 is DESCENDANTS there).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const ROOTS = 1;
        const METADATA = 2;
        const LEAVES = 4;
        const NO_LEAVES = 8;
        const NO_METADATA = 16;
        const INACTIVE = 32;
        const ACTIVE = 64;
        const DISK_ONLY = 128;
        const INTERNAL = 256;
        const EXTERNAL = 512;
        const TOPOLOGICAL = 1024;
    }
}

impl Tree {
    pub fn get(&self, name: &str) -> Result<&Snapshot, VirError> {
        self.snapshots
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::NoDomainSnapshot,
                    format!("no domain snapshot with matching name '{name}'"),
                )
            })
    }

    pub fn children(&self, name: &str) -> impl Iterator<Item = &Snapshot> {
        let name = name.to_owned();
        self.snapshots
            .iter()
            .filter(move |s| s.parent.as_deref() == Some(name.as_str()))
    }

    /// `name` and everything below it, parents before children.
    pub fn subtree(&self, name: &str) -> Vec<String> {
        let mut out = vec![name.to_owned()];
        let mut i = 0;
        while i < out.len() {
            let kids: Vec<String> = self.children(&out[i]).map(|s| s.name.clone()).collect();
            out.extend(kids);
            i += 1;
        }
        out
    }

    /// The snapshots `flags` select among `among` (all, or one's children/descendants).
    pub fn select(&self, among: Option<(&str, bool)>, flags: ListFlags) -> Vec<&Snapshot> {
        let pool: Vec<&Snapshot> = match among {
            None if flags.contains(ListFlags::ROOTS) => self
                .snapshots
                .iter()
                .filter(|s| s.parent.is_none())
                .collect(),
            None => self.topological(),
            Some((name, descendants)) => {
                if descendants {
                    self.subtree(name)
                        .iter()
                        .skip(1)
                        .filter_map(|n| self.get(n).ok())
                        .collect()
                } else {
                    self.children(name).collect()
                }
            }
        };
        let pick = |yes: ListFlags, no: ListFlags, is: bool| {
            let (y, n) = (flags.contains(yes), flags.contains(no));
            !(y || n) || (y && is) || (n && !is)
        };
        pool.into_iter()
            .filter(|s| {
                let leaf = self.children(&s.name).next().is_none();
                let state_ok = !flags
                    .intersects(ListFlags::INACTIVE | ListFlags::ACTIVE | ListFlags::DISK_ONLY)
                    || (flags.contains(ListFlags::INACTIVE) && s.state == "shutoff")
                    || (flags.contains(ListFlags::ACTIVE) && s.state != "shutoff");
                pick(ListFlags::LEAVES, ListFlags::NO_LEAVES, leaf)
                    // All of them have metadata, and all are internal.
                    && pick(ListFlags::METADATA, ListFlags::NO_METADATA, true)
                    && pick(ListFlags::INTERNAL, ListFlags::EXTERNAL, true)
                    && state_ok
            })
            .collect()
    }

    /// Parents before their children, otherwise by creation.
    fn topological(&self) -> Vec<&Snapshot> {
        let mut roots: Vec<&Snapshot> = self
            .snapshots
            .iter()
            .filter(|s| s.parent.is_none())
            .collect();
        roots.sort_by_key(|s| s.creation_time);
        roots
            .iter()
            .flat_map(|r| self.subtree(&r.name))
            .filter_map(|n| self.get(&n).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, parent: Option<&str>, t: i64) -> Snapshot {
        Snapshot {
            name: name.into(),
            description: None,
            state: "running".into(),
            parent: parent.map(str::to_owned),
            creation_time: t,
            memory: true,
            disks: vec!["vda".into()],
            domain_xml: "<domain type='qemu'><name>d</name></domain>".into(),
        }
    }

    #[test]
    fn requests_parse_and_refuse_external() {
        let r = Request::parse(
            "<domainsnapshot><name>s1</name><description>before upgrade</description>\
             <disks><disk name='vdb' snapshot='no'/></disks></domainsnapshot>",
        )
        .expect("request");
        assert_eq!(r.name.as_deref(), Some("s1"));
        assert_eq!(r.skip, ["vdb"]);
        for bad in [
            "<domainsnapshot><memory snapshot='external' file='/x'/></domainsnapshot>",
            "<domainsnapshot><disks><disk name='vda' snapshot='external'/></disks></domainsnapshot>",
            "<domainsnapshot><name>a/b</name></domainsnapshot>",
            "<domainsnapshot><name>.hidden</name></domainsnapshot>",
            "<snapshot/>",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_round_trip() {
        let s = Snapshot {
            description: Some("note".into()),
            ..snap("s1", Some("s0"), 1700000000)
        };
        let back = Snapshot::from_file(&s.to_file().expect("file")).expect("read");
        assert_eq!(back.name, s.name);
        assert_eq!(back.parent, s.parent);
        assert_eq!(back.description, s.description);
        assert_eq!(back.creation_time, s.creation_time);
        assert!(back.memory);
        assert_eq!(back.disks, ["vda"]);
        assert!(back.domain_xml.contains("<name>d</name>"));
    }

    #[test]
    fn the_tree_answers_lists() {
        let t = Tree {
            snapshots: vec![
                snap("a", None, 1),
                snap("b", Some("a"), 2),
                snap("c", Some("b"), 3),
                snap("d", Some("a"), 4),
            ],
            current: Some("c".into()),
        };
        let names = |v: Vec<&Snapshot>| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(t.select(None, ListFlags::empty())),
            ["a", "b", "d", "c"]
        );
        assert_eq!(names(t.select(None, ListFlags::ROOTS)), ["a"]);
        assert_eq!(names(t.select(None, ListFlags::LEAVES)), ["d", "c"]);
        assert_eq!(
            names(t.select(Some(("a", false)), ListFlags::empty())),
            ["b", "d"]
        );
        assert_eq!(
            names(t.select(Some(("a", true)), ListFlags::empty())),
            ["b", "d", "c"]
        );
        assert_eq!(t.subtree("b"), ["b", "c"]);
        assert!(t.get("zz").is_err());
    }
}
