//! `browserver-compare`: runs the same loads against browserver and its peers, alternately,
//! and writes the results into `docs/benchmarks.md` (between its `results` markers), with two
//! plots (`docs/benchmarks.svg`: messages/s, `docs/benchmarks-cpu.svg`: server CPU time per
//! message, both against concurrent sessions) and the raw figures (`docs/benchmarks.json`).
//!
//! Run it through `benches/compare`, which builds the binaries and installs the peers from
//! npm first. Every server runs pinned to CPU 0 and every load to CPU 1 (`taskset`), so the
//! server CPU time per message is measured apart from the load's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

mod tunnel;
use plotters::prelude::*;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Folder with the release binaries (browserver, browserver-load, baseline-server).
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// node_modules folder holding browserchannel and socket.io (for the comparison).
    #[arg(long, required_unless_present_any = ["ab", "tunnel"])]
    peers: Option<PathBuf>,
    /// Instead of the comparison with the peers: two builds of the `browserver` binary,
    /// before and after a change, under the same load, alternating (`benches/ab`).
    #[arg(long, num_args = 2, value_names = ["BEFORE", "AFTER"])]
    ab: Option<Vec<PathBuf>>,
    /// With `--ab`: browserchannel, websocket, websocket-session (echo), proxy (GETs
    /// through the proxy to 10 client hosts), or idle-browserchannel / idle-websocket (RSS
    /// per idle session, `--sessions` of them, a fresh server each round).
    #[arg(long, default_value = "browserchannel")]
    load: String,
    /// Folder with the peers' server scripts.
    #[arg(long, default_value = "benches/peers")]
    scripts: PathBuf,
    /// Where to write benchmarks.md / .svg / .json.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Alternating rounds per comparison (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Sessions for the head-to-head echo comparisons.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Session counts for the throughput plot.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    sweep: Vec<usize>,
    /// Idle session counts for the memory figures.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Only the tunnel comparison (direct, bore, rathole, browserver + expose); written
    /// between the `tunnel` markers of benchmarks.md.
    #[arg(long)]
    tunnel: bool,
    /// Folder with the `bore` and `rathole` binaries (default: found on PATH).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Bytes of each tunnel transfer.
    #[arg(long, default_value_t = 1 << 30)]
    transfer_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ours,
    OursProxy,
    NodeBc,
    SocketIo,
    BareWs,
    BareHttp,
    /// `--ab`'s first binary.
    Before,
    /// `--ab`'s second binary.
    After,
}

