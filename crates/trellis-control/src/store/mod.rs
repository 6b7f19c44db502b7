//! The control plane's resource store: embedded, ACID, with every generation kept.
//!
//! One redb file, `DATA_DIR/trellis.redb` (layout in `schema.rs`). Every write is one redb
//! transaction committed with `Durability::Immediate`: when a call returns `Ok`, the change
//! is on disk and survives a crash or `SIGKILL`; when it returns `Err`, nothing of it is.
//!
//! Every change to a resource writes a new *generation* of it (1, 2, 3...; deletions and
//! rollbacks included), and every commit that changes anything takes the next global
//! *revision*, shared by all of its changes. Generations are never rewritten, so
//! [`Store::history`] and [`Store::rollback`] are lookups. Applying a document equal (as JSON)
//! to the current generation writes nothing ([`Action::Unchanged`]).
//!
//! Watchers: [`Store::subscribe`] delivers each commit's changes (in revision order) after it
//! is durable; [`Store::changes_since`] replays what a watcher missed. To follow without gaps,
//! subscribe first, then read `changes_since(last_seen)`, then skip feed entries whose
//! revision is not above the last one read. A receiver that lags behind the feed's buffer
//! gets `RecvError::Lagged` and should catch up with `changes_since`.
//!
//! The methods block (disk reads, `fsync` on writes); call them from `spawn_blocking` in
//! async code that must not stall.

mod error;
mod schema;
mod types;

#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use types::{Action, Change, ResourceKey, Stored};

use error::Failure;
use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use schema::{GENERATIONS, HEADS, META, META_FORMAT, META_REVISION, REVISIONS, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use trellis_api::Resource;

/// The file inside the data directory.
pub const FILE_NAME: &str = "trellis.redb";

/// How many commits the live feed buffers for a slow subscriber before it lags.
const FEED_CAPACITY: usize = 1024;

/// A handle to the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// The latest committed revision, kept in step with `meta.revision` under `write_lock`.
    revision: AtomicU64,
    /// Held from the start of a write transaction until its changes are sent, so the feed
    /// delivers commits in revision order.
    write_lock: Mutex<()>,
    feed: broadcast::Sender<Vec<Change>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).field("revision", &self.revision()).finish()
    }
}

