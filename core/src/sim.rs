//! A deterministic simulator: two [`Session`]s, one server-role and one client-role, joined
//! by a seeded faulty network under a virtual clock.
//!
//! Each direction works like a BrowserChannel back channel: the *receiver* asks the sender to
//! attach a downstream path (carrying its acknowledgement, like `AID`), the sender streams
//! batches on it, and the receiver acknowledges what it released. The network can lose a
//! batch (the connection carrying it dies), cut a batch after a prefix, duplicate and delay
//! packets (so they reorder), partition both peers for a while, end every path after one
//! batch (a buffering proxy), and make the client vanish (a crashed tab). Applications on
//! both sides send tagged messages and may close, stop or terminate.
//!
//! Time jumps to the next scheduled action or session deadline; nothing sleeps. After every
//! step the invariants are checked (see [`run`]); the first violation is returned as a
//! [`Failure`] that names the seed and the command replaying it.
//!
//! ```
//! use browserver_core::sim::{Scenario, run};
//! let report = run(&Scenario::from_seed(7)).expect("invariants hold");
//! assert!(report.steps > 0);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::outbound::{Item, Payload};
use crate::session::{
    CloseReason, Config, Event, KeepaliveMode, PathId, PathMode, Role, Session, State, Transmit,
};

const MS: Duration = Duration::from_millis(1);

/// The network's behaviour. Probabilities are per packet (or per batch) in `0.0..=1.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// One-way latency bounds; jitter between them reorders packets.
    pub latency: (Duration, Duration),
    /// A batch is lost and the connection carrying it dies.
    pub loss: f64,
    /// A batch is cut after a prefix of its items and the connection dies.
    pub cut: f64,
    /// A packet is delivered twice (a retried request, a resent back channel).
    pub duplicate: f64,
    /// Some packets take up to this much extra delay (reordering beyond jitter).
    pub straggle: (f64, Duration),
    /// Windows `(start, length)` during which nothing crosses in either direction.
    pub partitions: Vec<(Duration, Duration)>,
    /// Every path ends after one batch (a buffering proxy, BrowserChannel `CI=1`).
    pub one_shot: bool,
    /// Paths end after this many message bytes (BrowserChannel's 10 KiB rule).
    pub path_max_bytes: Option<usize>,
    /// The client vanishes at this time and never comes back.
    pub client_crash: Option<Duration>,
}

impl Faults {
    /// No faults, 1–5 ms latency.
    pub fn perfect() -> Faults {
        Faults {
            latency: (MS, 5 * MS),
            loss: 0.0,
            cut: 0.0,
            duplicate: 0.0,
            straggle: (0.0, Duration::ZERO),
            partitions: Vec::new(),
            one_shot: false,
            path_max_bytes: None,
            client_crash: None,
        }
    }
}

/// What an application does to end the session, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Nobody closes; the run ends with both sessions open.
    None,
    /// The server application closes at this time (the client may reconnect).
    ServerClose(Duration),
    /// The server application stops at this time (the client must not reconnect).
    ServerStop(Duration),
    /// The client application terminates at this time.
    ClientTerminate(Duration),
}

/// One simulated run, fully determined by its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// The network.
    pub faults: Faults,
    /// Both sessions' options.
    pub session: Config,
    /// Messages each application tries to send.
    pub messages: usize,
    /// Largest message, in bytes (each message carries a unique tag plus padding).
    pub max_len: usize,
    /// How the applications end the session.
    pub ending: Ending,
    /// When the network heals (all faults off) so that everything can settle.
    pub heal_at: Duration,
    /// When the run stops.
    pub end_at: Duration,
    /// Instead of tagged messages, the applications run proxied requests as
    /// [`stream`](crate::stream)s over the session (see [`StreamWork`]).
    pub streams: Option<StreamWork>,
}

/// A streams workload: the server side opens requests with bodies, the client side answers
/// each with a body; both read slowly, and either may reset a stream mid-way. Checked: the
/// bytes of every stream arrive exactly, in order; a receiver never holds more than its
/// windows (the machine refuses a peer that sends more, which fails the run); send queues
/// stay bounded; no stream is left hanging once the network healed.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamWork {
    /// Flow-control settings of both sides.
    pub config: crate::stream::StreamConfig,
    /// Requests the server side opens.
    pub requests: usize,
    /// Largest body, each way.
    pub max_body: usize,
    /// Chance per application step that one stream is reset.
    pub reset_chance: f64,
    /// Bytes an application reads per step, at most (a slow reader).
    pub read_per_step: usize,
    /// Largest pause between application steps.
    pub step_gap: Duration,
    /// The server side's answer deadline, if any.
    pub head_timeout: Option<Duration>,
}

