//! From bindings to nftables: each binding's filter tree is flattened with its
//! variables expanded, and every binding's rules are rebuilt as ONE transaction in the
//! project's own `bridge` table, so nobody else's rules are touched.
//!
//! libvirt evaluates a tap's frames in two layers, ebtables (mac, vlan, stp, arp, rarp,
//! ip, ipv6 elements, in per-protocol subchains ordered by chain priority) and then
//! iptables (tcp, udp, icmp, all, ... ordered by rule priority). Here both layers are
//! nft chains in the bridge family: layer 2 in base chains at priority -300, layer 3/4
//! at -200, so an accept in the first still lets the second judge, as in libvirt.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::xml::{
    chain_kind, Access, Action, Binding, Direction, Entry, Filter, Match, Proto, Rule, Ty, Val,
    VarRef,
};

pub const TABLE: &str = "libvirt_rs_nwfilter";

/// Deeper filter trees than this are refused (define refuses loops; this bounds the
/// rest).
const MAX_DEPTH: usize = 32;
/// Variable lists multiply rules; past this a binding is refused, not instantiated.
const MAX_RULES: usize = 20_000;
/// A tree may hold a filter many times (a DAG, not a loop): past this many filters
/// walked a binding is refused, so a tree wide at every level cannot hang the daemon.
const MAX_VISITS: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstError {
    #[error("referenced filter '{0}' is missing")]
    Missing(String),
    #[error(
        "Cannot instantiate filter due to unresolvable variables or unavailable list elements: {0}"
    )]
    Unresolved(String),
    #[error("invalid value '{value}' for attribute '{attr}' of <{proto}>: {why}")]
    BadValue {
        proto: &'static str,
        attr: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("filter '{0}' nests references deeper than {MAX_DEPTH} levels")]
    TooDeep(String),
    #[error("filter '{0}' expands to more than {MAX_RULES} rules or {MAX_VISITS} filters")]
    TooMany(String),
    #[error("attribute '{attr}' of <{proto}> is not supported by the nftables backend")]
    Unsupported {
        proto: &'static str,
        attr: &'static str,
    },
}

/// Variable values: a name may hold a list.
pub type Vars = BTreeMap<String, Vec<String>>;

/// One direction's chains of one tap.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Side {
    /// Layer 2 root: (priority, rule or jump to a subchain).
    pub root: Vec<(i32, Item)>,
    /// Layer 2 subchains by name: their rules (priority, expressions).
    pub subs: BTreeMap<String, Vec<(i32, Vec<Value>)>>,
    /// Layer 3/4 rules (priority, expressions).
    pub ip: Vec<(i32, Vec<Value>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Rule(Vec<Value>),
    Jump(String),
}

/// A binding's rules, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub tap: String,
    /// The tap's ifindex when it was bound: rules match it, not the name, so a later
    /// tap of the same name is never caught by a stale rule.
    pub ifindex: u32,
    /// Frames the guest sends (libvirt's direction 'out').
    pub from_vm: Side,
    /// Frames sent to the guest (direction 'in').
    pub to_vm: Side,
}

