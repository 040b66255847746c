//! A write-ahead journal that makes small config writes durable for the price of one
//! `fdatasync` of an already allocated file, instead of `write_atomic`'s fsync of a new
//! file plus its folder. Many writes waiting at once share one sync (group commit).
//!
//! Each [`Journal::put`] or [`Journal::remove`] is appended as a checksummed record,
//! synced, and acknowledged: from then on it survives a crash. The record is applied
//! to its real file in the folder (temp file + rename, so readers never see half a
//! file) later, when the writer has nothing else to do, and at the latest at the next
//! checkpoint; only the newest record of a file is applied. Creating a file costs far
//! more than the journal's sync on some filesystems (ext4 without a journal scans for
//! recently freed inodes), so keeping it off the caller's path halves a definition's
//! time. The real files are synced in bulk (`syncfs`) at a checkpoint — when the
//! journal is full, after a second of quiet and at shutdown — after which the
//! journal's generation is bumped and its records no longer count. [`Journal::open`]
//! replays the records of the current generation, so a crash between a record's sync
//! and the checkpoint loses nothing; a torn last record fails its checksum and is
//! ignored (its caller never got an answer). So the folder's files are current after
//! [`Journal::open`] and [`Journal::checkpoint`], which is when a daemon reads them.
//!
//! Layout: a 4 KiB header (`magic`, `generation`), then records
//! `[magic u32][generation u64][op u8][mode u32][name_len u16][data_len u32][fnv64 u64]
//! name data`, all little endian. The file is filled with zeros once so that later
//! writes only overwrite allocated blocks (no metadata to journal in the filesystem).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const FILE: &str = ".journal";
const HEADER_MAGIC: &[u8; 8] = b"VIRTJRNL";
const RECORD_MAGIC: u32 = 0x4a52_4543;
const HEADER_LEN: u64 = 4096;
const RECORD_HEAD: usize = 4 + 8 + 1 + 4 + 2 + 4 + 8;
/// Big enough for hundreds of domain definitions between checkpoints, small enough
/// to create in a few milliseconds.
const DEFAULT_SIZE: u64 = 2 << 20;
const QUIET: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put = 1,
    Remove = 2,
}

struct Record {
    op: Op,
    mode: u32,
    name: String,
    data: Vec<u8>,
}

enum Msg {
    Write(Record, tokio::sync::oneshot::Sender<io::Result<()>>),
    Checkpoint(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Durable, atomic writes of whole files in one folder. Cheap to share (`Arc`).
pub struct Journal {
    dir: PathBuf,
    tx: std::sync::Mutex<mpsc::Sender<Msg>>,
}

impl Journal {
    /// Opens the journal of `dir`, applies what a crash left in it, and starts the
    /// writer thread. Call before reading the folder's files.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        Self::open_sized(dir, DEFAULT_SIZE)
    }

    fn open_sized(dir: &Path, size: u64) -> io::Result<Journal> {
        let mut w = Writer::open(dir, size.max(HEADER_LEN * 2))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || w.run(rx))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Makes `data` the content of `dir/name` (mode `mode` when created); returns once
    /// that is durable. `name` must be a plain file name.
    pub async fn put(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.send(Record {
            op: Op::Put,
            mode,
            name: checked_name(name)?.to_owned(),
            data: data.to_vec(),
        })
        .await
    }

    /// Removes `dir/name` durably; a file already gone is fine.
    pub async fn remove(&self, name: &str) -> io::Result<()> {
        self.send(Record {
            op: Op::Remove,
            mode: 0,
            name: checked_name(name)?.to_owned(),
            data: Vec::new(),
        })
        .await
    }

    /// Syncs every applied file and empties the journal (used at shutdown and by tests).
    pub async fn checkpoint(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.post(Msg::Checkpoint(tx))?;
        rx.await.map_err(|_| gone())?
    }

    /// The folder this journal writes into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn send(&self, rec: Record) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.post(Msg::Write(rec, tx))?;
        rx.await.map_err(|_| gone())?
    }

