//! Moving bytes between a volume and a file, pipe or socket, for every backend: sparse
//! chunked copies, in-kernel extent copies and `sendfile`, and the Upload/Download
//! streams built from them. Nothing here knows a pool type.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::OFlag;

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
/// the kernel cannot copy between these files (nothing was written then). `progress`
/// sees the running total and stops the copy by returning an error.
pub fn copy_extents(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    progress: &mut dyn FnMut(u64) -> std::io::Result<()>,
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
            progress(pos - src_off)?;
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
            progress(off_in as u64 - src_off)?;
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
/// (`sendfile`). Returns the bytes sent, or `Ok(None)` when the kernel cannot. A
/// non-blocking `dst` that is full is waited for through `cancel`, so a client that
/// stops reading never keeps the transfer from being stopped.
pub fn send_file(
    src: &File,
    offset: u64,
    dst: &File,
    limit: u64,
    cancel: &Cancel,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<u64>> {
    let mut off = offset as libc::off_t;
    let mut done = 0u64;
    while done < limit {
        cancel.check()?;
        let want = (limit - done).min(64 << 20) as usize;
        // SAFETY: both descriptors stay open for the call; the offset is ours.
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    cancel.wait(dst, libc::POLLOUT)?;
                    continue;
                }
                _ => {}
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

/// What a cancelled copy fails with (inside an `io::Error`, see [`is_cancelled`]).
#[derive(Debug, thiserror::Error)]
#[error("transfer cancelled")]
pub struct Cancelled;

/// Whether a copy failed because its transfer was cancelled.
pub fn is_cancelled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Cancelled>())
}

/// Stops a running transfer from another thread. Copies that never wait on the client
/// read the flag between pieces; a wait for the client's fd polls the wake-up pipe
/// too, so a stalled client never delays the stop.
pub struct Cancel {
    flag: AtomicBool,
    wake_r: OwnedFd,
    wake_w: OwnedFd,
}

impl Cancel {
    pub fn new() -> std::io::Result<Cancel> {
        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Cancel {
            flag: AtomicBool::new(false),
            wake_r,
            wake_w,
        })
    }

    pub fn cancel(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            // One byte is enough: the pipe stays readable, every later poll wakes.
            let _ = nix::unistd::write(&self.wake_w, &[1]);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn check(&self) -> std::io::Result<()> {
        if self.is_cancelled() {
            Err(std::io::Error::other(Cancelled))
        } else {
            Ok(())
        }
    }

    /// Waits until `f` is ready for `events` (POLLIN or POLLOUT; a hang-up or an error
    /// counts as ready, the next read or write reports it) or the transfer is cancelled.
    fn wait(&self, f: &File, events: libc::c_short) -> std::io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: f.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is ours and two entries long; both descriptors stay open.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.check()
    }
}

/// The client's end of a transfer. Its fd is made non-blocking, and a read or write
/// that would wait polls it together with [`Cancel`]'s pipe.
struct Paced<'a> {
    f: &'a File,
    cancel: &'a Cancel,
}

impl<'a> Paced<'a> {
    fn new(f: &'a File, cancel: &'a Cancel) -> std::io::Result<Paced<'a>> {
        use nix::fcntl::{fcntl, FcntlArg};
        if !f.metadata()?.is_file() {
            let fl = OFlag::from_bits_retain(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
            fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
        }
        Ok(Paced { f, cancel })
    }
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.cancel.check()?;
            match (&*self.f).read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.cancel.wait(self.f, libc::POLLIN)?
                }
                r => return r,
            }
        }
    }
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            self.cancel.check()?;
            match (&*self.f).write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.cancel.wait(self.f, libc::POLLOUT)?
                }
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// Refuses a client fd that cannot be read (`write` false) or written (`write` true):
/// opened the other way round, or a directory. Checked before anything is touched, so
/// such an fd never passes for an empty transfer.
fn check_client_fd(f: &File, meta: &std::fs::Metadata, write: bool) -> Result<(), BackendError> {
    use nix::fcntl::{fcntl, FcntlArg};
    let way = if write { "writing" } else { "reading" };
    if meta.is_dir() {
        return Err(BackendError::InvalidArg(format!(
            "the file descriptor for {way} is a directory"
        )));
    }
    let fl = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| BackendError::InvalidArg(format!("unusable file descriptor: {e}")))?;
    let mode = OFlag::from_bits_retain(fl) & OFlag::O_ACCMODE;
    let wrong = if write {
        OFlag::O_RDONLY
    } else {
        OFlag::O_WRONLY
    };
    if mode == wrong {
        return Err(BackendError::InvalidArg(format!(
            "the file descriptor is not open for {way}"
        )));
    }
    Ok(())
}