fn m(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn pay(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn ether_type(t: u32) -> Value {
    m(pay("ether", "type"), "==", json!(t))
}

/// The frames a layer 2 subchain of this kind sees.
fn chain_match(kind: &str) -> Option<Value> {
    Some(match kind {
        "stp" => m(pay("ether", "daddr"), "==", json!("01:80:c2:00:00:00")),
        "vlan" => ether_type(0x8100),
        "ipv4" => ether_type(0x0800),
        "ipv6" => ether_type(0x86dd),
        "arp" => ether_type(0x0806),
        "rarp" => ether_type(0x8035),
        _ => return None,
    })
}

/// What every rule of a protocol matches before its attributes.
fn proto_base(p: &Proto) -> Vec<Value> {
    let l4 = |n: u32| m(json!({"meta": {"key": "l4proto"}}), "==", json!(n));
    let v4 = ether_type(0x0800);
    let v6 = ether_type(0x86dd);
    let (fam, proto) = match p.name {
        "mac" => return vec![],
        "vlan" => return vec![ether_type(0x8100)],
        "stp" => return chain_match("stp").into_iter().collect(),
        "arp" => return vec![ether_type(0x0806)],
        "rarp" => return vec![ether_type(0x8035)],
        "ip" | "all" => return vec![v4],
        "ipv6" | "all-ipv6" => return vec![v6],
        "icmpv6" => (v6, 58),
        name => {
            let (base, fam) = match name.strip_suffix("-ipv6") {
                Some(b) => (b, v6),
                None => (name, v4),
            };
            let n = match base {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                "udplite" => 136,
                "esp" => 50,
                "ah" => 51,
                "igmp" => 2,
                _ => 1, // icmp
            };
            (fam, n)
        }
    };
    vec![fam, l4(proto)]
}

/// The values of a rule's attributes for one combination of variable elements.
type Concrete = Vec<(&'static Proto, bool, Vec<(&'static str, Val)>)>;

fn var_refs(r: &Rule) -> Vec<VarRef> {
    r.matches
        .iter()
        .flat_map(|m| m.attrs.iter())
        .filter_map(|(_, v)| VarRef::parse(v).and_then(Result::ok))
        .collect()
}

/// Every combination of variable elements a rule asks for: variables sharing an
/// iterator advance together, different iterators multiply (formatnwfilter).
fn combinations(r: &Rule, vars: &Vars) -> Result<Vec<BTreeMap<String, usize>>, InstError> {
    let mut iters: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for v in var_refs(r) {
        let list = vars
            .get(&v.name)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| InstError::Unresolved(v.name.clone()))?;
        match v.access {
            Access::Iter(i) => iters.entry(i).or_default().push(v.name),
            Access::Index(n) if n >= list.len() => {
                return Err(InstError::Unresolved(format!("{}[{n}]", v.name)))
            }
            Access::Index(_) => {}
        }
    }
    // Each iterator key is "NAME@ID" so that one name under two iterators varies twice.
    let mut combos = vec![BTreeMap::new()];
    for (id, names) in iters {
        let len = names
            .iter()
            .filter_map(|n| vars.get(n).map(Vec::len))
            .min()
            .unwrap_or(0);
        let mut next = Vec::new();
        for c in &combos {
            for i in 0..len {
                let mut c: BTreeMap<String, usize> = c.clone();
                for n in &names {
                    c.insert(format!("{n}@{id}"), i);
                }
                next.push(c);
                if next.len() > MAX_RULES {
                    return Err(InstError::TooMany(String::new()));
                }
            }
        }
        combos = next;
    }
    Ok(combos)
}

fn resolve<'a>(
    v: &'a str,
    vars: &'a Vars,
    combo: &BTreeMap<String, usize>,
) -> Result<&'a str, InstError> {
    match VarRef::parse(v) {
        None => Ok(v),
        Some(Err(_)) => Err(InstError::Unresolved(v.to_owned())),
        Some(Ok(r)) => {
            let idx = match r.access {
                Access::Index(n) => n,
                Access::Iter(i) => combo.get(&format!("{}@{i}", r.name)).copied().unwrap_or(0),
            };
            vars.get(&r.name)
                .and_then(|l| l.get(idx))
                .map(String::as_str)
                .ok_or(InstError::Unresolved(r.name))
        }
    }
}

fn concrete(r: &Rule, vars: &Vars, combo: &BTreeMap<String, usize>) -> Result<Concrete, InstError> {
    let mut out = Vec::new();
    for mt in &r.matches {
        let Match {
            proto,
            negate,
            attrs,
        } = mt;
        let mut vals = Vec::new();
        for (attr, raw) in attrs {
            let value = resolve(raw, vars, combo)?;
            let ty = proto.ty(attr).unwrap_or(Ty::Str);
            let val = ty.parse(value).map_err(|why| InstError::BadValue {
                proto: proto.name,
                attr,
                value: value.to_owned(),
                why,
            })?;
            vals.push((*attr, val));
        }
        out.push((*proto, *negate, vals));
    }
    Ok(out)
}

