//! The `logical` pool: an LVM volume group; its volumes are logical volumes. Every
//! LVM command gets its arguments as argv, and reports are read as JSON.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use super::{BackendError, BuildFlags, PoolBackend, PoolSizes, Result};
use crate::xml::{Name, Permissions, PoolDef, VolDef, VolFormat};
use common::xml::Element;

pub struct LogicalBackend;

/// The volume group's name: `<source><name>`, else the pool's name (libvirt's rule).
fn vg_name(def: &PoolDef) -> Result<String> {
    let name = def
        .source
        .as_ref()
        .and_then(|s| s.child_text("name"))
        .map(|n| n.trim().to_owned())
        .unwrap_or_else(|| def.name.to_string());
    // LVM's own rule for VG names, which also keeps them out of option syntax.
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
    if !ok {
        return Err(BackendError::Invalid(format!(
            "invalid volume group name '{name}'"
        )));
    }
    Ok(name)
}

/// The physical volumes: every `<source><device path=...>`.
fn devices(def: &PoolDef) -> Vec<PathBuf> {
    def.source
        .as_ref()
        .map(|s| {
            s.children_named("device")
                .filter_map(|d| d.get_attr("path"))
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs an LVM command; its stderr becomes the error.
fn lvm(args: &[OsString]) -> Result<String> {
    let out = Command::new("lvm")
        .args(args)
        .env("LC_ALL", "C")
        // The daemon's own descriptors are close-on-exec; this only silences LVM.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| BackendError::io("cannot run", "lvm", e))?;
    if !out.status.success() {
        let cmd = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(BackendError::Invalid(format!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn argv(items: &[&str]) -> Vec<OsString> {
    items.iter().map(OsString::from).collect()
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}
#[derive(Deserialize)]
struct VgReport {
    #[serde(default)]
    vg: Vec<VgRow>,
}
#[derive(Deserialize)]
struct VgRow {
    vg_size: String,
    vg_free: String,
}
#[derive(Deserialize)]
struct PvReport {
    #[serde(default)]
    pv: Vec<PvRow>,
}
#[derive(Deserialize)]
struct PvRow {
    pv_name: String,
    #[serde(default)]
    vg_name: String,
}

/// The `<sources>` document of `FindStoragePoolSources` from a `pvs` report: one
/// `<source>` per volume group with its PVs as devices (PVs in no VG are left out, as
/// libvirt does).
fn sources_from_pvs(json: &str) -> Result<String> {
    let r: Report<PvReport> = serde_json::from_str(json)
        .map_err(|e| BackendError::Invalid(format!("cannot parse pvs report: {e}")))?;
    let mut vgs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pv in r.report.into_iter().flat_map(|r| r.pv) {
        if !pv.vg_name.is_empty() {
            vgs.entry(pv.vg_name).or_default().push(pv.pv_name);
        }
    }
    let mut doc = Element::new("sources");
    for (vg, pvs) in vgs {
        let mut src = Element::new("source");
        for pv in pvs {
            src.push(Element::new("device").attr("path", pv));
        }
        src.push(Element::with_text("name", vg));
        src.push(Element::new("format").attr("type", "lvm2"));
        doc.push(src);
    }
    Ok(doc.to_xml())
}

#[derive(Deserialize)]
struct LvReport {
    #[serde(default)]
    lv: Vec<LvRow>,
}
#[derive(Deserialize)]
struct LvRow {
    lv_name: String,
    lv_uuid: String,
    lv_size: String,
}

fn bytes(s: &str) -> u64 {
    s.trim().trim_end_matches('B').parse().unwrap_or(0)
}

fn parse_vgs(json: &str) -> Result<Option<PoolSizes>> {
    let r: Report<VgReport> = serde_json::from_str(json)
        .map_err(|e| BackendError::Invalid(format!("cannot parse vgs report: {e}")))?;
    Ok(r.report.into_iter().flat_map(|r| r.vg).next().map(|v| {
        let (size, free) = (bytes(&v.vg_size), bytes(&v.vg_free));
        PoolSizes {
            capacity: size,
            allocation: size - free.min(size),
            available: free,
        }
    }))
}

fn parse_lvs(vg: &str, json: &str) -> Result<Vec<VolDef>> {
    let r: Report<LvReport> = serde_json::from_str(json)
        .map_err(|e| BackendError::Invalid(format!("cannot parse lvs report: {e}")))?;
    let mut vols = Vec::new();
    for lv in r.report.into_iter().flat_map(|r| r.lv) {
        let Ok(name) = Name::new("name", &lv.lv_name) else {
            continue;
        };
        let size = bytes(&lv.lv_size);
        vols.push(VolDef {
            name,
            // libvirt keys logical volumes by their LV UUID.
            key: lv.lv_uuid,
            capacity: size,
            allocation: Some(size),
            path: format!("/dev/{vg}/{}", lv.lv_name),
            format: VolFormat::Raw,
            permissions: Permissions::default(),
            compat: None,
            backing: None,
            encryption: None,
            key_file: None,
        });
    }
    vols.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vols)
}

fn vg_sizes(vg: &str) -> Result<Option<PoolSizes>> {
    let out = lvm(&argv(&[
        "vgs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "-o",
        "vg_size,vg_free",
        "--",
        vg,
    ]));
    match out {
        Ok(j) => parse_vgs(&j),
        Err(BackendError::Invalid(m)) if m.contains("not found") => Ok(None),
        Err(e) => Err(e),
    }
}

fn lvs(vg: &str, lv: Option<&str>) -> Result<Vec<VolDef>> {
    let target = match lv {
        Some(l) => format!("{vg}/{l}"),
        None => vg.to_owned(),
    };
    let j = lvm(&argv(&[
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "-o",
        "lv_name,lv_uuid,lv_size",
        "--",
        &target,
    ]))?;
    parse_lvs(vg, &j)
}

fn raw_only(vol: &VolDef) -> Result<()> {
    if vol.format != VolFormat::Raw || vol.backing.is_some() {
        return Err(BackendError::Unsupported(
            "logical volumes are raw; qcow2 and backing stores are not supported".into(),
        ));
    }
    Ok(())
}

impl PoolBackend for LogicalBackend {
    /// pvcreate on every source device, then vgcreate. NO_OVERWRITE refuses devices
    /// that carry a signature already; OVERWRITE lets pvcreate replace it.
    fn build(&self, def: &PoolDef, flags: BuildFlags) -> Result<()> {
        if flags.contains(BuildFlags::OVERWRITE | BuildFlags::NO_OVERWRITE) {
            return Err(BackendError::Invalid(
                "Overwrite and no overwrite flags are mutually exclusive".into(),
            ));
        }
        let vg = vg_name(def)?;
        let devs = devices(def);
        if devs.is_empty() {
            return Err(BackendError::Invalid(
                "logical pool build needs at least one <source><device path=...>".into(),
            ));
        }
        for d in &devs {
            let mut a = argv(&["pvcreate", "-q"]);
            if flags.contains(BuildFlags::OVERWRITE) {
                a.extend(argv(&["-ff", "-y"]));
            }
            a.push("--".into());
            a.push(d.into());
            lvm(&a)?;
        }
        let mut a = argv(&["vgcreate", "-q", "--", &vg]);
        a.extend(devs.iter().map(OsString::from));
        lvm(&a).map(|_| ())
    }

    fn start(&self, def: &PoolDef) -> Result<()> {
        let vg = vg_name(def)?;
        if vg_sizes(&vg)?.is_none() {
            return Err(BackendError::Invalid(format!(
                "volume group '{vg}' does not exist (build the pool first)"
            )));
        }
        lvm(&argv(&["vgchange", "-q", "-ay", "--", &vg])).map(|_| ())
    }

    fn stop(&self, def: &PoolDef) -> Result<()> {
        let vg = vg_name(def)?;
        lvm(&argv(&["vgchange", "-q", "-an", "--", &vg])).map(|_| ())
    }

    fn delete(&self, def: &PoolDef) -> Result<()> {
        let vg = vg_name(def)?;
        lvm(&argv(&["vgremove", "-q", "-f", "--", &vg]))?;
        for d in devices(def) {
            let mut a = argv(&["pvremove", "-q", "--"]);
            a.push(d.into());
            lvm(&a)?;
        }
        Ok(())
    }

    fn refresh(&self, def: &PoolDef) -> Result<(PoolSizes, Vec<VolDef>)> {
        let vg = vg_name(def)?;
        let sizes = vg_sizes(&vg)?
            .ok_or_else(|| BackendError::Invalid(format!("volume group '{vg}' does not exist")))?;
        Ok((sizes, lvs(&vg, None)?))
    }

    fn create_vol(&self, def: &PoolDef, vol: &VolDef, from: Option<&VolDef>) -> Result<VolDef> {
        raw_only(vol)?;
        let vg = vg_name(def)?;
        if lvs(&vg, None)?.iter().any(|v| v.name == vol.name) {
            return Err(BackendError::VolExists(vol.name.to_string()));
        }
        let size = format!("{}b", vol.capacity);
        lvm(&argv(&[
            "lvcreate",
            "-q",
            "-y",
            "-n",
            vol.name.as_str(),
            "-L",
            &size,
            "--",
            &vg,
        ]))?;
        let made = lvs(&vg, Some(vol.name.as_str()))?
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Invalid(format!("volume '{}' vanished", vol.name)))?;
        if let Some(src) = from {
            let copy = || -> std::io::Result<()> {
                let mut s = std::fs::File::open(&src.path)?;
                let mut d = OpenOptions::new().write(true).open(&made.path)?;
                crate::transfer::copy_plain(
                    &mut s,
                    &mut d,
                    src.capacity.min(made.capacity),
                    &mut |_| {},
                )?;
                d.sync_all()
            };
            if let Err(e) = copy() {
                // A half-copied clone is never left behind as a good volume.
                let _ = self.delete_vol(def, &made);
                return Err(BackendError::io("cannot copy into", &made.path, e));
            }
        }
        Ok(made)
    }

    fn delete_vol(&self, def: &PoolDef, vol: &VolDef) -> Result<()> {
        let vg = vg_name(def)?;
        let lv = format!("{vg}/{}", vol.name.as_str());
        lvm(&argv(&["lvremove", "-q", "-f", "--", &lv])).map(|_| ())
    }

    fn resize_vol(&self, def: &PoolDef, vol: &VolDef, capacity: u64, shrink: bool) -> Result<()> {
        let vg = vg_name(def)?;
        let lv = format!("{vg}/{}", vol.name.as_str());
        let size = format!("{capacity}b");
        let mut a = argv(&["lvresize", "-q", "-L", &size]);
        if shrink {
            a.push("-f".into());
        }
        a.extend(argv(&["--", &lv]));
        lvm(&a).map(|_| ())
    }

    /// Writes zeros or random bytes over the whole logical volume.
    fn wipe_vol(&self, _def: &PoolDef, vol: &VolDef, pattern: super::WipePattern) -> Result<()> {
        let zero = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).open(&vol.path)?;
            if pattern == super::WipePattern::Random {
                return super::fill_random(&f, vol.capacity);
            }
            let buf = vec![0u8; crate::transfer::CHUNK];
            let mut left = vol.capacity;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                f.write_all(&buf[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        };
        zero().map_err(|e| BackendError::io("cannot wipe", &vol.path, e))
    }

    /// Every volume group on the host with its physical volumes (the hint is not needed).
    fn find_sources(&self, _spec: Option<&str>) -> Result<String> {
        let json = lvm(&argv(&[
            "pvs",
            "--reportformat",
            "json",
            "-o",
            "pv_name,vg_name",
        ]))?;
        sources_from_pvs(&json)
    }

    fn vol_info(&self, def: &PoolDef, vol: &VolDef) -> Result<VolDef> {
        let vg = vg_name(def)?;
        lvs(&vg, Some(vol.name.as_str()))?
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Invalid(format!("volume '{}' is gone", vol.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(src: &str) -> PoolDef {
        PoolDef::parse(&format!(
            "<pool type='logical'><name>vgpool</name><source>{src}</source>\
             <target><path>/dev/vgpool</path></target></pool>"
        ))
        .expect("pool xml")
    }

    #[test]
    fn vg_name_and_devices_come_from_the_source() {
        let p = pool("<device path='/dev/loop1'/><device path='/dev/loop2'/><name>data</name>");
        assert_eq!(vg_name(&p).expect("vg"), "data");
        assert_eq!(
            devices(&p),
            [PathBuf::from("/dev/loop1"), PathBuf::from("/dev/loop2")]
        );
        let p = pool("<device path='/dev/loop1'/>");
        assert_eq!(vg_name(&p).expect("vg"), "vgpool");
        for bad in ["-ff", "a b", "x/y", ".."] {
            let p = pool(&format!("<device path='/dev/loop1'/><name>{bad}</name>"));
            assert!(vg_name(&p).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reports_are_read() {
        let vgs = r#"{"report":[{"vg":[{"vg_size":"62914560B","vg_free":"54525952B"}]}]}"#;
        assert_eq!(
            parse_vgs(vgs).expect("vgs"),
            Some(PoolSizes {
                capacity: 62914560,
                allocation: 8388608,
                available: 54525952
            })
        );
        let lvs = r#"{"report":[{"lv":[{"lv_name":"disk1","lv_uuid":"AbC-123","lv_size":"8388608B"},
            {"lv_name":"bad/name","lv_uuid":"x","lv_size":"1B"}]}]}"#;
        let v = parse_lvs("data", lvs).expect("lvs");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].path, "/dev/data/disk1");
        assert_eq!(v[0].key, "AbC-123");
        assert_eq!(v[0].capacity, 8388608);
    }

    #[test]
    fn sources_group_pvs_by_vg() {
        let pvs = r#"{"report":[{"pv":[{"pv_name":"/dev/loop1","vg_name":"b<&'"},
            {"pv_name":"/dev/sda2","vg_name":"a"},{"pv_name":"/dev/loop2","vg_name":"b<&'"},
            {"pv_name":"/dev/loop3","vg_name":""}]}]}"#;
        let xml = sources_from_pvs(pvs).expect("sources");
        let doc = common::xml::parse_root(&xml, "sources").expect("xml");
        let got: Vec<(String, Vec<String>, String)> = doc
            .children_named("source")
            .map(|s| {
                (
                    s.child_text("name").unwrap_or_default(),
                    s.children_named("device")
                        .filter_map(|d| d.get_attr("path").map(str::to_owned))
                        .collect(),
                    s.first("format")
                        .and_then(|f| f.get_attr("type"))
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), vec!["/dev/sda2".into()], "lvm2".into()),
                (
                    "b<&'".into(),
                    vec!["/dev/loop1".into(), "/dev/loop2".into()],
                    "lvm2".into()
                ),
            ]
        );
        assert!(sources_from_pvs("{").is_err());
        assert_eq!(
            sources_from_pvs(r#"{"report":[{"pv":[]}]}"#).expect("empty"),
            Element::new("sources").to_xml()
        );
    }

    #[test]
    fn qcow2_volumes_are_refused() {
        let v = VolDef::parse(
            "<volume><name>q</name><capacity>1024</capacity>\
             <target><format type='qcow2'/></target></volume>",
        )
        .expect("vol");
        assert!(raw_only(&v).is_err());
    }
}
