//! CPU pinning as libvirt does it without cgroups: `<cputune><vcpupin vcpu cpuset>`
//! pins a vCPU's thread, `<emulatorpin cpuset>` QEMU's other threads, both with
//! sched_setaffinity; `<vcpu cpuset>` is the default of both. Here: the definition's
//! pins (read and changed in its kept `<cputune>`), CPU lists and maps, and the threads.

use common::error::VirError;
use common::xml::{Element, Node};
use nix::sched::CpuSet;
use nix::unistd::Pid;

use crate::xml::Domain;

/// How many CPUs a map covers: the host's possible CPUs (libvirt's cpumap length).
pub fn host_cpu_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/present")
        .ok()
        .and_then(|s| parse_list(s.trim()).ok())
        .and_then(|l| l.iter().max().map(|m| m + 1))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// libvirt's CPU list syntax (`0-3,^2,7`).
pub fn parse_list(set: &str) -> Result<Vec<usize>, VirError> {
    let bad = || VirError::invalid_arg(format!("invalid CPU list '{set}'"));
    let mut cpus = std::collections::BTreeSet::new();
    let mut minus = std::collections::BTreeSet::new();
    for part in set.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (target, part) = match part.strip_prefix('^') {
            Some(p) => (&mut minus, p),
            None => (&mut cpus, part),
        };
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo || hi >= CpuSet::count() {
            return Err(bad());
        }
        target.extend(lo..=hi);
    }
    Ok(cpus.difference(&minus).copied().collect())
}

/// A CPU list from a map (`[true, false, true]` is `0,2`), as libvirt writes it.
pub fn list_of(map: &[bool]) -> String {
    crate::agent::cpu_list(
        map.iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .map(|(i, _)| i as u32),
    )
}

/// A map of `count` CPUs from a list.
pub fn map_of(cpus: &[usize], count: usize) -> Vec<bool> {
    (0..count).map(|c| cpus.contains(&c)).collect()
}

fn cputune(dom: &Domain) -> Option<&Element> {
    dom.other.iter().find(|e| e.name == "cputune")
}

/// The CPU list `<vcpupin>` gives vCPU `vcpu`, else `<vcpu cpuset>`.
pub fn vcpu_pin(dom: &Domain, vcpu: u32) -> Option<String> {
    cputune(dom)
        .and_then(|t| {
            t.children_named("vcpupin")
                .find(|p| p.get_attr("vcpu") == Some(vcpu.to_string().as_str()))
                .and_then(|p| p.get_attr("cpuset").map(str::to_owned))
        })
        .or_else(|| dom.vcpu_cpuset.clone())
}

/// The CPU list `<emulatorpin>` gives QEMU's other threads, else `<vcpu cpuset>`.
pub fn emulator_pin(dom: &Domain) -> Option<String> {
    cputune(dom)
        .and_then(|t| t.first("emulatorpin"))
        .and_then(|p| p.get_attr("cpuset").map(str::to_owned))
        .or_else(|| dom.vcpu_cpuset.clone())
}

/// Sets (or with `None` removes) one `<cputune>` child: `vcpupin` of `vcpu`, or
/// `emulatorpin` when `vcpu` is `None`. An emptied `<cputune>` goes.
pub fn set_pin(dom: &mut Domain, vcpu: Option<u32>, cpuset: Option<&str>) {
    let at = dom.other.iter().position(|e| e.name == "cputune");
    let tune = match at {
        Some(i) => &mut dom.other[i],
        None => {
            dom.other.push(Element::new("cputune"));
            dom.other.last_mut().expect("just pushed")
        }
    };
    let is_it = |e: &Element| match vcpu {
        Some(v) => e.name == "vcpupin" && e.get_attr("vcpu") == Some(v.to_string().as_str()),
        None => e.name == "emulatorpin",
    };
    tune.children
        .retain(|n| !matches!(n, Node::Element(e) if is_it(e)));
    if let Some(set) = cpuset {
        let el = match vcpu {
            Some(v) => Element::new("vcpupin").attr("vcpu", v).attr("cpuset", set),
            None => Element::new("emulatorpin").attr("cpuset", set),
        };
        tune.children.push(Node::Element(el));
    }
    if tune.children.is_empty() {
        dom.other.retain(|e| e.name != "cputune");
    }
}

