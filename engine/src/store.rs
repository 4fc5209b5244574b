//! The model store: GGUF files in `<data dir>/models` and a SQLite catalog.
//!
//! Each model file has a JSON sidecar (`<id>.gguf.json`) holding its catalog
//! entry, so the catalog is an index that can always be rebuilt: when it is
//! missing or corrupt, [`Store::open`] rebuilds it from the files and
//! sidecars and warns; nothing is lost.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::Config;

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Imported from a local file.
    Import { original: String },
    /// Pulled from a Hugging Face repository (or copied from peers that had
    /// the same file, checked against the hub's sha256).
    HuggingFace {
        repo: String,
        file: String,
        revision: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copied: Option<Copied>,
    },
}

/// A file of a Hugging Face repository, by name.
#[derive(Debug, Clone, Copy)]
pub struct HubName<'a> {
    pub repo: &'a str,
    pub file: &'a str,
    pub revision: &'a str,
}

/// How a model file came over the LAN instead of from the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    /// The peers' host names, in the order they sent most.
    pub from: Vec<String>,
    /// The copy's speed, bytes per second.
    pub bytes_per_s: u64,
}

/// One model in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub source: Source,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub architecture: String,
    pub quantization: String,
    pub context_length: u64,
    /// Seconds since the Unix epoch.
    pub added_at: u64,
}

/// Progress of an import or a pull, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Started { total: u64, already: u64 },
    Advanced { done: u64 },
    Finished,
}

/// Receives [`Progress`] updates.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// The catalog and the model files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
    warnings: Vec<String>,
    /// Held while a checked file is given its id and moved into place, so
    /// two imports (or pulls) at once never pick the same id or both add
    /// the same file.
    placing: Mutex<()>,
}

