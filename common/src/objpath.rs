//! Object paths exactly as libvirt-dbus builds them (its src/util.c), so that clients
//! written for libvirt-dbus find the same objects here.

use zbus::zvariant::OwnedObjectPath;

/// The connect object every daemon serves.
pub const CONNECT_PATH: &str = "/org/libvirt/QEMU";

/// `_` followed by the UUID with every `-` turned into `_` (domains, networks, pools).
pub fn encode_uuid(uuid: &uuid::Uuid) -> String {
    format!("_{}", uuid.hyphenated()).replace('-', "_")
}

/// Every byte outside `[A-Za-z0-9]` becomes `_` and two lower-case hex digits.
pub fn encode_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push('_');
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
    }
    out
}

/// The inverse of [`encode_str`]; `None` for anything it could not have produced.
pub fn decode_str(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes the last segment of a UUID-keyed path back to a UUID.
pub fn decode_uuid(segment: &str) -> Option<uuid::Uuid> {
    let s = segment.strip_prefix('_')?.replace('_', "-");
    uuid::Uuid::parse_str(&s).ok()
}

fn path(kind: &str, tail: &str) -> OwnedObjectPath {
    // Encoded segments only hold [A-Za-z0-9_], so the path is always valid.
    OwnedObjectPath::try_from(format!("{CONNECT_PATH}/{kind}/{tail}"))
        .unwrap_or_else(|_| OwnedObjectPath::try_from(CONNECT_PATH).expect("static path"))
}

pub fn domain(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("domain", &encode_uuid(uuid))
}

/// Secrets are keyed by UUID, as domains are.
pub fn secret(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("secret", &encode_uuid(uuid))
}

/// A domain snapshot: its domain's encoded UUID, `_`, its encoded name.
pub fn domain_snapshot(domain: &uuid::Uuid, name: &str) -> OwnedObjectPath {
    path(
        "domainsnapshot",
        &format!("{}_{}", encode_uuid(domain), encode_str(name)),
    )
}

pub fn network(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("network", &encode_uuid(uuid))
}

pub fn storage_pool(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("storagepool", &encode_uuid(uuid))
}

/// Volumes are keyed by their key (usually the volume's path).
pub fn storage_vol(key: &str) -> OwnedObjectPath {
    path("storagevol", &encode_str(key))
}

pub fn node_device(name: &str) -> OwnedObjectPath {
    path("nodedev", &encode_str(name))
}

/// Host interfaces: libvirt-dbus keys them by MAC, which several links share (a
/// bridge and its first port, a vlan and its device, a bond and its ports) and some
/// lack; this project keys them by name, encoded as node devices are (docs/virtnetworkd.md).
pub fn interface(name: &str) -> OwnedObjectPath {
    path("interface", &encode_str(name))
}

/// Network filters are keyed by UUID (libvirt-dbus's nwfilter paths).
pub fn nwfilter(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("nwfilter", &encode_uuid(uuid))
}

/// Filter bindings are this project's addition (libvirt's virNWFilterBinding, which
/// libvirt-dbus does not wrap), keyed by their tap's name as interfaces are.
pub fn nwfilter_binding(portdev: &str) -> OwnedObjectPath {
    path("nwfilterbinding", &encode_str(portdev))
}

/// Network ports are this project's addition; they follow the UUID scheme.
pub fn network_port(uuid: &uuid::Uuid) -> OwnedObjectPath {
    path("networkport", &encode_uuid(uuid))
}

pub fn connect() -> OwnedObjectPath {
    OwnedObjectPath::try_from(CONNECT_PATH).expect("static path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_paths_match_libvirt_dbus() {
        let u = uuid::Uuid::parse_str("6695eb01-f6a4-8304-79aa-97f2502e193f").unwrap();
        assert_eq!(
            domain(&u).as_str(),
            "/org/libvirt/QEMU/domain/_6695eb01_f6a4_8304_79aa_97f2502e193f"
        );
        assert_eq!(
            decode_uuid("_6695eb01_f6a4_8304_79aa_97f2502e193f"),
            Some(u)
        );
        assert_eq!(decode_uuid("6695eb01"), None);
        assert_eq!(
            nwfilter(&u).as_str(),
            "/org/libvirt/QEMU/nwfilter/_6695eb01_f6a4_8304_79aa_97f2502e193f"
        );
        assert_eq!(
            domain_snapshot(&u, "my_snapshot").as_str(),
            "/org/libvirt/QEMU/domainsnapshot/_6695eb01_f6a4_8304_79aa_97f2502e193f_my_5fsnapshot"
        );
    }

    #[test]
    fn strings_encode_every_other_byte() {
        assert_eq!(encode_str("pci_0000_00_01_0"), "pci_5f0000_5f00_5f01_5f0");
        assert_eq!(encode_str("a-b.c/d"), "a_2db_2ec_2fd");
        assert_eq!(encode_str("é"), "_c3_a9");
        assert_eq!(
            storage_vol("/var/lib/libvirt/images/a.qcow2").as_str(),
            "/org/libvirt/QEMU/storagevol/_2fvar_2flib_2flibvirt_2fimages_2fa_2eqcow2"
        );
        assert_eq!(
            interface("eth0.7").as_str(),
            "/org/libvirt/QEMU/interface/eth0_2e7"
        );
        assert_eq!(
            nwfilter_binding("vnet0").as_str(),
            "/org/libvirt/QEMU/nwfilterbinding/vnet0"
        );
        for s in ["a-b.c/d", "é ü", "pci_0000_00_01_0", "x"] {
            assert_eq!(decode_str(&encode_str(s)).as_deref(), Some(s));
        }
        assert_eq!(decode_str("_zz"), None);
        assert_eq!(decode_str("_2"), None);
    }
}