fn swap(attr: &'static str, reverse: bool) -> &'static str {
    if !reverse {
        return attr;
    }
    const PAIRS: &[(&str, &str)] = &[
        ("srcmacaddr", "dstmacaddr"),
        ("srcmacmask", "dstmacmask"),
        ("srcipaddr", "dstipaddr"),
        ("srcipmask", "dstipmask"),
        ("srcipfrom", "dstipfrom"),
        ("srcipto", "dstipto"),
        ("srcportstart", "dstportstart"),
        ("srcportend", "dstportend"),
        ("arpsrcmacaddr", "arpdstmacaddr"),
        ("arpsrcipaddr", "arpdstipaddr"),
        ("arpsrcipmask", "arpdstipmask"),
    ];
    for (a, b) in PAIRS {
        if attr == *a {
            return b;
        }
        if attr == *b {
            return a;
        }
    }
    attr
}

fn get<'a>(vals: &'a [(&'static str, Val)], attr: &str, reverse: bool) -> Option<&'a Val> {
    vals.iter()
        .find(|(a, _)| swap(a, reverse) == attr)
        .map(|(_, v)| v)
}

fn mac_and(a: &crate::xml::Mac, mask: &crate::xml::Mac) -> String {
    let mut o = [0u8; 6];
    for (i, b) in o.iter_mut().enumerate() {
        *b = a.0[i] & mask.0[i];
    }
    crate::xml::Mac(o).to_string()
}

fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// The value side of a match, as nft JSON.
fn right(v: &Val) -> Value {
    match v {
        Val::Mac(mac) => json!(mac.to_string()),
        Val::Ip(a) => json!(a.to_string()),
        Val::Num(n) => json!(n),
        Val::Prefix(n) => json!(n),
        Val::Str(s) => json!(s),
        Val::Bool(b) => json!(b),
        Val::List(l) => json!({"set": l.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>()}),
        Val::Flags(_, set) => json!(set),
    }
}

/// An address, with its mask as a prefix when it has one.
fn addr_right(v: &Val, mask: Option<&Val>) -> Value {
    match (v, mask) {
        (Val::Ip(a), Some(Val::Prefix(len))) => {
            json!({"prefix": {"addr": masked(*a, *len).to_string(), "len": len}})
        }
        _ => right(v),
    }
}

fn span(start: &Val, end: Option<&Val>) -> Value {
    match end {
        Some(e) if e != start => json!({"range": [right(start), right(e)]}),
        _ => right(start),
    }
}

/// The partner attributes read together with another (a mask with its address, a
/// range's end with its start): never matched alone.
const PARTNERS: &[&str] = &[
    "srcmacmask",
    "dstmacmask",
    "srcipmask",
    "dstipmask",
    "arpsrcipmask",
    "arpdstipmask",
    "srcportend",
    "dstportend",
    "srcipto",
    "dstipto",
    "typeend",
    "codeend",
];

/// The expressions of one protocol element's attributes; `reverse` swaps source and
/// destination (libvirt does so for the guest's side of an `inout` rule).
fn attr_exprs(
    proto: &'static Proto,
    negate: bool,
    vals: &[(&'static str, Val)],
    reverse: bool,
) -> Result<Vec<Value>, InstError> {
    let op = if negate { "!=" } else { "==" };
    let ipfam = if proto.is_ipv6() { "ip6" } else { "ip" };
    let mut out = Vec::new();
    for (orig, val) in vals {
        let attr = swap(orig, reverse);
        let src = attr.starts_with("src") || attr.starts_with("arpsrc");
        let unsupported = InstError::Unsupported {
            proto: proto.name,
            attr: orig,
        };
        match attr {
            "comment" => {}
            a if PARTNERS.contains(&a) => {}
            "srcmacaddr" | "dstmacaddr" => {
                let left = pay("ether", if src { "saddr" } else { "daddr" });
                let mask = get(vals, if src { "srcmacmask" } else { "dstmacmask" }, reverse);
                out.push(match (val, mask) {
                    (Val::Mac(a), Some(Val::Mac(mk))) => m(
                        json!({"&": [left, mk.to_string()]}),
                        op,
                        json!(mac_and(a, mk)),
                    ),
                    _ => m(left, op, right(val)),
                });
            }
            "protocolid" => out.push(m(pay("ether", "type"), op, right(val))),
            "vlanid" => out.push(m(pay("vlan", "id"), op, right(val))),
            "encap-protocol" => out.push(m(pay("vlan", "type"), op, right(val))),
            "hwtype" | "protocoltype" | "opcode" | "arpsrcmacaddr" | "arpdstmacaddr"
            | "arpsrcipaddr" | "arpdstipaddr"
                if proto.name == "arp" =>
            {
                let field = match attr {
                    "hwtype" => "htype",
                    "protocoltype" => "ptype",
                    "opcode" => "operation",
                    "arpsrcmacaddr" => "saddr ether",
                    "arpdstmacaddr" => "daddr ether",
                    "arpsrcipaddr" => "saddr ip",
                    _ => "daddr ip",
                };
                let mask = match attr {
                    "arpsrcipaddr" => get(vals, "arpsrcipmask", reverse),
                    "arpdstipaddr" => get(vals, "arpdstipmask", reverse),
                    _ => None,
                };
                out.push(m(pay("arp", field), op, addr_right(val, mask)));
            }
            "srcipaddr" | "dstipaddr" => {
                let mask = get(vals, if src { "srcipmask" } else { "dstipmask" }, reverse);
                let field = if src { "saddr" } else { "daddr" };
                out.push(m(pay(ipfam, field), op, addr_right(val, mask)));
            }
            "srcipfrom" | "dstipfrom" => {
                let to = get(vals, if src { "srcipto" } else { "dstipto" }, reverse);
                let field = if src { "saddr" } else { "daddr" };
                out.push(m(pay(ipfam, field), op, span(val, to)));
            }
            "protocol" => {
                let field = if proto.is_ipv6() {
                    "nexthdr"
                } else {
                    "protocol"
                };
                out.push(m(pay(ipfam, field), op, right(val)));
            }
            "srcportstart" | "dstportstart" => {
                let l4 = match proto.name.trim_end_matches("-ipv6") {
                    "tcp" => "tcp",
                    "udp" => "udp",
                    "sctp" => "sctp",
                    "ip" | "ipv6" if get(vals, "protocol", reverse).is_some() => "th",
                    _ => return Err(unsupported),
                };
                let end = get(vals, if src { "srcportend" } else { "dstportend" }, reverse);
                let field = if src { "sport" } else { "dport" };
                out.push(m(pay(l4, field), op, span(val, end)));
            }
            "dscp" => out.push(m(pay(ipfam, "dscp"), op, right(val))),
            "type" | "code" if matches!(proto.name, "icmp" | "icmpv6" | "ipv6") => {
                let p = if proto.name == "icmp" {
                    "icmp"
                } else {
                    "icmpv6"
                };
                let end = get(
                    vals,
                    if attr == "type" { "typeend" } else { "codeend" },
                    reverse,
                );
                out.push(m(pay(p, attr), op, span(val, end)));
            }
            "flags" => {
                if let Val::Flags(mask, set) = val {
                    let set = if set.is_empty() { json!(0) } else { json!(set) };
                    out.push(m(json!({"&": [pay("tcp", "flags"), mask]}), op, set));
                }
            }
            _ => return Err(unsupported),
        }
    }
    Ok(out)
}

fn verdict(a: Action) -> Value {
    match a {
        Action::Accept => json!({"accept": null}),
        // The bridge family cannot reject in every hook; libvirt's ebtables layer
        // drops too.
        Action::Drop | Action::Reject => json!({"drop": null}),
        Action::Return => json!({"return": null}),
        Action::Continue => json!({"continue": null}),
    }
}

fn rule_exprs(c: &Concrete, reverse: bool, action: Action) -> Result<Vec<Value>, InstError> {
    let mut e = Vec::new();
    if let Some((p, _, _)) = c.first() {
        e.extend(proto_base(p));
    }
    for (p, neg, vals) in c {
        e.extend(attr_exprs(p, *neg, vals, reverse)?);
    }
    e.push(verdict(action));
    Ok(e)
}

/// Parameters over inherited variables: a name given here replaces the inherited
/// list; a value that is itself `$VAR` takes that variable's whole list.
fn with_params(vars: &Vars, params: &[(String, String)]) -> Vars {
    let mut out = vars.clone();
    let mut fresh = std::collections::BTreeSet::new();
    for (n, v) in params {
        if fresh.insert(n.clone()) {
            out.insert(n.clone(), Vec::new());
        }
        let values = match VarRef::parse(v) {
            Some(Ok(r)) => vars.get(&r.name).cloned().unwrap_or_default(),
            _ => vec![v.clone()],
        };
        out.entry(n.clone()).or_default().extend(values);
    }
    out
}

struct Walk<'a> {
    lookup: &'a dyn Fn(&str) -> Option<Filter>,
    inst: Instance,
    count: usize,
    visits: usize,
}

impl Walk<'_> {
    fn filter(&mut self, f: &Filter, vars: &Vars, depth: usize) -> Result<(), InstError> {
        if depth > MAX_DEPTH {
            return Err(InstError::TooDeep(f.name.clone()));
        }
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(InstError::TooMany(f.name.clone()));
        }
        let sub = (f.chain != "root").then(|| f.chain.clone());
        if let Some(s) = &sub {
            for side in [&mut self.inst.from_vm, &mut self.inst.to_vm] {
                if !side.subs.contains_key(s) {
                    side.subs.insert(s.clone(), Vec::new());
                    side.root.push((f.chain_priority(), Item::Jump(s.clone())));
                }
            }
        }
        for e in &f.entries {
            match e {
                Entry::Ref(r) => {
                    let child = (self.lookup)(&r.filter)
                        .ok_or_else(|| InstError::Missing(r.filter.clone()))?;
                    self.filter(&child, &with_params(vars, &r.params), depth + 1)?;
                }
                Entry::Rule(r) => self.rule(f, r, sub.as_deref(), vars)?,
            }
        }
        Ok(())
    }

    fn rule(
        &mut self,
        f: &Filter,
        r: &Rule,
        sub: Option<&str>,
        vars: &Vars,
    ) -> Result<(), InstError> {
        let layer2 = r.proto().is_none_or(|p| p.is_ethernet());
        let sides: &[(bool, bool)] = match r.direction {
            Direction::Out => &[(false, false)],
            Direction::In => &[(true, false)],
            Direction::InOut => &[(false, true), (true, false)],
        };
        let combos = combinations(r, vars).map_err(|e| match e {
            InstError::TooMany(_) => InstError::TooMany(f.name.clone()),
            e => e,
        })?;
        for combo in combos {
            let c = concrete(r, vars, &combo)?;
            self.count += sides.len();
            if self.count > MAX_RULES {
                return Err(InstError::TooMany(f.name.clone()));
            }
            for (to_vm, reverse) in sides {
                let exprs = rule_exprs(&c, *reverse, r.action)?;
                let side = if *to_vm {
                    &mut self.inst.to_vm
                } else {
                    &mut self.inst.from_vm
                };
                match (layer2, sub) {
                    (false, _) => side.ip.push((r.priority, exprs)),
                    (true, Some(s)) => side
                        .subs
                        .entry(s.to_owned())
                        .or_default()
                        .push((r.priority, exprs)),
                    (true, None) => side.root.push((r.priority, Item::Rule(exprs))),
                }
            }
        }
        Ok(())
    }
}

/// A binding's rules: its filter tree walked depth first with its variables (`MAC`
/// is the binding's), each side's rules ordered by priority (stable: document order
/// breaks ties), subchains placed in root by their chain's priority.
pub fn instantiate(
    b: &Binding,
    lookup: &dyn Fn(&str) -> Option<Filter>,
) -> Result<Instance, InstError> {
    let mut vars = Vars::new();
    vars.insert("MAC".into(), vec![b.mac.to_string()]);
    let vars = with_params(&vars, &b.filter.params);
    let top =
        lookup(&b.filter.filter).ok_or_else(|| InstError::Missing(b.filter.filter.clone()))?;
    let mut w = Walk {
        lookup,
        inst: Instance {
            tap: b.portdev.clone(),
            ifindex: 0,
            from_vm: Side::default(),
            to_vm: Side::default(),
        },
        count: 0,
        visits: 0,
    };
    w.filter(&top, &vars, 0)?;
    let mut inst = w.inst;
    for side in [&mut inst.from_vm, &mut inst.to_vm] {
        side.root.sort_by_key(|(p, _)| *p);
        side.ip.sort_by_key(|(p, _)| *p);
        for rules in side.subs.values_mut() {
            rules.sort_by_key(|(p, _)| *p);
        }
    }
    Ok(inst)
}

fn add_rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "bridge", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn add_chain(name: &str) -> Value {
    json!({"add": {"chain": {"family": "bridge", "table": TABLE, "name": name}}})
}

/// The base chains: (name, hook, priority). Layer 2 first, as ebtables runs before
/// iptables in libvirt.
pub const BASES: &[(&str, &str, i32)] = &[
    ("l2-in", "prerouting", -300),
    ("l2-out", "postrouting", -300),
    ("ip-in", "prerouting", -200),
    ("ip-out", "postrouting", -200),
];

/// The names of a tap's root chains: (layer 2, layer 3/4) for frames from the guest,
/// then for frames to it (libvirt's I-/O- and FI-/FO- chains).
pub fn chain_names(tap: &str) -> [(String, String); 2] {
    [
        (format!("I-{tap}"), format!("FI-{tap}")),
        (format!("O-{tap}"), format!("FO-{tap}")),
    ]
}

fn map_name(base: &str) -> String {
    format!("{base}-map")
}

/// A tap's root chains by base chain: (base, chain, layer-2 side or None for 3/4).
fn roots(i: &Instance) -> [(&'static str, String, &Side, bool); 4] {
    let [(l2_in, ip_in), (l2_out, ip_out)] = chain_names(&i.tap);
    [
        ("l2-in", l2_in, &i.from_vm, true),
        ("l2-out", l2_out, &i.to_vm, true),
        ("ip-in", ip_in, &i.from_vm, false),
        ("ip-out", ip_out, &i.to_vm, false),
    ]
}

fn element(op: &str, base: &str, elem: Value) -> Value {
    json!({op: {"element": {"family": "bridge", "table": TABLE, "name": map_name(base),
        "elem": [elem]}}})
}

/// Adds one tap's chains and rules, then its entries in the base chains' verdict maps
/// (ifindex -> jump to its root chain), which make them live.
pub fn tap_add(i: &Instance) -> Vec<Value> {
    let mut cmds = Vec::new();
    for (base, root, side, layer2) in roots(i) {
        cmds.push(add_chain(&root));
        if layer2 {
            for (sub, rules) in &side.subs {
                let name = format!("{root}-{sub}");
                cmds.push(add_chain(&name));
                for (_, e) in rules {
                    cmds.push(add_rule(&name, e.clone()));
                }
            }
            for (_, item) in &side.root {
                cmds.push(match item {
                    Item::Rule(e) => add_rule(&root, e.clone()),
                    Item::Jump(sub) => {
                        let mut e: Vec<Value> =
                            chain_kind(sub).and_then(chain_match).into_iter().collect();
                        e.push(json!({"jump": {"target": format!("{root}-{sub}")}}));
                        add_rule(&root, e)
                    }
                });
            }
        } else {
            for (_, e) in &side.ip {
                cmds.push(add_rule(&root, e.clone()));
            }
        }
        cmds.push(element(
            "add",
            base,
            json!([i.ifindex, {"jump": {"target": root}}]),
        ));
    }
    cmds
}

/// Takes one tap's rules out: its map entries first (nothing jumps to its chains any
/// more), then its chains emptied and deleted.
pub fn tap_remove(i: &Instance) -> Vec<Value> {
    let mut cmds = Vec::new();
    let mut chains = Vec::new();
    for (base, root, side, layer2) in roots(i) {
        cmds.push(element("delete", base, json!(i.ifindex)));
        if layer2 {
            chains.extend(side.subs.keys().map(|sub| format!("{root}-{sub}")));
        }
        chains.push(root);
    }
    let chain = |op: &str, name: &str| json!({op: {"chain": {"family": "bridge", "table": TABLE, "name": name}}});
    cmds.extend(chains.iter().map(|c| chain("flush", c)));
    cmds.extend(chains.iter().map(|c| chain("delete", c)));
    cmds
}

/// The commands of one transaction that makes our table exactly `insts`' rules: the
/// base chains, each with one verdict-map rule (`meta iif vmap @BASE-map`), and every
/// tap's chains and map entries.
pub fn commands(insts: &[Instance]) -> Vec<Value> {
    // add-then-delete: removes the table whether or not it exists, atomically.
    let mut cmds = vec![
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "bridge", "name": TABLE}}}),
    ];
    if insts.is_empty() {
        return cmds;
    }
    cmds.push(json!({"add": {"table": {"family": "bridge", "name": TABLE}}}));
    for (name, hook, prio) in BASES {
        cmds.push(json!({"add": {"map": {"family": "bridge", "table": TABLE,
            "name": map_name(name), "type": "iface_index", "map": "verdict"}}}));
        cmds.push(
            json!({"add": {"chain": {"family": "bridge", "table": TABLE, "name": name,
            "type": "filter", "hook": hook, "prio": prio, "policy": "accept"}}}),
        );
        let key = if hook == &"prerouting" { "iif" } else { "oif" };
        cmds.push(add_rule(
            name,
            vec![json!({"vmap": {"key": {"meta": {"key": key}}, "data": format!("@{}", map_name(name))}})],
        ));
    }
    for i in insts {
        cmds.extend(tap_add(i));
    }
    cmds
}