/// Prefix of a file being imported into `models/`; locked while in use.
pub const IMPORT_PREFIX: &str = ".import-";
/// Prefix of a directory holding an upload the node is receiving.
pub const UPLOAD_PREFIX: &str = ".upload-";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    architecture TEXT NOT NULL,
    quantization TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    added_at INTEGER NOT NULL
)";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    /// Opens the store in `data_dir`, creating it, and rebuilding the catalog
    /// from the model files if it is missing, corrupt or out of date.
    ///
    /// # Errors
    /// When the directory cannot be created or a fresh catalog cannot be written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let models = data_dir.join("models");
        std::fs::create_dir_all(&models).map_err(Error::io(format!("creating {}", models.display())))?;
        let db = data_dir.join("catalog.sqlite");
        let existed = db.exists();
        let mut warnings = Vec::new();
        let conn = match Self::open_catalog(&db) {
            Ok(c) => c,
            Err(e) => {
                let aside = data_dir.join(format!("catalog.sqlite.corrupt-{}", now()));
                std::fs::rename(&db, &aside).map_err(Error::io("moving the corrupt catalog aside"))?;
                for ext in ["-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(data_dir.join(format!("catalog.sqlite{ext}")));
                }
                warnings.push(format!("the model catalog was unreadable ({e}); moved it to {} and rebuilt it from the model files", aside.display()));
                Self::open_catalog(&db)?
            }
        };
        let swept = sweep(&models);
        if swept > 0 {
            warnings.push(format!("removed {swept} unfinished imports or uploads left by an earlier run"));
        }
        let mut store = Self { dir: data_dir.to_path_buf(), conn: Mutex::new(conn), warnings, placing: Mutex::new(()) };
        let added = store.reconcile()?;
        if !existed && added > 0 {
            store.warnings.push(format!("the model catalog was missing; rebuilt it from {added} model files"));
        }
        Ok(store)
    }

    fn open_catalog(db: &Path) -> Result<Connection> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(Error::Io { context: "catalog integrity check".into(), source: std::io::Error::other(ok) });
        }
        conn.query_row("SELECT count(*) FROM models", [], |r| r.get::<_, i64>(0))?;
        Ok(conn)
    }

    /// Warnings from opening (a rebuilt catalog, files that went missing),
    /// for the caller to show: the store does not log them itself.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn models_dir(&self) -> PathBuf {
        self.dir.join("models")
    }

    /// Brings the catalog in line with the files: adds files it lacks, drops
    /// rows whose file is gone. Returns how many entries were added.
    fn reconcile(&mut self) -> Result<usize> {
        let known: Vec<Entry> = self.list()?;
        let mut added = 0;
        for e in &known {
            if !e.path.exists() {
                self.delete_row(&e.id)?;
                self.warnings.push(format!("model `{}` was removed from the catalog: its file {} is gone", e.id, e.path.display()));
            }
        }
        let dir = self.models_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("listing {}", dir.display())))?
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        files.sort();
        for path in files {
            if known.iter().any(|e| e.path == path && e.path.exists()) {
                continue;
            }
            let sidecar = sidecar_of(&path);
            let entry = match std::fs::read(&sidecar).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
                Some(mut e) => {
                    e.path = path.clone();
                    e
                }
                None => {
                    let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    match describe(&path, &id, Source::Import { original: path.display().to_string() }, None) {
                        Ok(e) => {
                            write_sidecar(&e)?;
                            e
                        }
                        Err(err) => {
                            self.warnings.push(format!("skipping {}: {err}", path.display()));
                            continue;
                        }
                    }
                }
            };
            self.insert(&entry)?;
            added += 1;
        }
        Ok(added)
    }

    fn insert(&self, e: &Entry) -> Result<()> {
        let source = serde_json::to_string(&e.source).expect("Source serializes");
        self.conn.lock().expect("catalog lock").execute(
            "INSERT OR REPLACE INTO models (id, source, path, size, sha256, architecture, quantization, context_length, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                e.id,
                source,
                e.path.to_string_lossy(),
                e.size as i64,
                e.sha256,
                e.architecture,
                e.quantization,
                e.context_length as i64,
                e.added_at as i64
            ],
        )?;
        Ok(())
    }

    fn delete_row(&self, id: &str) -> Result<()> {
        self.conn.lock().expect("catalog lock").execute("DELETE FROM models WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every model, oldest first.
    ///
    /// # Errors
    /// On a database failure.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let conn = self.conn.lock().expect("catalog lock");
        let mut stmt =
            conn.prepare("SELECT id, source, path, size, sha256, architecture, quantization, context_length, added_at FROM models ORDER BY added_at, id")?;
        let rows = stmt.query_map([], row_to_entry)?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// The model called `name`: an exact id, or the only id starting with it.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] when none (or more than one) matches.
    pub fn get(&self, name: &str) -> Result<Entry> {
        let conn = self.conn.lock().expect("catalog lock");
        let exact = conn
            .query_row(
                "SELECT id, source, path, size, sha256, architecture, quantization, context_length, added_at FROM models WHERE id = ?1",
                params![name],
                row_to_entry,
            )
            .optional()?;
        drop(conn);
        if let Some(e) = exact {
            return Ok(e);
        }
        let matches: Vec<Entry> = self.list()?.into_iter().filter(|e| e.id.starts_with(name)).collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(Error::ModelNotFound(name.to_string())),
        }
    }

    /// Copies the GGUF at `path` into the store after checking it loads.
    /// Importing the same file twice returns the existing entry.
    ///
    /// # Errors
    /// [`Error::InvalidModel`] or [`Error::UnsupportedArchitecture`] for a file
    /// the engine cannot run; I/O errors.
    pub fn import(&self, path: &Path, progress: Option<ProgressFn>) -> Result<Entry> {
        let gguf = Gguf::open(path)?;
        Config::from_gguf(&gguf)?;
        drop(gguf);
        // A name of its own (two imports at once must not share one), locked
        // while in use so that a later start can tell a crash's leftover from
        // an import still running, and removed if this fails.
        let tmp = tempfile::Builder::new().prefix(IMPORT_PREFIX).tempfile_in(self.models_dir()).map_err(Error::io("creating a file in the model store"))?;
        tmp.as_file().lock().map_err(Error::io("locking the import's file"))?;
        let sha = copy_hashing(path, tmp.as_file(), progress.as_ref())?;
        let _placing = self.placing.lock().expect("placing lock");
        if let Some(existing) = self.by_sha256(&sha)? {
            return Ok(existing);
        }
        let id = self.free_id(&id_for_file(&path.to_string_lossy()))?;
        let dest = self.models_dir().join(format!("{id}.gguf"));
        tmp.persist_noclobber(&dest).map_err(|e| Error::Io { context: "moving the imported file into place".into(), source: e.error })?;
        let entry = describe(&dest, &id, Source::Import { original: path.display().to_string() }, Some(sha))?;
        write_sidecar(&entry)?;
        self.insert(&entry)?;
        Ok(entry)
    }

    /// Downloads `file` from the Hugging Face repository `repo` at `endpoint`
    /// (`https://huggingface.co` normally). An interrupted download resumes
    /// where it stopped; the file's sha256 is checked against the hub's ETag
    /// when the hub gives one (it does for large files).
    ///
    /// # Errors
    /// [`Error::Download`] when the hub cannot be reached or refuses;
    /// [`Error::Checksum`] on a corrupted transfer; model errors as for
    /// [`import`](Self::import).
    pub async fn pull(&self, endpoint: &str, repo: &str, file: &str, revision: &str, progress: Option<ProgressFn>) -> Result<Entry> {
        check_hub_names(repo, file, revision)?;
        let pointer = hub_download(self.dir.join("downloads"), endpoint, repo, file, revision, progress.clone()).await?;
        let blob = std::fs::canonicalize(&pointer).map_err(Error::io("resolving the downloaded file"))?;
        // Gigabytes of reading: off the async threads.
        let sha = {
            let blob = blob.clone();
            tokio::task::spawn_blocking(move || hash_file(&blob))
                .await
                .map_err(|e| Error::Io { context: "hashing the download".into(), source: std::io::Error::other(e) })??
        };
        // For LFS files the hub's ETag is the sha256 of the content.
        let etag = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()) && etag != sha {
            let _ = std::fs::remove_file(&blob);
            let _ = std::fs::remove_file(&pointer);
            return Err(Error::Checksum { path: PathBuf::from(format!("{repo}/{file}")), expected: etag, actual: sha });
        }
        let source = Source::HuggingFace { repo: repo.into(), file: file.into(), revision: revision.into(), copied: None };
        let entry = self.place(&blob, file, source, sha)?;
        let _ = std::fs::remove_file(&pointer);
        if let Some(p) = progress {
            p(Progress::Finished);
        }
        Ok(entry)
    }

    /// Where a copy of the file with this sha256 from peers is written
    /// while it arrives (and stays, to resume, when it stops).
    pub fn partial_copy(&self, sha256: &str) -> PathBuf {
        self.dir.join("downloads").join("peers").join(format!("{}.part", sanitize(sha256)))
    }

    /// Catalogs a copy of a hub file that peers sent to `part`, whose
    /// content hashed to `sha` as it arrived — only when that is the
    /// `expected` sha256 (the hub's, or the one the peers' records gave when
    /// the hub could not be asked) and the file loads.
    ///
    /// # Errors
    /// [`Error::Checksum`] when the content differs (the copy is removed);
    /// model errors as for [`import`](Self::import).
    pub fn adopt_copy(&self, part: &Path, sha: String, expected: &str, hub: HubName<'_>, copied: Copied) -> Result<Entry> {
        let HubName { repo, file, revision } = hub;
        check_hub_names(repo, file, revision)?;
        if sha != expected {
            let _ = std::fs::remove_file(part);
            return Err(Error::Checksum { path: PathBuf::from(format!("{repo}/{file}")), expected: expected.into(), actual: sha });
        }
        let source = Source::HuggingFace { repo: repo.into(), file: file.into(), revision: revision.into(), copied: Some(copied) };
        self.place(part, file, source, sha)
    }

    /// The model whose file has this sha256, if the store has one.
    ///
    /// # Errors
    /// On a database failure.
    pub fn by_sha256(&self, sha256: &str) -> Result<Option<Entry>> {
        Ok(self.list()?.into_iter().find(|e| e.sha256 == sha256))
    }

    /// Moves a downloaded file whose content was checked (`sha`) into the
    /// store under an id made from `file`'s name, unless the store has the
    /// same content already (that entry is returned).
    fn place(&self, blob: &Path, file: &str, source: Source, sha: String) -> Result<Entry> {
        let gguf = Gguf::open(blob)?;
        Config::from_gguf(&gguf)?;
        drop(gguf);
        let _placing = self.placing.lock().expect("placing lock");
        if let Some(existing) = self.by_sha256(&sha)? {
            let _ = std::fs::remove_file(blob);
            return Ok(existing);
        }
        let id = self.free_id(&id_for_file(file))?;
        let dest = self.models_dir().join(format!("{id}.gguf"));
        std::fs::rename(blob, &dest).map_err(Error::io("moving the download into place"))?;
        let entry = describe(&dest, &id, source, Some(sha))?;
        write_sidecar(&entry)?;
        self.insert(&entry)?;
        Ok(entry)
    }

    /// Deletes a model's file and catalog entry.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] when there is no such model.
    pub fn remove(&self, name: &str) -> Result<Entry> {
        let e = self.get(name)?;
        for p in [e.path.clone(), sidecar_of(&e.path)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::Io { context: format!("removing {}", p.display()), source: err }),
            }
        }
        self.delete_row(&e.id)?;
        Ok(e)
    }

    fn free_id(&self, base: &str) -> Result<String> {
        let taken: Vec<String> = self.list()?.into_iter().map(|e| e.id).collect();
        let mut id = base.to_string();
        let mut n = 2;
        while taken.contains(&id) || self.models_dir().join(format!("{id}.gguf")).exists() {
            id = format!("{base}-{n}");
            n += 1;
        }
        Ok(id)
    }
}

