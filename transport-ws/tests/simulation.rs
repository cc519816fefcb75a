//! Deterministic simulation of WebSocket session mode's two protocol machines — the server's
//! [`SessionMachine`] and the client's [`ClientMachine`] — over a seeded faulty network, with
//! the frames they really exchange (encoded and decoded by `codec`), under a virtual clock.
//! Each connection is ordered (it is TCP); the faults are the ones session mode exists for:
//! a connection cut with frames in flight (the client resumes with `resume=<token>&ack=<n>`),
//! a resumption that carries a stale acknowledgement (older than what the client really
//! has, or none), connection attempts refused, a client away longer than the server waits
//! (the server forgets the session; the hello says `resumed: false`), and either application
//! closing or the server stopping.
//!
//! Checked after every step: each side's application receives the other's messages in order,
//! each at most once, none after its session closed; an acknowledgement (either way) means
//! the other application received the message; at the end every send has been resolved
//! exactly once; on a network without faults everything is delivered and acknowledged.
//!
//! `SIM_SEEDS=N` (default 10 000) and `SIM_SEED_START=S` set the sweep; a failing seed prints
//! the command that replays it (`SIM_SEED=S … replay_seed`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use browserver_core::CloseReason;
use browserver_runtime::{Event, Machine, Message, Output};
use browserver_transport_ws::client::{
    ClientConfig, ClientEvent, ClientInput, ClientMachine, ClientTransmit,
};
use browserver_transport_ws::protocol::{self, ConnId, Input, Mode, SessionMachine, Transmit};
use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MS: Duration = Duration::from_millis(1);
/// Virtual time during which the applications act; then everything is closed and the
/// timers run out.
const ACTIVE: Duration = Duration::from_secs(60);
const END: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Faults {
    latency: (Duration, Duration),
    /// Per second: a live connection is cut, frames in flight lost.
    cut: f64,
    /// A connection attempt is refused.
    refuse: f64,
    /// A resumption's `ack` is replaced by an older one, or left out.
    stale_ack: f64,
    /// How long a cut lasts before connections work again (past the server's session
    /// timeout, the session is forgotten).
    outage: Duration,
    /// Per second: the server application closes (or, half the time, stops) its session.
    server_close: f64,
    /// The client application closes at some point.
    client_close: bool,
}

impl Faults {
    fn perfect() -> Faults {
        Faults {
            latency: (MS, 5 * MS),
            cut: 0.0,
            refuse: 0.0,
            stale_ack: 0.0,
            outage: Duration::ZERO,
            server_close: 0.0,
            client_close: false,
        }
    }

    fn from_rng(rng: &mut Xoshiro256PlusPlus) -> Faults {
        let pick = |rng: &mut Xoshiro256PlusPlus, p: f64, max: f64| {
            if rng.random_bool(p) {
                rng.random_range(0.0..max)
            } else {
                0.0
            }
        };
        Faults {
            latency: (MS, Duration::from_millis(rng.random_range(2..200))),
            cut: pick(rng, 0.6, 0.5),
            refuse: pick(rng, 0.4, 0.5),
            stale_ack: pick(rng, 0.5, 1.0),
            outage: if rng.random_bool(0.2) {
                Duration::from_secs(rng.random_range(5..40))
            } else {
                Duration::from_millis(rng.random_range(0..500))
            },
            server_close: pick(rng, 0.3, 0.05),
            client_close: rng.random_bool(0.2),
        }
    }
}

/// What happens, in virtual time.
#[derive(Debug)]
enum Net {
    /// A connection attempt reaches the server.
    Connect {
        client: usize,
        conn: u64,
        params: Vec<(String, String)>,
    },
    /// The client learns its attempt was refused.
    Refused {
        client: usize,
        conn: u64,
    },
    /// A frame reaches the server.
    ToServer {
        conn: u64,
        message: WsMessage,
    },
    /// Something reaches the client on `conn`.
    ToClient {
        conn: u64,
        input: ClientInput,
    },
    /// The server learns `conn` is gone.
    ServerGone {
        conn: u64,
    },
    /// A connection is cut.
    Cut,
    ClientSends,
    ServerSends,
    ServerCloses,
    ClientCloses,
}

