//! A tantivy [`Directory`] whose files are sealed, so that no term, position or field of a message
//! reaches the disk in clear.
//!
//! Each file has its own random key. The key is sealed under the data key (`AtRest`, table
//! `search-index`, the file's name as the row, so a file renamed or moved does not open) and kept in
//! the file's header with the data key's id, which a rekey reads. The contents are cut into 16 KiB
//! chunks sealed with the STREAM construction (`aead::stream::StreamBE32` over
//! XChaCha20-Poly1305: chunk counter and last-chunk flag in the nonce), so a chunk can be read on
//! its own and a file cut short at a chunk boundary does not open. Decrypted chunks are kept in a
//! bounded in-memory cache.
//!
//! ```text
//! header = "PGNIDX1\0" | key id u32 LE | sealed file key (72 bytes) | nonce prefix (19 bytes)
//! chunk  = XChaCha20-Poly1305(file key, nonce prefix | counter u32 BE | last u8, plaintext) + tag
//! ```
//!
//! Deleting a file first overwrites its sealed key with zeros and syncs that, then unlinks it: the
//! blocks the file system frees hold chunks whose key exists nowhere.
//!
//! Locks are held in memory: the home lock already keeps every other process out, and a lock
//! file left by a crash would otherwise block the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use rand::RngCore;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, OwnedBytes, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};
use zeroize::Zeroizing;

use crate::keys::Keys;
use crate::keys::at_rest::AtRest;

const MAGIC: &[u8; 8] = b"PGNIDX1\0";
const SEALED_KEY_LEN: usize = 24 + 32 + 16;
const PREFIX_LEN: usize = 19;
const HEADER_LEN: usize = MAGIC.len() + 4 + SEALED_KEY_LEN + PREFIX_LEN;
/// Plaintext bytes per chunk: small, because a query reads many short posting lists, and each
/// read decrypts whole chunks.
const CHUNK: usize = 16 * 1024;
const TAG: usize = 16;
/// The AtRest table a file key is sealed for.
const TABLE: &str = "search-index";
/// Decrypted chunks kept in memory, in all.
const CACHE_BYTES: usize = 96 * 1024 * 1024;

type Stream = StreamBE32<XChaCha20Poly1305>;

/// The directory: a folder of sealed files.
#[derive(Clone)]
pub struct SealedDir {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    keys: Arc<Keys>,
    cache: Mutex<Cache>,
    next_file: AtomicU64,
    locks: Arc<Mutex<HashSet<PathBuf>>>,
    /// Held to read a header, and to rewrite one in a rekey, so no reader sees half of it.
    headers: RwLock<()>,
}

