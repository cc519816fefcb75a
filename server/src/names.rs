//! Reserved names: `--tokens FILE` gives a client that presents a name's token that name
//! (`alice.<domain>`), every time it connects. Everyone else gets a random name.
//!
//! The file is TOML with one table:
//!
//! ```toml
//! [names]
//! alice = "a-long-random-token"
//! ```
//!
//! A client asks for a name with the query parameter `name` and presents the token as
//! `Authorization: Bearer TOKEN` (or the query parameter `token`, for pages that cannot set
//! headers). A refusal is the answer to its connecting request, before any session exists,
//! so it never disturbs the name's current holder; the right token replaces the holder.
//!
//! ```no_run
//! # fn doc() -> Result<(), String> {
//! use browserver_server::{Config, names::ReservedNames};
//!
//! let names = ReservedNames::load("tokens.toml".as_ref())?;
//! let config = Config { authenticator: Some(names), ..Config::default() };
//! # let _ = config;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use browserver_transport_http::{Authenticator, Connecting, Refusal};

/// The reserved names and their tokens, reloadable.
pub struct ReservedNames {
    path: PathBuf,
    names: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for ReservedNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservedNames")
            .field("path", &self.path)
            .field("names", &self.read().len())
            .finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    names: HashMap<String, String>,
}

/// Tokens shorter than this are refused when the file is read: a token is the only thing
/// between a stranger and a reserved name.
pub const MIN_TOKEN_LEN: usize = 16;

impl ReservedNames {
    /// Reads `path`; every name must be a valid DNS label (lowercase) and every token at
    /// least [`MIN_TOKEN_LEN`] characters.
    pub fn load(path: &Path) -> Result<Arc<ReservedNames>, String> {
        Ok(Arc::new(ReservedNames {
            path: path.to_path_buf(),
            names: RwLock::new(parse(path)?),
        }))
    }

    /// Reads the file again; on an error the names in use stay. Returns how many names
    /// are reserved.
    pub fn reload(&self) -> Result<usize, String> {
        let names = parse(&self.path)?;
        let n = names.len();
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
        Ok(n)
    }

    /// How many names are reserved.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no name is reserved.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, String>> {
        self.names.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for one connecting client (see the module's documentation).
    pub fn decide(
        &self,
        name: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        let names = self.read();
        match (name, token) {
            (None, None) => Ok(None),
            (Some(name), token) => {
                let name = name.to_ascii_lowercase();
                let Some(expected) = names.get(&name) else {
                    return Err(Refusal::forbidden(format!(
                        "the name {name} is not reserved on this server"
                    )));
                };
                match token {
                    None => Err(Refusal::unauthorized(format!(
                        "the name {name} is reserved: present its token"
                    ))),
                    Some(t) if browserver_core::secret::equal(t, expected) => Ok(Some(name)),
                    Some(_) => Err(Refusal::forbidden(format!(
                        "wrong token for the name {name}"
                    ))),
                }
            }
            (None, Some(token)) => names
                .iter()
                .find(|(_, expected)| browserver_core::secret::equal(token, expected))
                .map(|(name, _)| Some(name.clone()))
                .ok_or_else(|| Refusal::forbidden("this token reserves no name")),
        }
    }
}

fn parse(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, token) in &file.names {
        if !browserver_core::is_valid_id(name) || name.to_ascii_lowercase() != *name {
            return Err(format!(
                "{}: {name:?} is not a valid name (a lowercase DNS label: a-z, 0-9, '-')",
                path.display()
            ));
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(format!(
                "{}: the token of {name} is shorter than {MIN_TOKEN_LEN} characters",
                path.display()
            ));
        }
    }
    Ok(file.names)
}

#[async_trait::async_trait]
impl Authenticator for ReservedNames {
    async fn authenticate(&self, client: &Connecting) -> Result<Option<String>, Refusal> {
        let bearer = client
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let token = bearer.or_else(|| client.query_param("token"));
        self.decide(client.query_param("name"), token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "browserver-names-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write");
        path
    }

    const ALICE: &str = "[names]\nalice = \"0123456789abcdef\"\n";