/// Checks the names of a pull before they reach hf-hub, which joins them
/// into paths of the download cache (`refs/{revision}`, `snapshots/…/{file}`)
/// and into URLs: only plain path segments, no `..`, nothing hidden.
///
/// # Errors
/// [`Error::InvalidName`] naming the field and what a good one looks like.
pub fn check_hub_names(repo: &str, file: &str, revision: &str) -> Result<()> {
    fn plain(s: &str, max: usize, extra: &str) -> bool {
        !s.is_empty()
            && s.len() <= max
            && s.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.'))
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c) || extra.contains(c))
    }
    let bad = |field: &'static str, message: String| Err(Error::InvalidName { field, message });
    if !(plain(repo, 200, "") && repo.split('/').count() == 2) {
        return bad("repo", format!("{repo:?} is not a Hugging Face repository id such as unsloth/gemma-3-270m-it-GGUF"));
    }
    if !plain(file, 500, " +()[],=@") {
        return bad("file", format!("{file:?} is not a file path in the repository, such as gemma-3-270m-it-Q4_K_M.gguf"));
    }
    if !file.to_ascii_lowercase().ends_with(".gguf") {
        return bad("file", format!("{file:?} is not a GGUF file: rbee runs .gguf models"));
    }
    if !plain(revision, 200, "") {
        return bad("revision", format!("{revision:?} is not a branch, tag or commit of the repository, such as main"));
    }
    Ok(())
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let source: String = r.get(1)?;
    let path: String = r.get(2)?;
    Ok(Entry {
        id: r.get(0)?,
        source: serde_json::from_str(&source).unwrap_or(Source::Import { original: String::new() }),
        path: PathBuf::from(path),
        size: r.get::<_, i64>(3)? as u64,
        sha256: r.get(4)?,
        architecture: r.get(5)?,
        quantization: r.get(6)?,
        context_length: r.get::<_, i64>(7)? as u64,
        added_at: r.get::<_, i64>(8)? as u64,
    })
}

