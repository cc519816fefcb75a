//! What the binary's integration tests share: the real `browserver` binary on loopback.

#![allow(dead_code)] // each test file uses a part

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a test waits for anything that should be quick.
pub const WAIT: Duration = Duration::from_secs(15);

/// The `browserver` binary, running until dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    pub async fn start(args: &[&str]) -> Server {
        Server::start_with_file_limit(None, args).await
    }

    /// The binary under `ulimit -n FILES` when given.
    pub async fn start_with_file_limit(files: Option<u32>, args: &[&str]) -> Server {
        let binary = env!("CARGO_BIN_EXE_browserver");
        let mut command = match files {
            None => Command::new(binary),
            Some(files) => {
                let mut sh = Command::new("sh");
                sh.args([
                    "-c",
                    &format!("ulimit -n {files} && exec {binary} \"$@\""),
                    "sh",
                ]);
                sh
            }
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn browserver");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("starts in time")
            .expect("stdout")
            .expect("a first line");
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().expect("lock");
                if s.len() < 1 << 20 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            addr,
            stderr,
        }
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id().expect("running"))
    }

    pub fn assert_healthy(&self) {
        let log = self.stderr.lock().expect("lock");
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn bc(&self) -> String {
        format!("http://{}/channel", self.addr)
    }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `browserver expose` as a process.
pub struct Expose {
    pub child: tokio::process::Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Expose {
    pub fn spawn(args: &[&str]) -> Expose {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
            .arg("expose")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn expose");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Expose { child, lines }
    }

    /// The public URL of the first `forwarding PUBLIC -> LOCAL` line.
    pub async fn public(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a forwarding line in time")
            .expect("stdout");
        let Some(line) = line else {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            panic!("expose ended without a forwarding line: {err}");
        };
        let rest = line
            .strip_prefix("forwarding ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        rest.split_once(" -> ")
            .expect("public -> local")
            .0
            .to_string()
    }

    /// Waits for the process to exit; its status and stderr.
    pub async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err).await;
        }
        (status, err)
    }
}

/// One HTTP/1.1 request over `stream`, with `Host: host`: the whole response, which must
/// come `within` this long.
pub async fn request_over(
    stream: tokio::net::TcpStream,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    within: Duration,
) -> http::Response<Bytes> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = tokio::time::timeout(
        within,
        sender.send_request(req.body(Full::new(body)).expect("request")),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {host}{path}: answered in time"))
    .expect("response");
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, body.collect().await.expect("body").to_bytes())
}
