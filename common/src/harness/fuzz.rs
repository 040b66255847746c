//! Malformed arguments for every D-Bus method an object serves: the method list comes
//! from the object's own introspection, the arguments are generated for each in-argument
//! type (hostile strings and XML, edge numbers, odd paths, nested containers), plus calls
//! whose body does not match the signature at all. A daemon must answer each with a
//! reply or an error, and stay up; `fuzz_object` reports how the calls ended.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use zbus::zvariant::{
    Array, Dict, ObjectPath, OwnedValue, Signature, Structure, StructureBuilder, Value,
};

use super::contract::parse_introspection;
use crate::contract::{split, Kind};
use crate::mutate::{mutate, Rng};

/// Strings that have broken parsers, paths and command lines elsewhere.
const STRINGS: &[&str] = &[
    "",
    " ",
    "x",
    "../../../../etc/passwd",
    "/",
    "a,b=c,id=evil",
    "'\"`$(id)`;|&",
    "\u{202e}\u{feff}é漢\u{1F600}",
    "-1",
    "0xffffffff",
    "<",
    "<domain",
    "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
    "00000000-0000-0000-0000-000000000000",
    "pci_0000_03_10_0",
    "52:54:00:00:00:01",
];

/// Documents the mutator starts from: one of each kind the daemons read.
const DOCUMENTS: &[&str] = &[
    "<domain type='qemu'><name>fz</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><source file='/nonexistent/fz.img'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
    "<network><name>fz</name><bridge name='vtfz0'/><ip address='10.99.0.1' prefix='24'><dhcp><range start='10.99.0.10' end='10.99.0.20'/></dhcp></ip></network>",
    "<networkport><owner><name>fz</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1ff</uuid></owner><mac address='52:54:00:7b:35:ff'/></networkport>",
    "<volume><name>fz.img</name><capacity unit='KiB'>4</capacity><target><format type='qcow2'/></target></volume>",
    "<device><name>fz</name><parent>computer</parent><capability type='mdev'><type id='nvidia-11'/></capability></device>",
];

/// A generator of argument values, from a fixed seed.
pub struct Gen {
    rng: Rng,
    /// Object paths worth aiming at (the daemon's own objects).
    pub paths: Vec<String>,
}

impl Gen {
    pub fn new(seed: u64, paths: Vec<String>) -> Gen {
        Gen {
            rng: Rng(seed | 1),
            paths,
        }
    }

    /// A hostile string; without NUL, which D-Bus strings cannot carry (the bus would
    /// drop the sender, not deliver it).
    fn string(&mut self) -> String {
        let s = self.any_string();
        if s.contains('\0') {
            s.replace('\0', "")
        } else {
            s
        }
    }

    fn any_string(&mut self) -> String {
        match self.rng.below(10) {
            0..=3 => STRINGS[self.rng.below(STRINGS.len())].to_string(),
            4..=7 => {
                let base = DOCUMENTS[self.rng.below(DOCUMENTS.len())];
                mutate(&mut self.rng, base, &[])
            }
            8 => {
                let n = 1 + self.rng.below(20_000);
                "<a>".repeat(n) + &"</a>".repeat(self.rng.below(n + 1))
            }
            _ => "A".repeat(self.rng.below(1 << 20)),
        }
    }

    fn number(&mut self) -> u64 {
        const EDGES: &[u64] = &[
            0,
            1,
            2,
            3,
            1 << 31,
            u32::MAX as u64,
            u64::MAX,
            i64::MAX as u64,
        ];
        match self.rng.below(4) {
            0 => 0,
            1 | 2 => EDGES[self.rng.below(EDGES.len())],
            _ => self.rng.next_u64() >> self.rng.below(64),
        }
    }

