//! `<networkport>`: the owner domain, the MAC, what to plug into, the bandwidth.

use common::xml::{parse_root, Element, XmlError};
use uuid::Uuid;

use super::{parse_uuid, Mac};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub uuid: Uuid,
    pub owner_name: String,
    pub owner_uuid: Uuid,
    pub mac: Mac,
    /// `<bandwidth>` as written.
    pub bandwidth: Option<Element>,
    /// Filled by the daemon: the bridge to plug into.
    pub bridge: Option<String>,
    pub mac_table_manager: Option<String>,
}

impl Port {
    pub fn from_xml(text: &str) -> Result<Port, XmlError> {
        let root = parse_root(text, "networkport")?;
        let owner = root
            .first("owner")
            .ok_or_else(|| XmlError::missing("networkport", "<owner>"))?;
        let owner_name = owner
            .child_text("name")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| XmlError::missing("owner", "<name>"))?;
        let owner_uuid = parse_uuid(owner)?.ok_or_else(|| XmlError::missing("owner", "<uuid>"))?;
        let mac = Mac::parse(
            "mac",
            root.first("mac")
                .ok_or_else(|| XmlError::missing("networkport", "<mac>"))?
                .req_attr("address")?,
        )?;
        let plug = root.first("plug");
        Ok(Port {
            uuid: parse_uuid(&root)?.unwrap_or_else(Uuid::new_v4),
            owner_name,
            owner_uuid,
            mac,
            bandwidth: root.first("bandwidth").cloned(),
            bridge: plug.and_then(|p| p.get_attr("bridge")).map(str::to_owned),
            mac_table_manager: plug
                .and_then(|p| p.get_attr("macTableManager"))
                .map(str::to_owned),
        })
    }

    pub fn to_xml(&self) -> String {
        Element::new("networkport")
            .child(Element::with_text("uuid", self.uuid.to_string()))
            .child(
                Element::new("owner")
                    .child(Element::with_text("name", &self.owner_name))
                    .child(Element::with_text("uuid", self.owner_uuid.to_string())),
            )
            .child(Element::new("mac").attr("address", self.mac))
            .child_opt(self.bandwidth.clone())
            .child_opt(self.bridge.as_ref().map(|b| {
                Element::new("plug")
                    .attr("type", "network")
                    .attr("bridge", b)
                    .attr_opt("macTableManager", self.mac_table_manager.as_deref())
            }))
            .to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_round_trips() {
        let xml = "<networkport>
  <uuid>5d744f21-ba4a-4d6e-bdb2-30a35ff3207d</uuid>
  <owner>
    <name>guest</name>
    <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a4</uuid>
  </owner>
  <mac address='52:54:00:7b:35:93'/>
  <bandwidth>
    <inbound average='1000'/>
  </bandwidth>
  <plug type='network' bridge='virbr0'/>
</networkport>
";
        let p = Port::from_xml(xml).unwrap();
        assert_eq!(p.bridge.as_deref(), Some("virbr0"));
        assert_eq!(p.to_xml(), xml);
        assert!(
            Port::from_xml("<networkport><owner><name>g</name></owner></networkport>").is_err()
        );
    }
}