impl std::fmt::Debug for SealedDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedDir")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl SealedDir {
    /// The directory `root` (created 0700 if missing), its files' keys sealed under the current
    /// data key of `keys`.
    pub fn open(root: &Path, keys: Arc<Keys>) -> io::Result<SealedDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        Ok(SealedDir {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                keys,
                cache: Mutex::new(Cache::default()),
                next_file: AtomicU64::new(1),
                locks: Arc::default(),
                headers: RwLock::new(()),
            }),
        })
    }

    /// Where `path` (a bare file name, as tantivy gives them) lives.
    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let mut parts = path.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(name)), None) => Ok(self.inner.root.join(name)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file name of the index", path.display()),
            )),
        }
    }

    fn open_sealed(&self, path: &Path) -> Result<SealedFile, OpenReadError> {
        let full = self
            .resolve(path)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))?;
        let file = match File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenReadError::FileDoesNotExist(path.to_owned()));
            }
            Err(e) => return Err(OpenReadError::wrap_io_error(e, path.to_owned())),
        };
        let opened = {
            let _header = self.inner.headers.read().unwrap_or_else(|p| p.into_inner());
            SealedFile::open(file, path, self.inner.keys.at_rest())
        };
        opened
            .map(|mut f| {
                f.id = self.inner.next_file.fetch_add(1, Ordering::Relaxed);
                f.dir = Some(self.clone());
                f
            })
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))
    }

    fn writer(&self, path: &Path, file: File) -> io::Result<SealedWriter> {
        SealedWriter::new(file, path, self.inner.keys.at_rest())
    }

    fn chunk(&self, file: &SealedFile, index: u32) -> io::Result<Arc<[u8]>> {
        let key = (file.id, index);
        if let Some(chunk) = self.inner.cache.lock().ok().and_then(|c| c.get(&key)) {
            return Ok(chunk);
        }
        let chunk: Arc<[u8]> = file.decrypt_chunk(index)?.into();
        if let Ok(mut cache) = self.inner.cache.lock() {
            cache.put(key, chunk.clone());
        }
        Ok(chunk)
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn associated_name(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// One sealed file, open for reading.
struct SealedFile {
    file: File,
    name: String,
    stream: Stream,
    /// Plaintext length.
    len: usize,
    chunks: u32,
    id: u64,
    dir: Option<SealedDir>,
}

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedFile")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SealedFile {
    fn open(file: File, path: &Path, at_rest: &AtRest) -> io::Result<SealedFile> {
        let name = associated_name(path);
        let size = file.metadata()?.len();
        let size = usize::try_from(size).map_err(|_| invalid("index file too large"))?;
        if size < HEADER_LEN + TAG {
            return Err(invalid(format!("index file {name} is cut short")));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let (key_id, sealed_key, prefix) = parse_header(&header, &name)?;
        let key = Zeroizing::new(
            at_rest
                .open(TABLE, &name, key_id, sealed_key)
                .map_err(|e| invalid(e.to_string()))?,
        );
        let stream = stream(&key, prefix)?;
        let body = size - HEADER_LEN;
        let chunks = body.div_ceil(CHUNK + TAG);
        let len = body - chunks * TAG;
        let chunks = u32::try_from(chunks).map_err(|_| invalid("index file too large"))?;
        Ok(SealedFile {
            file,
            name,
            stream,
            len,
            chunks,
            id: 0,
            dir: None,
        })
    }

    fn decrypt_chunk(&self, index: u32) -> io::Result<Vec<u8>> {
        let last = index + 1 == self.chunks;
        let start = index as usize * CHUNK;
        let plain = if last { self.len - start } else { CHUNK };
        let mut buf = vec![0u8; plain + TAG];
        self.file.read_exact_at(
            &mut buf,
            (HEADER_LEN + index as usize * (CHUNK + TAG)) as u64,
        )?;
        self.stream
            .decrypt_in_place(index, last, self.name.as_bytes(), &mut buf)
            .map_err(|_| {
                invalid(format!(
                    "index file {} does not decrypt: damaged or tampered with",
                    self.name
                ))
            })?;
        Ok(buf)
    }

    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len);
        for i in 0..self.chunks {
            out.extend_from_slice(&self.decrypt_chunk(i)?);
        }
        Ok(out)
    }
}

fn parse_header<'a>(
    header: &'a [u8; HEADER_LEN],
    name: &str,
) -> io::Result<(u32, &'a [u8], &'a [u8])> {
    if &header[..MAGIC.len()] != MAGIC {
        return Err(invalid(format!("{name} is not a sealed index file")));
    }
    let rest = &header[MAGIC.len()..];
    let (id, rest) = rest.split_at(4);
    let key_id = u32::from_le_bytes(id.try_into().map_err(|_| invalid("header"))?);
    let (sealed_key, prefix) = rest.split_at(SEALED_KEY_LEN);
    Ok((key_id, sealed_key, prefix))
}

fn stream(key: &[u8], prefix: &[u8]) -> io::Result<Stream> {
    let cipher = XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| invalid("a file key of the wrong size"))?;
    Ok(Stream::from_aead(cipher, prefix.into()))
}

impl tantivy::HasLen for SealedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl FileHandle for SealedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.start > range.end || range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of {}", self.name),
            ));
        }
        if range.is_empty() {
            return Ok(OwnedBytes::empty());
        }
        let Some(dir) = &self.dir else {
            return Err(invalid("a sealed file without its directory"));
        };
        let first = range.start / CHUNK;
        let last = (range.end - 1) / CHUNK;
        if first == last {
            let chunk = dir.chunk(self, first as u32)?;
            let base = first * CHUNK;
            return Ok(OwnedBytes::new(chunk).slice(range.start - base..range.end - base));
        }
        let mut out = Vec::with_capacity(range.len());
        for index in first..=last {
            let chunk = dir.chunk(self, index as u32)?;
            let base = index * CHUNK;
            let from = range.start.max(base) - base;
            let to = range.end.min(base + chunk.len()) - base;
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(OwnedBytes::new(out))
    }
}

