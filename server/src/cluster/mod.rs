//! Several browserver nodes as one service, on Redis, without sticky sessions.
//!
//! - **Redis is the control plane.** It holds the cluster's key (what nodes authenticate their
//!   hops with), one key per live node (`browserver:node:<id>` → its boot epoch and internal
//!   address, with a time to live) and one key per public name (`browserver:name:<name>` →
//!   the node holding it, with a time to live). Every node rewrites its keys every third of
//!   the time to live (a Redis that restarted empty is whole again within one beat). Bodies
//!   never go through Redis.
//! - **Secrets name their node.** Session ids are made by the node's
//!   [`NodeTag`]: a BrowserChannel `SID` or a WebSocket
//!   resume token is routed to its node with no lookup ([`browserver_core::cluster::route`]).
//! - **The data plane is a direct hop** ([`hop`]): a request for a name or a session held
//!   elsewhere is forwarded to its node's internal listener, over pooled HTTP/2 connections
//!   (streaming both ways, with HTTP/2's flow control), or a fresh HTTP/1.1 connection for an
//!   upgrade (a WebSocket), then piped.
//!
//! Design, failure modes and guarantees: `docs/scale-out.md`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browserver_core::cluster::{NodeTag, OwnerCache};
use redis::aio::ConnectionManager;

pub mod hop;

/// Where the registry lives and how this node is reached.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT` (or `rediss://`, `redis://:PASSWORD@HOST:PORT/DB`).
    pub redis: String,
    /// This node's id: 1 to 20 characters of `[a-z0-9]`, unique in the cluster (default: a
    /// random one).
    pub node_id: Option<String>,
    /// Where the internal listener listens: other nodes' hops arrive there (default
    /// `127.0.0.1:0`: fine for nodes on one machine; give a private address otherwise).
    pub listen: SocketAddr,
    /// How other nodes reach the internal listener, `http://HOST:PORT` (default: the
    /// listener's own address, unless it listens on every interface).
    pub advertise: Option<String>,
    /// How long a node's and a name's registry keys live without a heartbeat (default 15 s;
    /// heartbeats come every third of it). A dead node's names come free after it.
    pub ttl: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &redacted(&self.redis))
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The Redis URL without its password (for logs).
fn redacted(redis: &str) -> String {
    match url::Url::parse(redis) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("…"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(unparsable)".into(),
    }
}

impl ClusterConfig {
    /// A node of the cluster whose registry is at `redis`, with the defaults.
    pub fn new(redis: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            redis: redis.into(),
            node_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            ttl: Duration::from_secs(15),
        }
    }
}

/// Why a node cannot join.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis cannot be reached or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A bad node id.
    #[error(transparent)]
    Tag(#[from] browserver_core::cluster::TagError),
    /// No entropy for the epoch or the key.
    #[error(transparent)]
    Entropy(#[from] browserver_core::EntropyError),
    /// The internal listener cannot be opened.
    #[error("cannot listen on {0} for other nodes: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// `--advertise` is not `http://HOST:PORT`, or is needed and missing.
    #[error("advertise: {0}")]
    Advertise(String),
    /// The time to live is too short to beat within.
    #[error("the registry's time to live must be at least 3 s")]
    Ttl,
}

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Its boot.
    pub epoch: String,
    /// Its internal listener, `HOST:PORT`.
    pub address: String,
}

impl NodeInfo {
    /// `<epoch> <address>`, as stored.
    fn parse(id: &str, stored: &str) -> Option<NodeInfo> {
        let (epoch, address) = stored.split_once(' ')?;
        Some(NodeInfo {
            id: id.to_string(),
            epoch: epoch.to_string(),
            address: address.to_string(),
        })
    }
}

/// Who holds a public name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody (or a node no longer alive).
    Nobody,
    /// This node.
    Here,
    /// Another node.
    Node(NodeInfo),
    /// Redis cannot say and nothing is cached.
    Unknown,
}