struct Server {
    machine: SessionMachine,
    deadline: Option<Instant>,
    token: String,
    closed: bool,
    received: Vec<u64>,
    sent: HashMap<u64, u64>,
}

struct Client {
    machine: ClientMachine,
    closed: bool,
    /// Its live connection.
    conn: Option<u64>,
    received: Vec<u64>,
    sent: HashMap<u64, u64>,
    resolved: HashSet<u64>,
}

/// A connection: which client and server it joins, whether it is up.
struct Conn {
    client: usize,
    server: Option<usize>,
    alive: bool,
    /// Cut: what is in flight is lost.
    cut: bool,
    /// When the latest frame each way arrives (a connection is ordered).
    to_client: Instant,
    to_server: Instant,
}

struct World {
    seed: u64,
    rng: Xoshiro256PlusPlus,
    faults: Faults,
    t0: Instant,
    now: Instant,
    order: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Net>,
    servers: Vec<Server>,
    clients: Vec<Client>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Connections fail until then (an outage after a cut).
    down_until: Instant,
    next_message: u64,
    log: Vec<String>,
    steps: u64,
}

type Violation = String;

fn server_config(id: usize) -> protocol::Config {
    protocol::Config {
        id: format!("s{id}"),
        resume_token: format!("s{id}.secret"),
        mode: Mode::Session,
        keep_alive_interval: Duration::from_secs(20),
        session_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(45),
        max_buffered_bytes: 1 << 20,
        reorder_window: 4096,
        ack_delay: Duration::from_millis(10),
    }
}

