//! libvirt's perf events of a domain (`<perf><event name enabled/></perf>`,
//! Get/SetPerfEvents, the `perf.*` statistics): one kernel perf counter per enabled
//! event on the QEMU process, opened as libvirt opens them (`perf_event_open` on QEMU's
//! PID, any CPU, inherited by threads QEMU starts later, enabled once open).
//!
//! The counters live in the daemon; a restarted daemon opens them again from the live
//! definition, so counts start over, as they do after libvirt's daemon restarts.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::error::{ErrorCode, VirError};
use common::xml::Element;

/// `PERF_TYPE_HARDWARE` and `PERF_TYPE_SOFTWARE`.
const HARDWARE: u32 = 0;
const SOFTWARE: u32 = 1;

/// libvirt's event names (`VIR_PERF_PARAM_*`) and the kernel's (type, config). The
/// Intel RDT events (cmt, mbmt, mbml) came through a perf PMU Linux removed in 4.14.
pub const EVENTS: &[(&str, Option<(u32, u64)>)] = &[
    ("cmt", None),
    ("mbmt", None),
    ("mbml", None),
    ("cpu_cycles", Some((HARDWARE, 0))),
    ("instructions", Some((HARDWARE, 1))),
    ("cache_references", Some((HARDWARE, 2))),
    ("cache_misses", Some((HARDWARE, 3))),
    ("branch_instructions", Some((HARDWARE, 4))),
    ("branch_misses", Some((HARDWARE, 5))),
    ("bus_cycles", Some((HARDWARE, 6))),
    ("stalled_cycles_frontend", Some((HARDWARE, 7))),
    ("stalled_cycles_backend", Some((HARDWARE, 8))),
    ("ref_cpu_cycles", Some((HARDWARE, 9))),
    ("cpu_clock", Some((SOFTWARE, 0))),
    ("task_clock", Some((SOFTWARE, 1))),
    ("page_faults", Some((SOFTWARE, 2))),
    ("context_switches", Some((SOFTWARE, 3))),
    ("cpu_migrations", Some((SOFTWARE, 4))),
    ("page_faults_min", Some((SOFTWARE, 5))),
    ("page_faults_maj", Some((SOFTWARE, 6))),
    ("alignment_faults", Some((SOFTWARE, 7))),
    ("emulation_faults", Some((SOFTWARE, 8))),
];

pub fn is_event(name: &str) -> bool {
    EVENTS.iter().any(|(n, _)| *n == name)
}

/// The kernel's `struct perf_event_attr` up to its first published size
/// (`PERF_ATTR_SIZE_VER0`, 64 bytes), which every kernel accepts.
#[repr(C)]
#[derive(Default)]
struct Attr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0 `disabled`, bit 1 `inherit`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
}

