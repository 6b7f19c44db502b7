//! The on-disk layout: redb tables, the encoding of a stored generation, and the lookups
//! shared by read and write transactions.
//!
//! - `meta`: `format` (layout version) and `revision` (the latest committed revision).
//! - `heads`: `(kind, namespace, name)` → the resource's latest generation (which may be a
//!   deletion). Sorted by key, so `list` is an ordered scan.
//! - `generations`: `(kind, namespace, name, generation)` → a JSON [`Record`]. Never
//!   rewritten: history and rollback are range reads.
//! - `revisions`: `(revision, index)` → `(kind, namespace, name, generation)`, the log of
//!   every commit's changes in order, for `changes_since`.

use super::error::Failure;
use super::{ResourceKey, Stored};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly; a store with another version is refused.
pub(crate) const FORMAT: u64 = 1;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const HEADS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("heads");
pub(crate) const GENERATIONS: TableDefinition<(&str, &str, &str, u64), &[u8]> = TableDefinition::new("generations");
pub(crate) const REVISIONS: TableDefinition<(u64, u32), (&str, &str, &str, u64)> = TableDefinition::new("revisions");

pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_REVISION: &str = "revision";

/// One generation as encoded in `generations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub revision: u64,
    pub deleted: bool,
    pub actor: String,
    pub time_unix_ms: u64,
    pub document: serde_json::Value,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // A `Value` and plain fields always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8], key: &ResourceKey, generation: u64) -> Result<Record, Failure> {
        serde_json::from_slice(bytes)
            .map_err(|e| Failure::Corrupt(format!("generation {generation} of {key} does not decode: {e}")))
    }

    pub(crate) fn into_stored(self, key: ResourceKey, generation: u64) -> Stored {
        Stored {
            key,
            revision: self.revision,
            generation,
            document: self.document,
            deleted: self.deleted,
            actor: self.actor,
            time_unix_ms: self.time_unix_ms,
        }
    }
}

pub(crate) fn head_key(key: &ResourceKey) -> (&str, &str, &str) {
    (&key.kind, &key.namespace, &key.name)
}

pub(crate) fn generation_key(key: &ResourceKey, generation: u64) -> (&str, &str, &str, u64) {
    (&key.kind, &key.namespace, &key.name, generation)
}

/// The latest generation number of `key`, if it has any.
pub(crate) fn head(
    heads: &impl ReadableTable<(&'static str, &'static str, &'static str), u64>,
    key: &ResourceKey,
) -> Result<Option<u64>, Failure> {
    Ok(heads.get(head_key(key))?.map(|g| g.value()))
}

/// One generation of `key`.
pub(crate) fn record(
    generations: &impl ReadableTable<(&'static str, &'static str, &'static str, u64), &'static [u8]>,
    key: &ResourceKey,
    generation: u64,
) -> Result<Option<Record>, Failure> {
    match generations.get(generation_key(key, generation))? {
        Some(bytes) => Ok(Some(Record::decode(bytes.value(), key, generation)?)),
        None => Ok(None),
    }
}

/// A generation that `heads` or `revisions` points at: its absence means the file is corrupt.
pub(crate) fn required_record(
    generations: &impl ReadableTable<(&'static str, &'static str, &'static str, u64), &'static [u8]>,
    key: &ResourceKey,
    generation: u64,
) -> Result<Record, Failure> {
    record(generations, key, generation)?
        .ok_or_else(|| Failure::Corrupt(format!("generation {generation} of {key} is referenced but missing")))
}

/// Every generation of `key`, oldest first.
pub(crate) fn all_generations(
    generations: &impl ReadableTable<(&'static str, &'static str, &'static str, u64), &'static [u8]>,
    key: &ResourceKey,
) -> Result<Vec<Stored>, Failure> {
    let mut out = Vec::new();
    for entry in generations.range(generation_key(key, 0)..=generation_key(key, u64::MAX))? {
        let (k, v) = entry?;
        let generation = k.value().3;
        out.push(Record::decode(v.value(), key, generation)?.into_stored(key.clone(), generation));
    }
    Ok(out)
}

/// The current (latest, not deleted) generation of `key`.
pub(crate) fn current(
    heads: &impl ReadableTable<(&'static str, &'static str, &'static str), u64>,
    generations: &impl ReadableTable<(&'static str, &'static str, &'static str, u64), &'static [u8]>,
    key: &ResourceKey,
) -> Result<Option<Stored>, Failure> {
    let Some(generation) = head(heads, key)? else { return Ok(None) };
    let record = required_record(generations, key, generation)?;
    Ok((!record.deleted).then(|| record.into_stored(key.clone(), generation)))
}
