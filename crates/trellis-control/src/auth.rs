//! Who may do what: bearer tokens and their roles.
//!
//! Tokens are random 32-byte secrets shown once at creation; only their SHA-256 digests are
//! kept (`tokens.json` in the data directory), so a copy of the data directory does not
//! hand out credentials. At first start an admin token is created and written to
//! `admin.token` (mode 0600) in the data directory. There are no anonymous writes.
//!
//! Join tokens are different: they never open the API. A proxy presents one once to get its
//! first certificate for the namespace and service account the token is bound to; it may be
//! single-use, and may expire.

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
    /// Lets a proxy obtain its first certificate as `service_account` in `namespace`.
    Join { namespace: String, service_account: String },
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
    /// Unix seconds after which the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Refused after its first use.
    #[serde(default)]
    pub single_use: bool,
    #[serde(default)]
    pub used: bool,
}

/// Limits on a token's use.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenLimits {
    pub expires_at: Option<i64>,
    pub single_use: bool,
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
        let secret = tokens.create("admin", Role::Admin, TokenLimits::default())?;
        let admin_file = data_dir.join("admin.token");
        write_private(&admin_file, &format!("{secret}\n"))?;
        Ok((tokens, Some(admin_file)))
    }

    /// Creates a token and returns its secret (shown once).
    pub fn create(&self, name: &str, role: Role, limits: TokenLimits) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("trellis_{}", hex(&bytes));
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.iter().any(|r| r.name == name) {
            anyhow::bail!("a token named `{name}` already exists");
        }
        records.push(TokenRecord {
            name: name.to_string(),
            digest: digest(&secret),
            role,
            expires_at: limits.expires_at,
            single_use: limits.single_use,
            used: false,
        });
        self.save(&records)?;
        Ok(secret)
    }

    fn save(&self, records: &[TokenRecord]) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(records)?;
        // Write-then-rename so a crash never leaves a half-written token file.
        let tmp = self.path.with_extension("json.tmp");
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// The API caller holding `secret`, if it is a known, unexpired API token (join tokens
    /// never authenticate API calls).
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let wanted = digest(secret);
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        // Comparing digests, not secrets, keeps timing from revealing a secret's prefix.
        records
            .iter()
            .find(|r| r.digest == wanted && !matches!(r.role, Role::Join { .. }) && !expired(r))
            .map(|r| Caller { name: r.name.clone(), role: r.role.clone() })
    }

    /// Redeems a join token: the (namespace, service account) it is bound to. A single-use
    /// token is marked used (on disk) before this returns.
    pub fn redeem_join(&self, secret: &str) -> Result<(String, String), String> {
        let wanted = digest(secret);
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = records.iter_mut().find(|r| r.digest == wanted) else {
            return Err("unknown join token".into());
        };
        let Role::Join { namespace, service_account } = record.role.clone() else {
            return Err(format!("token `{}` is not a join token", record.name));
        };
        if expired(record) {
            return Err(format!("join token `{}` has expired", record.name));
        }
        if record.single_use {
            if record.used {
                return Err(format!("join token `{}` was single-use and has been used", record.name));
            }
            record.used = true;
            let name = record.name.clone();
            self.save(&records).map_err(|e| format!("cannot record the use of join token `{name}`: {e}"))?;
        }
        Ok((namespace, service_account))
    }
}

fn expired(record: &TokenRecord) -> bool {
    record.expires_at.is_some_and(|at| trellis_identity::unix_now() >= at)
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
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
        let owner =
            tokens.create("alice", Role::ServiceOwner { namespace: "shop".into() }, TokenLimits::default()).unwrap();
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

    #[test]
    fn join_tokens_are_bound_single_use_and_never_open_the_api() {
        let dir = std::env::temp_dir().join(format!("trellis-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (tokens, _) = Tokens::open(&dir).unwrap();
        let role = Role::Join { namespace: "shop".into(), service_account: "web".into() };
        let once = tokens.create("web-1", role.clone(), TokenLimits { expires_at: None, single_use: true }).unwrap();
        let old = tokens
            .create(
                "web-2",
                role,
                TokenLimits { expires_at: Some(trellis_identity::unix_now() - 1), single_use: false },
            )
            .unwrap();
        assert!(tokens.authenticate(&once).is_none(), "a join token is no API token");
        assert_eq!(tokens.redeem_join(&once).unwrap(), ("shop".to_string(), "web".to_string()));
        // The use survives a restart.
        let (reopened, _) = Tokens::open(&dir).unwrap();
        assert!(reopened.redeem_join(&once).unwrap_err().contains("has been used"));
        assert!(reopened.redeem_join(&old).unwrap_err().contains("expired"));
        assert!(reopened.redeem_join("trellis_nope").unwrap_err().contains("unknown"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
