//! Several browserver nodes as one service: the decisions, without I/O.
//!
//! - [`NodeTag`] names this node and its boot: every session secret it creates starts with
//!   it (`<node>-<epoch>-<random>`), so any node can tell from a BrowserChannel `SID` or a
//!   WebSocket resume token which node holds the session, without asking anyone.
//! - [`route`] decides what to do with a request that carries such a secret.
//! - [`OwnerCache`] remembers, for a bounded time and number of entries, who holds a public
//!   name (the registry itself lives elsewhere, in Redis for the `browserver` binary).
//!
//! ```
//! use browserver_core::IdGenerator;
//! use browserver_core::cluster::{NodeTag, Route, route};
//!
//! let mut a = NodeTag::new("a", "1x2").unwrap();
//! let b = NodeTag::new("b", "9").unwrap();
//! let sid = a.generate().unwrap();
//! assert!(sid.starts_with("a-1x2-"));
//! assert_eq!(route(&a, &sid), Route::Local);
//! assert_eq!(route(&b, &sid), Route::Node { node: "a", epoch: "1x2" });
//! assert_eq!(route(&b, "an-old-style-id"), Route::Local);
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::id::{IdGenerator, RandomIds};

/// Longest node id.
pub const MAX_NODE_ID: usize = 20;
/// Longest boot epoch.
pub const MAX_EPOCH: usize = 8;

/// Why a node id or epoch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Not 1 to 20 characters of `[a-z0-9]`.
    #[error("a node id is 1 to {MAX_NODE_ID} characters of a-z and 0-9, not {0:?}")]
    NodeId(String),
    /// Not 1 to 8 characters of `[a-z0-9]`.
    #[error("an epoch is 1 to {MAX_EPOCH} characters of a-z and 0-9, not {0:?}")]
    Epoch(String),
}

fn is_tag_part(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `id` can name a node: 1 to 20 characters of `[a-z0-9]`.
pub fn is_valid_node_id(id: &str) -> bool {
    is_tag_part(id, MAX_NODE_ID)
}

/// This node and its boot. As an [`IdGenerator`] it makes `<node>-<epoch>-<25 random
/// base-36 characters>`: still 128 bits of secret, still a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTag {
    node: String,
    epoch: String,
}

impl NodeTag {
    /// The tag of node `node` in boot `epoch`.
    pub fn new(node: &str, epoch: &str) -> Result<NodeTag, TagError> {
        if !is_valid_node_id(node) {
            return Err(TagError::NodeId(node.to_string()));
        }
        if !is_tag_part(epoch, MAX_EPOCH) {
            return Err(TagError::Epoch(epoch.to_string()));
        }
        Ok(NodeTag {
            node: node.to_string(),
            epoch: epoch.to_string(),
        })
    }

    /// A fresh boot epoch: 40 random bits, in base 36 (a restarted node's old secrets are
    /// told apart from its new ones).
    pub fn random_epoch() -> Result<String, crate::EntropyError> {
        let mut bytes = [0u8; 5];
        getrandom::fill(&mut bytes).map_err(|e| crate::EntropyError(e.to_string()))?;
        let mut n = [0u8; 16];
        n[..5].copy_from_slice(&bytes);
        Ok(crate::id::base36(u128::from_le_bytes(n)))
    }

    /// A random node id (8 characters), for a node started without one.
    pub fn random_node_id() -> Result<String, crate::EntropyError> {
        let id = RandomIds.generate()?;
        Ok(id.chars().rev().take(8).collect())
    }

    /// The node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The boot epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
}

impl IdGenerator for NodeTag {
    fn generate(&mut self) -> Result<String, crate::EntropyError> {
        let random = RandomIds.generate()?;
        Ok(format!("{}-{}-{random}", self.node, self.epoch))
    }
}

/// The node and epoch a session secret was made by: a session id `<node>-<epoch>-<random>`,
/// or a WebSocket resume token `<id>.<secret>`. `None` for ids of another form (a single
/// node's, or an application's own).
pub fn owner_of(secret: &str) -> Option<(&str, &str)> {
    let id = secret.split_once('.').map_or(secret, |(id, _)| id);
    let mut parts = id.splitn(3, '-');
    let (node, epoch, random) = (parts.next()?, parts.next()?, parts.next()?);
    (is_valid_node_id(node) && is_tag_part(epoch, MAX_EPOCH) && random.len() == 25)
        .then_some((node, epoch))
}

/// What to do with a request carrying a session secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Handle it here: this node made the secret, or no node is named in it (the local
    /// endpoint answers as it would for any secret: unknown if it is not its own).
    Local,
    /// Another node made it: forward the request there, if that node is alive in this
    /// `epoch`; if not, the session is gone with its node and `Local` answers that.
    Node {
        /// The node id.
        node: &'a str,
        /// The boot the secret is from.
        epoch: &'a str,
    },
}

/// Where the request carrying `secret` belongs, seen from node `own`.
pub fn route<'a>(own: &NodeTag, secret: &'a str) -> Route<'a> {
    match owner_of(secret) {
        Some((node, epoch)) if node != own.node || epoch != own.epoch => {
            Route::Node { node, epoch }
        }
        _ => Route::Local,
    }
}

/// A bounded cache of answers that expire: who holds a public name, where a node is. At
/// most `max` entries (when full, expired ones go; if none has, everything goes: a cache
/// refilled from the registry is correct, only slower).
#[derive(Debug)]
pub struct OwnerCache<V> {
    entries: HashMap<String, (V, Instant)>,
    ttl: Duration,
    max: usize,
}

impl<V: Clone> OwnerCache<V> {
    /// A cache whose entries live `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> OwnerCache<V> {
        OwnerCache {
            entries: HashMap::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// The answer for `key`, if one younger than the time to live is known at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(v, _)| v.clone())
    }