impl Scenario {
    /// Derives a scenario from a seed: a fault profile (perfect, lossy, duplicating,
    /// reordering, partitioned, buffering proxy, crashing client, or all at once), session
    /// limits, message count and sizes, and an ending.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
        let mut faults = Faults::perfect();
        let profile = rng.random_range(0..8u32);
        let sec = Duration::from_secs(1);
        let chaos = profile == 7;
        if profile == 1 || chaos {
            faults.loss = rng.random_range(0.01..0.15);
            faults.cut = rng.random_range(0.01..0.15);
        }
        if profile == 2 || chaos {
            faults.duplicate = rng.random_range(0.05..0.4);
        }
        if profile == 3 || chaos {
            faults.latency = (MS, rng.random_range(10..400) * MS);
            faults.straggle = (rng.random_range(0.01..0.2), rng.random_range(1..5) * sec);
        }
        if profile == 4 || chaos {
            for _ in 0..rng.random_range(1..4) {
                let start = rng.random_range(1..120) * sec;
                let len = rng.random_range(1..70) * sec;
                faults.partitions.push((start, len));
            }
        }
        if profile == 5 || (chaos && rng.random_bool(0.5)) {
            faults.one_shot = rng.random_bool(0.5);
            faults.path_max_bytes = Some(rng.random_range(64..10_240));
        }
        if profile == 6 || (chaos && rng.random_bool(0.2)) {
            faults.client_crash = Some(rng.random_range(1..150) * sec);
        }
        let mut session = Config {
            keepalive_interval: rng.random_range(5..25) * sec,
            session_timeout: rng.random_range(20..40) * sec,
            attach_timeout: rng.random_range(5..40) * sec,
            keepalive: KeepaliveMode::Sequenced,
            ..Config::default()
        };
        if rng.random_bool(0.3) {
            session.max_buffered_bytes = rng.random_range(256..4096);
        }
        if rng.random_bool(0.3) {
            session.reorder_window = rng.random_range(8..64);
        }
        if rng.random_bool(0.2) {
            session.max_held_bytes = rng.random_range(512..4096);
        }
        if rng.random_bool(0.5) {
            // Delayed, coalesced acknowledgements (as over WebSocket).
            session.ack_delay = Duration::from_millis(rng.random_range(1..3_000));
            session.ack_every = rng.random_range(1..100);
        }
        let ending = match rng.random_range(0..6u32) {
            0 => Ending::ServerClose(rng.random_range(1..200) * sec),
            1 => Ending::ServerStop(rng.random_range(1..200) * sec),
            2 => Ending::ClientTerminate(rng.random_range(1..200) * sec),
            _ => Ending::None,
        };
        Scenario {
            seed,
            faults,
            session,
            messages: rng.random_range(1..120),
            max_len: rng.random_range(16..600),
            ending,
            heal_at: Duration::from_secs(240),
            end_at: Duration::from_secs(480),
            streams: None,
        }
    }

    /// A [`from_seed`](Self::from_seed) scenario carrying a [`StreamWork`]: small windows
    /// (so they run out often), slow readers, resets, sometimes an answer deadline.
    pub fn streams_from_seed(seed: u64) -> Scenario {
        let mut sc = Scenario::from_seed(seed);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x57ea_3057_ea30);
        let frame = rng.random_range(64..2048);
        let stream_window = rng.random_range(frame as u32..8 * frame as u32);
        let config = crate::stream::StreamConfig {
            stream_window,
            connection_window: rng.random_range(stream_window..4 * stream_window),
            max_frame_data: frame,
            max_peer_streams: rng.random_range(2..16),
            max_local_streams: 16,
            max_head_bytes: 64,
            send_buffer: rng.random_range(frame..4 * frame),
            connection_send_buffer: rng.random_range(frame..8 * frame),
        };
        // The session must hold a connection window of frames plus control frames.
        let floor = 4 * config.connection_window as usize + 64 * 1024;
        sc.session.max_buffered_bytes = sc.session.max_buffered_bytes.max(floor);
        sc.session.max_held_bytes = sc.session.max_held_bytes.max(floor);
        sc.session.reorder_window = sc.session.reorder_window.max(4096);
        sc.messages = 0;
        sc.streams = Some(StreamWork {
            config,
            requests: rng.random_range(1..24),
            max_body: rng.random_range(0..64 * 1024),
            reset_chance: if rng.random_bool(0.5) {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            },
            read_per_step: rng.random_range(64..16 * 1024),
            step_gap: Duration::from_millis(rng.random_range(2..300)),
            head_timeout: rng
                .random_bool(0.3)
                .then(|| Duration::from_secs(rng.random_range(20..120))),
        });
        sc
    }
}

/// Figures from a successful run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps taken.
    pub steps: u64,
    /// Messages delivered to each side's application (server, client).
    pub delivered: [usize; 2],
    /// Sends acknowledged, per side.
    pub acked: [usize; 2],
    /// Sends failed because the session closed, per side.
    pub failed: [usize; 2],
    /// How each session ended (`None`: still open at the end of the run).
    pub closed: [Option<CloseReason>; 2],
    /// Streams whose both directions ended normally (a streams scenario).
    pub streams_completed: usize,
}

/// An invariant was violated.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The scenario's seed.
    pub seed: u64,
    /// Step at which the violation was seen.
    pub step: u64,
    /// Virtual time of the violation, since the start of the run.
    pub at: Duration,
    /// What was violated.
    pub what: String,
    /// The last actions before it, oldest first.
    pub trace: Vec<String>,
    /// Whether the scenario ran streams ([`Scenario::streams_from_seed`]).
    pub streams: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {} (t={:?}): {}",
            self.seed, self.step, self.at, self.what
        )?;
        let test = if self.streams {
            "replay_stream_seed"
        } else {
            "replay_seed"
        };
        writeln!(
            f,
            "replay: SIM_SEED={} cargo test -p browserver-core --features sim --test simulation {test} -- --nocapture",
            self.seed
        )?;
        writeln!(f, "last actions:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

const SERVER: usize = 0;
const CLIENT: usize = 1;

#[derive(Clone, Debug)]
enum Packet {
    /// The receiver asks the sender to attach a path (request number, acknowledgement).
    Attach { req: u64, ack: Option<u64> },
    /// Items on a path.
    Batch { items: Vec<Item> },
    /// The path answering `req` ended normally.
    Ended { req: u64 },
    /// The connection answering `req` died.
    Broken { req: u64 },
    /// A standalone acknowledgement.
    Ack(u64),
    /// The session is unknown (closed): like BrowserChannel's `400 Unknown SID`.
    Rejected,
    /// The client application ended the session (BrowserChannel `terminate`).
    Terminate,
}

#[derive(Clone, Debug)]
enum Action {
    Deliver { to: usize, packet: Packet },
    AppSend { peer: usize },
    Watchdog { peer: usize, generation: u64 },
    SenderNoticesDeath { peer: usize, path: PathId },
    Ending,
    Crash,
    Spurious { peer: usize },
}

#[derive(Default)]
struct Peer {
    /// Payloads of this side's accepted sends, by send sequence number.
    sent: HashMap<u64, Bytes>,
    /// Send sequence numbers in the order they were accepted.
    send_order: Vec<u64>,
    resolved: HashMap<u64, bool>,
    to_send: usize,
    delivered: Vec<Bytes>,
    closed: Option<(Instant, CloseReason)>,
    crashed: bool,
    /// Outbound paths this side's session has attached: path → (request it answers, dead).
    paths: HashMap<PathId, (u64, bool)>,
    last_write: HashMap<PathId, Instant>,
    had_path: bool,
    /// Highest sequence number transmitted so far (to tell first transmissions from resends).
    highest_sent: Option<u64>,
    path_lost_at: Option<Instant>,
    /// Inbound direction: the latest attach request sent and its generation for watchdogs.
    current_req: u64,
    generation: u64,
}

struct World<'a> {
    sc: &'a Scenario,
    rng: Xoshiro256PlusPlus,
    t0: Instant,
    now: Instant,
    step: u64,
    order: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    actions: HashMap<u64, Action>,
    sessions: [Session; 2],
    peers: [Peer; 2],
    trace: VecDeque<String>,
    watchdog: Duration,
    /// The stream applications (server side, client side), in a streams scenario.
    apps: Option<[StreamApp; 2]>,
}