struct Server {
    kind: Kind,
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(args: &Args, kind: Kind) -> Result<Server, String> {
    let bin = |name: &str| args.bin.join(name).display().to_string();
    let script = |name: &str| args.scripts.join(name).display().to_string();
    let cmd: Vec<String> = match kind {
        Kind::Ours => vec![
            bin("browserver"),
            "echo".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
        Kind::OursProxy => vec![bin("browserver"), "--listen".into(), "127.0.0.1:0".into()],
        Kind::NodeBc => vec!["node".into(), script("browserchannel-echo.js")],
        Kind::SocketIo => vec!["node".into(), script("socketio-echo.js")],
        Kind::BareWs => vec![bin("baseline-server"), "ws-echo".into()],
        Kind::BareHttp => vec![bin("baseline-server"), "http-hello".into()],
        Kind::Before | Kind::After => {
            let which = usize::from(kind == Kind::After);
            let path = args
                .ab
                .as_ref()
                .and_then(|b| b.get(which))
                .ok_or("no --ab binary")?;
            let mut cmd = vec![path.display().to_string()];
            if args.load != "proxy" {
                cmd.push("echo".into());
            }
            cmd.extend(["--listen".into(), "127.0.0.1:0".into()]);
            cmd
        }
    };
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .args(&cmd)
        .env("NODE_PATH", args.peers.clone().unwrap_or_default())
        .env("RUST_LOG", "warn")
        // Every session of a load run comes from one loopback address: lift browserver's
        // per-address limits (environment variables, which binaries that predate them
        // ignore, so that `--ab` can run an older build).
        .env("BROWSERVER_MAX_SESSIONS_PER_ADDRESS", "0")
        .env("BROWSERVER_SESSION_RATE", "0")
        .env("BROWSERVER_MAX_CONNECTIONS_PER_ADDRESS", "0")
        .env("BROWSERVER_MAX_CONNECTIONS", "1000000")
        .stdin(Stdio::null());
    let (child, addr) = tunnel::spawn_reading(command, tunnel::listening)?;
    Ok(Server { kind, child, addr })
}

/// The process's user + system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One echo target: a server and the load tool's transport and URL for it.
#[derive(Clone, Copy)]
struct Target {
    label: &'static str,
    kind: Kind,
    transport: &'static str,
}

const OURS_BC: Target = Target {
    label: "browserver BrowserChannel",
    kind: Kind::Ours,
    transport: "browserchannel",
};
const OURS_WS: Target = Target {
    label: "browserver WebSocket",
    kind: Kind::Ours,
    transport: "websocket",
};
const OURS_WS_SESSION: Target = Target {
    label: "browserver WebSocket session mode",
    kind: Kind::Ours,
    transport: "websocket-session",
};
const NODE_BC: Target = Target {
    label: "node-browserchannel",
    kind: Kind::NodeBc,
    transport: "browserchannel",
};
const BARE_WS: Target = Target {
    label: "bare tokio-tungstenite",
    kind: Kind::BareWs,
    transport: "websocket",
};
const SIO_WS: Target = Target {
    label: "Socket.IO WebSocket",
    kind: Kind::SocketIo,
    transport: "socketio-websocket",
};
const SIO_POLL: Target = Target {
    label: "Socket.IO polling",
    kind: Kind::SocketIo,
    transport: "socketio-polling",
};

fn url(target: Target, addr: &str) -> String {
    match (target.kind, target.transport) {
        (Kind::Ours | Kind::NodeBc | Kind::Before | Kind::After, "browserchannel") => {
            format!("http://{addr}/channel")
        }
        (Kind::Ours | Kind::Before | Kind::After, _) => format!("ws://{addr}/ws"),
        (Kind::BareWs, _) => format!("ws://{addr}/"),
        _ => format!("http://{addr}"),
    }
}

struct Bench<'a> {
    args: &'a Args,
    servers: Vec<Server>,
    tck: f64,
}

impl Bench<'_> {
    fn server(&mut self, kind: Kind) -> Result<&Server, String> {
        if !self.servers.iter().any(|s| s.kind == kind) {
            let s = spawn_server(self.args, kind)?;
            self.servers.push(s);
        }
        self.servers
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| "no server".into())
    }

    fn load(&self, args: &[String]) -> Result<Value, String> {
        run_load(&self.args.bin, args)
    }

    /// An echo run; the load tool's summary plus the server's CPU time per echoed message.
    fn echo(&mut self, target: Target, sessions: usize, seconds: f64) -> Result<Value, String> {
        let (pid, addr) = {
            let s = self.server(target.kind)?;
            (s.child.id(), s.addr.clone())
        };
        let before = cpu_ticks(pid);
        let mut summary = self.load(&[
            "echo".into(),
            "--transport".into(),
            target.transport.into(),
            "--url".into(),
            url(target, &addr),
            "--sessions".into(),
            sessions.to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ])?;
        let cpu = (cpu_ticks(pid) - before) as f64 / self.tck;
        let echoed = summary["echoed"].as_f64().unwrap_or(0.0).max(1.0);
        summary["server_cpu_us_per_message"] = json!((cpu * 1e6 / echoed * 100.0).round() / 100.0);
        eprintln!(
            "  {:<36} {sessions:>5} sessions  {:>8} msg/s  p99 {:>7} µs  {:>6} µs CPU/msg  lost {} errors {}",
            target.label,
            summary["messages_per_second"],
            summary["latency_us"]["p99"],
            summary["server_cpu_us_per_message"],
            summary["lost"],
            summary["errors"],
        );
        Ok(summary)
    }

    /// A GET run; the load tool's summary plus the server's CPU time per request.
    fn http(&mut self, kind: Kind, seconds: f64) -> Result<Value, String> {
        let proxy = kind != Kind::BareHttp;
        let (pid, addr) = {
            let s = self.server(kind)?;
            (s.child.id(), s.addr.clone())
        };
        let mut args: Vec<String> = if proxy {
            vec![
                "proxy".into(),
                "--url".into(),
                format!("http://{addr}"),
                "--hosts".into(),
                "10".into(),
            ]
        } else {
            vec!["http".into(), "--url".into(), format!("http://{addr}/")]
        };
        args.extend([
            "--connections".into(),
            "32".into(),
            "--seconds".into(),
            seconds.to_string(),
        ]);
        let before = cpu_ticks(pid);
        let mut summary = self.load(&args)?;
        let cpu = (cpu_ticks(pid) - before) as f64 / self.tck;
        let requests = summary["requests"].as_f64().unwrap_or(0.0).max(1.0);
        summary["server_cpu_us_per_request"] =
            json!((cpu * 1e6 / requests * 100.0).round() / 100.0);
        eprintln!(
            "  {:<36} {:>8} req/s  p99 {:>7} µs  {:>6} µs CPU/req  errors {}",
            match kind {
                Kind::OursProxy => "browserver proxy → client hosts",
                Kind::BareHttp => "bare hyper",
                Kind::Before => "before",
                _ => "after",
            },
            summary["requests_per_second"],
            summary["latency_us"]["p99"],
            summary["server_cpu_us_per_request"],
            summary["errors"],
        );
        Ok(summary)
    }

    /// RSS growth per idle session, in a fresh server process.
    fn idle(&mut self, target: Target, sessions: usize) -> Result<Value, String> {
        let server = spawn_server(self.args, target.kind)?;
        std::thread::sleep(Duration::from_secs(1));
        let pid = server.child.id();
        let before = rss_kib(pid);
        let mut load = Command::new("taskset")
            .args(["-c", "1"])
            .arg(self.args.bin.join("browserver-load"))
            .args([
                "echo",
                "--transport",
                target.transport,
                "--url",
                &url(target, &server.addr),
            ])
            .args([
                "--sessions",
                &sessions.to_string(),
                "--window",
                "0",
                "--seconds",
                "120",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stderr = load.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(120)).is_ok();
        std::thread::sleep(Duration::from_secs(3));
        let after = rss_kib(pid);
        let _ = load.kill();
        let _ = load.wait();
        let per_session = (after.saturating_sub(before) * 1024) as f64 / sessions as f64;
        eprintln!(
            "  {:<36} {sessions:>6} idle sessions  RSS {before} → {after} KiB  {:.1} KiB/session{}",
            target.label,
            per_session / 1024.0,
            if ready { "" } else { "  (not all opened)" }
        );
        Ok(json!({
            "sessions": sessions,
            "all_open": ready,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_session": per_session.round(),
        }))
    }
}

