//! Nothing panics on input: network and port XML, mutated thousands of times from a
//! fixed seed, go through parse, defaults, the XML writer, dnsmasq's config and the
//! firewall batch. Errors are fine; a panic is a failure.

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
