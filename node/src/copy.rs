//! Model files copied between the swarm's nodes, so that an office pulls a
//! model from the internet once.
//!
//! A node's record lists the sha256 of each model file it holds (and the
//! hub repository and file it came from). A pull first asks the hub what
//! the file's sha256 is; when peers hold that content, it is copied from
//! them over the swarm's connections (`/rbee/copy/1`: encrypted and
//! authenticated by the swarm key like every stream of the swarm) in 8 MiB
//! chunks, from up to four peers at once, each taking the next chunk when
//! it is done with one. What arrived is kept (`downloads/peers/<sha>.part`
//! and a `.have` list of its chunks), so a copy that stops resumes. The file
//! is catalogued only once its sha256 is the hub's; otherwise it is thrown
//! away and the pull goes to the hub, as it does when no peer has the file
//! or every peer failed.
//!
//! On the wire: the asker writes an [`Ask`] frame (sha256, offset, length),
//! the holder answers with an [`Answer`] frame and then, when it sends,
//! exactly that many raw bytes; the asker may ask again on the same stream.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use rbee_engine::store::{Copied, Progress, ProgressFn};
use rbee_swarm::{NodeId, frame};
use serde::{Deserialize, Serialize};

use crate::service::Service;

/// The copy stream's protocol name.
pub const COPY_PROTOCOL: &str = "/rbee/copy/1";

/// What one ask may cover, and the unit a copy resumes by.
pub const CHUNK: u64 = 8 << 20;
/// Pieces a holder reads from disk and writes to the stream.
const PIECE: usize = 1 << 20;
/// Peers copied from at once.
const MAX_SOURCES: usize = 4;
/// Chunks asked of one peer at once, each on a stream of its own: one
/// stream's flow-control window cannot fill a link whose queue holds a few
/// milliseconds.
const STREAMS_PER_PEER: usize = 4;
/// Copies a node sends at once (more asks wait their turn).
const MAX_SENDING: usize = 16;
/// A chunk that takes longer than this drops its peer from the copy (a
/// stopped or overloaded machine); another peer or the hub takes over.
const CHUNK_WAIT: Duration = Duration::from_secs(30);
/// Opening a stream to a holder.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// One ask: `len` bytes from `offset` of the file with this sha256.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    sha256: String,
    offset: u64,
    len: u64,
}

/// A holder's answer to an [`Ask`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Answer {
    /// `len` raw bytes follow.
    Bytes { len: u64 },
    /// Not sent, and why.
    Refused { message: String },
}

/// A peer that holds the file.
#[derive(Debug, Clone)]
pub struct Holder {
    pub node_id: NodeId,
    pub hostname: String,
}

/// Sends model files to peers that ask, until the node stops.
///
/// # Errors
/// When something already accepts the protocol.
pub fn serve(state: Service, client: &rbee_swarm::Client) -> anyhow::Result<()> {
    let mut incoming = client.accept(COPY_PROTOCOL)?;
    let (tasks, stop) = (state.tasks.clone(), state.background.clone());
    let room = Arc::new(tokio::sync::Semaphore::new(MAX_SENDING));
    tasks.clone().spawn(async move {
        while let Some((peer, stream)) = crate::dispatch::next_stream(&mut incoming, &stop).await {
            let (state, room, stop) = (state.clone(), room.clone(), stop.clone());
            tasks.spawn(async move {
                let Ok(_permit) = room.acquire_owned().await else { return };
                tokio::select! {
                    () = send(&state, stream) => {}
                    () = stop.cancelled() => {}
                }
                tracing::debug!(%peer, "copy stream ended");
            });
        }
    });
    Ok(())
}