fn sidecar_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn write_sidecar(e: &Entry) -> Result<()> {
    let path = sidecar_of(&e.path);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(e).expect("Entry serializes")).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("writing {}", path.display())))
}

/// The id a model file named `file` gets in the catalog (unless taken).
pub fn id_for_file(file: &str) -> String {
    let stem = Path::new(file).file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_else(|| "model".into());
    sanitize(&stem)
}

/// Model ids are file-name safe: lowercase letters, digits, `.`, `_`, `-`.
fn sanitize(s: &str) -> String {
    let id: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' }).collect();
    let id = id.trim_matches(|c| c == '-' || c == '.').to_string();
    if id.is_empty() { "model".into() } else { id }
}

fn describe(path: &Path, id: &str, source: Source, sha: Option<String>) -> Result<Entry> {
    let gguf = Gguf::open(path)?;
    let cfg = Config::from_gguf(&gguf)?;
    let size = std::fs::metadata(path).map_err(Error::io("reading file size"))?.len();
    let sha256 = match sha {
        Some(s) => s,
        None => hash_file(path)?,
    };
    Ok(Entry {
        id: id.to_string(),
        source,
        path: path.to_path_buf(),
        size,
        sha256,
        architecture: cfg.arch.name().to_string(),
        quantization: gguf.quantization(),
        context_length: cfg.context_length as u64,
        added_at: now(),
    })
}