    fn path(&mut self) -> ObjectPath<'static> {
        let picked = match self.rng.below(3) {
            0 if !self.paths.is_empty() => self.paths[self.rng.below(self.paths.len())].clone(),
            1 => "/org/libvirt/QEMU/domain/_00000000_0000_0000_0000_000000000000".into(),
            _ => "/".into(),
        };
        ObjectPath::try_from(picked).unwrap_or_else(|_| ObjectPath::from_static_str_unchecked("/"))
    }

    /// A value of the single complete type `sig`.
    pub fn value(&mut self, sig: &str, depth: usize) -> anyhow::Result<Value<'static>> {
        let n = self.number();
        Ok(match sig {
            "y" => Value::U8(n as u8),
            "b" => Value::Bool(n & 1 == 1),
            "n" => Value::I16(n as i16),
            "q" => Value::U16(n as u16),
            "i" => Value::I32(n as i32),
            "u" => Value::U32(n as u32),
            "x" => Value::I64(n as i64),
            "t" => Value::U64(n),
            "d" => Value::F64(f64::from_bits(n)),
            "s" => Value::from(self.string()),
            "o" => Value::ObjectPath(self.path()),
            "g" => Value::Signature(sig_of("a{sv}")?),
            "v" => {
                let inner = ["s", "u", "b", "as", "a{sv}"][self.rng.below(5)];
                Value::Value(Box::new(self.value(inner, depth + 1)?))
            }
            s if s.starts_with("a{") => {
                let kv = split(&s[2..s.len() - 1]);
                let (k, v) = (kv[0], kv[1]);
                let mut d = Dict::new(&sig_of(k)?, &sig_of(v)?);
                for _ in 0..self.rng.below(if depth > 2 { 1 } else { 4 }) {
                    d.append(self.value(k, depth + 1)?, self.value(v, depth + 1)?)?;
                }
                Value::Dict(d)
            }
            s if s.starts_with('a') => {
                let elem = &s[1..];
                let mut a = Array::new(&sig_of(elem)?);
                for _ in 0..self.rng.below(if depth > 2 { 1 } else { 4 }) {
                    a.append(self.value(elem, depth + 1)?)?;
                }
                Value::Array(a)
            }
            s if s.starts_with('(') => Value::Structure(self.structure(&s[1..s.len() - 1], depth)?),
            other => bail!("no generator for signature {other:?}"),
        })
    }

    /// A body for arguments `ins`: like [`Gen::structure`], but a `flags` argument is
    /// mostly 0, so most calls get past the flag check to what lies behind it.
    pub fn arguments(
        &mut self,
        ins: &[crate::contract::Arg],
    ) -> anyhow::Result<Structure<'static>> {
        let mut b = StructureBuilder::new();
        for a in ins {
            let v = if a.name == "flags" && a.ty == "u" && self.rng.below(4) != 0 {
                Value::U32(0)
            } else {
                self.value(&a.ty, 1)?
            };
            b = b.append_field(v);
        }
        Ok(b.build()?)
    }

    /// Values for every type in `sig` (a list of complete types), as one message body.
    pub fn structure(&mut self, sig: &str, depth: usize) -> anyhow::Result<Structure<'static>> {
        let mut b = StructureBuilder::new();
        for t in split(sig) {
            b = b.append_field(self.value(t, depth + 1)?);
        }
        Ok(b.build()?)
    }
}

fn sig_of(s: &str) -> anyhow::Result<Signature> {
    Signature::try_from(s).map_err(|e| anyhow!("signature {s:?}: {e}"))
}

/// How the calls on one object ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub calls: usize,
    pub replies: usize,
    pub errors: usize,
    /// Calls that took longer than the per-call bound (the daemon still answered
    /// others meanwhile, or the run would have failed).
    pub slow: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.calls += o.calls;
        self.replies += o.replies;
        self.errors += o.errors;
        self.slow += o.slow;
    }
}

/// Methods that end the object they are called on (or, ManagedSave, its run).
const ENDS: &[&str] = &["Undefine", "Delete", "Destroy", "ManagedSave"];

/// Methods that would act on the machine outside the test's own folders and namespaces
/// even with made-up arguments: a running domain's Save and CoreDump write a file at
/// the path they are given, as root, and a made-up path may name any host file;
/// BlockCopy and BlockRebase (with COPY) create their destination image. Their
/// arguments are checked by their own tests (tests/save.rs, dump paths in settings.rs,
/// tests/blockjobs.rs).
const NEVER: &[&str] = &[
    "Save",
    "CoreDump",
    "CoreDumpWithFormat",
    "BlockCopy",
    "BlockRebase",
];

