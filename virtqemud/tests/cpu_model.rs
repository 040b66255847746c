//! CompareCPU and BaselineCPU on the real emulator, and the Connect and Domain members
//! libvirt's QEMU driver answers with "not supported".

mod support;
use support::{bus_err, domain};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const FAIL_INCOMPATIBLE: u32 = 1;
const EXPAND_FEATURES: u32 = 1;
const INCOMPATIBLE: i32 = 0;
const IDENTICAL: i32 = 1;
const SUPERSET: i32 = 2;

fn model_of(cpu_xml: &str) -> String {
    let root = common::xml::parse_root(cpu_xml, "cpu").expect("a <cpu>");
    root.child_text("model").expect("a model")
}

fn features_of(cpu_xml: &str) -> Vec<String> {
    let root = common::xml::parse_root(cpu_xml, "cpu").expect("a <cpu>");
    root.children_named("feature")
        .map(|f| f.get_attr("name").expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_cpu_answers_as_libvirt_does() {
    let q = support::qemud(BIN).await;
    let cmp = |xml: &str, flags: u32| {
        let (qc, xml) = (q.qc.clone(), xml.to_owned());
        async move { qc.compare_cpu(&xml, flags).await }
    };
    // The modes that are the host's CPU by definition.
    for m in ["host-passthrough", "host-model", "maximum"] {
        let xml = format!("<cpu mode='{m}'/>");
        assert_eq!(cmp(&xml, 0).await.expect(m), IDENTICAL, "{m}");
    }
    // An old generic model: whatever guests here get has all of it and more.
    assert_eq!(
        cmp("<cpu match='exact'><model>qemu64</model></cpu>", 0)
            .await
            .expect("qemu64"),
        SUPERSET
    );
    // strict: nothing more on the host allowed.
    assert_eq!(
        cmp("<cpu match='strict'><model>qemu64</model></cpu>", 0)
            .await
            .expect("strict"),
        INCOMPATIBLE
    );
    // A feature no x86 emulated or present here has (QEMU's TCG has no AVX-512; a
    // host with KVM would need it in silicon, which none of these machines has).
    let wants_avx512 = "<cpu match='exact'><model>qemu64</model>\
                        <feature policy='require' name='avx512f'/></cpu>";
    assert_eq!(cmp(wants_avx512, 0).await.expect("avx512"), INCOMPATIBLE);
    let e = bus_err(cmp(wants_avx512, FAIL_INCOMPATIBLE).await);
    assert!(
        e.starts_with("the CPU is incompatible with host CPU:") && e.contains("avx512f"),
        "{e}"
    );
    // Forbidding what the host has.
    let e = bus_err(
        cmp(
            "<cpu match='exact'><model>qemu64</model><feature policy='forbid' name='sse2'/></cpu>",
            FAIL_INCOMPATIBLE,
        )
        .await,
    );
    assert!(e.contains("forbidden features: sse2"), "{e}");
    // libvirt's spelling of a feature QEMU spells otherwise is understood.
    assert_eq!(
        cmp(
            "<cpu match='exact'><model>qemu64</model><feature policy='disable' name='lahf_lm'/></cpu>",
            0
        )
        .await
        .expect("lahf_lm"),
        SUPERSET
    );
    // Bad input names what is wrong.
    for (xml, says) in [
        (
            "<cpu match='exact'><model>Pentium9000</model></cpu>",
            "unknown CPU model 'Pentium9000'",
        ),
        (
            "<cpu match='exact'><model>qemu64</model><feature name='warp-drive'/></cpu>",
            "unknown CPU feature 'warp-drive'",
        ),
        ("<cpu mode='sideways'/>", "mode 'sideways'"),
        ("<network/>", "no <cpu> element"),
        ("<cpu", "XML error"),
    ] {
        let e = bus_err(cmp(xml, 0).await);
        assert!(e.contains(says), "{xml}: {e}");
    }
    let e = bus_err(cmp("<cpu mode='host-model'/>", 8).await);
    assert!(e.contains("unsupported flags"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_cpu_finds_the_model_all_hosts_share() {
    let q = support::qemud(BIN).await;
    let base = |cpus: Vec<String>, flags: u32| {
        let qc = q.qc.clone();
        async move {
            let refs: Vec<&str> = cpus.iter().map(String::as_str).collect();
            qc.baseline_cpu(&refs, flags).await
        }
    };
    let host = |model: &str, extra: &str| {
        format!("<cpu><arch>x86_64</arch><model>{model}</model><vendor>Intel</vendor>{extra}</cpu>")
    };
    // Two hosts, one newer: the older one's model, nothing more.
    let t = std::time::Instant::now();
    let b = base(vec![host("Skylake-Client", ""), host("Westmere", "")], 0)
        .await
        .expect("baseline");
    // A figure, not asserted: one emulator started, every model expanded.
    eprintln!("BaselineCPU of two hosts took {:?}", t.elapsed());
    let m = model_of(&b);
    assert!(
        ["Westmere", "Westmere-IBRS", "Nehalem"].contains(&m.as_str()),
        "{b}"
    );
    assert!(b.contains("<vendor>Intel</vendor>"), "{b}");
    // What both have beyond the model shows as required features, in libvirt's
    // spelling (both hosts have AVX here, which Westmere lacks).
    let avx = "<feature name='avx'/><feature name='lahf_lm'/>";
    let b = base(vec![host("Westmere", avx), host("Westmere", avx)], 0)
        .await
        .expect("baseline with features");
    let f = features_of(&b);
    assert!(f.contains(&"avx".to_owned()), "{b}");
    // EXPAND_FEATURES lists the model's own too.
    let all = base(vec![host("Westmere", "")], EXPAND_FEATURES)
        .await
        .expect("expanded");
    let f = features_of(&all);
    assert!(
        f.contains(&"sse2".to_owned()) && f.contains(&"aes".to_owned()),
        "{all}"
    );
    // The result is a guest CPU CompareCPU accepts.
    let t = std::time::Instant::now();
    let r =
        q.qc.compare_cpu(&all, 0)
            .await
            .expect("compare the baseline");
    eprintln!("CompareCPU took {:?}", t.elapsed());
    assert!(r == SUPERSET || r == IDENTICAL, "{r}");
    // Different vendors cannot share a model of one.
    let amd = "<cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor></cpu>".to_owned();
    let e = bus_err(base(vec![host("Westmere", ""), amd], 0).await);
    assert!(e.contains("CPU vendors do not match"), "{e}");
    let e = bus_err(base(vec![], 0).await);
    assert!(e.contains("nothing to baseline"), "{e}");
    // A host described in the kernel's words (/proc/cpuinfo's flags, no model, as
    // virtnodedevd's capabilities give it) baselines too: the kernel's names no CPU
    // model has (constant_tsc, rep_good) are facts about the host, skipped.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("cpuinfo");
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(k)
                    .map(|v| v.trim_start_matches([' ', '\t', ':']))
            })
            .unwrap_or_default()
            .to_owned()
    };
    let vendor = match field("vendor_id").as_str() {
        "AuthenticAMD" => "AMD",
        _ => "Intel",
    };
    let mut this_host = format!("<cpu><arch>x86_64</arch><vendor>{vendor}</vendor>");
    for f in field("flags").split_whitespace() {
        this_host.push_str(&format!("<feature name='{f}'/>"));
    }
    this_host.push_str("</cpu>");
    let b = base(vec![this_host], 0)
        .await
        .expect("baseline of this host");
    assert!(!model_of(&b).is_empty(), "{b}");
    let e = bus_err(base(vec!["<cpu><arch>x86_64</arch></cpu>".to_owned()], 0).await);
    assert!(e.contains("no CPU model fits"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_qemu_driver_does_not_support_is_said_so() {
    let q = support::qemud(BIN).await;
    let (model, doi) =
        q.qc.node_get_security_model()
            .await
            .expect("security model");
    assert_eq!((model.as_str(), doi.as_str()), ("none", "0"));
    let xml = "<domain type='qemu'><name>files</name><memory unit='MiB'>64</memory>\
               <os><type arch='x86_64'>hvm</type></os></domain>";
    let e = bus_err(q.qc.domain_create_xml_with_files(xml, &[], 0).await);
    assert_eq!(
        e,
        "this function is not supported by the connection driver: virDomainCreateXMLWithFiles"
    );
    assert!(q.qc.list_domains(0).await.expect("list").is_empty());
    let path = q.qc.domain_define_xml(xml).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let e = bus_err(d.create_with_files(&[], 0).await);
    assert_eq!(
        e,
        "this function is not supported by the connection driver: virDomainCreateWithFiles"
    );
    assert!(!d.active().await.expect("active"));
    let e = bus_err(d.send_process_signal(1, 15, 0).await);
    assert_eq!(
        e,
        "this function is not supported by the connection driver: virDomainSendProcessSignal"
    );
}