    #[test]
    fn the_right_token_gets_the_name_and_anything_else_is_refused_with_a_reason() {
        let names = ReservedNames::load(&file(ALICE)).expect("load");
        assert_eq!(
            names.decide(Some("alice"), Some("0123456789abcdef")),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            names.decide(Some("ALICE"), Some("0123456789abcdef")),
            Ok(Some("alice".into())),
            "names are case-insensitive"
        );
        let wrong = names
            .decide(Some("alice"), Some("0123456789abcdeX"))
            .expect_err("wrong");
        assert_eq!(
            (wrong.status, wrong.reason.as_str()),
            (403, "wrong token for the name alice")
        );
        let missing = names.decide(Some("alice"), None).expect_err("missing");
        assert_eq!(missing.status, 401);
        let unknown = names
            .decide(Some("bob"), Some("0123456789abcdef"))
            .expect_err("bob");
        assert_eq!(unknown.status, 403);
        assert_eq!(names.decide(None, None), Ok(None), "no name: a random one");
        assert_eq!(
            names.decide(None, Some("0123456789abcdef")),
            Ok(Some("alice".into())),
            "a token alone finds its name"
        );
        assert_eq!(
            names
                .decide(None, Some("nope-nope-nope-nope"))
                .map_err(|r| r.status),
            Err(403)
        );
        let debug = format!("{names:?}");
        assert!(debug.contains("names: 1"), "{debug}");
        assert!(
            !debug.contains("0123456789abcdef"),
            "no token in Debug: {debug}"
        );
    }

    #[tokio::test]
    async fn a_connecting_client_presents_the_token_as_a_bearer_or_in_the_query() {
        let names = ReservedNames::load(&file(ALICE)).expect("load");
        let connecting = |auth: Option<&str>, query: &[(&str, &str)]| {
            let mut headers = http::HeaderMap::new();
            if let Some(a) = auth {
                headers.insert(http::header::AUTHORIZATION, a.parse().expect("value"));
            }
            Connecting {
                transport: "websocket",
                headers,
                query: query
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                address: None,
            }
        };
        let bearer = connecting(Some("Bearer 0123456789abcdef"), &[("name", "alice")]);
        assert_eq!(names.authenticate(&bearer).await, Ok(Some("alice".into())));
        let query = connecting(None, &[("name", "alice"), ("token", "0123456789abcdef")]);
        assert_eq!(names.authenticate(&query).await, Ok(Some("alice".into())));
        let neither = connecting(None, &[("name", "alice")]);
        assert_eq!(
            names.authenticate(&neither).await.map_err(|r| r.status),
            Err(401)
        );
        assert_eq!(names.authenticate(&connecting(None, &[])).await, Ok(None));
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem_and_a_failed_reload_keeps_the_names() {
        for (text, expect) in [
            (
                "[names]\nAlice = \"0123456789abcdef\"\n",
                "not a valid name",
            ),
            (
                "[names]\n\"a.b\" = \"0123456789abcdef\"\n",
                "not a valid name",
            ),
            ("[names]\nalice = \"short\"\n", "shorter than 16"),
            (
                "[nams]\nalice = \"0123456789abcdef\"\n",
                "unknown field `nams`",
            ),
            ("names = 3", "invalid type"),
        ] {
            let err = ReservedNames::load(&file(text)).expect_err(text);
            assert!(err.contains(expect), "{text}: {err}");
        }
        let two = ReservedNames::load(&file(&format!("{ALICE}bob = \"fedcba9876543210\"\n")))
            .expect("two");
        assert_eq!((two.len(), two.is_empty()), (2, false));
        let none = ReservedNames::load(&file("[names]\n")).expect("none");
        assert_eq!((none.len(), none.is_empty()), (0, true));
        let path = file(ALICE);
        let names = ReservedNames::load(&path).expect("load");
        std::fs::write(&path, "[names]\nbob = \"x\"\n").expect("write");
        assert!(names.reload().is_err());
        assert_eq!(names.len(), 1);
        std::fs::write(&path, "[names]\nbob = \"fedcba9876543210\"\n").expect("write");
        assert_eq!(names.reload(), Ok(1));
        assert!(
            names
                .decide(Some("alice"), Some("0123456789abcdef"))
                .is_err()
        );
        assert!(names.decide(Some("bob"), Some("fedcba9876543210")).is_ok());
    }
}
