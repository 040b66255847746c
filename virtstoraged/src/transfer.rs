//! Moving bytes between a volume and a file, pipe or socket, for every backend: sparse
//! chunked copies, in-kernel extent copies and `sendfile`, and the Upload/Download
//! streams built from them. Nothing here knows a pool type.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::backend::BackendError;

/// Copy chunk: big enough for throughput, small enough to never hold a volume in memory.
pub const CHUNK: usize = 1 << 20;

pub fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(std::io::Error::from)
}

/// Copies up to `limit` bytes from `src` into `dst` at `offset`, in chunks, keeping holes:
/// a chunk of zeros is punched (inside the old file) or skipped (past its end) rather than
/// written. Returns the number of bytes copied; `progress` sees the running total.
pub fn copy_sparse(
    src: &mut dyn Read,
    dst: &File,
    offset: u64,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let meta = dst.metadata()?;
    // A block device (an LV) has no holes to keep: its zeros are written.
    let dst_is_file = meta.is_file();
    let old_len = meta.len();
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    let mut out = dst;
    loop {
        let want = match limit {
            Some(l) if l - done < CHUNK as u64 => (l - done) as usize,
            _ => CHUNK,
        };
        if want == 0 {
            break;
        }
        // Fill the chunk fully (pipes deliver short reads) so zero detection sees blocks.
        let mut got = 0;
        while got < want {
            match src.read(&mut buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            break;
        }
        let pos = offset + done;
        if dst_is_file && buf[..got].iter().all(|b| *b == 0) {
            if pos < old_len {
                punch_hole(dst, pos, got as u64)?;
            }
        } else {
            out.seek(SeekFrom::Start(pos))?;
            out.write_all(&buf[..got])?;
        }
        done += got as u64;
        progress(done);
        if got < want {
            break;
        }
    }
    let end = offset + done;
    if dst_is_file && dst.metadata()?.len() < end {
        dst.set_len(end)?;
    }
    Ok(done)
}

/// The next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) offset at or after `pos`; `None`
/// when there is no more data.
fn seek_extent(f: &File, pos: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek only reads the descriptor, which `f` keeps open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Whether an in-kernel copy failed only because the kernel cannot do it for these
/// files (the caller then copies through user space).
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Copies up to `len` bytes of the regular file `src` from `src_off` into `dst` at
/// `dst_off` inside the kernel (`copy_file_range`), extent by extent: holes of `src`
/// (`SEEK_DATA`/`SEEK_HOLE`) are skipped, or punched where `dst` had data, so the
/// copy stays as sparse as its source. Returns the bytes covered, or `Ok(None)` when
/// the kernel cannot copy between these files (nothing was written then).
pub fn copy_extents(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<u64>> {
    let (src_meta, dst_meta) = (src.metadata()?, dst.metadata()?);
    // Block devices (LVs) have no extents to seek and no length in their metadata.
    if !src_meta.is_file() || !dst_meta.is_file() {
        return Ok(None);
    }
    let end = src_off.saturating_add(len).min(src_meta.len());
    let old_len = dst_meta.len();
    let out = |p: u64| dst_off + (p - src_off);
    let mut pos = src_off;
    let mut wrote = false;
    while pos < end {
        let data = seek_extent(src, pos, libc::SEEK_DATA)?
            .unwrap_or(end)
            .min(end);
        if data > pos {
            let hole_at = out(pos);
            if hole_at < old_len {
                punch_hole(dst, hole_at, (data - pos).min(old_len - hole_at))?;
            }
            pos = data;
            progress(pos - src_off);
            continue;
        }
        let hole = seek_extent(src, pos, libc::SEEK_HOLE)?
            .unwrap_or(end)
            .min(end);
        let (mut off_in, mut off_out) = (pos as libc::loff_t, out(pos) as libc::loff_t);
        while (off_in as u64) < hole {
            // Pieces of 64 MiB keep the progress counter moving.
            let want = (hole - off_in as u64).min(64 << 20) as usize;
            // SAFETY: both descriptors stay open for the call; the offsets are ours.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if !wrote && unsupported(&e) {
                    return Ok(None);
                }
                return Err(e);
            }
            if n == 0 {
                // The source shrank under us: stop at what it has.
                return finish(dst, out(off_in as u64), off_in as u64 - src_off);
            }
            wrote = true;
            progress(off_in as u64 - src_off);
        }
        pos = hole;
    }
    finish(dst, out(end), end.saturating_sub(src_off))
}

fn finish(dst: &File, end: u64, done: u64) -> std::io::Result<Option<u64>> {
    if dst.metadata()?.len() < end {
        dst.set_len(end)?;
    }
    Ok(Some(done))
}

/// Sends `limit` bytes of `src` from `offset` into a pipe or socket inside the kernel
/// (`sendfile`). Returns the bytes sent, or `Ok(None)` when the kernel cannot.
pub fn send_file(
    src: &File,
    offset: u64,
    dst: &File,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<u64>> {
    let mut off = offset as libc::off_t;
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(64 << 20) as usize;
        // SAFETY: both descriptors stay open for the call; the offset is ours.
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if done == 0 && unsupported(&e) {
                return Ok(None);
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
        progress(done);
    }
    Ok(Some(done))
}

/// Asks for a pipe buffer of one chunk, so a reader gets whole chunks per read instead
/// of the default 64 KiB; not a pipe, or the system limit is lower: left as it is.
pub fn widen_pipe(f: &File) {
    use std::os::unix::fs::FileTypeExt;
    if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        // SAFETY: F_SETPIPE_SZ only changes the pipe's buffer; the fd stays open.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    }
}

/// Copies `limit` bytes in chunks to a stream (a pipe or socket) that cannot hold holes.
pub fn copy_plain(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(CHUNK as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        done += n as u64;
        progress(done);
    }
    Ok(done)
}

/// Opens a volume file without following a symlink.
pub fn open_vol(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// One Upload (`upload`: `other` into the volume) or Download (the volume into
/// `other`) of up to `length` bytes (0: to the end) at `offset`. Blocking: run it on a
/// blocking thread. `progress` sees the running total.
pub fn stream(
    path: &Path,
    capacity: u64,
    other: OwnedFd,
    offset: u64,
    length: u64,
    upload: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BackendError> {
    let io = |e| {
        let what = if upload {
            "cannot upload into"
        } else {
            "cannot download from"
        };
        BackendError::io(what, path, e)
    };
    let file = open_vol(path, upload).map_err(io)?;
    let size = file.metadata().map_err(io)?.len().max(capacity);
    if offset > size {
        return Err(BackendError::Invalid(format!(
            "offset {offset} is past the end of the volume ({size})"
        )));
    }
    let room = size - offset;
    let limit = if length == 0 { room } else { length.min(room) };
    let other = File::from(other);
    let other_is_file = other.metadata().map(|m| m.is_file()).unwrap_or(false);
    if upload {
        upload_into(&file, &other, other_is_file, offset, limit, progress).map_err(io)?;
        // The upload is answered only once the data is on the disk: a caller that is
        // told "done" may delete its source (the cost is in docs/virtstoraged.md).
        file.sync_data().map_err(io)?;
    } else {
        download_from(&file, &other, other_is_file, offset, limit, progress).map_err(io)?;
    }
    Ok(())
}

fn upload_into(
    file: &File,
    other: &File,
    other_is_file: bool,
    offset: u64,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    // A regular file is copied inside the kernel, extent by extent; a pipe or socket
    // is read in chunks with zero chunks punched, not written.
    if other_is_file {
        let start = (&*other).stream_position()?;
        if copy_extents(other, start, file, offset, limit, progress)?.is_none() {
            copy_sparse(&mut &*other, file, offset, Some(limit), progress)?;
        }
    } else {
        widen_pipe(other);
        copy_sparse(&mut &*other, file, offset, Some(limit), progress)?;
    }
    Ok(())
}

fn download_from(
    file: &File,
    other: &File,
    other_is_file: bool,
    offset: u64,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    if other_is_file {
        let start = (&*other).stream_position()?;
        if copy_extents(file, offset, other, start, limit, progress)?.is_none() {
            let mut src = file;
            src.seek(SeekFrom::Start(offset))?;
            copy_sparse(&mut src, other, start, Some(limit), progress)?;
        }
    } else {
        widen_pipe(other);
        if send_file(file, offset, other, limit, progress)?.is_none() {
            let mut src = file;
            src.seek(SeekFrom::Start(offset))?;
            copy_plain(&mut src, &mut &*other, limit, progress)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn sparse_copy_punches_and_skips() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, vec![7u8; 3 * CHUNK]).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut src = vec![0u8; 2 * CHUNK];
        src[CHUNK + 3] = 1;
        let mut seen = 0;
        let n = copy_sparse(&mut &src[..], &f, 0, None, &mut |d| seen = d).unwrap();
        assert_eq!(n, 2 * CHUNK as u64);
        assert_eq!(seen, n);
        let back = fs::read(&p).unwrap();
        assert_eq!(&back[..2 * CHUNK], &src[..]);
        assert!(back[2 * CHUNK..].iter().all(|b| *b == 7));
    }

    /// data | hole | data in the source over a destination full of 7s: the hole is
    /// punched, the data copied in the kernel, the tail past the copy kept.
    #[test]
    fn extent_copy_keeps_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let (sp, dp) = (tmp.path().join("src"), tmp.path().join("dst"));
        let src = File::create(&sp).unwrap();
        let block = 1 << 20;
        src.set_len(4 * block).unwrap();
        (&src).write_all(&vec![1u8; block as usize]).unwrap();
        (&src).seek(SeekFrom::Start(3 * block)).unwrap();
        (&src).write_all(&vec![2u8; block as usize]).unwrap();
        src.sync_all().unwrap();
        fs::write(&dp, vec![7u8; 5 * block as usize]).unwrap();
        let dst = OpenOptions::new().read(true).write(true).open(&dp).unwrap();
        let src = File::open(&sp).unwrap();
        let mut seen = 0;
        let n = copy_extents(&src, 0, &dst, 0, 4 * block, &mut |d| seen = d)
            .unwrap()
            .expect("copy_file_range works on one filesystem");
        assert_eq!((n, seen), (4 * block, 4 * block));
        let back = fs::read(&dp).unwrap();
        let b = block as usize;
        assert!(back[..b].iter().all(|x| *x == 1));
        assert!(back[b..3 * b].iter().all(|x| *x == 0));
        assert!(back[3 * b..4 * b].iter().all(|x| *x == 2));
        assert!(back[4 * b..].iter().all(|x| *x == 7));
        // 3 MiB of data left allocated, not 5.
        let blocks = dst.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 3 * block + 64 * 1024, "allocated {blocks}");
    }

    /// A block device (what an LV is) gets its zeros written, not skipped, and no
    /// in-kernel extent copy: tried on a loop device over a file of 7s.
    #[test]
    fn block_devices_get_zeros_written() {
        struct Loop(String);
        impl Drop for Loop {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        let block = 1usize << 20;
        fs::write(&img, vec![7u8; 4 * block]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev.0)
            .unwrap();
        let sp = tmp.path().join("src");
        let mut data = vec![0u8; 3 * block];
        data[block..2 * block].fill(1);
        fs::write(&sp, &data).unwrap();
        let src = File::open(&sp).unwrap();
        assert!(
            copy_extents(&src, 0, &dst, 0, 3 * block as u64, &mut |_| {})
                .unwrap()
                .is_none()
        );
        let n = copy_sparse(&mut &src, &dst, 0, Some(3 * block as u64), &mut |_| {}).unwrap();
        assert_eq!(n, 3 * block as u64);
        let mut back = vec![0u8; 4 * block];
        dst.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..block].iter().all(|x| *x == 0));
        assert!(back[block..2 * block].iter().all(|x| *x == 1));
        assert!(back[2 * block..3 * block].iter().all(|x| *x == 0));
        assert!(back[3 * block..].iter().all(|x| *x == 7));
    }

    #[test]
    fn send_file_feeds_a_pipe() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("v");
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8).collect();
        fs::write(&p, &data).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        let w = File::from(w);
        let n = send_file(
            &File::open(&p).unwrap(),
            5,
            &w,
            2 * CHUNK as u64,
            &mut |_| {},
        )
        .unwrap()
        .expect("sendfile to a pipe");
        drop(w);
        assert_eq!(n, 2 * CHUNK as u64);
        assert_eq!(reader.join().unwrap(), &data[5..5 + 2 * CHUNK]);
    }
}
