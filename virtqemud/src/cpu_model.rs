//! `CompareCPU` and `BaselineCPU`: CPU descriptions compared with what guests of this
//! host get, and reduced to one model every given host can run.
//!
//! libvirt answers both from its own CPU map (feature bits per model). This daemon
//! keeps no such map: it asks the emulator, whose `query-cpu-model-expansion` knows
//! every model's features under the names libvirt also uses, give or take spelling
//! (`lahf_lm` / `lahf-lm`, `sse4.1` / `sse4_1`). One short-lived `-machine none`
//! emulator answers all the questions of one call.

use std::collections::BTreeSet;
use std::path::Path;

use common::error::{check_flags, ErrorCode, VirError};
use common::xml::Element;
use serde_json::{json, Map, Value};

use crate::caps::{Caps, StdioQmp};

/// `VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE`: an incompatible CPU is an error.
const COMPARE_FAIL_INCOMPATIBLE: u32 = 1;
/// `VIR_CONNECT_COMPARE_CPU_VALIDATE_XML`: checked against the schema; the parser
/// here is strict either way.
const COMPARE_VALIDATE_XML: u32 = 2;
/// `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES`: list every feature, not only those
/// beyond the model.
const BASELINE_EXPAND_FEATURES: u32 = 1;
/// `VIR_CONNECT_BASELINE_CPU_MIGRATABLE`: leave out features that block migration.
const BASELINE_MIGRATABLE: u32 = 2;

/// `virCPUCompareResult`.
pub const INCOMPATIBLE: i32 = 0;
pub const IDENTICAL: i32 = 1;
pub const SUPERSET: i32 = 2;

/// Features every QEMU model carries that describe the virtual machine, not the
/// processor (a physical host lacks `hypervisor`; `kvm-*` are paravirtual leaves):
/// libvirt's CPU map has none of them, so they take no part in either answer.
fn is_machine_feature(name: &str) -> bool {
    name == "hypervisor" || name.starts_with("kvm")
}

/// Features QEMU refuses to migrate (libvirt's map marks them `migratable='no'`).
const NOT_MIGRATABLE: &[&str] = &["invtsc"];

/// QEMU's spelling → libvirt's, where they differ (libvirt keeps the kernel's
/// underscores for these).
const LIBVIRT_SPELLING: &[(&str, &str)] = &[
    ("cmp-legacy", "cmp_legacy"),
    ("ds-cpl", "ds_cpl"),
    ("fxsr-opt", "fxsr_opt"),
    ("lahf-lm", "lahf_lm"),
    ("nodeid-msr", "nodeid_msr"),
    ("perfctr-core", "perfctr_core"),
    ("perfctr-nb", "perfctr_nb"),
    ("tsc-adjust", "tsc_adjust"),
];

/// Other spellings of a feature (libvirt's old names, the kernel's /proc/cpuinfo
/// names) → QEMU's.
const QEMU_SPELLING: &[(&str, &str)] = &[
    ("sse3", "pni"),
    ("pclmuldq", "pclmulqdq"),
    ("i64", "lm"),
    ("xd", "nx"),
    ("ffxsr", "fxsr-opt"),
    ("tsc_deadline_timer", "tsc-deadline"),
];

/// Generic models with no vendor of their own in libvirt's map: any host may get them.
const GENERIC_MODELS: &[&str] = &[
    "qemu64", "qemu32", "kvm64", "kvm32", "486", "pentium", "pentium2", "pentium3",
];

/// One `<cpu>` description, as libvirt reads it for these two calls.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuDesc {
    /// `custom`, `host-model`, `host-passthrough` or `maximum`; a host CPU (`<cpu>`
    /// from capabilities, no mode) is `custom`.
    mode: String,
    /// `minimum`, `exact` or `strict`.
    matching: String,
    /// A host CPU: its features are facts (any spelling the kernel uses), not requests.
    host: bool,
    vendor: Option<String>,
    model: Option<String>,
    /// (policy, name); a host CPU's features are `require`.
    features: Vec<(String, String)>,
}