    /// The answer for `key` however old (what to use when the registry cannot be asked).
    pub fn get_stale(&self, key: &str) -> Option<V> {
        self.entries.get(key).map(|(v, _)| v.clone())
    }

    /// Remembers `value` for `key` as of `now`.
    pub fn put(&mut self, key: &str, value: V, now: Instant) {
        if self.entries.len() >= self.max && !self.entries.contains_key(key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max {
                self.entries.clear();
            }
        }
        self.entries.insert(key.to_string(), (value, now));
    }

    /// Forgets `key` (its answer proved wrong).
    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_valid_id;

    #[test]
    fn tagged_ids_are_valid_ids_that_name_their_node_and_epoch() {
        let mut tag = NodeTag::new("node7", "abc").expect("tag");
        let a = tag.generate().expect("id");
        let b = tag.generate().expect("id");
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert_eq!(owner_of(&a), Some(("node7", "abc")));
        let longest = NodeTag::new(&"n".repeat(MAX_NODE_ID), &"e".repeat(MAX_EPOCH))
            .expect("tag")
            .generate()
            .expect("id");
        assert!(is_valid_id(&longest), "{longest}");
    }

    #[test]
    fn resume_tokens_are_routed_by_their_session_id() {
        let mut tag = NodeTag::new("a", "e1").expect("tag");
        let token = format!("{}.secretpart", tag.generate().expect("id"));
        assert_eq!(owner_of(&token), Some(("a", "e1")));
    }

    #[test]
    fn ids_of_other_forms_name_no_node() {
        for id in [
            "",
            "plainrandomid0123456789abc",
            "a-b",
            "a-b-short",
            "A-b-0123456789012345678901234",
            "a--0123456789012345678901234",
            "toolongnodeidtoolongnode-e-0123456789012345678901234",
        ] {
            assert_eq!(owner_of(id), None, "{id}");
        }
    }

    #[test]
    fn bad_node_ids_and_epochs_are_refused() {
        assert!(matches!(NodeTag::new("", "1"), Err(TagError::NodeId(_))));
        assert!(matches!(NodeTag::new("a-b", "1"), Err(TagError::NodeId(_))));
        assert!(matches!(NodeTag::new("A", "1"), Err(TagError::NodeId(_))));
        assert!(matches!(
            NodeTag::new(&"n".repeat(MAX_NODE_ID + 1), "1"),
            Err(TagError::NodeId(_))
        ));
        assert!(matches!(NodeTag::new("a", ""), Err(TagError::Epoch(_))));
        assert!(matches!(
            NodeTag::new("a", &"1".repeat(MAX_EPOCH + 1)),
            Err(TagError::Epoch(_))
        ));
        let tag = NodeTag::new("a", "1").expect("tag");
        assert_eq!((tag.node(), tag.epoch()), ("a", "1"));
    }

    #[test]
    fn random_epochs_and_node_ids_are_valid_and_differ() {
        let (e1, e2) = (
            NodeTag::random_epoch().expect("e"),
            NodeTag::random_epoch().expect("e"),
        );
        assert_ne!(e1, e2);
        let n = NodeTag::random_node_id().expect("n");
        assert_eq!(n.len(), 8);
        assert!(NodeTag::new(&n, &e1).is_ok(), "{n} {e1}");
    }

    #[test]
    fn a_secret_is_local_to_its_node_and_epoch_only() {
        let mut a = NodeTag::new("a", "1").expect("tag");
        let restarted = NodeTag::new("a", "2").expect("tag");
        let b = NodeTag::new("b", "1").expect("tag");
        let sid = a.generate().expect("id");
        assert_eq!(route(&a, &sid), Route::Local);
        assert_eq!(
            route(&b, &sid),
            Route::Node {
                node: "a",
                epoch: "1"
            }
        );
        // The same node after a restart: the old boot's secret is another node's.
        assert_eq!(
            route(&restarted, &sid),
            Route::Node {
                node: "a",
                epoch: "1"
            }
        );
        assert_eq!(route(&b, "plainrandomid0123456789abc"), Route::Local);
    }

    #[test]
    fn cached_answers_expire_and_can_be_forgotten() {
        let t0 = Instant::now();
        let mut cache = OwnerCache::new(Duration::from_secs(1), 10);
        assert!(cache.is_empty());
        cache.put("alice", "a".to_string(), t0);
        assert!(!cache.is_empty());
        assert_eq!(cache.get("alice", t0), Some("a".into()));
        assert_eq!(
            cache.get("alice", t0 + Duration::from_millis(999)),
            Some("a".into())
        );
        assert_eq!(cache.get("alice", t0 + Duration::from_secs(1)), None);
        assert_eq!(cache.get_stale("alice"), Some("a".into()));
        cache.forget("alice");
        assert_eq!(cache.get_stale("alice"), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        let mut cache = OwnerCache::new(Duration::from_secs(1), 3);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            cache.put(name, i, t0);
        }
        assert_eq!(cache.len(), 3);
        // Full of live entries: it starts again.
        cache.put("d", 3, t0);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("d", t0), Some(3));
        // Full with expired entries (a time to live old is expired): only those go.
        let mut cache = OwnerCache::new(Duration::from_secs(1), 3);
        cache.put("old", 0, t0);
        let t1 = t0 + Duration::from_secs(1);
        cache.put("b", 1, t1);
        cache.put("c", 2, t1);
        cache.put("d", 3, t1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("old", t1), None);
        assert_eq!(cache.get("b", t1), Some(1));
        // Replacing a key never evicts.
        cache.put("b", 9, t1);
        assert_eq!(cache.len(), 3);
    }
}