/// One side's stream application in a streams scenario.
struct StreamApp {
    machine: crate::stream::Streams,
    /// A frame the session refused (buffer full), sent before any other.
    pending: Option<Bytes>,
    /// Streams this side sends on: bytes to send in all, bytes written so far.
    sending: HashMap<crate::stream::StreamId, (usize, usize)>,
    /// Streams this side receives on: declared length, bytes received, bytes not yet read.
    receiving: HashMap<crate::stream::StreamId, (usize, usize, usize)>,
    /// Streams opened (server side) so far.
    opened: usize,
    /// Streams that ended (completed or reset), by this side's count.
    over: std::collections::HashSet<crate::stream::StreamId>,
    /// Streams that completed: both directions ended normally.
    completed: usize,
}

impl StreamApp {
    fn new(side: crate::stream::Side, work: &StreamWork) -> StreamApp {
        let mut machine = crate::stream::Streams::new(side, work.config.clone());
        if side == crate::stream::Side::Proxy {
            machine.set_head_timeout(work.head_timeout);
        }
        StreamApp {
            machine,
            pending: None,
            sending: HashMap::new(),
            receiving: HashMap::new(),
            opened: 0,
            over: std::collections::HashSet::new(),
            completed: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.receiving.values().map(|r| r.2).sum()
    }
}

/// Byte `i` of stream `id`'s body in direction `dir`.
fn body_byte(id: u32, dir: usize, i: usize) -> u8 {
    ((id as usize * 31 + i * 7 + dir * 13) % 251) as u8
}

/// Runs a scenario and checks, after every step:
///
/// - each side's application receives the other side's messages exactly once, in order, as
///   a prefix of what was sent, and nothing after its session closed;
/// - every send is resolved at most once, and an acknowledged message was delivered;
/// - a keep-alive goes out only after its path was idle for the interval, a session times
///   out only after it had no path for the timeout, a timer never fires early (spurious
///   wake-ups are injected), and after `handle_timeout(now)` nothing is due at `now`;
/// - buffered and held bytes stay within their limits;
///
/// and at the end: after the network healed, every send of a live session was
/// acknowledged, and once both sessions are closed every send was resolved exactly once.
pub fn run(sc: &Scenario) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let mut world = World {
        sc,
        rng: Xoshiro256PlusPlus::seed_from_u64(sc.seed),
        t0,
        now: t0,
        step: 0,
        order: 0,
        queue: BinaryHeap::new(),
        actions: HashMap::new(),
        sessions: [
            Session::new(Role::Server, sc.session.clone(), t0),
            Session::new(Role::Client, sc.session.clone(), t0),
        ],
        peers: [Peer::default(), Peer::default()],
        trace: VecDeque::new(),
        watchdog: sc.session.keepalive_interval * 2 + sc.faults.latency.1 * 2,
        apps: sc.streams.as_ref().map(|w| {
            [
                StreamApp::new(crate::stream::Side::Proxy, w),
                StreamApp::new(crate::stream::Side::Client, w),
            ]
        }),
    };
    world.start()?;
    world.run_to_end()?;
    world.finish()
}

