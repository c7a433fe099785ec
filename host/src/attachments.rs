//! Attachments: files cut into fixed-size chunks, each sealed under a per-attachment content key.
//!
//! The sender seals its own copy when the message is queued (so a file edited or deleted after
//! `send` still goes out as it was sent) into `<home>/attachments/<id>.sealed`, where sealed chunk
//! `i` sits at offset `i * (chunk_size + 16)`. The content key and a manifest (name, size, chunk
//! size, blake2b of every sealed chunk and of the whole plaintext) travel inside the HPKE-sealed
//! message ([`AttachmentRef`]). The receiver pulls chunks over `/pigeon/chunk/1` ([`fetch`]),
//! checks each against the manifest before writing it to its own file at the same offset, records
//! which it holds, and resumes after a crash from there. Nothing in either file is plaintext; the
//! content key rests sealed under the DEK. [`save`] decrypts on request, streaming, and checks the
//! whole-file hash. Memory stays bounded by the chunk window whatever the file size.

pub mod fetch;
mod group;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use blake2::{Blake2b, Digest, digest::consts::U32};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Lets the kernel drop the cached pages of `len` bytes of `file` from `offset` (0: to the end),
/// once clean: nothing reads a sealed chunk again soon, and a large transfer then reuses the same
/// few pages instead of pushing the rest of the page cache out (on a virtual machine, also instead
/// of touching memory the host must hand over page by page). Only advice: a failure changes
/// nothing.
fn drop_cached(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call, which reads no memory of ours.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
    }
}

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: u32 = 1024 * 1024;
/// The smallest chunk size a manifest may give.
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// The largest chunk size a manifest may give.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The longest file name `save` writes, in bytes (the usual `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// The most attachments `attachments.max_per_message` may allow.
pub const HARD_MAX_PER_MESSAGE: usize = 1024;

/// The bounds a received message's attachments are checked against (from `[attachments]`),
/// before anything of them is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single attachment, in bytes.
    pub max_size: u64,
    /// Most attachments in one message.
    pub max_per_message: usize,
    /// Most bytes in one message's attachments together.
    pub max_message_bytes: u64,
    /// Most bytes of attachments held or fetched from one peer.
    pub max_peer_bytes: u64,
}

impl Limits {
    /// Whether a message carrying `refs` may be accepted from a peer whose attachments already
    /// take `peer_bytes`: every manifest well formed, and no limit passed.
    pub fn admit(&self, refs: &[AttachmentRef], peer_bytes: u64) -> bool {
        let total = refs.iter().fold(0u64, |t, a| t.saturating_add(a.size));
        refs.len() <= self.max_per_message
            && total <= self.max_message_bytes
            && peer_bytes.saturating_add(total) <= self.max_peer_bytes
            && refs
                .iter()
                .all(|a| a.is_well_formed() && a.size <= self.max_size)
    }
}

/// AEAD tag added to each chunk.
pub const TAG: u64 = 16;
/// Largest attachment pigeon handles: its manifest (32 bytes per MiB) must fit a frame and a request.
pub const HARD_MAX_SIZE: u64 = 16 * 1024 * 1024 * 1024;

/// What a message says about one of its attachments. Secret: it travels inside the sealed payload.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// Random id, shared by sender and receiver.
    #[serde(with = "serde_bytes")]
    pub id: [u8; 16],
    /// The file's name as the sender gave it (sanitised before use).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The content key.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    /// blake2b-256 of every sealed chunk, concatenated.
    #[serde(with = "serde_bytes")]
    pub chunk_hashes: Vec<u8>,
    /// blake2b-256 of the whole plaintext.
    #[serde(with = "serde_bytes")]
    pub file_hash: [u8; 32],
}

