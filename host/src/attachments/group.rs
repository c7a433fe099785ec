//! Fetched chunks on their way to disk, a group at a time: checked against the manifest together
//! (BLAKE2b four chunks at once, with the machine's SIMD), written at their offsets, synced with
//! one `fdatasync` per file, and recorded in one transaction. A chunk counts as held only once
//! recorded, and it is recorded only after its sync, so a crash loses at most the chunks of the
//! groups not yet recorded, and those are fetched again.
//!
//! A group lands while the window goes on filling, but no new chunk is asked for while the next
//! group is already full ([`Group::full`]): memory stays within two groups and a window, whatever
//! the file size and however slow the disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{AttachmentRef, chunk_offset};
use crate::store::Store;

/// A group lands once this many bytes wait, ...
pub(super) const GROUP_BYTES: u64 = 16 * 1024 * 1024;
/// ... once its oldest chunk has waited this long, or as soon as no chunk is in flight.
pub(super) const GROUP_DELAY: Duration = Duration::from_millis(100);

/// A chunk as it came from the sender, not yet checked.
pub(super) struct Fetched {
    pub(super) chunk: Chunk,
    pub(super) attachment: Arc<AttachmentRef>,
    pub(super) path: PathBuf,
    pub(super) data: Vec<u8>,
}

/// Which chunk, from whom.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    pub(super) id: String,
    pub(super) index: u32,
    pub(super) peer: PeerId,
    /// The attachment's size.
    pub(super) size: u64,
}

/// The chunks waiting to land.
#[derive(Default)]
pub(super) struct Group {
    chunks: Vec<Fetched>,
    bytes: u64,
    since: Option<Instant>,
}

impl Group {
    pub(super) fn push(&mut self, fetched: Fetched) {
        self.bytes += fetched.data.len() as u64;
        self.since.get_or_insert_with(Instant::now);
        self.chunks.push(fetched);
    }

    /// Whether the group should land now, with `in_flight` chunks still coming.
    pub(super) fn due(&self, in_flight: usize) -> bool {
        !self.chunks.is_empty()
            && (in_flight == 0
                || self.bytes >= GROUP_BYTES
                || self.since.is_some_and(|t| t.elapsed() >= GROUP_DELAY))
    }

    /// Whether the group holds enough to land at once.
    pub(super) fn full(&self) -> bool {
        self.bytes >= GROUP_BYTES
    }

    /// How long until the group is due by its age alone.
    pub(super) fn due_in(&self) -> Option<Duration> {
        self.since.map(|t| GROUP_DELAY.saturating_sub(t.elapsed()))
    }

    pub(super) fn take(&mut self) -> Vec<Fetched> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.chunks)
    }
}

/// What landing a group did.
pub(super) struct Landed {
    /// Chunks now held (written, synced, recorded), with their sizes in bytes.
    pub(super) held: Vec<(Chunk, u64)>,
    /// Chunks that do not match the manifest, with why.
    pub(super) bad: Vec<(Chunk, String)>,
    /// Chunks that could not be written, synced or recorded (fetched again), with why.
    pub(super) failed: Vec<(Chunk, String)>,
    /// Attachments held whole now.
    pub(super) complete: Vec<String>,
}

/// Checks, writes, syncs and records `chunks`.
pub(super) async fn land(store: Store, chunks: Vec<Fetched>) -> Landed {
    let keys: Vec<Chunk> = chunks.iter().map(|f| f.chunk.clone()).collect();
    let written = tokio::task::spawn_blocking(move || write_group(chunks)).await;
    let (good, bad) = match written {
        Ok(Ok(sorted)) => sorted,
        Ok(Err(e)) => return failed(keys, format!("cannot write: {e}")),
        Err(e) => return failed(keys, e.to_string()),
    };
    if good.is_empty() {
        return Landed {
            held: Vec::new(),
            bad,
            failed: Vec::new(),
            complete: Vec::new(),
        };
    }
    let ids: Vec<(String, u32)> = good.iter().map(|(c, _)| (c.id.clone(), c.index)).collect();
    match store.call(move |db| db.record_chunks(&ids)).await {
        Ok(complete) => Landed {
            held: good,
            bad,
            failed: Vec::new(),
            complete,
        },
        Err(e) => Landed {
            held: Vec::new(),
            bad,
            failed: good
                .into_iter()
                .map(|(c, _)| (c, format!("cannot record: {e}")))
                .collect(),
            complete: Vec::new(),
        },
    }
}

