//! One device's QEMU properties ([`DeviceProps`]) and their two renderings: the
//! `-device` option string and the QMP `device_add` arguments. Also where devices go
//! on the PCI buses ([`PciBuses`]), since bus and address are properties too.

use std::collections::BTreeSet;

use crate::xml::{Address, Domain};

use super::{qemu_opt_value, Result};

/// A property value, typed so that QMP gets numbers and booleans as JSON does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Str(String),
    Uint(u64),
    /// A number QEMU's users read in hex (`port=0x10`); still a number over QMP.
    Hex(u64),
    /// `on`/`off` on the command line.
    Bool(bool),
}

/// A device as QEMU sees it: the driver and its properties in command-line order.
/// `id` is one of the properties, where QEMU's and libvirt's argv put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProps {
    pub driver: String,
    pub props: Vec<(&'static str, PropValue)>,
}

impl DeviceProps {
    pub fn new(driver: impl Into<String>) -> DeviceProps {
        DeviceProps {
            driver: driver.into(),
            props: Vec::new(),
        }
    }

    pub fn str(mut self, key: &'static str, value: impl Into<String>) -> DeviceProps {
        self.props.push((key, PropValue::Str(value.into())));
        self
    }

    pub fn uint(mut self, key: &'static str, value: u64) -> DeviceProps {
        self.props.push((key, PropValue::Uint(value)));
        self
    }

    pub fn hex(mut self, key: &'static str, value: u64) -> DeviceProps {
        self.props.push((key, PropValue::Hex(value)));
        self
    }

    pub fn on(mut self, key: &'static str) -> DeviceProps {
        self.props.push((key, PropValue::Bool(true)));
        self
    }

    pub fn opt_uint(self, key: &'static str, value: Option<u64>) -> DeviceProps {
        match value {
            Some(v) => self.uint(key, v),
            None => self,
        }
    }

    /// `bus`, `addr` (and `multifunction`) for a device at `a`; nothing for no address.
    pub(super) fn pci(mut self, buses: &PciBuses, a: &Option<Address>) -> DeviceProps {
        self.props.extend(buses.props(a));
        self
    }

    pub fn id(&self) -> Option<&str> {
        self.props.iter().find_map(|(k, v)| match (k, v) {
            (&"id", PropValue::Str(s)) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The `-device` argument: `driver,key=value,...`, string values escaped by
    /// [`qemu_opt_value`].
    pub fn to_device_arg(&self) -> Result<String> {
        let mut s = self.driver.clone();
        for (k, v) in &self.props {
            s.push(',');
            s.push_str(k);
            s.push('=');
            match v {
                PropValue::Str(x) => s.push_str(&qemu_opt_value(k, x)?),
                PropValue::Uint(n) => s.push_str(&n.to_string()),
                PropValue::Hex(n) => s.push_str(&format!("0x{n:x}")),
                PropValue::Bool(b) => s.push_str(if *b { "on" } else { "off" }),
            }
        }
        Ok(s)
    }

    /// The arguments of QMP `device_add` for the same device (no escaping: JSON).
    pub fn to_qmp_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("driver".into(), self.driver.clone().into());
        for (k, v) in &self.props {
            let v = match v {
                PropValue::Str(x) => x.clone().into(),
                PropValue::Uint(n) | PropValue::Hex(n) => (*n).into(),
                PropValue::Bool(b) => (*b).into(),
            };
            m.insert((*k).to_owned(), v);
        }
        serde_json::Value::Object(m)
    }
}

/// Where devices go on QEMU's PCI buses: the root bus (`pcie.0`/`pci.0`) or the bus of
/// a bridge or root port (`pci.N`, N its controller index, as libvirt names them).
pub(super) struct PciBuses {
    q35: bool,
    /// Slots whose function 0 must say `multifunction=on` (other functions are used).
    multi: BTreeSet<(u8, u8)>,
}

impl PciBuses {
    pub(super) fn of(dom: &Domain) -> PciBuses {
        PciBuses {
            q35: dom.is_q35(),
            multi: dom
                .devices
                .pci_addresses()
                .iter()
                .filter(|p| p.function != 0)
                .map(|p| (p.bus, p.slot))
                .collect(),
        }
    }

    /// `bus`, `addr` (and `multifunction`) for a device at `a`, or nothing for no address.
    fn props(&self, a: &Option<Address>) -> Vec<(&'static str, PropValue)> {
        let Some(p) = a.as_ref().and_then(Address::pci) else {
            return Vec::new();
        };
        let bus = match (p.bus, self.q35) {
            (0, true) => "pcie.0".to_owned(),
            (0, false) => "pci.0".to_owned(),
            (b, _) => format!("pci.{b}"),
        };
        let mut addr = format!("0x{:x}", p.slot);
        let mut out = Vec::new();
        if p.function != 0 {
            addr.push_str(&format!(".0x{:x}", p.function));
        }
        out.push(("bus", PropValue::Str(bus)));
        out.push(("addr", PropValue::Str(addr)));
        // Written (or set by libvirt's defaults) on function 0, or implied by others.
        let multi = p
            .multi
            .unwrap_or_else(|| self.multi.contains(&(p.bus, p.slot)));
        if p.function == 0 && multi {
            out.push(("multifunction", PropValue::Bool(true)));
        }
        out
    }
}

/// libvirt's virtio options of a device's `<driver>` (`iommu`, `ats`, `packed`,
/// `page_per_vq`, each on or off) as QEMU's virtio-pci properties; any other attribute
/// is refused by name (`<ELEMENT/driver KEY>`). `skip` names attributes the caller
/// reads itself.
pub(super) fn virtio_options(
    mut dev: DeviceProps,
    element: &str,
    attrs: &[(String, String)],
    skip: &[&str],
) -> super::Result<DeviceProps> {
    for (k, v) in attrs.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        let what = format!("{element}/driver {k}");
        let prop = match k.as_str() {
            "iommu" => "iommu_platform",
            "ats" => "ats",
            "packed" => "packed",
            "page_per_vq" => "page-per-vq",
            _ => return Err(super::unsupported(&what, v, "not implemented")),
        };
        let on = match v.as_str() {
            "on" => true,
            "off" => false,
            _ => return Err(super::unsupported(&what, v, "expected on or off")),
        };
        dev.props.push((prop, PropValue::Bool(on)));
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_json_carries_the_device_arg_properties() {
        let dev = DeviceProps::new("virtio-net-pci")
            .str("netdev", "hostnet0")
            .str("id", "net0")
            .str("mac", "52:54:00:12:34:56")
            .str("bus", "pcie.0")
            .str("addr", "0x2")
            .on("multifunction")
            .hex("port", 0x10)
            .uint("bootindex", 1)
            .str("name", "a,b");
        assert_eq!(
            dev.to_device_arg().unwrap(),
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:12:34:56,bus=pcie.0,\
             addr=0x2,multifunction=on,port=0x10,bootindex=1,name=a,,b"
        );
        assert_eq!(dev.id(), Some("net0"));
        assert_eq!(
            dev.to_qmp_json(),
            serde_json::json!({
                "driver": "virtio-net-pci", "netdev": "hostnet0", "id": "net0",
                "mac": "52:54:00:12:34:56", "bus": "pcie.0", "addr": "0x2",
                "multifunction": true, "port": 16, "bootindex": 1, "name": "a,b",
            })
        );
    }
}