/// Writes one sealed file, a chunk at a time.
struct SealedWriter {
    out: BufWriter<File>,
    name: String,
    stream: Stream,
    buf: Vec<u8>,
    next: u32,
    done: bool,
}

impl SealedWriter {
    fn new(file: File, path: &Path, at_rest: &AtRest) -> io::Result<SealedWriter> {
        let name = associated_name(path);
        let mut key = Zeroizing::new([0u8; 32]);
        let mut prefix = [0u8; PREFIX_LEN];
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let (key_id, sealed_key) = at_rest.seal(TABLE, &name, key.as_ref());
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&key_id.to_le_bytes());
        header.extend_from_slice(&sealed_key);
        header.extend_from_slice(&prefix);
        debug_assert_eq!(header.len(), HEADER_LEN);
        let stream = Stream::from_aead(
            XChaCha20Poly1305::new(key.as_ref().into()),
            prefix.as_slice().into(),
        );
        let mut out = BufWriter::with_capacity(CHUNK + TAG, file);
        out.write_all(&header)?;
        Ok(SealedWriter {
            out,
            name,
            stream,
            buf: Vec::with_capacity(CHUNK + TAG),
            next: 0,
            done: false,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let mut chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + TAG));
        self.stream
            .encrypt_in_place(self.next, last, self.name.as_bytes(), &mut chunk)
            .map_err(|_| invalid("a chunk did not seal"))?;
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| invalid("index file too large"))?;
        self.out.write_all(&chunk)
    }

    fn finish(&mut self) -> io::Result<File> {
        if self.done {
            return Err(invalid("written to after it was finished"));
        }
        self.seal_chunk(true)?;
        self.done = true;
        self.out.flush()?;
        let file = self.out.get_ref();
        file.sync_all()?;
        file.try_clone()
    }
}

impl Write for SealedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.done {
            return Err(invalid("written to after it was finished"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() == CHUNK {
                self.seal_chunk(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole chunks go out before `terminate`; a partial one is sealed as the last.
        self.out.flush()
    }
}

impl TerminatingWrite for SealedWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.finish().map(drop)
    }
}

/// Decrypted chunks, by (file, chunk), the oldest evicted first once over [`CACHE_BYTES`].
#[derive(Default)]
struct Cache {
    chunks: HashMap<(u64, u32), Arc<[u8]>>,
    order: VecDeque<(u64, u32)>,
    bytes: usize,
}

impl Cache {
    fn get(&self, key: &(u64, u32)) -> Option<Arc<[u8]>> {
        self.chunks.get(key).cloned()
    }

    fn put(&mut self, key: (u64, u32), chunk: Arc<[u8]>) {
        self.bytes += chunk.len();
        if self.chunks.insert(key, chunk).is_none() {
            self.order.push_back(key);
        }
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.chunks.remove(&old) {
                self.bytes -= gone.len();
            }
        }
    }
}