/// Runs `browserver-load` from `bin` on CPU 1; its JSON summary.
fn run_load(bin: &Path, args: &[String]) -> Result<Value, String> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin.join("browserver-load"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "browserver-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn pick(runs: &[Value], f: impl Fn(&Value) -> Option<f64>) -> f64 {
    median(&runs.iter().filter_map(f).collect::<Vec<_>>())
}

/// Median figures of several echo runs.
fn echo_medians(runs: &[Value]) -> Value {
    json!({
        "messages_per_second": pick(runs, |r| r["messages_per_second"].as_f64()),
        "p50_us": pick(runs, |r| r["latency_us"]["p50"].as_f64()),
        "p99_us": pick(runs, |r| r["latency_us"]["p99"].as_f64()),
        "p999_us": pick(runs, |r| r["latency_us"]["p999"].as_f64()),
        "server_cpu_us_per_message": pick(runs, |r| r["server_cpu_us_per_message"].as_f64()),
        "lost": runs.iter().filter_map(|r| r["lost"].as_u64()).sum::<u64>(),
        "out_of_order": runs.iter().filter_map(|r| r["out_of_order"].as_u64()).sum::<u64>(),
        "errors": runs.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
        "runs": runs,
    })
}

fn http_medians(runs: &[Value]) -> Value {
    json!({
        "requests_per_second": pick(runs, |r| r["requests_per_second"].as_f64()),
        "p50_us": pick(runs, |r| r["latency_us"]["p50"].as_f64()),
        "p99_us": pick(runs, |r| r["latency_us"]["p99"].as_f64()),
        "errors": runs.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
        "runs": runs,
    })
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn package_version(peers: &Path, name: &str) -> String {
    std::fs::read_to_string(peers.join(name).join("package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One figure per series label: (sessions, value) points.
type Series = [(String, Vec<(usize, f64)>)];

/// Line colours: ours in warm colours, the peers in cool ones (same order as the sweep).
const COLOURS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

fn plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    sweep: &Series,
    unit: f64,
    suffix: &str,
) -> Result<(), String> {
    let max_x = sweep
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let max_y = sweep
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_x).log_scale(), 0.0..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions (log scale)")
        .y_desc(y_desc)
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{:.0}{suffix}", v / unit))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, points)) in sweep.iter().enumerate() {
        let color = COLOURS[i % COLOURS.len()];
        let data: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("browserver-compare: {e}");
        std::process::exit(1);
    }
}

/// `--ab`: before and after, alternating; the medians and after ÷ before on stdout.
/// `--ab` with an idle load: memory per idle session, before and after.
fn ab_idle(bench: &mut Bench, transport: &'static str) -> Result<(), String> {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..bench.args.rounds {
        for (kind, runs) in [(Kind::Before, &mut before), (Kind::After, &mut after)] {
            let label = if kind == Kind::Before {
                "before"
            } else {
                "after"
            };
            let target = Target {
                label,
                kind,
                transport,
            };
            let r = bench.idle(target, bench.args.sessions)?;
            runs.push(r["bytes_per_session"].as_f64().unwrap_or(0.0) / 1024.0);
        }
    }
    let (b, a) = (median(&before), median(&after));
    println!("median before {b:.2} KiB per idle session");
    println!("median after  {a:.2} KiB per idle session");
    println!(
        "after ÷ before: memory per idle session {:.2}",
        a / b.max(0.01)
    );
    Ok(())
}