/// The first `<cpu>` in `xml`: a bare `<cpu>`, a domain's, or capabilities' host CPU,
/// as libvirt accepts each for these calls.
fn parse_desc(xml: &str) -> Result<CpuDesc, VirError> {
    let root = common::xml::parse(xml).map_err(VirError::xml)?;
    let cpu = find_cpu(&root).ok_or_else(|| VirError::xml("no <cpu> element found"))?;
    let host = cpu.get_attr("mode").is_none() && cpu.get_attr("match").is_none();
    let mode = cpu.get_attr("mode").unwrap_or("custom").to_owned();
    if !matches!(
        mode.as_str(),
        "custom" | "host-model" | "host-passthrough" | "maximum"
    ) {
        return Err(VirError::xml(format!(
            "<cpu> mode '{mode}': expected custom, host-model, host-passthrough or maximum"
        )));
    }
    let matching = cpu.get_attr("match").unwrap_or("exact").to_owned();
    if !matches!(matching.as_str(), "minimum" | "exact" | "strict") {
        return Err(VirError::xml(format!(
            "<cpu> match '{matching}': expected minimum, exact or strict"
        )));
    }
    if let Some(arch) = cpu.child_text("arch") {
        if !matches!(arch.trim(), "x86_64" | "i686") {
            return Err(VirError::new(
                ErrorCode::NoSupport,
                format!(
                    "CPU architecture {} is not supported on this host",
                    arch.trim()
                ),
            ));
        }
    }
    let mut features = Vec::new();
    for f in cpu.children_named("feature") {
        let name = f
            .get_attr("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| VirError::xml("<cpu><feature> without a name"))?;
        let policy = f.get_attr("policy").unwrap_or("require");
        if !matches!(
            policy,
            "force" | "require" | "optional" | "disable" | "forbid"
        ) {
            return Err(VirError::xml(format!(
                "<cpu><feature name='{name}'> policy '{policy}': expected force, require, optional, disable or forbid"
            )));
        }
        features.push((policy.to_owned(), name.to_owned()));
    }
    Ok(CpuDesc {
        mode,
        matching,
        host,
        vendor: cpu.child_text("vendor").map(|v| v.trim().to_owned()),
        model: cpu
            .child_text("model")
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty()),
        features,
    })
}

fn find_cpu(el: &Element) -> Option<&Element> {
    if el.name == "cpu" {
        return Some(el);
    }
    el.elements().find_map(find_cpu)
}

/// libvirt's vendor names for QEMU's CPUID vendor strings.
fn vendor_name(cpuid: &str) -> &str {
    match cpuid {
        "GenuineIntel" => "Intel",
        "AuthenticAMD" => "AMD",
        "HygonGenuine" => "Hygon",
        other => other,
    }
}

/// A model's features as QEMU expands them.
struct Expanded {
    vendor: String,
    features: BTreeSet<String>,
}

/// The emulator, asked about CPU models; the set of feature names it knows comes
/// from expanding its empty `base` model.
struct Oracle {
    qmp: StdioQmp,
    known: BTreeSet<String>,
    models: Vec<String>,
    accel_host: &'static str,
}

