//! Firmware autoselection for `<os firmware='efi'>`, as libvirt does it: QEMU's firmware
//! descriptors (QEMU's docs/interop/firmware.json; Debian's `ovmf` installs them in
//! /usr/share/qemu/firmware) say which files make a firmware, for which machines, and
//! with which features. The first descriptor, in file-name order, that fits the
//! domain's machine and the features it asks for under `<os><firmware>` wins; one in
//! /etc/qemu/firmware replaces a same-named one in /usr/share (an empty file hides it).
//! So with Debian's files a plain `firmware='efi'` gets Secure Boot with Microsoft's
//! keys enrolled, and SMM switched on, as libvirt gives it; asking for
//! `secure-boot` 'no' (or `<smm state='off'/>`) gets the plain firmware.
//!
//! The choice is made at start and recorded in the live definition only (`<loader>`,
//! `<nvram>`, `<smm>`), as libvirt 9.0 does; the inactive definition keeps
//! `firmware='efi'`. Each domain gets its own variable store, copied from the
//! descriptor's template the first time it starts.

use std::fs;
use std::path::{Path, PathBuf};

use common::error::VirError;
use common::xml::Element;
use serde::Deserialize;

use crate::xml::{Domain, Loader};

/// Where descriptors are looked for, highest priority first.
pub const DIRS: [&str; 2] = ["/etc/qemu/firmware", "/usr/share/qemu/firmware"];

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "interface-types")]
    interface_types: Vec<String>,
    mapping: Mapping,
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    device: String,
    #[serde(default)]
    mode: Option<String>,
    executable: Option<FlashFile>,
    #[serde(rename = "nvram-template")]
    nvram_template: Option<FlashFile>,
}

#[derive(Debug, Deserialize)]
struct FlashFile {
    filename: PathBuf,
    format: String,
}

#[derive(Debug, Deserialize)]
struct Target {
    architecture: String,
    machines: Vec<String>,
}

/// The firmware chosen for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
    pub secure_boot: bool,
    pub requires_smm: bool,
}

/// What `<os><firmware><feature enabled='yes|no' name='...'/>` asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub secure_boot: Option<bool>,
    pub enrolled_keys: Option<bool>,
    /// `<features><smm state='off'/>`: firmware that requires SMM cannot be used.
    pub smm_off: bool,
}

fn err(msg: impl Into<String>) -> VirError {
    VirError::unsupported(msg.into())
}

/// The features `<os>` asks of its firmware; `<loader secure='yes'>` asks for Secure Boot.
pub fn wanted(dom: &Domain) -> Result<Wanted, VirError> {
    let mut w = Wanted::default();
    let requests = dom
        .os
        .other
        .iter()
        .filter(|e| e.name == "firmware")
        .flat_map(|e| e.children_named("feature"));
    for f in requests {
        let on = match f.get_attr("enabled") {
            Some("yes") => true,
            Some("no") => false,
            other => {
                return Err(err(format!(
                    "os/firmware/feature: enabled must be 'yes' or 'no', not {other:?}"
                )))
            }
        };
        match f.get_attr("name") {
            Some("secure-boot") => w.secure_boot = Some(on),
            Some("enrolled-keys") => w.enrolled_keys = Some(on),
            other => {
                return Err(err(format!(
                    "os/firmware/feature: unknown firmware feature {other:?} \
                     (known: secure-boot, enrolled-keys)"
                )))
            }
        }
    }
    w.smm_off = dom.feature("smm").and_then(|e| e.get_attr("state")) == Some("off");
    if dom.os.loader.as_ref().and_then(|l| l.secure) == Some(true) {
        if w.secure_boot == Some(false) {
            return Err(err(
                "os/loader secure='yes' contradicts the secure-boot feature set to 'no'",
            ));
        }
        w.secure_boot = Some(true);
    }
    Ok(w)
}

/// A shell-style glob with `*` and `?` only, as descriptors use for machine types.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Descriptor files by name, a name in an earlier folder hiding the same name later.
fn descriptor_files(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs.iter().rev() {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                by_name.insert(name, e.path());
            }
        }
    }
    by_name.into_values().collect()
}

