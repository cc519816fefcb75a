//! The session registry: id → session, creation with fresh unguessable ids, lookup, eviction.

use std::collections::HashMap;

use crate::error::RegistryError;
use crate::id::{IdGenerator, RandomIds, is_valid_id};
use crate::session::Session;

/// Something the registry can evict once it is finished.
pub trait Closable {
    /// Whether the entry is finished and may be evicted.
    fn is_closed(&self) -> bool;
}

impl Closable for Session {
    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }
}

const MAX_ATTEMPTS: u32 = 8;

/// Sessions by id.
///
/// Invariants: every key is a valid id ([`is_valid_id`]) produced by the id generator; at most
/// `max_sessions` entries.
pub struct Registry<T> {
    entries: HashMap<String, T>,
    ids: Box<dyn IdGenerator>,
    max_sessions: usize,
}

impl<T> std::fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.entries.len())
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl<T> Registry<T> {
    /// An empty registry with the default CSPRNG id generator.
    pub fn new(max_sessions: usize) -> Self {
        Registry {
            entries: HashMap::new(),
            ids: Box::new(RandomIds),
            max_sessions,
        }
    }

    /// Replaces the id generator.
    pub fn set_id_generator(&mut self, ids: impl IdGenerator + 'static) {
        self.ids = Box::new(ids);
    }

    /// Creates an entry under a fresh id; `make` receives the id (a session announces it).
    pub fn create(&mut self, make: impl FnOnce(&str) -> T) -> Result<String, RegistryError> {
        if self.entries.len() >= self.max_sessions {
            return Err(RegistryError::Full {
                limit: self.max_sessions,
            });
        }
        for _ in 0..MAX_ATTEMPTS {
            let id = self.ids.generate()?;
            if !is_valid_id(&id) {
                return Err(RegistryError::InvalidId(id));
            }
            if !self.entries.contains_key(&id) {
                let entry = make(&id);
                self.entries.insert(id.clone(), entry);
                return Ok(id);
            }
        }
        Err(RegistryError::IdCollision {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Creates an entry under an id the application chose (for example one an authenticated
    /// client is entitled to). The id must be valid ([`is_valid_id`]) and not in use.
    pub fn create_with_id(
        &mut self,
        id: &str,
        make: impl FnOnce(&str) -> T,
    ) -> Result<String, RegistryError> {
        if !is_valid_id(id) {
            return Err(RegistryError::InvalidId(id.to_string()));
        }
        if self.entries.contains_key(id) {
            return Err(RegistryError::IdInUse(id.to_string()));
        }
        if self.entries.len() >= self.max_sessions {
            return Err(RegistryError::Full {
                limit: self.max_sessions,
            });
        }
        let entry = make(id);
        self.entries.insert(id.to_string(), entry);
        Ok(id.to_string())
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.entries.get(id)
    }

    /// The entry with this id, mutably.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.entries.get_mut(id)
    }

    /// Removes and returns the entry with this id.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        self.entries.remove(id)
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// All entries, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut T)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_str(), v))
    }
}

impl<T: Closable> Registry<T> {
    /// Removes every closed entry and returns them with their ids.
    pub fn evict_closed(&mut self) -> Vec<(String, T)> {
        let closed: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, v)| v.is_closed())
            .map(|(k, _)| k.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|id| self.entries.remove(&id).map(|v| (id, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{CloseReason, Config, Role};
    use std::time::Instant;

    #[test]
    fn sessions_are_created_under_unguessable_ids_and_found_by_id() {
        let mut r = Registry::new(10);
        let now = Instant::now();
        let a = r
            .create(|_| Session::new(Role::Server, Config::default(), now))
            .expect("create");
        let b = r
            .create(|_| Session::new(Role::Server, Config::default(), now))
            .expect("create");
        assert_ne!(a, b);
        assert!(a.len() >= 25 && is_valid_id(&a));
        assert!(r.get(&a).is_some());
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn closed_sessions_are_evicted() {
        let mut r = Registry::new(10);
        let now = Instant::now();
        let a = r
            .create(|_| Session::new(Role::Server, Config::default(), now))
            .expect("create");
        let b = r
            .create(|_| Session::new(Role::Server, Config::default(), now))
            .expect("create");
        r.get_mut(&a).map(|s| s.close(now, CloseReason::TimedOut));
        let evicted: Vec<String> = r.evict_closed().into_iter().map(|(id, _)| id).collect();
        assert_eq!(evicted, vec![a.clone()]);
        assert!(r.get(&a).is_none() && r.get(&b).is_some());
    }

    #[test]
    fn the_id_generator_can_be_replaced() {
        let mut r = Registry::new(10);
        let mut n = 0;
        r.set_id_generator(move || {
            n += 1;
            format!("user-{n}")
        });
        assert_eq!(r.create(|_| ()).ok().as_deref(), Some("user-1"));
        assert_eq!(r.create(|_| ()).ok().as_deref(), Some("user-2"));
    }

    #[test]
    fn a_generator_that_collides_or_returns_bad_ids_is_an_error() {
        let mut r = Registry::new(10);
        r.set_id_generator(|| "same".to_string());
        assert!(r.create(|_| ()).is_ok());
        assert_eq!(
            r.create(|_| ()),
            Err(RegistryError::IdCollision { attempts: 8 })
        );
        r.set_id_generator(|| "Not Valid".to_string());
        assert_eq!(
            r.create(|_| ()),
            Err(RegistryError::InvalidId("Not Valid".into()))
        );
    }

    #[test]
    fn an_application_chosen_id_must_be_valid_and_free() {
        let mut r = Registry::new(10);
        assert_eq!(r.create_with_id("alice", |_| ()).as_deref(), Ok("alice"));
        assert_eq!(
            r.create_with_id("alice", |_| ()),
            Err(RegistryError::IdInUse("alice".into()))
        );
        assert_eq!(
            r.create_with_id("Bob!", |_| ()),
            Err(RegistryError::InvalidId("Bob!".into()))
        );
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let mut r = Registry::new(1);
        assert!(r.create(|_| ()).is_ok());
        assert_eq!(r.create(|_| ()), Err(RegistryError::Full { limit: 1 }));
    }

    #[test]
    fn entries_are_listed_counted_and_removed() {
        let mut r: Registry<u32> = Registry::new(8);
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
        let a = r.create(|_| 1).expect("a");
        let b = r.create(|_| 2).expect("b");
        assert!(!r.is_empty());
        assert_eq!(r.len(), 2);
        let mut ids: Vec<&str> = r.iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        let mut expected = vec![a.as_str(), b.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        for (_, v) in r.iter_mut() {
            *v += 10;
        }
        assert_eq!(r.get(&a), Some(&11));
        assert_eq!(r.remove(&a), Some(11));
        assert_eq!(r.remove(&a), None);
        assert_eq!(r.len(), 1);
        assert!(format!("{r:?}").contains("len: 1"));
    }
}
