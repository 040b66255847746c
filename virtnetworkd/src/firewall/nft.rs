//! nftables through the nftables crate: `table inet libvirt_rs` (filter: forward,
//! input) and `table ip libvirt_rs_nat` (masquerade), rebuilt in one batch.

use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::schema::{NfCmd, Nftables};
use serde_json::{json, Value};

use super::{Firewall, FirewallError, FwNet};
use crate::xml::ForwardMode;

pub const FILTER_TABLE: &str = "libvirt_rs";
pub const NAT_TABLE: &str = "libvirt_rs_nat";

pub struct Nft;

fn m(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn ifname(key: &str, name: &str) -> Value {
    m(json!({"meta": {"key": key}}), "==", json!(name))
}

fn addr(field: &str, net: &(IpAddr, u8), op: &str) -> Value {
    let proto = if net.0.is_ipv4() { "ip" } else { "ip6" };
    m(
        json!({"payload": {"protocol": proto, "field": field}}),
        op,
        json!({"prefix": {"addr": net.0.to_string(), "len": net.1}}),
    )
}

fn rule(family: &str, table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}

fn chain(family: &str, table: &str, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": family, "table": table, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

/// The commands of one transaction, as nft JSON.
pub fn commands(nets: &[FwNet]) -> Vec<Value> {
    let mut cmds = Vec::new();
    for (family, table) in [("inet", FILTER_TABLE), ("ip", NAT_TABLE)] {
        // add-then-delete: removes the table whether or not it exists, atomically.
        cmds.push(json!({"add": {"table": {"family": family, "name": table}}}));
        cmds.push(json!({"delete": {"table": {"family": family, "name": table}}}));
    }
    if nets.is_empty() {
        return cmds;
    }
    let (f, t) = ("inet", FILTER_TABLE);
    cmds.push(json!({"add": {"table": {"family": f, "name": t}}}));
    cmds.push(chain(f, t, "forward", "filter", "forward", 0));
    cmds.push(chain(f, t, "input", "filter", "input", 0));
    cmds.push(json!({"add": {"table": {"family": "ip", "name": NAT_TABLE}}}));
    cmds.push(chain(
        "ip",
        NAT_TABLE,
        "postrouting",
        "nat",
        "postrouting",
        100,
    ));
    let accept = || json!({"accept": null});
    let reject = || json!({"reject": null});
    for n in nets {
        let br = n.bridge.as_str();
        if n.mode == Some(ForwardMode::Open) || n.mode == Some(ForwardMode::Bridge) {
            continue;
        }
        // DHCP and DNS from the guests to the host.
        for (proto, port) in [("udp", 67), ("udp", 547), ("udp", 53), ("tcp", 53)] {
            cmds.push(rule(
                f,
                t,
                "input",
                vec![
                    ifname("iifname", br),
                    m(
                        json!({"payload": {"protocol": proto, "field": "dport"}}),
                        "==",
                        json!(port),
                    ),
                    accept(),
                ],
            ));
        }
        match n.mode {
            Some(ForwardMode::Nat) => {
                for s in &n.subnets {
                    cmds.push(rule(
                        f,
                        t,
                        "forward",
                        vec![ifname("iifname", br), addr("saddr", s, "=="), accept()],
                    ));
                    cmds.push(rule(
                        f,
                        t,
                        "forward",
                        vec![
                            ifname("oifname", br),
                            addr("daddr", s, "=="),
                            m(
                                json!({"ct": {"key": "state"}}),
                                "in",
                                json!({"set": ["established", "related"]}),
                            ),
                            accept(),
                        ],
                    ));
                    if s.0.is_ipv4() {
                        let nat = |extra: Vec<Value>| {
                            let mut e = vec![addr("saddr", s, "==")];
                            e.extend(extra);
                            rule("ip", NAT_TABLE, "postrouting", e)
                        };
                        // Like libvirt: multicast and broadcast are not masqueraded.
                        cmds.push(nat(vec![
                            addr("daddr", &("224.0.0.0".parse().unwrap_or(s.0), 24), "=="),
                            json!({"return": null}),
                        ]));
                        cmds.push(nat(vec![
                            m(
                                json!({"payload": {"protocol": "ip", "field": "daddr"}}),
                                "==",
                                json!("255.255.255.255"),
                            ),
                            json!({"return": null}),
                        ]));
                        cmds.push(nat(vec![
                            addr("daddr", s, "!="),
                            json!({"masquerade": null}),
                        ]));
                    }
                }
            }
            Some(ForwardMode::Route) => {
                for s in &n.subnets {
                    cmds.push(rule(
                        f,
                        t,
                        "forward",
                        vec![ifname("iifname", br), addr("saddr", s, "=="), accept()],
                    ));
                    cmds.push(rule(
                        f,
                        t,
                        "forward",
                        vec![ifname("oifname", br), addr("daddr", s, "=="), accept()],
                    ));
                }
            }
            _ => {}
        }
        // Guest to guest on the same bridge, then nothing else in or out.
        cmds.push(rule(
            f,
            t,
            "forward",
            vec![ifname("iifname", br), ifname("oifname", br), accept()],
        ));
        cmds.push(rule(f, t, "forward", vec![ifname("iifname", br), reject()]));
        cmds.push(rule(f, t, "forward", vec![ifname("oifname", br), reject()]));
    }
    cmds
}

/// The batch for `nets`, typed by the nftables crate's schema.
pub fn batch(nets: &[FwNet]) -> Result<Nftables<'static>, FirewallError> {
    let mut b = Batch::new();
    for c in commands(nets) {
        let cmd: NfCmd<'static> =
            serde_json::from_value(c).map_err(|e| FirewallError::Build(e.to_string()))?;
        b.add_cmd(cmd);
    }
    Ok(b.to_nftables())
}

impl Firewall for Nft {
    fn apply(&self, nets: &[FwNet]) -> Result<(), FirewallError> {
        let b = batch(nets)?;
        nftables::helper::apply_ruleset(&b).map_err(|e| FirewallError::Apply(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> FwNet {
        FwNet {
            bridge: "vbr0".into(),
            mode: Some(ForwardMode::Nat),
            subnets: vec![("192.168.50.0".parse().unwrap(), 24)],
        }
    }

    #[test]
    fn nat_rules_masquerade_the_subnet_and_forward_replies() {
        let text = serde_json::to_string(&batch(&[nat()]).unwrap()).unwrap();
        assert!(text.contains("\"masquerade\""));
        assert!(text.contains("\"192.168.50.0\""));
        assert!(text.contains("\"224.0.0.0\""));
        assert!(text.contains("\"established\""));
        assert!(text.contains("\"libvirt_rs_nat\""));
    }

    #[test]
    fn isolated_has_no_accepting_forward_out() {
        let mut n = nat();
        n.mode = None;
        batch(&[n.clone()]).unwrap();
        let cmds = commands(&[n]);
        let forward: Vec<String> = cmds
            .iter()
            .map(|c| c.to_string())
            .filter(|c| c.contains("\"chain\":\"forward\"") && c.contains("\"rule\""))
            .collect();
        // only guest-to-guest accept and the two rejects
        assert_eq!(forward.len(), 3);
        assert!(!cmds.iter().any(|c| c.to_string().contains("masquerade")));
    }

    #[test]
    fn no_networks_only_removes_our_tables() {
        let cmds = commands(&[]);
        assert_eq!(cmds.len(), 4);
        assert!(cmds.iter().all(|c| c.to_string().contains("libvirt_rs")));
    }
}