/// The range a transfer covers: `length` bytes (0: all the volume has, from `offset`),
/// never past the end of the volume.
fn limit_of(size: u64, offset: u64, length: u64) -> Result<u64, BackendError> {
    if offset > size {
        return Err(BackendError::Invalid(format!(
            "offset {offset} is past the end of the volume ({size})"
        )));
    }
    let room = size - offset;
    Ok(if length == 0 { room } else { length.min(room) })
}

fn vol_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An upload read completely into a copy of the volume and synced, not yet in place.
/// Dropped without [`Staged::commit`], it leaves nothing behind.
pub struct Staged {
    how: StagedKind,
}

enum StagedKind {
    /// A new file in the volume's folder (`.upload-<random>.part`, which refresh
    /// removes after a crash), renamed over the volume.
    Replace {
        tmp: PathBuf,
        target: PathBuf,
    },
    /// An unnamed scratch file (`O_TMPFILE`) holding the uploaded range, copied into
    /// the device: a device cannot be renamed over.
    Device {
        scratch: File,
        device: PathBuf,
        offset: u64,
        len: u64,
    },
    Done,
}

impl Staged {
    /// Puts the upload in place: short (a rename and a folder sync) for a file; for a
    /// device, a copy of the uploaded range that `cancel` still stops between chunks.
    pub fn commit(mut self, cancel: &Cancel) -> Result<(), BackendError> {
        match std::mem::replace(&mut self.how, StagedKind::Done) {
            StagedKind::Replace { tmp, target } => {
                // The folder's sync makes the rename itself durable.
                let dir = target.parent().unwrap_or(Path::new("/"));
                let res = std::fs::rename(&tmp, &target)
                    .and_then(|()| File::open(dir).and_then(|d| d.sync_all()));
                if res.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                res.map_err(|e| BackendError::io("cannot replace", &target, e))
            }
            StagedKind::Device {
                scratch,
                device,
                offset,
                len,
            } => {
                let io = |e: std::io::Error| cancel_or(e, "cannot upload into", &device);
                let dev = open_vol(&device, true).map_err(io)?;
                let mut src = Paced::new(&scratch, cancel).map_err(io)?;
                (&scratch).seek(SeekFrom::Start(0)).map_err(io)?;
                copy_sparse(&mut src, &dev, offset, Some(len), &mut |_| {}).map_err(io)?;
                dev.sync_data().map_err(io)
            }
            StagedKind::Done => Ok(()),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let StagedKind::Replace { tmp, .. } = &self.how {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn cancel_or(e: std::io::Error, what: &'static str, path: &Path) -> BackendError {
    if is_cancelled(&e) {
        BackendError::Cancelled
    } else {
        BackendError::io(what, path, e)
    }
}

/// Reads the client's bytes into `dst` at `offset`: a regular file inside the kernel,
/// extent by extent; a pipe or socket in chunks, with zero chunks left as holes.
fn receive(
    src: &File,
    src_is_file: bool,
    dst: &File,
    offset: u64,
    limit: u64,
    cancel: &Cancel,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    if src_is_file {
        let start = (&*src).stream_position()?;
        let mut step = |n| {
            progress(n);
            cancel.check()
        };
        if let Some(n) = copy_extents(src, start, dst, offset, limit, &mut step)? {
            return Ok(n);
        }
        // SEEK_DATA/SEEK_HOLE moved the file's position: the copy through user space
        // starts where the client's bytes do (between two filesystems the kernel
        // cannot copy, and the upload read nothing before this).
        (&*src).seek(SeekFrom::Start(start))?;
    } else {
        widen_pipe(src);
    }
    copy_sparse(
        &mut Paced::new(src, cancel)?,
        dst,
        offset,
        Some(limit),
        progress,
    )
}

/// Copies `len` bytes of the old volume at `at` into the staged copy at the same place
/// (in the kernel where it can: a reflink on XFS or btrfs).
fn keep_old(old: &File, new: &File, at: u64, len: u64, cancel: &Cancel) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut step = |_| cancel.check();
    if copy_extents(old, at, new, at, len, &mut step)?.is_none() {
        (&*old).seek(SeekFrom::Start(at))?;
        copy_sparse(
            &mut Paced::new(old, cancel)?,
            new,
            at,
            Some(len),
            &mut |_| {},
        )?;
    }
    Ok(())
}

/// The first half of an Upload: reads up to `length` bytes (0: until the client's EOF,
/// at most what the volume holds) from `src` into a copy of the volume, at `offset`.
/// The volume itself is not touched: a client that sends less than it announced, an
/// fd that cannot be read, an error or a cancel leave it as it was. Blocking, and as
/// slow as the client: run it on a blocking thread without any lock.
#[allow(clippy::too_many_arguments)]
pub fn stage_upload(
    path: &Path,
    capacity: u64,
    src: OwnedFd,
    offset: u64,
    length: u64,
    scratch_dir: &Path,
    cancel: &Cancel,
    progress: &mut dyn FnMut(u64),
) -> Result<Staged, BackendError> {
    let io = |e: std::io::Error| cancel_or(e, "cannot upload into", path);
    let vol = open_vol(path, false).map_err(io)?;
    let meta = vol.metadata().map_err(io)?;
    let limit = limit_of(meta.len().max(capacity), offset, length)?;
    let src = File::from(src);
    let src_meta = src.metadata().map_err(io)?;
    check_client_fd(&src, &src_meta, false)?;
    let (staged, dst, start) = if meta.is_file() {
        let target = path.to_path_buf();
        let dir = path.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".upload-{}.part", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        let staged = Staged {
            how: StagedKind::Replace { tmp, target },
        };
        // The copy replaces the volume, so it takes over its owner and mode.
        if (meta.uid(), meta.gid())
            != (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())).map_err(io)?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io)?;
        file.set_len(meta.len()).map_err(io)?;
        (staged, file, offset)
    } else {
        common::persist::create_dir_all(scratch_dir, 0o700).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(scratch_dir)
            .map_err(|e| BackendError::io("cannot make a scratch file in", scratch_dir, e))?;
        let staged = Staged {
            how: StagedKind::Device {
                scratch: file.try_clone().map_err(io)?,
                device: path.to_path_buf(),
                offset,
                len: 0,
            },
        };
        (staged, file, 0)
    };
    let mut staged = staged;
    let got = receive(
        &src,
        src_meta.is_file(),
        &dst,
        start,
        limit,
        cancel,
        progress,
    )
    .map_err(io)?;
    if length > 0 && got < limit {
        return Err(BackendError::Failed(format!(
            "the upload into '{}' ended after {got} of {limit} bytes; the volume is unchanged",
            vol_name(path)
        )));
    }
    match &mut staged.how {
        StagedKind::Replace { .. } => {
            // What the upload does not cover keeps the volume's bytes.
            keep_old(&vol, &dst, 0, offset, cancel).map_err(io)?;
            let end = offset + got;
            keep_old(&vol, &dst, end, meta.len().saturating_sub(end), cancel).map_err(io)?;
            dst.sync_all().map_err(io)?;
        }
        StagedKind::Device { len, .. } => *len = got,
        StagedKind::Done => {}
    }
    Ok(staged)
}

/// One Download: the volume from `offset`, `length` bytes (0: to the end), into `dst`.
/// Blocking, and as slow as the client: run it on a blocking thread without any lock.
pub fn download(
    path: &Path,
    capacity: u64,
    dst: OwnedFd,
    offset: u64,
    length: u64,
    cancel: &Cancel,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BackendError> {
    let io = |e: std::io::Error| cancel_or(e, "cannot download from", path);
    let file = open_vol(path, false).map_err(io)?;
    let limit = limit_of(
        file.metadata().map_err(io)?.len().max(capacity),
        offset,
        length,
    )?;
    let other = File::from(dst);
    let meta = other.metadata().map_err(io)?;
    check_client_fd(&other, &meta, true)?;
    download_from(
        &file,
        &other,
        meta.is_file(),
        offset,
        limit,
        cancel,
        progress,
    )
    .map_err(io)
}

fn download_from(
    file: &File,
    other: &File,
    other_is_file: bool,
    offset: u64,
    limit: u64,
    cancel: &Cancel,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    if other_is_file {
        let start = (&*other).stream_position()?;
        let mut step = |n| {
            progress(n);
            cancel.check()
        };
        if copy_extents(file, offset, other, start, limit, &mut step)?.is_none() {
            let mut src = file;
            src.seek(SeekFrom::Start(offset))?;
            copy_sparse(
                &mut Paced::new(src, cancel)?,
                other,
                start,
                Some(limit),
                progress,
            )?;
        }
    } else {
        widen_pipe(other);
        let mut out = Paced::new(other, cancel)?;
        if send_file(file, offset, other, limit, cancel, progress)?.is_none() {
            let mut src = file;
            src.seek(SeekFrom::Start(offset))?;
            copy_plain(&mut src, &mut out, limit, progress)?;
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
        let n = copy_extents(&src, 0, &dst, 0, 4 * block, &mut |d| {
            seen = d;
            Ok(())
        })
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
            copy_extents(&src, 0, &dst, 0, 3 * block as u64, &mut |_| Ok(()))
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
            &Cancel::new().unwrap(),
            &mut |_| {},
        )
        .unwrap()
        .expect("sendfile to a pipe");
        drop(w);
        assert_eq!(n, 2 * CHUNK as u64);
        assert_eq!(reader.join().unwrap(), &data[5..5 + 2 * CHUNK]);
    }
}
