//! Model downloads the UI starts and watches: each pull runs in the
//! background, reports its bytes as it goes, and can be cancelled (the
//! partial file stays in the store's download cache, so pulling the same
//! file again resumes it).
//!
//! In a swarm, a pull first looks for peers that hold the same file (by
//! the sha256 the hub gives for it, or, when the hub cannot be reached, by
//! its repository and name) and copies it from them over the LAN
//! ([`crate::copy`]); the hub is used when no peer has it or the copy fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rbee_engine::Engine;
use rbee_engine::store::{Entry, Progress, ProgressFn};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Where a pull stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// One pull as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Pull {
    pub id: u64,
    pub repo: String,
    pub file: String,
    pub revision: String,
    pub state: State,
    /// Bytes received so far.
    pub done_bytes: u64,
    /// The file's size, once the server said it.
    pub total_bytes: Option<u64>,
    /// The model's id in the store, when done.
    pub model: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The peers' host names the file is being (or was) copied from over
    /// the LAN; empty when it comes from the hub.
    pub from_peers: Vec<String>,
    /// How fast the copy from peers went (bytes per second), once done.
    pub bytes_per_s: Option<u64>,
    /// What happened on the way that the user should know (a copy from a
    /// peer that failed its check, and the hub used instead).
    pub note: Option<String>,
}

#[derive(Debug)]
struct Slot {
    pull: Pull,
    task: Option<tokio::task::AbortHandle>,
}

/// Every pull since the node started (finished ones until dismissed).
#[derive(Debug)]
pub struct Pulls {
    slots: Arc<Mutex<Vec<Slot>>>,
    next: AtomicU64,
    /// Where pulls run, and what stops them when the node stops.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Pulls {
    /// Pulls that run on `tasks` and are stopped by `stop` (the partial
    /// file stays, to resume).
    pub fn new(tasks: TaskTracker, stop: CancellationToken) -> Self {
        Self { slots: Arc::default(), next: AtomicU64::new(0), tasks, stop }
    }

    /// Starts pulling `repo`/`file` into `engine`'s store, from peers of
    /// `swarm` that hold it or from the hub at `endpoint`; a pull of the
    /// same file that is still running is returned instead of starting a
    /// second one.
    pub fn start(
        &self,
        engine: Engine,
        swarm: Option<(rbee_swarm::Client, Arc<Metrics>)>,
        endpoint: String,
        repo: String,
        file: String,
        revision: String,
    ) -> Pull {
        let mut slots = self.slots.lock().expect("pulls lock");
        if let Some(s) = slots.iter().find(|s| s.pull.state == State::Running && s.pull.repo == repo && s.pull.file == file && s.pull.revision == revision) {
            return s.pull.clone();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let pull = Pull {
            id,
            repo,
            file,
            revision,
            state: State::Running,
            done_bytes: 0,
            total_bytes: None,
            model: None,
            error: None,
            from_peers: Vec::new(),
            bytes_per_s: None,
            note: None,
        };
        let shared = self.slots.clone();
        let progress: ProgressFn = {
            let shared = shared.clone();
            Arc::new(move |p: Progress| {
                update(&shared, id, |pull| match p {
                    Progress::Started { total, already } => {
                        pull.total_bytes = Some(total);
                        pull.done_bytes = already;
                    }
                    Progress::Advanced { done } => pull.done_bytes = done,
                    Progress::Finished => {}
                });
            })
        };
        let (repo, file, revision) = (pull.repo.clone(), pull.file.clone(), pull.revision.clone());
        let stop = self.stop.clone();
        let task = self.tasks.spawn(async move {
            let job = Job { engine: &engine, swarm: swarm.as_ref(), endpoint: &endpoint, repo: &repo, file: &file, revision: &revision, slots: &shared, id };
            let result = tokio::select! {
                r = job.run(progress) => r,
                () = stop.cancelled() => return,
            };
            update(&shared, id, |pull| match result {
                Ok(entry) => {
                    tracing::info!(model = %entry.id, %repo, %file, "pulled");
                    pull.state = State::Done;
                    if let rbee_engine::store::Source::HuggingFace { copied: Some(c), .. } = &entry.source {
                        pull.from_peers.clone_from(&c.from);
                        pull.bytes_per_s = Some(c.bytes_per_s);
                    }
                    pull.model = Some(entry.id);
                    if let Some(t) = pull.total_bytes {
                        pull.done_bytes = t;
                    }
                }
                Err(e) => {
                    tracing::warn!(%repo, %file, error = %e, "pull failed");
                    pull.state = State::Failed;
                    pull.error = Some(e.to_string());
                }
            });
        });
        slots.push(Slot { pull: pull.clone(), task: Some(task.abort_handle()) });
        pull
    }

    /// Every pull, oldest first.
    pub fn list(&self) -> Vec<Pull> {
        self.slots.lock().expect("pulls lock").iter().map(|s| s.pull.clone()).collect()
    }

    /// Cancels a running pull (it stays listed as cancelled) or dismisses a
    /// finished one. `None` when there is no such pull.
    pub fn cancel(&self, id: u64) -> Option<Pull> {
        let mut slots = self.slots.lock().expect("pulls lock");
        let i = slots.iter().position(|s| s.pull.id == id)?;
        if slots[i].pull.state == State::Running {
            if let Some(t) = slots[i].task.take() {
                t.abort();
            }
            slots[i].pull.state = State::Cancelled;
            tracing::info!(repo = %slots[i].pull.repo, file = %slots[i].pull.file, "pull cancelled");
            Some(slots[i].pull.clone())
        } else {
            Some(slots.remove(i).pull)
        }
    }
}

/// One pull's work: from peers when they have the file, else from the hub.
struct Job<'a> {
    engine: &'a Engine,
    swarm: Option<&'a (rbee_swarm::Client, Arc<Metrics>)>,
    endpoint: &'a str,
    repo: &'a str,
    file: &'a str,
    revision: &'a str,
    slots: &'a Mutex<Vec<Slot>>,
    id: u64,
}