/// sha256 of a file, hex.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn copy_hashing(src: &Path, mut to: &std::fs::File, progress: Option<&ProgressFn>) -> Result<String> {
    let mut from = std::fs::File::open(src).map_err(Error::io(format!("opening {}", src.display())))?;
    let total = from.metadata().map_err(Error::io("reading file size"))?.len();
    if let Some(p) = progress {
        p(Progress::Started { total, already: 0 });
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let copy = (|| -> std::io::Result<()> {
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            to.write_all(&buf[..n])?;
            done += n as u64;
            if let Some(p) = progress {
                p(Progress::Advanced { done });
            }
        }
        to.sync_all()
    })();
    copy.map_err(|e| Error::Io { context: format!("copying {}", src.display()), source: e })?;
    if let Some(p) = progress {
        p(Progress::Finished);
    }
    Ok(hex(&h.finalize()))
}

/// Removes what imports and uploads of earlier runs left in `models/` when
/// they were killed: entries no running process holds a lock on (empty
/// upload directories only once a minute old, as one may be about to get
/// its file). Returns how many were removed.
fn sweep(models: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(models) else { return 0 };
    let unlocked = |p: &Path| std::fs::File::open(p).is_ok_and(|f| f.try_lock().is_ok());
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let stale = if name.starts_with(IMPORT_PREFIX) {
            path.is_file() && unlocked(&path)
        } else if name.starts_with(UPLOAD_PREFIX) && path.is_dir() {
            let files: Vec<PathBuf> = std::fs::read_dir(&path).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|d| d.as_secs() > 60));
            if files.is_empty() { old } else { files.iter().all(|f| unlocked(f)) }
        } else {
            false
        };
        if stale {
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Downloads one file with hf-hub into its cache at `cache` and returns the
/// path of its snapshot pointer.
///
/// hf-hub fetches a file in chunks on tasks it spawns itself, and dropping
/// its future does not stop them: a cancelled pull would go on downloading
/// (and a stopped node leave them running in the app's process). So the
/// download runs on a runtime of its own, on a thread of its own, and ends
/// when the caller stops waiting for it: the runtime is then dropped, and
/// every chunk task with it. What was written stays in the cache, and the
/// next pull of the file resumes from it.
async fn hub_download(cache: PathBuf, endpoint: &str, repo: &str, file: &str, revision: &str, progress: Option<ProgressFn>) -> Result<PathBuf> {
    use hf_hub::api::tokio::ApiBuilder;
    let (endpoint, repo, file, revision) = (endpoint.trim_end_matches('/').to_string(), repo.to_string(), file.to_string(), revision.to_string());
    let (mut tx, rx) = tokio::sync::oneshot::channel();
    let download = async move {
        let api = ApiBuilder::new()
            .with_endpoint(endpoint.clone())
            .with_cache_dir(cache)
            .with_progress(false)
            .with_chunk_size(Some(8 << 20))
            .build()
            .map_err(|e| Error::Download(e.to_string()))?;
        let hf_repo = hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, revision);
        let reporter = HubProgress { f: progress, done: Arc::new(std::sync::atomic::AtomicU64::new(0)) };
        api.repo(hf_repo).download_with_progress(&file, reporter).await.map_err(|e| Error::Download(format!("{repo}/{file} from {endpoint}: {e}")))
    };
    std::thread::Builder::new()
        .name("rbee-pull".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::io("starting the download")(e)));
                    return;
                }
            };
            rt.block_on(async move {
                tokio::select! {
                    r = download => { let _ = tx.send(r); }
                    () = tx.closed() => {}
                }
            });
        })
        .map_err(Error::io("starting the download"))?;
    rx.await.map_err(|_| Error::Download("the download thread ended without an answer".into()))?
}

