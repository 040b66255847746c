//! libvirt's network filter document (formatnwfilter) and filter binding document
//! (`<filterbinding>`): parsed into typed structs, every attribute checked against its
//! protocol's table, written back in libvirt's layout.
//!
//! Attribute values stay text (a literal or a `$VARIABLE`), checked here by syntax and
//! type; the instantiation reads them again once variables are expanded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::xml::{Element, XmlError};
use uuid::Uuid;

use crate::xml::Mac;

/// How a value must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    MacAddr,
    MacMask,
    Ip4,
    Ip4Mask,
    Ip6,
    Ip6Mask,
    U8,
    U16,
    U32,
    /// Free text up to 256 characters (comments, ipset names).
    Str,
    Bool,
    /// `<mac protocolid>` and `<vlan encap-protocol>`: 0x600-0xffff or a name.
    EtherType,
    /// `<ip protocol>`: 0-255 or a name.
    IpProto,
    /// `<arp opcode>`: a number or one of the opcode names.
    ArpOpcode,
    /// 0-63.
    Dscp,
    /// 0-4095.
    VlanId,
    /// NEW,ESTABLISHED,RELATED,INVALID or NONE, comma separated.
    State,
    /// TCP `mask/flags`, each a comma-separated list of SYN,ACK,... or ALL/NONE.
    TcpFlags,
    /// Up to 6 of src/dst, comma separated.
    IpsetFlags,
}

/// One typed value, once variables are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Mac(Mac),
    Ip(IpAddr),
    /// A mask as a prefix length.
    Prefix(u8),
    Num(u32),
    Str(String),
    Bool(bool),
    List(Vec<String>),
    /// (mask, set) of TCP flags, as nft's names.
    Flags(Vec<String>, Vec<String>),
}

const ARP_OPCODES: &[(&str, u32)] = &[
    ("Request", 1),
    ("Reply", 2),
    ("Request_Reverse", 3),
    ("Reply_Reverse", 4),
    ("DRARP_Request", 5),
    ("DRARP_Reply", 6),
    ("DRARP_Error", 7),
    ("InARP_Request", 8),
    ("ARP_NAK", 10),
];

const ETHER_TYPES: &[(&str, u32)] = &[
    ("arp", 0x0806),
    ("rarp", 0x8035),
    ("ipv4", 0x0800),
    ("ipv6", 0x86dd),
];

const IP_PROTOS: &[(&str, u32)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

const TCP_FLAGS: &[&str] = &["SYN", "ACK", "URG", "PSH", "FIN", "RST"];

fn num(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn mask_len(bits: impl Iterator<Item = bool>) -> Option<u8> {
    let mut len = 0u8;
    let mut ended = false;
    for b in bits {
        match (b, ended) {
            (true, false) => len += 1,
            (true, true) => return None,
            (false, _) => ended = true,
        }
    }
    Some(len)
}

fn bits(bytes: &[u8]) -> impl Iterator<Item = bool> + '_ {
    bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b & (1 << i) != 0))
}

fn prefix(s: &str, v6: bool) -> Result<u8, &'static str> {
    let max = if v6 { 128 } else { 32 };
    if let Ok(n) = s.parse::<u8>() {
        return if n <= max {
            Ok(n)
        } else {
            Err("prefix out of range")
        };
    }
    let len = if v6 {
        let a: Ipv6Addr = s.parse().map_err(|_| "not a mask")?;
        mask_len(bits(&a.octets()))
    } else {
        let a: Ipv4Addr = s.parse().map_err(|_| "not a mask")?;
        mask_len(bits(&a.octets()))
    };
    len.ok_or("mask is not contiguous")
}

fn list(s: &str, allowed: &[&str], what: &'static str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for p in s.split(',') {
        let p = p.trim();
        match allowed.iter().find(|a| a.eq_ignore_ascii_case(p)) {
            Some(a) => out.push((*a).to_owned()),
            None => return Err(what),
        }
    }
    Ok(out)
}

