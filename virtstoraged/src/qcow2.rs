//! Reads the few fields of a qcow2 header the pool needs (virtual size, backing file
//! and its format) straight from the file, as QEMU's docs/interop/qcow2.txt lays them
//! out, so listing a pool of qcow2 volumes starts no process per volume. Anything
//! unexpected answers `None` and the caller asks `qemu-img info` instead.
//! Also writes the one image shape a new volume needs most (empty, version 3, 64 KiB
//! clusters, optionally over a backing file), so creating it starts no process either.

use std::fs::File;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_END: u32 = 0;
/// Header and extensions live in the first cluster; 64 KiB covers the default one.
const READ: usize = 64 << 10;
const FIRST_READ: usize = 4 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// `crypt_method` 2: LUKS inside.
    pub encrypted: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The header of a qcow2 image, or `None` when this reader cannot vouch for it.
pub fn read_header(file: &File) -> Option<Header> {
    // Header, extensions and backing name of images QEMU makes fit in the first 4 KiB;
    // the rest of the cluster is read only when they do not.
    let mut buf = vec![0u8; FIRST_READ];
    let got = read_full(file, &mut buf)?;
    if let Some(h) = parse(&buf[..got]) {
        return Some(h);
    }
    if got < FIRST_READ {
        return None;
    }
    buf.resize(READ, 0);
    let got = read_full(file, &mut buf)?;
    parse(&buf[..got])
}

/// Fills `buf` from offset 0 as far as the file goes; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8]) -> Option<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    Some(got)
}

fn parse(b: &[u8]) -> Option<Header> {
    if b.get(..4)? != MAGIC {
        return None;
    }
    let version = be32(b, 4)?;
    let ext_start = match version {
        2 => 72,
        3 => be32(b, 100)? as usize,
        _ => return None,
    };
    let (bf_off, bf_len) = (be64(b, 8)? as usize, be32(b, 16)? as usize);
    let virtual_size = be64(b, 24)?;
    let encrypted = match be32(b, 32)? {
        0 => false,
        2 => true,
        // AES (1): QEMU's old encryption, which it no longer opens: ask qemu-img.
        _ => return None,
    };
    let backing_file = if bf_off == 0 || bf_len == 0 {
        None
    } else if bf_len > 1023 {
        return None;
    } else {
        let raw = b.get(bf_off..bf_off.checked_add(bf_len)?)?;
        Some(String::from_utf8(raw.to_vec()).ok()?)
    };
    let mut backing_format = None;
    let mut at = ext_start;
    loop {
        let (kind, len) = (be32(b, at)?, be32(b, at + 4)? as usize);
        if kind == EXT_END {
            break;
        }
        let data = b.get(at + 8..(at + 8).checked_add(len)?)?;
        if kind == EXT_BACKING_FORMAT {
            backing_format = Some(String::from_utf8(data.to_vec()).ok()?);
        }
        // Extension data is padded to 8 bytes.
        at = at + 8 + len.div_ceil(8) * 8;
    }
    Some(Header {
        virtual_size,
        backing_file,
        backing_format,
        encrypted,
    })
}

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Guest bytes one L1 entry maps: an L2 table of CLUSTER/8 entries, each one cluster.
const L1_SPAN: u64 = CLUSTER * (CLUSTER / 8);
/// QEMU refuses L1 tables over 32 MiB; past that qemu-img answers instead.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// QEMU's limit on a backing file name.
const MAX_BACKING_NAME: usize = 1023;
const HEADER_V3_LEN: usize = 104;

