//! Chat conversations kept by the node for its UI, in a SQLite file in the
//! data dir (`conversations.sqlite`).
//!
//! A conversation is a title, the model last chosen for it, and its messages
//! in order. An unreadable file is moved aside (never deleted) and a fresh
//! one started, with a warning naming where the old one went.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// File name in the data dir.
pub const FILE: &str = "conversations.sqlite";

/// Longest title kept, in characters.
pub const MAX_TITLE: usize = 200;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    /// The model last used in it ("" when none yet).
    pub model: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Its own settings, sent with each of its requests.
    #[serde(flatten)]
    pub settings: ChatSettings,
    /// Only when one conversation is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub id: i64,
    pub role: String,
    pub content: String,
    /// For answers: the model, the swarm node that ran it, its decode speed.
    pub model: Option<String>,
    pub node_id: Option<String>,
    pub tokens_per_sec: Option<f64>,
    /// An answer cut short (stopped, or failed) says why here.
    pub note: Option<String>,
    pub created_at: i64,
}

/// What a conversation sends with each request; `None`: the model's or
/// the browser's default.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatSettings {
    /// The system prompt.
    pub instructions: Option<String>,
    pub temperature: Option<f64>,
    /// The longest answer, in tokens.
    pub max_tokens: Option<u32>,
}

/// A change of [`ChatSettings`]: `Some(None)` clears a setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsChange {
    pub instructions: Option<Option<String>>,
    pub temperature: Option<Option<f64>>,
    pub max_tokens: Option<Option<u32>>,
}

/// Longest instructions kept, in characters.
pub const MAX_INSTRUCTIONS: usize = 20_000;

impl SettingsChange {
    fn check(&self) -> Result<(), Error> {
        if let Some(Some(i)) = &self.instructions
            && i.chars().count() > MAX_INSTRUCTIONS
        {
            return Err(Error::Invalid("instructions", format!("instructions have at most {MAX_INSTRUCTIONS} characters")));
        }
        if let Some(Some(t)) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(Error::Invalid("temperature", "temperature must be a number from 0 to 2".into()));
        }
        if self.max_tokens == Some(Some(0)) {
            return Err(Error::Invalid("max_tokens", "max_tokens must be at least 1".into()));
        }
        Ok(())
    }
}

/// A message to append.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub tokens_per_sec: Option<f64>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no conversation with id `{0}`")]
    NotFound(String),
    #[error("conversation `{0}` has no message with id {1}")]
    NoMessage(String, i64),
    #[error("{0}")]
    Invalid(&'static str, String),
    #[error("conversation store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// SQLite's integrity check found damaged pages.
    #[error("conversation store is damaged: {0}")]
    Damaged(String),
    #[error("conversation store: {0}")]
    Io(#[from] std::io::Error),
}

/// The store. Calls are short (one SQLite statement or transaction), so one
/// connection behind a lock serves the UI's handful of requests.
#[derive(Debug)]
pub struct Conversations {
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA foreign_keys = ON;
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    model TEXT,
    node_id TEXT,
    tokens_per_sec REAL,
    note TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, id);
";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn new_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The columns every conversation query selects, in [`conversation_row`]'s order.
const COLUMNS: &str = "id, title, model, created_at, updated_at, instructions, temperature, max_tokens";

fn conversation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        title: r.get(1)?,
        model: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        settings: ChatSettings { instructions: r.get(5)?, temperature: r.get(6)?, max_tokens: r.get(7)? },
        messages: None,
    })
}

/// Columns added since the first release: a file written by an older rbee
/// gets them (empty) when opened, and keeps everything it holds.
const ADDED: [(&str, &str); 3] = [("instructions", "TEXT"), ("temperature", "REAL"), ("max_tokens", "INTEGER")];

fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let have: Vec<String> = db.prepare("PRAGMA table_info(conversations)")?.query_map([], |r| r.get(1))?.collect::<Result<_, _>>()?;
    for (name, kind) in ADDED {
        if !have.iter().any(|c| c == name) {
            db.execute_batch(&format!("ALTER TABLE conversations ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

fn check_title(title: &str) -> Result<String, Error> {
    let t = title.trim();
    if t.chars().count() > MAX_TITLE {
        return Err(Error::Invalid("title", format!("a title has at most {MAX_TITLE} characters")));
    }
    Ok(t.to_string())
}

impl Conversations {
    /// Opens (or creates) the store at `path`. A file SQLite cannot read as
    /// a database, or whose pages fail its integrity check, is renamed to
    /// `PATH.unreadable-<ms>` (its `-wal` beside it) and a new one begun.
    ///
    /// # Errors
    /// When neither the file nor a fresh one can be opened.
    pub fn open(path: &Path) -> Result<Self, Error> {
        match Self::open_at(path) {
            Ok(s) => Ok(s),
            Err(e @ (Error::Sql(_) | Error::Damaged(_))) if path.exists() => {
                let aside = PathBuf::from(format!("{}.unreadable-{}", path.display(), now_ms()));
                tracing::warn!(error = %e, file = %path.display(), moved_to = %aside.display(), "conversation store unreadable; moved aside, starting a new one");
                std::fs::rename(path, &aside)?;
                // The write-ahead log may hold the newest messages: it goes
                // with the file, never away.
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::rename(format!("{}{ext}", path.display()), format!("{}{ext}", aside.display()));
                }
                Self::open_at(path)
            }
            Err(e) => Err(e),
        }
    }

    /// A store that lives in memory only (tests, and a data dir that
    /// cannot hold one).
    pub fn in_memory() -> Self {
        let db = Connection::open_in_memory().expect("SQLite opens in memory");
        db.execute_batch(SCHEMA).expect("schema applies to an empty database");
        migrate(&db).expect("columns add to an empty database");
        Self { db: Mutex::new(db) }
    }

    fn open_at(path: &Path) -> Result<Self, Error> {
        let db = Connection::open(path)?;
        db.execute_batch(SCHEMA)?;
        migrate(&db)?;
        // Damage inside the pages (a torn write, a bad sector) passes a
        // count but fails every later query: check them all at start.
        let check: Vec<String> = db.prepare("PRAGMA quick_check")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        if check.first().map(String::as_str) != Some("ok") {
            return Err(Error::Damaged(check.into_iter().take(3).collect::<Vec<_>>().join("; ")));
        }
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is one statement or a transaction), so go on.
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every conversation, most recently changed first; with `query`, only
    /// those whose title or any message contains it (case-insensitive).
    ///
    /// # Errors
    /// On a database failure.
    pub fn list(&self, query: Option<&str>) -> Result<Vec<Conversation>, Error> {
        let db = self.db();
        let q = query.map(str::trim).filter(|q| !q.is_empty());
        let out = match q {
            None => db
                .prepare_cached(&format!("SELECT {COLUMNS} FROM conversations ORDER BY updated_at DESC, rowid DESC"))?
                .query_map([], conversation_row)?
                .collect::<Result<Vec<_>, _>>()?,
            Some(q) => {
                let pattern = format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
                db.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM conversations c
                     WHERE title LIKE ?1 ESCAPE '\\'
                        OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation = c.id AND m.content LIKE ?1 ESCAPE '\\')
                     ORDER BY updated_at DESC, rowid DESC"
                ))?
                .query_map([pattern], conversation_row)?
                .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(out)
    }

    /// Starts a conversation.
    ///
    /// # Errors
    /// On a title over [`MAX_TITLE`] characters, or a database failure.
    pub fn create(&self, title: &str, model: &str) -> Result<Conversation, Error> {
        let title = check_title(title)?;
        let (id, now) = (new_id(), now_ms());
        self.db()
            .execute("INSERT INTO conversations (id, title, model, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)", params![id, title, model, now])?;
        Ok(Conversation { id, title, model: model.to_string(), created_at: now, updated_at: now, settings: ChatSettings::default(), messages: None })
    }

    /// One conversation with its messages.
    ///
    /// # Errors
    /// [`Error::NotFound`], or a database failure.
    pub fn get(&self, id: &str) -> Result<Conversation, Error> {
        let db = self.db();
        let mut c = Self::head(&db, id)?;
        let messages = db
            .prepare_cached("SELECT id, role, content, model, node_id, tokens_per_sec, note, created_at FROM messages WHERE conversation = ?1 ORDER BY id")?
            .query_map([id], |r| {
                Ok(Message {
                    id: r.get(0)?,
                    role: r.get(1)?,
                    content: r.get(2)?,
                    model: r.get(3)?,
                    node_id: r.get(4)?,
                    tokens_per_sec: r.get(5)?,
                    note: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        c.messages = Some(messages);
        Ok(c)
    }

    /// The conversation without its messages.
    fn head(db: &Connection, id: &str) -> Result<Conversation, Error> {
        db.query_row(&format!("SELECT {COLUMNS} FROM conversations WHERE id = ?1"), [id], conversation_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Renames it, records the model chosen, and/or changes its settings.
    ///
    /// # Errors
    /// [`Error::NotFound`], a title too long, a setting out of range, or a
    /// database failure.
    pub fn update(&self, id: &str, title: Option<&str>, model: Option<&str>, settings: &SettingsChange) -> Result<Conversation, Error> {
        let title = title.map(check_title).transpose()?;
        settings.check()?;
        let db = self.db();
        db.execute(
            "UPDATE conversations SET title = coalesce(?2, title), model = coalesce(?3, model), updated_at = ?4,
                 instructions = CASE WHEN ?5 THEN ?6 ELSE instructions END,
                 temperature = CASE WHEN ?7 THEN ?8 ELSE temperature END,
                 max_tokens = CASE WHEN ?9 THEN ?10 ELSE max_tokens END
             WHERE id = ?1",
            params![
                id,
                title,
                model,
                now_ms(),
                settings.instructions.is_some(),
                settings.instructions.clone().flatten().filter(|i| !i.trim().is_empty()),
                settings.temperature.is_some(),
                settings.temperature.flatten(),
                settings.max_tokens.is_some(),
                settings.max_tokens.flatten(),
            ],
        )?;
        Self::head(&db, id)
    }

    /// Deletes it and its messages.
    ///
    /// # Errors
    /// [`Error::NotFound`], or a database failure.
    pub fn delete(&self, id: &str) -> Result<(), Error> {
        if self.db().execute("DELETE FROM conversations WHERE id = ?1", [id])? == 0 {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Appends a message.
    ///
    /// # Errors
    /// [`Error::NotFound`], a role other than system, user or assistant, or
    /// a database failure.
    pub fn append(&self, id: &str, m: &NewMessage) -> Result<Message, Error> {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(Error::Invalid("role", format!("role must be system, user or assistant, not {:?}", m.role)));
        }
        if m.tokens_per_sec.is_some_and(|t| !t.is_finite() || t < 0.0) {
            return Err(Error::Invalid("tokens_per_sec", "tokens_per_sec must be a number of zero or more".into()));
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        let now = now_ms();
        if tx.execute("UPDATE conversations SET updated_at = ?2, model = coalesce(?3, model) WHERE id = ?1", params![id, now, m.model])? == 0 {
            return Err(Error::NotFound(id.to_string()));
        }
        tx.execute(
            "INSERT INTO messages (conversation, role, content, model, node_id, tokens_per_sec, note, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![id, m.role, m.content, m.model, m.node_id, m.tokens_per_sec, m.note, now],
        )?;
        let mid = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Message {
            id: mid,
            role: m.role.clone(),
            content: m.content.clone(),
            model: m.model.clone(),
            node_id: m.node_id.clone(),
            tokens_per_sec: m.tokens_per_sec,
            note: m.note.clone(),
            created_at: now,
        })
    }

    /// Removes message `from` and every later one (to regenerate an answer,
    /// or edit a question and send it again). Returns how many went.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NoMessage`], or a database failure.
    pub fn truncate(&self, id: &str, from: i64) -> Result<usize, Error> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if tx.execute("UPDATE conversations SET updated_at = ?2 WHERE id = ?1", params![id, now_ms()])? == 0 {
            return Err(Error::NotFound(id.to_string()));
        }
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM messages WHERE conversation = ?1 AND id = ?2)", params![id, from], |r| r.get(0))?;
        if !exists {
            return Err(Error::NoMessage(id.to_string(), from));
        }
        let n = tx.execute("DELETE FROM messages WHERE conversation = ?1 AND id >= ?2", params![id, from])?;
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> NewMessage {
        NewMessage { role: "user".into(), content: text.into(), ..NewMessage::default() }
    }

    #[test]
    fn a_conversation_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let s = Conversations::open(&path).unwrap();
        let c = s.create("Trip", "gemma").unwrap();
        s.append(&c.id, &user("Where to?")).unwrap();
        let answer = NewMessage {
            role: "assistant".into(),
            content: "Lisbon.".into(),
            model: Some("gemma".into()),
            node_id: Some("12D3".into()),
            tokens_per_sec: Some(41.5),
            note: None,
        };
        s.append(&c.id, &answer).unwrap();
        drop(s);
        let s = Conversations::open(&path).unwrap();
        let got = s.get(&c.id).unwrap();
        let m = got.messages.unwrap();
        assert_eq!((got.title.as_str(), m.len()), ("Trip", 2));
        assert_eq!((m[1].content.as_str(), m[1].tokens_per_sec, m[1].node_id.as_deref()), ("Lisbon.", Some(41.5), Some("12D3")));
    }

    #[test]
    fn search_finds_titles_and_message_text_and_treats_wildcards_literally() {
        let s = Conversations::in_memory();
        let a = s.create("Rust lifetimes", "").unwrap();
        let b = s.create("Dinner", "").unwrap();
        s.append(&b.id, &user("A recipe with 100% rye flour_please")).unwrap();
        let ids = |q: &str| s.list(Some(q)).unwrap().into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids("LIFETIME"), vec![a.id.clone()]);
        assert_eq!(ids("rye"), vec![b.id.clone()]);
        assert_eq!(ids("100%"), vec![b.id.clone()]);
        assert!(ids("100%%").is_empty());
        assert!(ids("r_e").is_empty(), "_ is not a wildcard");
        // The most recently changed first.
        assert_eq!(s.list(None).unwrap()[0].id, b.id);
    }

    #[test]
    fn truncate_drops_a_message_and_everything_after_it_in_that_conversation_only() {
        let s = Conversations::in_memory();
        let c = s.create("", "").unwrap();
        let other = s.create("", "").unwrap();
        let first = s.append(&c.id, &user("one")).unwrap();
        let second = s.append(&c.id, &user("two")).unwrap();
        s.append(&c.id, &user("three")).unwrap();
        let kept = s.append(&other.id, &user("elsewhere")).unwrap();
        assert!(matches!(s.truncate(&other.id, second.id), Err(Error::NoMessage(..))));
        assert_eq!(s.truncate(&c.id, second.id).unwrap(), 2);
        assert_eq!(s.get(&c.id).unwrap().messages.unwrap(), vec![first]);
        assert_eq!(s.get(&other.id).unwrap().messages.unwrap(), vec![kept]);
    }

    #[test]
    fn bad_input_is_refused_and_deleting_takes_the_messages_along() {
        let s = Conversations::in_memory();
        assert!(matches!(s.create(&"x".repeat(MAX_TITLE + 1), ""), Err(Error::Invalid("title", _))));
        let c = s.create("t", "").unwrap();
        assert!(matches!(s.append(&c.id, &NewMessage { role: "tool".into(), ..user("x") }), Err(Error::Invalid("role", _))));
        assert!(matches!(s.append(&c.id, &NewMessage { tokens_per_sec: Some(f64::NAN), ..user("x") }), Err(Error::Invalid(..))));
        assert!(matches!(s.append("nope", &user("x")), Err(Error::NotFound(_))));
        s.append(&c.id, &user("x")).unwrap();
        s.delete(&c.id).unwrap();
        assert!(matches!(s.get(&c.id), Err(Error::NotFound(_))));
        assert!(matches!(s.delete(&c.id), Err(Error::NotFound(_))));
        let n: i64 = s.db().query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_file_from_before_chat_settings_keeps_its_conversations_and_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            // The first release's schema, with one conversation in it.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, model TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
                 INSERT INTO conversations VALUES ('c1', 'Bees', 'm', 1, 2);",
            )
            .unwrap();
        }
        let store = Conversations::open(&path).unwrap();
        let c = store.get("c1").unwrap();
        assert_eq!((c.title.as_str(), c.settings.clone()), ("Bees", ChatSettings::default()));
        let change = SettingsChange { instructions: Some(Some("Be brief.".into())), max_tokens: Some(Some(32)), ..Default::default() };
        let c = store.update("c1", None, None, &change).unwrap();
        assert_eq!(c.settings, ChatSettings { instructions: Some("Be brief.".into()), temperature: None, max_tokens: Some(32) });
        drop(store);
        let again = Conversations::open(&path).unwrap().get("c1").unwrap();
        assert_eq!((again.title.as_str(), again.settings.max_tokens), ("Bees", Some(32)));
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, b"this is not a database, but someone's bytes".repeat(100)).unwrap();
        let s = Conversations::open(&path).unwrap();
        assert!(s.list(None).unwrap().is_empty());
        s.create("new", "").unwrap();
        let aside: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".unreadable-")).collect();
        assert_eq!(aside.len(), 1);
        assert!(std::fs::read(aside[0].path()).unwrap().starts_with(b"this is not a database"));
    }

    #[test]
    fn a_file_with_damaged_pages_is_moved_aside_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            let s = Conversations::open(&path).unwrap();
            let c = s.create("kept", "").unwrap();
            for i in 0..400 {
                s.append(&c.id, &user(&format!("message {i}: {}", "words ".repeat(40)))).unwrap();
            }
            s.db().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        // Garbage over a page in the middle of the file: the header still
        // reads, and counting rows may still work, but the pages do not.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 4096, "{}", bytes.len());
        let mid = bytes.len() / 2 / 4096 * 4096;
        bytes[mid..mid + 4096].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 + 13) as u8);
        std::fs::write(&path, &bytes).unwrap();
        let s = Conversations::open(&path).unwrap();
        assert!(s.list(None).unwrap().is_empty(), "a new store");
        s.create("new", "").unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".unreadable-")).collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes, "the damaged file is kept as it was");
    }
}