impl Ty {
    /// Reads a literal value of this type.
    pub fn parse(self, s: &str) -> Result<Val, &'static str> {
        let named = |table: &[(&str, u32)], lo: u32, hi: u32, what| {
            table
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(s))
                .map(|(_, v)| *v)
                .or_else(|| num(s).filter(|v| (lo..=hi).contains(v)))
                .map(Val::Num)
                .ok_or(what)
        };
        let ranged = |hi: u32, what| num(s).filter(|v| *v <= hi).map(Val::Num).ok_or(what);
        match self {
            Ty::MacAddr | Ty::MacMask => Mac::parse("mac", s)
                .map(Val::Mac)
                .map_err(|_| "not a MAC address"),
            Ty::Ip4 => s
                .parse::<Ipv4Addr>()
                .map(|a| Val::Ip(a.into()))
                .map_err(|_| "not an IPv4 address"),
            Ty::Ip6 => s
                .parse::<Ipv6Addr>()
                .map(|a| Val::Ip(a.into()))
                .map_err(|_| "not an IPv6 address"),
            Ty::Ip4Mask => prefix(s, false).map(Val::Prefix),
            Ty::Ip6Mask => prefix(s, true).map(Val::Prefix),
            Ty::U8 => ranged(0xff, "not a number from 0 to 255"),
            Ty::U16 => ranged(0xffff, "not a number from 0 to 65535"),
            Ty::U32 => ranged(u32::MAX, "not a 32-bit number"),
            Ty::Dscp => ranged(63, "not a DSCP value from 0 to 63"),
            Ty::VlanId => ranged(4095, "not a VLAN id from 0 to 4095"),
            Ty::Str => {
                if s.chars().count() > 256 {
                    Err("longer than 256 characters")
                } else {
                    Ok(Val::Str(s.to_owned()))
                }
            }
            Ty::Bool => match s {
                "true" | "yes" | "1" => Ok(Val::Bool(true)),
                "false" | "no" | "0" => Ok(Val::Bool(false)),
                _ => Err("not a boolean"),
            },
            Ty::EtherType => named(ETHER_TYPES, 0x600, 0xffff, "not an ethernet protocol"),
            Ty::IpProto => named(IP_PROTOS, 0, 255, "not an IP protocol"),
            Ty::ArpOpcode => named(ARP_OPCODES, 0, 0xffff, "not an ARP opcode"),
            Ty::State => list(
                s,
                &["NEW", "ESTABLISHED", "RELATED", "INVALID", "NONE"],
                "not a list of connection states",
            )
            .map(Val::List),
            Ty::IpsetFlags => {
                let l = list(s, &["src", "dst"], "not a list of src/dst")?;
                if l.len() > 6 {
                    return Err("more than 6 selectors");
                }
                Ok(Val::List(l))
            }
            Ty::TcpFlags => {
                let (mask, set) = s.split_once('/').ok_or("not mask/flags")?;
                let one = |p: &str| -> Result<Vec<String>, &'static str> {
                    match p {
                        "ALL" => Ok(TCP_FLAGS.iter().map(|f| f.to_lowercase()).collect()),
                        "NONE" => Ok(Vec::new()),
                        _ => list(p, TCP_FLAGS, "not a list of TCP flags")
                            .map(|v| v.iter().map(|f| f.to_lowercase()).collect()),
                    }
                };
                Ok(Val::Flags(one(mask)?, one(set)?))
            }
        }
    }
}

/// A protocol element's name and its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proto {
    pub name: &'static str,
    pub attrs: &'static [(&'static str, Ty)],
}

impl Proto {
    pub fn ty(&self, attr: &str) -> Option<Ty> {
        self.attrs.iter().find(|(n, _)| *n == attr).map(|(_, t)| *t)
    }
    pub fn is_ipv6(&self) -> bool {
        self.name == "ipv6" || self.name == "icmpv6" || self.name.ends_with("-ipv6")
    }
    /// Layer 2 protocols (libvirt's ebtables layer); the others are layer 3/4.
    pub fn is_ethernet(&self) -> bool {
        matches!(
            self.name,
            "mac" | "vlan" | "stp" | "arp" | "rarp" | "ip" | "ipv6"
        )
    }
}

use Ty::*;

macro_rules! attrs {
    ($($n:literal: $t:expr),* $(,)?) => { &[ $(($n, $t)),* ] };
}

const MAC_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "protocolid": EtherType, "comment": Str);
const VLAN_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "vlanid": VlanId, "encap-protocol": EtherType,
    "comment": Str);