/// Verdict maps and their elements: nftables 0.6's schema has no `verdict` or
/// `iface_index` set types, so these commands go to nft as JSON unchecked by it.
fn is_map_cmd(c: &Value) -> bool {
    ["add", "delete"].iter().any(|op| {
        c.get(op)
            .is_some_and(|o| o.get("map").is_some() || o.get("element").is_some())
    })
}

/// The JSON of one transaction, every command but the map ones checked by the
/// nftables crate's schema.
pub fn payload(cmds: Vec<Value>) -> Result<String, String> {
    for c in cmds.iter().filter(|c| !is_map_cmd(c)) {
        serde_json::from_value::<nftables::schema::NfCmd<'static>>(c.clone())
            .map_err(|e| format!("{e}: {c}"))?;
    }
    Ok(json!({ "nftables": cmds }).to_string())
}

/// The transaction for `insts`, checked.
pub fn batch(insts: &[Instance]) -> Result<String, String> {
    payload(commands(insts))
}

/// (chains, rules, map entries) `commands(insts)` makes; all 0 when it makes none.
pub fn expected_counts(insts: &[Instance]) -> (usize, usize, usize) {
    let cmds = commands(insts);
    let of = |kind: &str| {
        cmds.iter()
            .filter(|c| c.get("add").and_then(|a| a.get(kind)).is_some())
            .count()
    };
    (of("chain"), of("rule"), of("element"))
}

