//! Client principals: the `AUTH_TOKENS_FILE` of `name:role:token` lines, looked up in
//! constant time and reloaded on SIGHUP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sinkron_core::limits::validate_node_name;

use super::{constant_time_eq, Principal, Role};

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read AUTH_TOKENS_FILE {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `name:role:token`.
    #[error("AUTH_TOKENS_FILE {path} line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (the token itself is never shown).
        reason: String,
    },
}

/// One principal and its secret.
#[derive(Clone)]
struct Entry {
    principal: Principal,
    token: Vec<u8>,
}

/// The principals of a tokens file.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.principal.name.as_str()).collect();
        f.debug_struct("TokenSet").field("principals", &names).finish()
    }
}

impl TokenSet {
    /// Parses a tokens file's text: one `name:role:token` a line; blank lines and lines
    /// starting with `#` are skipped. The token is everything after the second colon.
    pub fn parse(text: &str, path: &str) -> Result<Self, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut names = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad =
                |reason: &str| TokensError::Line { path: path.into(), line: i + 1, reason: reason.into() };
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected name:role:token"));
            };
            validate_node_name(name).map_err(|e| bad(&format!("principal name {e}")))?;
            let role: Role = role.parse().map_err(|e: String| bad(&e))?;
            if token.is_empty() || token.chars().any(char::is_whitespace) {
                return Err(bad("the token must be non-empty without spaces"));
            }
            if !names.insert(name.to_string()) {
                return Err(bad(&format!("principal {name:?} is listed twice")));
            }
            if entries.iter().any(|e| constant_time_eq(&e.token, token.as_bytes())) {
                return Err(bad("this token is already given to another principal"));
            }
            if token.len() < 16 {
                tracing::warn!(principal = name, "the token is shorter than 16 characters: easy to guess");
            }
            entries.push(Entry {
                principal: Principal { name: name.to_string(), role },
                token: token.as_bytes().to_vec(),
            });
        }
        Ok(Self { entries })
    }

    /// The principal whose token is `token`. Every entry is compared, in time that does not
    /// depend on where (or whether) a match is.
    pub fn lookup(&self, token: &[u8]) -> Option<Principal> {
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.token, token) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }

    /// How many principals the file names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file names none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The tokens file and its current contents, shared by every request.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    current: Arc<RwLock<Arc<TokenSet>>>,
}

impl TokenStore {
    /// Reads `path`; a node does not start on a file it cannot use.
    pub fn open(path: &Path) -> Result<Self, TokensError> {
        let set = read(path)?;
        Ok(Self { path: path.to_path_buf(), current: Arc::new(RwLock::new(Arc::new(set))) })
    }

    /// The principals as of the last (re)load.
    pub fn current(&self) -> Arc<TokenSet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again. On an error the previous principals stay in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let set = read(&self.path)?;
        let count = set.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(count)
    }
}

fn read(path: &Path) -> Result<TokenSet, TokensError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: shown.clone(), source })?;
    TokenSet::parse(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_principals_with_roles() {
        let text = "# ops\nalice:admin:a-very-long-token-1\n\nbob:write:tok:with:colons\ncarol:read:r3\n";
        let set = TokenSet::parse(text, "t").expect("parse");
        assert_eq!(set.len(), 3);
        let bob = set.lookup(b"tok:with:colons").expect("bob");
        assert_eq!((bob.name.as_str(), bob.role), ("bob", Role::Write));
        assert_eq!(set.lookup(b"a-very-long-token-1").map(|p| p.role), Some(Role::Admin));
        assert!(set.lookup(b"r").is_none() && set.lookup(b"").is_none() && set.lookup(b"r3x").is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_never_the_token() {
        for (text, reason) in [
            ("alice:admin", "expected name:role:token"),
            ("alice:root:secret-secret", "role"),
            ("alice:read:", "non-empty"),
            ("a b:read:secret-secret", "principal name"),
            ("a:read:secret-one\na:write:secret-two", "listed twice"),
            ("a:read:same-secret\nb:write:same-secret", "already given"),
        ] {
            let err = TokenSet::parse(text, "t").expect_err(text).to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(!err.contains("secret-"), "{err}");
        }
    }

    #[test]
    fn a_reload_with_a_broken_file_keeps_the_old_principals() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "a:read:first-token-aaaa\n").expect("write");
        let store = TokenStore::open(&path).expect("open");
        std::fs::write(&path, "a:read:first-token-aaaa\nb:admin:second-token-bb\n").expect("write");
        assert_eq!(store.reload().expect("reload"), 2);
        assert_eq!(store.current().lookup(b"second-token-bb").map(|p| p.role), Some(Role::Admin));
        std::fs::write(&path, "broken").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.current().len(), 2, "the previous set stays");
    }
}