const STP_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "type": U8, "flags": U8, "root-priority": U16, "root-priority-hi": U16,
    "root-address": MacAddr, "root-address-mask": MacMask, "root-cost": U32, "root-cost-hi": U32,
    "sender-priority": U16, "sender-priority-hi": U16, "sender-address": MacAddr,
    "sender-address-mask": MacMask, "port": U16, "port_hi": U16, "msg-age": U16,
    "msg-age-hi": U16, "max-age": U16, "max-age-hi": U16, "hello-time": U16,
    "hello-time-hi": U16, "forward-delay": U16, "forward-delay-hi": U16, "comment": Str);
const ARP_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "hwtype": U16, "protocoltype": U16,
    "opcode": ArpOpcode, "arpsrcmacaddr": MacAddr, "arpdstmacaddr": MacAddr, "arpsrcipaddr": Ip4,
    "arpsrcipmask": Ip4Mask, "arpdstipaddr": Ip4, "arpdstipmask": Ip4Mask, "comment": Str,
    "gratuitous": Bool);
const IP_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip4, "srcipmask": Ip4Mask,
    "dstipaddr": Ip4, "dstipmask": Ip4Mask, "protocol": IpProto, "srcportstart": U16,
    "srcportend": U16, "dstportstart": U16, "dstportend": U16, "dscp": Dscp, "comment": Str);
const IPV6_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip6, "srcipmask": Ip6Mask,
    "dstipaddr": Ip6, "dstipmask": Ip6Mask, "protocol": IpProto, "srcportstart": U16,
    "srcportend": U16, "dstportstart": U16, "dstportend": U16, "type": U8, "typeend": U8,
    "code": U8, "codeend": U8, "comment": Str);
/// TCP, UDP, SCTP over IPv4 (flags: TCP only, checked by the parser).
const L4_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip4, "srcipmask": Ip4Mask,
    "dstipaddr": Ip4, "dstipmask": Ip4Mask, "srcipfrom": Ip4, "srcipto": Ip4,
    "dstipfrom": Ip4, "dstipto": Ip4, "srcportstart": U16, "srcportend": U16,
    "dstportstart": U16, "dstportend": U16, "dscp": Dscp, "comment": Str, "state": State,
    "flags": TcpFlags, "ipset": Str, "ipsetflags": IpsetFlags);
const L4_V6_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip6, "srcipmask": Ip6Mask,
    "dstipaddr": Ip6, "dstipmask": Ip6Mask, "srcipfrom": Ip6, "srcipto": Ip6,
    "dstipfrom": Ip6, "dstipto": Ip6, "srcportstart": U16, "srcportend": U16,
    "dstportstart": U16, "dstportend": U16, "dscp": Dscp, "comment": Str, "state": State,
    "flags": TcpFlags, "ipset": Str, "ipsetflags": IpsetFlags);
const ICMP_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip4, "srcipmask": Ip4Mask,
    "dstipaddr": Ip4, "dstipmask": Ip4Mask, "srcipfrom": Ip4, "srcipto": Ip4,
    "dstipfrom": Ip4, "dstipto": Ip4, "type": U16, "code": U16, "dscp": Dscp,
    "comment": Str, "state": State, "ipset": Str, "ipsetflags": IpsetFlags);
const ICMP6_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip6, "srcipmask": Ip6Mask,
    "dstipaddr": Ip6, "dstipmask": Ip6Mask, "srcipfrom": Ip6, "srcipto": Ip6,
    "dstipfrom": Ip6, "dstipto": Ip6, "type": U16, "code": U16, "dscp": Dscp,
    "comment": Str, "state": State, "ipset": Str, "ipsetflags": IpsetFlags);
const ALL_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip4, "srcipmask": Ip4Mask,
    "dstipaddr": Ip4, "dstipmask": Ip4Mask, "srcipfrom": Ip4, "srcipto": Ip4,
    "dstipfrom": Ip4, "dstipto": Ip4, "dscp": Dscp, "comment": Str, "state": State,
    "ipset": Str, "ipsetflags": IpsetFlags);
const ALL_V6_ATTRS: &[(&str, Ty)] = attrs!("srcmacaddr": MacAddr, "srcmacmask": MacMask,
    "dstmacaddr": MacAddr, "dstmacmask": MacMask, "srcipaddr": Ip6, "srcipmask": Ip6Mask,
    "dstipaddr": Ip6, "dstipmask": Ip6Mask, "srcipfrom": Ip6, "srcipto": Ip6,
    "dstipfrom": Ip6, "dstipto": Ip6, "dscp": Dscp, "comment": Str, "state": State,
    "ipset": Str, "ipsetflags": IpsetFlags);