/// The layout of an empty image, or `None` when this writer does not make that image
/// (the caller runs `qemu-img create`): size not a multiple of 512 or zero, L1 table
/// over QEMU's limit, a backing name QEMU would refuse.
pub fn empty_image(size: u64, backing: Option<(&str, &str)>) -> Option<EmptyImage> {
    if size == 0 || size % 512 != 0 {
        return None;
    }
    let l1_entries = size.div_ceil(L1_SPAN);
    if l1_entries > MAX_L1_ENTRIES {
        return None;
    }
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    // Cluster 0 header, 1 refcount table, 2 refcount block, 3.. L1 table: the one
    // refcount block (16-bit counts) covers CLUSTER/2 clusters, far more than needed.
    let clusters = 3 + l1_clusters;
    let mut head = Vec::with_capacity(512);
    let (fmt, name) = match backing {
        Some((name, fmt)) => {
            if name.is_empty()
                || name.len() > MAX_BACKING_NAME
                || name.contains('\0')
                || fmt.is_empty()
                || fmt.len() > 16
            {
                return None;
            }
            (Some(fmt), Some(name))
        }
        None => (None, None),
    };
    let push32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_be_bytes());
    let push64 = |v: &mut Vec<u8>, x: u64| v.extend_from_slice(&x.to_be_bytes());
    // Extensions follow the header; the backing name follows the extensions.
    let ext_len = fmt.map_or(0, |f| 8 + f.len().div_ceil(8) * 8) + 8;
    let name_off = (HEADER_V3_LEN + ext_len) as u64;
    head.extend_from_slice(MAGIC);
    push32(&mut head, 3);
    push64(&mut head, if name.is_some() { name_off } else { 0 });
    push32(&mut head, name.map_or(0, |n| n.len() as u32));
    push32(&mut head, CLUSTER_BITS);
    push64(&mut head, size);
    push32(&mut head, 0); // no encryption
    push32(&mut head, l1_entries as u32);
    push64(&mut head, 3 * CLUSTER); // L1 table
    push64(&mut head, CLUSTER); // refcount table
    push32(&mut head, 1); // refcount table clusters
    push32(&mut head, 0); // snapshots
    push64(&mut head, 0);
    push64(&mut head, 0); // incompatible features: none (clean, not corrupt)
    push64(&mut head, 0); // compatible features: no lazy refcounts
    push64(&mut head, 0); // autoclear features
    push32(&mut head, 4); // refcount order: 16-bit counts
    push32(&mut head, HEADER_V3_LEN as u32);
    if let Some(f) = fmt {
        push32(&mut head, EXT_BACKING_FORMAT);
        push32(&mut head, f.len() as u32);
        head.extend_from_slice(f.as_bytes());
        head.resize(head.len().div_ceil(8) * 8, 0);
    }
    push64(&mut head, 0); // end of extensions
    if let Some(n) = name {
        head.extend_from_slice(n.as_bytes());
    }
    let mut img = vec![0u8; 3 * CLUSTER as usize];
    img[..head.len()].copy_from_slice(&head);
    let rt = CLUSTER as usize;
    img[rt..rt + 8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    let rb = 2 * CLUSTER as usize;
    for c in 0..clusters as usize {
        img[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Some(EmptyImage {
        meta: img,
        len: clusters * CLUSTER,
    })
}

/// An empty image: its first three clusters, and its length, whose rest is the L1
/// table, all zeros (nothing allocated yet), so it is left a hole.
#[derive(Debug)]
pub struct EmptyImage {
    meta: Vec<u8>,
    len: u64,
}

/// Writes `image` into the new, empty file `file`.
pub fn write_empty(file: &File, image: &EmptyImage) -> std::io::Result<()> {
    file.write_all_at(&image.meta, 0)?;
    file.set_len(image.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let ok = Command::new("qemu-img")
            .args(args)
            .status()
            .expect("qemu-img")
            .success();
        assert!(ok, "qemu-img {args:?}");
    }

    /// The same answers as `qemu-img info` for v3 and v2 images, with and without a
    /// backing file and its format.
    #[test]
    fn agrees_with_qemu_img_info() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| d.path().join(n).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "raw", &p("base.raw"), "10M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &p("plain.qcow2"), "3G"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            &p("v2.qcow2"),
            "5M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &p("base.raw"),
            &p("top.qcow2"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &p("top.qcow2"),
            &p("top2.qcow2"),
            "20M",
        ]);
        for n in ["plain.qcow2", "v2.qcow2", "top.qcow2", "top2.qcow2"] {
            let path = d.path().join(n);
            let mine = read_header(&File::open(&path).expect("open")).expect(n);
            let theirs = crate::qemu_img::info(&path).expect("info");
            assert_eq!(mine.virtual_size, theirs.virtual_size, "{n}");
            assert_eq!(mine.backing_file, theirs.backing_filename, "{n}");
            assert_eq!(mine.backing_format, theirs.backing_format, "{n}");
        }
    }

    /// Images this module writes pass `qemu-img check` and read back through
    /// `qemu-img info` with the size, backing file and format asked for; qemu-io can
    /// write into them and read the data back.
    #[test]
    fn written_images_pass_qemu_img_check() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| d.path().join(n);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "raw",
            &p("base.raw").to_string_lossy(),
            "10M",
        ]);
        let base = p("base.raw").to_string_lossy().into_owned();
        type Case<'a> = (&'a str, u64, Option<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            ("small.qcow2", 1 << 20, None),
            ("odd.qcow2", 3 * 512, None),
            ("g.qcow2", 1 << 30, None),
            ("t.qcow2", 5 << 40, None),
            ("top.qcow2", 10 << 20, Some((base.as_str(), "raw"))),
        ];
        for (n, size, backing) in cases {
            let img = empty_image(size, backing).expect(n);
            let f = File::create(p(n)).expect("create");
            write_empty(&f, &img).expect("write");
            drop(f);
            let out = Command::new("qemu-img")
                .args(["check", "-q", "-f", "qcow2"])
                .arg(p(n))
                .output()
                .expect("qemu-img check");
            assert!(
                out.status.success(),
                "{n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let info = crate::qemu_img::info(&p(n)).expect("info");
            assert_eq!(info.format, "qcow2", "{n}");
            assert_eq!(info.virtual_size, size, "{n}");
            assert_eq!(
                info.backing_filename.as_deref(),
                backing.map(|b| b.0),
                "{n}"
            );
            assert_eq!(info.backing_format.as_deref(), backing.map(|b| b.1), "{n}");
            let mine = read_header(&File::open(p(n)).expect("open")).expect(n);
            assert_eq!(mine.virtual_size, size, "{n}");
        }
        // The image takes data: write a pattern, read it back, check again.
        let t = p("g.qcow2");
        let io = |cmd: &str| {
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", cmd])
                .arg(&t)
                .output()
                .expect("qemu-io")
        };
        assert!(io("write -P 0xab 100M 1M").status.success());
        let out = io("read -P 0xab 100M 1M");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
        qemu_img(&["check", "-q", "-f", "qcow2", &t.to_string_lossy()]);
        // What this writer does not make is left to qemu-img.
        assert!(empty_image(0, None).is_none());
        assert!(empty_image(1000, None).is_none());
        assert!(empty_image(1 << 20, Some(("a\0b", "raw"))).is_none());
        assert!(empty_image(1 << 20, Some((&"x".repeat(1024), "raw"))).is_none());
    }

    #[test]
    fn hostile_headers_are_not_trusted() {
        let mut b = vec![0u8; 200];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        // header_length pointing past the buffer
        b[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&b), None);
        // backing file offset past the end
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..20].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(parse(&b), None);
        // an extension longer than the buffer
        b[8..16].copy_from_slice(&0u64.to_be_bytes());
        b[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&b), None);
        assert_eq!(parse(b"QFI"), None);
        assert_eq!(parse(&[0u8; 100]), None);
    }
}