struct HeldLock {
    path: PathBuf,
    locks: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Directory for SealedDir {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(Arc::new(self.open_sealed(path)?))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        let io_error = |e: io::Error| DeleteError::IoError {
            io_error: Arc::new(e),
            filepath: path.to_owned(),
        };
        let full = self.resolve(path).map_err(io_error)?;
        let file = match OpenOptions::new().write(true).open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DeleteError::FileDoesNotExist(path.to_owned()));
            }
            Err(e) => return Err(io_error(e)),
        };
        // Shred the file key before the blocks are freed.
        let size = file.metadata().map_err(io_error)?.len();
        if size >= HEADER_LEN as u64 {
            file.write_all_at(&[0u8; SEALED_KEY_LEN], (MAGIC.len() + 4) as u64)
                .and_then(|()| file.sync_data())
                .map_err(io_error)?;
        }
        drop(file);
        std::fs::remove_file(&full).map_err(io_error)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        let full = self
            .resolve(path)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))?;
        Ok(full.exists())
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let io_error = |e: io::Error| OpenWriteError::IoError {
            io_error: Arc::new(e),
            filepath: path.to_owned(),
        };
        let full = self.resolve(path).map_err(io_error)?;
        let file = match OpenOptions::new().write(true).create_new(true).open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(OpenWriteError::FileAlreadyExists(path.to_owned()));
            }
            Err(e) => return Err(io_error(e)),
        };
        let writer = self.writer(path, file).map_err(io_error)?;
        Ok(BufWriter::new(Box::new(writer)))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.open_sealed(path)?
            .read_all()
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let full = self.resolve(path)?;
        let temp = tempfile::NamedTempFile::new_in(&self.inner.root)?;
        // Sealed under the final name: that is the name it is opened by.
        let mut writer = self.writer(path, temp.as_file().try_clone()?)?;
        writer.write_all(data)?;
        writer.finish()?;
        temp.persist(&full).map_err(|e| e.error)?;
        sync_dir(&self.inner.root)
    }

    fn sync_directory(&self) -> io::Result<()> {
        sync_dir(&self.inner.root)
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        let mut locks =
            self.inner.locks.lock().map_err(|_| {
                LockError::IoError(Arc::new(io::Error::other("lock table poisoned")))
            })?;
        if !locks.insert(lock.filepath.clone()) {
            return Err(LockError::LockBusy);
        }
        Ok(DirectoryLock::from(Box::new(HeldLock {
            path: lock.filepath.clone(),
            locks: self.inner.locks.clone(),
        })))
    }

    fn watch(&self, _: WatchCallback) -> tantivy::Result<WatchHandle> {
        // Readers are reloaded by hand after each commit.
        Ok(WatchHandle::empty())
    }
}

/// The key id a sealed index file's key is sealed under (what a rekey looks for).
pub fn key_id_of(path: &Path) -> io::Result<u32> {
    let mut header = [0u8; HEADER_LEN];
    File::open(path)?.read_exact_at(&mut header, 0)?;
    parse_header(&header, &path.display().to_string()).map(|(id, _, _)| id)
}

/// How many index files in `root` have their key sealed under each data key.
pub fn key_counts(root: &Path) -> io::Result<std::collections::BTreeMap<u32, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for path in index_files(root)? {
        match key_id_of(&path) {
            Ok(id) => *out.entry(id).or_insert(0) += 1,
            // Gone meanwhile (a merge), or not a sealed file: nothing sealed to count.
            Err(_) => continue,
        }
    }
    Ok(out)
}

/// The regular files of `root`, if it exists.
fn index_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