/// Every protocol element formatnwfilter defines.
pub const PROTOS: &[Proto] = &[
    Proto {
        name: "mac",
        attrs: MAC_ATTRS,
    },
    Proto {
        name: "vlan",
        attrs: VLAN_ATTRS,
    },
    Proto {
        name: "stp",
        attrs: STP_ATTRS,
    },
    Proto {
        name: "arp",
        attrs: ARP_ATTRS,
    },
    Proto {
        name: "rarp",
        attrs: ARP_ATTRS,
    },
    Proto {
        name: "ip",
        attrs: IP_ATTRS,
    },
    Proto {
        name: "ipv6",
        attrs: IPV6_ATTRS,
    },
    Proto {
        name: "tcp",
        attrs: L4_ATTRS,
    },
    Proto {
        name: "udp",
        attrs: L4_ATTRS,
    },
    Proto {
        name: "sctp",
        attrs: L4_ATTRS,
    },
    Proto {
        name: "udplite",
        attrs: ALL_ATTRS,
    },
    Proto {
        name: "esp",
        attrs: ALL_ATTRS,
    },
    Proto {
        name: "ah",
        attrs: ALL_ATTRS,
    },
    Proto {
        name: "igmp",
        attrs: ALL_ATTRS,
    },
    Proto {
        name: "icmp",
        attrs: ICMP_ATTRS,
    },
    Proto {
        name: "all",
        attrs: ALL_ATTRS,
    },
    Proto {
        name: "tcp-ipv6",
        attrs: L4_V6_ATTRS,
    },
    Proto {
        name: "udp-ipv6",
        attrs: L4_V6_ATTRS,
    },
    Proto {
        name: "sctp-ipv6",
        attrs: L4_V6_ATTRS,
    },
    Proto {
        name: "udplite-ipv6",
        attrs: ALL_V6_ATTRS,
    },
    Proto {
        name: "esp-ipv6",
        attrs: ALL_V6_ATTRS,
    },
    Proto {
        name: "ah-ipv6",
        attrs: ALL_V6_ATTRS,
    },
    Proto {
        name: "icmpv6",
        attrs: ICMP6_ATTRS,
    },
    Proto {
        name: "all-ipv6",
        attrs: ALL_V6_ATTRS,
    },
];

/// A `$NAME`, `$NAME[3]` or `$NAME[@2]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    pub name: String,
    pub access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `$NAME[@N]`, `$NAME` being `$NAME[@0]`.
    Iter(u32),
    /// `$NAME[N]`.
    Index(usize),
}

pub fn var_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && n.len() <= 64
}

impl VarRef {
    /// `Some` for a value starting with `$`; `Err` when it does but is malformed.
    pub fn parse(s: &str) -> Option<Result<VarRef, &'static str>> {
        let rest = s.strip_prefix('$')?;
        let (name, access) = match rest.split_once('[') {
            None => (rest, Ok(Access::Iter(0))),
            Some((n, idx)) => {
                let idx = idx.strip_suffix(']').unwrap_or("x");
                let a = match idx.strip_prefix('@') {
                    Some(i) => i.parse().map(Access::Iter),
                    None => idx.parse().map(Access::Index),
                };
                (n, a.map_err(|_| "malformed variable index"))
            }
        };
        if !var_name_ok(name) {
            return Some(Err("malformed variable name"));
        }
        Some(access.map(|access| VarRef {
            name: name.to_owned(),
            access,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drop,
    Reject,
    Accept,
    Return,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    InOut,
}

/// One protocol element of a rule: which protocol, `match='no'`, its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub proto: &'static Proto,
    pub negate: bool,
    pub attrs: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub direction: Direction,
    pub priority: i32,
    /// `statematch='false'` kept for the round trip.
    pub statematch: Option<bool>,
    pub matches: Vec<Match>,
}

impl Rule {
    /// The rule's protocol: its elements' (all the same), or none for a bare rule.
    pub fn proto(&self) -> Option<&'static Proto> {
        self.matches.first().map(|m| m.proto)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRef {
    pub filter: String,
    /// `<parameter name value>` in order; a name may repeat (a list).
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Rule(Rule),
    Ref(FilterRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub uuid: Uuid,
    /// Whether the document gave the UUID (a redefinition without one keeps the old).
    pub uuid_given: bool,
    pub chain: String,
    pub priority: Option<i32>,
    pub entries: Vec<Entry>,
}

/// The chain prefixes and their default priorities (formatnwfilter's table).
pub const CHAIN_PRIORITIES: &[(&str, i32)] = &[
    ("stp", -810),
    ("mac", -800),
    ("vlan", -750),
    ("ipv4", -700),
    ("ipv6", -600),
    ("rarp", -400),
    ("arp", -500),
];

/// The protocol a chain name evaluates (`ipv4-xyz` is an ipv4 chain); `None` for root.
pub fn chain_kind(chain: &str) -> Option<&'static str> {
    CHAIN_PRIORITIES
        .iter()
        .map(|(p, _)| *p)
        .find(|p| chain == *p || chain.strip_prefix(p).is_some_and(|r| r.starts_with('-')))
}

impl Filter {
    /// The priority of this filter's chain under root.
    pub fn chain_priority(&self) -> i32 {
        self.priority.unwrap_or_else(|| {
            chain_kind(&self.chain)
                .and_then(|k| CHAIN_PRIORITIES.iter().find(|(p, _)| *p == k))
                .map_or(0, |(_, v)| *v)
        })
    }

    pub fn refs(&self) -> impl Iterator<Item = &FilterRef> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Ref(r) => Some(r),
            Entry::Rule(_) => None,
        })
    }
}