impl Oracle {
    async fn start(cache_dir: &Path) -> Result<Oracle, VirError> {
        let emulator = Path::new(crate::host_caps::EMULATOR);
        let caps = Caps::load_or_probe(emulator, cache_dir).await?;
        let (accel, accel_host) = if caps.kvm_usable {
            ("kvm", "host")
        } else {
            ("tcg", "max")
        };
        let mut qmp = StdioQmp::spawn(emulator, &["-accel", accel]).await?;
        let base = qmp
            .exec(
                "query-cpu-model-expansion",
                json!({"type": "static", "model": {"name": "base"}}),
            )
            .await?;
        let known = base["model"]["props"]
            .as_object()
            .map(|p| {
                p.iter()
                    .filter(|(_, v)| v.is_boolean())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let models = caps
            .cpu_models
            .iter()
            .filter(|m| !matches!(m.as_str(), "host" | "max" | "base"))
            .cloned()
            .collect();
        Ok(Oracle {
            qmp,
            known,
            models,
            accel_host,
        })
    }

    /// QEMU's name for `name`, if QEMU knows the feature under any of its spellings.
    fn qemu_name(&self, name: &str) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let alias = QEMU_SPELLING
            .iter()
            .find(|(from, _)| *from == lower)
            .map(|(_, to)| (*to).to_owned());
        [
            Some(lower.clone()),
            alias,
            Some(lower.replace('_', "-")),
            Some(lower.replace('_', ".")),
        ]
        .into_iter()
        .flatten()
        .find(|n| self.known.contains(n))
    }

    /// Expands `model` (QEMU's `base` when none is named) with features switched on
    /// and off.
    async fn expand(
        &mut self,
        model: &str,
        props: Map<String, Value>,
    ) -> Result<Expanded, VirError> {
        let r = self
            .qmp
            .exec(
                "query-cpu-model-expansion",
                json!({"type": "static", "model": {"name": model, "props": props}}),
            )
            .await
            .map_err(|e| VirError::operation_failed(format!("CPU model '{model}': {e}")))?;
        let props = r["model"]["props"].as_object().cloned().unwrap_or_default();
        Ok(Expanded {
            vendor: vendor_name(props.get("vendor").and_then(Value::as_str).unwrap_or(""))
                .to_owned(),
            features: props
                .iter()
                .filter(|(k, v)| v.as_bool() == Some(true) && !is_machine_feature(k))
                .map(|(k, _)| k.clone())
                .collect(),
        })
    }

    /// What `desc` asks for, expanded: its model plus required features, minus
    /// disabled ones. Features a guest CPU forbids are returned apart.
    async fn expand_desc(
        &mut self,
        desc: &CpuDesc,
    ) -> Result<(Expanded, BTreeSet<String>), VirError> {
        let model = match &desc.model {
            Some(m) if self.models.iter().any(|k| k == m) => m.clone(),
            Some(m) => {
                return Err(VirError::new(
                    ErrorCode::ConfigUnsupported,
                    format!("unknown CPU model '{m}'"),
                ))
            }
            None => "base".to_owned(),
        };
        let mut props = Map::new();
        let mut forbidden = BTreeSet::new();
        for (policy, name) in &desc.features {
            let Some(q) = self.qemu_name(name) else {
                // The kernel lists flags no CPU model can carry (constant_tsc, rep_good):
                // a host's are facts to skip, a guest's are requests to refuse.
                if desc.host {
                    continue;
                }
                return Err(VirError::new(
                    ErrorCode::ConfigUnsupported,
                    format!("unknown CPU feature '{name}'"),
                ));
            };
            match policy.as_str() {
                "force" | "require" => {
                    props.insert(q, Value::Bool(true));
                }
                "disable" => {
                    props.insert(q, Value::Bool(false));
                }
                "forbid" => {
                    props.insert(q.clone(), Value::Bool(false));
                    forbidden.insert(q);
                }
                _ => {} // optional: taken if there, asked of nobody
            }
        }
        let mut e = self.expand(&model, props).await?;
        if let Some(v) = &desc.vendor {
            e.vendor = v.clone();
        }
        Ok((e, forbidden))
    }

    /// The CPU a guest of this host gets at most: `host` with KVM, `max` with TCG.
    async fn host(&mut self) -> Result<Expanded, VirError> {
        let m = self.accel_host;
        self.expand(m, Map::new()).await
    }
}

/// Runs `f` with an oracle and always lets the emulator go.
async fn with_oracle<T>(
    cache_dir: &Path,
    f: impl AsyncFnOnce(&mut Oracle) -> Result<T, VirError>,
) -> Result<T, VirError> {
    let mut o = Oracle::start(cache_dir).await?;
    let r = f(&mut o).await;
    o.qmp.quit().await;
    r
}

/// `Connect.CompareCPU`: how `xml`'s CPU relates to the CPU guests of this host get
/// (the host's own CPU with KVM; QEMU's `max` where guests run under TCG, which is
/// what a guest here can be given: libvirt's newer CompareHypervisorCPU question).
pub async fn compare(cache_dir: &Path, xml: &str, flags: u32) -> Result<i32, VirError> {
    check_flags(flags, COMPARE_FAIL_INCOMPATIBLE | COMPARE_VALIDATE_XML)?;
    let desc = parse_desc(xml)?;
    let verdict = match desc.mode.as_str() {
        // Both are the host's CPU by definition.
        "host-passthrough" | "maximum" | "host-model" => Ok(IDENTICAL),
        _ => {
            with_oracle(cache_dir, async |o| {
                let mut host = o.host().await?;
                if o.accel_host == "max" {
                    // TCG gives a guest whichever vendor its model names: no host
                    // vendor stands in the way.
                    if let Some(v) = &desc.vendor {
                        host.vendor.clone_from(v);
                    }
                }
                let (guest, forbidden) = o.expand_desc(&desc).await?;
                Ok(judge(&desc, &host, &guest, &forbidden))
            })
            .await?
        }
    };
    match verdict {
        Ok(v) => Ok(v),
        Err(why) if flags & COMPARE_FAIL_INCOMPATIBLE != 0 => {
            Err(VirError::new(ErrorCode::CpuIncompatible, why))
        }
        Err(_) => Ok(INCOMPATIBLE),
    }
}

/// libvirt's comparison: every wanted feature on the host and no forbidden one, the
/// same vendor; `strict` also wants nothing more on the host.
fn judge(
    desc: &CpuDesc,
    host: &Expanded,
    guest: &Expanded,
    forbidden: &BTreeSet<String>,
) -> Result<i32, String> {
    if let Some(v) = &desc.vendor {
        if *v != host.vendor {
            return Err(format!(
                "host CPU vendor does not match required CPU vendor {v}"
            ));
        }
    }
    let missing: Vec<&str> = guest
        .features
        .difference(&host.features)
        .map(|s| libvirt_name(s))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "Host CPU does not provide required features: {}",
            missing.join(", ")
        ));
    }
    let present: Vec<&str> = forbidden
        .intersection(&host.features)
        .map(|s| libvirt_name(s))
        .collect();
    if !present.is_empty() {
        return Err(format!(
            "Host CPU provides forbidden features: {}",
            present.join(", ")
        ));
    }
    if guest.features == host.features {
        return Ok(IDENTICAL);
    }
    if desc.matching == "strict" {
        return Err("Host CPU has features the strict CPU definition does not allow".into());
    }
    Ok(SUPERSET)
}

