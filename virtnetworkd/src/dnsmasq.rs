//! dnsmasq per network: its config file, hosts files, the process (a child of the
//! daemon, tracked by PID) and the lease file it keeps under the state dir.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::xml::Network;

/// Where one network's dnsmasq files live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub conf: PathBuf,
    pub pid: PathBuf,
    pub hostsfile: PathBuf,
    pub addnhosts: PathBuf,
    pub leases: PathBuf,
    pub log: PathBuf,
}

impl Paths {
    pub fn new(runtime: &Path, state: &Path, name: &str) -> Paths {
        Paths {
            conf: runtime.join(format!("{name}.conf")),
            pid: runtime.join(format!("{name}.pid")),
            hostsfile: runtime.join(format!("{name}.hostsfile")),
            addnhosts: runtime.join(format!("{name}.addnhosts")),
            leases: state.join(format!("{name}.leases")),
            log: runtime.join(format!("{name}.dnsmasq.log")),
        }
    }
}

/// The one gate for every value written into dnsmasq's files: dnsmasq's syntax has no
/// quoting for newlines, so anything that could end a line, or carries control
/// characters or option separators, is refused.
pub fn check_value(v: &str) -> Result<&str, &'static str> {
    if v.is_empty() {
        return Err("empty value");
    }
    if v.chars()
        .any(|c| c.is_control() || c == ',' || c == '#' || c == ' ')
    {
        return Err("control characters, spaces, ',' and '#' are not allowed");
    }
    Ok(v)
}

#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("value '{value}' cannot go into dnsmasq's config: {reason}")]
    BadValue { value: String, reason: &'static str },
}

fn val(v: &str) -> Result<&str, DnsmasqError> {
    check_value(v).map_err(|reason| DnsmasqError::BadValue {
        value: v.to_owned(),
        reason,
    })
}

/// Whether this network needs dnsmasq at all (DNS is on, or there is DHCP).
pub fn needed(net: &Network) -> bool {
    let dns_off = net.dns.as_ref().and_then(|d| d.enable.as_deref()) == Some("no");
    let dhcp = net.ips.iter().any(|i| i.dhcp.is_some());
    !net.ips.is_empty() && (!dns_off || dhcp)
}

/// The config file. `--no-ping` is not used: like libvirt, dnsmasq checks an address
/// is unused before offering it (costs ~0 here since nothing else answers).
pub fn config(net: &Network, paths: &Paths) -> Result<String, DnsmasqError> {
    let mut c = String::new();
    let p = |p: &Path| val(&p.to_string_lossy()).map(str::to_owned);
    let _ = writeln!(c, "strict-order");
    let _ = writeln!(c, "pid-file={}", p(&paths.pid)?);
    let _ = writeln!(c, "except-interface=lo");
    let _ = writeln!(c, "bind-dynamic");
    let _ = writeln!(c, "interface={}", val(net.bridge_name())?);
    if let Some(d) = &net.domain {
        let d = val(d)?;
        let _ = writeln!(c, "domain={d}");
        let _ = writeln!(c, "local=/{d}/");
        let _ = writeln!(c, "expand-hosts");
    }
    let dns_off = net.dns.as_ref().and_then(|d| d.enable.as_deref()) == Some("no");
    if dns_off {
        let _ = writeln!(c, "port=0");
    }
    if let Some(dns) = &net.dns {
        for f in dns.other.iter().filter(|e| e.name == "forwarder") {
            match (f.get_attr("domain"), f.get_attr("addr")) {
                (Some(d), Some(a)) => {
                    let _ = writeln!(c, "server=/{}/{}", val(d)?, val(a)?);
                }
                (None, Some(a)) => {
                    let _ = writeln!(c, "server={}", val(a)?);
                }
                (Some(d), None) => {
                    let _ = writeln!(c, "server=/{}/", val(d)?);
                }
                (None, None) => {}
            }
        }
        for t in dns.other.iter().filter(|e| e.name == "txt") {
            if let (Some(n), Some(v)) = (t.get_attr("name"), t.get_attr("value")) {
                let _ = writeln!(c, "txt-record={},{}", val(n)?, val(v)?);
            }
        }
    }
    let mut leases = 0u64;
    let mut any_dhcp = false;
    for ip in &net.ips {
        let Some(d) = &ip.dhcp else { continue };
        for (s, e) in &d.ranges {
            any_dhcp = true;
            match ip.netmask_v4() {
                Some(m) => {
                    let _ = writeln!(c, "dhcp-range={s},{e},{m}");
                }
                None => {
                    let _ = writeln!(c, "dhcp-range={s},{e},{}", ip.prefix);
                }
            }
            leases += range_size(s, e);
        }
        if !d.hosts.is_empty() {
            any_dhcp = true;
        }
        for b in d.other.iter().filter(|e| e.name == "bootp") {
            if let Some(f) = b.get_attr("file") {
                match b.get_attr("server") {
                    Some(s) => {
                        let _ = writeln!(c, "dhcp-boot={},,{}", val(f)?, val(s)?);
                    }
                    None => {
                        let _ = writeln!(c, "dhcp-boot={}", val(f)?);
                    }
                }
            }
        }
    }
    if any_dhcp {
        let _ = writeln!(c, "dhcp-no-override");
        let _ = writeln!(c, "dhcp-authoritative");
        let _ = writeln!(c, "dhcp-lease-max={}", leases.max(1));
        let _ = writeln!(c, "dhcp-leasefile={}", p(&paths.leases)?);
        let _ = writeln!(c, "dhcp-hostsfile={}", p(&paths.hostsfile)?);
    }
    if net.ips.iter().any(|ip| ip.address.is_ipv6()) {
        // As libvirt: router advertisements on IPv6 networks, so guests find the
        // prefix (SLAAC) and, with a range, that DHCPv6 is there. dnsmasq advertises
        // only prefixes it has a range for: a subnet without DHCP gets an ra-only one.
        let _ = writeln!(c, "enable-ra");
        for ip in net.ips.iter().filter(|ip| ip.address.is_ipv6()) {
            if ip.dhcp.as_ref().is_none_or(|d| d.ranges.is_empty()) {
                let _ = writeln!(c, "dhcp-range={},ra-only,{}", ip.network(), ip.prefix);
            }
        }
    }
    let _ = writeln!(c, "addn-hosts={}", p(&paths.addnhosts)?);
    Ok(c)
}