/// Adapts hf-hub's progress callbacks to ours.
#[derive(Clone)]
struct HubProgress {
    f: Option<ProgressFn>,
    done: Arc<std::sync::atomic::AtomicU64>,
}

impl hf_hub::api::tokio::Progress for HubProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        if let Some(f) = &self.f {
            f(Progress::Started { total: size as u64, already: 0 });
        }
    }
    async fn update(&mut self, size: usize) {
        let done = self.done.fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed) + size as u64;
        if let Some(f) = &self.f {
            f(Progress::Advanced { done });
        }
    }
    async fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::{check_hub_names, sanitize};

    #[test]
    fn hub_names_that_would_leave_the_store_are_refused() {
        assert!(check_hub_names("unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf", "main").is_ok());
        assert!(check_hub_names("a/b", "sub/dir/x (v2).gguf", "refs/pr/1").is_ok());
        for (repo, file, rev, field) in [
            ("a/b", "x.gguf", "../../../../tmp/x", "revision"),
            ("a/b", "x.gguf", "main/..", "revision"),
            ("a/b", "x.gguf", "/etc", "revision"),
            ("a/b", "x.gguf", "ma\\in", "revision"),
            ("a/b", "x.gguf", "", "revision"),
            ("a/b", "../x.gguf", "main", "file"),
            ("a/b", "/x.gguf", "main", "file"),
            ("a/b", "x.bin", "main", "file"),
            ("a/b", "a\0b.gguf", "main", "file"),
            ("../b", "x.gguf", "main", "repo"),
            ("a", "x.gguf", "main", "repo"),
            ("a/b/c", "x.gguf", "main", "repo"),
        ] {
            match check_hub_names(repo, file, rev) {
                Err(crate::Error::InvalidName { field: f, .. }) => assert_eq!(f, field, "{repo} {file} {rev}"),
                other => panic!("{repo} {file} {rev}: {other:?}"),
            }
        }
    }

    #[test]
    fn ids_are_file_name_safe() {
        assert_eq!(sanitize("Gemma-3 270M (Q4_K_M)"), "gemma-3-270m--q4_k_m");
        assert_eq!(sanitize("../.."), "model");
    }
}
