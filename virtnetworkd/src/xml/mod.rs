//! The typed network document (libvirt's formatnetwork) and network port document
//! (formatnetworkport): parsing with validation, defaults, and writing back.

mod network;
mod port;

pub use network::*;
pub use port::*;

use common::xml::XmlError;

/// A MAC address, parsed from `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(element: &str, s: &str) -> Result<Mac, XmlError> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(XmlError::invalid(
                element,
                "MAC address",
                s,
                "expected six octets",
            ));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.is_empty() || p.len() > 2 {
                return Err(XmlError::invalid(element, "MAC address", s, "bad octet"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| XmlError::invalid(element, "MAC address", s, "bad octet"))?;
        }
        Ok(Mac(out))
    }

    /// A random address in QEMU's 52:54:00 range, as libvirt generates.
    pub fn random() -> Mac {
        let b = *uuid::Uuid::new_v4().as_bytes();
        Mac([0x52, 0x54, 0x00, b[0], b[1], b[2]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

pub(crate) fn parse_uuid(el: &common::xml::Element) -> Result<Option<uuid::Uuid>, XmlError> {
    match el.child_text("uuid") {
        None => Ok(None),
        Some(t) => uuid::Uuid::parse_str(t.trim())
            .map(Some)
            .map_err(|e| XmlError::invalid("uuid", "value", &t, e)),
    }
}
