//! libvirt's standard filters, by name and meaning (formatnwfilter), written here from
//! that description. They are installed once, into a fresh config folder, as libvirt's
//! package installs its files: afterwards they are ordinary definitions.

use std::path::Path;

use super::xml::Filter;

/// (name, document without UUID: each installation gets its own).
pub const FILTERS: &[(&str, &str)] = &[
    // Frames from the guest must carry its own MAC as source.
    ("no-mac-spoofing", "<filter name='no-mac-spoofing' chain='mac' priority='-800'>
  <rule action='return' direction='out' priority='500'><mac srcmacaddr='$MAC'/></rule>
  <rule action='drop' direction='out' priority='500'><mac/></rule>
</filter>"),
    // IPv4 from the guest must come from one of $IP (or 0.0.0.0 UDP, for DHCP).
    ("no-ip-spoofing", "<filter name='no-ip-spoofing' chain='ipv4-ip' priority='-710'>
  <rule action='return' direction='out' priority='100'><ip srcipaddr='0.0.0.0' protocol='udp'/></rule>
  <rule action='return' direction='out' priority='500'><ip srcipaddr='$IP'/></rule>
  <rule action='drop' direction='out' priority='1000'/>
</filter>"),
    ("no-ipv6-spoofing", "<filter name='no-ipv6-spoofing' chain='ipv6-ip' priority='-610'>
  <rule action='return' direction='out' priority='100'><ipv6 srcipaddr='fe80::' srcipmask='10'/></rule>
  <rule action='return' direction='out' priority='100'><ipv6 srcipaddr='::' protocol='icmpv6'/></rule>
  <rule action='return' direction='out' priority='500'><ipv6 srcipaddr='$IPV6'/></rule>
  <rule action='drop' direction='out' priority='1000'/>
</filter>"),
    // ARP from the guest must name its own MAC and IP as sender.
    ("no-arp-mac-spoofing", "<filter name='no-arp-mac-spoofing' chain='arp-mac' priority='-520'>
  <rule action='return' direction='out' priority='350'><arp arpsrcmacaddr='$MAC'/></rule>
  <rule action='drop' direction='out' priority='1000'/>
</filter>"),
    ("no-arp-ip-spoofing", "<filter name='no-arp-ip-spoofing' chain='arp-ip' priority='-510'>
  <rule action='return' direction='out' priority='400'><arp arpsrcipaddr='$IP'/></rule>
  <rule action='drop' direction='out' priority='1000'/>
</filter>"),
    ("no-arp-spoofing", "<filter name='no-arp-spoofing' chain='root'>
  <filterref filter='no-arp-mac-spoofing'/>
  <filterref filter='no-arp-ip-spoofing'/>
</filter>"),
    ("allow-arp", "<filter name='allow-arp' chain='arp'>
  <rule action='accept' direction='inout' priority='500'/>
</filter>"),
    // DHCP: the guest's broadcast request out, any server's reply in.
    ("allow-dhcp", "<filter name='allow-dhcp' chain='ipv4'>
  <rule action='accept' direction='out' priority='100'><ip srcipaddr='0.0.0.0' dstipaddr='255.255.255.255' protocol='udp' srcportstart='68' dstportstart='67'/></rule>
  <rule action='accept' direction='in' priority='100'><ip protocol='udp' srcportstart='67' dstportstart='68'/></rule>
</filter>"),
    // Replies only from the servers in $DHCPSERVER.
    ("allow-dhcp-server", "<filter name='allow-dhcp-server' chain='ipv4'>
  <rule action='accept' direction='out' priority='100'><ip srcipaddr='0.0.0.0' dstipaddr='255.255.255.255' protocol='udp' srcportstart='68' dstportstart='67'/></rule>
  <rule action='accept' direction='in' priority='100'><ip srcipaddr='$DHCPSERVER' protocol='udp' srcportstart='67' dstportstart='68'/></rule>
</filter>"),
    ("allow-dhcpv6", "<filter name='allow-dhcpv6' chain='ipv6'>
  <rule action='accept' direction='out' priority='100'><ipv6 srcipaddr='fe80::' srcipmask='10' dstipaddr='ff02::1:2' protocol='udp' srcportstart='546' dstportstart='547'/></rule>
  <rule action='accept' direction='in' priority='100'><ipv6 srcipaddr='fe80::' srcipmask='10' protocol='udp' srcportstart='547' dstportstart='546'/></rule>
</filter>"),
    ("allow-ipv4", "<filter name='allow-ipv4' chain='ipv4'>
  <rule action='accept' direction='inout' priority='500'/>
</filter>"),
    ("allow-ipv6", "<filter name='allow-ipv6' chain='ipv6'>
  <rule action='accept' direction='inout' priority='500'/>
</filter>"),
    ("allow-incoming-ipv4", "<filter name='allow-incoming-ipv4' chain='ipv4'>
  <rule action='accept' direction='in' priority='500'/>
</filter>"),
    ("allow-incoming-ipv6", "<filter name='allow-incoming-ipv6' chain='ipv6'>
  <rule action='accept' direction='in' priority='500'/>
</filter>"),
    ("no-mac-broadcast", "<filter name='no-mac-broadcast' chain='mac'>
  <rule action='drop' direction='out' priority='500'><mac dstmacaddr='ff:ff:ff:ff:ff:ff'/></rule>
</filter>"),
    ("no-ip-multicast", "<filter name='no-ip-multicast' chain='ipv4'>
  <rule action='drop' direction='out' priority='500'><ip dstipaddr='224.0.0.0' dstipmask='4'/></rule>
</filter>"),
    ("no-ipv6-multicast", "<filter name='no-ipv6-multicast' chain='ipv6'>
  <rule action='drop' direction='out' priority='500'><ipv6 dstipaddr='ff00::' dstipmask='8'/></rule>
</filter>"),
    // Everything no earlier rule accepted, at the very end of root.
    ("no-other-l2-traffic", "<filter name='no-other-l2-traffic' chain='root'>
  <rule action='drop' direction='inout' priority='1000'/>
</filter>"),
    ("no-other-rarp-traffic", "<filter name='no-other-rarp-traffic' chain='rarp'>
  <rule action='drop' direction='inout' priority='1000'/>
</filter>"),
    // QEMU's RARP announcement after a migration: broadcast, from the guest's MAC.
    ("qemu-announce-self-rarp", "<filter name='qemu-announce-self-rarp' chain='rarp' priority='-400'>
  <rule action='accept' direction='out' priority='500'><rarp srcmacaddr='$MAC' dstmacaddr='ff:ff:ff:ff:ff:ff'/></rule>
  <rule action='accept' direction='in' priority='500'><rarp dstmacaddr='ff:ff:ff:ff:ff:ff'/></rule>
</filter>"),
    ("qemu-announce-self", "<filter name='qemu-announce-self' chain='root'>
  <filterref filter='qemu-announce-self-rarp'/>
  <filterref filter='no-other-rarp-traffic'/>
</filter>"),
    // The guest may only send as itself; IPv4 in, its own ARP, nothing else.
    ("clean-traffic", "<filter name='clean-traffic' chain='root'>
  <filterref filter='no-mac-spoofing'/>
  <filterref filter='no-ip-spoofing'/>
  <rule action='accept' direction='out' priority='-650'><mac protocolid='ipv4'/></rule>
  <filterref filter='allow-incoming-ipv4'/>
  <filterref filter='no-arp-spoofing'/>
  <rule action='accept' direction='inout' priority='-500'><mac protocolid='arp'/></rule>
  <filterref filter='no-other-l2-traffic'/>
  <filterref filter='qemu-announce-self'/>
</filter>"),
];

/// Writes every standard filter into `dir` (a fresh config folder).
pub fn install(dir: &Path) -> std::io::Result<()> {
    for (name, text) in FILTERS {
        let f = Filter::from_xml(text)
            .map_err(|e| std::io::Error::other(format!("standard filter '{name}': {e}")))?;
        common::persist::write_atomic(
            &dir.join(format!("{name}.xml")),
            f.to_xml().as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_filter_parses_under_its_name() {
        for (name, text) in FILTERS {
            let f = Filter::from_xml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(f.name, *name);
        }
    }
}