fn libvirt_name(qemu: &str) -> &str {
    LIBVIRT_SPELLING
        .iter()
        .find(|(q, _)| *q == qemu)
        .map_or(qemu, |(_, l)| l)
}

/// `Connect.BaselineCPU`: the newest model every given CPU can run, with the
/// features they all have beyond it, as libvirt writes a baseline.
pub async fn baseline(cache_dir: &Path, xmls: &[String], flags: u32) -> Result<String, VirError> {
    check_flags(flags, BASELINE_EXPAND_FEATURES | BASELINE_MIGRATABLE)?;
    if xmls.is_empty() {
        return Err(VirError::invalid_arg("nothing to baseline"));
    }
    let descs = xmls
        .iter()
        .map(|x| parse_desc(x))
        .collect::<Result<Vec<_>, _>>()?;
    with_oracle(cache_dir, async |o| {
        let mut common: Option<BTreeSet<String>> = None;
        let mut vendor: Option<String> = None;
        for d in &descs {
            let (e, _) = o.expand_desc(d).await?;
            match &vendor {
                Some(v) if *v != e.vendor => {
                    return Err(VirError::operation_failed(format!(
                        "CPU vendors do not match: {v} and {}",
                        e.vendor
                    )))
                }
                Some(_) => {}
                None => vendor = Some(e.vendor.clone()),
            }
            common = Some(match common {
                None => e.features,
                Some(c) => c.intersection(&e.features).cloned().collect(),
            });
        }
        let mut common = common.unwrap_or_default();
        if flags & BASELINE_MIGRATABLE != 0 {
            common.retain(|f| !NOT_MIGRATABLE.contains(&f.as_str()));
        }
        let vendor = vendor.unwrap_or_default();
        let (model, own) = best_model(o, &common, &vendor).await?;
        Ok(baseline_xml(&model, &vendor, &common, &own, flags))
    })
    .await
}

/// The model with the most features that all lie within `common`, among the
/// unversioned models of `vendor` and the generic ones.
async fn best_model(
    o: &mut Oracle,
    common: &BTreeSet<String>,
    vendor: &str,
) -> Result<(String, BTreeSet<String>), VirError> {
    let candidates: Vec<String> = o
        .models
        .iter()
        .filter(|m| !is_versioned(m))
        .cloned()
        .collect();
    let mut best: Option<(String, BTreeSet<String>)> = None;
    for m in candidates {
        let e = o.expand(&m, Map::new()).await?;
        if e.vendor != vendor && !GENERIC_MODELS.contains(&m.as_str()) {
            continue;
        }
        if !e.features.is_subset(common) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(_, b)| e.features.len() > b.len())
        {
            best = Some((m, e.features));
        }
    }
    best.ok_or_else(|| {
        VirError::operation_failed("no CPU model fits the features the given CPUs share")
    })
}

