//! Nothing panics on input: network and port XML, mutated thousands of times from a
//! fixed seed, go through parse, defaults, the XML writer, dnsmasq's config and the
//! firewall batch; interface and network filter XML likewise (a filter through its
//! instantiation into nft rules). Errors are fine; a panic is a failure.

use std::path::PathBuf;

use common::mutate::{assert_no_panics, Target};
use virtnetworkd::firewall::FwNet;
use virtnetworkd::xml::{Network, Port};

const BASES: &[&str] = &[
    "<network><name>nat</name><uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>\
     <forward mode='nat'><nat><address start='192.0.2.1' end='192.0.2.10'/>\
     <port start='1024' end='65535'/></nat></forward>\
     <bridge name='virbr9' stp='on' delay='0'/><mac address='52:54:00:0a:0b:0c'/>\
     <domain name='example.test' localOnly='yes'/>\
     <dns><host ip='10.9.0.5'><hostname>db</hostname></host></dns>\
     <ip address='10.9.0.1' netmask='255.255.255.0'><dhcp>\
     <range start='10.9.0.100' end='10.9.0.200'/>\
     <host mac='52:54:00:00:00:05' name='db' ip='10.9.0.5'/></dhcp></ip>\
     <ip family='ipv6' address='fd00:9::1' prefix='64'/></network>",
    "<network><name>iso</name><bridge name='virbr8'/>\
     <ip address='10.8.0.1' prefix='24'/></network>",
    "<network><name>br</name><forward mode='bridge'/><bridge name='br0'/></network>",
    "<network><name>rt</name><forward mode='route' dev='eth0'/>\
     <bandwidth><inbound average='1000' peak='5000' burst='1024'/></bandwidth>\
     <portgroup name='web' default='yes'/>\
     <ip address='10.7.0.1' prefix='24'><dhcp><range start='10.7.0.2' end='10.7.0.9'/>\
     </dhcp></ip></network>",
];

const PORT: &str = "<networkport><uuid>5d744f21-ba4a-4d6e-bdb2-30a35ff3207d</uuid>\
    <owner><name>guest</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a4</uuid></owner>\
    <mac address='52:54:00:7b:35:93'/><bandwidth><inbound average='1000'/></bandwidth>\
    <plug type='network' bridge='virbr0'/></networkport>";

const NETWORK_SPLICES: &[&str] = &[
    "<ip address='10.0.0.1' prefix='33'/>",
    "<ip family='ipv6' address='::' prefix='129'/>",
    "<range start='10.9.0.250' end='10.9.0.2'/>",
    "<host mac='zz' ip='1.2.3.4'/>",
    "<forward mode='hostdev'/>",
    "<dns enable='no'/>",
    "<txt name='a,b' value='x\ny'/>",
];

/// Every option virtnetworkd writes into a dnsmasq config.
const DNSMASQ_OPTIONS: &[&str] = &[
    "addn-hosts",
    "bind-dynamic",
    "dhcp-authoritative",
    "dhcp-boot",
    "dhcp-hostsfile",
    "dhcp-lease-max",
    "dhcp-leasefile",
    "dhcp-no-override",
    "dhcp-range",
    "domain",
    "enable-ra",
    "except-interface",
    "expand-hosts",
    "interface",
    "local",
    "pid-file",
    "port",
    "server",
    "strict-order",
    "txt-record",
];

/// How far an input got: 0 refused by the parser, 1 through dnsmasq and firewall.
fn exercise(text: &str) -> usize {
    let Ok(mut net) = Network::from_xml(text) else {
        return 0;
    };
    net.fill_defaults(&["virbr0".into()]);
    let xml = net.to_xml();
    Network::from_xml(&xml).expect("written XML parses again");
    let dir = PathBuf::from("/run/virtnetworkd");
    let paths = virtnetworkd::dnsmasq::Paths {
        conf: dir.join("n.conf"),
        pid: dir.join("n.pid"),
        hostsfile: dir.join("n.hostsfile"),
        addnhosts: dir.join("n.addnhosts"),
        leases: dir.join("n.leases"),
        log: dir.join("n.log"),
    };
    if let Ok(conf) = virtnetworkd::dnsmasq::config(&net, &paths) {
        // Nothing from the XML may start a line, and so an option, of its own.
        for line in conf.lines() {
            let key = line.split('=').next().unwrap_or_default();
            assert!(
                DNSMASQ_OPTIONS.contains(&key),
                "unexpected dnsmasq line {line:?} in:\n{conf}"
            );
        }
    }
    let _ = virtnetworkd::firewall::nft::batch(&[FwNet::of(&net)]);
    1
}

