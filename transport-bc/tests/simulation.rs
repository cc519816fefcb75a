//! Deterministic simulation of BrowserChannel's two protocol machines — the server's
//! [`ServerMachine`] and the client's [`ClientMachine`] — over a seeded faulty network, with
//! the requests and responses they really exchange (encoded and parsed by `codec`), under a
//! virtual clock. Besides latency jitter (which reorders), the faults are BrowserChannel's
//! own: a back channel cut mid-chunk, a forward POST whose answer is lost (retried under the
//! same `RID`) or that arrives twice, a buffering proxy (`CI=1`, responses held until they
//! end), and the server application closing a session so that the client reconnects with
//! `OSID`/`OAID` and ghosts it.
//!
//! Checked after every step: each side's application receives the other's messages in order,
//! each at most once, none after its session closed; an acknowledgement (either way) means
//! the other application received the message; at the end every send has been resolved
//! exactly once; on a network without faults everything is delivered and acknowledged.
//!
//! `SIM_SEEDS=N` (default 10 000) and `SIM_SEED_START=S` set the sweep; a failing seed prints
//! the command that replays it (`SIM_SEED=S … replay_seed`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use browserver_core::{CloseReason, PathId};
use browserver_runtime::{Event, Machine, Message, Output};
use browserver_transport_bc::client::{
    ClientConfig, ClientEvent, ClientInput, ClientMachine, ClientTransmit, Request,
};
use browserver_transport_bc::codec::{self, ForwardLimits, leading_u64, param};
use browserver_transport_bc::protocol::{self, Input, RequestId, ServerMachine, Transmit};
use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

const MS: Duration = Duration::from_millis(1);
/// Virtual time during which the applications act; then everything is closed and the
/// timers run out.
const ACTIVE: Duration = Duration::from_secs(90);
const END: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Faults {
    latency: (Duration, Duration),
    /// A streamed response (back channel) is cut after part of a chunk.
    cut: f64,
    /// A forward POST's answer is lost (the client's deadline retries it).
    lose_answer: f64,
    /// A request reaches the server twice.
    duplicate: f64,
    /// A buffering proxy: back channels are `CI=1` and responses arrive when they end.
    buffering: bool,
    /// The server application closes a session (the client reconnects with `OSID`).
    server_close: f64,
    /// The client application closes at some point (terminate).
    client_close: bool,
}

impl Faults {
    fn perfect() -> Faults {
        Faults {
            latency: (MS, 5 * MS),
            cut: 0.0,
            lose_answer: 0.0,
            duplicate: 0.0,
            buffering: false,
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
            cut: pick(rng, 0.5, 0.3),
            lose_answer: pick(rng, 0.5, 0.2),
            duplicate: pick(rng, 0.5, 0.2),
            buffering: rng.random_bool(0.25),
            server_close: pick(rng, 0.3, 0.02),
            client_close: rng.random_bool(0.2),
        }
    }
}

/// What crosses the network.
#[derive(Debug)]
enum Net {
    /// A request reaches the server.
    Request {
        client: usize,
        request: Request,
    },
    /// A response event reaches a client.
    Response {
        client: usize,
        input: ClientInput,
    },
    /// A connection closed under the server: its streamed response is gone.
    PathGone {
        server: usize,
        path: PathId,
    },
    /// An application acts.
    ClientSends,
    ServerSends,
    ServerCloses,
    ClientCloses,
    Reconnect,
}

struct Server {
    machine: ServerMachine,
    /// Its next deadline, as its last drain reported it.
    deadline: Option<Instant>,
    /// The client session that created it.
    client: usize,
    closed: bool,
    received: Vec<u64>,
    sent: HashMap<u64, u64>,
}

struct Client {
    machine: ClientMachine,
    closed: bool,
    by_application: bool,
    received: Vec<u64>,
    sent: HashMap<u64, u64>,
    resolved: HashSet<u64>,
}