/// Calls every method `interface` serves at `path` of `destination` `per_method` times
/// with generated arguments, plus once with a body that does not match its signature,
/// and sets each writable property to a generated value. After each method the daemon
/// must still answer `alive` within 10 s; a call may take up to `per_call`.
pub async fn fuzz_object(
    conn: &zbus::Connection,
    destination: &str,
    path: &str,
    interface: &str,
    gen: &mut Gen,
    per_method: usize,
    per_call: Duration,
) -> anyhow::Result<Tally> {
    let xml = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(destination.to_string())?
        .path(path.to_string())?
        .build()
        .await?
        .introspect()
        .await?;
    let mut members = parse_introspection(&xml, interface)?;
    // What ends the object goes last, so every other method meets it alive.
    members.sort_by_key(|m| ENDS.contains(&m.name.as_str()));
    let mut tally = Tally::default();
    for m in &members {
        if NEVER.contains(&m.name.as_str()) {
            continue;
        }
        match &m.kind {
            Kind::Method { ins, .. } => {
                let sig: String = ins.iter().map(|a| a.ty.as_str()).collect();
                // File descriptors cannot be made up; those methods get the wrong body.
                let rounds = if sig.contains('h') { 0 } else { per_method };
                for _ in 0..rounds {
                    let body = if sig.is_empty() {
                        None
                    } else {
                        Some(gen.arguments(ins)?)
                    };
                    let target = (destination, path, interface, m.name.as_str());
                    tally += call(conn, target, body.as_ref(), per_call).await?;
                }
                let wrong = gen.structure(if sig == "s" { "u" } else { "s" }, 0)?;
                let target = (destination, path, interface, m.name.as_str());
                tally += call(conn, target, Some(&wrong), per_call).await?;
            }
            Kind::Property {
                ty, writable: true, ..
            } => {
                for _ in 0..per_method.min(5) {
                    let v = if gen.rng.below(2) == 0 {
                        gen.value(ty, 0)?
                    } else {
                        gen.value("s", 0)?
                    };
                    let body = StructureBuilder::new()
                        .add_field(interface.to_string())
                        .add_field(m.name.clone())
                        .append_field(Value::Value(Box::new(v)))
                        .build()?;
                    let target = (destination, path, "org.freedesktop.DBus.Properties", "Set");
                    tally += call(conn, target, Some(&body), per_call).await?;
                }
            }
            _ => {}
        }
        alive(conn, destination)
            .await
            .with_context(|| format!("after {interface}.{} on {path}", m.name))?;
    }
    Ok(tally)
}

/// One call: (destination, path, interface, member), its body (none: no arguments).
async fn call(
    conn: &zbus::Connection,
    (destination, path, interface, member): (&str, &str, &str, &str),
    body: Option<&Structure<'_>>,
    per_call: Duration,
) -> anyhow::Result<Tally> {
    let mut t = Tally {
        calls: 1,
        ..Tally::default()
    };
    if std::env::var_os("VIRT_FUZZ_TRACE").is_some() {
        let shown: String = format!("{body:?}").chars().take(300).collect();
        eprintln!("{interface}.{member} on {path}: {shown}");
    }
    // A structure cannot be empty: a method without arguments gets the empty body.
    let sent = async {
        match body {
            Some(b) => {
                conn.call_method(Some(destination), path, Some(interface), member, b)
                    .await
            }
            None => {
                conn.call_method(Some(destination), path, Some(interface), member, &())
                    .await
            }
        }
    };
    match tokio::time::timeout(per_call, sent).await {
        Ok(Ok(_)) => t.replies += 1,
        Ok(Err(zbus::Error::MethodError(..) | zbus::Error::FDO(_))) => t.errors += 1,
        Ok(Err(e)) => bail!("{interface}.{member} on {path}: no D-Bus reply or error: {e}"),
        Err(_) => {
            t.slow += 1;
            alive(conn, destination).await.with_context(|| {
                format!("{interface}.{member} on {path} took over {per_call:?}")
            })?;
        }
    }
    Ok(t)
}

/// The daemon answers a plain property read within 10 s.
pub async fn alive(conn: &zbus::Connection, destination: &str) -> anyhow::Result<()> {
    let read = conn.call_method(
        Some(destination),
        "/org/libvirt/QEMU",
        Some("org.freedesktop.DBus.Properties"),
        "Get",
        &("org.libvirt.Connect", "Hostname"),
    );
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(reply)) => {
            let _: OwnedValue = reply.body().deserialize()?;
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow!("{destination} does not answer: {e}")),
        Err(_) => Err(anyhow!("{destination} did not answer within 10 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_their_signatures() {
        let mut g = Gen::new(7, vec!["/org/libvirt/QEMU".into()]);
        for sig in [
            "s",
            "u",
            "a{sv}",
            "(ia{sv})",
            "a(sxisssuss)",
            "aab",
            "v",
            "o",
            "as",
        ] {
            for _ in 0..50 {
                let v = g.value(sig, 0).unwrap();
                assert_eq!(v.value_signature().to_string(), sig, "{v:?}");
            }
        }
        let s = g.structure("sua{sv}", 0).unwrap();
        assert_eq!(s.signature().to_string(), "(sua{sv})");
    }
}