impl std::fmt::Debug for AttachmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRef")
            .field("id", &hex::encode(self.id))
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The content key does not outlive its reference in memory.
impl Drop for AttachmentRef {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl AttachmentRef {
    /// The id as hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
    /// How many chunks.
    pub fn chunk_count(&self) -> u32 {
        chunk_count(self.size, self.chunk_size)
    }
    /// The expected hash of sealed chunk `index`.
    pub fn chunk_hash(&self, index: u32) -> Option<&[u8]> {
        let start = index as usize * 32;
        self.chunk_hashes.get(start..start + 32)
    }
    /// Whether the manifest is consistent (sizes, hash count); checked on receipt.
    ///
    /// The chunk size is bounded below (a tiny one would make a huge chunk count, one request
    /// per few bytes) and above (a frame must hold a chunk), and the count is computed in 64 bits
    /// so that no size can wrap it into agreeing with a short hash list.
    pub fn is_well_formed(&self) -> bool {
        let count = self.size.div_ceil(u64::from(self.chunk_size.max(1)));
        (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            && self.size <= HARD_MAX_SIZE
            && u32::try_from(count).is_ok()
            && self.chunk_hashes.len() as u64 == count * 32
    }
}

/// Chunks needed for `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u32 {
    size.div_ceil(u64::from(chunk_size)) as u32
}

/// Where sealed chunk `index` sits in an attachment file.
pub fn chunk_offset(index: u32, chunk_size: u32) -> u64 {
    u64::from(index) * (u64::from(chunk_size) + TAG)
}

/// Length of sealed chunk `index` of an attachment of `size` bytes.
pub fn sealed_len(index: u32, size: u64, chunk_size: u32) -> u64 {
    let start = u64::from(index) * u64::from(chunk_size);
    size.saturating_sub(start).min(u64::from(chunk_size)) + TAG
}

/// How long a sealed file in `attachments/` that no attachment owns is left before a starting
/// node removes it ([`remove_orphans`]). A crash left it: between the commit of a `rm` or
/// `redact` and the removal of its files, or between a `send --attach` staging its files and
/// the node queueing the message. A younger one may be a send staging right now, or one whose
/// files are staged and that waits at the passphrase prompt (a node that starts meanwhile then
/// queues it): a day leaves the owner all the time a prompt may take.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the sealed files in `home_root`'s `attachments/` that none of the attachment ids
/// `known` owns and that were last written at least [`ORPHAN_AGE`] before `now`; returns how
/// many went. Files of other names are left for `ops check` to report.
pub fn remove_orphans(
    home_root: &Path,
    known: &std::collections::HashSet<String>,
    now: std::time::SystemTime,
) -> usize {
    let Ok(entries) = std::fs::read_dir(home_root.join("attachments")) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".sealed")) else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) || known.contains(id) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= ORPHAN_AGE));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The file holding attachment `id` under `home_root`.
pub fn file_path(home_root: &Path, id_hex: &str) -> PathBuf {
    home_root
        .join("attachments")
        .join(format!("{id_hex}.sealed"))
}

/// Errors handling attachment files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than allowed.
    #[error(
        "{path} is {size} bytes; attachments may be at most {max} bytes (attachments.max_size)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A chunk or the whole file does not match the manifest.
    #[error("attachment {name:?} does not match its manifest ({what}); it was not written")]
    Corrupt {
        /// The attachment's name.
        name: String,
        /// What failed.
        what: String,
    },
    /// Not every chunk has arrived.
    #[error("attachment {name:?} is incomplete: {held} of {total} chunks")]
    Incomplete {
        /// The attachment's name.
        name: String,
        /// Chunks held.
        held: u32,
        /// Chunks in all.
        total: u32,
    },
    /// The target exists.
    #[error("{0} exists; pass --yes to overwrite it")]
    Exists(PathBuf),
}

impl AttachmentError {
    pub(crate) fn kind(&self) -> crate::exit::ErrorKind {
        use crate::exit::ErrorKind;
        match self {
            AttachmentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            AttachmentError::Io { .. } | AttachmentError::Incomplete { .. } => ErrorKind::Other,
            AttachmentError::TooLarge { .. } => ErrorKind::Usage,
            AttachmentError::Corrupt { .. } => ErrorKind::Corrupt,
            AttachmentError::Exists(_) => ErrorKind::Conflict,
        }
    }
}

/// Makes a new or renamed entry of `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), AttachmentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AttachmentError + 'a {
    move |source| AttachmentError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// blake2b-256.
pub fn hash(bytes: &[u8]) -> [u8; 32] {
    let digest = blake2b_simd::Params::new().hash_length(32).hash(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_bytes());
    out
}