impl World {
    fn new(seed: u64, faults: Option<Faults>) -> World {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let faults = faults.unwrap_or_else(|| Faults::from_rng(&mut rng));
        let t0 = Instant::now();
        let mut w = World {
            seed,
            rng,
            faults,
            t0,
            now: t0,
            order: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            servers: Vec::new(),
            clients: Vec::new(),
            conns: HashMap::new(),
            next_conn: 0,
            down_until: t0,
            next_message: 0,
            log: Vec::new(),
            steps: 0,
        };
        w.new_client();
        w.schedule(Duration::from_millis(10), Net::ClientSends);
        w.schedule(Duration::from_millis(15), Net::ServerSends);
        if w.faults.cut > 0.0 {
            w.schedule(Duration::from_secs(1), Net::Cut);
        }
        if w.faults.server_close > 0.0 {
            w.schedule(Duration::from_secs(1), Net::ServerCloses);
        }
        if w.faults.client_close {
            let at = Duration::from_millis(w.rng.random_range(100..50_000));
            w.schedule(at, Net::ClientCloses);
        }
        w
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn note(&mut self, what: String) {
        if self.log.len() >= 200 {
            self.log.remove(0);
        }
        self.log
            .push(format!("{:>9.3}s {what}", self.elapsed().as_secs_f64()));
    }

    fn schedule_at(&mut self, at: Instant, net: Net) {
        self.order += 1;
        self.queue.push(Reverse((at, self.order)));
        self.pending.insert(self.order, net);
    }

    fn schedule(&mut self, after: Duration, net: Net) {
        self.schedule_at(self.now + after, net);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.faults.latency;
        lo + Duration::from_micros(self.rng.random_range(0..=(hi - lo).as_micros() as u64))
    }

    /// Sends on a connection, after everything sent before on it the same way.
    fn on_conn(&mut self, conn: u64, to_client: bool, net: Net) {
        let latency = self.latency();
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let last = if to_client {
            &mut c.to_client
        } else {
            &mut c.to_server
        };
        let at = (now + latency).max(*last);
        *last = at;
        self.schedule_at(at, net);
    }

    fn new_client(&mut self) {
        let mut machine = ClientMachine::new(ClientConfig::default(), self.now);
        machine.open(self.now);
        self.clients.push(Client {
            machine,
            closed: false,
            conn: None,
            received: Vec::new(),
            sent: HashMap::new(),
            resolved: HashSet::new(),
        });
    }

    fn current(&self) -> usize {
        self.clients.len() - 1
    }

    /// Runs until the end; the first broken invariant is the error.
    fn run(&mut self) -> Result<(), Violation> {
        loop {
            self.pump_all()?;
            let next_net = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_timer = self.next_timer();
            let Some(at) = [next_net, next_timer].into_iter().flatten().min() else {
                break;
            };
            if at > self.t0 + END {
                break;
            }
            self.now = self.now.max(at);
            self.steps += 1;
            if self.steps > 2_000_000 {
                return Err("no progress: more than 2 000 000 steps".into());
            }
            if next_net == Some(at) {
                let Some(Reverse((_, order))) = self.queue.pop() else {
                    continue;
                };
                if let Some(net) = self.pending.remove(&order) {
                    self.deliver(net)?;
                }
            } else {
                self.run_timers();
            }
        }
        Ok(())
    }

    fn next_timer(&self) -> Option<Instant> {
        let servers = self
            .servers
            .iter()
            .filter(|s| !s.closed)
            .filter_map(|s| s.deadline);
        let clients = self.clients.iter().filter_map(|c| c.machine.poll_timeout());
        servers.chain(clients).min()
    }

    fn run_timers(&mut self) {
        let now = self.now;
        for s in &mut self.servers {
            if !s.closed && s.deadline.is_some_and(|at| at <= now) {
                s.machine.handle_timeout(now);
            }
        }
        for c in &mut self.clients {
            if c.machine.poll_timeout().is_some_and(|at| at <= now) {
                c.machine.handle_timeout(now);
            }
        }
    }

    fn deliver(&mut self, net: Net) -> Result<(), Violation> {
        let active = self.elapsed() < ACTIVE;
        match net {
            Net::Connect {
                client,
                conn,
                params,
            } => self.accept(client, conn, params),
            Net::Refused { client, conn } => {
                let c = &mut self.clients[client];
                if c.conn == Some(conn) {
                    c.conn = None;
                    c.machine
                        .handle_input(self.now, ClientInput::Lost("refused".into()));
                }
            }
            Net::ToServer { conn, message } => {
                let Some(server) = self
                    .conns
                    .get(&conn)
                    .filter(|c| !c.cut)
                    .and_then(|c| c.server)
                else {
                    return Ok(());
                };
                let s = &mut self.servers[server];
                s.machine.handle_input(
                    self.now,
                    Input::Frame {
                        conn: ConnId(conn),
                        message,
                    },
                );
            }
            Net::ToClient { conn, input } => {
                let Some(c) = self.conns.get(&conn) else {
                    return Ok(());
                };
                if c.cut && !matches!(input, ClientInput::Lost(_)) {
                    return Ok(());
                }
                let client = c.client;
                let c = &mut self.clients[client];
                if c.conn != Some(conn) {
                    return Ok(());
                }
                if matches!(input, ClientInput::Lost(_)) {
                    c.conn = None;
                }
                // The WebSocket library answers pings itself.
                if let ClientInput::Frame(WsMessage::Ping(data)) = &input {
                    let pong = Net::ToServer {
                        conn,
                        message: WsMessage::Pong(data.clone()),
                    };
                    self.on_conn(conn, false, pong);
                }
                self.clients[client].machine.handle_input(self.now, input);
            }
            Net::ServerGone { conn } => {
                if let Some(server) = self.conns.get(&conn).and_then(|c| c.server) {
                    let s = &mut self.servers[server];
                    s.machine
                        .handle_input(self.now, Input::Gone { conn: ConnId(conn) });
                }
            }
            Net::Cut => {
                if active {
                    if self.rng.random_bool(self.faults.cut.min(1.0)) {
                        self.cut();
                    }
                    self.schedule(Duration::from_secs(1), Net::Cut);
                }
            }
            Net::ClientSends => {
                if active {
                    let i = self.current();
                    let n = self.next_message;
                    self.next_message += 1;
                    let c = &mut self.clients[i];
                    if !c.closed
                        && let Ok(seq) = c
                            .machine
                            .send(self.now, Bytes::from(format!("{{\"c\":{n}}}")))
                    {
                        c.sent.insert(seq, n);
                    }
                    let gap = Duration::from_millis(self.rng.random_range(1..500));
                    self.schedule(gap, Net::ClientSends);
                }
            }
            Net::ServerSends => {
                if active {
                    let n = self.next_message;
                    self.next_message += 1;
                    let now = self.now;
                    if let Some(s) = self.servers.iter_mut().rev().find(|s| !s.closed)
                        && let Ok(seq) =
                            s.machine.send(now, Message::Text(format!("{{\"s\":{n}}}")))
                    {
                        s.sent.insert(seq, n);
                    }
                    let gap = Duration::from_millis(self.rng.random_range(1..500));
                    self.schedule(gap, Net::ServerSends);
                }
            }
            Net::ServerCloses => {
                if active {
                    let stop = self.rng.random_bool(0.5);
                    if self.rng.random_bool(self.faults.server_close.min(1.0))
                        && let Some(s) = self.servers.iter_mut().rev().find(|s| !s.closed)
                    {
                        if stop {
                            let _ = s.machine.stop(self.now);
                        } else {
                            s.machine.close(self.now, CloseReason::Closed(None));
                        }
                        self.note(format!(
                            "server application {}",
                            if stop { "stops" } else { "closes" }
                        ));
                    }
                    self.schedule(Duration::from_secs(1), Net::ServerCloses);
                }
            }
            Net::ClientCloses => {
                let i = self.current();
                self.clients[i].machine.close(self.now);
                self.note(format!("client {i} application closes"));
            }
        }
        Ok(())
    }

    /// Cuts the current client's connection: frames in flight are lost, each side learns it
    /// after a while, and connections fail for the outage.
    fn cut(&mut self) {
        let i = self.current();
        let Some(conn) = self.clients[i].conn else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        c.cut = true;
        self.note(format!("connection {conn} cut"));
        self.down_until = self.now + self.faults.outage;
        let a = self.latency();
        let b = self.latency();
        let lost = Net::ToClient {
            conn,
            input: ClientInput::Lost("reset".into()),
        };
        // Past `alive`, so scheduled directly.
        self.schedule(a, lost);
        self.schedule(b, Net::ServerGone { conn });
    }

    /// The endpoint's part: a `resume` token of a live session attaches to it (with `ack`);
    /// anything else gets a new session.
    fn accept(&mut self, client: usize, conn: u64, params: Vec<(String, String)>) {
        if self.now < self.down_until || self.rng.random_bool(self.faults.refuse.min(1.0)) {
            let latency = self.latency();
            self.schedule(latency, Net::Refused { client, conn });
            return;
        }
        if self.clients[client].conn != Some(conn) {
            return;
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let ack = param("ack").and_then(|a| a.parse::<u64>().ok());
        let live = param("resume").and_then(|token| {
            self.servers
                .iter()
                .position(|s| !s.closed && s.token == token)
        });
        let server = match live {
            Some(s) => s,
            None => {
                let id = self.servers.len();
                let machine = SessionMachine::new(server_config(id), self.now);
                let token = server_config(id).resume_token;
                self.servers.push(Server {
                    machine,
                    deadline: None,
                    token,
                    closed: false,
                    received: Vec::new(),
                    sent: HashMap::new(),
                });
                self.note(format!("server session {id} created"));
                id
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.server = Some(server);
        }
        self.note(format!(
            "connection {conn} to server {server} (ack {ack:?})"
        ));
        self.on_conn(
            conn,
            true,
            Net::ToClient {
                conn,
                input: ClientInput::Connected,
            },
        );
        self.servers[server].machine.handle_input(
            self.now,
            Input::Attach {
                conn: ConnId(conn),
                ack: live.and(ack),
            },
        );
    }

    fn pump_all(&mut self) -> Result<(), Violation> {
        for i in 0..self.servers.len() {
            self.pump_server(i)?;
        }
        for i in 0..self.clients.len() {
            self.pump_client(i)?;
        }
        Ok(())
    }

    fn pump_server(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            match self.servers[i].machine.poll_output() {
                Output::Transmit(Transmit::Frame { conn, message }) => {
                    let input = ClientInput::Frame(message);
                    self.on_conn(
                        conn.0,
                        true,
                        Net::ToClient {
                            conn: conn.0,
                            input,
                        },
                    );
                }
                Output::Transmit(Transmit::Release { conn }) => {
                    // The server closes the socket once its frames are written.
                    let input = ClientInput::Lost("closed by the server".into());
                    self.on_conn(
                        conn.0,
                        true,
                        Net::ToClient {
                            conn: conn.0,
                            input,
                        },
                    );
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.server = None;
                    }
                }
                Output::Transmit(_) => {}
                Output::Event(e) => self.server_event(i, e)?,
                Output::Timeout(at) => {
                    self.servers[i].deadline = at;
                    return Ok(());
                }
            }
        }
    }

    fn server_event(&mut self, i: usize, e: Event) -> Result<(), Violation> {
        let s = &mut self.servers[i];
        match e {
            Event::Message(Message::Text(text)) => {
                if s.closed {
                    return Err(format!("server {i} received {text} after it closed"));
                }
                let n = number(&text, "c")?;
                if s.received.last().is_some_and(|last| *last >= n) {
                    return Err(format!(
                        "server {i} received {n} after {:?}: out of order or twice",
                        s.received.last()
                    ));
                }
                s.received.push(n);
            }
            Event::Message(other) => return Err(format!("server {i} received {other:?}")),
            Event::Acked(seq) => {
                let n = s.sent[&seq];
                if !self.clients.iter().any(|c| c.received.contains(&n)) {
                    return Err(format!("server {i}'s {n} acknowledged, never received"));
                }
            }
            Event::Closed(reason) => {
                s.closed = true;
                self.note(format!("server {i} closed: {reason:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn pump_client(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(t) = self.clients[i].machine.poll_transmit() {
            match t {
                ClientTransmit::Connect { mut params } => {
                    if let Some(old) = self.clients[i].conn.take() {
                        self.drop_conn(old);
                    }
                    if self.rng.random_bool(self.faults.stale_ack.min(1.0))
                        && let Some(pos) = params.iter().position(|(k, _)| k == "ack")
                    {
                        let ack: u64 = params[pos].1.parse().unwrap_or(0);
                        if self.rng.random_bool(0.3) {
                            params.remove(pos);
                        } else {
                            params[pos].1 = self.rng.random_range(0..=ack).to_string();
                        }
                        self.note(format!("client {i} resumes with a stale ack: {params:?}"));
                    }
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        conn,
                        Conn {
                            client: i,
                            server: None,
                            alive: true,
                            cut: false,
                            to_client: self.now,
                            to_server: self.now,
                        },
                    );
                    self.clients[i].conn = Some(conn);
                    let latency = self.latency();
                    self.schedule(
                        latency,
                        Net::Connect {
                            client: i,
                            conn,
                            params,
                        },
                    );
                }
                ClientTransmit::Frame(message) => {
                    if let Some(conn) = self.clients[i].conn {
                        self.on_conn(conn, false, Net::ToServer { conn, message });
                    }
                }
                ClientTransmit::Close => {
                    if let Some(conn) = self.clients[i].conn.take() {
                        let message = WsMessage::Close(None);
                        self.on_conn(conn, false, Net::ToServer { conn, message });
                        self.drop_conn(conn);
                    }
                }
                _ => {}
            }
        }
        while let Some(e) = self.clients[i].machine.poll_event() {
            self.client_event(i, e)?;
        }
        Ok(())
    }

    /// The client drops a connection: the server learns it after what was sent on it.
    fn drop_conn(&mut self, conn: u64) {
        self.on_conn(conn, false, Net::ServerGone { conn });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.alive = false;
        }
    }

    fn client_event(&mut self, i: usize, e: ClientEvent) -> Result<(), Violation> {
        let c = &mut self.clients[i];
        match e {
            ClientEvent::Message(data) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                if c.closed {
                    return Err(format!("client {i} received {text} after it closed"));
                }
                let n = number(&text, "s")?;
                if c.received.last().is_some_and(|last| *last >= n) {
                    return Err(format!(
                        "client {i} received {n} after {:?}: out of order or twice",
                        c.received.last()
                    ));
                }
                c.received.push(n);
            }
            ClientEvent::Acked(seq) | ClientEvent::SendFailed(seq, _) => {
                let acked = matches!(e, ClientEvent::Acked(_));
                if !c.resolved.insert(seq) {
                    return Err(format!("client {i}'s send {seq} resolved twice"));
                }
                let n = c.sent[&seq];
                if acked && !self.servers.iter().any(|s| s.received.contains(&n)) {
                    return Err(format!("client {i}'s {n} acknowledged, never received"));
                }
            }
            ClientEvent::Closed(reason) => {
                c.closed = true;
                self.note(format!("client {i} closed: {reason:?}"));
                // The application reconnects with a new session, as the Rust client does,
                // unless it closed or was stopped.
                let again = !matches!(reason, CloseReason::Closed(None) | CloseReason::Stopped);
                if again && self.elapsed() < ACTIVE && i == self.current() {
                    self.new_client();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After the end: every send resolved exactly once.
    fn check_end(&self) -> Result<(), Violation> {
        for (i, c) in self.clients.iter().enumerate() {
            for seq in c.sent.keys() {
                if !c.resolved.contains(seq) {
                    return Err(format!("client {i}'s send {seq} never resolved"));
                }
            }
        }
        Ok(())
    }

    fn close_everything(&mut self) {
        let now = self.now;
        for c in &mut self.clients {
            c.machine.close(now);
        }
        for s in &mut self.servers {
            s.machine.close(now, CloseReason::Closed(None));
        }
    }

    fn report(&self, violation: &str) -> String {
        format!(
            "seed {}: {violation}\nfaults: {:?}\nlast events:\n{}\nreplay: SIM_SEED={} cargo test -p browserver-transport-ws --test simulation replay_seed -- --nocapture",
            self.seed,
            self.faults,
            self.log.join("\n"),
            self.seed
        )
    }
}

fn number(text: &str, key: &str) -> Result<u64, Violation> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{text}: {e}"))?;
    value[key]
        .as_u64()
        .ok_or_else(|| format!("{text} has no {key}"))
}

fn simulate(seed: u64, faults: Option<Faults>) -> Result<World, String> {
    let mut w = World::new(seed, faults);
    let result = w.run().and_then(|()| {
        w.close_everything();
        w.run()
    });
    let result = result.and_then(|()| w.check_end());
    match result {
        Ok(()) => Ok(w),
        Err(v) => Err(w.report(&v)),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn ten_thousand_seeded_runs_hold_every_invariant() {
    let seeds = env_u64("SIM_SEEDS", 10_000);
    let start = env_u64("SIM_SEED_START", 0);
    let mut resumed = 0usize;
    let mut delivered = 0usize;
    for seed in start..start + seeds {
        match simulate(seed, None) {
            Ok(w) => {
                resumed += usize::from(w.log.iter().any(|l| l.contains("stale ack")));
                delivered += w.clients.iter().map(|c| c.received.len()).sum::<usize>();
            }
            Err(report) => panic!("{report}"),
        }
    }
    // The faults happened: the sweep is not vacuous.
    if seeds >= 100 {
        assert!(
            resumed > 0,
            "no resumption with a stale ack in {seeds} seeds"
        );
        assert!(delivered > 0);
    }
}

#[test]
fn a_perfect_network_delivers_and_acknowledges_everything() {
    let w = simulate(7, Some(Faults::perfect())).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(w.clients.len(), 1);
    assert_eq!(w.servers.len(), 1);
    let c = &w.clients[0];
    let s = &w.servers[0];
    assert!(c.sent.len() > 50, "{}", c.sent.len());
    let mut sent_by_client: Vec<u64> = c.sent.values().copied().collect();
    sent_by_client.sort_unstable();
    assert_eq!(s.received, sent_by_client);
    let mut sent_by_server: Vec<u64> = s.sent.values().copied().collect();
    sent_by_server.sort_unstable();
    assert_eq!(c.received, sent_by_server);
}

#[test]
fn a_resumption_with_a_stale_ack_delivers_each_message_once() {
    let faults = Faults {
        cut: 0.5,
        stale_ack: 1.0,
        ..Faults::perfect()
    };
    for seed in 0..50 {
        let w = simulate(seed, Some(faults.clone())).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(w.servers.len(), 1, "seed {seed}: resumed, not replaced");
    }
}

#[test]
fn replay_seed() {
    let Ok(seed) = std::env::var("SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("SIM_SEED is a number");
    match simulate(seed, None) {
        Ok(w) => println!("seed {seed} holds\n{}", w.log.join("\n")),
        Err(report) => panic!("{report}"),
    }
}