const FLAG_DISABLED: u64 = 1;
const FLAG_INHERIT: u64 = 1 << 1;
/// `PERF_FLAG_FD_CLOEXEC`.
const FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_EVENT_IOC_ENABLE`.
const IOC_ENABLE: libc::c_ulong = 0x2400;

/// The open counters of one running QEMU, by libvirt name.
#[derive(Debug, Default)]
pub struct Counters {
    open: Vec<(String, OwnedFd)>,
}

impl Counters {
    /// Opens (and enables) `name` on `pid`, unless it is open already.
    pub fn enable(&mut self, name: &str, pid: u32) -> Result<(), VirError> {
        if self.is_enabled(name) {
            return Ok(());
        }
        let (kind, config) = EVENTS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| unknown(name))?
            .1
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::ArgumentUnsupported,
                    format!(
                        "perf event '{name}' is not supported on this host (Linux removed its perf interface in 4.14)"
                    ),
                )
            })?;
        let attr = Attr {
            kind,
            size: std::mem::size_of::<Attr>() as u32,
            config,
            flags: FLAG_DISABLED | FLAG_INHERIT,
            ..Attr::default()
        };
        let pid = libc::pid_t::try_from(pid).map_err(|_| VirError::internal("bad QEMU pid"))?;
        // SAFETY: `attr` is a valid, initialised perf_event_attr of the size it states and
        // outlives the call; the kernel only reads it. The returned descriptor, if any, is
        // new and owned by nothing else.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                std::ptr::from_ref(&attr),
                pid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                FD_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(VirError::system(
                format!("Unable to open perf type={kind} for pid={pid}"),
                &e,
            ));
        }
        // SAFETY: `fd` was just returned by perf_event_open and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // SAFETY: an ioctl without argument on the perf descriptor we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), IOC_ENABLE, 0) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(VirError::system(
                format!("Unable to enable perf event for {name}"),
                &e,
            ));
        }
        self.open.push((name.to_owned(), fd));
        Ok(())
    }

    /// The counters of a QEMU a restarted daemon adopts: they died with the daemon that
    /// held them, so they are opened again from the live definition, from zero.
    pub fn reopen(other: &[Element], pid: u32, domain: &str) -> Counters {
        let mut c = Counters::default();
        for e in enabled_in(other) {
            if let Err(err) = c.enable(&e, pid) {
                tracing::warn!(%domain, event = %e, "perf event not reopened: {err}");
            }
        }
        c
    }

    /// Closes `name`'s counter.
    pub fn disable(&mut self, name: &str) {
        self.open.retain(|(n, _)| n != name);
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        self.open.iter().any(|(n, _)| n == name)
    }

    /// Every open counter's value now.
    pub fn read(&self) -> Vec<(String, u64)> {
        self.open
            .iter()
            .filter_map(|(n, fd)| {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes into `v` from the counter's descriptor we own.
                let r = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        std::ptr::from_mut(&mut v).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                (r == 8).then(|| (n.clone(), v))
            })
            .collect()
    }
}

fn unknown(name: &str) -> VirError {
    VirError::new(
        ErrorCode::ArgumentUnsupported,
        format!("parameter '{name}' not supported"),
    )
}

/// The events a definition's `<perf>` enables.
pub fn enabled_in(other: &[Element]) -> Vec<String> {
    other
        .iter()
        .filter(|e| e.name == "perf")
        .flat_map(|p| p.children_named("event"))
        .filter(|e| e.get_attr("enabled") == Some("yes"))
        .filter_map(|e| e.get_attr("name").map(str::to_owned))
        .collect()
}

/// Checks a definition's `<perf>` as libvirt's parser does: known names, yes/no.
pub fn check(other: &[Element]) -> Result<(), String> {
    for p in other.iter().filter(|e| e.name == "perf") {
        for e in p.elements() {
            if e.name != "event" {
                return Err(format!("unknown element <perf><{}>", e.name));
            }
            let name = e.get_attr("name").unwrap_or("");
            if !is_event(name) {
                return Err(format!("unknown perf event '{name}'"));
            }
            if !matches!(e.get_attr("enabled"), Some("yes" | "no")) {
                return Err(format!(
                    "perf event '{name}': enabled must be 'yes' or 'no'"
                ));
            }
        }
    }
    Ok(())
}

/// Sets `name` to `on` in a definition's `<perf>` (made when missing), in the place
/// libvirt keeps it.
pub fn set_in(other: &mut Vec<Element>, name: &str, on: bool) {
    let i = match other.iter().position(|e| e.name == "perf") {
        Some(i) => i,
        None => {
            other.push(Element::new("perf"));
            other.len() - 1
        }
    };
    let perf = &mut other[i];
    let value = if on { "yes" } else { "no" };
    for c in perf.children.iter_mut() {
        if let common::xml::Node::Element(e) = c {
            if e.name == "event" && e.get_attr("name") == Some(name) {
                e.attrs.retain(|(k, _)| k != "enabled");
                e.attrs.push(("enabled".into(), value.into()));
                return;
            }
        }
    }
    perf.push(
        Element::new("event")
            .attr("name", name)
            .attr("enabled", value),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_says_which_events_are_on() {
        let mut other = vec![];
        set_in(&mut other, "cpu_clock", true);
        set_in(&mut other, "page_faults", false);
        set_in(&mut other, "page_faults", true);
        set_in(&mut other, "cpu_clock", false);
        assert_eq!(enabled_in(&other), vec!["page_faults".to_owned()]);
        assert!(check(&other).is_ok());
        let bad = common::xml::parse("<perf><event name='warp' enabled='yes'/></perf>").unwrap();
        assert!(check(&[bad]).unwrap_err().contains("'warp'"));
        let bad =
            common::xml::parse("<perf><event name='cpu_clock' enabled='on'/></perf>").unwrap();
        assert!(check(&[bad]).unwrap_err().contains("yes"));
    }

    #[test]
    fn a_software_counter_counts_this_process() {
        // A PID counts its own thread (and those it starts later): this test's thread.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let mut c = Counters::default();
        c.enable("task_clock", tid).expect("task_clock");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let v = c.read();
        assert_eq!(v.len(), 1);
        assert!(v[0].1 > 0, "{v:?}");
        let e = c.enable("cmt", tid).unwrap_err().to_string();
        assert!(e.contains("cmt"), "{e}");
        c.disable("task_clock");
        assert!(c.read().is_empty());
    }
}