/// Port XML: parsed, written and parsed again (stage 1).
fn exercise_port(text: &str) -> usize {
    let Ok(p) = Port::from_xml(text) else {
        return 0;
    };
    Port::from_xml(&p.to_xml()).expect("written port XML parses again");
    1
}

#[test]
fn mutated_network_and_port_xml_never_panics() {
    assert_no_panics(
        0x6e65_7477_6f72_6b21,
        2000,
        1,
        &[
            Target {
                bases: BASES,
                splices: NETWORK_SPLICES,
                check: &exercise,
            },
            Target {
                bases: &[PORT],
                splices: &[],
                check: &exercise_port,
            },
        ],
    );
}

/// Host interface definitions of every type, as formatinterface writes them.
const IFACE_BASES: &[&str] = &[
    "<interface type='ethernet' name='eth0'><start mode='onboot'/>\
     <mac address='52:54:00:0a:0b:0c'/><mtu size='1492'/>\
     <protocol family='ipv4'><ip address='192.168.15.5' prefix='24'/>\
     <route gateway='192.168.15.1'/></protocol>\
     <protocol family='ipv6'><autoconf/><dhcp/><ip address='fd00::5' prefix='64'/>\
     <route gateway='fd00::1'/></protocol></interface>",
    "<interface type='bridge' name='br0'><start mode='none'/><mtu size='1500'/>\
     <protocol family='ipv4'><dhcp/></protocol>\
     <bridge stp='off' delay='0.01'>\
     <interface type='ethernet' name='eth0'><mac address='ab:bb:cc:dd:ee:ff'/></interface>\
     <interface type='vlan' name='eth1.42'><vlan tag='42'><interface name='eth1'/></vlan></interface>\
     <interface type='bond' name='bond1'><bond mode='802.3ad'><miimon freq='100'/>\
     <interface type='ethernet' name='eth2'/><interface type='ethernet' name='eth3'/></bond>\
     </interface></bridge></interface>",
    "<interface type='bond' name='bond0'><start mode='hotplug'/>\
     <bond mode='active-backup'><miimon freq='100' updelay='10' carrier='ioctl'/>\
     <interface type='ethernet' name='eth1'><mac address='ab:bb:cc:dd:ee:fe'/></interface>\
     <interface type='ethernet' name='eth2'/></bond></interface>",
    "<interface type='vlan' name='eth0.7'><vlan tag='7'><interface name='eth0'/></vlan>\
     <protocol family='ipv4'><ip address='10.0.7.2'/></protocol></interface>",
];

const IFACE_SPLICES: &[&str] = &[
    "<ip address='10.0.0.1' prefix='33'/>",
    "<ip address='fd00::1' prefix='129'/>",
    "<vlan tag='4095'><interface name='x'/></vlan>",
    "<interface type='bridge' name='inner'><bridge/></interface>",
    "<interface type='ethernet' name='a/b'/>",
    "<interface type='ethernet' name='abcdefghijklmnopq'/>",
    "<bond mode='balance-fast'/>",
    "<mtu size='4294967296'/>",
    "<bridge delay='NaN'/>",
    "<route gateway='::1'/>",
    "<protocol family='ipx'/>",
];

/// Interface XML: parsed, written, parsed again to the same definition (stage 1).
fn exercise_iface(text: &str) -> usize {
    use virtnetworkd::interface::xml::Iface;
    let Ok(i) = Iface::from_xml(text) else {
        return 0;
    };
    let again = Iface::from_xml(&i.to_xml()).expect("written interface XML parses again");
    assert_eq!(again, i, "the round trip changed the definition");
    assert!(!i.names().is_empty());
    1
}

#[test]
fn mutated_interface_xml_never_panics() {
    let per_base = std::env::var("VIRT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    assert_no_panics(
        0x6966_6163_6521,
        per_base,
        1,
        &[Target {
            bases: IFACE_BASES,
            splices: IFACE_SPLICES,
            check: &exercise_iface,
        }],
    );
}