/// `Skylake-Client-v2`: QEMU's versioned names; libvirt names the unversioned ones.
fn is_versioned(model: &str) -> bool {
    model
        .rsplit_once("-v")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn baseline_xml(
    model: &str,
    vendor: &str,
    common: &BTreeSet<String>,
    own: &BTreeSet<String>,
    flags: u32,
) -> String {
    let mut cpu = Element::new("cpu")
        .attr("mode", "custom")
        .attr("match", "exact")
        .child(Element::with_text("model", model).attr("fallback", "forbid"));
    if !vendor.is_empty() {
        cpu.push(Element::with_text("vendor", vendor));
    }
    let listed: Vec<&String> = if flags & BASELINE_EXPAND_FEATURES != 0 {
        common.iter().collect()
    } else {
        common.difference(own).collect()
    };
    let mut names: Vec<&str> = listed.into_iter().map(|f| libvirt_name(f)).collect();
    names.sort_unstable();
    for n in names {
        cpu.push(
            Element::new("feature")
                .attr("policy", "require")
                .attr("name", n),
        );
    }
    cpu.to_xml()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn exp(vendor: &str, f: &[&str]) -> Expanded {
        Expanded {
            vendor: vendor.into(),
            features: set(f),
        }
    }

    #[test]
    fn descriptions_parse_from_bare_domain_and_capability_documents() {
        let d = parse_desc(
            "<cpu match='strict'><model>Westmere</model><vendor>Intel</vendor>\
             <feature policy='disable' name='aes'/><feature name='lahf_lm'/></cpu>",
        )
        .expect("bare");
        assert_eq!(d.matching, "strict");
        assert!(!d.host);
        assert_eq!(d.model.as_deref(), Some("Westmere"));
        assert_eq!(d.features[0], ("disable".into(), "aes".into()));
        assert_eq!(d.features[1], ("require".into(), "lahf_lm".into()));
        let caps = parse_desc(
            "<capabilities><host><uuid>x</uuid><cpu><arch>x86_64</arch>\
             <feature name='sse2'/></cpu></host></capabilities>",
        )
        .expect("capabilities");
        assert!(caps.host);
        assert_eq!(caps.model, None);
        let dom = parse_desc("<domain><name>d</name><cpu mode='host-passthrough'/></domain>")
            .expect("domain");
        assert_eq!(dom.mode, "host-passthrough");
    }

    #[test]
    fn bad_descriptions_name_what_is_wrong() {
        for (xml, says) in [
            ("<domain/>", "no <cpu>"),
            ("<cpu mode='odd'/>", "mode 'odd'"),
            ("<cpu match='loose'/>", "match 'loose'"),
            ("<cpu><feature/></cpu>", "without a name"),
            (
                "<cpu><feature name='x' policy='maybe'/></cpu>",
                "policy 'maybe'",
            ),
            ("<cpu><arch>aarch64</arch></cpu>", "aarch64"),
            ("<cpu", "XML"),
        ] {
            let e = parse_desc(xml).expect_err(xml).to_string();
            assert!(e.contains(says), "{xml}: {e}");
        }
    }

    #[test]
    fn judging_follows_libvirts_rules() {
        let host = exp("Intel", &["sse2", "aes", "avx"]);
        let desc = |m: &str, v: Option<&str>| CpuDesc {
            mode: "custom".into(),
            matching: m.into(),
            host: false,
            vendor: v.map(str::to_owned),
            model: None,
            features: vec![],
        };
        let none = BTreeSet::new();
        let same = exp("Intel", &["sse2", "aes", "avx"]);
        let less = exp("Intel", &["sse2"]);
        let more = exp("Intel", &["sse2", "lahf-lm"]);
        assert_eq!(
            judge(&desc("exact", None), &host, &same, &none),
            Ok(IDENTICAL)
        );
        assert_eq!(
            judge(&desc("exact", None), &host, &less, &none),
            Ok(SUPERSET)
        );
        assert!(judge(&desc("strict", None), &host, &less, &none).is_err());
        let e = judge(&desc("exact", None), &host, &more, &none).unwrap_err();
        assert!(e.contains("lahf_lm"), "{e}");
        let e = judge(&desc("exact", None), &host, &less, &set(&["aes"])).unwrap_err();
        assert!(e.contains("forbidden features: aes"), "{e}");
        let e = judge(&desc("exact", Some("AMD")), &host, &less, &none).unwrap_err();
        assert!(e.contains("vendor"), "{e}");
    }

    #[test]
    fn versioned_models_are_told_apart() {
        assert!(is_versioned("Skylake-Client-v2"));
        assert!(is_versioned("EPYC-v10"));
        assert!(!is_versioned("Skylake-Client-IBRS"));
        assert!(!is_versioned("qemu64"));
        assert!(!is_versioned("Cascadelake-Server-noTSX"));
    }

    #[test]
    fn a_baseline_lists_the_shared_features_beyond_its_model_in_libvirts_spelling() {
        let common = set(&["sse2", "lahf-lm", "aes"]);
        let own = set(&["sse2"]);
        let x = baseline_xml("Westmere", "Intel", &common, &own, 0);
        assert_eq!(
            x,
            "<cpu mode='custom' match='exact'>\n  <model fallback='forbid'>Westmere</model>\n  \
             <vendor>Intel</vendor>\n  <feature policy='require' name='aes'/>\n  \
             <feature policy='require' name='lahf_lm'/>\n</cpu>\n"
        );
        let all = baseline_xml("Westmere", "Intel", &common, &own, BASELINE_EXPAND_FEATURES);
        assert!(all.contains("name='sse2'"), "{all}");
    }
}