/// True when the kernel's table is still what `apply(insts)` made (nothing of it
/// flushed or deleted by someone else).
pub fn intact(insts: &[Instance]) -> Result<bool, String> {
    let want = expected_counts(insts);
    let args = ["list", "table", "bridge", TABLE];
    let text =
        match nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, args.iter())
        {
            Ok(t) => t,
            // nft fails when the table does not exist.
            Err(nftables::helper::NftablesError::NftFailed { .. }) => return Ok(want == (0, 0, 0)),
            Err(e) => return Err(e.to_string()),
        };
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let (chains, rules) = crate::firewall::nft::counts(&v);
    let elems: usize = v
        .get("nftables")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("map")?.get("elem")?.as_array().map(Vec::len))
                .sum()
        })
        .unwrap_or(0);
    Ok((chains, rules, elems) == want)
}

fn run(payload: &str) -> Result<(), String> {
    nftables::helper::apply_ruleset_raw(
        payload,
        nftables::helper::DEFAULT_NFT,
        std::iter::empty::<&str>(),
    )
    .map(|_| ())
    .map_err(|e| format!("cannot apply network filter rules: {e}"))
}

/// Rebuilds the whole table for `insts` as one nft transaction.
pub fn apply(insts: &[Instance]) -> Result<(), String> {
    run(&batch(insts)?)
}