/// A filter name: it names a file too, so no `/`, no leading `.`, no control chars.
pub fn check_name(element: &str, name: &str) -> Result<(), XmlError> {
    let bad = |why: &str| XmlError::invalid(element, "name", name, why);
    if name.is_empty() {
        return Err(XmlError::missing(element, "attribute 'name'"));
    }
    if name.len() > 200 {
        return Err(bad("longer than 200 bytes"));
    }
    if name.starts_with('.') || name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(bad(
            "a filter name cannot hold '/' or control characters, or start with '.'",
        ));
    }
    Ok(())
}

fn int_attr(el: &Element, key: &str, lo: i32, hi: i32) -> Result<Option<i32>, XmlError> {
    match el.get_attr(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .map(Some)
            .ok_or_else(|| {
                XmlError::invalid(
                    &el.name,
                    &format!("attribute '{key}'"),
                    v,
                    format!("not a number from {lo} to {hi}"),
                )
            }),
    }
}

/// Checks one attribute value: a well-formed variable reference or a literal of `ty`.
pub fn check_value(element: &str, attr: &str, ty: Ty, v: &str) -> Result<(), XmlError> {
    let what = format!("attribute '{attr}'");
    match VarRef::parse(v) {
        Some(Ok(_)) if ty != Ty::Str => Ok(()),
        Some(Err(e)) => Err(XmlError::invalid(element, &what, v, e)),
        _ => ty
            .parse(v)
            .map(|_| ())
            .map_err(|e| XmlError::invalid(element, &what, v, e)),
    }
}

fn parse_match(el: &Element, proto: &'static Proto) -> Result<Match, XmlError> {
    let mut negate = false;
    let mut attrs = Vec::new();
    for (k, v) in &el.attrs {
        if k == "match" {
            negate = match v.as_str() {
                "yes" => false,
                "no" => true,
                _ => {
                    return Err(XmlError::invalid(
                        &el.name,
                        "attribute 'match'",
                        v,
                        "expected 'yes' or 'no'",
                    ))
                }
            };
            continue;
        }
        let Some((name, ty)) = proto.attrs.iter().find(|(n, _)| n == k) else {
            return Err(XmlError::invalid(
                &el.name,
                "attribute",
                k,
                format!("not an attribute of <{}>", proto.name),
            ));
        };
        if *name == "flags" && proto.name != "tcp" && proto.name != "tcp-ipv6" {
            return Err(XmlError::invalid(
                &el.name,
                "attribute",
                k,
                "flags is for tcp only",
            ));
        }
        check_value(&el.name, name, *ty, v)?;
        attrs.push((*name, v.clone()));
    }
    Ok(Match {
        proto,
        negate,
        attrs,
    })
}