    fn post(&self, msg: Msg) -> io::Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(msg)
            .map_err(|_| gone())
    }
}

fn gone() -> io::Error {
    io::Error::other("journal writer has stopped")
}

fn checked_name(name: &str) -> io::Result<&str> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255;
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid journal file name '{name}'"),
        ));
    }
    Ok(name)
}

fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn encode(gen: u64, r: &Record, out: &mut Vec<u8>) {
    let (op, mode) = ([r.op as u8], r.mode.to_le_bytes());
    let sum = fnv64(&[&gen.to_le_bytes(), &op, &mode, r.name.as_bytes(), &r.data]);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    out.extend_from_slice(&op);
    out.extend_from_slice(&mode);
    out.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(r.name.as_bytes());
    out.extend_from_slice(&r.data);
}

/// Decodes the valid records of generation `gen` from `buf` (the part after the header).
/// Also says whether it stopped only because `buf` ended (more may follow in the file).
fn decode(gen: u64, buf: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let le64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
    let mut short = false;
    loop {
        if buf.len() - at < RECORD_HEAD {
            short = true;
            break;
        }
        let h = &buf[at..at + RECORD_HEAD];
        if le32(&h[0..4]) != RECORD_MAGIC || le64(&h[4..12]) != gen {
            break;
        }
        let op = match h[12] {
            1 => Op::Put,
            2 => Op::Remove,
            _ => break,
        };
        let mode = le32(&h[13..17]);
        let name_len = u16::from_le_bytes([h[17], h[18]]) as usize;
        let data_len = le32(&h[19..23]) as usize;
        let sum = le64(&h[23..31]);
        let body = at + RECORD_HEAD;
        let Some(end) = body
            .checked_add(name_len)
            .and_then(|e| e.checked_add(data_len))
        else {
            break;
        };
        if end > buf.len() {
            short = true;
            break;
        }
        let (name, data) = (&buf[body..body + name_len], &buf[body + name_len..end]);
        if fnv64(&[&gen.to_le_bytes(), &[h[12]], &h[13..17], name, data]) != sum {
            break;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            break;
        };
        if checked_name(name).is_err() {
            break;
        }
        out.push(Record {
            op,
            mode,
            name: name.to_owned(),
            data: data.to_vec(),
        });
        at = end;
    }
    (out, short)
}

/// The writer thread's state: the only code that touches the journal file.
struct Writer {
    dir: PathBuf,
    size: u64,
    file: Option<File>,
    gen: u64,
    offset: u64,
    /// Records logged since the last checkpoint (applied or not, not synced yet).
    dirty: bool,
    /// Logged records not applied yet, the newest per file.
    pending: BTreeMap<String, Record>,
    /// An idle-time apply failed: wait for the next message or checkpoint to retry.
    stalled: bool,
}

impl Writer {
    fn open(dir: &Path, size: u64) -> io::Result<Writer> {
        let mut w = Writer {
            dir: dir.to_path_buf(),
            size,
            file: None,
            gen: 0,
            offset: HEADER_LEN,
            dirty: false,
            pending: BTreeMap::new(),
            stalled: false,
        };
        let path = dir.join(FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(w),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        // Read as far as the current generation's records go, not the whole file: after
        // a clean shutdown that is the header alone.
        const STEP: u64 = 64 << 10;
        let mut buf = vec![0u8; len.min(HEADER_LEN + STEP) as usize];
        file.read_exact_at(&mut buf, 0)?;
        if len < HEADER_LEN || &buf[..8] != HEADER_MAGIC {
            // Not ours or cut short before its first sync: nothing in it was acknowledged.
            tracing::warn!("ignoring unreadable journal {}", path.display());
            fs::remove_file(&path)?;
            return Ok(w);
        }
        w.gen = u64::from_le_bytes(buf[8..16].try_into().unwrap_or([0; 8]));
        let records = loop {
            let (records, short) = decode(w.gen, &buf[HEADER_LEN as usize..]);
            let have = buf.len() as u64;
            if !short || have >= len {
                break records;
            }
            buf.resize((have + STEP).min(len) as usize, 0);
            file.read_exact_at(&mut buf[have as usize..], have)?;
        };
        w.file = Some(file);
        w.size = len;
        if !records.is_empty() {
            tracing::info!(
                "replaying {} journal records in {}",
                records.len(),
                dir.display()
            );
            for r in &records {
                w.apply(r)?;
            }
            w.dirty = true;
            w.checkpoint()?;
        }
        Ok(w)
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            if !self.pending.is_empty() && !self.stalled {
                // Idle: apply one pending record, then look for messages again, so a
                // caller waits at most for one file.
                match rx.try_recv() {
                    Ok(m) => {
                        self.stalled = false;
                        self.handle(m, &rx);
                    }
                    Err(mpsc::TryRecvError::Empty) => self.apply_one(),
                    Err(mpsc::TryRecvError::Disconnected) => {
                        let _ = self.checkpoint();
                        return;
                    }
                }
                continue;
            }
            let first = match rx.recv_timeout(QUIET) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.dirty {
                        if let Err(e) = self.checkpoint() {
                            tracing::warn!("journal checkpoint in {}: {e}", self.dir.display());
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint();
                    return;
                }
            };
            self.stalled = false;
            self.handle(first, &rx);
        }
    }

