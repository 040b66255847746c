//! nftables through the nftables crate: `table inet libvirt_rs` (filter: forward,
//! input) and `table ip libvirt_rs_nat` (masquerade), rebuilt in one batch.

use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::schema::{NfCmd, Nftables};
use serde_json::{json, Value};

use super::{Firewall, FirewallError, FwNet};
use crate::xml::{ForwardMode, NatRange};

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

/// Masquerade (or SNAT to `<nat><address>`), with a source-port range when given.
fn nat_stmt(nat: &NatRange, ports: Option<(u16, u16)>) -> Value {
    let port = ports.map(|(a, b)| {
        if a == b {
            json!(a)
        } else {
            json!({"range": [a, b]})
        }
    });
    match nat.addr {
        Some((a, b)) => {
            let addr = if a == b {
                json!(a.to_string())
            } else {
                json!({"range": [a.to_string(), b.to_string()]})
            };
            let mut o = json!({"addr": addr});
            if let Some(p) = port {
                o["port"] = p;
            }
            json!({ "snat": o })
        }
        None => match port {
            Some(p) => json!({"masquerade": {"port": p}}),
            None => json!({"masquerade": null}),
        },
    }
}

/// The commands of one transaction, as nft JSON.
pub fn commands(nets: &[FwNet]) -> Vec<Value> {
    let mut cmds = Vec::new();
    for (family, table) in [("inet", FILTER_TABLE), ("ip", NAT_TABLE)] {
        // add-then-delete: removes the table whether or not it exists, atomically.
        cmds.push(json!({"add": {"table": {"family": family, "name": table}}}));
        cmds.push(json!({"delete": {"table": {"family": family, "name": table}}}));
    }
    // Like libvirt, open and bridge networks get no rules at all.
    let nets: Vec<&FwNet> = nets
        .iter()
        .filter(|n| !matches!(n.mode, Some(ForwardMode::Open | ForwardMode::Bridge)))
        .collect();
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
                        // Like libvirt: TCP and UDP get the port range (1024-65535
                        // unless <port> says otherwise), then everything else.
                        let (p1, p2) = n.nat.ports.unwrap_or((1024, 65535));
                        for proto in ["tcp", "udp"] {
                            cmds.push(nat(vec![
                                addr("daddr", s, "!="),
                                m(json!({"meta": {"key": "l4proto"}}), "==", json!(proto)),
                                nat_stmt(&n.nat, Some((p1, p2))),
                            ]));
                        }
                        cmds.push(nat(vec![addr("daddr", s, "!="), nat_stmt(&n.nat, None)]));
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

    fn intact(&self, nets: &[FwNet]) -> Result<bool, FirewallError> {
        let want = expected_counts(nets);
        for ((family, table), want) in want {
            let args = ["list", "table", family, table];
            let text = match nftables::helper::get_current_ruleset_raw(
                nftables::helper::DEFAULT_NFT,
                args.iter(),
            ) {
                Ok(t) => t,
                // nft fails when the table does not exist.
                Err(nftables::helper::NftablesError::NftFailed { .. }) => return Ok(false),
                Err(e) => return Err(FirewallError::Apply(e.to_string())),
            };
            let v: Value =
                serde_json::from_str(&text).map_err(|e| FirewallError::Apply(e.to_string()))?;
            if counts(&v) != want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn tables(&self) -> &'static [&'static str] {
        &[FILTER_TABLE, NAT_TABLE]
    }
}

/// (family, table) and its (chains, rules).
pub type TableCounts = ((&'static str, &'static str), (usize, usize));

/// (chains, rules) of each of our tables that `nets` wants, by (family, table).
pub fn expected_counts(nets: &[FwNet]) -> Vec<TableCounts> {
    let cmds = commands(nets);
    // only the removal of our tables: nothing is wanted
    if !cmds
        .iter()
        .any(|c| c.get("add").and_then(|a| a.get("chain")).is_some())
    {
        return vec![];
    }
    [("inet", FILTER_TABLE), ("ip", NAT_TABLE)]
        .into_iter()
        .map(|(family, table)| {
            let of = |kind: &str| {
                cmds.iter()
                    .filter_map(|c| c.get("add")?.get(kind))
                    .filter(|o| o.get("family") == Some(&json!(family)))
                    .filter(|o| o.get("table") == Some(&json!(table)))
                    .count()
            };
            ((family, table), (of("chain"), of("rule")))
        })
        .collect()
}

/// (chains, rules) in the output of `nft -j list table`.
pub fn counts(listing: &Value) -> (usize, usize) {
    let items = listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(|a| a.as_slice())
        .unwrap_or_default();
    let of = |kind: &str| items.iter().filter(|i| i.get(kind).is_some()).count();
    (of("chain"), of("rule"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> FwNet {
        FwNet {
            bridge: "vbr0".into(),
            mode: Some(ForwardMode::Nat),
            subnets: vec![("192.168.50.0".parse().unwrap(), 24)],
            nat: NatRange::default(),
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

    fn nat_rules(n: FwNet) -> Vec<Value> {
        batch(std::slice::from_ref(&n)).unwrap();
        commands(&[n])
            .into_iter()
            .filter_map(|c| c["add"]["rule"]["expr"].as_array().cloned())
            .filter_map(|e| e.last().cloned())
            .filter(|last| last.get("masquerade").is_some() || last.get("snat").is_some())
            .collect()
    }

    #[test]
    fn nat_address_and_port_ranges_become_snat_and_masquerade_ports() {
        // default: tcp/udp masquerade to 1024-65535, then plain masquerade
        assert_eq!(
            nat_rules(nat()),
            vec![
                json!({"masquerade": {"port": {"range": [1024, 65535]}}}),
                json!({"masquerade": {"port": {"range": [1024, 65535]}}}),
                json!({"masquerade": null}),
            ]
        );
        let mut n = nat();
        n.nat.ports = Some((2000, 3000));
        assert_eq!(
            nat_rules(n.clone())[0],
            json!({"masquerade": {"port": {"range": [2000, 3000]}}})
        );
        n.nat.addr = Some(("10.0.0.5".parse().unwrap(), "10.0.0.9".parse().unwrap()));
        assert_eq!(
            nat_rules(n.clone()),
            vec![
                json!({"snat": {"addr": {"range": ["10.0.0.5", "10.0.0.9"]}, "port": {"range": [2000, 3000]}}}),
                json!({"snat": {"addr": {"range": ["10.0.0.5", "10.0.0.9"]}, "port": {"range": [2000, 3000]}}}),
                json!({"snat": {"addr": {"range": ["10.0.0.5", "10.0.0.9"]}}}),
            ]
        );
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
    fn expected_counts_match_the_batch() {
        let c = expected_counts(&[nat()]);
        // filter: forward + input; 4 input accepts, 2 forward (nat) + 3 (own bridge)
        assert_eq!(c[0], (("inet", FILTER_TABLE), (2, 9)));
        // nat: postrouting; multicast, broadcast returns and the masquerade
        assert_eq!(c[1], (("ip", NAT_TABLE), (1, 5)));
        assert!(expected_counts(&[]).is_empty());
        let listing = json!({"nftables": [{"metainfo": {}}, {"table": {}}, {"chain": {}},
            {"rule": {}}, {"rule": {}}]});
        assert_eq!(counts(&listing), (1, 2));
    }

    #[test]
    fn no_networks_only_removes_our_tables() {
        let cmds = commands(&[]);
        assert_eq!(cmds.len(), 4);
        // open and bridge networks want no rules either
        let mut b = nat();
        b.mode = Some(ForwardMode::Bridge);
        assert_eq!(commands(std::slice::from_ref(&b)), cmds);
        assert!(expected_counts(&[b]).is_empty());
        assert!(cmds.iter().all(|c| c.to_string().contains("libvirt_rs")));
    }
}