fn ab(args: &Args) -> Result<(), String> {
    let mut bench = Bench {
        args,
        servers: Vec::new(),
        tck: clock_ticks(),
    };
    match args.load.as_str() {
        "idle-browserchannel" => return ab_idle(&mut bench, "browserchannel"),
        "idle-websocket" => return ab_idle(&mut bench, "websocket"),
        _ => {}
    }
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for (kind, runs) in [(Kind::Before, &mut before), (Kind::After, &mut after)] {
            runs.push(if args.load == "proxy" {
                bench.http(kind, args.seconds)?
            } else {
                let label = if kind == Kind::Before {
                    "before"
                } else {
                    "after"
                };
                let transport = match args.load.as_str() {
                    "browserchannel" => "browserchannel",
                    "websocket" => "websocket",
                    "websocket-session" => "websocket-session",
                    other => return Err(format!("--load {other}: not a load this mode knows")),
                };
                bench.echo(
                    Target {
                        label,
                        kind,
                        transport,
                    },
                    args.sessions,
                    args.seconds,
                )?
            });
        }
    }
    let median_of = |runs: &[Value]| {
        [
            pick(runs, |r| {
                r["messages_per_second"]
                    .as_f64()
                    .or(r["requests_per_second"].as_f64())
            }),
            pick(runs, |r| r["latency_us"]["p99"].as_f64()),
            pick(runs, |r| {
                r["server_cpu_us_per_message"]
                    .as_f64()
                    .or(r["server_cpu_us_per_request"].as_f64())
            }),
        ]
    };
    let (b, a) = (median_of(&before), median_of(&after));
    for (name, m) in [("before", b), ("after", a)] {
        println!(
            "median {name:6} {:>9.0}/s  p99 {:>7.0} µs  server CPU {:6.2} µs each",
            m[0], m[1], m[2]
        );
    }
    println!(
        "after ÷ before: rate {:.2}, p99 {:.2}, server CPU {:.2}",
        a[0] / b[0].max(1.0),
        a[1] / b[1].max(1.0),
        a[2] / b[2].max(0.01)
    );
    Ok(())
}

/// Writes `md` between the `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers of
/// benchmarks.md (appending them when missing).
fn write_section(args: &Args, name: &str, md: &str) -> Result<(), String> {
    let doc = args.out.join("benchmarks.md");
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let old = std::fs::read_to_string(&doc).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{md}{}", &old[..b], &old[e..]),
        _ => format!("{old}\n{begin}\n{md}{end}\n"),
    };
    std::fs::write(&doc, new).map_err(|e| e.to_string())?;
    eprintln!("wrote {}", doc.display());
    Ok(())
}

/// `--tunnel`: the tunnel comparison alone.
fn run_tunnel(args: &Args) -> Result<(), String> {
    let tools = tunnel::tools_dir(args.tools.clone())
        .ok_or("bore and rathole not found: cargo install bore-cli rathole, or give --tools")?;
    let (md, raw) = tunnel::run(
        &args.bin,
        &tools,
        args.rounds,
        args.seconds,
        args.transfer_bytes,
    )?;
    let md = format!(
        "Generated by `benches/compare --tunnel` on {} UTC ({} rounds, medians; {}).\n{md}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"]),
        args.rounds,
        command_output("git", &["describe", "--always", "--dirty"]),
    );
    std::fs::write(
        args.out.join("benchmarks-tunnel.json"),
        serde_json::to_string_pretty(&raw).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| e.to_string())?;
    print!("{md}");
    write_section(args, "tunnel", &md)
}

