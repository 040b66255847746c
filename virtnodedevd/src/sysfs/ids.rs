//! Vendor and product names from the pci.ids / usb.ids databases: parsed on a lookup
//! that misses the small cache of names already asked for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub struct IdDb {
    text: String,
    vendors: HashMap<u16, (usize, usize, usize)>,
}

impl IdDb {
    pub fn parse(text: String) -> IdDb {
        // vendor id -> (name line start, name line end, end of its device lines)
        let mut vendors: HashMap<u16, (usize, usize, usize)> = HashMap::new();
        let mut offset = 0;
        let mut open: Option<u16> = None;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let l = line.trim_end_matches(['\n', '\r']);
            if l.is_empty() || l.starts_with('#') || l.starts_with('\t') {
                continue;
            }
            if let Some(id) = open.take() {
                if let Some(e) = vendors.get_mut(&id) {
                    e.2 = start;
                }
            }
            // Class sections ("C 02  Network controller") end the vendor list.
            let hex = l
                .get(..4)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            let Some(id) = hex.and_then(|h| u16::from_str_radix(h, 16).ok()) else {
                break;
            };
            vendors.insert(id, (start, offset, offset));
            open = Some(id);
        }
        if let Some(id) = open {
            if let Some(e) = vendors.get_mut(&id) {
                e.2 = offset;
            }
        }
        IdDb { text, vendors }
    }

    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        let &(s, e, _) = self.vendors.get(&vendor)?;
        name_of(self.text.get(s..e)?)
    }

    pub fn product(&self, vendor: u16, product: u16) -> Option<&str> {
        let &(_, s, e) = self.vendors.get(&vendor)?;
        let block = self.text.get(s..e)?;
        let want = format!("{product:04x}");
        block.lines().find_map(|l| {
            let l = l.strip_prefix('\t')?;
            if l.starts_with('\t') || !l.get(..4)?.eq_ignore_ascii_case(&want) {
                return None;
            }
            name_of(l)
        })
    }
}

/// `"1af4  Red Hat, Inc."` -> `"Red Hat, Inc."`
fn name_of(line: &str) -> Option<&str> {
    let n = line.get(4..)?.trim();
    (!n.is_empty()).then_some(n)
}

/// (vendor, product or none for the vendor's own name) -> name.
type NameCache = BTreeMap<(u16, Option<u16>), Option<String>>;

/// One names database on disk. Lookups read the file and keep only the answers: the
/// whole text (over 1 MiB for pci.ids) would double the daemon's idle memory.
pub struct IdFile {
    paths: &'static [&'static str],
    cache: Mutex<NameCache>,
}

impl IdFile {
    const fn new(paths: &'static [&'static str]) -> IdFile {
        IdFile {
            paths,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    fn lookup(&self, vendor: u16, product: Option<u16>) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&(vendor, product)) {
            return hit.clone();
        }
        let text = self
            .paths
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let db = IdDb::parse(text);
        let v = db.vendor(vendor).map(str::to_string);
        cache.insert((vendor, None), v.clone());
        let answer = match product {
            Some(p) => {
                let name = db.product(vendor, p).map(str::to_string);
                cache.insert((vendor, Some(p)), name.clone());
                name
            }
            None => v,
        };
        answer
    }
}

static PCI: IdFile = IdFile::new(&["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"]);
static USB: IdFile = IdFile::new(&[
    "/usr/share/misc/usb.ids",
    "/usr/share/hwdata/usb.ids",
    "/var/lib/usbutils/usb.ids",
]);

/// Which database.
#[derive(Clone, Copy)]
pub enum Db {
    Pci,
    Usb,
}

/// A vendor's name (`product` None) or a product's name. A fixture tree uses its own
/// `pci.ids`/`usb.ids` beside it, so that its XML does not depend on the host's copies.
pub fn name(roots: &super::Roots, db: Db, vendor: u16, product: Option<u16>) -> Option<String> {
    if roots.real {
        let file = match db {
            Db::Pci => &PCI,
            Db::Usb => &USB,
        };
        return file.lookup(vendor, product);
    }
    let file = match db {
        Db::Pci => "pci.ids",
        Db::Usb => "usb.ids",
    };
    let text = std::fs::read_to_string(roots.sys.with_file_name(file)).unwrap_or_default();
    let parsed = IdDb::parse(text);
    match product {
        Some(p) => parsed.product(vendor, p),
        None => parsed.vendor(vendor),
    }
    .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vendors_and_products() {
        let db = IdDb::parse(
            "# comment\n1af4  Red Hat, Inc.\n\t1000  Virtio network device\n\t\t1af4 0001  sub\n\t1042  Virtio 1.0 block device\n8086  Intel Corporation\n\t10c9  82576 Gigabit Network Connection\nC 00  Unclassified device\n\t00  Non-VGA\n"
                .to_string(),
        );
        assert_eq!(db.vendor(0x1af4), Some("Red Hat, Inc."));
        assert_eq!(db.product(0x1af4, 0x1042), Some("Virtio 1.0 block device"));
        assert_eq!(
            db.product(0x8086, 0x10c9),
            Some("82576 Gigabit Network Connection")
        );
        assert_eq!(db.product(0x1af4, 0x10c9), None);
        assert_eq!(db.vendor(0x1234), None);
    }
}
