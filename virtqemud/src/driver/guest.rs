//! What the guest itself answers, through the QEMU guest agent (`crate::agent`), and a
//! running guest's addresses from the agent, the DHCP leases of its networks or the
//! ARP table. Agent calls take the domain's agent lock, never its job lock: a slow or
//! silent guest holds up no other operation on the domain, as libvirt's agent jobs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::error::{check_flags, ErrorCode, VirError};
use serde_json::{json, Value};
use zbus::zvariant::OwnedValue;

use super::{not_running, Dom, Driver};
use crate::agent;
use crate::xml::{Address, InterfaceKind};

/// One guest interface as `InterfaceAddresses` returns it: name, MAC, and the
/// addresses as (0 IPv4 | 1 IPv6, address, prefix).
pub type GuestInterface = (String, String, Vec<(i32, String, u32)>);

/// `virDomainInterfaceAddressesSource`.
const SOURCE_LEASE: u32 = 0;
const SOURCE_AGENT: u32 = 1;
const SOURCE_ARP: u32 = 2;

bitflags::bitflags! {
    /// `virDomainGetHostnameFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct HostnameFlags: u32 {
        const LEASE = 1;
        const AGENT = 2;
    }
}

impl Driver {
    /// The agent's socket of a running `dom` whose guest has the channel open.
    async fn agent_socket(&self, dom: &Dom) -> Result<PathBuf, VirError> {
        let (index, socket, qmp) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let run_dir = l.qmp_path.parent().unwrap_or(&l.qmp_path);
            let (i, socket) = agent::channel(&l.def.dom, run_dir)?;
            (i, socket, l.qmp.clone())
        };
        if !agent::connected(&qmp, index).await? {
            return Err(VirError::new(
                ErrorCode::AgentUnresponsive,
                "QEMU guest agent is not connected",
            ));
        }
        Ok(socket)
    }

    /// One agent command, one at a time per domain.
    async fn agent(
        &self,
        dom: &Dom,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, VirError> {
        let _call = self.calls.enter();
        let _agent = dom.agent.lock().await;
        let socket = self.agent_socket(dom).await?;
        agent::execute(&socket, command, args, true).await
    }

    /// Whether `dom` has an agent channel its guest has open: Shutdown and Reboot
    /// prefer it then, as libvirt's QEMU driver does.
    pub(super) async fn agent_available(&self, dom: &Dom) -> bool {
        self.agent_socket(dom).await.is_ok()
    }

    /// `guest-shutdown`: the agent answers nothing when it goes ahead.
    pub(super) async fn agent_shutdown(&self, dom: &Dom, mode: &str) -> Result<(), VirError> {
        let _agent = dom.agent.lock().await;
        let socket = self.agent_socket(dom).await?;
        agent::execute(
            &socket,
            "guest-shutdown",
            Some(json!({ "mode": mode })),
            false,
        )
        .await?;
        Ok(())
    }

    pub async fn guest_hostname(&self, dom: &Arc<Dom>, flags: u32) -> Result<String, VirError> {
        let f: HostnameFlags = common::error::flags(flags)?;
        if f.contains(HostnameFlags::LEASE | HostnameFlags::AGENT) {
            return Err(VirError::invalid_arg(
                "flags 'lease' and 'agent' are mutually exclusive",
            ));
        }
        if f.contains(HostnameFlags::LEASE) {
            let leases = self.leases(dom).await?;
            return leases
                .into_iter()
                .map(|l| l.7)
                .find(|h| !h.is_empty())
                .ok_or_else(|| {
                    VirError::new(
                        ErrorCode::NoSupport,
                        "no hostname found in the DHCP leases of the domain's networks",
                    )
                });
        }
        let v = self.agent(dom, "guest-get-host-name", None).await?;
        v.get("host-name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed("guest-get-host-name"))
    }

    pub async fn guest_time(&self, dom: &Arc<Dom>, flags: u32) -> Result<(u64, u32), VirError> {
        check_flags(flags, 0)?;
        let v = self.agent(dom, "guest-get-time", None).await?;
        let ns = v.as_i64().ok_or_else(|| malformed("guest-get-time"))?;
        let ns = u64::try_from(ns).map_err(|_| malformed("guest-get-time"))?;
        Ok((ns / 1_000_000_000, (ns % 1_000_000_000) as u32))
    }

    /// `SetTime`: the given time, or with SYNC (1) the guest's clock set from its RTC.
    pub async fn set_guest_time(
        &self,
        dom: &Arc<Dom>,
        seconds: u64,
        nseconds: u32,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 1)?;
        let args = if flags & 1 != 0 {
            None
        } else {
            if nseconds >= 1_000_000_000 {
                return Err(VirError::invalid_arg(format!(
                    "nseconds {nseconds} is not below one second"
                )));
            }
            let ns = seconds
                .checked_mul(1_000_000_000)
                .and_then(|s| s.checked_add(u64::from(nseconds)))
                .and_then(|t| i64::try_from(t).ok())
                .ok_or_else(|| VirError::invalid_arg(format!("time {seconds}s is too large")))?;
            Some(json!({ "time": ns }))
        };
        self.agent(dom, "guest-set-time", args).await?;
        Ok(())
    }

    pub async fn fs_freeze(
        &self,
        dom: &Arc<Dom>,
        mountpoints: &[String],
        flags: u32,
    ) -> Result<u32, VirError> {
        check_flags(flags, 0)?;
        let v = if mountpoints.is_empty() {
            self.agent(dom, "guest-fsfreeze-freeze", None).await?
        } else {
            self.agent(
                dom,
                "guest-fsfreeze-freeze-list",
                Some(json!({ "mountpoints": mountpoints })),
            )
            .await?
        };
        count(&v, "guest-fsfreeze-freeze")
    }

    pub async fn fs_thaw(
        &self,
        dom: &Arc<Dom>,
        mountpoints: &[String],
        flags: u32,
    ) -> Result<u32, VirError> {
        check_flags(flags, 0)?;
        if !mountpoints.is_empty() {
            return Err(VirError::new(
                ErrorCode::ArgumentUnsupported,
                "specifying mountpoints is not supported",
            ));
        }
        let v = self.agent(dom, "guest-fsfreeze-thaw", None).await?;
        count(&v, "guest-fsfreeze-thaw")
    }

    pub async fn fs_trim(
        &self,
        dom: &Arc<Dom>,
        mountpoint: &str,
        minimum: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        if !mountpoint.is_empty() {
            return Err(VirError::new(
                ErrorCode::ArgumentUnsupported,
                "Specifying mount point is not supported for now",
            ));
        }
        self.agent(dom, "guest-fstrim", Some(json!({ "minimum": minimum })))
            .await?;
        Ok(())
    }

    /// `GetFSInfo`: (mount point, device name, type, the domain's disks under it), the
    /// disks found by their serial or PCI address in the running definition.
    pub async fn fs_info(
        &self,
        dom: &Arc<Dom>,
        flags: u32,
    ) -> Result<Vec<(String, String, String, Vec<String>)>, VirError> {
        check_flags(flags, 0)?;
        let v = self.agent(dom, "guest-get-fsinfo", None).await?;
        let disks = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            l.def.dom.devices.disks.clone()
        };
        let target_of = |d: &Value| -> Option<String> {
            let serial = d.get("serial").and_then(Value::as_str);
            let pci = d.get("pci-controller");
            disks
                .iter()
                .find(|disk| {
                    serial.is_some_and(|s| disk.serial.as_deref() == Some(s))
                        || pci.is_some_and(|p| {
                            let field = |k: &str| p.get(k).and_then(Value::as_u64);
                            matches!(&disk.address, Some(Address::Pci(a))
                                if field("domain") == Some(u64::from(a.domain))
                                    && field("bus") == Some(u64::from(a.bus))
                                    && field("slot") == Some(u64::from(a.slot))
                                    && field("function") == Some(u64::from(a.function)))
                        })
                })
                .map(|disk| disk.target_dev.clone())
        };
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|fs| {
                let s = |k: &str| fs.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let aliases = fs
                    .get("disk")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(target_of)
                    .collect();
                (s("mountpoint"), s("name"), s("type"), aliases)
            })
            .collect())
    }

    /// `GetGuestVcpus`: the guest's logical CPUs, which are online and which it can
    /// take offline, as libvirt's CPU lists.
    pub async fn guest_vcpus(
        &self,
        dom: &Arc<Dom>,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        check_flags(flags, 0)?;
        let cpus = self.agent_vcpus(dom).await?;
        let list = |keep: fn(&(u32, bool, bool)) -> bool| {
            agent::cpu_list(cpus.iter().filter(|c| keep(c)).map(|c| c.0))
        };
        let mut out = HashMap::new();
        for (k, v) in [
            ("vcpus", list(|_| true)),
            ("online", list(|c| c.1)),
            ("offlinable", list(|c| c.2)),
        ] {
            out.insert(k.to_owned(), OwnedValue::from(zbus::zvariant::Str::from(v)));
        }
        Ok(out)
    }

    /// (logical id, online, can go offline) of every guest CPU.
    async fn agent_vcpus(&self, dom: &Dom) -> Result<Vec<(u32, bool, bool)>, VirError> {
        let v = self.agent(dom, "guest-get-vcpus", None).await?;
        v.as_array()
            .ok_or_else(|| malformed("guest-get-vcpus"))?
            .iter()
            .map(|c| {
                Some((
                    u32::try_from(c.get("logical-id")?.as_u64()?).ok()?,
                    c.get("online")?.as_bool()?,
                    c.get("can-offline")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("guest-get-vcpus"))
    }

    /// `SetGuestVcpus`: the guest CPUs set in `map` brought online (`state` 1) or
    /// offline (0).
    pub async fn set_guest_vcpus(
        &self,
        dom: &Arc<Dom>,
        map: &[bool],
        state: i32,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let online = match state {
            0 => false,
            1 => true,
            s => return Err(VirError::invalid_arg(format!("unknown vCPU state {s}"))),
        };
        let cpus = self.agent_vcpus(dom).await?;
        let mut changes = Vec::new();
        for (id, _) in map.iter().enumerate().filter(|(_, set)| **set) {
            let id = id as u32;
            let cpu = cpus.iter().find(|c| c.0 == id).ok_or_else(|| {
                VirError::invalid_arg(format!("vCPU '{id}' is not present in the guest"))
            })?;
            if !online && !cpu.2 {
                return Err(VirError::invalid_arg(format!(
                    "vCPU '{id}' can't be offlined"
                )));
            }
            if cpu.1 != online {
                changes.push(json!({ "logical-id": id, "online": online }));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let n = changes.len();
        let v = self
            .agent(dom, "guest-set-vcpus", Some(json!({ "vcpus": changes })))
            .await?;
        if count(&v, "guest-set-vcpus")? as usize != n {
            return Err(VirError::operation_failed(
                "the guest agent changed the state of fewer vCPUs than asked",
            ));
        }
        Ok(())
    }

    /// `SetUserPassword`: ENCRYPTED (1) passes a crypt(3) hash.
    pub async fn set_user_password(
        &self,
        dom: &Arc<Dom>,
        user: &str,
        password: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 1)?;
        if user.is_empty() {
            return Err(VirError::invalid_arg("no user name given"));
        }
        let args = json!({
            "username": user,
            "password": common::base64::encode(password.as_bytes()),
            "crypted": flags & 1 != 0,
        });
        self.agent(dom, "guest-set-user-password", Some(args))
            .await?;
        Ok(())
    }

    /// `InterfaceAddresses` from the DHCP leases of the domain's networks (0), the
    /// guest agent (1) or the host's ARP table (2).
    pub async fn interface_addresses(
        &self,
        dom: &Arc<Dom>,
        source: u32,
        flags: u32,
    ) -> Result<Vec<GuestInterface>, VirError> {
        check_flags(flags, 0)?;
        match source {
            SOURCE_LEASE => {
                let nics = self.nics(dom)?;
                let leases = self.leases(dom).await?;
                Ok(group(
                    nics,
                    leases
                        .iter()
                        .map(|l| (l.3.to_lowercase(), (l.2, l.5.clone(), l.6))),
                ))
            }
            SOURCE_AGENT => {
                let v = self
                    .agent(dom, "guest-network-get-interfaces", None)
                    .await?;
                Ok(from_agent(&v))
            }
            SOURCE_ARP => {
                let nics = self.nics(dom)?;
                let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
                Ok(group(
                    nics,
                    arp.lines().skip(1).filter_map(|line| {
                        let f: Vec<&str> = line.split_whitespace().collect();
                        // Complete entries only (flags 0x2).
                        (f.len() >= 4 && f[2] != "0x0")
                            .then(|| (f[3].to_lowercase(), (0, f[0].to_owned(), 0)))
                    }),
                ))
            }
            s => Err(VirError::invalid_arg(format!(
                "unknown IP address data source {s}"
            ))),
        }
    }

    /// (host-side name, MAC, network) of the running domain's NICs.
    fn nics(&self, dom: &Dom) -> Result<Vec<(String, String, Option<String>)>, VirError> {
        let g = dom.lock();
        let l = g.live.as_ref().ok_or_else(not_running)?;
        Ok(l.def
            .dom
            .devices
            .interfaces
            .iter()
            .filter_map(|i| {
                let mac = i.mac.as_ref()?.to_string().to_lowercase();
                let network = match &i.kind {
                    InterfaceKind::Network(n) => Some(n.clone()),
                    _ => None,
                };
                Some((i.target_dev.clone().unwrap_or_default(), mac, network))
            })
            .collect())
    }

    /// The DHCP leases of the running domain's NICs on virtnetworkd's networks.
    async fn leases(&self, dom: &Dom) -> Result<Vec<common::proxies::network::Lease>, VirError> {
        let nics = self.nics(dom)?;
        let mut out = Vec::new();
        for (_, mac, network) in nics {
            let Some(network) = network else { continue };
            out.extend(crate::nics::dhcp_leases(self.ctx.settings.mode, &network, &mac).await?);
        }
        Ok(out)
    }
}

/// The NICs with the addresses found for their MACs, NICs without any left out.
fn group(
    nics: Vec<(String, String, Option<String>)>,
    found: impl Iterator<Item = (String, (i32, String, u32))>,
) -> Vec<GuestInterface> {
    let found: Vec<_> = found.collect();
    nics.into_iter()
        .filter_map(|(name, mac, _)| {
            let addrs: Vec<_> = found
                .iter()
                .filter(|(m, _)| *m == mac)
                .map(|(_, a)| a.clone())
                .collect();
            (!addrs.is_empty()).then_some((name, mac, addrs))
        })
        .collect()
}

/// `guest-network-get-interfaces` as libvirt reports it (loopback included).
fn from_agent(v: &Value) -> Vec<GuestInterface> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let addrs = i
                .get("ip-addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    let kind = match a.get("ip-address-type")?.as_str()? {
                        "ipv4" => 0,
                        "ipv6" => 1,
                        _ => return None,
                    };
                    let prefix = a.get("prefix").and_then(Value::as_u64).unwrap_or(0) as u32;
                    Some((kind, a.get("ip-address")?.as_str()?.to_owned(), prefix))
                })
                .collect();
            (s("name"), s("hardware-address"), addrs)
        })
        .collect()
}