impl Job<'_> {
    fn hub(&self) -> rbee_engine::store::HubName<'_> {
        rbee_engine::store::HubName { repo: self.repo, file: self.file, revision: self.revision }
    }

    async fn run(&self, progress: ProgressFn) -> rbee_engine::Result<Entry> {
        let store = self.engine.store();
        let mut copy_left = None;
        if let Some((client, metrics)) = self.swarm {
            let hub = hub_file(self.endpoint, self.repo, self.file, self.revision).await;
            if let Err(e) = &hub {
                tracing::info!(repo = %self.repo, file = %self.file, error = %e, "the hub cannot say what the file is; looking for peers that pulled it");
            }
            if let Some((sha, size, holders)) = holders(&client.peers(), hub.ok().as_ref(), self.repo, self.file) {
                let part = store.partial_copy(&sha);
                let names: Vec<String> = holders.iter().map(|h| h.hostname.clone()).collect();
                tracing::info!(repo = %self.repo, file = %self.file, from = ?names, "copying from peers");
                update(self.slots, self.id, |p| p.from_peers = names);
                let failed = match crate::copy::fetch(client, metrics, &holders, &sha, size, &part, Some(progress.clone())).await {
                    Ok(got) => match store.adopt_copy(&part, got.sha256, &sha, self.hub(), got.copied) {
                        Ok(entry) => return Ok(entry),
                        Err(e @ rbee_engine::Error::Checksum { .. }) => format!("the copy from peers was refused: {e}"),
                        Err(e) => return Err(e),
                    },
                    Err(why) => format!("copying from peers failed ({why})"),
                };
                tracing::warn!(repo = %self.repo, file = %self.file, "{failed}; pulling from the hub instead");
                update(self.slots, self.id, |p| {
                    p.from_peers.clear();
                    p.done_bytes = 0;
                    p.note = Some(format!("{failed}; pulled from Hugging Face instead"));
                });
                copy_left = Some(part);
            }
        }
        let entry = store.pull(self.endpoint, self.repo, self.file, self.revision, Some(progress)).await?;
        if let Some(part) = copy_left {
            crate::copy::discard(&part);
        }
        Ok(entry)
    }
}

/// What the hub says a file is: its sha256 (for files in LFS, which model
/// files are) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// Asks the hub at `endpoint` what `repo`/`file` at `revision` is, as
/// hf-hub does before a download: a one-byte range request, not following
/// the redirect to the CDN (the hub's own answer carries the
/// `X-Linked-Etag` and `X-Linked-Size` of the LFS file).
///
/// # Errors
/// When the hub cannot be reached or does not have the file.
pub async fn hub_file(endpoint: &str, repo: &str, file: &str, revision: &str) -> Result<HubFile, String> {
    let mut url = reqwest::Url::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("{endpoint} cannot be a base URL"))?
        .pop_if_empty()
        .extend(repo.split('/'))
        .push("resolve")
        .push(revision)
        .extend(file.split('/'));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let res = client.get(url).header("range", "bytes=0-0").send().await.map_err(|e| e.to_string())?;
    if !(res.status().is_success() || res.status().is_redirection()) {
        return Err(format!("the hub answered {}", res.status()));
    }
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let sha256 = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map(|t| t.trim_start_matches("W/").trim_matches('"').to_ascii_lowercase())
        .filter(|t| t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()));
    let size = header("x-linked-size")
        .and_then(|s| s.parse().ok())
        .or_else(|| header("content-range").and_then(|r| r.rsplit_once('/').and_then(|(_, n)| n.parse().ok())));
    Ok(HubFile { sha256, size })
}