const KEY: &str = "browserver:key";
const NODE: &str = "browserver:node:";
const NAME: &str = "browserver:name:";
/// How long a looked-up name's holder is believed without asking again.
const NAME_CACHE: Duration = Duration::from_secs(1);
/// Most cached names and nodes.
const CACHE_ENTRIES: usize = 65_536;
/// Names refreshed per script call.
const BEAT_BATCH: usize = 1000;

/// Rewrites each name key this node holds (absent: set again; ours: made to live on);
/// returns the indexes of those another node holds now.
const REFRESH: &str = r"
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == false or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
";

/// Deletes a name key if this node holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A name's holder and that node's entry, in one round trip.
const LOOKUP: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false then return {} end
return {holder, redis.call('GET', ARGV[1] .. holder)}
";

/// This node's membership of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.tag.node())
            .field("epoch", &self.inner.tag.epoch())
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

struct Inner {
    redis: ConnectionManager,
    tag: NodeTag,
    /// Our internal listener, `HOST:PORT`.
    advertise: String,
    /// What every hop carries.
    key: String,
    ttl: Duration,
    /// The names this node registered (what the heartbeat keeps alive).
    claimed: Mutex<HashSet<String>>,
    names: Mutex<OwnerCache<String>>,
    nodes: Mutex<OwnerCache<NodeInfo>>,
    hops: hop::Hops,
    listener: Mutex<Option<tokio::net::TcpListener>>,
    scripts: Scripts,
}

struct Scripts {
    refresh: redis::Script,
    release: redis::Script,
    lookup: redis::Script,
}

/// A poisoned lock holds a cache or a set that is still whole: keep using it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn counted<T>(n: u64, r: T) -> T {
    browserver_runtime::metrics::redis_commands(n);
    r
}