impl Store {
    /// Opens the store in `dir`, creating the directory and `trellis.redb` if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| Failure::from(e).into_store_error("open", &path))?;
        let revision = initialize(&db, &path).map_err(|e| e.into_store_error("open", &path))?;
        tracing::debug!(path = %path.display(), revision, "store opened");
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Ok(Store {
            inner: Arc::new(Inner { db, path, revision: AtomicU64::new(revision), write_lock: Mutex::new(()), feed }),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The latest committed revision; 0 for an empty store.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// Creates or updates `docs` in one transaction: all or nothing. Documents equal to their
    /// current generation are [`Action::Unchanged`] and write nothing; if any document
    /// changes, the commit takes the next revision, shared by all its changes. One [`Change`]
    /// per distinct key, in the order of the documents (a key given twice with the same
    /// contents counts once; with different contents it is a [`StoreError::Conflict`]).
    ///
    /// With `dry_run`, nothing is written: the changes are what the commit would do.
    pub fn apply(&self, docs: &[Resource], actor: &str, dry_run: bool) -> Result<Vec<Change>, StoreError> {
        let mut prepared = Vec::with_capacity(docs.len());
        for doc in docs {
            let key = ResourceKey::of(doc);
            let document =
                serde_json::to_value(doc).map_err(|source| StoreError::Encode { key: key.clone(), source })?;
            prepared.push((key, document));
        }
        let op = format!("apply {} document(s)", docs.len());
        self.write(&op, actor, dry_run, |batch| {
            // Key → (1-based position, document) of what this batch already wrote.
            let mut seen: HashMap<&ResourceKey, (usize, &serde_json::Value)> = HashMap::new();
            for (index, (key, document)) in prepared.iter().enumerate() {
                if let Some((first, earlier)) = seen.get(key) {
                    if *earlier == document {
                        continue;
                    }
                    return Err(StoreError::Conflict { key: key.clone(), first: *first, second: index + 1 }.into());
                }
                seen.insert(key, (index + 1, document));
                match batch.latest(key)? {
                    Some((_, record)) if !record.deleted && record.document == *document => {
                        batch.unchanged(key)?;
                    }
                    Some((generation, record)) => {
                        let action = if record.deleted { Action::Created } else { Action::Updated };
                        batch.put(key, generation + 1, document.clone(), false, action)?;
                    }
                    None => batch.put(key, 1, document.clone(), false, Action::Created)?,
                }
            }
            Ok(())
        })
        .map(|((), changes)| changes)
    }

    /// The current generation of `key`; `None` if it never existed or is deleted.
    pub fn get(&self, key: &ResourceKey) -> Result<Option<Stored>, StoreError> {
        self.read(&format!("get {key}"), |txn| {
            let (Some(heads), Some(generations)) = (open_read(txn, HEADS)?, open_read(txn, GENERATIONS)?) else {
                return Ok(None);
            };
            schema::current(&heads, &generations, key)
        })
    }

    /// Current, not deleted resources, sorted by key, optionally only of one kind and/or
    /// namespace.
    pub fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Vec<Stored>, StoreError> {
        self.read("list resources", |txn| {
            let (Some(heads), Some(generations)) = (open_read(txn, HEADS)?, open_read(txn, GENERATIONS)?) else {
                return Ok(Vec::new());
            };
            let range = match kind {
                Some(kind) => heads.range((kind, "", "")..)?,
                None => heads.range::<(&str, &str, &str)>(..)?,
            };
            let mut out = Vec::new();
            for entry in range {
                let (k, generation) = entry?;
                let (k_kind, k_namespace, k_name) = k.value();
                if kind.is_some_and(|kind| kind != k_kind) {
                    break;
                }
                if namespace.is_some_and(|ns| ns != k_namespace) {
                    continue;
                }
                let key = ResourceKey::new(k_kind, k_namespace, k_name);
                let generation = generation.value();
                let record = schema::required_record(&generations, &key, generation)?;
                if !record.deleted {
                    out.push(record.into_stored(key, generation));
                }
            }
            Ok(out)
        })
    }

    /// Deletes `key` (a new generation marked deleted, keeping the last document). `None` if
    /// it does not exist or is already deleted.
    pub fn delete(&self, key: &ResourceKey, actor: &str) -> Result<Option<Change>, StoreError> {
        self.write(&format!("delete {key}"), actor, false, |batch| match batch.latest(key)? {
            Some((generation, record)) if !record.deleted => {
                batch.put(key, generation + 1, record.document, true, Action::Deleted)?;
                Ok(())
            }
            _ => Ok(()),
        })
        .map(|((), changes)| changes.into_iter().next())
    }

    /// Every generation of `key`, deletions included, oldest first; empty if it never existed.
    pub fn history(&self, key: &ResourceKey) -> Result<Vec<Stored>, StoreError> {
        self.read(&format!("read the history of {key}"), |txn| match open_read(txn, GENERATIONS)? {
            Some(generations) => schema::all_generations(&generations, key),
            None => Ok(Vec::new()),
        })
    }

    /// Makes generation `to` of `key` current again, as a new generation
    /// ([`Action::RolledBack`]); this also restores a deleted resource. If the current
    /// generation already has that document, nothing is written ([`Action::Unchanged`]).
    /// Fails if `to` does not exist or is a deletion.
    pub fn rollback(&self, key: &ResourceKey, to: u64, actor: &str) -> Result<Change, StoreError> {
        let op = format!("rollback {key} to generation {to}");
        self.write(&op, actor, false, |batch| {
            let Some((latest, current)) = batch.latest(key)? else {
                return Err(StoreError::NoHistory { key: key.clone(), to }.into());
            };
            let target = match schema::record(&batch.generations, key, to)? {
                Some(record) => record,
                None => return Err(StoreError::NoSuchGeneration { key: key.clone(), to, latest }.into()),
            };
            if target.deleted {
                return Err(StoreError::RollbackToDeletion { key: key.clone(), to }.into());
            }
            if !current.deleted && current.document == target.document {
                batch.unchanged(key)
            } else {
                batch.put(key, latest + 1, target.document, false, Action::RolledBack)
            }
        })
        .and_then(|((), changes)| {
            changes.into_iter().next().ok_or_else(|| StoreError::Corrupt {
                op,
                path: self.inner.path.clone(),
                detail: "a rollback produced no change".into(),
            })
        })
    }

    /// Every generation committed after `revision`, in commit order (within a commit, in the
    /// order of its changes). Unchanged documents are not listed: they were not written.
    pub fn changes_since(&self, revision: u64) -> Result<Vec<Stored>, StoreError> {
        self.read(&format!("read the changes since revision {revision}"), |txn| {
            let (Some(revisions), Some(generations)) = (open_read(txn, REVISIONS)?, open_read(txn, GENERATIONS)?)
            else {
                return Ok(Vec::new());
            };
            let Some(from) = revision.checked_add(1) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for entry in revisions.range((from, 0)..)? {
                let (_, value) = entry?;
                let (kind, namespace, name, generation) = value.value();
                let key = ResourceKey::new(kind, namespace, name);
                let record = schema::required_record(&generations, &key, generation)?;
                out.push(record.into_stored(key, generation));
            }
            Ok(out)
        })
    }

    /// A live feed: after each commit, its changes (never empty; `Unchanged` left out).
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<Change>> {
        self.inner.feed.subscribe()
    }

    fn read<T>(&self, op: &str, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, Failure>) -> Result<T, StoreError> {
        let run = || {
            let txn = self.inner.db.begin_read()?;
            f(&txn)
        };
        run().map_err(|e| e.into_store_error(op, &self.inner.path))
    }

    /// Runs `f` in a write transaction; commits it unless `dry_run`, it changed nothing, or `f`
    /// failed (then nothing of it is stored). Returns `f`'s value and the batch's changes.
    fn write<T>(
        &self,
        op: &str,
        actor: &str,
        dry_run: bool,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, Failure>,
    ) -> Result<(T, Vec<Change>), StoreError> {
        let _guard = self.inner.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let run = || -> Result<(T, Vec<Change>, Option<u64>), Failure> {
            let txn = self.inner.db.begin_write()?;
            let (value, changes, changed) = {
                let mut batch = Batch::open(&txn, actor)?;
                let value = f(&mut batch)?;
                let changed = batch.changed;
                if changed && !dry_run {
                    batch.meta.insert(META_REVISION, batch.revision)?;
                }
                (value, batch.changes, changed.then_some(batch.revision))
            };
            if changed.is_some() && !dry_run {
                txn.commit()?;
                Ok((value, changes, changed))
            } else {
                txn.abort()?;
                Ok((value, changes, None))
            }
        };
        let (value, changes, committed) = run().map_err(|e| e.into_store_error(op, &self.inner.path))?;
        if let Some(revision) = committed {
            self.inner.revision.store(revision, Ordering::Release);
            let written: Vec<Change> = changes.iter().filter(|c| c.action != Action::Unchanged).cloned().collect();
            tracing::debug!(revision, changes = written.len(), op, "store commit");
            // No receivers is fine: nobody is watching.
            let _ = self.inner.feed.send(written);
        }
        Ok((value, changes))
    }
}

/// Opens a table in a read transaction; `None` if it was never created.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Failure> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates the tables of a new store, or checks the format of an existing one; returns the
/// latest revision.
fn initialize(db: &Database, path: &Path) -> Result<u64, Failure> {
    let txn = db.begin_write()?;
    let revision = {
        let mut meta = txn.open_table(META)?;
        txn.open_table(HEADS)?;
        txn.open_table(GENERATIONS)?;
        txn.open_table(REVISIONS)?;
        let format = meta.get(META_FORMAT)?.map(|v| v.value());
        match format {
            Some(found) if found != schema::FORMAT => {
                return Err(StoreError::Format { path: path.to_path_buf(), found, expected: schema::FORMAT }.into());
            }
            Some(_) => {}
            None => {
                meta.insert(META_FORMAT, schema::FORMAT)?;
            }
        }
        meta.get(META_REVISION)?.map(|v| v.value()).unwrap_or(0)
    };
    txn.commit()?;
    Ok(revision)
}

/// The state of one write transaction: its open tables and the changes made so far.
struct Batch<'txn> {
    meta: Table<'txn, &'static str, u64>,
    heads: Table<'txn, (&'static str, &'static str, &'static str), u64>,
    generations: Table<'txn, (&'static str, &'static str, &'static str, u64), &'static [u8]>,
    revisions: Table<'txn, (u64, u32), (&'static str, &'static str, &'static str, u64)>,
    /// The revision this commit takes if it changes anything.
    revision: u64,
    actor: String,
    time_unix_ms: u64,
    changes: Vec<Change>,
    changed: bool,
}