/// Chooses the UEFI firmware for `arch`/`machine` from the descriptors in `dirs`.
pub fn select(
    dirs: &[&Path],
    arch: &str,
    machine: &str,
    want: Wanted,
) -> Result<Firmware, VirError> {
    for path in descriptor_files(dirs) {
        let Ok(text) = fs::read(&path) else { continue };
        if text.iter().all(u8::is_ascii_whitespace) {
            continue; // an empty file only hides a lower-priority one
        }
        let d: Descriptor = match serde_json::from_slice(&text) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("skipping firmware descriptor {}: {e}", path.display());
                continue;
            }
        };
        let has = |f: &str| d.features.iter().any(|x| x == f);
        let fits = d.interface_types.iter().any(|t| t == "uefi")
            && d.mapping.device == "flash"
            && d.mapping.mode.as_deref().unwrap_or("split") == "split"
            && d.targets
                .iter()
                .any(|t| t.architecture == arch && t.machines.iter().any(|m| glob(m, machine)))
            && want.secure_boot.is_none_or(|w| w == has("secure-boot"))
            && want.enrolled_keys.is_none_or(|w| w == has("enrolled-keys"))
            && !(want.smm_off && has("requires-smm"));
        let (Some(code), Some(vars)) = (&d.mapping.executable, &d.mapping.nvram_template) else {
            continue;
        };
        if !fits || code.format != "raw" || vars.format != "raw" {
            continue;
        }
        if !code.filename.is_file() || !vars.filename.is_file() {
            tracing::debug!("firmware descriptor {} names missing files", path.display());
            continue;
        }
        return Ok(Firmware {
            code: code.filename.clone(),
            vars_template: vars.filename.clone(),
            secure_boot: has("secure-boot"),
            requires_smm: has("requires-smm"),
        });
    }
    Err(err(format!(
        "os firmware='efi': no UEFI firmware for {arch} machine '{machine}' with {want:?} \
         among the descriptors in {} (install the 'ovmf' package)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The per-domain variable store libvirt would use.
pub fn nvram_path(nvram_dir: &Path, name: &str) -> PathBuf {
    nvram_dir.join(format!("{name}_VARS.fd"))
}

/// Fills the live definition's `<loader>`, `<nvram>` and `<smm>` for `firmware='efi'`
/// and creates the domain's variable store from its template if it has none yet. A
/// definition with its own `<loader>` path is used as written (its `<nvram>` still
/// gets a default path and its template copied).
pub fn prepare(dom: &mut Domain, dirs: &[&Path], nvram_dir: &Path) -> Result<(), VirError> {
    choose(dom, dirs, nvram_dir)?;
    create_nvram(dom, nvram_dir)
}

/// The choice of [`prepare`] without touching any file.
pub fn choose(dom: &mut Domain, dirs: &[&Path], nvram_dir: &Path) -> Result<(), VirError> {
    let efi = dom.os.firmware.as_deref() == Some("efi");
    let pflash = dom.os.loader.as_ref().and_then(|l| l.kind.as_deref()) == Some("pflash");
    if !efi && !pflash {
        return Ok(());
    }
    let has_path = dom.os.loader.as_ref().is_some_and(|l| l.path.is_some());
    if efi && !has_path {
        let arch = dom.os.arch.clone().unwrap_or_else(|| "x86_64".into());
        let machine = dom.os.machine.clone().unwrap_or_default();
        let fw = select(dirs, &arch, &machine, wanted(dom)?)?;
        let secure = fw.secure_boot && fw.requires_smm;
        dom.os.loader = Some(Loader {
            path: Some(fw.code.clone()),
            readonly: Some(true),
            kind: Some("pflash".into()),
            secure: Some(secure),
        });
        if dom.os.nvram_template.is_none() {
            dom.os.nvram_template = Some(fw.vars_template.clone());
        }
        if fw.requires_smm {
            enable_smm(dom)?;
        }
    }
    if dom.os.nvram.is_none() && (efi || dom.os.nvram_template.is_some()) {
        dom.os.nvram = Some(nvram_path(nvram_dir, dom.name.as_str()));
    }
    Ok(())
}

/// Copies the template into a variable store that does not exist yet.
fn create_nvram(dom: &Domain, nvram_dir: &Path) -> Result<(), VirError> {
    if let (Some(nv), Some(tpl)) = (&dom.os.nvram, &dom.os.nvram_template) {
        if !nv.exists() {
            let data = fs::read(tpl).map_err(|e| {
                VirError::operation_failed(format!(
                    "cannot read NVRAM template '{}': {e}",
                    tpl.display()
                ))
            })?;
            let dir = nv.parent().unwrap_or(nvram_dir);
            common::persist::create_dir_all(dir, 0o700)
                .and_then(|_| common::persist::write_atomic(nv, &data, 0o600))
                .map_err(|e| {
                    VirError::operation_failed(format!(
                        "cannot create NVRAM file '{}': {e}",
                        nv.display()
                    ))
                })?;
        }
    }
    Ok(())
}

/// Firmware with Secure Boot needs SMM; `<smm state='off'/>` cannot have it.
fn enable_smm(dom: &mut Domain) -> Result<(), VirError> {
    let features = dom.features.get_or_insert_with(|| Element::new("features"));
    match features.first("smm").and_then(|e| e.get_attr("state")) {
        Some("off") => Err(err(
            "features/smm state='off': the chosen Secure Boot firmware requires SMM",
        )),
        Some(_) => Ok(()),
        None => {
            features.push(Element::new("smm").attr("state", "on"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(features: &[&str], machines: &[&str], code: &Path, vars: &Path) -> String {
        serde_json::json!({
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": vars, "format": "raw"}
            },
            "targets": [{"architecture": "x86_64", "machines": machines}],
            "features": features,
        })
        .to_string()
    }

    #[test]
    fn globs() {
        assert!(glob("pc-q35-*", "pc-q35-7.2"));
        assert!(!glob("pc-q35-*", "pc-i440fx-7.2"));
        assert!(glob("pc-*-7.?", "pc-q35-7.2"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
    }

    /// File-name order decides, /etc hides /usr/share, requests filter, and plain UEFI
    /// is chosen over SMM/keys firmware when nothing is asked.
    #[test]
    fn selection_follows_order_overrides_and_requests() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (etc, usr) = (tmp.path().join("etc"), tmp.path().join("usr"));
        fs::create_dir_all(&etc).expect("etc");
        fs::create_dir_all(&usr).expect("usr");
        let f = |n: &str| {
            let p = tmp.path().join(n);
            fs::write(&p, b"x").expect("fd");
            p
        };
        let (enrolled, sec, plain, vars) = (f("enr.fd"), f("sec.fd"), f("plain.fd"), f("vars.fd"));
        let q35 = ["pc-q35-*"];
        fs::write(
            usr.join("40-enrolled.json"),
            descriptor(
                &["secure-boot", "requires-smm", "enrolled-keys"],
                &q35,
                &enrolled,
                &vars,
            ),
        )
        .expect("w");
        fs::write(
            usr.join("50-secure.json"),
            descriptor(&["secure-boot", "requires-smm"], &q35, &sec, &vars),
        )
        .expect("w");
        fs::write(
            usr.join("60-plain.json"),
            descriptor(&[], &["pc-i440fx-*", "pc-q35-*"], &plain, &vars),
        )
        .expect("w");
        let dirs = [etc.as_path(), usr.as_path()];
        let pick = |m: &str, w: Wanted| select(&dirs, "x86_64", m, w);
        // Nothing asked: the first that fits, the enrolled Secure Boot one.
        let first = pick("pc-q35-7.2", Wanted::default()).expect("first");
        assert!(first.secure_boot && first.requires_smm);
        assert_eq!(first.code, enrolled);
        let insecure = Wanted {
            secure_boot: Some(false),
            ..Wanted::default()
        };
        assert_eq!(pick("pc-q35-7.2", insecure).expect("plain").code, plain);
        let smm_off = Wanted {
            smm_off: true,
            ..Wanted::default()
        };
        assert_eq!(pick("pc-q35-7.2", smm_off).expect("plain").code, plain);
        let secure = Wanted {
            secure_boot: Some(true),
            ..Wanted::default()
        };
        let fw = pick("pc-q35-7.2", secure).expect("secure");
        assert!(fw.secure_boot && fw.requires_smm);
        let no_keys = Wanted {
            secure_boot: Some(true),
            enrolled_keys: Some(false),
            ..Wanted::default()
        };
        assert_eq!(pick("pc-q35-7.2", no_keys).expect("no keys").code, sec);
        // No secure firmware for i440fx, and an unknown arch has none at all.
        assert!(pick("pc-i440fx-7.2", secure).is_err());
        let e = select(&dirs, "aarch64", "virt", Wanted::default()).expect_err("arch");
        assert!(e.to_string().contains("no UEFI firmware"), "{e}");
        // An empty file in /etc hides the plain one.
        fs::write(etc.join("60-plain.json"), b"").expect("w");
        assert!(pick("pc-i440fx-7.2", Wanted::default()).is_err());
    }
}