impl World<'_> {
    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn fail(&self, what: impl Into<String>) -> Failure {
        Failure {
            seed: self.sc.seed,
            step: self.step,
            at: self.at(),
            what: what.into(),
            trace: self.trace.iter().cloned().collect(),
            streams: self.sc.streams.is_some(),
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        let at = self.at();
        self.trace.push_back(format!("{at:>12.3?} {line}"));
    }

    fn schedule(&mut self, after: Duration, action: Action) {
        self.order += 1;
        self.actions.insert(self.order, action);
        self.queue.push(Reverse((self.now + after, self.order)));
    }

    fn healed(&self) -> bool {
        self.at() >= self.sc.heal_at
    }

    fn partitioned(&self) -> bool {
        !self.healed()
            && self
                .sc
                .faults
                .partitions
                .iter()
                .any(|&(start, len)| (start..start + len).contains(&self.at()))
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.sc.faults.latency;
        let mut d = self.rng.random_range(lo..=hi);
        let (p, extra) = self.sc.faults.straggle;
        if !self.healed() && p > 0.0 && self.rng.random_bool(p) {
            d += self.rng.random_range(Duration::ZERO..=extra);
        }
        d
    }

    fn chance(&mut self, p: f64) -> bool {
        !self.healed() && p > 0.0 && self.rng.random_bool(p)
    }

    /// Puts a packet on the wire from `from` to the other side.
    fn send_packet(&mut self, from: usize, packet: Packet) {
        if self.partitioned() || self.peers[1 - from].crashed || self.peers[from].crashed {
            return;
        }
        let delay = self.latency();
        let to = 1 - from;
        if self.chance(self.sc.faults.duplicate) {
            let again = self.latency();
            self.schedule(
                again,
                Action::Deliver {
                    to,
                    packet: packet.clone(),
                },
            );
        }
        self.schedule(delay, Action::Deliver { to, packet });
    }

    fn start(&mut self) -> Result<(), Failure> {
        for peer in [SERVER, CLIENT] {
            self.peers[peer].to_send = self.sc.messages;
            self.peers[peer].path_lost_at = Some(self.now);
            let first = self
                .rng
                .random_range(Duration::ZERO..=Duration::from_secs(2));
            self.schedule(first, Action::AppSend { peer });
            self.request_attach(peer);
        }
        match self.sc.ending {
            Ending::None => {}
            Ending::ServerClose(t) | Ending::ServerStop(t) | Ending::ClientTerminate(t) => {
                self.schedule(t, Action::Ending)
            }
        }
        if let Some(t) = self.sc.faults.client_crash {
            self.schedule(t, Action::Crash);
        }
        self.drain_all()
    }

    /// `receiver` asks the other side for a fresh downstream path.
    fn request_attach(&mut self, receiver: usize) {
        if self.peers[receiver].closed.is_some() || self.peers[receiver].crashed {
            return;
        }
        let p = &mut self.peers[receiver];
        p.current_req += 1;
        p.generation += 1;
        let (req, generation) = (p.current_req, p.generation);
        let ack = self.sessions[receiver].ack_position();
        self.note(format!(
            "{} requests path (req {req}, ack {ack:?})",
            name(receiver)
        ));
        self.send_packet(receiver, Packet::Attach { req, ack });
        let watchdog = self.watchdog;
        self.schedule(
            watchdog,
            Action::Watchdog {
                peer: receiver,
                generation,
            },
        );
    }

    fn heard(&mut self, receiver: usize) {
        let p = &mut self.peers[receiver];
        p.generation += 1;
        let generation = p.generation;
        let watchdog = self.watchdog;
        self.schedule(
            watchdog,
            Action::Watchdog {
                peer: receiver,
                generation,
            },
        );
    }

    fn run_to_end(&mut self) -> Result<(), Failure> {
        let end = self.t0 + self.sc.end_at;
        loop {
            self.step += 1;
            if self.step > 2_000_000 {
                return Err(self.fail("livelock: more than 2 000 000 steps"));
            }
            let next_action = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_timer = [SERVER, CLIENT]
                .into_iter()
                .filter(|&p| !self.peers[p].crashed)
                .filter_map(|p| self.sessions[p].poll_timeout().map(|t| (t, p)))
                .min();
            let next = match (next_action, next_timer) {
                (None, None) => return Ok(()),
                (Some(a), Some((t, _))) => a.min(t),
                (Some(a), None) => a,
                (None, Some((t, _))) => t,
            };
            if next > end {
                return Ok(());
            }
            if next < self.now {
                return Err(self.fail("time went backwards"));
            }
            self.now = next;
            if let Some((_, peer)) = next_timer.filter(|&(t, _)| t <= next) {
                self.note(format!("{} timer", name(peer)));
                self.sessions[peer].handle_timeout(self.now);
                self.sync_path(peer);
                if let Some(again) = self.sessions[peer].poll_timeout()
                    && again <= self.now
                {
                    return Err(self.fail(format!(
                        "{}: a deadline is still due right after handle_timeout",
                        name(peer)
                    )));
                }
            } else if let Some(Reverse((_, order))) = self.queue.pop() {
                if let Some(action) = self.actions.remove(&order) {
                    self.perform(action)?;
                }
                self.sync_path(SERVER);
                self.sync_path(CLIENT);
            }
            self.drain_all()?;
            self.check_bounds()?;
        }
    }

    fn perform(&mut self, action: Action) -> Result<(), Failure> {
        match action {
            Action::Deliver { to, packet } => {
                if self.peers[to].crashed {
                    return Ok(());
                }
                self.receive(to, packet)?;
            }
            Action::AppSend { peer } => self.app_send(peer)?,
            Action::Watchdog { peer, generation } => {
                if self.peers[peer].generation == generation && !self.peers[peer].crashed {
                    self.note(format!("{} watchdog: nothing heard", name(peer)));
                    self.request_attach(peer);
                }
            }
            Action::SenderNoticesDeath { peer, path } => {
                if !self.peers[peer].crashed {
                    self.note(format!("{} notices path {} died", name(peer), path.0));
                    self.sessions[peer].detach(self.now, path);
                }
            }
            Action::Ending => self.ending(),
            Action::Crash => {
                self.note("client crashes".into());
                self.peers[CLIENT].crashed = true;
                for entry in self.peers[SERVER].paths.values_mut() {
                    entry.1 = true;
                }
            }
            Action::Spurious { peer } => self.spurious_wakeup(peer)?,
        }
        Ok(())
    }

    fn ending(&mut self) {
        let now = self.now;
        match self.sc.ending {
            Ending::ServerClose(_) => {
                self.note("server application closes".into());
                let _ = self.sessions[SERVER].close(now, CloseReason::Closed(Some("bye".into())));
            }
            Ending::ServerStop(_) => {
                self.note("server application stops".into());
                let _ = self.sessions[SERVER].stop(now);
            }
            Ending::ClientTerminate(_) => {
                if self.peers[CLIENT].crashed {
                    return;
                }
                self.note("client application terminates".into());
                if self.sessions[CLIENT]
                    .close(now, CloseReason::Closed(None))
                    .is_ok()
                {
                    self.send_packet(CLIENT, Packet::Terminate);
                }
            }
            Ending::None => {}
        }
    }

    fn app_send(&mut self, peer: usize) -> Result<(), Failure> {
        if self.apps.is_some() {
            return self.stream_step(peer);
        }
        // Applications stop sending well before the end, so that the run can settle.
        let settle = Duration::from_secs(150);
        if self.peers[peer].crashed
            || self.peers[peer].to_send == 0
            || self.at() + settle > self.sc.end_at
        {
            return Ok(());
        }
        let index = self.sc.messages - self.peers[peer].to_send;
        let pad = self.rng.random_range(0..self.sc.max_len);
        let mut text = format!("{}#{index}:", name(peer));
        text.extend(std::iter::repeat_n('x', pad));
        let data = Bytes::from(text);
        match self.sessions[peer].send(self.now, data.clone()) {
            Ok(seq) => {
                self.record_send(peer, seq, data)?;
                self.peers[peer].to_send -= 1;
                self.note(format!("{} sends #{index} as seq {seq}", name(peer)));
            }
            Err(crate::SendError::BufferFull { .. }) => {
                self.note(format!("{} send refused: buffer full", name(peer)));
            }
            Err(crate::SendError::Closed) => {
                self.peers[peer].to_send = 0;
                return Ok(());
            }
        }
        let gap = self
            .rng
            .random_range(Duration::ZERO..=Duration::from_millis(2500));
        self.schedule(gap, Action::AppSend { peer });
        if self.rng.random_bool(0.1) {
            let early = self
                .rng
                .random_range(Duration::ZERO..=Duration::from_secs(1));
            let peer = self.rng.random_range(0..2);
            self.schedule(early, Action::Spurious { peer });
        }
        Ok(())
    }

    fn record_send(&mut self, peer: usize, seq: u64, data: Bytes) -> Result<(), Failure> {
        let p = &mut self.peers[peer];
        if p.sent.insert(seq, data).is_some() {
            return Err(self.fail(format!("{}: send reused sequence {seq}", name(peer))));
        }
        p.send_order.push(seq);
        Ok(())
    }

    /// One step of a stream application: maybe open a request (server side), write what
    /// the send buffers take, read a little, maybe reset a stream; then send frames.
    fn stream_step(&mut self, peer: usize) -> Result<(), Failure> {
        let Some(work) = self.sc.streams.clone() else {
            return Ok(());
        };
        if self.peers[peer].crashed {
            return Ok(());
        }
        let now = self.now;
        let settle = Duration::from_secs(150);
        let opening = self.at() + settle <= self.sc.end_at;
        let Some(apps) = self.apps.as_mut() else {
            return Ok(());
        };
        let app = &mut apps[peer];
        app.machine.handle_timeout(now);
        if peer == SERVER
            && opening
            && app.opened < work.requests
            && !self.sessions[peer].is_closed()
        {
            let len = self.rng.random_range(0..=work.max_body);
            let head = Bytes::from(len.to_string());
            if let Ok(id) = app.machine.open(now, head, len == 0) {
                app.opened += 1;
                if len > 0 {
                    app.sending.insert(id, (len, 0));
                }
                app.receiving.insert(id, (usize::MAX, 0, 0));
            }
        }
        // Write: chunks of random size into every stream with room.
        let ids: Vec<_> = app.sending.keys().copied().collect();
        for id in ids {
            let Some(&(total, written)) = app.sending.get(&id) else {
                continue;
            };
            let room = app.machine.capacity(id);
            if room == 0 {
                continue;
            }
            let n = self
                .rng
                .random_range(1..=2 * work.config.max_frame_data)
                .min(total - written);
            let chunk: Vec<u8> = (written..written + n)
                .map(|i| body_byte(id, peer, i))
                .collect();
            match app.machine.write(id, Bytes::from(chunk)) {
                Ok(()) => {
                    let written = written + n;
                    if written == total {
                        app.sending.remove(&id);
                        let _ = app.machine.finish(id);
                    } else {
                        app.sending.insert(id, (total, written));
                    }
                }
                Err(crate::stream::StreamError::Full) => {}
                Err(e) => {
                    return Err(self.fail(format!("{}: write to stream {id}: {e}", name(peer))));
                }
            }
        }
        // Read slowly.
        let mut budget = work.read_per_step;
        let ids: Vec<_> = app.receiving.keys().copied().collect();
        for id in ids {
            if let Some(r) = app.receiving.get_mut(&id) {
                let n = r.2.min(budget);
                r.2 -= n;
                budget -= n;
                if n > 0 {
                    app.machine.consumed(id, n);
                }
            }
        }
        // Sometimes give up on a stream.
        if work.reset_chance > 0.0 && self.rng.random_bool(work.reset_chance) {
            let mut open: Vec<_> = app.receiving.keys().copied().collect();
            open.sort_unstable();
            if !open.is_empty() {
                let id = open[self.rng.random_range(0..open.len())];
                self.note(format!("{} resets stream {id}", name(peer)));
                let app = &mut self.apps.as_mut().expect("streams")[peer];
                app.machine.reset(id, crate::stream::ResetCode::Cancel);
                Self::stream_over(app, id);
            }
        }
        self.stream_events(peer)?;
        self.stream_flush(peer)?;
        let gap = self.rng.random_range(Duration::ZERO..=work.step_gap);
        self.schedule(gap, Action::AppSend { peer });
        Ok(())
    }

    /// Forgets stream `id` in the application; unread bytes are dropped and their credit
    /// returned.
    fn stream_over(app: &mut StreamApp, id: crate::stream::StreamId) {
        app.sending.remove(&id);
        if let Some((_, _, unread)) = app.receiving.remove(&id)
            && unread > 0
        {
            app.machine.consumed(id, unread);
        }
        app.over.insert(id);
    }

    /// Handles the stream machine's events: checks every byte, answers new streams.
    fn stream_events(&mut self, peer: usize) -> Result<(), Failure> {
        use crate::stream::StreamEvent;
        let Some(work) = self.sc.streams.clone() else {
            return Ok(());
        };
        loop {
            let Some(apps) = self.apps.as_mut() else {
                return Ok(());
            };
            let app = &mut apps[peer];
            let Some(event) = app.machine.poll_event() else {
                break;
            };
            match event {
                StreamEvent::Opened { id, head, end } => {
                    let len: usize = match std::str::from_utf8(&head)
                        .ok()
                        .and_then(|h| h.parse().ok())
                    {
                        Some(l) => l,
                        None => return Err(self.fail(format!("{}: bad head {head:?}", name(peer)))),
                    };
                    if (len == 0) != end {
                        return Err(self.fail(format!("{}: head {len} with end {end}", name(peer))));
                    }
                    let app = &mut self.apps.as_mut().expect("streams")[peer];
                    if !end {
                        app.receiving.insert(id, (len, 0, 0));
                    }
                    // Answer at once, before reading the request (as a server may).
                    let answer = self.rng.random_range(0..=work.max_body);
                    let app = &mut self.apps.as_mut().expect("streams")[peer];
                    if app
                        .machine
                        .respond(id, Bytes::from(answer.to_string()), answer == 0)
                        .is_ok()
                        && answer > 0
                    {
                        app.sending.insert(id, (answer, 0));
                    }
                    if end && answer == 0 {
                        app.completed += 1;
                        app.over.insert(id);
                    }
                }
                StreamEvent::Head { id, head, end } => {
                    let len: usize = match std::str::from_utf8(&head)
                        .ok()
                        .and_then(|h| h.parse().ok())
                    {
                        Some(l) => l,
                        None => return Err(self.fail(format!("{}: bad head {head:?}", name(peer)))),
                    };
                    if (len == 0) != end {
                        return Err(
                            self.fail(format!("{}: answer {len} with end {end}", name(peer)))
                        );
                    }
                    match app.receiving.get_mut(&id) {
                        Some(r) if r.0 == usize::MAX => r.0 = len,
                        _ => {
                            return Err(self.fail(format!(
                                "{}: answer for stream {id} not waiting",
                                name(peer)
                            )));
                        }
                    }
                    if end {
                        app.receiving.remove(&id);
                        if !app.sending.contains_key(&id) {
                            app.completed += 1;
                            app.over.insert(id);
                        }
                    }
                }
                StreamEvent::Data { id, data } => {
                    let Some(r) = app.receiving.get_mut(&id) else {
                        return Err(self.fail(format!(
                            "{}: data for stream {id} not receiving",
                            name(peer)
                        )));
                    };
                    let offset = r.1;
                    let dir = 1 - peer;
                    if let Some(i) =
                        (0..data.len()).find(|&i| data[i] != body_byte(id, dir, offset + i))
                    {
                        return Err(self.fail(format!(
                            "{}: stream {id} byte {} is wrong",
                            name(peer),
                            offset + i
                        )));
                    }
                    r.1 += data.len();
                    r.2 += data.len();
                    if r.1 > r.0 {
                        return Err(
                            self.fail(format!("{}: stream {id} longer than declared", name(peer)))
                        );
                    }
                    if r.2 > work.config.stream_window as usize {
                        return Err(self.fail(format!(
                            "{}: stream {id} holds more than its window",
                            name(peer)
                        )));
                    }
                }
                StreamEvent::End { id } => {
                    let Some(r) = app.receiving.get(&id).copied() else {
                        return Err(
                            self.fail(format!("{}: end of stream {id} not receiving", name(peer)))
                        );
                    };
                    if r.1 != r.0 {
                        return Err(self.fail(format!(
                            "{}: stream {id} ended after {} of {} bytes",
                            name(peer),
                            r.1,
                            r.0
                        )));
                    }
                    // Read the rest before forgetting it.
                    if r.2 > 0 {
                        app.machine.consumed(id, r.2);
                    }
                    app.receiving.remove(&id);
                    if !app.sending.contains_key(&id) {
                        app.completed += 1;
                        app.over.insert(id);
                    }
                }
                StreamEvent::Reset { id, code } => {
                    self.note(format!("{} stream {id} reset: {code:?}", name(peer)));
                    let app = &mut self.apps.as_mut().expect("streams")[peer];
                    Self::stream_over(app, id);
                }
                StreamEvent::Writable { .. } => {}
            }
            let app = &self.apps.as_ref().expect("streams")[peer];
            if app.buffered() > work.config.connection_window as usize {
                return Err(self.fail(format!(
                    "{}: holds more than the connection window",
                    name(peer)
                )));
            }
            // A write is accepted below the bound and may overshoot it by one chunk.
            let bound = work.config.connection_send_buffer + 2 * work.config.max_frame_data;
            if app.machine.queued_bytes() > bound {
                return Err(self.fail(format!("{}: send queues over their bound", name(peer))));
            }
        }
        Ok(())
    }

    /// Sends the stream machine's frames as session messages while the session takes them.
    fn stream_flush(&mut self, peer: usize) -> Result<(), Failure> {
        if self.peers[peer].crashed {
            return Ok(());
        }
        loop {
            let Some(apps) = self.apps.as_mut() else {
                return Ok(());
            };
            let app = &mut apps[peer];
            let Some(frame) = app
                .pending
                .take()
                .or_else(|| app.machine.poll_frame().map(|f| f.encode()))
            else {
                return Ok(());
            };
            match self.sessions[peer].send(self.now, frame.clone()) {
                Ok(seq) => self.record_send(peer, seq, frame)?,
                Err(crate::SendError::BufferFull { .. }) => {
                    self.apps.as_mut().expect("streams")[peer].pending = Some(frame);
                    return Ok(());
                }
                Err(crate::SendError::Closed) => return Ok(()),
            }
        }
    }

    /// A wake-up before any deadline must change nothing.
    fn spurious_wakeup(&mut self, peer: usize) -> Result<(), Failure> {
        if self.peers[peer].crashed {
            return Ok(());
        }
        self.drain_all()?;
        let Some(due) = self.sessions[peer].poll_timeout() else {
            return Ok(());
        };
        if due <= self.now {
            return Ok(());
        }
        let state = self.sessions[peer].state();
        self.sessions[peer].handle_timeout(self.now);
        if let Some(t) = self.sessions[peer].poll_transmit() {
            return Err(self.fail(format!("{}: early timer produced {t:?}", name(peer))));
        }
        if let Some(e) = self.sessions[peer].poll_event() {
            return Err(self.fail(format!("{}: early timer produced {e:?}", name(peer))));
        }
        if let Some(a) = self.sessions[peer].poll_ack(false) {
            return Err(self.fail(format!("{}: early timer made ack {a} due", name(peer))));
        }
        if self.sessions[peer].state() != state || self.sessions[peer].poll_timeout() != Some(due) {
            return Err(self.fail(format!("{}: early timer changed the session", name(peer))));
        }
        Ok(())
    }

    fn receive(&mut self, me: usize, packet: Packet) -> Result<(), Failure> {
        let now = self.now;
        match packet {
            Packet::Attach { req, ack } => {
                if self.sessions[me].is_closed() {
                    self.send_packet(me, Packet::Rejected);
                    return Ok(());
                }
                if req
                    <= self.peers[me]
                        .paths
                        .values()
                        .map(|&(r, _)| r)
                        .max()
                        .unwrap_or(0)
                {
                    return Ok(()); // a duplicate, or an old request overtaken by a newer one
                }
                if let Some(ack) = ack {
                    let _ = self.sessions[me].handle_ack(now, ack);
                }
                let mode = PathMode {
                    one_shot: self.sc.faults.one_shot && !self.healed(),
                    max_bytes: self.sc.faults.path_max_bytes.filter(|_| !self.healed()),
                    provisional: false,
                };
                if let Ok(path) = self.sessions[me].attach(now, mode) {
                    self.note(format!(
                        "{} attaches path {} for req {req}",
                        name(me),
                        path.0
                    ));
                    self.peers[me].paths.insert(path, (req, false));
                    self.peers[me].last_write.insert(path, now);
                }
            }
            Packet::Batch { items } => {
                self.heard(me);
                for item in items {
                    let _ = self.sessions[me].handle_incoming(now, item.seq, item.payload);
                    self.drain(me)?;
                }
                // The acknowledgement goes when `poll_ack` says so (see `drain_all`).
            }
            Packet::Ended { req } | Packet::Broken { req } => {
                if req == self.peers[me].current_req && !self.sessions[me].is_closed() {
                    self.note(format!("{} sees its path for req {req} end", name(me)));
                    self.request_attach(me);
                }
            }
            Packet::Ack(upto) => {
                let _ = self.sessions[me].handle_ack(now, upto);
            }
            Packet::Rejected => {
                self.note(format!("{} is told the session is gone", name(me)));
                let _ = self.sessions[me].handle_peer_close(now);
            }
            Packet::Terminate => {
                self.note(format!("{} receives terminate", name(me)));
                let _ = self.sessions[me].handle_peer_close(now);
            }
        }
        Ok(())
    }

    fn drain_all(&mut self) -> Result<(), Failure> {
        for peer in [SERVER, CLIENT] {
            if !self.peers[peer].crashed {
                if self.apps.is_some() {
                    self.stream_flush(peer)?;
                }
                self.drain(peer)?;
                if let Some(ack) = self.sessions[peer].poll_ack(false)
                    && !self.sessions[peer].is_closed()
                {
                    self.send_packet(peer, Packet::Ack(ack));
                }
            }
        }
        Ok(())
    }

    /// The driving loop's contract: after any input, drain transmits and events.
    fn drain(&mut self, me: usize) -> Result<(), Failure> {
        loop {
            self.sync_path(me);
            let transmit = self.sessions[me].poll_transmit();
            self.sync_path(me);
            let event = self.sessions[me].poll_event();
            if transmit.is_none() && event.is_none() {
                return Ok(());
            }
            if let Some(t) = transmit {
                self.transmit(me, t)?;
            }
            if let Some(e) = event {
                self.event(me, e)?;
            }
        }
    }

    /// Records when a session lost its downstream path, to check the session timeout.
    fn sync_path(&mut self, me: usize) {
        let has = self.sessions[me].has_path();
        if self.peers[me].had_path && !has {
            self.peers[me].path_lost_at = Some(self.now);
        }
        self.peers[me].had_path = has;
    }

    fn transmit(&mut self, me: usize, t: Transmit) -> Result<(), Failure> {
        match t {
            Transmit::Batch { path, items, end } => {
                let interval = self.sc.session.keepalive_interval;
                let last = self.peers[me].last_write.get(&path).copied();
                let highest = self.peers[me].highest_sent;
                let fresh_keepalive = items
                    .iter()
                    .any(|i| i.payload == Payload::Keepalive && highest.is_none_or(|h| i.seq > h));
                if fresh_keepalive && last.is_some_and(|l| self.now < l + interval) {
                    return Err(self.fail(format!("{}: keep-alive on a busy path", name(me))));
                }
                if let Some(max) = items.iter().map(|i| i.seq).max() {
                    self.peers[me].highest_sent = Some(highest.map_or(max, |h| h.max(max)));
                }
                self.peers[me].last_write.insert(path, self.now);
                let Some(&(req, dead)) = self.peers[me].paths.get(&path) else {
                    return Err(self.fail(format!("{}: transmit on unknown path", name(me))));
                };
                let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
                if dead || self.partitioned() {
                    self.note(format!(
                        "{} writes {seqs:?} on dead path {}",
                        name(me),
                        path.0
                    ));
                    self.mark_dead(me, path, false);
                    return Ok(());
                }
                if self.chance(self.sc.faults.loss) {
                    self.note(format!(
                        "{} batch {seqs:?} lost, path {} dies",
                        name(me),
                        path.0
                    ));
                    self.mark_dead(me, path, true);
                    return Ok(());
                }
                if items.len() > 1 && self.chance(self.sc.faults.cut) {
                    let keep = self.rng.random_range(1..items.len());
                    self.note(format!("{} batch {seqs:?} cut after {keep}", name(me)));
                    let prefix = items[..keep].to_vec();
                    self.send_packet(me, Packet::Batch { items: prefix });
                    self.mark_dead(me, path, true);
                    return Ok(());
                }
                self.note(format!(
                    "{} sends {seqs:?} on path {} end={end}",
                    name(me),
                    path.0
                ));
                self.send_packet(me, Packet::Batch { items });
                if end {
                    self.send_packet(me, Packet::Ended { req });
                }
            }
            Transmit::Ping { .. } => {}
            Transmit::End { path } => {
                if let Some(&(req, dead)) = self.peers[me].paths.get(&path)
                    && !dead
                {
                    self.send_packet(me, Packet::Ended { req });
                }
            }
        }
        Ok(())
    }

    /// The connection carrying `path` died: the receiver notices if the death was a clean
    /// break (a FIN) rather than a partition; the sender notices when it next writes.
    fn mark_dead(&mut self, me: usize, path: PathId, receiver_sees_it: bool) {
        let already = self.peers[me].paths.get(&path).is_some_and(|&(_, d)| d);
        let partitioned = self.partitioned();
        if let Some(entry) = self.peers[me].paths.get_mut(&path) {
            entry.1 = true;
            let req = entry.0;
            if receiver_sees_it && !partitioned {
                self.send_packet(me, Packet::Broken { req });
            }
        }
        if !self.partitioned() || already {
            let delay = self.latency();
            self.schedule(delay, Action::SenderNoticesDeath { peer: me, path });
        }
    }

    fn event(&mut self, me: usize, e: Event) -> Result<(), Failure> {
        let other = 1 - me;
        match e {
            Event::Message { seq, data } => {
                if self.peers[me].closed.is_some() {
                    return Err(self.fail(format!("{}: message {seq} after close", name(me))));
                }
                let index = self.peers[me].delivered.len();
                let expected = self.peers[other]
                    .send_order
                    .get(index)
                    .and_then(|s| self.peers[other].sent.get(s));
                if expected != Some(&data) {
                    return Err(self.fail(format!(
                        "{}: delivery #{index} (seq {seq}) is {:?}, expected {:?}",
                        name(me),
                        String::from_utf8_lossy(&data[..data.len().min(24)]),
                        expected.map(|e| String::from_utf8_lossy(&e[..e.len().min(24)]))
                    )));
                }
                self.peers[me].delivered.push(data.clone());
                if let Some(apps) = self.apps.as_mut() {
                    let frame = match crate::stream::Frame::decode(&data) {
                        Ok(f) => f,
                        Err(e) => return Err(self.fail(format!("{}: bad frame: {e}", name(me)))),
                    };
                    if let Err(e) = apps[me].machine.handle_frame(self.now, frame) {
                        return Err(self.fail(format!("{}: stream protocol error: {e}", name(me))));
                    }
                    self.stream_events(me)?;
                    self.stream_flush(me)?;
                }
            }
            Event::Acked { seq } => {
                self.resolve(me, seq, true)?;
                let position = self.peers[me].send_order.iter().position(|&s| s == seq);
                let delivered = self.peers[other].delivered.len();
                if position.is_none_or(|i| i >= delivered) {
                    return Err(self.fail(format!(
                        "{}: seq {seq} acknowledged but the peer delivered only {delivered}",
                        name(me)
                    )));
                }
            }
            Event::SendFailed { seq, .. } => self.resolve(me, seq, false)?,
            Event::StateChanged { old, new } => {
                let legal = matches!(
                    (old, new),
                    (State::Init, State::Ok)
                        | (State::Init, State::Closed)
                        | (State::Ok, State::Closed)
                );
                if !legal {
                    return Err(
                        self.fail(format!("{}: illegal transition {old} → {new}", name(me)))
                    );
                }
            }
            Event::Closed(reason) => {
                self.note(format!("{} closed: {reason}", name(me)));
                if reason == CloseReason::TimedOut {
                    let lost = self.peers[me].path_lost_at;
                    let session = &self.sc.session;
                    // Never attached: the attach timeout (or the session timeout) applies.
                    let earliest = match lost {
                        Some(l) => Some(l + session.session_timeout),
                        None if !self.peers[me].had_path => {
                            Some(self.t0 + session.session_timeout.min(session.attach_timeout))
                        }
                        None => None,
                    };
                    if earliest.is_none_or(|e| self.now < e) {
                        return Err(self.fail(format!(
                            "{}: timed out early (path lost at {:?})",
                            name(me),
                            lost.map(|l| l - self.t0)
                        )));
                    }
                }
                if self.peers[me].closed.is_some() {
                    return Err(self.fail(format!("{}: closed twice", name(me))));
                }
                self.peers[me].closed = Some((self.now, reason));
                if let Some(apps) = self.apps.as_mut() {
                    apps[me].machine.close();
                    self.stream_events(me)?;
                    let app = &self.apps.as_ref().expect("streams")[me];
                    if !app.sending.is_empty()
                        || !app.receiving.is_empty()
                        || !app.machine.is_empty()
                    {
                        return Err(self.fail(format!(
                            "{}: streams left after the session closed",
                            name(me)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn resolve(&mut self, me: usize, seq: u64, acked: bool) -> Result<(), Failure> {
        if !self.peers[me].sent.contains_key(&seq) {
            return Err(self.fail(format!("{}: resolution for unknown seq {seq}", name(me))));
        }
        if self.peers[me].resolved.insert(seq, acked).is_some() {
            return Err(self.fail(format!("{}: seq {seq} resolved twice", name(me))));
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), Failure> {
        let c = &self.sc.session;
        for peer in [SERVER, CLIENT] {
            let s = &self.sessions[peer];
            if s.buffered_bytes() > c.max_buffered_bytes {
                return Err(self.fail(format!("{}: buffered bytes over the limit", name(peer))));
            }
            let (count, bytes) = s.held();
            if count as u64 > c.reorder_window || bytes > c.max_held_bytes {
                return Err(self.fail(format!("{}: held messages over the limit", name(peer))));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Report, Failure> {
        // Liveness: the network has been healed for long enough that a live session on both
        // sides must have had every send acknowledged.
        let both_live = [SERVER, CLIENT]
            .iter()
            .all(|&p| !self.sessions[p].is_closed() && !self.peers[p].crashed);
        if both_live && let Some(apps) = &self.apps {
            let work = self.sc.streams.as_ref().expect("streams");
            if apps[SERVER].opened == 0
                && work.requests > 0
                && self.sc.end_at > Duration::from_secs(200)
            {
                return Err(self.fail("server: no stream was ever opened"));
            }
            for peer in [SERVER, CLIENT] {
                let app = &apps[peer];
                if !app.machine.is_empty() || !app.sending.is_empty() || !app.receiving.is_empty() {
                    return Err(self.fail(format!(
                        "{}: {} streams still open long after the network healed (sending {:?}, receiving {:?})",
                        name(peer),
                        app.machine.len(),
                        app.sending,
                        app.receiving
                    )));
                }
            }
        }
        if both_live {
            for peer in [SERVER, CLIENT] {
                let unresolved = self.peers[peer].sent.len() - self.peers[peer].resolved.len();
                if unresolved > 0 {
                    return Err(self.fail(format!(
                        "{}: {unresolved} sends still unacknowledged long after the network healed",
                        name(peer)
                    )));
                }
            }
        }
        // Close whatever is open: every send must now be resolved exactly once.
        for peer in [SERVER, CLIENT] {
            let _ =
                self.sessions[peer].close(self.now, CloseReason::Closed(Some("end of run".into())));
            self.peers[peer].crashed = false;
            self.drain(peer)?;
            let p = &self.peers[peer];
            if p.resolved.len() != p.sent.len() {
                return Err(self.fail(format!(
                    "{}: {} of {} sends never resolved",
                    name(peer),
                    p.sent.len() - p.resolved.len(),
                    p.sent.len()
                )));
            }
        }
        let count = |peer: usize, acked: bool| {
            self.peers[peer]
                .resolved
                .values()
                .filter(|&&a| a == acked)
                .count()
        };
        Ok(Report {
            steps: self.step,
            delivered: [
                self.peers[SERVER].delivered.len(),
                self.peers[CLIENT].delivered.len(),
            ],
            acked: [count(SERVER, true), count(CLIENT, true)],
            failed: [count(SERVER, false), count(CLIENT, false)],
            closed: [
                self.peers[SERVER].closed.as_ref().map(|(_, r)| r.clone()),
                self.peers[CLIENT].closed.as_ref().map(|(_, r)| r.clone()),
            ],
            streams_completed: self.apps.as_ref().map_or(0, |a| a[SERVER].completed),
        })
    }
}

fn name(peer: usize) -> &'static str {
    if peer == SERVER { "server" } else { "client" }
}