impl Cluster {
    /// Opens the internal listener, connects to Redis, reads (or makes) the cluster's key,
    /// and registers this node. [`run`](crate::run) then serves other nodes' hops and beats.
    pub async fn join(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.ttl < Duration::from_secs(3) {
            return Err(ClusterError::Ttl);
        }
        let node = match config.node_id {
            Some(id) => id,
            None => NodeTag::random_node_id()?,
        };
        let tag = NodeTag::new(&node, &NodeTag::random_epoch()?)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ClusterError::Listen(config.listen, e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ClusterError::Listen(config.listen, e))?;
        let advertise = match &config.advertise {
            Some(url) => advertised_address(url)?,
            None if bound.ip().is_unspecified() => {
                return Err(ClusterError::Advertise(format!(
                    "the internal listener is on every interface ({bound}): say how other nodes reach it (--advertise http://HOST:PORT)"
                )));
            }
            None => bound.to_string(),
        };
        let client = redis::Client::open(config.redis.as_str())?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            // Redis is on the local network: a lookup that waits longer than this while it
            // is away holds a visitor for nothing (the request gets 503 instead).
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut redis = client.get_connection_manager_with_config(manager).await?;
        let candidate = {
            use browserver_core::IdGenerator;
            browserver_core::RandomIds.generate()?
        };
        let key: String = counted(
            2,
            redis::pipe()
                .cmd("SET")
                .arg(KEY)
                .arg(&candidate)
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(KEY)
                .query_async::<(String,)>(&mut redis)
                .await,
        )?
        .0;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                redis,
                tag,
                advertise,
                key,
                ttl: config.ttl,
                claimed: Mutex::new(HashSet::new()),
                names: Mutex::new(OwnerCache::new(NAME_CACHE, CACHE_ENTRIES)),
                nodes: Mutex::new(OwnerCache::new(config.ttl / 3, CACHE_ENTRIES)),
                hops: hop::Hops::new(),
                listener: Mutex::new(Some(listener)),
                scripts: Scripts {
                    refresh: redis::Script::new(REFRESH),
                    release: redis::Script::new(RELEASE),
                    lookup: redis::Script::new(LOOKUP),
                },
            }),
        };
        if let Some(previous) = cluster.register_node().await? {
            tracing::warn!(
                node = cluster.inner.tag.node(),
                previous = %previous,
                "replaced the entry of an earlier start with this node id (if that node still runs, give each node its own --node-id)"
            );
        }
        tracing::info!(
            node = cluster.inner.tag.node(),
            epoch = cluster.inner.tag.epoch(),
            internal = %cluster.inner.advertise,
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// This node's tag (what its session ids start with).
    pub fn tag(&self) -> &NodeTag {
        &self.inner.tag
    }

    /// The internal listener's address as other nodes see it.
    pub fn advertised(&self) -> &str {
        &self.inner.advertise
    }

    /// Whether `presented` is the cluster's key.
    pub(crate) fn is_key(&self, presented: &str) -> bool {
        browserver_core::secret::equal(presented, &self.inner.key)
    }

    pub(crate) fn key(&self) -> &str {
        &self.inner.key
    }

    pub(crate) fn hops(&self) -> &hop::Hops {
        &self.inner.hops
    }

    /// Serves other nodes' hops for `browserver`, and beats: until the process ends.
    pub(crate) fn start(&self, browserver: crate::Browserver) {
        if let Some(listener) = lock(&self.inner.listener).take() {
            tokio::spawn(hop::serve_internal(
                listener,
                browserver.clone(),
                self.clone(),
            ));
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(cluster.inner.ttl / 3);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            beat.tick().await;
            loop {
                beat.tick().await;
                cluster.beat(browserver.proxy()).await;
            }
        });
    }

    /// Writes this node's entry (and the cluster's key, if Redis lost it); the entry it
    /// replaced, if it was not this start's own.
    async fn register_node(&self) -> Result<Option<String>, redis::RedisError> {
        let mut redis = self.inner.redis.clone();
        let ours = format!("{} {}", self.inner.tag.epoch(), self.inner.advertise);
        let (previous,): (Option<String>,) = counted(
            2,
            redis::pipe()
                .cmd("SET")
                .arg(format!("{NODE}{}", self.inner.tag.node()))
                .arg(&ours)
                .arg("PX")
                .arg(millis(self.inner.ttl))
                .arg("GET")
                .cmd("SET")
                .arg(KEY)
                .arg(&self.inner.key)
                .arg("NX")
                .ignore()
                .query_async(&mut redis)
                .await,
        )?;
        Ok(previous.filter(|p| *p != ours))
    }

    /// One heartbeat: this node's entry, then its names; names another node took are
    /// evicted here.
    async fn beat(&self, proxy: &browserver_transport_http::Proxy) {
        match self.register_node().await {
            Ok(None) => {}
            // Another process rewrote our entry since the last beat: two nodes share an id,
            // and requests for each go astray half the time.
            Ok(Some(other)) => tracing::error!(
                node = self.inner.tag.node(),
                other = %other,
                "another running node uses this node id: give each node its own --node-id"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat: cannot reach Redis");
                return;
            }
        }
        let names: Vec<String> = lock(&self.inner.claimed).iter().cloned().collect();
        for batch in names.chunks(BEAT_BATCH) {
            let mut invocation = self.inner.scripts.refresh.prepare_invoke();
            for name in batch {
                invocation.key(format!("{NAME}{name}"));
            }
            invocation
                .arg(self.inner.tag.node())
                .arg(millis(self.inner.ttl));
            let mut redis = self.inner.redis.clone();
            let lost: Vec<usize> = match counted(1, invocation.invoke_async(&mut redis).await) {
                Ok(lost) => lost,
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat: names not refreshed");
                    return;
                }
            };
            for i in lost {
                if let Some(name) = i.checked_sub(1).and_then(|i| batch.get(i)) {
                    tracing::info!(client = %name, "another node holds the name now");
                    lock(&self.inner.claimed).remove(name);
                    proxy.evict(name);
                }
            }
        }
    }

    /// Registers `name` as held here. A `reserved` name (granted by its token) is taken from
    /// whichever node held it, which is told to let it go; a random one must be free
    /// (`Err` if another node holds it). If Redis cannot be reached the name is kept
    /// locally, and the next heartbeat registers it.
    pub async fn claim(&self, name: &str, reserved: bool) -> Result<(), ClaimError> {
        let me = self.inner.tag.node();
        let mut set = redis::cmd("SET");
        set.arg(format!("{NAME}{name}"))
            .arg(me)
            .arg("PX")
            .arg(millis(self.inner.ttl));
        if reserved {
            set.arg("GET");
        } else {
            set.arg("NX");
        }
        let mut redis = self.inner.redis.clone();
        let reply: Result<Option<String>, _> = counted(1, set.query_async(&mut redis).await);
        match reply {
            // `SET … NX` answers OK when it set, nil when the key exists.
            Ok(None) if !reserved => return Err(ClaimError::Taken),
            Ok(Some(previous)) if reserved && previous != me => {
                lock(&self.inner.names).forget(name);
                let cluster = self.clone();
                let name = name.to_string();
                tokio::spawn(async move { cluster.tell_to_evict(&previous, &name).await });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = %name, error = %e, "cannot register the name in Redis; the heartbeat will");
            }
        }
        lock(&self.inner.claimed).insert(name.to_string());
        Ok(())
    }

    /// `name` was taken by another node: no longer kept alive from here.
    pub(crate) fn dropped(&self, name: &str) {
        lock(&self.inner.claimed).remove(name);
    }

    /// Leaves the cluster (shutting down): this node's entry goes at once, so no node
    /// forwards here any more.
    pub async fn leave(&self) {
        let mut redis = self.inner.redis.clone();
        let left: Result<i64, _> = counted(
            1,
            self.inner
                .scripts
                .release
                .key(format!("{NODE}{}", self.inner.tag.node()))
                .arg(format!(
                    "{} {}",
                    self.inner.tag.epoch(),
                    self.inner.advertise
                ))
                .invoke_async(&mut redis)
                .await,
        );
        if let Err(e) = left {
            tracing::debug!(error = %e, "node entry not removed from Redis; it expires");
        }
    }

    /// `name` is no longer held here.
    pub async fn release(&self, name: &str) {
        lock(&self.inner.claimed).remove(name);
        let mut redis = self.inner.redis.clone();
        let released: Result<i64, _> = counted(
            1,
            self.inner
                .scripts
                .release
                .key(format!("{NAME}{name}"))
                .arg(self.inner.tag.node())
                .invoke_async(&mut redis)
                .await,
        );
        if let Err(e) = released {
            tracing::debug!(client = %name, error = %e, "name not released in Redis; it expires");
        }
    }

    async fn tell_to_evict(&self, node: &str, name: &str) {
        let Some(info) = self.node(node, None).await else {
            return;
        };
        if let Err(e) = self.inner.hops.evict(&info, &self.inner.key, name).await {
            tracing::debug!(node, client = %name, error = %e, "could not tell the old holder; its heartbeat will");
        }
    }

    /// Who holds `name`, from the cache (a second) or Redis.
    pub async fn holder(&self, name: &str) -> Holder {
        let now = Instant::now();
        let cached = lock(&self.inner.names).get(name, now);
        if let Some(node) = cached {
            return self.holder_on(&node).await;
        }
        let mut redis = self.inner.redis.clone();
        let reply: Result<Vec<Option<String>>, _> = counted(
            1,
            self.inner
                .scripts
                .lookup
                .key(format!("{NAME}{name}"))
                .arg(NODE)
                .invoke_async(&mut redis)
                .await,
        );
        match reply {
            Ok(found) => match found.as_slice() {
                [Some(node), entry] => {
                    lock(&self.inner.names).put(name, node.clone(), now);
                    if node == self.inner.tag.node() {
                        return Holder::Here;
                    }
                    match entry.as_deref().and_then(|e| NodeInfo::parse(node, e)) {
                        Some(info) => {
                            lock(&self.inner.nodes).put(node, info.clone(), now);
                            Holder::Node(info)
                        }
                        None => Holder::Nobody,
                    }
                }
                _ => Holder::Nobody,
            },
            Err(e) => {
                tracing::warn!(client = %name, error = %e, "cannot look the name up in Redis");
                let stale = lock(&self.inner.names).get_stale(name);
                match stale {
                    Some(node) => self.holder_on(&node).await,
                    None => Holder::Unknown,
                }
            }
        }
    }

    async fn holder_on(&self, node: &str) -> Holder {
        if node == self.inner.tag.node() {
            return Holder::Here;
        }
        match self.node(node, None).await {
            Some(info) => Holder::Node(info),
            None => Holder::Nobody,
        }
    }

    /// A name's cached holder proved wrong.
    pub(crate) fn forget_holder(&self, name: &str) {
        lock(&self.inner.names).forget(name);
    }

    /// Node `id`, if it is alive (and in boot `epoch`, if given).
    pub async fn node(&self, id: &str, epoch: Option<&str>) -> Option<NodeInfo> {
        let now = Instant::now();
        let cached = lock(&self.inner.nodes).get(id, now);
        let info = match cached {
            Some(info) => Some(info),
            None => {
                let mut redis = self.inner.redis.clone();
                let reply: Result<Option<String>, _> = counted(
                    1,
                    redis::cmd("GET")
                        .arg(format!("{NODE}{id}"))
                        .query_async(&mut redis)
                        .await,
                );
                match reply {
                    Ok(Some(stored)) => {
                        let info = NodeInfo::parse(id, &stored);
                        if let Some(info) = &info {
                            lock(&self.inner.nodes).put(id, info.clone(), now);
                        }
                        info
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "cannot look the node up in Redis");
                        lock(&self.inner.nodes).get_stale(id)
                    }
                }
            }
        };
        info.filter(|i| epoch.is_none_or(|e| e == i.epoch))
    }

    /// A node proved unreachable: ask Redis next time.
    pub(crate) fn forget_node(&self, id: &str) {
        lock(&self.inner.nodes).forget(id);
    }
}