fn run(args: &Args) -> Result<(), String> {
    if args.ab.is_some() {
        return ab(args);
    }
    if args.tunnel {
        return run_tunnel(args);
    }
    let peers = args.peers.clone().unwrap_or_default();
    let started = Instant::now();
    let mut bench = Bench {
        args,
        servers: Vec::new(),
        tck: clock_ticks(),
    };
    let mut report = json!({});
    let mut md = String::new();
    let machine = format!(
        "{}, {} CPUs, {} · kernel {} · {} · browserver {} · node {} · browserchannel {} · socket.io {} · {} rounds × {} s, medians",
        command_output(
            "sh",
            &["-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"]
        ),
        command_output("nproc", &[]),
        command_output(
            "sh",
            &["-c", "free -g | awk '/Mem:/ {print $2 \" GiB RAM\"}'"]
        ),
        command_output("uname", &["-r"]),
        command_output("rustc", &["-V"]),
        command_output("git", &["describe", "--always", "--dirty"]),
        command_output("node", &["-v"]),
        package_version(&peers, "browserchannel"),
        package_version(&peers, "socket.io"),
        args.rounds,
        args.seconds,
    );
    md.push_str(&format!(
        "Generated by `benches/compare` on {} UTC.\n\nMachine: {machine}. Every server is pinned to CPU 0, every load to CPU 1.\n\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"])
    ));
    report["machine"] = machine.into();

    // Head-to-head echo comparisons.
    let pairs = [
        ("BrowserChannel echo", OURS_BC, NODE_BC),
        ("WebSocket echo", OURS_WS, BARE_WS),
        (
            "Channel with acknowledgements over WebSocket",
            OURS_WS_SESSION,
            SIO_WS,
        ),
        ("HTTP long-polling channel", OURS_BC, SIO_POLL),
    ];
    md.push_str(&format!(
        "## Echo, {} sessions × 16 messages in flight, 32-byte padding\n\n\
         Ratios are ours ÷ peer: above 1 is better for messages/s, below 1 is better for latency, CPU and memory.\n\n\
         | comparison | ours | peer | msg/s ours | msg/s peer | ratio | p99 ours (ms) | p99 peer (ms) | ratio | server CPU µs/msg ours | peer | ratio | lost / out of order |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        args.sessions
    ));
    let mut echo_results = serde_json::Map::new();
    for (title, ours, peer) in pairs {
        eprintln!("{title}");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            a.push(bench.echo(ours, args.sessions, args.seconds)?);
            b.push(bench.echo(peer, args.sessions, args.seconds)?);
        }
        let (a, b) = (echo_medians(&a), echo_medians(&b));
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {title} | {} | {} | {:.0} | {:.0} | **{}** | {:.1} | {:.1} | **{}** | {:.2} | {:.2} | **{}** | {} / {} · {} / {} |\n",
            ours.label,
            peer.label,
            f(&a, "messages_per_second"),
            f(&b, "messages_per_second"),
            ratio(f(&a, "messages_per_second"), f(&b, "messages_per_second")),
            f(&a, "p99_us") / 1000.0,
            f(&b, "p99_us") / 1000.0,
            ratio(f(&a, "p99_us"), f(&b, "p99_us")),
            f(&a, "server_cpu_us_per_message"),
            f(&b, "server_cpu_us_per_message"),
            ratio(f(&a, "server_cpu_us_per_message"), f(&b, "server_cpu_us_per_message")),
            a["lost"], a["out_of_order"], b["lost"], b["out_of_order"],
        ));
        echo_results.insert(
            title.into(),
            json!({"ours": a, "peer": b, "ours_label": ours.label, "peer_label": peer.label}),
        );
    }
    report["echo"] = echo_results.clone().into();

    // Proxied GET against a bare hyper server.
    eprintln!("Proxied GET");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        a.push(bench.http(Kind::OursProxy, args.seconds)?);
        b.push(bench.http(Kind::BareHttp, args.seconds)?);
    }
    let (a, b) = (http_medians(&a), http_medians(&b));
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    md.push_str(&format!(
        "\n## HTTP GET, 32 keep-alive connections\n\n\
         Through the proxy, the request crosses the proxy to one of 10 client hosts (the Rust client's host mode, in the load process, over WebSocket) and back.\n\n\
         | | requests/s | p50 (ms) | p99 (ms) | errors |\n|---|---:|---:|---:|---:|\n\
         | browserver proxy → client host | {:.0} | {:.2} | {:.2} | {} |\n\
         | bare hyper server | {:.0} | {:.2} | {:.2} | {} |\n\
         | **ratio** | **{}** | {} | **{}** | |\n",
        f(&a, "requests_per_second"), f(&a, "p50_us") / 1000.0, f(&a, "p99_us") / 1000.0, a["errors"],
        f(&b, "requests_per_second"), f(&b, "p50_us") / 1000.0, f(&b, "p99_us") / 1000.0, b["errors"],
        ratio(f(&a, "requests_per_second"), f(&b, "requests_per_second")),
        ratio(f(&a, "p50_us"), f(&b, "p50_us")),
        ratio(f(&a, "p99_us"), f(&b, "p99_us")),
    ));
    report["proxy"] = json!({"proxy": a, "direct": b});

    // Throughput against the number of sessions.
    let sweep_targets = [OURS_BC, NODE_BC, SIO_POLL, OURS_WS, BARE_WS, SIO_WS];
    let mut sweep = Vec::new();
    let mut sweep_notes = Vec::new();
    let mut sweep_cpu = Vec::new();
    eprintln!("Sweep");
    for t in sweep_targets {
        let mut points = Vec::new();
        let mut cpu = Vec::new();
        for &n in &args.sweep {
            let r = bench.echo(t, n, (args.seconds / 2.0).max(1.0))?;
            points.push((n, r["messages_per_second"].as_f64().unwrap_or(0.0)));
            cpu.push((n, r["server_cpu_us_per_message"].as_f64().unwrap_or(0.0)));
            let (lost, errors) = (
                r["lost"].as_u64().unwrap_or(0),
                r["errors"].as_u64().unwrap_or(0),
            );
            if lost + errors > 0 {
                sweep_notes.push(format!(
                    "{} at {n} sessions: {lost} echoes not back 5 s after sending stopped, {errors} errors",
                    t.label
                ));
            }
        }
        sweep.push((t.label.to_string(), points));
        sweep_cpu.push((t.label.to_string(), cpu));
    }
    bench.servers.clear();
    plot(
        &args.out.join("benchmarks.svg"),
        "Echo messages/s against concurrent sessions (server on 1 CPU, load on the other)",
        "messages/s",
        &sweep,
        1000.0,
        "k",
    )?;
    plot(
        &args.out.join("benchmarks-cpu.svg"),
        "Server CPU time per echoed message against concurrent sessions",
        "µs per message",
        &sweep_cpu,
        1.0,
        "",
    )?;
    md.push_str(
        "\n## Throughput against sessions\n\n\
         One run per point, half the duration of the head-to-head runs.\n\n\
         ![echo messages/s against concurrent sessions](benchmarks.svg)\n\n\
         ![server CPU time per message against concurrent sessions](benchmarks-cpu.svg)\n",
    );
    for (caption, series, decimals) in [
        ("Messages/s", &sweep, 0),
        ("Server CPU time per message (µs)", &sweep_cpu, 2),
    ] {
        md.push_str(&format!(
            "\n{caption}:\n\n| sessions | {} |\n|---:|{}\n",
            series
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(series.len())
        ));
        for (k, n) in args.sweep.iter().enumerate() {
            md.push_str(&format!(
                "| {n} | {} |\n",
                series
                    .iter()
                    .map(|s| format!("{:.decimals$}", s.1[k].1))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
    }
    for note in &sweep_notes {
        md.push_str(&format!("\n{note}."));
    }
    if !sweep_notes.is_empty() {
        md.push('\n');
    }
    report["sweep"] = json!({"messages_per_second": sweep, "server_cpu_us_per_message": sweep_cpu});

    // Memory per idle session.
    eprintln!("Idle sessions");
    let idle_targets = [OURS_BC, NODE_BC, SIO_POLL, OURS_WS, SIO_WS, BARE_WS];
    md.push_str(&format!(
        "\n## Memory per idle session\n\n\
         Growth of the server's RSS with N idle sessions open (a fresh server for each figure; long-polling sessions keep a back channel hanging), divided by N.\n\n\
         | server | {} |\n|---|{}\n",
        args.idle.iter().map(|n| format!("KiB/session at {n}")).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(args.idle.len())
    ));
    let mut idle = serde_json::Map::new();
    for t in idle_targets {
        let mut row = Vec::new();
        for &n in &args.idle {
            let r = bench.idle(t, n)?;
            let cell = format!(
                "{:.1}{}",
                r["bytes_per_session"].as_f64().unwrap_or(0.0) / 1024.0,
                if r["all_open"].as_bool() == Some(true) {
                    ""
                } else {
                    " (not all opened)"
                }
            );
            row.push(cell);
            idle.insert(format!("{} {n}", t.label), r);
        }
        md.push_str(&format!("| {} | {} |\n", t.label, row.join(" | ")));
    }
    // The issue's targets, measured.
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let bc = &echo_results["BrowserChannel echo"];
    let ws = &echo_results["WebSocket echo"];
    let px = &report["proxy"];
    let bc_rate =
        f(&bc["ours"]["messages_per_second"]) / f(&bc["peer"]["messages_per_second"]).max(1.0);
    let bc_cpu = f(&bc["peer"]["server_cpu_us_per_message"])
        / f(&bc["ours"]["server_cpu_us_per_message"]).max(0.01);
    let bc_p99 = f(&bc["ours"]["p99_us"]) / f(&bc["peer"]["p99_us"]).max(1.0);
    let ws_rate =
        f(&ws["ours"]["messages_per_second"]) / f(&ws["peer"]["messages_per_second"]).max(1.0);
    let ws_cpu = f(&ws["ours"]["server_cpu_us_per_message"])
        / f(&ws["peer"]["server_cpu_us_per_message"]).max(0.01);
    let px_rate =
        f(&px["proxy"]["requests_per_second"]) / f(&px["direct"]["requests_per_second"]).max(1.0);
    let px_p99 = f(&px["proxy"]["p99_us"]) / f(&px["direct"]["p99_us"]).max(1.0);
    let bc_idle = idle
        .get(&format!(
            "{} {}",
            OURS_BC.label,
            args.idle.iter().max().copied().unwrap_or(0)
        ))
        .map_or(0.0, |r| f(&r["bytes_per_session"]) / 1024.0);
    let yes = |met: bool| if met { "met" } else { "**not met**" };
    md.push_str(&format!(
        "\n## Targets\n\n| target | measured | |\n|---|---|---|\n\
         | BrowserChannel echo ≥ 10× node-browserchannel's messages/s at {s} sessions | {bc_rate:.2}× (server CPU per message: node's ÷ ours = {bc_cpu:.2}) | {} |\n\
         | … with a lower p99 | {bc_p99:.2}× node's | {} |\n\
         | WebSocket echo within 10 % of bare tokio-tungstenite | messages/s {ws_rate:.2}×, server CPU per message {ws_cpu:.2}× | {} |\n\
         | proxied GET ≥ 50 % of direct hyper's requests/s | {px_rate:.2} | {} |\n\
         | proxied GET p99 ≤ 2× direct | {px_p99:.2}× | {} |\n\
         | ≤ 8 KiB RSS per idle BrowserChannel session at {n} | {bc_idle:.1} KiB | {} |\n",
        yes(bc_rate >= 10.0),
        yes(bc_p99 < 1.0),
        yes(ws_rate >= 0.9 && ws_cpu <= 1.1),
        yes(px_rate >= 0.5),
        yes(px_p99 <= 2.0),
        yes(bc_idle > 0.0 && bc_idle <= 8.0),
        s = args.sessions,
        n = args.idle.iter().max().copied().unwrap_or(0),
    ));
    report["idle"] = idle.into();
    md.push_str(&format!(
        "\nThe whole run took {:.0} s. Raw figures: [benchmarks.json](benchmarks.json).\n",
        started.elapsed().as_secs_f64()
    ));

    std::fs::write(
        args.out.join("benchmarks.json"),
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| e.to_string())?;
    write_section(args, "results", &md)?;
    // The tunnels, when their peers are installed.
    if tunnel::tools_dir(args.tools.clone()).is_some() {
        run_tunnel(args)?;
    } else {
        eprintln!("bore and rathole not found: the tunnel comparison is skipped");
    }
    Ok(())
}