/// Network filters: libvirt's standard set and one that uses every protocol element
/// with variables, lists and ranges.
const FILTER_BASES: &[&str] = &[
    "<filter name='every' chain='ipv4-x' priority='-20'><uuid>7e1a3c55-1b2d-4c3e-8f4a-5b6c7d8e9f00</uuid>\
     <filterref filter='clean-traffic'><parameter name='IP' value='$IP'/></filterref>\
     <rule action='accept' direction='inout' priority='-5' statematch='false'>\
     <tcp srcipaddr='$A[@1]' srcipmask='24' dstportstart='$P[@2]' dstportend='90' flags='SYN,ACK/SYN'/></rule>\
     <rule action='drop' direction='out'><mac match='no' srcmacaddr='$MAC' srcmacmask='ff:ff:ff:00:00:00' protocolid='arp'/></rule>\
     <rule action='return' direction='in'><arp opcode='Reply' arpsrcipaddr='$A[1]' arpsrcipmask='255.255.0.0'/></rule>\
     <rule action='continue' direction='out'><ipv6 srcipaddr='fe80::' srcipmask='10' protocol='icmpv6' type='133' typeend='136'/></rule>\
     <rule action='reject' direction='in'><icmp type='8' code='0' dscp='10'/></rule>\
     <rule action='drop' direction='out'><vlan vlanid='42' encap-protocol='ipv4'/></rule>\
     <rule action='drop' direction='out'><udp-ipv6 srcipfrom='fd00::1' srcipto='fd00::9'/></rule>\
     <rule action='drop' direction='out'><all dstipfrom='10.0.0.1' dstipto='10.0.0.9'/></rule>\
     <rule action='drop' direction='inout'/></filter>",
    "<filter name='clean-traffic' chain='root'><filterref filter='no-mac-spoofing'/>\
     <filterref filter='no-ip-spoofing'/><rule action='accept' direction='out' priority='-650'>\
     <mac protocolid='ipv4'/></rule><filterref filter='no-arp-spoofing'/></filter>",
];

const FILTER_SPLICES: &[&str] = &[
    "<rule action='drop' direction='in'><ip srcipaddr='$X[99]'/></rule>",
    "<rule action='drop' direction='in'><stp type='1'/></rule>",
    "<rule action='drop' direction='in'><tcp state='NEW,ESTABLISHED'/></rule>",
    "<rule action='drop' direction='in' priority='-1001'/>",
    "<filterref filter='every'/>",
    "<filterref filter='missing'><parameter name='1x' value='y'/></filterref>",
    "<rule action='accept' direction='in'><ip srcipmask='255.0.255.0'/></rule>",
    "<rule action='accept' direction='in'><mac protocolid='0x5ff'/></rule>",
];

/// Filter XML: parsed, written, parsed again to the same filter (stage 1); then
/// instantiated for a binding beside libvirt's standard set and written as nft JSON.
fn exercise_filter(text: &str) -> usize {
    use virtnetworkd::nwfilter::{builtin, rules, xml::Binding, xml::Filter};
    let Ok(f) = Filter::from_xml(text) else {
        return 0;
    };
    let mut again = Filter::from_xml(&f.to_xml()).expect("written filter XML parses again");
    again.uuid_given = f.uuid_given;
    assert_eq!(again, f, "the round trip changed the filter");
    let mut all: std::collections::BTreeMap<String, Filter> = builtin::FILTERS
        .iter()
        .filter_map(|(n, t)| Some(((*n).to_owned(), Filter::from_xml(t).ok()?)))
        .collect();
    all.insert(f.name.clone(), f.clone());
    let b = Binding::from_xml(&format!(
        "<filterbinding><owner><name>g</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a4</uuid></owner>\
         <portdev name='vnet0'/><mac address='52:54:00:00:00:01'/><filterref filter='{}'>\
         <parameter name='IP' value='10.0.0.2'/><parameter name='A' value='10.1.0.1'/>\
         <parameter name='A' value='10.2.0.1'/><parameter name='P' value='80'/>\
         <parameter name='P' value='8080'/></filterref></filterbinding>",
        common::xml::escape(&f.name)
    ))
    .expect("binding");
    match rules::instantiate(&b, &|n| all.get(n).cloned()) {
        Ok(i) if rules::batch(std::slice::from_ref(&i)).is_ok() => 2,
        _ => 1,
    }
}

#[test]
fn mutated_nwfilter_xml_never_panics() {
    // The bases themselves go all the way to the nft batch (stage 2); one mutation in
    // fifteen still does, most stop at the parser.
    for b in FILTER_BASES {
        assert_eq!(exercise_filter(b), 2, "{b}");
    }
    let per_base = std::env::var("VIRT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    assert_no_panics(
        0x6e77_6669_6c74,
        per_base,
        1,
        &[Target {
            bases: FILTER_BASES,
            splices: FILTER_SPLICES,
            check: &exercise_filter,
        }],
    );
}
