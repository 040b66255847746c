//! Vendor and product names from the pci.ids / usb.ids databases: streamed line by line
//! on a lookup that misses the small cache of names already asked for.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Mutex;

/// Reads an ids database line by line and returns (vendor name, product name) for
/// `vendor` and, when asked, `product`. Only the current line is held, so a lookup
/// costs a read of the file but never its size in memory.
pub fn find(
    reader: impl BufRead,
    vendor: u16,
    product: Option<u16>,
) -> (Option<String>, Option<String>) {
    let want_vendor = format!("{vendor:04x}");
    let want_product = product.map(|p| format!("{p:04x}"));
    let mut vendor_name: Option<String> = None;
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches('\r');
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if vendor_name.is_some() {
            // Inside the wanted vendor's block: its devices are one tab deep.
            if !l.starts_with('\t') {
                break;
            }
            let Some(d) = l.strip_prefix('\t').filter(|d| !d.starts_with('\t')) else {
                continue;
            };
            if want_product
                .as_deref()
                .is_some_and(|w| d.get(..4).is_some_and(|h| h.eq_ignore_ascii_case(w)))
            {
                return (vendor_name, name_of(d).map(str::to_string));
            }
            continue;
        }
        if l.starts_with('\t') {
            continue;
        }
        // Class sections ("C 02  Network controller") end the vendor list.
        let Some(hex) = l
            .get(..4)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            break;
        };
        if hex.eq_ignore_ascii_case(&want_vendor) {
            vendor_name = Some(name_of(l).unwrap_or_default().to_string());
            if want_product.is_none() {
                break;
            }
        }
    }
    (vendor_name.filter(|n| !n.is_empty()), None)
}

/// `"1af4  Red Hat, Inc."` -> `"Red Hat, Inc."`
fn name_of(line: &str) -> Option<&str> {
    let n = line.get(4..)?.trim();
    (!n.is_empty()).then_some(n)
}

fn find_in(
    path: &std::path::Path,
    vendor: u16,
    product: Option<u16>,
) -> Option<(Option<String>, Option<String>)> {
    let f = std::fs::File::open(path).ok()?;
    Some(find(
        std::io::BufReader::with_capacity(16 * 1024, f),
        vendor,
        product,
    ))
}

/// (vendor, product or none for the vendor's own name) -> name.
type NameCache = BTreeMap<(u16, Option<u16>), Option<String>>;

/// One names database on disk. Lookups stream the file and keep only the answers:
/// reading the whole text (over 1 MiB for pci.ids) left ~1.5 MiB of freed heap that
/// glibc kept resident (its mmap threshold grows after the first large free).
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
        let (v, p) = self
            .paths
            .iter()
            .find_map(|path| find_in(std::path::Path::new(path), vendor, product))
            .unwrap_or_default();
        cache.insert((vendor, None), v.clone());
        match product {
            Some(id) => {
                cache.insert((vendor, Some(id)), p.clone());
                p
            }
            None => v,
        }
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
    let (v, p) = find_in(&roots.sys.with_file_name(file), vendor, product).unwrap_or_default();
    match product {
        Some(_) => p,
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vendors_and_products() {
        let db = "# comment\n1af4  Red Hat, Inc.\n\t1000  Virtio network device\n\t\t1af4 0001  sub\n\t1042  Virtio 1.0 block device\n8086  Intel Corporation\n\t10c9  82576 Gigabit Network Connection\nC 00  Unclassified device\n\t00  Non-VGA\n";
        let f = |v, p| find(db.as_bytes(), v, p);
        let s = |x: &str| Some(x.to_string());
        assert_eq!(f(0x1af4, None), (s("Red Hat, Inc."), None));
        assert_eq!(
            f(0x1af4, Some(0x1042)),
            (s("Red Hat, Inc."), s("Virtio 1.0 block device"))
        );
        assert_eq!(
            f(0x8086, Some(0x10c9)),
            (
                s("Intel Corporation"),
                s("82576 Gigabit Network Connection")
            )
        );
        // The subsystem line "1af4 0001" is two tabs deep: not a product of 1af4.
        assert_eq!(f(0x1af4, Some(0x0001)), (s("Red Hat, Inc."), None));
        assert_eq!(f(0x1af4, Some(0x10c9)), (s("Red Hat, Inc."), None));
        assert_eq!(f(0x1234, None), (None, None));
    }
}