/// Adds one tap to a table that holds the others already (one transaction).
pub fn apply_add(i: &Instance) -> Result<(), String> {
    run(&payload(tap_add(i))?)
}

/// Takes one tap out of the table (one transaction).
pub fn apply_remove(i: &Instance) -> Result<(), String> {
    run(&payload(tap_remove(i))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nwfilter::builtin::FILTERS;

    fn standard() -> BTreeMap<String, Filter> {
        FILTERS
            .iter()
            .map(|(n, t)| ((*n).to_owned(), Filter::from_xml(t).unwrap()))
            .collect()
    }

    fn binding(filter: &str, params: &[(&str, &str)]) -> Binding {
        Binding::from_xml(&format!(
            "<filterbinding><owner><name>g</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
             <portdev name='vnet0'/><mac address='52:54:00:00:00:01'/><filterref filter='{filter}'>{}</filterref></filterbinding>",
            params
                .iter()
                .map(|(n, v)| format!("<parameter name='{n}' value='{v}'/>"))
                .collect::<String>()
        ))
        .unwrap()
    }

    fn inst(filters: &BTreeMap<String, Filter>, b: &Binding) -> Result<Instance, InstError> {
        instantiate(b, &|n| filters.get(n).cloned())
    }

    #[test]
    fn clean_traffic_orders_chains_by_priority_and_expands_ip() {
        let f = standard();
        let i = inst(&f, &binding("clean-traffic", &[("IP", "10.0.0.2")])).unwrap();
        let order: Vec<String> = i
            .from_vm
            .root
            .iter()
            .map(|(p, it)| match it {
                Item::Jump(s) => format!("{p}:{s}"),
                Item::Rule(_) => format!("{p}:rule"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "-800:mac",
                "-710:ipv4-ip",
                "-700:ipv4",
                "-650:rule",
                "-520:arp-mac",
                "-510:arp-ip",
                "-500:rule",
                "-400:rarp",
                "1000:rule"
            ]
        );
        let ip = serde_json::to_string(&i.from_vm.subs["ipv4-ip"]).unwrap();
        assert!(ip.contains("\"10.0.0.2\""), "{ip}");
        let mac = serde_json::to_string(&i.from_vm.subs["mac"]).unwrap();
        assert!(mac.contains("52:54:00:00:00:01"), "{mac}");
        // Every standard filter's rules are what the nftables crate's schema accepts.
        batch(&[i]).unwrap();
    }

    #[test]
    fn an_unset_ip_is_refused_with_libvirt_s_message() {
        let f = standard();
        let e = inst(&f, &binding("clean-traffic", &[])).unwrap_err();
        assert_eq!(e, InstError::Unresolved("IP".into()));
        assert!(e.to_string().starts_with("Cannot instantiate filter"));
        let e = inst(&f, &binding("nope", &[])).unwrap_err();
        assert_eq!(e.to_string(), "referenced filter 'nope' is missing");
    }

    #[test]
    fn lists_expand_in_parallel_or_as_combinations() {
        let mut f = BTreeMap::new();
        let x = Filter::from_xml(
            "<filter name='x'><rule action='accept' direction='in'>\
             <tcp srcipaddr='$A[@1]' dstportstart='$P[@2]'/></rule>\
             <rule action='drop' direction='out'><udp srcipaddr='$A' dstportstart='$P'/></rule></filter>",
        )
        .unwrap();
        f.insert("x".into(), x);
        let b = binding(
            "x",
            &[
                ("A", "10.0.0.1"),
                ("A", "11.1.2.3"),
                ("P", "80"),
                ("P", "8080"),
            ],
        );
        let i = inst(&f, &b).unwrap();
        assert_eq!(i.to_vm.ip.len(), 4, "two iterators multiply");
        assert_eq!(i.from_vm.ip.len(), 2, "one iterator runs in parallel");
        batch(&[i]).unwrap();
    }

    #[test]
    fn inout_rules_reverse_source_and_destination_on_the_guest_side() {
        let mut f = BTreeMap::new();
        f.insert(
            "x".into(),
            Filter::from_xml(
                "<filter name='x'><rule action='drop' direction='inout'>\
                 <icmp srcipaddr='10.1.0.0' srcipmask='16' type='8'/></rule></filter>",
            )
            .unwrap(),
        );
        let i = inst(&f, &binding("x", &[])).unwrap();
        let from = serde_json::to_string(&i.from_vm.ip).unwrap();
        let to = serde_json::to_string(&i.to_vm.ip).unwrap();
        assert!(from.contains("\"daddr\""), "{from}");
        assert!(to.contains("\"saddr\""), "{to}");
        assert!(to.contains("\"len\":16"), "{to}");
        batch(&[i]).unwrap();
    }

    #[test]
    fn unsupported_attributes_are_named() {
        let mut f = BTreeMap::new();
        f.insert(
            "x".into(),
            Filter::from_xml(
                "<filter name='x'><rule action='drop' direction='in'><tcp state='NEW'/></rule></filter>",
            )
            .unwrap(),
        );
        let e = inst(&f, &binding("x", &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute 'state' of <tcp> is not supported by the nftables backend"
        );
    }

    #[test]
    fn a_tap_is_removed_exactly_as_it_was_added() {
        let f = standard();
        let mut i = inst(&f, &binding("clean-traffic", &[("IP", "10.0.0.2")])).unwrap();
        i.ifindex = 7;
        let names = |cmds: &[Value], op: &str, kind: &str| -> Vec<String> {
            let mut v: Vec<String> = cmds
                .iter()
                .filter_map(|c| c.get(op)?.get(kind))
                .map(|o| o.get("name").map_or_else(String::new, |n| n.to_string()))
                .collect();
            v.sort();
            v
        };
        let (add, remove) = (tap_add(&i), tap_remove(&i));
        assert_eq!(
            names(&add, "add", "chain"),
            names(&remove, "delete", "chain")
        );
        assert_eq!(
            names(&add, "add", "chain"),
            names(&remove, "flush", "chain")
        );
        assert_eq!(names(&add, "add", "element").len(), 4);
        assert_eq!(names(&remove, "delete", "element").len(), 4);
        // Nothing jumps to a chain once it is deleted: the map entries go first.
        let first_chain_op = remove
            .iter()
            .position(|c| c.get("flush").is_some())
            .unwrap();
        assert!(remove[..first_chain_op].iter().all(is_map_cmd));
        payload(add).unwrap();
        payload(remove).unwrap();
        assert_eq!(expected_counts(&[i.clone()]).2, 4);
        assert_eq!(expected_counts(&[]), (0, 0, 0));
    }

    #[test]
    fn a_tree_wide_at_every_level_is_refused_not_walked() {
        let mut f = BTreeMap::new();
        for level in 0..8 {
            let refs: String = (0..100)
                .map(|_| format!("<filterref filter='w{}'/>", level + 1))
                .collect();
            f.insert(
                format!("w{level}"),
                Filter::from_xml(&format!("<filter name='w{level}'>{refs}</filter>")).unwrap(),
            );
        }
        f.insert(
            "w8".into(),
            Filter::from_xml("<filter name='w8'/>").unwrap(),
        );
        let e = inst(&f, &binding("w0", &[])).unwrap_err();
        assert!(matches!(e, InstError::TooMany(_)), "{e}");
    }

    #[test]
    fn no_binding_only_removes_our_table() {
        let c = commands(&[]);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.to_string().contains(TABLE)));
    }
}