/// Answers one peer's asks until it closes the stream or asks wrongly.
async fn send(state: &Service, mut stream: rbee_swarm::Stream) {
    while let Ok(Some(ask)) = frame::read::<_, Ask>(&mut stream).await {
        let entry = state.engine.store().by_sha256(&ask.sha256).ok().flatten();
        let refused = match &entry {
            None => Some("this node has no such file".to_string()),
            Some(e) if ask.len == 0 || ask.len > CHUNK || ask.offset.checked_add(ask.len).is_none_or(|end| end > e.size) => {
                Some(format!("{}+{} is not a range of at most {CHUNK} bytes within {} bytes", ask.offset, ask.len, e.size))
            }
            Some(_) => None,
        };
        if let Some(message) = refused {
            let _ = frame::write(&mut stream, &Answer::Refused { message }).await;
            return;
        }
        let path = entry.map(|e| e.path).unwrap_or_default();
        if frame::write(&mut stream, &Answer::Bytes { len: ask.len }).await.is_err() {
            return;
        }
        // The disk is read on a blocking thread a few pieces ahead of the
        // network.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let (offset, len) = (ask.offset, ask.len);
        tokio::task::spawn_blocking(move || read_range(&path, offset, len, &tx));
        let mut sent = 0u64;
        while let Some(piece) = rx.recv().await {
            let Ok(piece) = piece else { return };
            if stream.write_all(&piece).await.is_err() {
                return;
            }
            sent += piece.len() as u64;
            state.metrics.copy_sent_bytes.inc_by(piece.len() as u64);
        }
        if sent != len || stream.flush().await.is_err() {
            return;
        }
    }
}

/// Reads `len` bytes from `offset` of `path` in pieces into `tx` (an error
/// ends it; so does the receiver going away).
fn read_range(path: &Path, offset: u64, len: u64, tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).unwrap_or(PIECE).min(PIECE);
        let mut buf = vec![0u8; n];
        let piece = read_exact_at(&file, &mut buf, offset + at).map(|()| buf);
        let failed = piece.is_err();
        if tx.blocking_send(piece).is_err() || failed {
            return;
        }
        at += n as u64;
    }
}

/// What the copy has so far: which chunks, and who sent how much.
struct Progressing {
    queue: VecDeque<u64>,
    have: Vec<u8>,
    done: u64,
    /// Bytes each holder sent, by its place in the holders' list.
    sent_by: Vec<u64>,
    errors: Vec<String>,
    /// Tells the hasher which chunk arrived.
    arrived: std::sync::mpsc::SyncSender<u64>,
    /// This node could not write what arrived (its disk is full): the copy
    /// stops, and what it wrote is removed.
    local_error: Option<String>,
}

/// Why a chunk did not arrive.
enum ChunkError {
    /// The peer refused, broke off or sent something else.
    Peer(String),
    /// This node could not write it.
    Local(String),
}