fn parse_rule(el: &Element) -> Result<Rule, XmlError> {
    let action = match el.req_attr("action")? {
        "drop" => Action::Drop,
        "reject" => Action::Reject,
        "accept" => Action::Accept,
        "return" => Action::Return,
        "continue" => Action::Continue,
        v => {
            return Err(XmlError::invalid(
                "rule",
                "attribute 'action'",
                v,
                "expected drop, reject, accept, return or continue",
            ))
        }
    };
    let direction = match el.req_attr("direction")? {
        "in" => Direction::In,
        "out" => Direction::Out,
        "inout" => Direction::InOut,
        v => {
            return Err(XmlError::invalid(
                "rule",
                "attribute 'direction'",
                v,
                "expected in, out or inout",
            ))
        }
    };
    let priority = int_attr(el, "priority", -1000, 1000)?.unwrap_or(500);
    let statematch = match el.get_attr("statematch") {
        None => None,
        Some("0" | "false") => Some(false),
        Some("1" | "true") => Some(true),
        Some(v) => {
            return Err(XmlError::invalid(
                "rule",
                "attribute 'statematch'",
                v,
                "expected true or false",
            ))
        }
    };
    let mut matches = Vec::new();
    for c in el.elements() {
        let Some(proto) = PROTOS.iter().find(|p| p.name == c.name) else {
            return Err(XmlError::invalid(
                "rule",
                "element",
                &c.name,
                "not a protocol of formatnwfilter",
            ));
        };
        if matches
            .first()
            .is_some_and(|m: &Match| m.proto.name != proto.name)
        {
            return Err(XmlError::invalid(
                "rule",
                "element",
                &c.name,
                "a rule filters one protocol",
            ));
        }
        matches.push(parse_match(c, proto)?);
    }
    Ok(Rule {
        action,
        direction,
        priority,
        statematch,
        matches,
    })
}

/// `<filterref filter=...>` with its `<parameter name value>`s (also in bindings).
pub fn parse_filterref(el: &Element) -> Result<FilterRef, XmlError> {
    let filter = el.req_attr("filter")?.to_owned();
    check_name("filterref", &filter)?;
    let mut params = Vec::new();
    for p in el.elements() {
        if p.name != "parameter" {
            return Err(XmlError::invalid(
                "filterref",
                "element",
                &p.name,
                "only <parameter> belongs here",
            ));
        }
        let name = p.req_attr("name")?;
        if !var_name_ok(name) {
            return Err(XmlError::invalid(
                "parameter",
                "name",
                name,
                "letters, digits and '_', not starting with a digit",
            ));
        }
        let value = p.req_attr("value")?;
        if value.len() > 1024 {
            return Err(XmlError::invalid("parameter", "value", value, "too long"));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    Ok(FilterRef { filter, params })
}

fn filterref_xml(r: &FilterRef) -> Element {
    let mut e = Element::new("filterref").attr("filter", &r.filter);
    for (n, v) in &r.params {
        e.push(Element::new("parameter").attr("name", n).attr("value", v));
    }
    e
}

impl Filter {
    pub fn from_xml(text: &str) -> Result<Filter, XmlError> {
        let root = common::xml::parse_root(text, "filter")?;
        let name = root.req_attr("name")?.to_owned();
        check_name("filter", &name)?;
        let chain = root.get_attr("chain").unwrap_or("root").to_owned();
        if chain != "root" && chain_kind(&chain).is_none() {
            return Err(XmlError::invalid(
                "filter",
                "attribute 'chain'",
                &chain,
                "expected root, or a name starting with mac, stp, vlan, arp, rarp, ipv4 or ipv6",
            ));
        }
        if chain.len() > 32
            || !chain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(XmlError::invalid(
                "filter",
                "attribute 'chain'",
                &chain,
                "at most 32 letters, digits, '-', '_', '.' or ':'",
            ));
        }
        let priority = int_attr(&root, "priority", -1000, 1000)?;
        let given = crate::xml::parse_uuid(&root)?;
        let mut entries = Vec::new();
        for c in root.elements() {
            match c.name.as_str() {
                "uuid" => {}
                "rule" => entries.push(Entry::Rule(parse_rule(c)?)),
                "filterref" => entries.push(Entry::Ref(parse_filterref(c)?)),
                other => {
                    return Err(XmlError::invalid(
                        "filter",
                        "element",
                        other,
                        "expected <uuid>, <rule> or <filterref>",
                    ))
                }
            }
        }
        Ok(Filter {
            name,
            uuid: given.unwrap_or_else(Uuid::new_v4),
            uuid_given: given.is_some(),
            chain,
            priority,
            entries,
        })
    }

    pub fn to_xml(&self) -> String {
        let mut root = Element::new("filter")
            .attr("name", &self.name)
            .attr("chain", &self.chain)
            .attr_opt("priority", self.priority)
            .child(Element::with_text("uuid", self.uuid.to_string()));
        for e in &self.entries {
            root.push(match e {
                Entry::Ref(r) => filterref_xml(r),
                Entry::Rule(r) => {
                    let mut el = Element::new("rule")
                        .attr("action", action_name(r.action))
                        .attr("direction", direction_name(r.direction))
                        .attr("priority", r.priority)
                        .attr_opt("statematch", r.statematch.filter(|s| !s).map(|_| "false"));
                    for m in &r.matches {
                        let mut me = Element::new(m.proto.name);
                        if m.negate {
                            me = me.attr("match", "no");
                        }
                        for (k, v) in &m.attrs {
                            me = me.attr(*k, v);
                        }
                        el.push(me);
                    }
                    el
                }
            });
        }
        root.to_xml()
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Drop => "drop",
        Action::Reject => "reject",
        Action::Accept => "accept",
        Action::Return => "return",
        Action::Continue => "continue",
    }
}

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
        Direction::InOut => "inout",
    }
}