/// Why a name cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Another node holds it.
    #[error("another node holds the name")]
    Taken,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `http://HOST:PORT` → `HOST:PORT`.
fn advertised_address(url: &str) -> Result<String, ClusterError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ClusterError::Advertise(format!("{url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ClusterError::Advertise(format!(
            "{url:?}: the internal listener speaks plain HTTP: http://HOST:PORT"
        )));
    }
    match (uri.authority(), uri.port_u16()) {
        (Some(a), Some(_)) if uri.path() == "/" || uri.path().is_empty() => Ok(a.to_string()),
        _ => Err(ClusterError::Advertise(format!(
            "{url:?}: expected http://HOST:PORT"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_an_http_host_and_port() {
        assert_eq!(
            advertised_address("http://10.0.0.5:3573").ok().as_deref(),
            Some("10.0.0.5:3573")
        );
        assert_eq!(
            advertised_address("http://node1.internal:9000/")
                .ok()
                .as_deref(),
            Some("node1.internal:9000")
        );
        for bad in [
            "https://10.0.0.5:3573",
            "http://10.0.0.5",
            "http://10.0.0.5:1/path",
            "10.0.0.5:3573",
            "",
        ] {
            assert!(advertised_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_redis_password_never_shows() {
        let config = ClusterConfig::new("redis://:s3cret@10.0.0.9:6379/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("10.0.0.9:6379"), "{shown}");
        assert!(!format!("{:?}", ClusterConfig::new("not a url")).contains("not a url"));
    }

    #[test]
    fn a_node_entry_is_its_epoch_and_address() {
        assert_eq!(
            NodeInfo::parse("a", "e1 127.0.0.1:9"),
            Some(NodeInfo {
                id: "a".into(),
                epoch: "e1".into(),
                address: "127.0.0.1:9".into()
            })
        );
        assert_eq!(NodeInfo::parse("a", "nospace"), None);
    }
}
