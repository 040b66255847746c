//! A minimal capabilities document until `crate::caps::Caps` (probed through QMP) is
//! published: the x86_64 guest this runtime launches, and which accelerators apply.

use std::path::Path;

use common::error::VirError;
use common::xml::Element;

const EMULATOR: &str = "/usr/bin/qemu-system-x86_64";

fn kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

/// `Connect.GetCapabilities`.
pub fn capabilities() -> String {
    let mut arch = Element::new("arch")
        .attr("name", "x86_64")
        .child(Element::with_text("wordsize", "64"))
        .child(Element::with_text("emulator", EMULATOR))
        .child(Element::with_text("machine", "pc"))
        .child(Element::with_text("machine", "q35"))
        .child(Element::new("domain").attr("type", "qemu"));
    if kvm() {
        arch.push(Element::new("domain").attr("type", "kvm"));
    }
    Element::new("capabilities")
        .child(
            Element::new("host")
                .child(Element::new("cpu").child(Element::with_text("arch", "x86_64"))),
        )
        .child(
            Element::new("guest")
                .child(Element::with_text("os_type", "hvm"))
                .child(arch),
        )
        .to_xml()
}

/// `Connect.GetDomainCapabilities`.
pub fn domain_capabilities(
    emulator: &str,
    arch: &str,
    machine: &str,
    virttype: &str,
) -> Result<String, VirError> {
    if !arch.is_empty() && arch != "x86_64" {
        return Err(VirError::unsupported(format!(
            "architecture '{arch}' is not supported"
        )));
    }
    let virttype = if virttype.is_empty() {
        "qemu"
    } else {
        virttype
    };
    if !matches!(virttype, "qemu" | "kvm") || (virttype == "kvm" && !kvm()) {
        return Err(VirError::unsupported(format!(
            "virttype '{virttype}' is not supported"
        )));
    }
    let emulator = if emulator.is_empty() {
        EMULATOR
    } else {
        emulator
    };
    let machine = if machine.is_empty() { "pc" } else { machine };
    Ok(Element::new("domainCapabilities")
        .child(Element::with_text("path", emulator))
        .child(Element::with_text("domain", virttype))
        .child(Element::with_text("machine", machine))
        .child(Element::with_text("arch", "x86_64"))
        .child(Element::new("vcpu").attr("max", "255"))
        .to_xml())
}
