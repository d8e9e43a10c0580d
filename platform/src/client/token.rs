//! Where the bearer token of each call comes from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Supplies the token sent as `authorization: Bearer …` on every call.
/// Asked once per call, so it may change at any time (rotation).
///
/// ```
/// use grpc_platform::client::TokenProvider;
/// struct Fixed;
/// impl TokenProvider for Fixed {
///     fn token(&self) -> Option<String> { Some("eyJ...".into()) }
/// }
/// assert_eq!(Fixed.token().as_deref(), Some("eyJ..."));
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// The token for the next call; `None` sends no `authorization`.
    fn token(&self) -> Option<String>;
}

/// The same token for every call.
///
/// ```
/// use grpc_platform::client::{StaticToken, TokenProvider};
/// assert_eq!(StaticToken::new("t").token().as_deref(), Some("t"));
/// ```
#[derive(Debug, Clone)]
pub struct StaticToken(String);

impl StaticToken {
    /// A provider that answers `token` on every call.
    ///
    /// ```
    /// use grpc_platform::client::{StaticToken, TokenProvider};
    /// let provider = StaticToken::new("eyJ...");
    /// assert_eq!(provider.token().as_deref(), Some("eyJ..."));
    /// ```
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl TokenProvider for StaticToken {
    fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// A token read from a file and read again whenever the file changes, as
/// Kubernetes rewrites projected service-account tokens. The file's
/// modification time and length are checked on each call (a `stat`, no read,
/// when nothing changed); a file that cannot be read keeps the last token.
///
/// ```no_run
/// use grpc_platform::client::{FileToken, TokenProvider};
/// let provider = FileToken::new("/var/run/secrets/tokens/things");
/// let token = provider.token();
/// ```
#[derive(Debug, Clone)]
pub struct FileToken {
    path: PathBuf,
    cache: Arc<Mutex<Option<(SystemTime, u64, String)>>>,
}

impl FileToken {
    /// A provider for the token in `path`, trimmed of surrounding whitespace.
    /// Nothing is read yet: the first call reads it, and until the file
    /// exists calls go without a token.
    ///
    /// ```
    /// use grpc_platform::client::{FileToken, TokenProvider};
    /// let path = std::env::temp_dir().join("grpc-platform-file-token-doctest");
    /// std::fs::write(&path, "eyJ...\n").unwrap();
    /// let provider = FileToken::new(&path);
    /// assert_eq!(provider.token().as_deref(), Some("eyJ..."));
    /// ```
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            cache: Arc::default(),
        }
    }
}

impl TokenProvider for FileToken {
    fn token(&self) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        match (stamp, cache.as_ref()) {
            (Some((modified, len)), Some((m, l, token))) if modified == *m && len == *l => {
                Some(token.clone())
            }
            (Some((modified, len)), _) => match std::fs::read_to_string(&self.path) {
                Ok(text) => {
                    let token = text.trim().to_owned();
                    *cache = Some((modified, len, token.clone()));
                    Some(token)
                }
                Err(_) => cache.as_ref().map(|(_, _, t)| t.clone()),
            },
            (None, _) => cache.as_ref().map(|(_, _, t)| t.clone()),
        }
    }
}

/// A token from a closure (for example, a cache of an OAuth client).
///
/// ```
/// use grpc_platform::client::{FnToken, TokenProvider};
/// let provider = FnToken::new(|| Some("fresh".to_string()));
/// assert_eq!(provider.token().as_deref(), Some("fresh"));
/// ```
pub struct FnToken<F>(F);

impl<F> FnToken<F>
where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    /// A provider that calls `f` once per call; `None` sends the call without
    /// a token.
    ///
    /// ```
    /// use grpc_platform::client::{FnToken, TokenProvider};
    /// let provider = FnToken::new(|| std::env::var("THINGS_TOKEN").ok());
    /// let token = provider.token(); // None when THINGS_TOKEN is not set
    /// ```
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> TokenProvider for FnToken<F>
where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    fn token(&self) -> Option<String> {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_gives_the_new_token_and_a_missing_one_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let provider = FileToken::new(&path);
        assert_eq!(provider.token().as_deref(), Some("first"));
        std::fs::write(&path, "second-longer\n").unwrap();
        assert_eq!(provider.token().as_deref(), Some("second-longer"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(provider.token().as_deref(), Some("second-longer"));
    }
}
