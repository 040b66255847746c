//! PCI host devices assigned to the guest through VFIO (the runtime binds them to
//! vfio-pci before start).

use crate::xml::{Domain, Hostdev};

use super::device::{DeviceProps, PciBuses};
use super::{Argv, Result};

pub(super) fn hostdevs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, h) in dom.devices.hostdevs.iter().enumerate() {
        a.device(&hostdev_props(i, h, buses))?;
    }
    Ok(())
}

fn hostdev_props(i: usize, h: &Hostdev, buses: &PciBuses) -> DeviceProps {
    let s = h.source;
    DeviceProps::new("vfio-pci")
        .str(
            "host",
            format!(
                "{:04x}:{:02x}:{:02x}.{:x}",
                s.domain, s.bus, s.slot, s.function
            ),
        )
        .str("id", format!("hostdev{i}"))
        .pci(buses, &h.address)
}