impl SealedDir {
    /// Seals again, under the current data key, the key of every file sealed under another one:
    /// the header's key id and sealed key are overwritten in place (the contents, under the
    /// file's own key, stay as they are) and synced. Returns how many files it moved.
    ///
    /// A crash in the middle of a header's write can at worst leave that one file unopenable,
    /// which the index treats as damage and repairs by a rebuild from the inbox.
    pub fn rekey(&self) -> io::Result<usize> {
        let at_rest = self.inner.keys.at_rest();
        let current = at_rest.current();
        let mut moved = 0;
        for path in index_files(&self.inner.root)? {
            let _header = self
                .inner
                .headers
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut header = [0u8; HEADER_LEN];
            if file.read_exact_at(&mut header, 0).is_err() {
                continue;
            }
            let Some(file_name) = path.file_name() else {
                continue;
            };
            let name = associated_name(Path::new(file_name));
            let Ok((key_id, sealed_key, _)) = parse_header(&header, &name) else {
                // Not a sealed file: nothing of ours to move.
                continue;
            };
            if key_id == current {
                continue;
            }
            let key = Zeroizing::new(
                at_rest
                    .open(TABLE, &name, key_id, sealed_key)
                    .map_err(|e| invalid(e.to_string()))?,
            );
            let sealed = at_rest
                .seal_under(current, TABLE, &name, &key)
                .ok_or_else(|| invalid("the current data key is not held"))?;
            let mut part = Vec::with_capacity(4 + SEALED_KEY_LEN);
            part.extend_from_slice(&current.to_le_bytes());
            part.extend_from_slice(&sealed);
            file.write_all_at(&part, MAGIC.len() as u64)?;
            file.sync_data()?;
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(root: &Path) -> SealedDir {
        SealedDir::open(root, Arc::new(Keys::generate())).expect("open")
    }

    fn write(dir: &SealedDir, name: &str, data: &[u8]) {
        let mut w = dir.open_write(Path::new(name)).expect("open_write");
        w.write_all(data).expect("write");
        w.terminate().expect("terminate");
    }

    #[test]
    fn reads_back_any_range_and_keeps_nothing_in_clear() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = dir(tmp.path());
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        write(&d, "seg.idx", &data);
        let handle = d.get_file_handle(Path::new("seg.idx")).expect("handle");
        assert_eq!(tantivy::HasLen::len(&*handle), data.len());
        for range in [
            0..0,
            0..10,
            CHUNK - 5..CHUNK + 5,
            10..3 * CHUNK + 100,
            0..data.len(),
        ] {
            let got = handle.read_bytes(range.clone()).expect("read");
            assert_eq!(got.as_slice(), &data[range]);
        }
        assert!(handle.read_bytes(0..data.len() + 1).is_err());
        let disk = std::fs::read(tmp.path().join("seg.idx")).expect("read file");
        assert!(!disk.windows(64).any(|w| data.windows(64).next() == Some(w)));
        // Empty files work too.
        write(&d, "empty", b"");
        let empty = d.get_file_handle(Path::new("empty")).expect("handle");
        assert_eq!(tantivy::HasLen::len(&*empty), 0);
    }

    #[test]
    fn atomic_files_round_trip() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = dir(tmp.path());
        d.atomic_write(Path::new("meta.json"), b"{\"secret\": 1}")
            .expect("write");
        d.atomic_write(Path::new("meta.json"), b"{\"secret\": 2}")
            .expect("overwrite");
        assert_eq!(
            d.atomic_read(Path::new("meta.json")).expect("read"),
            b"{\"secret\": 2}"
        );
        let disk = std::fs::read(tmp.path().join("meta.json")).expect("file");
        assert!(!disk.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn damage_truncation_renames_and_other_keys_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = dir(tmp.path());
        let data = vec![7u8; 2 * CHUNK + 10];
        write(&d, "a", &data);
        let path = tmp.path().join("a");
        let original = std::fs::read(&path).expect("read");

        // One flipped bit in the second chunk.
        let mut bad = original.clone();
        bad[HEADER_LEN + CHUNK + TAG + 3] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let h = d.get_file_handle(Path::new("a")).expect("header is intact");
        assert!(h.read_bytes(0..10).is_ok());
        assert!(h.read_bytes(CHUNK + 1..CHUNK + 2).is_err());

        // Cut at a chunk boundary: the new last chunk was not sealed as last.
        std::fs::write(&path, &original[..HEADER_LEN + 2 * (CHUNK + TAG)]).expect("write");
        let h = d.get_file_handle(Path::new("a")).expect("open");
        assert!(h.read_bytes(CHUNK..CHUNK + 1).is_err());

        // Renamed: the key was sealed for its name.
        std::fs::write(tmp.path().join("b"), &original).expect("write");
        assert!(d.get_file_handle(Path::new("b")).is_err());

        // Another data key.
        std::fs::write(&path, &original).expect("write");
        let other = dir(tmp.path());
        assert!(other.get_file_handle(Path::new("a")).is_err());
        assert!(d.get_file_handle(Path::new("a")).is_ok());
        assert_eq!(key_id_of(&path).expect("key id"), 1);
    }

    #[test]
    fn delete_shreds_the_key_and_names_must_be_plain() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = dir(tmp.path());
        write(&d, "x", b"data");
        d.delete(Path::new("x")).expect("delete");
        assert!(!d.exists(Path::new("x")).expect("exists"));
        assert!(matches!(
            d.delete(Path::new("x")),
            Err(DeleteError::FileDoesNotExist(_))
        ));
        assert!(d.open_write(Path::new("../escape")).is_err());
        assert!(d.open_write(Path::new("/etc/passwd")).is_err());
        write(&d, "y", b"1");
        assert!(matches!(
            d.open_write(Path::new("y")),
            Err(OpenWriteError::FileAlreadyExists(_))
        ));
        let lock = Lock {
            filepath: PathBuf::from(".lock"),
            is_blocking: false,
        };
        let held = d.acquire_lock(&lock).expect("lock");
        assert!(matches!(d.acquire_lock(&lock), Err(LockError::LockBusy)));
        drop(held);
        d.acquire_lock(&lock).expect("lock again");
    }
}