    /// Handles `first` and everything queued meanwhile, which shares its sync.
    fn handle(&mut self, first: Msg, rx: &mpsc::Receiver<Msg>) {
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let mut writes = Vec::new();
        for m in batch {
            match m {
                Msg::Write(r, tx) => writes.push((r, tx)),
                Msg::Checkpoint(tx) => {
                    let res = self.commit(&mut writes).and_then(|_| self.checkpoint());
                    let _ = tx.send(res);
                }
            }
        }
        let _ = self.commit(&mut writes);
    }

    /// Applies the pending record of one file (idle time).
    fn apply_one(&mut self) {
        let Some((name, rec)) = self.pending.pop_first() else {
            return;
        };
        if let Err(e) = self.apply(&rec) {
            tracing::warn!("cannot write {name} in {}: {e}", self.dir.display());
            self.pending.insert(name, rec);
            self.stalled = true;
        }
    }

    /// Makes `writes` durable and applied, answering each.
    fn commit(
        &mut self,
        writes: &mut Vec<(Record, tokio::sync::oneshot::Sender<io::Result<()>>)>,
    ) -> io::Result<()> {
        let (mut recs, txs): (Vec<Record>, Vec<_>) = writes.drain(..).unzip();
        let results = self.log(&mut recs);
        let failed = results.iter().any(|r| r.is_err());
        for (res, tx) in results.into_iter().zip(txs) {
            let _ = tx.send(res);
        }
        if failed {
            return Err(io::Error::other("a journal write failed"));
        }
        Ok(())
    }

    /// Journals `recs` in order, as few syncs as fit; one result per record. Synced
    /// records join `pending`, which a checkpoint applies before it retires them.
    fn log(&mut self, recs: &mut [Record]) -> Vec<io::Result<()>> {
        let room = self.size - HEADER_LEN;
        let len = |r: &Record| (RECORD_HEAD + r.name.len() + r.data.len()) as u64;
        let mut results = Vec::with_capacity(recs.len());
        // Creating the journal sets the generation the records are encoded with.
        if let Err(e) = self.file() {
            let msg = e.to_string();
            results.extend(recs.iter().map(|_| Err(io::Error::other(msg.clone()))));
            return results;
        }
        let mut i = 0;
        while i < recs.len() {
            if len(&recs[i]) > room {
                // Larger than the whole journal: straight to its file, synced; an older
                // pending record of that file must not overwrite it later.
                self.pending.remove(&recs[i].name);
                results.push(self.apply(&recs[i]).and_then(|_| self.sync_all()));
                i += 1;
                continue;
            }
            if self.offset + len(&recs[i]) > self.size {
                if let Err(e) = self.checkpoint() {
                    let msg = e.to_string();
                    results.extend(recs[i..].iter().map(|_| Err(io::Error::other(msg.clone()))));
                    return results;
                }
            }
            let start = i;
            let mut buf = Vec::new();
            while i < recs.len()
                && len(&recs[i]) <= room
                && self.offset + (buf.len() as u64) + len(&recs[i]) <= self.size
            {
                encode(self.gen, &recs[i], &mut buf);
                i += 1;
            }
            match self.append(&buf) {
                Ok(()) => {
                    for r in &mut recs[start..i] {
                        let rec = Record {
                            op: r.op,
                            mode: r.mode,
                            name: std::mem::take(&mut r.name),
                            data: std::mem::take(&mut r.data),
                        };
                        self.pending.insert(rec.name.clone(), rec);
                        results.push(Ok(()));
                    }
                    self.dirty = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    results.extend((start..i).map(|_| Err(io::Error::other(msg.clone()))));
                }
            }
        }
        results
    }

