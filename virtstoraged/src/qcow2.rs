//! Reads the few fields of a qcow2 header the pool needs (virtual size, backing file
//! and its format) straight from the file, as QEMU's docs/interop/qcow2.txt lays them
//! out, so listing a pool of qcow2 volumes starts no process per volume. Anything
//! unexpected answers `None` and the caller asks `qemu-img info` instead.

use std::fs::File;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_END: u32 = 0;
/// Header and extensions live in the first cluster; 64 KiB covers the default one.
const READ: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The header of a qcow2 image, or `None` when this reader cannot vouch for it.
pub fn read_header(file: &File) -> Option<Header> {
    let mut buf = vec![0u8; READ];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    parse(&buf[..got])
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
    })
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
