//! Who may do what: bearer tokens and their roles.
//!
//! Tokens are random 32-byte secrets shown once at creation; only their SHA-256 digests are
//! kept (`tokens.json` in the data directory), so a copy of the data directory does not
//! hand out credentials. At first start an admin token is created and written to
//! `admin.token` (mode 0600) in the data directory. There are no anonymous writes.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including creating tokens.
    Admin,
    /// Read everything; change resources only in `namespace`.
    ServiceOwner { namespace: String },
    /// Read only.
    Viewer,
}

impl Role {
    /// Whether this role may change resources in `namespace` (`None`: not namespaced, e.g.
    /// proxy settings, which only admins may change).
    pub fn may_write(&self, namespace: Option<&str>) -> bool {
        match (self, namespace) {
            (Role::Admin, _) => true,
            (Role::ServiceOwner { namespace: own }, Some(ns)) => own == ns,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub digest: String,
    #[serde(flatten)]
    pub role: Role,
}

/// The set of tokens, persisted in the data directory.
pub struct Tokens {
    path: PathBuf,
    records: Mutex<Vec<TokenRecord>>,
}

/// The caller behind a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Tokens {
    /// Loads the token file, creating it and an admin token at first start. Returns the path
    /// of the new admin token file when one was created.
    pub fn open(data_dir: &Path) -> anyhow::Result<(Tokens, Option<PathBuf>)> {
        let path = data_dir.join("tokens.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            let records: Vec<TokenRecord> = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a valid token file: {e}", path.display()))?;
            return Ok((Tokens { path, records: Mutex::new(records) }, None));
        }
        let tokens = Tokens { path, records: Mutex::new(Vec::new()) };
        let secret = tokens.create("admin", Role::Admin)?;
        let admin_file = data_dir.join("admin.token");
        write_private(&admin_file, &format!("{secret}\n"))?;
        Ok((tokens, Some(admin_file)))
    }

    /// Creates a token and returns its secret (shown once).
    pub fn create(&self, name: &str, role: Role) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("trellis_{}", hex(&bytes));
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.iter().any(|r| r.name == name) {
            anyhow::bail!("a token named `{name}` already exists");
        }
        records.push(TokenRecord { name: name.to_string(), digest: digest(&secret), role });
        let text = serde_json::to_string_pretty(&*records)?;
        // Write-then-rename so a crash never leaves a half-written token file.
        let tmp = self.path.with_extension("json.tmp");
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(secret)
    }

    /// The caller holding `secret`, if it is a known token.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let wanted = digest(secret);
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        // Comparing digests, not secrets, keeps timing from revealing a secret's prefix.
        records.iter().find(|r| r.digest == wanted).map(|r| Caller { name: r.name.clone(), role: r.role.clone() })
    }
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_makes_an_admin_token_that_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("trellis-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (tokens, admin_file) = Tokens::open(&dir).unwrap();
        let secret = std::fs::read_to_string(admin_file.unwrap()).unwrap().trim().to_string();
        assert_eq!(tokens.authenticate(&secret).unwrap().role, Role::Admin);
        let owner = tokens.create("alice", Role::ServiceOwner { namespace: "shop".into() }).unwrap();
        let (reopened, again) = Tokens::open(&dir).unwrap();
        assert!(again.is_none());
        let alice = reopened.authenticate(&owner).unwrap();
        assert!(alice.role.may_write(Some("shop")));
        assert!(!alice.role.may_write(Some("billing")));
        assert!(!alice.role.may_write(None));
        assert!(reopened.authenticate("trellis_wrong").is_none());
        assert!(!std::fs::read_to_string(dir.join("tokens.json")).unwrap().contains(&owner));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
