//! libvirt-dbus's wire contract as data: `api/libvirt-dbus.tsv` (the reference) and
//! `api/additions.tsv` (what the daemons serve beyond it, each with its reason), parsed
//! into members. The build script generates the client proxies from it and the
//! conformance test compares every daemon's introspection with it. Plain std only, as
//! the build script includes this file too.

/// The reference table, compiled in so tests and tools stand alone.
pub const LIBVIRT_DBUS: &str = include_str!("../api/libvirt-dbus.tsv");
/// The members the daemons add, with a one-line reason each.
pub const ADDITIONS: &str = include_str!("../api/additions.tsv");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    /// A D-Bus signature, e.g. `(ii)`.
    pub ty: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Method {
        ins: Vec<Arg>,
        outs: Vec<Arg>,
    },
    Property {
        ty: String,
        writable: bool,
        emits: String,
    },
    Signal {
        args: Vec<Arg>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub interface: String,
    pub name: String,
    pub kind: Kind,
}

impl Member {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Method { .. } => "method",
            Kind::Property { .. } => "property",
            Kind::Signal { .. } => "signal",
        }
    }
}

fn args(field: &str) -> Result<Vec<Arg>, String> {
    if field == "-" || field.is_empty() {
        return Ok(Vec::new());
    }
    field
        .split(' ')
        .map(|a| {
            let (name, ty) = a
                .split_once(':')
                .ok_or(format!("argument {a:?} lacks a type"))?;
            Ok(Arg {
                name: name.to_string(),
                ty: ty.to_string(),
            })
        })
        .collect()
}

/// Parses the table format: `interface kind member ins|type|args outs|access [emits]`,
/// tab-separated, `#` comments. A line of the additions file ends in a reason.
pub fn parse(text: &str) -> Result<Vec<Member>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if f.len() < 5 {
            return Err(bad("fewer than five fields"));
        }
        let kind = match f[1] {
            "method" => Kind::Method {
                ins: args(f[3]).map_err(|e| bad(&e))?,
                outs: args(f[4]).map_err(|e| bad(&e))?,
            },
            "property" => Kind::Property {
                ty: f[3].to_string(),
                writable: match f[4] {
                    "read" => false,
                    "readwrite" => true,
                    _ => return Err(bad("access is neither read nor readwrite")),
                },
                emits: f.get(5).unwrap_or(&"true").to_string(),
            },
            "signal" => Kind::Signal {
                args: args(f[3]).map_err(|e| bad(&e))?,
            },
            _ => return Err(bad("unknown kind")),
        };
        out.push(Member {
            interface: f[0].to_string(),
            name: f[2].to_string(),
            kind,
        });
    }
    Ok(out)
}

/// One line of the additions list: a member libvirt-dbus lacks, and why it is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    pub interface: String,
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// Parses `interface kind member reason`, tab-separated; every line needs a reason.
pub fn parse_additions(text: &str) -> Result<Vec<Addition>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        if f.len() < 4 || f[3].trim().is_empty() {
            return Err(format!(
                "line {}: needs interface, kind, member and a reason: {line:?}",
                n + 1
            ));
        }
        out.push(Addition {
            interface: f[0].to_string(),
            kind: f[1].to_string(),
            name: f[2].to_string(),
            reason: f[3].trim().to_string(),
        });
    }
    Ok(out)
}

/// Splits a signature into its complete types: `sa{sv}(ii)` -> `s`, `a{sv}`, `(ii)`.
pub fn split(sig: &str) -> Vec<&str> {
    let b = sig.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] == b'a' {
            i += 1;
        }
        if i < b.len() && (b[i] == b'(' || b[i] == b'{') {
            let mut depth = 0;
            while i < b.len() {
                match b[i] {
                    b'(' | b'{' => depth += 1,
                    b')' | b'}' => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
        } else {
            i += 1;
        }
        out.push(&sig[start..i.min(b.len())]);
    }
    out
}

#[cfg(test)]
mod tests {
    /// The first five columns of every member line, as a sorted list.
    fn members(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split('\t').take(5).collect::<Vec<_>>().join("\t"))
            .collect();
        v.sort();
        v
    }

    /// The repository's table is the shared reference, member by member and type by
    /// type, plus its own EmitsChangedSignal column.
    #[test]
    fn the_table_is_the_shared_reference() {
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/api/libvirt-dbus-signatures.tsv");
        let Ok(reference) = std::fs::read_to_string(&shared) else {
            // The reference lives beside the repository (as in CI), not in it; a lone
            // clone checks against its own copy only.
            eprintln!("{} not found: the copy is not compared", shared.display());
            return;
        };
        let ours = members(super::LIBVIRT_DBUS);
        let theirs = members(&reference);
        assert_eq!(
            theirs.len(),
            260,
            "the reference has libvirt-dbus's 260 members"
        );
        let only_ours: Vec<_> = ours.iter().filter(|m| !theirs.contains(m)).collect();
        let only_theirs: Vec<_> = theirs.iter().filter(|m| !ours.contains(m)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "common/api/libvirt-dbus.tsv differs from {}:\nonly here: {only_ours:#?}\nonly there: {only_theirs:#?}",
            shared.display()
        );
    }
}
