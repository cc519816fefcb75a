//! The live sessions of one endpoint, by secret id: bounded by the registry's limit, each
//! holding its address's place in the quota until it is forgotten.

use std::sync::{Mutex, MutexGuard};

use browserver_core::{Registry, RegistryError, SharedQuota};

use crate::session::Session;

/// What an endpoint keeps per session: at least the session.
pub trait Entry: Clone + Send + 'static {
    /// The session.
    fn session(&self) -> &Session;
}

/// An endpoint's sessions.
pub struct SessionTable<E> {
    registry: Mutex<Registry<E>>,
    quota: SharedQuota,
}

impl<E> std::fmt::Debug for SessionTable<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SessionTable")
            .field("registry", &*registry)
            .finish()
    }
}

impl<E: Entry> SessionTable<E> {
    /// A table of at most `max_sessions`, giving places back to `quota`.
    pub fn new(max_sessions: usize, quota: SharedQuota) -> SessionTable<E> {
        SessionTable {
            registry: Mutex::new(Registry::new(max_sessions)),
            quota,
        }
    }

    /// Makes the ids of new sessions with `ids` (a cluster node's
    /// [`NodeTag`](browserver_core::cluster::NodeTag), an application's own scheme).
    pub fn set_ids(&self, ids: impl browserver_core::IdGenerator + 'static) {
        self.lock().set_id_generator(ids);
    }

    fn lock(&self) -> MutexGuard<'_, Registry<E>> {
        // A panic while holding the lock cannot leave the map half-updated; keep serving.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an entry under a fresh secret id; `make` receives the id.
    pub fn create(&self, make: impl FnOnce(&str) -> E) -> Result<(String, E), RegistryError> {
        let mut registry = self.lock();
        let id = registry.create(make)?;
        let entry = registry.get(&id).cloned();
        // `create` just inserted it.
        entry
            .map(|e| (id, e))
            .ok_or(RegistryError::Full { limit: 0 })
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<E> {
        self.lock().get(id).cloned()
    }

    /// The live session with this id.
    pub fn session(&self, id: &str) -> Option<Session> {
        self.lock().get(id).map(|e| e.session().clone())
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Session> {
        self.lock()
            .iter()
            .map(|(_, e)| e.session().clone())
            .collect()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Closes every session (reason `closed`).
    pub fn close_all(&self) {
        for s in self.sessions() {
            s.close();
        }
    }

    /// The session closed: it leaves the table and gives its address's place back.
    pub fn forget(&self, id: &str) {
        let removed = self.lock().remove(id);
        if let Some(address) = removed.and_then(|e| e.session().address()) {
            self.quota
                .release(address.ip(), tokio::time::Instant::now().into_std());
        }
    }
}