/// libvirt's `<filterbinding>`: which filter, with which parameters, on which tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub owner_name: String,
    pub owner_uuid: Uuid,
    pub portdev: String,
    pub linkdev: Option<String>,
    pub mac: Mac,
    pub filter: FilterRef,
}

/// A kernel interface name, as the tap's: 1-15 bytes the kernel accepts.
pub fn ifname_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

impl Binding {
    pub fn from_xml(text: &str) -> Result<Binding, XmlError> {
        let root = common::xml::parse_root(text, "filterbinding")?;
        let owner = root
            .first("owner")
            .ok_or_else(|| XmlError::missing("filterbinding", "<owner>"))?;
        let owner_name = owner
            .child_text("name")
            .ok_or_else(|| XmlError::missing("owner", "<name>"))?;
        let owner_uuid =
            crate::xml::parse_uuid(owner)?.ok_or_else(|| XmlError::missing("owner", "<uuid>"))?;
        let dev = |name: &str| -> Result<Option<String>, XmlError> {
            let Some(e) = root.first(name) else {
                return Ok(None);
            };
            let n = e.req_attr("name")?;
            if !ifname_ok(n) {
                return Err(XmlError::invalid(name, "name", n, "not an interface name"));
            }
            Ok(Some(n.to_owned()))
        };
        let portdev =
            dev("portdev")?.ok_or_else(|| XmlError::missing("filterbinding", "<portdev>"))?;
        let linkdev = dev("linkdev")?;
        let mac = root
            .first("mac")
            .ok_or_else(|| XmlError::missing("filterbinding", "<mac>"))?
            .req_attr("address")?;
        let mac = Mac::parse("mac", mac)?;
        let filter = parse_filterref(
            root.first("filterref")
                .ok_or_else(|| XmlError::missing("filterbinding", "<filterref>"))?,
        )?;
        Ok(Binding {
            owner_name,
            owner_uuid,
            portdev,
            linkdev,
            mac,
            filter,
        })
    }