impl<'txn> Batch<'txn> {
    fn open(txn: &'txn WriteTransaction, actor: &str) -> Result<Self, Failure> {
        let meta = txn.open_table(META)?;
        let previous = meta.get(META_REVISION)?.map(|v| v.value()).unwrap_or(0);
        let revision = previous
            .checked_add(1)
            .ok_or_else(|| Failure::Corrupt(format!("the revision counter is at its maximum ({previous})")))?;
        Ok(Batch {
            meta,
            heads: txn.open_table(HEADS)?,
            generations: txn.open_table(GENERATIONS)?,
            revisions: txn.open_table(REVISIONS)?,
            revision,
            actor: actor.to_string(),
            time_unix_ms: now_unix_ms(),
            changes: Vec::new(),
            changed: false,
        })
    }

    /// The latest generation of `key` (possibly a deletion), with its number.
    fn latest(&self, key: &ResourceKey) -> Result<Option<(u64, Record)>, Failure> {
        match schema::head(&self.heads, key)? {
            Some(generation) => Ok(Some((generation, schema::required_record(&self.generations, key, generation)?))),
            None => Ok(None),
        }
    }

    /// Records that `key` stays as it is.
    fn unchanged(&mut self, key: &ResourceKey) -> Result<(), Failure> {
        let (generation, record) =
            self.latest(key)?.ok_or_else(|| Failure::Corrupt(format!("{key} is unchanged but has no generation")))?;
        self.changes.push(Change {
            key: key.clone(),
            action: Action::Unchanged,
            revision: record.revision,
            generation,
        });
        Ok(())
    }

    /// Writes generation `generation` of `key`.
    fn put(
        &mut self,
        key: &ResourceKey,
        generation: u64,
        document: serde_json::Value,
        deleted: bool,
        action: Action,
    ) -> Result<(), Failure> {
        let record = Record {
            revision: self.revision,
            deleted,
            actor: self.actor.clone(),
            time_unix_ms: self.time_unix_ms,
            document,
        };
        let index = u32::try_from(self.changes.len())
            .map_err(|_| Failure::Corrupt(format!("more than {} changes in one commit", u32::MAX)))?;
        self.generations.insert(schema::generation_key(key, generation), record.encode().as_slice())?;
        self.heads.insert(schema::head_key(key), generation)?;
        self.revisions.insert((self.revision, index), schema::generation_key(key, generation))?;
        self.changes.push(Change { key: key.clone(), action, revision: self.revision, generation });
        self.changed = true;
        Ok(())
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