fn nonce(id: &[u8; 16], index: u32) -> XNonce {
    // One key per attachment and one nonce per chunk index: never reused.
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(id);
    n[16..20].copy_from_slice(&index.to_le_bytes());
    XNonce::from(n)
}

fn aad(id: &[u8; 16], index: u32) -> Vec<u8> {
    let mut a = b"pigeon/chunk/1\0".to_vec();
    a.extend_from_slice(id);
    a.extend_from_slice(&index.to_le_bytes());
    a
}

/// Seals chunk `index` of attachment `id` under `key`.
pub fn seal_chunk(key: &[u8; 32], id: &[u8; 16], index: u32, plain: &[u8]) -> Vec<u8> {
    XChaCha20Poly1305::new(key.into())
        .encrypt(
            &nonce(id, index),
            Payload {
                msg: plain,
                aad: &aad(id, index),
            },
        )
        .expect("XChaCha20-Poly1305 seals any chunk")
}

/// Opens chunk `index`; `None` if it was tampered with.
pub fn open_chunk(
    key: &[u8; 32],
    id: &[u8; 16],
    index: u32,
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            &nonce(id, index),
            Payload {
                msg: sealed,
                aad: &aad(id, index),
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Seals the file at `path` into `<home_root>/attachments/<id>.sealed`, reading it chunk by chunk;
/// `progress` is told the plaintext bytes done. Returns the reference to put in the message.
pub fn stage(
    home_root: &Path,
    path: &Path,
    max_size: u64,
    mut progress: impl FnMut(u64),
) -> Result<AttachmentRef, AttachmentError> {
    let mut input = File::open(path).map_err(io("opening", path))?;
    let size = input.metadata().map_err(io("reading", path))?.len();
    if size > max_size.min(HARD_MAX_SIZE) {
        return Err(AttachmentError::TooLarge {
            path: path.to_owned(),
            size,
            max: max_size,
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".into());
    let mut id = [0u8; 16];
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let dir = home_root.join("attachments");
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let out_path = file_path(home_root, &hex::encode(id));
    let mut out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&out_path)
        .map_err(io("creating", &out_path))?;
    let mut whole = Blake2b::<U32>::new();
    let mut chunk_hashes = Vec::new();
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_SIZE as usize]);
    let (mut index, mut done) = (0u32, 0u64);
    // The file may change while it is read: what was read is what is sent, and the size with it.
    loop {
        let n = read_full(&mut input, &mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        let sealed = seal_chunk(&key, &id, index, &buf[..n]);
        chunk_hashes.extend_from_slice(&hash(&sealed));
        out.write_all(&sealed).map_err(io("writing", &out_path))?;
        done += n as u64;
        index += 1;
        progress(done);
        if done > max_size.min(HARD_MAX_SIZE) {
            let _ = std::fs::remove_file(&out_path);
            return Err(AttachmentError::TooLarge {
                path: path.to_owned(),
                size: done,
                max: max_size,
            });
        }
    }
    out.sync_all().map_err(io("syncing", &out_path))?;
    sync_dir(&dir)?;
    Ok(AttachmentRef {
        id,
        name,
        size: done,
        chunk_size: CHUNK_SIZE,
        key,
        chunk_hashes,
        file_hash: whole.finalize().into(),
    })
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads sealed chunk `index` from an attachment file.
pub fn read_chunk(file: &Path, attachment: &AttachmentRef, index: u32) -> std::io::Result<Vec<u8>> {
    let len = sealed_len(index, attachment.size, attachment.chunk_size) as usize;
    use std::io::{Seek, SeekFrom};
    let offset = chunk_offset(index, attachment.chunk_size);
    let mut file = File::open(file)?;
    file.seek(SeekFrom::Start(offset))?;
    // Read into spare capacity: no megabyte zeroed first, only to be overwritten.
    let mut buf = Vec::with_capacity(len);
    (&mut file).take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    // Served once per fetch: its pages can go.
    drop_cached(&file, offset, len as u64);
    Ok(buf)
}

/// A file name from a peer, made safe to create in a directory and to show: no path, no control
/// or format characters, no leading dot, at most [`MAX_NAME_BYTES`], never empty.
pub fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|&c| !is_hidden_or_control(c)).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim_start();
    let out = truncate_name(cleaned, MAX_NAME_BYTES);
    if out.is_empty() {
        "attachment".to_owned()
    } else {
        out
    }
}

/// Characters that must not reach a file name or a terminal: controls, and format characters
/// (U+202E RIGHT-TO-LEFT OVERRIDE makes `exe.pdf` of `fdp.exe`, zero-width ones hide text),
/// and line or paragraph separators.
pub fn is_hidden_or_control(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

/// `name` cut to at most `max` bytes on a character boundary, keeping a short extension.
fn truncate_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let prefix = |s: &str, n: usize| -> String {
        let mut end = n.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => {
            format!("{}.{ext}", prefix(stem, max - ext.len() - 1))
        }
        _ => prefix(name, max),
    }
}

/// Decrypts a complete attachment from `file` into `dir/<sanitised name>`, checking every chunk
/// and the whole-file hash before the file appears under its name. `progress` gets bytes done.
pub fn save(
    file: &Path,
    attachment: &AttachmentRef,
    dir: &Path,
    overwrite: bool,
    mut progress: impl FnMut(u64),
) -> Result<PathBuf, AttachmentError> {
    let target = dir.join(sanitize_name(&attachment.name));
    if target.exists() && !overwrite {
        return Err(AttachmentError::Exists(target));
    }
    let corrupt = |what: String| AttachmentError::Corrupt {
        name: attachment.name.clone(),
        what,
    };
    // Created exclusively under a random name (0600): the sender knows the attachment's id, so a
    // name made from it could have been planted as a symlink.
    let mut out = tempfile::Builder::new()
        .prefix(".pigeon-partial-")
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    let tmp = out.path().to_owned();
    let mut whole = Blake2b::<U32>::new();
    let mut done = 0u64;
    for index in 0..attachment.chunk_count() {
        let sealed = read_chunk(file, attachment, index).map_err(io("reading", file))?;
        if attachment.chunk_hash(index) != Some(&hash(&sealed)[..]) {
            return Err(corrupt(format!("chunk {index} hash")));
        }
        let plain = open_chunk(&attachment.key, &attachment.id, index, &sealed)
            .ok_or_else(|| corrupt(format!("chunk {index} does not decrypt")))?;
        whole.update(&plain[..]);
        out.write_all(&plain).map_err(io("writing", &tmp))?;
        done += plain.len() as u64;
        progress(done);
    }
    if <[u8; 32]>::from(whole.finalize()) != attachment.file_hash || done != attachment.size {
        return Err(corrupt("whole-file hash".into()));
    }
    out.as_file().sync_all().map_err(io("syncing", &tmp))?;
    // Dropping `out` on any error above removes the temporary file.
    if overwrite {
        out.persist(&target)
    } else {
        out.persist_noclobber(&target)
    }
    .map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            AttachmentError::Exists(target.clone())
        } else {
            io("renaming into", &target)(e.error)
        }
    })?;
    sync_dir(dir)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_old_sealed_files_that_nothing_owns_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = dir.path().join("attachments");
        std::fs::create_dir(&files).expect("mkdir");
        let now = std::time::SystemTime::now();
        let write = |name: &str, age_s: u64| {
            let path = files.join(name);
            let f = std::fs::File::create(&path).expect("create");
            f.set_modified(now - std::time::Duration::from_secs(age_s))
                .expect("mtime");
            path
        };
        let old = super::ORPHAN_AGE.as_secs() + 60;
        let owned = write("aa01.sealed", old);
        let orphan = write("bb02.sealed", old);
        let staging = write("cc03.sealed", 5);
        let other = write("notes.txt", old);
        let odd = write("zz-x.sealed", old);
        let known = std::collections::HashSet::from(["aa01".to_owned()]);
        assert_eq!(super::remove_orphans(dir.path(), &known, now), 1);
        assert!(!orphan.exists(), "an old file nothing owns goes");
        for kept in [&owned, &staging, &other, &odd] {
            assert!(kept.exists(), "{} stays", kept.display());
        }
        // No attachments directory at all: nothing to do.
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(super::remove_orphans(empty.path(), &known, now), 0);
    }

    use super::*;

    fn sample(dir: &Path, len: usize) -> PathBuf {
        let mut bytes = vec![0u8; len];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let path = dir.join("report.pdf");
        std::fs::write(&path, &bytes).expect("write");
        path
    }

    #[test]
    fn the_chunk_hash_is_blake2b_256_as_manifests_always_had_it() {
        // Manifests made before the SIMD implementation hold RustCrypto's BLAKE2b-256 of each
        // chunk: the hash must not change, at any length around the SIMD block sizes.
        for len in [0usize, 1, 127, 128, 129, 1000, 4096, 65_537, 1 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let portable: [u8; 32] = Blake2b::<U32>::digest(&bytes).into();
            assert_eq!(hash(&bytes), portable, "length {len}");
        }
    }

    #[test]
    fn stage_and_save_round_trip_across_chunk_boundaries() {
        for len in [
            0,
            1,
            CHUNK_SIZE as usize,
            CHUNK_SIZE as usize + 1,
            2 * CHUNK_SIZE as usize + 7,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = sample(dir.path(), len);
            let mut seen = 0;
            let r = stage(dir.path(), &source, u64::MAX, |n| seen = n).expect("stage");
            assert_eq!((r.size, seen), (len as u64, len as u64));
            assert!(r.is_well_formed());
            let file = file_path(dir.path(), &r.id_hex());
            let expected: u64 = (0..r.chunk_count())
                .map(|i| sealed_len(i, r.size, r.chunk_size))
                .sum();
            assert_eq!(std::fs::metadata(&file).expect("meta").len(), expected);
            let out = dir.path().join("out");
            std::fs::create_dir(&out).expect("mkdir");
            let saved = save(&file, &r, &out, false, |_| {}).expect("save");
            assert_eq!(
                std::fs::read(&saved).expect("read"),
                std::fs::read(&source).expect("read")
            );
            assert!(matches!(
                save(&file, &r, &out, false, |_| {}),
                Err(AttachmentError::Exists(_))
            ));
        }
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_key_is_caught_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = sample(dir.path(), CHUNK_SIZE as usize + 100);
        let r = stage(dir.path(), &source, u64::MAX, |_| {}).expect("stage");
        let file = file_path(dir.path(), &r.id_hex());
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[CHUNK_SIZE as usize + 20] ^= 1;
        std::fs::write(&file, &bytes).expect("write");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let err = save(&file, &r, &out, false, |_| {}).expect_err("corrupt");
        assert!(err.to_string().contains("chunk 1"), "{err}");
        assert_eq!(
            std::fs::read_dir(&out).expect("ls").count(),
            0,
            "a partial file was left"
        );
        let sealed = seal_chunk(&r.key, &r.id, 0, b"abc");
        assert!(
            open_chunk(&r.key, &r.id, 1, &sealed).is_none(),
            "a chunk moved to another index opens"
        );
        assert!(open_chunk(&[9; 32], &r.id, 0, &sealed).is_none());
    }

    #[test]
    fn oversized_files_are_refused_before_staging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = sample(dir.path(), 5000);
        assert!(matches!(
            stage(dir.path(), &source, 4096, |_| {}),
            Err(AttachmentError::TooLarge { .. })
        ));
        assert!(
            !dir.path().join("attachments").exists()
                || std::fs::read_dir(dir.path().join("attachments"))
                    .expect("ls")
                    .count()
                    == 0
        );
    }

    #[test]
    fn names_from_peers_are_made_safe() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\Windows\\evil.dll"), "evil.dll");
        assert_eq!(sanitize_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_name("a\u{7}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_name(""), "attachment");
        assert_eq!(sanitize_name("/"), "attachment");
        assert_eq!(sanitize_name(".."), "attachment");
        // Right-to-left override, zero-width joiner, BOM, line separator: all gone.
        assert_eq!(sanitize_name("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(sanitize_name("a\u{200D}b\u{FEFF}c\u{2028}.txt"), "abc.txt");
        assert_eq!(sanitize_name(&"x".repeat(300)).len(), MAX_NAME_BYTES);
        // Cut on a character boundary, keeping the extension, so every name can be created.
        let long = format!("{}.tar.gz", "é".repeat(200));
        let cut = sanitize_name(&long);
        assert!(cut.len() <= MAX_NAME_BYTES && cut.ends_with(".gz"), "{cut}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(&cut), b"").expect("a sanitised name can be created");
    }

    fn manifest(size: u64, chunk_size: u32, hashes: usize) -> AttachmentRef {
        AttachmentRef {
            id: [1; 16],
            name: "f".into(),
            size,
            chunk_size,
            key: [2; 32],
            file_hash: [3; 32],
            chunk_hashes: vec![0; hashes * 32],
        }
    }

    #[test]
    fn save_never_follows_a_symlink_planted_in_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = sample(dir.path(), 1000);
        let r = stage(dir.path(), &source, u64::MAX, |_| {}).expect("stage");
        let file = file_path(dir.path(), &r.id_hex());
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        // The sender knows the attachment's id: it plants links at every name made from it (the
        // old temporary name among them) pointing at a file of the victim's.
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").expect("write");
        for name in [
            format!(".{}.pigeon-partial", r.id_hex()),
            format!(".pigeon-partial-{}", r.id_hex()),
        ] {
            std::os::unix::fs::symlink(&victim, out.join(name)).expect("symlink");
        }
        let saved = save(&file, &r, &out, false, |_| {}).expect("save");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert_eq!(
            std::fs::read(&saved).expect("read"),
            std::fs::read(&source).expect("read")
        );
        // And a link planted at the final name is refused, not written through.
        std::fs::remove_file(&saved).expect("rm");
        std::os::unix::fs::symlink(&victim, &saved).expect("symlink");
        assert!(matches!(
            save(&file, &r, &out, false, |_| {}),
            Err(AttachmentError::Exists(_))
        ));
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    }

    #[test]
    fn limits_count_files_bytes_per_message_and_per_peer() {
        let limits = Limits {
            max_size: 4 * CHUNK_SIZE as u64,
            max_per_message: 2,
            max_message_bytes: 6 * CHUNK_SIZE as u64,
            max_peer_bytes: 10 * CHUNK_SIZE as u64,
        };
        let mib = |n: u64| manifest(n * CHUNK_SIZE as u64, CHUNK_SIZE, n as usize);
        assert!(limits.admit(&[], 10 * CHUNK_SIZE as u64));
        assert!(limits.admit(&[mib(3), mib(3)], 0));
        assert!(!limits.admit(&[mib(5)], 0), "one file past max_size");
        assert!(
            !limits.admit(&[mib(1), mib(1), mib(1)], 0),
            "too many files"
        );
        assert!(
            !limits.admit(&[mib(4), mib(3)], 0),
            "too many bytes in the message"
        );
        assert!(limits.admit(&[mib(4)], 6 * CHUNK_SIZE as u64));
        assert!(
            !limits.admit(&[mib(4)], 7 * CHUNK_SIZE as u64),
            "the peer's share is full"
        );
        assert!(!limits.admit(&[manifest(100, 1, 100)], 0), "malformed");
        assert!(!limits.admit(&[mib(1)], u64::MAX), "no overflow");
    }

    #[test]
    fn manifests_outside_the_bounds_are_refused() {
        assert!(manifest(CHUNK_SIZE as u64 * 2, CHUNK_SIZE, 2).is_well_formed());
        assert!(manifest(0, MIN_CHUNK_SIZE, 0).is_well_formed());
        // A tiny chunk size would mean one request per byte.
        assert!(!manifest(100, 1, 100).is_well_formed());
        assert!(!manifest(100, MIN_CHUNK_SIZE - 1, 1).is_well_formed());
        assert!(!manifest(100, 0, 0).is_well_formed());
        assert!(!manifest(100, MAX_CHUNK_SIZE + 1, 1).is_well_formed());
        // A hash list that disagrees with the size, either way.
        assert!(!manifest(CHUNK_SIZE as u64 * 2, CHUNK_SIZE, 1).is_well_formed());
        assert!(!manifest(CHUNK_SIZE as u64 * 2, CHUNK_SIZE, 3).is_well_formed());
        assert!(!manifest(HARD_MAX_SIZE + 1, MAX_CHUNK_SIZE, 0).is_well_formed());
    }
}