/// A server request id's route back: the client, its request id, the server session.
#[derive(Clone, Copy)]
struct Route {
    client: usize,
    request: RequestId,
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
    sids: HashMap<String, usize>,
    clients: Vec<Client>,
    next_server_request: u64,
    routes: HashMap<(usize, RequestId), Route>,
    /// Streamed responses: (server, path) → the route, and the reverse.
    streams: HashMap<(usize, PathId), Route>,
    stream_of: HashMap<(usize, RequestId), (usize, PathId)>,
    /// Buffering proxy: what a stream carried so far.
    held: HashMap<(usize, PathId), Vec<u8>>,
    /// Client requests whose response is cut or lost by the network.
    doomed: HashSet<(usize, RequestId)>,
    /// When each response's latest event arrives: one response is one connection, in order.
    arrivals: HashMap<(usize, RequestId), Instant>,
    next_message: u64,
    log: Vec<String>,
    steps: u64,
}

type Violation = String;

fn machine_config(id: &str, first_rid: u64) -> protocol::Config {
    protocol::Config {
        id: id.to_string(),
        host_prefix: None,
        first_rid,
        keep_alive_interval: Duration::from_secs(20),
        session_timeout: Duration::from_secs(30),
        attach_timeout: Duration::from_secs(10),
        max_buffered_bytes: 1 << 20,
        reorder_window: 4096,
        max_held_bytes: 4 << 20,
        back_channel_max_bytes: 10 * 1024,
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
            sids: HashMap::new(),
            clients: Vec::new(),
            next_server_request: 0,
            routes: HashMap::new(),
            streams: HashMap::new(),
            stream_of: HashMap::new(),
            held: HashMap::new(),
            doomed: HashSet::new(),
            arrivals: HashMap::new(),
            next_message: 0,
            log: Vec::new(),
            steps: 0,
        };
        w.new_client(None);
        w.schedule(Duration::from_millis(10), Net::ClientSends);
        w.schedule(Duration::from_millis(15), Net::ServerSends);
        if w.faults.server_close > 0.0 {
            w.schedule(Duration::from_secs(1), Net::ServerCloses);
        }
        if w.faults.client_close {
            let at = Duration::from_millis(w.rng.random_range(100..60_000));
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

    fn schedule(&mut self, after: Duration, net: Net) {
        let at = self.now + after;
        self.order += 1;
        self.queue.push(Reverse((at, self.order)));
        self.pending.insert(self.order, net);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.faults.latency;
        if hi <= lo {
            return lo;
        }
        lo + Duration::from_micros(self.rng.random_range(0..(hi - lo).as_micros() as u64))
    }

    fn new_client(&mut self, previous: Option<(String, Option<u64>)>) {
        let config = ClientConfig {
            streaming: !self.faults.buffering,
            previous,
            first_rid: self.rng.random_range(0..100_000),
            seed: self.rng.random(),
            retry_delay: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        let mut machine = ClientMachine::new(config, self.now);
        machine.open(self.now);
        self.clients.push(Client {
            machine,
            closed: false,
            by_application: false,
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

    fn next_timer(&mut self) -> Option<Instant> {
        let mut next = None::<Instant>;
        for s in &self.servers {
            if let (false, Some(at)) = (s.closed, s.deadline) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for c in &self.clients {
            if let Some(at) = c.machine.poll_timeout() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
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
            Net::Request { client, request } => self.serve(client, request),
            Net::Response { client, input } => {
                if let Some(c) = self.clients.get_mut(client) {
                    c.machine.handle_input(self.now, input);
                }
            }
            Net::PathGone { server, path } => {
                if let Some(s) = self.servers.get_mut(server) {
                    s.machine.handle_input(self.now, Input::PathGone(path));
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
                    let gap = Duration::from_millis(self.rng.random_range(1..800));
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
                    let gap = Duration::from_millis(self.rng.random_range(1..800));
                    self.schedule(gap, Net::ServerSends);
                }
            }
            Net::ServerCloses => {
                if active {
                    if self.rng.random_bool(self.faults.server_close.min(1.0))
                        && let Some(s) = self.servers.iter_mut().rev().find(|s| !s.closed)
                    {
                        s.machine.close(self.now, CloseReason::Closed(None));
                        self.note("server application closes its session".into());
                    }
                    self.schedule(Duration::from_secs(1), Net::ServerCloses);
                }
            }
            Net::ClientCloses => {
                let i = self.current();
                self.clients[i].by_application = true;
                self.clients[i].machine.close(self.now);
                self.note(format!("client {i} application closes"));
            }
            Net::Reconnect if !active => {}
            Net::Reconnect => {
                let i = self.current();
                let previous = self.clients[i]
                    .machine
                    .sid()
                    .map(|sid| (sid.to_string(), self.clients[i].machine.ack_position()));
                self.note(format!("client reconnects with OSID {previous:?}"));
                self.new_client(previous);
            }
        }
        Ok(())
    }

    /// The server's HTTP side, as the endpoint does it: route by `SID`, create (ghosting
    /// `OSID`), parse, hand to the session's machine.
    fn serve(&mut self, client: usize, request: Request) {
        let q = &request.query;
        let server_request = RequestId(self.next_server_request);
        self.next_server_request += 1;
        let route = Route {
            client,
            request: request.id,
        };
        let aid = param(q, "AID").and_then(leading_u64);
        let rid = param(q, "RID");
        let now = self.now;
        let sid = param(q, "SID")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let server = match &sid {
            Some(sid) => match self.sids.get(sid) {
                Some(&i) if !self.servers[i].closed => Some(i),
                _ => {
                    let body = codec::error_body("Unknown SID");
                    return self.respond(route, 400, Bytes::from(body));
                }
            },
            None => None,
        };
        if request.post {
            let body = request.body.unwrap_or_default();
            let Ok(forward) =
                codec::parse_forward(body.as_bytes(), false, ForwardLimits::default())
            else {
                return self.respond(route, 400, Bytes::from(codec::error_body("Bad data")));
            };
            let Some(rid) = rid.and_then(|r| r.parse::<u64>().ok()) else {
                return self.respond(route, 400, Bytes::from(codec::error_body("Bad data")));
            };
            let server = match server {
                Some(i) => i,
                None => {
                    if let Some(old) = param(q, "OSID").and_then(|o| self.sids.get(o).copied()) {
                        let oaid = param(q, "OAID").and_then(leading_u64);
                        self.servers[old]
                            .machine
                            .handle_input(now, Input::Ghost { oaid });
                    }
                    let i = self.servers.len();
                    let id = format!("s{i}");
                    self.sids.insert(id.clone(), i);
                    self.servers.push(Server {
                        machine: ServerMachine::new(machine_config(&id, rid), now),
                        deadline: None,
                        client,
                        closed: false,
                        received: Vec::new(),
                        sent: HashMap::new(),
                    });
                    self.note(format!("server session {i} created by client {client}"));
                    i
                }
            };
            self.routes.insert((server, server_request), route);
            let creating = sid.is_none();
            self.servers[server].machine.handle_input(
                now,
                Input::Forward {
                    request: server_request,
                    rid,
                    aid,
                    body: forward,
                    creating,
                },
            );
        } else if param(q, "TYPE") == Some("terminate") {
            if let Some(i) = server {
                let rid = rid.and_then(|r| r.parse().ok()).unwrap_or(0);
                self.servers[i]
                    .machine
                    .handle_input(now, Input::Terminate { rid, aid });
            }
            self.respond(route, 200, Bytes::new());
        } else if let Some(i) = server {
            self.routes.insert((i, server_request), route);
            self.servers[i].machine.handle_input(
                now,
                Input::BackChannel {
                    request: server_request,
                    aid,
                    streaming: param(q, "CI") == Some("0"),
                    html: None,
                },
            );
        }
    }

    /// Sends one response event after a latency, behind the response's earlier events.
    fn send_to_client(&mut self, client: usize, input: ClientInput) {
        let request = match &input {
            ClientInput::Head { request, .. }
            | ClientInput::Data { request, .. }
            | ClientInput::End { request }
            | ClientInput::Failed { request, .. } => *request,
            _ => return,
        };
        let at = (self.now + self.latency()).max(
            self.arrivals
                .get(&(client, request))
                .copied()
                .unwrap_or(self.now),
        );
        self.arrivals.insert((client, request), at);
        let after = at - self.now;
        self.schedule(after, Net::Response { client, input });
    }

    /// A whole response, unless the network loses or cuts it.
    fn respond(&mut self, route: Route, status: u16, body: Bytes) {
        let key = (route.client, route.request);
        if self.doomed.remove(&key) {
            // Lost: the client's deadline will notice.
            return;
        }
        let (client, request) = (route.client, route.request);
        self.send_to_client(client, ClientInput::Head { request, status });
        if !body.is_empty() {
            // Split anywhere (even inside a UTF-8 sequence or a length prefix).
            let cut = self.rng.random_range(0..=body.len());
            for part in [body.slice(..cut), body.slice(cut..)] {
                if !part.is_empty() {
                    self.send_to_client(
                        client,
                        ClientInput::Data {
                            request,
                            data: part,
                        },
                    );
                }
            }
        }
        self.send_to_client(client, ClientInput::End { request });
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
            let out = self.servers[i].machine.poll_output();
            match out {
                Output::Timeout(at) => {
                    self.servers[i].deadline = at;
                    return Ok(());
                }
                Output::Transmit(t) => self.server_transmit(i, t),
                Output::Event(e) => self.server_event(i, e)?,
            }
        }
    }

    fn server_transmit(&mut self, i: usize, t: Transmit) {
        match t {
            Transmit::Respond {
                request,
                status,
                body,
            } => {
                if let Some(route) = self.routes.remove(&(i, request)) {
                    let route_key = (route.client, route.request);
                    let forward_loss = self.faults.lose_answer;
                    if status == 200 && self.rng.random_bool(forward_loss) {
                        self.doomed.insert(route_key);
                        self.note(format!(
                            "answer to client {} request {:?} lost",
                            route.client, route.request
                        ));
                    }
                    self.respond(route, status, body);
                }
            }
            Transmit::Stream { request, path, .. } => {
                if let Some(route) = self.routes.remove(&(i, request)) {
                    self.streams.insert((i, path), route);
                    self.stream_of
                        .insert((route.client, route.request), (i, path));
                    if !self.faults.buffering {
                        self.send_to_client(
                            route.client,
                            ClientInput::Head {
                                request: route.request,
                                status: 200,
                            },
                        );
                    }
                }
            }
            Transmit::Chunk { path, data } => {
                let Some(route) = self.streams.get(&(i, path)).copied() else {
                    return;
                };
                if self.faults.buffering {
                    self.held
                        .entry((i, path))
                        .or_default()
                        .extend_from_slice(&data);
                    return;
                }
                if self.rng.random_bool(self.faults.cut) {
                    // The connection dies after part of this chunk.
                    let cut = self.rng.random_range(0..data.len().max(1));
                    let lat = self.latency();
                    if cut > 0 {
                        self.send_to_client(
                            route.client,
                            ClientInput::Data {
                                request: route.request,
                                data: data.slice(..cut),
                            },
                        );
                    }
                    self.send_to_client(
                        route.client,
                        ClientInput::Failed {
                            request: route.request,
                            error: "connection reset".into(),
                        },
                    );
                    self.streams.remove(&(i, path));
                    self.stream_of.remove(&(route.client, route.request));
                    self.schedule(lat, Net::PathGone { server: i, path });
                    self.note(format!("back channel of server {i} cut mid-chunk"));
                    return;
                }
                self.send_to_client(
                    route.client,
                    ClientInput::Data {
                        request: route.request,
                        data,
                    },
                );
            }
            Transmit::End { path } => {
                let Some(route) = self.streams.remove(&(i, path)) else {
                    return;
                };
                self.stream_of.remove(&(route.client, route.request));
                if self.faults.buffering {
                    let body = self.held.remove(&(i, path)).unwrap_or_default();
                    self.respond(route, 200, Bytes::from(body));
                    return;
                }
                self.send_to_client(
                    route.client,
                    ClientInput::End {
                        request: route.request,
                    },
                );
            }
            _ => {}
        }
    }

    fn server_event(&mut self, i: usize, e: Event) -> Result<(), Violation> {
        let s = &mut self.servers[i];
        match e {
            Event::Message(m) => {
                if s.closed {
                    return Err(format!("server {i} delivered a message after it closed"));
                }
                let Some(n) = m
                    .json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v.get("c").and_then(serde_json::Value::as_u64))
                else {
                    return Err(format!("server {i} delivered something unexpected: {m:?}"));
                };
                if s.received.last().is_some_and(|&last| n <= last) {
                    return Err(format!(
                        "server {i} delivered {n} after {:?}: out of order or twice",
                        s.received.last()
                    ));
                }
                let client = s.client;
                if !self.clients[client].sent.values().any(|&v| v == n) {
                    return Err(format!(
                        "server {i} delivered {n}, which client {client} never sent"
                    ));
                }
                s.received.push(n);
            }
            Event::Acked(seq) => {
                let n = s.sent.get(&seq).copied();
                let client = s.client;
                let Some(n) = n else {
                    return Err(format!("server {i} acknowledged unknown seq {seq}"));
                };
                if !self.clients[client].received.contains(&n) {
                    return Err(format!(
                        "server {i} saw {n} acknowledged, but client {client} never received it"
                    ));
                }
            }
            Event::Closed(reason) => {
                s.closed = true;
                self.note(format!("server {i} closed: {reason}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn pump_client(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(t) = self.clients[i].machine.poll_transmit() {
            match t {
                ClientTransmit::Request(request) => {
                    let dup = self.rng.random_bool(self.faults.duplicate);
                    let lat = self.latency();
                    if dup && request.post {
                        let again = request.clone();
                        let later = self.latency() + lat;
                        self.schedule(
                            later,
                            Net::Request {
                                client: i,
                                request: again,
                            },
                        );
                    }
                    self.schedule(lat, Net::Request { client: i, request });
                }
                ClientTransmit::Cancel(id) => {
                    // The socket closes: a streamed response's server sees its path go.
                    if let Some((server, path)) = self.stream_of.remove(&(i, id)) {
                        self.streams.remove(&(server, path));
                        self.held.remove(&(server, path));
                        let lat = self.latency();
                        self.schedule(lat, Net::PathGone { server, path });
                    }
                }
                _ => {}
            }
        }
        while let Some(e) = self.clients[i].machine.poll_event() {
            let c = &mut self.clients[i];
            match e {
                ClientEvent::Message(data) => {
                    if c.closed {
                        return Err(format!("client {i} delivered a message after it closed"));
                    }
                    let n = serde_json::from_slice::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|v| v.get("s").and_then(serde_json::Value::as_u64));
                    let Some(n) = n else {
                        return Err(format!("client {i} delivered something unexpected"));
                    };
                    if c.received.last().is_some_and(|&last| n <= last) {
                        return Err(format!("client {i} delivered {n} out of order or twice"));
                    }
                    c.received.push(n);
                }
                ClientEvent::Acked(seq) | ClientEvent::SendFailed(seq, _) => {
                    let acked = matches!(e, ClientEvent::Acked(_));
                    if !c.resolved.insert(seq) {
                        return Err(format!("client {i} resolved send {seq} twice"));
                    }
                    if acked {
                        let n = c.sent.get(&seq).copied();
                        let sid = c.machine.sid().map(str::to_string);
                        let server = sid.and_then(|sid| self.sids.get(&sid).copied());
                        let delivered = server.is_some_and(|s| {
                            n.is_some_and(|n| self.servers[s].received.contains(&n))
                        });
                        if !delivered {
                            return Err(format!(
                                "client {i} saw seq {seq} ({n:?}) acknowledged, but its server never delivered it"
                            ));
                        }
                    }
                }
                ClientEvent::Closed(reason) => {
                    c.closed = true;
                    let reconnect = !c.by_application
                        && reason != CloseReason::Stopped
                        && i == self.clients.len() - 1;
                    self.note(format!("client {i} closed: {reason}"));
                    if reconnect && self.elapsed() < ACTIVE {
                        self.schedule(Duration::from_millis(100), Net::Reconnect);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Everything closes; every send must then be resolved exactly once.
    fn check_end(&mut self) -> Result<(), Violation> {
        for (i, c) in self.clients.iter().enumerate() {
            if !c.closed {
                return Err(format!("client {i} still open at the end"));
            }
            if let Some(seq) = c.sent.keys().find(|s| !c.resolved.contains(s)) {
                return Err(format!("client {i}'s send {seq} was never resolved"));
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            if !s.closed {
                return Err(format!("server {i} still open at the end"));
            }
        }
        Ok(())
    }

    fn close_everything(&mut self) {
        let now = self.now;
        for c in &mut self.clients {
            if !c.machine.is_closed() {
                c.by_application = true;
                c.machine.close(now);
            }
        }
    }

    fn report(&self, violation: &str) -> String {
        format!(
            "seed {} failed at {:.3}s: {violation}\nfaults: {:?}\nreplay: SIM_SEED={} cargo test -p browserver-transport-bc --test simulation replay_seed -- --nocapture\nlast steps:\n{}",
            self.seed,
            self.elapsed().as_secs_f64(),
            self.faults,
            self.seed,
            self.log.join("\n")
        )
    }
}

/// One run: the applications act until [`ACTIVE`], then close, and the timers run out.
fn simulate(seed: u64, faults: Option<Faults>) -> Result<World, String> {
    let mut w = World::new(seed, faults);
    w.schedule(ACTIVE, Net::ClientCloses);
    let outcome = w.run();
    // `run` ends when nothing is scheduled; close whatever is still open and let it finish.
    let outcome = outcome.and_then(|()| {
        w.close_everything();
        w.run()?;
        w.check_end()
    });
    match outcome {
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
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_SEEDS", 10_000);
    let mut failures = Vec::new();
    let mut seen = BTreeMap::<&str, u64>::new();
    for seed in start..start + count {
        match simulate(seed, None) {
            Ok(w) => {
                let f = &w.faults;
                for (name, on) in [
                    ("reconnected with OSID", w.clients.len() > 1),
                    ("back channel cut", f.cut > 0.0),
                    ("forward answer lost", f.lose_answer > 0.0),
                    ("request duplicated", f.duplicate > 0.0),
                    ("buffering proxy", f.buffering),
                    ("client terminated", f.client_close),
                ] {
                    if on {
                        *seen.entry(name).or_default() += 1;
                    }
                }
            }
            Err(report) => {
                if failures.is_empty() {
                    eprintln!("{report}");
                }
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed; first failing seeds: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    eprintln!("runs with each fault: {seen:?}");
    if count >= 1000 {
        assert_eq!(
            seen.len(),
            6,
            "every fault must occur in the sweep: {seen:?}"
        );
    }
}

#[test]
fn a_perfect_network_delivers_and_acknowledges_everything() {
    for seed in 0..50 {
        let w = simulate(seed, Some(Faults::perfect())).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(
            w.clients.len(),
            1,
            "seed {seed}: no reconnect without faults"
        );
        assert_eq!(w.servers.len(), 1, "seed {seed}");
        let client = &w.clients[0];
        let server = &w.servers[0];
        let client_sent: Vec<u64> = {
            let mut v: Vec<_> = client.sent.values().copied().collect();
            v.sort_unstable();
            v
        };
        // Everything sent before the client closed reached the server, in order (but for
        // what was still in flight when it closed).
        assert!(!client_sent.is_empty());
        assert!(
            client_sent.starts_with(&server.received)
                && server.received.len() + 3 >= client_sent.len(),
            "seed {seed}: the server received {} of {} client messages",
            server.received.len(),
            client_sent.len()
        );
        let mut server_sent: Vec<u64> = server.sent.values().copied().collect();
        server_sent.sort_unstable();
        let delivered = &client.received;
        assert!(
            server_sent.starts_with(delivered) && delivered.len() + 3 >= server_sent.len(),
            "seed {seed}: the client received {} of {} server messages",
            delivered.len(),
            server_sent.len()
        );
    }
}

#[test]
fn replay_seed() {
    let Ok(seed) = std::env::var("SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("SIM_SEED is a number");
    match simulate(seed, None) {
        Ok(w) => eprintln!("seed {seed} passes\n{}", w.log.join("\n")),
        Err(report) => panic!("{report}"),
    }
}