fn failed(chunks: Vec<Chunk>, why: String) -> Landed {
    Landed {
        held: Vec::new(),
        bad: Vec::new(),
        failed: chunks.into_iter().map(|c| (c, why.clone())).collect(),
        complete: Vec::new(),
    }
}

/// The good and the bad chunks of a group.
type Sorted = (Vec<(Chunk, u64)>, Vec<(Chunk, String)>);

/// On the blocking pool: checks every chunk's hash, writes the good ones, then syncs each file
/// (and directory) once and lets its cached pages go.
fn write_group(chunks: Vec<Fetched>) -> std::io::Result<Sorted> {
    use std::os::unix::fs::FileExt;
    let hashes = hash_all(&chunks);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut files: Vec<(PathBuf, std::fs::File)> = Vec::new();
    for (f, hash) in chunks.into_iter().zip(hashes) {
        if f.attachment.chunk_hash(f.chunk.index) != Some(&hash[..]) {
            let why = format!("chunk {} does not match the manifest", f.chunk.index);
            bad.push((f.chunk, why));
            continue;
        }
        let slot = match files.iter().position(|(p, _)| *p == f.path) {
            Some(i) => i,
            None => {
                if let Some(dir) = f.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&f.path)?;
                files.push((f.path.clone(), file));
                files.len() - 1
            }
        };
        let offset = chunk_offset(f.chunk.index, f.attachment.chunk_size);
        files[slot].1.write_all_at(&f.data, offset)?;
        good.push((f.chunk, f.data.len() as u64));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (path, file) in &files {
        file.sync_data()?;
        super::drop_cached(file, 0, 0);
        if let Some(dir) = path.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
            dirs.push(dir.to_owned());
        }
    }
    // A file created by this group must not vanish with its directory entry after a crash.
    for dir in dirs {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((good, bad))
}

/// The BLAKE2b-256 of each chunk's data, four at a time where the machine can.
fn hash_all(chunks: &[Fetched]) -> Vec<[u8; 32]> {
    use blake2b_simd::many::{HashManyJob, hash_many};
    let params = blake2b_simd::Params::new().hash_length(32).to_owned();
    let mut jobs: Vec<HashManyJob> = chunks
        .iter()
        .map(|f| HashManyJob::new(&params, &f.data))
        .collect();
    hash_many(jobs.iter_mut());
    jobs.iter()
        .map(|j| {
            let mut out = [0u8; 32];
            out.copy_from_slice(j.to_hash().as_bytes());
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_four_at_a_time_gives_the_hash_of_each() {
        let attachment = Arc::new(AttachmentRef {
            id: [1; 16],
            name: "f".into(),
            size: 0,
            chunk_size: super::super::MIN_CHUNK_SIZE,
            key: [0; 32],
            chunk_hashes: Vec::new(),
            file_hash: [0; 32],
        });
        let chunks: Vec<Fetched> = (0..7usize)
            .map(|i| Fetched {
                chunk: Chunk {
                    id: "a".into(),
                    index: i as u32,
                    peer: PeerId::random(),
                    size: 0,
                },
                attachment: attachment.clone(),
                path: PathBuf::new(),
                data: (0..i * 1000 + 3).map(|b| (b * 31 + i) as u8).collect(),
            })
            .collect();
        let together = hash_all(&chunks);
        for (f, h) in chunks.iter().zip(together) {
            assert_eq!(h, super::super::hash(&f.data));
        }
    }
}