/// The live peers that hold the file, with its sha256 and size: the content
/// the hub names when it could be asked, else the file pulled from the same
/// repository and name (the content most of them have). `None` when no peer
/// has it.
fn holders(peers: &[rbee_swarm::PeerView], hub: Option<&HubFile>, repo: &str, file: &str) -> Option<(String, u64, Vec<crate::copy::Holder>)> {
    let mut found: Vec<(String, u64, crate::copy::Holder)> = Vec::new();
    for p in peers.iter().filter(|p| p.up && !p.local) {
        for m in &p.record.models_on_disk {
            let same = match hub {
                Some(h) => h.sha256.as_deref() == Some(m.sha256.as_str()),
                None => m.repo == repo && m.file == file && m.sha256.len() == 64,
            };
            if same {
                found.push((m.sha256.clone(), m.size_bytes, crate::copy::Holder { node_id: p.node_id.clone(), hostname: p.record.hostname.clone() }));
            }
        }
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (sha, ..) in &found {
        *counts.entry(sha.as_str()).or_default() += 1;
    }
    let sha = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))?.0.to_string();
    let size = hub.and_then(|h| h.size).or_else(|| found.iter().find(|f| f.0 == sha).map(|f| f.1))?;
    // Nearest first would need RTTs; the registry's order is as good.
    let holders: Vec<crate::copy::Holder> = found.into_iter().filter(|f| f.0 == sha && f.1 == size).map(|f| f.2).collect();
    (!holders.is_empty() && size > 0).then_some((sha, size, holders))
}

/// Applies `f` to pull `id` while it is still running (a cancelled pull's
/// last progress callbacks change nothing).
fn update(slots: &Mutex<Vec<Slot>>, id: u64, f: impl FnOnce(&mut Pull)) {
    let mut slots = slots.lock().expect("pulls lock");
    if let Some(s) = slots.iter_mut().find(|s| s.pull.id == id && s.pull.state == State::Running) {
        f(&mut s.pull);
        if s.pull.state != State::Running {
            s.task = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rbee_swarm::record::{ModelOnDisk, NodeRecord};
    use rbee_swarm::registry::{PeerView, Status};

    use super::{HubFile, holders};

    fn peer(id: &str, up: bool, local: bool, models: &[(&str, u64, &str)]) -> PeerView {
        let models_on_disk = models
            .iter()
            .map(|(sha, size, name)| ModelOnDisk {
                id: (*name).into(),
                size_bytes: *size,
                sha256: (*sha).into(),
                repo: if name.is_empty() { String::new() } else { "acme/m-GGUF".into() },
                file: (*name).into(),
                ..ModelOnDisk::default()
            })
            .collect();
        PeerView {
            node_id: id.into(),
            up,
            status: if up { Status::Up } else { Status::Down },
            last_seen_ms: 0,
            local,
            record: Arc::new(NodeRecord { hostname: format!("host-{id}"), models_on_disk, ..NodeRecord::default() }),
        }
    }

    #[test]
    fn holders_are_the_live_peers_with_the_hubs_content_or_by_name_without_the_hub() {
        let good = "a".repeat(64);
        let other = "b".repeat(64);
        let peers = vec![
            peer("me", true, true, &[(&good, 10, "m.gguf")]),
            peer("p1", true, false, &[(&good, 10, "")]),
            peer("p2", false, false, &[(&good, 10, "m.gguf")]),
            peer("p3", true, false, &[(&other, 10, "m.gguf")]),
            peer("p4", true, false, &[(&other, 10, "m.gguf")]),
        ];
        // The hub names the content: the live peers holding it, whatever they
        // call it; not this node, not a down one, not a same-named other file.
        let hub = HubFile { sha256: Some(good.clone()), size: Some(10) };
        let (sha, size, h) = holders(&peers, Some(&hub), "acme/m-GGUF", "m.gguf").unwrap();
        assert_eq!((sha.as_str(), size), (good.as_str(), 10));
        assert_eq!(h.iter().map(|h| h.hostname.as_str()).collect::<Vec<_>>(), ["host-p1"]);
        // Without the hub: by repository and file name, the content most hold.
        let (sha, _, h) = holders(&peers, None, "acme/m-GGUF", "m.gguf").unwrap();
        assert_eq!(sha, other);
        assert_eq!(h.len(), 2);
        // Nobody has it, or the hub's size disagrees with what they hold.
        assert!(holders(&peers, Some(&HubFile { sha256: Some("c".repeat(64)), size: Some(10) }), "x/y", "z.gguf").is_none());
        assert!(holders(&peers, Some(&HubFile { sha256: Some(good), size: Some(11) }), "acme/m-GGUF", "m.gguf").is_none());
        assert!(holders(&peers, Some(&HubFile { sha256: None, size: Some(10) }), "acme/m-GGUF", "m.gguf").is_none());
    }
}