fn range_size(s: &IpAddr, e: &IpAddr) -> u64 {
    match (s, e) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            u64::from(u32::from(*e).saturating_sub(u32::from(*s))) + 1
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            u64::try_from(u128::from(*e).saturating_sub(u128::from(*s)) + 1).unwrap_or(u64::MAX)
        }
        _ => 0,
    }
}

/// `dhcp-hostsfile` lines: `MAC,IP,NAME` (IPv6 addresses in brackets).
pub fn hostsfile(net: &Network) -> Result<String, DnsmasqError> {
    let mut out = String::new();
    for ip in &net.ips {
        let Some(d) = &ip.dhcp else { continue };
        for h in &d.hosts {
            let mut fields = Vec::new();
            if let Some(m) = h.mac {
                fields.push(m.to_string());
            }
            fields.push(match h.ip {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            });
            if let Some(n) = &h.name {
                fields.push(val(n)?.to_owned());
            }
            let _ = writeln!(out, "{}", fields.join(","));
        }
    }
    Ok(out)
}

/// `addn-hosts` lines: `IP NAME...`.
pub fn addnhosts(net: &Network) -> Result<String, DnsmasqError> {
    let mut out = String::new();
    if let Some(dns) = &net.dns {
        for h in &dns.hosts {
            let mut line = h.ip.to_string();
            for n in &h.hostnames {
                line.push(' ');
                line.push_str(val(n)?);
            }
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(out)
}

/// The argv: everything is in the config file, which lies under the runtime dir.
/// `user`: what dnsmasq drops to after opening its files (see `pick_user`); None
/// leaves dnsmasq's own default (nobody).
pub fn argv(paths: &Paths, user: Option<&str>) -> Vec<String> {
    let mut v = vec![
        format!("--conf-file={}", paths.conf.display()),
        "--keep-in-foreground".into(),
        format!("--log-facility={}", paths.log.display()),
    ];
    if let Some(u) = user {
        v.push(format!("--user={u}"));
    }
    v
}

/// The environment variable naming dnsmasq's user (overrides the choice below).
pub const USER_ENV: &str = "VIRTNETWORKD_DNSMASQ_USER";

/// Who dnsmasq runs as. `configured` (from USER_ENV) wins and must exist. Otherwise a
/// root daemon (system mode, or a session daemon run by root) uses the unprivileged
/// `dnsmasq` user when it exists (Debian's package makes it; libvirt's packages use
/// libvirt-dnsmasq), else dnsmasq's default; an unprivileged session daemon runs
/// dnsmasq as itself (dnsmasq cannot switch users then anyway).
pub fn pick_user(system: bool, configured: Option<&str>) -> Result<Option<String>, DnsmasqError> {
    use nix::unistd::{geteuid, User};
    if let Some(c) = configured {
        val(c)?;
        return match User::from_name(c) {
            Ok(Some(_)) => Ok(Some(c.to_owned())),
            _ => Err(DnsmasqError::BadValue {
                value: c.to_owned(),
                reason: "no such user",
            }),
        };
    }
    let euid = geteuid();
    if !system && !euid.is_root() {
        return Ok(User::from_uid(euid).ok().flatten().map(|u| u.name));
    }
    Ok(match User::from_name("dnsmasq") {
        Ok(Some(_)) => Some("dnsmasq".to_owned()),
        _ => None,
    })
}

/// One lease from dnsmasq's lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub expiry: i64,
    pub mac: String,
    pub ip: IpAddr,
    pub hostname: String,
    pub client_id: String,
}

/// Parses dnsmasq's lease file (`EXPIRY MAC IP HOSTNAME CLIENTID` per line; IPv6
/// lines after a `duid` line carry IAID in place of the MAC). Bad lines are skipped.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[0] == "duid" {
                return None;
            }
            let opt = |s: &str| {
                if s == "*" {
                    String::new()
                } else {
                    s.to_owned()
                }
            };
            Some(Lease {
                expiry: f[0].parse().ok()?,
                mac: f[1].to_owned(),
                ip: f[2].parse().ok()?,
                hostname: opt(f[3]),
                client_id: opt(f[4]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_user_is_checked_and_reaches_the_argv() {
        let p = Paths::new(Path::new("/r"), Path::new("/s"), "n");
        assert!(argv(&p, None).iter().all(|a| !a.starts_with("--user")));
        assert!(argv(&p, Some("dnsmasq")).contains(&"--user=dnsmasq".to_owned()));
        assert_eq!(pick_user(true, Some("root")).unwrap(), Some("root".into()));
        assert!(pick_user(true, Some("no-such-user-here")).is_err());
        assert!(pick_user(true, Some("a\nuser=root")).is_err());
        assert!(pick_user(true, Some("x,y")).is_err());
        let dflt = pick_user(true, None).unwrap();
        let has_dnsmasq = nix::unistd::User::from_name("dnsmasq")
            .ok()
            .flatten()
            .is_some();
        assert_eq!(dflt.as_deref(), has_dnsmasq.then_some("dnsmasq"));
    }

    fn net() -> Network {
        Network::from_xml(
            "<network><name>n</name><bridge name='vbr9'/><domain name='lab'/>
             <dns><host ip='10.9.0.7'><hostname>web</hostname><hostname>www</hostname></host></dns>
             <ip address='10.9.0.1' prefix='24'><dhcp><range start='10.9.0.100' end='10.9.0.199'/>
             <host mac='52:54:00:00:00:01' name='fixed' ip='10.9.0.50'/></dhcp></ip></network>",
        )
        .unwrap()
    }

    #[test]
    fn ipv6_networks_advertise_routes() {
        let paths = Paths::new(Path::new("/run/x"), Path::new("/var/x"), "n");
        assert!(!config(&net(), &paths).unwrap().contains("enable-ra"));
        let slaac = Network::from_xml(
            "<network><name>n</name><bridge name='vbr9'/>
             <ip family='ipv6' address='fd00:8::1' prefix='64'/></network>",
        )
        .unwrap();
        let c = config(&slaac, &paths).unwrap();
        assert!(
            c.contains("enable-ra\ndhcp-range=fd00:8::,ra-only,64\n"),
            "{c}"
        );
        let v6 = Network::from_xml(
            "<network><name>n</name><bridge name='vbr9'/>
             <ip family='ipv6' address='fd00:9::1' prefix='64'><dhcp>
             <range start='fd00:9::100' end='fd00:9::1ff'/></dhcp></ip></network>",
        )
        .unwrap();
        let c = config(&v6, &paths).unwrap();
        assert!(c.contains("enable-ra\n"), "{c}");
        assert!(c.contains("dhcp-range=fd00:9::100,fd00:9::1ff,64\n"), "{c}");
    }

    #[test]
    fn config_has_range_authoritative_and_files() {
        let paths = Paths::new(Path::new("/run/x"), Path::new("/var/x"), "n");
        let c = config(&net(), &paths).unwrap();
        assert!(c.contains("interface=vbr9\n"));
        assert!(c.contains("dhcp-range=10.9.0.100,10.9.0.199,255.255.255.0\n"));
        assert!(c.contains("dhcp-authoritative\n"));
        assert!(c.contains("dhcp-lease-max=100\n"));
        assert!(c.contains("dhcp-leasefile=/var/x/n.leases\n"));
        assert!(c.contains("pid-file=/run/x/n.pid\n"));
        assert!(c.contains("local=/lab/\n"));
        assert_eq!(
            hostsfile(&net()).unwrap(),
            "52:54:00:00:00:01,10.9.0.50,fixed\n"
        );
        assert_eq!(addnhosts(&net()).unwrap(), "10.9.0.7 web www\n");
    }

    #[test]
    fn values_that_would_inject_are_refused() {
        assert!(check_value("a\ndhcp-option=3").is_err());
        assert!(check_value("a,b").is_err());
        assert!(check_value("a b").is_err());
        assert!(check_value("pxelinux.0").is_ok());
        let paths = Paths::new(Path::new("/run/a\nb"), Path::new("/v"), "n");
        assert!(config(&net(), &paths).is_err());
    }

    #[test]
    fn leases_parse() {
        let l = parse_leases(
            "1700000000 52:54:00:00:00:01 10.9.0.50 fixed 01:52:54:00:00:00:01\n\
             1700000001 52:54:00:00:00:02 10.9.0.101 * *\ngarbage\n",
        );
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].hostname, "fixed");
        assert_eq!(l[1].hostname, "");
        assert_eq!(l[1].ip, "10.9.0.101".parse::<IpAddr>().unwrap());
    }
}
