//! `<hostdev mode='subsystem' type='pci'>`: a host PCI device given to the guest; the
//! source is the host address, `<address>` the guest one.

use common::xml::Element;

use super::super::{missing, yes_no, yn, DomainXmlError, Result};
use super::{addr_of, push_addr, Address, PciAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostdev {
    /// The host PCI address.
    pub source: PciAddr,
    pub managed: bool,
    pub address: Option<Address>,
    /// `<driver name='vfio'/>` as written: libvirt 9.0 picks VFIO at start and
    /// writes it into the definition only when it was given.
    pub driver_vfio: bool,
}

impl Hostdev {
    pub(super) fn parse(c: &Element) -> Result<Hostdev> {
        if c.get_attr("mode").unwrap_or("subsystem") != "subsystem"
            || c.get_attr("type") != Some("pci")
        {
            return Err(DomainXmlError::unsupported(
                "hostdev type",
                c.get_attr("type").unwrap_or(""),
                "only PCI subsystem hostdevs",
            ));
        }
        let a = c
            .first("source")
            .and_then(|s| s.first("address"))
            .ok_or_else(|| missing("hostdev", "<source><address>"))?;
        let source = match Address::parse(&a.clone().attr("type", "pci"))? {
            Address::Pci(p) => p,
            _ => return Err(missing("hostdev", "PCI source address")),
        };
        // libvirt 9.0 assigns PCI devices through VFIO only (and writes so).
        if let Some(d) = c.first("driver").and_then(|d| d.get_attr("name")) {
            if d != "vfio" {
                return Err(DomainXmlError::unsupported(
                    "hostdev driver name",
                    d,
                    "only 'vfio' (legacy KVM assignment is gone from libvirt too)",
                ));
            }
        }
        Ok(Hostdev {
            driver_vfio: c.first("driver").is_some(),
            source,
            managed: yes_no(c, "managed")?.unwrap_or(false),
            address: addr_of(c)?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        // The source address is written without its type, as libvirt does.
        let a = Address::Pci(self.source).to_element();
        let a = Element {
            attrs: a.attrs.into_iter().filter(|(k, _)| k != "type").collect(),
            ..a
        };
        let mut e = Element::new("hostdev")
            .attr("mode", "subsystem")
            .attr("type", "pci")
            .attr("managed", yn(self.managed))
            .child_opt(
                self.driver_vfio
                    .then(|| Element::new("driver").attr("name", "vfio")),
            )
            .child(Element::new("source").child(a));
        push_addr(&mut e, &self.address);
        e
    }
}