/// Copies the file with `sha256` (`size` bytes) from `holders` into `part`,
/// resuming what an earlier copy left there. Returns who sent it, how fast,
/// and the sha256 of what arrived (hashed as it came), or why it could not
/// be finished (what arrived stays, to resume). The caller compares the
/// hashes.
///
/// # Errors
/// A sentence naming each peer that failed and why.
pub async fn fetch(
    client: &rbee_swarm::Client,
    metrics: &crate::metrics::Metrics,
    holders: &[Holder],
    sha256: &str,
    size: u64,
    part: &Path,
    progress: Option<ProgressFn>,
) -> Result<Fetched, String> {
    let chunks = size.div_ceil(CHUNK);
    let have_path = have_path(part);
    let (file, have) = prepare(part, &have_path, size, chunks).map_err(|e| format!("preparing {}: {e}", part.display()))?;
    let file = Arc::new(file);
    let already: u64 = (0..chunks).filter(|&i| have[i as usize] == 1).map(|i| chunk_len(i, size)).sum();
    let queue = (0..chunks).filter(|&i| have[i as usize] == 0).collect();
    let holders = &holders[..holders.len().min(MAX_SOURCES)];
    // The file is hashed as it arrives, chunk by chunk in order, read back
    // from the page cache: the check costs little more than the last chunk.
    // One message per chunk at most: sends never wait.
    let (arrived, hashing) = std::sync::mpsc::sync_channel(usize::try_from(chunks).unwrap_or(usize::MAX));
    let hasher = {
        let (file, have) = (file.clone(), have.clone());
        tokio::task::spawn_blocking(move || hash_in_order(&file, size, have, &hashing))
    };
    let state = Mutex::new(Progressing { queue, have, done: already, sent_by: vec![0; holders.len()], errors: Vec::new(), arrived, local_error: None });
    if let Some(p) = &progress {
        p(Progress::Started { total: size, already });
    }
    let start = Instant::now();
    let mut healthy: Vec<usize> = (0..holders.len()).flat_map(|k| std::iter::repeat_n(k, STREAMS_PER_PEER)).collect();
    // A chunk given back by a peer that failed after the others had run out
    // of work is picked up by another round of those still healthy.
    let going = |st: &Progressing| !st.queue.is_empty() && st.local_error.is_none();
    while going(&state.lock().expect("copy lock")) && !healthy.is_empty() {
        let worked = futures_util::future::join_all(
            healthy.iter().map(|&k| from_one(client, metrics, holders, k, sha256, size, &file, &have_path, &state, progress.as_ref())),
        )
        .await;
        healthy = healthy.into_iter().zip(worked).filter_map(|(h, ok)| ok.then_some(h)).collect();
    }
    let st = state.into_inner().expect("copy lock");
    drop(st.arrived);
    let hashed = hasher.await.map_err(|e| e.to_string())?;
    if let Some(e) = st.local_error {
        discard(part);
        return Err(e);
    }
    if !st.queue.is_empty() {
        return Err(st.errors.join("; "));
    }
    let sha256 = hashed.map_err(|e| format!("reading the copy back: {e}"))?;
    let _ = std::fs::remove_file(&have_path);
    let mut from: Vec<(String, u64)> = holders.iter().zip(st.sent_by).filter(|(_, n)| *n > 0).map(|(h, n)| (h.hostname.clone(), n)).collect();
    from.sort_by_key(|f| std::cmp::Reverse(f.1));
    let copied = size - already;
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let bytes_per_s = (copied as f64 / secs) as u64;
    Ok(Fetched { copied: Copied { from: from.into_iter().map(|(name, _)| name).collect(), bytes_per_s }, sha256 })
}

/// A finished copy: who sent it and how fast, and the sha256 of what arrived.
#[derive(Debug)]
pub struct Fetched {
    pub copied: Copied,
    pub sha256: String,
}

