//! Model downloads the UI starts and watches: each pull runs in the
//! background, reports its bytes as it goes, and can be cancelled (the
//! partial file stays in the store's download cache, so pulling the same
//! file again resumes it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rbee_engine::Engine;
use rbee_engine::store::{Progress, ProgressFn};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

    /// Starts pulling `repo`/`file` into `engine`'s store from `endpoint`; a
    /// pull of the same file that is still running is returned instead of
    /// starting a second one.
    pub fn start(&self, engine: Engine, endpoint: String, repo: String, file: String, revision: String) -> Pull {
        let mut slots = self.slots.lock().expect("pulls lock");
        if let Some(s) = slots.iter().find(|s| s.pull.state == State::Running && s.pull.repo == repo && s.pull.file == file && s.pull.revision == revision) {
            return s.pull.clone();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let pull = Pull { id, repo, file, revision, state: State::Running, done_bytes: 0, total_bytes: None, model: None, error: None };
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
            let result = tokio::select! {
                r = engine.store().pull(&endpoint, &repo, &file, &revision, Some(progress)) => r,
                () = stop.cancelled() => return,
            };
            update(&shared, id, |pull| match result {
                Ok(entry) => {
                    tracing::info!(model = %entry.id, %repo, %file, "pulled");
                    pull.state = State::Done;
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