    /// Writes encoded records at the end of the journal and syncs them.
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let offset = self.offset;
        let f = self.file()?;
        f.write_all_at(buf, offset)?;
        f.sync_data()?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(self.create()?);
        }
        self.file.as_ref().ok_or_else(gone)
    }

    /// Creates the journal file filled with zeros, durably, with generation 1.
    fn create(&mut self) -> io::Result<File> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp{}", std::process::id()));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut head = vec![0u8; HEADER_LEN as usize];
        head[..8].copy_from_slice(HEADER_MAGIC);
        self.gen = self.gen.wrapping_add(1);
        head[8..16].copy_from_slice(&self.gen.to_le_bytes());
        f.write_all(&head)?;
        let zeros = vec![0u8; 64 << 10];
        let mut left = self.size - HEADER_LEN;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.offset = HEADER_LEN;
        Ok(f)
    }

    #[cfg(test)]
    fn gen_for_test(&mut self) -> u64 {
        let _ = self.file();
        self.gen
    }

    /// Applies one record to its file: atomically visible, durable only at checkpoint.
    fn apply(&self, r: &Record) -> io::Result<()> {
        let path = self.dir.join(&r.name);
        match r.op {
            Op::Put => {
                let tmp = self.dir.join(format!(".{}.jtmp", r.name));
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(r.mode)
                    .open(&tmp)?;
                f.write_all(&r.data)?;
                drop(f);
                fs::rename(&tmp, &path)
            }
            Op::Remove => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Makes every applied file durable with one filesystem sync.
    fn sync_all(&self) -> io::Result<()> {
        let d = File::open(&self.dir)?;
        // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Applies the pending records and syncs the files, then retires the journal's
    /// records by bumping its generation (one sector-sized write at offset 0, atomic on
    /// the devices we run on). Should a file fail, the records stay for a later try.
    fn checkpoint(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        while let Some((name, rec)) = self.pending.pop_first() {
            if let Err(e) = self.apply(&rec) {
                self.pending.insert(name, rec);
                return Err(e);
            }
        }
        self.sync_all()?;
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        let f = self.file()?;
        f.write_all_at(&gen.to_le_bytes(), 8)?;
        f.sync_data()?;
        self.offset = HEADER_LEN;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn puts_and_removes_reach_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open(dir.path()).expect("open");
            j.put("a.xml", b"one", 0o600).await.expect("put");
            j.put("a.xml", b"two", 0o600).await.expect("put");
            j.put("b.xml", b"bee", 0o600).await.expect("put");
            j.remove("b.xml").await.expect("remove");
            j.remove("never.xml")
                .await
                .expect("remove of a missing file");
            j.checkpoint().await.expect("checkpoint");
            assert_eq!(fs::read(dir.path().join("a.xml")).expect("a"), b"two");
            assert!(!dir.path().join("b.xml").exists());
        });
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open(dir.path()).expect("open");
            for n in ["", "../x", "a/b", ".journal", ".hidden"] {
                assert!(j.put(n, b"x", 0o600).await.is_err(), "{n:?} accepted");
            }
        });
    }

    /// A crash after the record's sync but before the file was written: replay
    /// writes it. A torn record after it is ignored.
    #[test]
    fn replay_applies_synced_records_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::open(dir.path(), 64 << 10).expect("writer");
        let recs = [
            Record {
                op: Op::Put,
                mode: 0o600,
                name: "x.xml".into(),
                data: b"<x/>".to_vec(),
            },
            Record {
                op: Op::Put,
                mode: 0o600,
                name: "y.xml".into(),
                data: b"<y/>".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            encode(w.gen_for_test(), r, &mut buf);
        }
        w.append(&buf).expect("append");
        // Tear the second record: flip a byte of its data.
        let path = dir.path().join(FILE);
        let mut buf = fs::read(&path).expect("journal");
        let second = HEADER_LEN as usize + RECORD_HEAD + 5 + 4 + RECORD_HEAD + 5;
        buf[second] ^= 0xff;
        fs::write(&path, &buf).expect("write");
        drop(w);
        assert!(!dir.path().join("x.xml").exists());
        let _w = Writer::open(dir.path(), 64 << 10).expect("replay");
        assert_eq!(fs::read(dir.path().join("x.xml")).expect("x"), b"<x/>");
        assert!(!dir.path().join("y.xml").exists());
        // After the replay's checkpoint the records no longer count.
        fs::remove_file(dir.path().join("x.xml")).expect("rm");
        let _w = Writer::open(dir.path(), 64 << 10).expect("reopen");
        assert!(!dir.path().join("x.xml").exists());
    }

    /// Acknowledged records whose files were not written yet (the writer died before
    /// its idle time or checkpoint) come back at open, the newest per file.
    #[test]
    fn acknowledged_but_unapplied_records_survive_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::open(dir.path(), 64 << 10).expect("writer");
        let put = |name: &str, data: &[u8]| Record {
            op: Op::Put,
            mode: 0o600,
            name: name.into(),
            data: data.to_vec(),
        };
        let mut recs = [
            put("a.xml", b"one"),
            put("b.xml", b"bee"),
            put("a.xml", b"two"),
        ];
        assert!(w.log(&mut recs).iter().all(|r| r.is_ok()));
        assert!(
            !dir.path().join("a.xml").exists(),
            "applied on the caller's path"
        );
        drop(w);
        let _w = Writer::open(dir.path(), 64 << 10).expect("replay");
        assert_eq!(fs::read(dir.path().join("a.xml")).expect("a"), b"two");
        assert_eq!(fs::read(dir.path().join("b.xml")).expect("b"), b"bee");
    }

    /// Replay reads the journal in steps until its records end: 300 KB of records
    /// past the first 64 KiB all come back.
    #[test]
    fn replay_reads_past_the_first_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("writer");
        let mut recs: Vec<Record> = (0..300)
            .map(|i| Record {
                op: Op::Put,
                mode: 0o600,
                name: format!("r{i}.xml"),
                data: vec![b'x'; 1000],
            })
            .collect();
        assert!(w.log(&mut recs).iter().all(|r| r.is_ok()));
        drop(w);
        let _w = Writer::open(dir.path(), 1 << 20).expect("replay");
        for i in 0..300 {
            assert!(dir.path().join(format!("r{i}.xml")).exists(), "r{i}.xml");
        }
    }

    #[test]
    fn wraps_around_with_checkpoints_and_large_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open_sized(dir.path(), 16 << 10).expect("open");
            for i in 0..200 {
                j.put(&format!("d{i}.xml"), &[b'a'; 500], 0o600)
                    .await
                    .expect("put");
            }
            j.put("big.xml", &vec![b'b'; 40 << 10], 0o600)
                .await
                .expect("big put");
            j.checkpoint().await.expect("checkpoint");
        });
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 202);
        assert_eq!(
            fs::read(dir.path().join("big.xml")).expect("big").len(),
            40 << 10
        );
    }

    #[test]
    fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = std::sync::Arc::new(Journal::open(dir.path()).expect("open"));
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let j = j.clone();
                    tokio::spawn(async move { j.put(&format!("c{i}.xml"), b"c", 0o600).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("join").expect("put");
            }
            j.checkpoint().await.expect("checkpoint");
        });
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 101);
    }
}
