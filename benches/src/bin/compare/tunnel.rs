//! The tunnel comparison: a local HTTP server (`baseline-server http-hello`) reached directly,
//! through bore, through rathole, and through browserver with `browserver expose` — the same
//! load against each, alternating. Small GETs (requests/s, p50, p99) and 1 GiB down and up
//! (seconds), with the tunnel's processes' peak RSS growth during the transfers.
//!
//! Every tunnel process and the local server run on CPU 0, the load on CPU 1.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{median, ratio, rss_kib, run_load as load};

/// Processes killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

/// A way to reach the local server: where the load connects, the `Host` it sends, and the
/// tunnel's processes.
struct Route {
    label: &'static str,
    addr: SocketAddr,
    host: Option<String>,
    procs: Procs,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn pinned(cmd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"]).arg(cmd).args(args);
    c.env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// Spawns and returns the first line of stdout that `pick` accepts (what it maps it to),
/// within 30 s.
pub(crate) fn spawn_reading(
    mut cmd: Command,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> Result<(Child, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(v) = pick(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let value = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| format!("{cmd:?} did not start"))?;
    Ok((child, value))
}

fn wait_port(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn listening(line: &str) -> Option<String> {
    line.strip_prefix("listening on ")
        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
}

fn local(bin: &Path) -> Result<(Child, SocketAddr), String> {
    let (child, addr) = spawn_reading(
        pinned(&bin.join("baseline-server"), &["http-hello"]),
        listening,
    )?;
    Ok((child, addr.parse().map_err(|_| "bad address")?))
}

fn direct(local: SocketAddr) -> Route {
    Route {
        label: "direct",
        addr: local,
        host: None,
        procs: Procs(Vec::new()),
    }
}

fn bore(tools: &Path, local: SocketAddr) -> Result<Route, String> {
    let bore = tools.join("bore");
    let server = pinned(&bore, &["server", "--bind-addr", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("bore server: {e}"))?;
    let mut procs = Procs(vec![server]);
    wait_port("127.0.0.1:7835".parse().map_err(|_| "addr")?)?;
    let port = free_port()?;
    let client = pinned(
        &bore,
        &[
            "local",
            &local.port().to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("bore local: {e}"))?;
    procs.0.push(client);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|_| "addr")?;
    wait_port(addr)?;
    Ok(Route {
        label: "bore",
        addr,
        host: None,
        procs,
    })
}

fn rathole(tools: &Path, local: SocketAddr, scratch: &Path) -> Result<Route, String> {
    let (control, service) = (free_port()?, free_port()?);
    let server_toml = scratch.join("rathole-server.toml");
    let client_toml = scratch.join("rathole-client.toml");
    std::fs::write(
        &server_toml,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.services.web]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{service}\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        &client_toml,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.services.web]\ntoken = \"bench\"\nlocal_addr = \"{local}\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let rathole = tools.join("rathole");
    let spawn = |toml: &Path| {
        pinned(&rathole, &[&toml.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("rathole: {e}"))
    };
    let mut procs = Procs(vec![spawn(&server_toml)?]);
    wait_port(format!("127.0.0.1:{control}").parse().map_err(|_| "addr")?)?;
    procs.0.push(spawn(&client_toml)?);
    let addr: SocketAddr = format!("127.0.0.1:{service}").parse().map_err(|_| "addr")?;
    wait_port(addr)?;
    // The service port listens before the client's data channel is up: give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    Ok(Route {
        label: "rathole",
        addr,
        host: None,
        procs,
    })
}

fn browserver(bin: &Path, local: SocketAddr) -> Result<Route, String> {
    let b = bin.join("browserver");
    let (server, addr) = spawn_reading(pinned(&b, &["--listen", "127.0.0.1:0"]), listening)?;
    let mut procs = Procs(vec![server]);
    let addr: SocketAddr = addr.parse().map_err(|_| "bad address")?;
    let (client, public) = spawn_reading(
        pinned(
            &b,
            &[
                "expose",
                &format!("http://{local}"),
                "--server",
                &format!("ws://{addr}"),
            ],
        ),
        |line| {
            line.strip_prefix("forwarding ")
                .and_then(|r| r.split_once(" -> "))
                .map(|(p, _)| p.trim_start_matches("http://").to_string())
        },
    )?;
    procs.0.push(client);
    Ok(Route {
        label: "browserver + expose",
        addr,
        host: Some(public),
        procs,
    })
}

/// Peak RSS growth (KiB) of `pids` together while `f` runs.
fn peak_rss<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, u64) {
    let total = |pids: &[u32]| pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
    let start = total(pids);
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped, watched) = (stop.clone(), pids.to_vec());
    let sampler = std::thread::spawn(move || {
        let mut peak = start;
        while !stopped.load(Ordering::Relaxed) {
            peak = peak.max(total(&watched));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(start);
    (out, peak.saturating_sub(start))
}

fn measure(bin: &Path, route: &Route, seconds: f64, bytes: u64) -> Result<Value, String> {
    let mut common = vec!["--url".to_string(), format!("http://{}/", route.addr)];
    if let Some(h) = &route.host {
        common.extend(["--host".into(), h.clone()]);
    }
    let mut gets = vec!["http".to_string()];
    gets.extend(common.clone());
    gets.extend([
        "--connections".into(),
        "32".into(),
        "--seconds".into(),
        seconds.to_string(),
    ]);
    let small = load(bin, &gets)?;
    let transfer = |direction: &str| {
        let mut a = vec!["transfer".to_string()];
        a.extend(common.clone());
        a.extend([
            "--bytes".into(),
            bytes.to_string(),
            "--direction".into(),
            direction.into(),
        ]);
        load(bin, &a)
    };
    let pids = route.procs.pids();
    let (down, down_rss) = peak_rss(&pids, || transfer("down"));
    let (up, up_rss) = peak_rss(&pids, || transfer("up"));
    let (down, up) = (down?, up?);
    let r = json!({
        "requests_per_second": small["requests_per_second"],
        "p50_us": small["latency_us"]["p50"],
        "p99_us": small["latency_us"]["p99"],
        "errors": small["errors"],
        "down_seconds": down["seconds"],
        "down_complete": down["complete"],
        "up_seconds": up["seconds"],
        "up_complete": up["complete"],
        "rss_growth_kib": down_rss.max(up_rss),
    });
    eprintln!(
        "  {:<22} {:>8} req/s  p99 {:>6} µs  1 GiB down {:>6} s  up {:>6} s  RSS +{} KiB",
        route.label,
        r["requests_per_second"],
        r["p99_us"],
        r["down_seconds"],
        r["up_seconds"],
        r["rss_growth_kib"]
    );
    Ok(r)
}

/// Runs the comparison; the markdown section and the raw figures.
pub fn run(
    bin: &Path,
    tools: &Path,
    rounds: usize,
    seconds: f64,
    bytes: u64,
) -> Result<(String, Value), String> {
    let scratch = std::env::temp_dir().join(format!("browserver-tunnel-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let (local_server, local_addr) = local(bin)?;
    let _local = Procs(vec![local_server]);
    let labels = ["direct", "bore", "rathole", "browserver + expose"];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); labels.len()];
    eprintln!("Tunnels");
    for _ in 0..rounds {
        for (i, label) in labels.iter().enumerate() {
            // A fresh tunnel per round (bore's control port is fixed).
            let route = match *label {
                "direct" => direct(local_addr),
                "bore" => bore(tools, local_addr)?,
                "rathole" => rathole(tools, local_addr, &scratch)?,
                _ => browserver(bin, local_addr)?,
            };
            runs[i].push(measure(bin, &route, seconds, bytes)?);
            drop(route);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let med = |rs: &[Value], k: &str| {
        median(&rs.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<_>>())
    };
    let direct = &runs[0];
    let mut md = format!(
        "\n## Tunnels: a local HTTP server reached directly and through each tunnel\n\n\
         The same local server (`baseline-server http-hello`) and load: GETs of a 5-byte body on 32 keep-alive connections for {seconds} s, then one {} MiB download and one upload on one connection. \
         Tunnel processes (server and client side) and the local server on CPU 0, the load on CPU 1. \
         Ratios are against the direct figures; RSS is the peak growth of the tunnel's processes during the transfers.\n\n\
         | route | requests/s | ratio | p50 (ms) | p99 (ms) | ratio | download (s) | ratio | upload (s) | ratio | RSS growth (MiB) | complete |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        bytes >> 20
    );
    let mut raw = serde_json::Map::new();
    for (label, rs) in labels.iter().zip(&runs) {
        let complete = rs
            .iter()
            .all(|r| r["down_complete"] == true && r["up_complete"] == true);
        md.push_str(&format!(
            "| {label} | {:.0} | {} | {:.2} | {:.2} | {} | {:.2} | {} | {:.2} | {} | {:.1} | {} |\n",
            med(rs, "requests_per_second"),
            ratio(med(rs, "requests_per_second"), med(direct, "requests_per_second")),
            med(rs, "p50_us") / 1000.0,
            med(rs, "p99_us") / 1000.0,
            ratio(med(rs, "p99_us"), med(direct, "p99_us")),
            med(rs, "down_seconds"),
            ratio(med(rs, "down_seconds"), med(direct, "down_seconds")),
            med(rs, "up_seconds"),
            ratio(med(rs, "up_seconds"), med(direct, "up_seconds")),
            med(rs, "rss_growth_kib") / 1024.0,
            if complete { "yes" } else { "**no**" },
        ));
        raw.insert((*label).into(), json!(rs));
    }
    Ok((md, Value::Object(raw)))
}

/// Where `bore` and `rathole` are: `--tools`, else `PATH`.
pub fn tools_dir(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("bore").exists() && d.join("rathole").exists())
}