/// A thread's CPUs as a map of `count`.
pub fn affinity(tid: u32, count: usize) -> Result<Vec<bool>, VirError> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(tid as i32))
        .map_err(|e| VirError::system("sched_getaffinity", &std::io::Error::from(e)))?;
    Ok((0..count).map(|c| set.is_set(c).unwrap_or(false)).collect())
}

/// Pins thread `tid` to `cpus`.
pub fn pin(tid: u32, cpus: &[usize]) -> Result<(), VirError> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)
            .map_err(|e| VirError::system("CPU set", &std::io::Error::from(e)))?;
    }
    nix::sched::sched_setaffinity(Pid::from_raw(tid as i32), &set).map_err(|e| {
        VirError::system(
            format!("sched_setaffinity of thread {tid}"),
            &std::io::Error::from(e),
        )
    })
}

/// A client's map checked against this host: at least one CPU it has.
pub fn cpus_of_map(map: &[bool], count: usize) -> Result<Vec<usize>, VirError> {
    let cpus: Vec<usize> = map
        .iter()
        .enumerate()
        .take(count)
        .filter(|(_, on)| **on)
        .map(|(i, _)| i)
        .collect();
    if cpus.is_empty() {
        return Err(VirError::invalid_arg(
            "the CPU map names no CPU of this host",
        ));
    }
    Ok(cpus)
}

/// A client's map as the CPUs to pin to and the list the definition records.
pub fn requested(map: &[bool]) -> Result<(Vec<usize>, String), VirError> {
    let cpus = cpus_of_map(map, host_cpu_count())?;
    let list = list_of(&map_of(&cpus, cpus.iter().max().map_or(0, |m| m + 1)));
    Ok((cpus, list))
}

/// QEMU's threads other than its vCPUs'.
pub fn emulator_threads(pid: u32, vcpu_threads: &[u32]) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|t| !vcpu_threads.contains(t))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(extra: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='qemu'><name>p</name><memory>65536</memory>{extra}\
             <os><type>hvm</type></os></domain>"
        ))
        .expect("domain")
    }

    #[test]
    fn lists_and_maps() {
        assert_eq!(parse_list("0-3,^2,7").expect("list"), [0, 1, 3, 7]);
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("x").is_err());
        assert_eq!(list_of(&[true, true, false, true]), "0-1,3");
        assert_eq!(map_of(&[1, 3], 4), [false, true, false, true]);
        assert!(cpus_of_map(&[false, false], 2).is_err());
        assert_eq!(cpus_of_map(&[false, true, true], 2).expect("map"), [1]);
    }

    #[test]
    fn pins_are_read_and_changed_in_cputune() {
        let mut d = dom("<vcpu cpuset='1'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/><shares>5</shares></cputune>");
        assert_eq!(vcpu_pin(&d, 0).as_deref(), Some("0"));
        assert_eq!(
            vcpu_pin(&d, 1).as_deref(),
            Some("1"),
            "<vcpu cpuset> as default"
        );
        assert_eq!(emulator_pin(&d).as_deref(), Some("1"));
        set_pin(&mut d, Some(1), Some("0-1"));
        set_pin(&mut d, None, Some("0"));
        set_pin(&mut d, Some(0), None);
        assert_eq!(vcpu_pin(&d, 1).as_deref(), Some("0-1"));
        assert_eq!(vcpu_pin(&d, 0).as_deref(), Some("1"));
        assert_eq!(emulator_pin(&d).as_deref(), Some("0"));
        let tune = cputune(&d).expect("cputune");
        assert!(tune.first("shares").is_some(), "other tunables stay");
        let mut d = dom("");
        set_pin(&mut d, Some(0), Some("0"));
        set_pin(&mut d, Some(0), None);
        assert!(cputune(&d).is_none());
    }
}