/// Hashes the file's chunks in order as `arrived` says they are in place
/// (those in `have` already are); the sha256 once all are, or an error
/// when the copy stops first (the sender goes away) or the file cannot be read.
fn hash_in_order(file: &std::fs::File, size: u64, mut have: Vec<u8>, arrived: &std::sync::mpsc::Receiver<u64>) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; usize::try_from(CHUNK).map_err(std::io::Error::other)?];
    let mut next = 0usize;
    while next < have.len() {
        if have[next] == 1 {
            let len = usize::try_from(chunk_len(next as u64, size)).map_err(std::io::Error::other)?;
            read_exact_at(file, &mut buf[..len], next as u64 * CHUNK)?;
            h.update(&buf[..len]);
            next += 1;
            continue;
        }
        match arrived.recv() {
            Ok(i) => have[usize::try_from(i).map_err(std::io::Error::other)?] = 1,
            Err(_) => return Err(std::io::Error::other("the copy stopped")),
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Takes chunks from the queue and fetches them from `holders[k]` until none
/// are left (true) or the peer fails (false: its chunk goes back).
#[allow(clippy::too_many_arguments)]
async fn from_one(
    client: &rbee_swarm::Client,
    metrics: &crate::metrics::Metrics,
    holders: &[Holder],
    k: usize,
    sha256: &str,
    size: u64,
    file: &Arc<std::fs::File>,
    have_path: &Path,
    state: &Mutex<Progressing>,
    progress: Option<&ProgressFn>,
) -> bool {
    let holder = &holders[k];
    let fail = |why: String| {
        state.lock().expect("copy lock").errors.push(format!("{}: {why}", holder.hostname));
        false
    };
    let mut stream = match tokio::time::timeout(OPEN_WAIT, client.open(&holder.node_id, COPY_PROTOCOL)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(e.to_string()),
        Err(_) => return fail("no answer".into()),
    };
    loop {
        let Some(i) = state.lock().expect("copy lock").queue.pop_front() else { return true };
        let len = chunk_len(i, size);
        let got = tokio::time::timeout(CHUNK_WAIT, chunk(&mut stream, sha256, i * CHUNK, len, file, metrics)).await;
        let why = match got {
            Ok(Ok(())) => None,
            Ok(Err(ChunkError::Peer(e))) => Some(e),
            Ok(Err(ChunkError::Local(e))) => {
                state.lock().expect("copy lock").local_error = Some(e);
                return false;
            }
            Err(_) => Some(format!("sent less than {len} bytes in {}s", CHUNK_WAIT.as_secs())),
        };
        let mut st = state.lock().expect("copy lock");
        if let Some(why) = why {
            st.queue.push_front(i);
            drop(st);
            return fail(why);
        }
        st.have[i as usize] = 1;
        st.done += len;
        st.sent_by[k] += len;
        let _ = st.arrived.send(i);
        // Written after the chunk: a crash in between only costs the chunk again.
        let _ = std::fs::write(have_path, &st.have);
        if let Some(p) = progress {
            p(Progress::Advanced { done: st.done });
        }
    }
}

/// Asks for one chunk on `stream` and writes it at its place in `file`.
async fn chunk(
    stream: &mut rbee_swarm::Stream,
    sha256: &str,
    offset: u64,
    len: u64,
    file: &Arc<std::fs::File>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ChunkError> {
    let peer = |e: String| ChunkError::Peer(e);
    frame::write(stream, &Ask { sha256: sha256.to_string(), offset, len }).await.map_err(|e| peer(e.to_string()))?;
    match frame::read::<_, Answer>(stream).await {
        Ok(Some(Answer::Bytes { len: n })) if n == len => {}
        Ok(Some(Answer::Bytes { len: n })) => return Err(peer(format!("offered {n} bytes for a chunk of {len}"))),
        Ok(Some(Answer::Refused { message })) => return Err(peer(message)),
        Ok(None) => return Err(peer("closed the stream".into())),
        Err(e) => return Err(peer(e.to_string())),
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| peer(e.to_string()))?];
    stream.read_exact(&mut buf).await.map_err(|e| peer(format!("cut off: {e}")))?;
    metrics.copy_received_bytes.inc_by(len);
    let file = file.clone();
    tokio::task::spawn_blocking(move || write_all_at(&file, &buf, offset))
        .await
        .map_err(|e| ChunkError::Local(e.to_string()))?
        .map_err(|e| ChunkError::Local(format!("writing the copy: {e}")))
}

fn chunk_len(i: u64, size: u64) -> u64 {
    CHUNK.min(size - i * CHUNK)
}

fn have_path(part: &Path) -> PathBuf {
    part.with_extension("have")
}

/// Opens (or starts) the partial file at its full size, with its list of
/// chunks had: one byte per chunk, 1 when it arrived. A list that does not
/// match the file starts the copy over.
fn prepare(part: &Path, have_path: &Path, size: u64, chunks: u64) -> std::io::Result<(std::fs::File, Vec<u8>)> {
    if let Some(dir) = part.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(part)?;
    let n = usize::try_from(chunks).map_err(std::io::Error::other)?;
    let have = std::fs::read(have_path).ok().filter(|h| h.len() == n && h.iter().all(|&b| b <= 1) && file.metadata().is_ok_and(|m| m.len() == size));
    let have = match have {
        Some(h) => h,
        None => {
            file.set_len(0)?;
            file.set_len(size)?;
            vec![0u8; n]
        }
    };
    Ok((file, have))
}

/// Removes what a copy left (after the pull finished some other way).
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(have_path(part));
}

#[cfg(unix)]
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(unix)]
fn write_all_at(f: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(f, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(f: &std::fs::File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_write(f, buf, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
