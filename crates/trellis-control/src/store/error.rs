//! [`StoreError`]: every way a store operation can fail, each message naming the operation,
//! the resource or the file concerned.

use super::ResourceKey;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },

    #[error("the store {path} is already open (by another process, or another handle in this one)")]
    AlreadyOpen { path: PathBuf },

    #[error("store {path} is corrupt (found while trying to {op}): {detail}")]
    Corrupt { op: String, path: PathBuf, detail: String },

    #[error("the store {path} has format version {found}; this build reads version {expected}")]
    Format { path: PathBuf, found: u64, expected: u64 },

    /// Any other failure of the database (I/O, a full disk, ...).
    #[error("store {path}: cannot {op}: {source}")]
    Database { op: String, path: PathBuf, source: Box<redb::Error> },

    #[error("cannot encode {key} as JSON: {source}")]
    Encode { key: ResourceKey, source: serde_json::Error },

    /// Two documents of one `apply` have the same key but different contents (1-based positions).
    #[error("apply: {key} is given twice with different contents (documents {first} and {second}); nothing was stored")]
    Conflict { key: ResourceKey, first: usize, second: usize },

    #[error("rollback {key} to generation {to}: {key} has no history")]
    NoHistory { key: ResourceKey, to: u64 },

    #[error("rollback {key} to generation {to}: no such generation; it has 1..={latest}")]
    NoSuchGeneration { key: ResourceKey, to: u64, latest: u64 },

    #[error(
        "rollback {key} to generation {to}: generation {to} is a deletion; roll back to a generation that holds a document"
    )]
    RollbackToDeletion { key: ResourceKey, to: u64 },
}

impl StoreError {
    /// Whether the request itself is at fault (a conflict in the input, an unknown
    /// generation), as opposed to the store or its file: what an API answers with 4xx.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            StoreError::Encode { .. }
                | StoreError::Conflict { .. }
                | StoreError::NoHistory { .. }
                | StoreError::NoSuchGeneration { .. }
                | StoreError::RollbackToDeletion { .. }
        )
    }
}

/// An internal failure before the operation and file are known: redb's, or already a
/// [`StoreError`]. [`Failure::into_store_error`] adds the context at the API boundary.
#[derive(Debug)]
pub(crate) enum Failure {
    Redb(redb::Error),
    Store(StoreError),
    /// A stored value that does not decode.
    Corrupt(String),
}

impl Failure {
    pub(crate) fn into_store_error(self, op: &str, path: &std::path::Path) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Corrupt(detail) | Failure::Redb(redb::Error::Corrupted(detail)) => {
                StoreError::Corrupt { op: op.to_string(), path: path.to_path_buf(), detail }
            }
            Failure::Redb(redb::Error::DatabaseAlreadyOpen) => StoreError::AlreadyOpen { path: path.to_path_buf() },
            Failure::Redb(source) => {
                StoreError::Database { op: op.to_string(), path: path.to_path_buf(), source: Box::new(source) }
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::Redb(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
