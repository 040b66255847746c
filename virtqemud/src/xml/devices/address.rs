//! Device addresses: `<address type='pci'|'drive'|...>` as typed values, read and
//! written back, and the `<address>` child every addressable device may carry.

use common::xml::Element;

use super::super::{invalid, Result};

/// A PCI address `<address type='pci' domain bus slot function/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    /// `multifunction='on'|'off'`: libvirt sets it on function 0 of a slot whose
    /// other functions are used too.
    pub multi: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Pci(PciAddr),
    Drive {
        controller: u32,
        bus: u32,
        target: u32,
        unit: u32,
    },
    /// Any other address type, kept verbatim.
    Other(Element),
}

pub(super) fn parse_num(el: &Element, key: &str) -> Result<u32> {
    let Some(v) = el.get_attr(key) else {
        return Ok(0);
    };
    let r = match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| invalid("address", &format!("attribute '{key}'"), v, e))
}

impl Address {
    pub(super) fn parse(el: &Element) -> Result<Address> {
        match el.get_attr("type") {
            Some("pci") => {
                let d = parse_num(el, "domain")?;
                let b = parse_num(el, "bus")?;
                let s = parse_num(el, "slot")?;
                let f = parse_num(el, "function")?;
                if d > 0xffff || b > 0xff || s > 0x1f || f > 7 {
                    return Err(invalid(
                        "address",
                        "pci",
                        &format!("{d:x}:{b:x}:{s:x}.{f:x}"),
                        "out of range",
                    ));
                }
                let multi = match el.get_attr("multifunction") {
                    None => None,
                    Some("on") => Some(true),
                    Some("off") => Some(false),
                    Some(v) => {
                        return Err(invalid(
                            "address",
                            "attribute 'multifunction'",
                            v,
                            "expected on or off",
                        ))
                    }
                };
                Ok(Address::Pci(PciAddr {
                    domain: d as u16,
                    bus: b as u8,
                    slot: s as u8,
                    function: f as u8,
                    multi,
                }))
            }
            Some("drive") => Ok(Address::Drive {
                controller: parse_num(el, "controller")?,
                bus: parse_num(el, "bus")?,
                target: parse_num(el, "target")?,
                unit: parse_num(el, "unit")?,
            }),
            _ => Ok(Address::Other(el.clone())),
        }
    }

    pub(super) fn to_element(&self) -> Element {
        match self {
            Address::Pci(p) => Element::new("address")
                .attr("type", "pci")
                .attr("domain", format!("0x{:04x}", p.domain))
                .attr("bus", format!("0x{:02x}", p.bus))
                .attr("slot", format!("0x{:02x}", p.slot))
                .attr("function", format!("0x{:x}", p.function))
                .attr_opt(
                    "multifunction",
                    p.multi.map(|m| if m { "on" } else { "off" }),
                ),
            Address::Drive {
                controller,
                bus,
                target,
                unit,
            } => Element::new("address")
                .attr("type", "drive")
                .attr("controller", controller)
                .attr("bus", bus)
                .attr("target", target)
                .attr("unit", unit),
            Address::Other(e) => e.clone(),
        }
    }

    pub fn pci(&self) -> Option<PciAddr> {
        match self {
            Address::Pci(p) => Some(*p),
            _ => None,
        }
    }
}

impl Address {
    /// The `<address>` child of a device element (for devices the model keeps
    /// untyped and the command line builds).
    pub fn of(el: &Element) -> Result<Option<Address>> {
        addr_of(el)
    }
}

pub(super) fn addr_of(el: &Element) -> Result<Option<Address>> {
    match el.first("address").map(Address::parse).transpose()? {
        // `<address type='pci'/>` (all of it zero) asks for a PCI address that libvirt
        // picks (virPCIDeviceAddressIsEmpty), as no address does on x86.
        Some(Address::Pci(p)) if (p.domain, p.bus, p.slot, p.function) == (0, 0, 0, 0) => Ok(None),
        a => Ok(a),
    }
}

pub(super) fn push_addr(el: &mut Element, a: &Option<Address>) {
    if let Some(a) = a {
        el.push(a.to_element());
    }
}