fn count(v: &Value, command: &str) -> Result<u32, VirError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| malformed(command))
}

fn malformed(command: &str) -> VirError {
    VirError::internal(format!(
        "malformed answer of the guest agent to '{command}'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_interfaces_become_libvirts() {
        let v = json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:77:00:10",
             "ip-addresses": [
                {"ip-address-type": "ipv4", "ip-address": "10.77.0.145", "prefix": 24},
                {"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64}]},
            {"name": "eth1", "hardware-address": "52:54:00:77:00:11"}
        ]);
        let got = from_agent(&v);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1],
            (
                "eth0".to_owned(),
                "52:54:00:77:00:10".to_owned(),
                vec![
                    (0, "10.77.0.145".to_owned(), 24),
                    (1, "fe80::1".to_owned(), 64)
                ]
            )
        );
        assert!(got[2].2.is_empty());
    }

    #[test]
    fn addresses_are_grouped_by_nic() {
        let nics = vec![
            ("vnet0".to_owned(), "52:54:00:00:00:01".to_owned(), None),
            ("vnet1".to_owned(), "52:54:00:00:00:02".to_owned(), None),
        ];
        let found = vec![
            (
                "52:54:00:00:00:01".to_owned(),
                (0, "10.0.0.2".to_owned(), 24),
            ),
            (
                "aa:bb:cc:dd:ee:ff".to_owned(),
                (0, "10.0.0.9".to_owned(), 24),
            ),
        ];
        assert_eq!(
            group(nics, found.into_iter()),
            vec![(
                "vnet0".to_owned(),
                "52:54:00:00:00:01".to_owned(),
                vec![(0, "10.0.0.2".to_owned(), 24)]
            )]
        );
    }
}