    pub fn to_xml(&self) -> String {
        Element::new("filterbinding")
            .child(
                Element::new("owner")
                    .child(Element::with_text("name", &self.owner_name))
                    .child(Element::with_text("uuid", self.owner_uuid.to_string())),
            )
            .child(Element::new("portdev").attr("name", &self.portdev))
            .child_opt(
                self.linkdev
                    .as_ref()
                    .map(|l| Element::new("linkdev").attr("name", l)),
            )
            .child(Element::new("mac").attr("address", self.mac))
            .child(filterref_xml(&self.filter))
            .to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str = "<filter name='no-arp-spoofing' chain='arp' priority='-500'>\
        <uuid>f88f1932-debf-4aa1-9fbe-f10d3aa4bc95</uuid>\
        <rule action='drop' direction='out' priority='300'><mac match='no' srcmacaddr='$MAC'/></rule>\
        <rule action='drop' direction='in' priority='450'><arp opcode='Reply'/><arp match='no' arpdstmacaddr='$MAC'/></rule>\
        <rule action='drop' direction='inout' priority='1000'/>\
        </filter>";

    #[test]
    fn a_filter_round_trips() {
        let f = Filter::from_xml(ARP).unwrap();
        assert_eq!(f.chain, "arp");
        assert_eq!(f.chain_priority(), -500);
        assert_eq!(f.entries.len(), 3);
        let text = f.to_xml();
        assert!(
            text.contains("<arp match='no' arpdstmacaddr='$MAC'/>"),
            "{text}"
        );
        assert_eq!(Filter::from_xml(&text).unwrap(), f);
    }

    #[test]
    fn bad_attributes_are_named() {
        let bad = |xml: &str, want: &str| {
            let e = Filter::from_xml(xml).unwrap_err().to_string();
            assert!(e.contains(want), "{xml}: {e}");
        };
        bad("<filter name='x'><rule action='drop' direction='in'><ip srcipaddr='1.2.3'/></rule></filter>", "'1.2.3' for attribute 'srcipaddr'");
        bad(
            "<filter name='x'><rule action='drop' direction='in'><ip bogus='1'/></rule></filter>",
            "'bogus'",
        );
        bad(
            "<filter name='x'><rule action='zap' direction='in'/></filter>",
            "'action'",
        );
        bad(
            "<filter name='x'><rule action='drop' direction='sideways'/></filter>",
            "'direction'",
        );
        bad(
            "<filter name='x'><rule action='drop' direction='in' priority='2000'/></filter>",
            "'priority'",
        );
        bad("<filter name='x' chain='bogus'/>", "'chain'");
        bad("<filter name='x'><rule action='drop' direction='in'><udp flags='SYN/SYN'/></rule></filter>", "tcp only");
        bad("<filter name='x'><rule action='drop' direction='in'><ip srcipaddr='$1X'/></rule></filter>", "variable");
        bad(
            "<filter name='x'><rule action='drop' direction='in'><ip/><arp/></rule></filter>",
            "one protocol",
        );
        bad("<filter name='../x'/>", "name");
        bad("<filter name='x'><rule action='drop' direction='in'><ip srcipmask='255.0.255.0'/></rule></filter>", "contiguous");
        bad("<filter name='x'><rule action='drop' direction='in'><mac protocolid='0x100'/></rule></filter>", "protocolid");
    }

    #[test]
    fn values_read_by_type() {
        assert_eq!(Ty::Ip4Mask.parse("255.255.248.0"), Ok(Val::Prefix(21)));
        assert_eq!(Ty::Ip6Mask.parse("64"), Ok(Val::Prefix(64)));
        assert_eq!(Ty::EtherType.parse("ipv4"), Ok(Val::Num(0x800)));
        assert_eq!(Ty::EtherType.parse("0x8035"), Ok(Val::Num(0x8035)));
        assert_eq!(Ty::ArpOpcode.parse("Reply"), Ok(Val::Num(2)));
        assert_eq!(
            Ty::TcpFlags.parse("SYN,ACK/SYN"),
            Ok(Val::Flags(
                vec!["syn".into(), "ack".into()],
                vec!["syn".into()]
            ))
        );
        assert_eq!(
            VarRef::parse("$IP[@2]"),
            Some(Ok(VarRef {
                name: "IP".into(),
                access: Access::Iter(2)
            }))
        );
        assert_eq!(
            VarRef::parse("$IP[1]"),
            Some(Ok(VarRef {
                name: "IP".into(),
                access: Access::Index(1)
            }))
        );
        assert!(VarRef::parse("10.0.0.1").is_none());
        assert_eq!(chain_kind("arp-xyz"), Some("arp"));
        assert_eq!(chain_kind("rarp"), Some("rarp"));
        assert_eq!(chain_kind("arpx"), None);
    }

    #[test]
    fn a_binding_round_trips() {
        let xml = "<filterbinding><owner><name>g</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
            <portdev name='vnet0'/><mac address='52:54:00:00:00:01'/>\
            <filterref filter='clean-traffic'><parameter name='IP' value='10.0.0.2'/></filterref></filterbinding>";
        let b = Binding::from_xml(xml).unwrap();
        assert_eq!(b.portdev, "vnet0");
        assert_eq!(Binding::from_xml(&b.to_xml()).unwrap(), b);
        assert!(Binding::from_xml(&xml.replace("vnet0", "a/b")).is_err());
    }
}
