//! Socket.IO 4 sessions over Engine.IO 4's HTTP long-polling transport: one GET in flight
//! (packets separated by `0x1e`), one POST in flight carrying the batched `42["echo",…]`
//! events (Engine.IO refuses overlapping POSTs), pings answered within the next POST.
//! `ctx.url` is the server's origin. (The WebSocket transport is in [`super::ws`].)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use super::http::{HttpClient, request};
use super::{Ctx, Echoes, take_batch};

const TEXT: &str = "text/plain;charset=UTF-8";
const SEPARATOR: char = '\u{1e}';

fn base(ctx: &Ctx) -> String {
    format!("{}/socket.io/?EIO=4&transport=polling", ctx.url)
}

/// Engine.IO handshake and the namespace connect; the session id.
async fn open(ctx: &Ctx, client: &HttpClient) -> Option<String> {
    let _permit = ctx.opening.acquire().await.ok()?;
    let (status, body) = request(client, "GET", base(ctx), TEXT, String::new())
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let open: serde_json::Value = serde_json::from_str(body.strip_prefix('0')?).ok()?;
    let sid = open.get("sid")?.as_str()?.to_string();
    let url = format!("{}&sid={sid}", base(ctx));
    match request(client, "POST", url, TEXT, "40".into()).await {
        Ok((200, _)) => Some(sid),
        _ => None,
    }
}

async fn receiver(
    ctx: Arc<Ctx>,
    client: HttpClient,
    sid: String,
    permits: Arc<Semaphore>,
    pong_due: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> Echoes {
    let mut echoes = Echoes::default();
    let url = format!("{}&sid={sid}", base(&ctx));
    while !done.load(Ordering::Relaxed) && !ctx.stopped() {
        let get = request(&client, "GET", url.clone(), TEXT, String::new());
        let (status, body) = tokio::select! {
            r = get => match r {
                Ok(r) => r,
                Err(_) => { ctx.error(); break }
            },
            _ = async {
                while !done.load(Ordering::Relaxed) && !ctx.stopped() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } => break,
        };
        if status != 200 {
            // A poll that crossed our own close is not an error.
            if !done.load(Ordering::Relaxed) {
                ctx.error();
            }
            break;
        }
        for packet in body.split(SEPARATOR) {
            if packet == "2" {
                pong_due.store(true, Ordering::Relaxed);
            } else if packet.starts_with("40") {
                echoes.open(&ctx);
                permits.add_permits(ctx.window);
            } else if let Some(event) = packet.strip_prefix("42") {
                if serde_json::from_str::<(String, Box<RawValue>)>(event)
                    .is_ok_and(|(_, v)| echoes.on_echo(&ctx, v.get()))
                {
                    permits.add_permits(1);
                }
            } else if packet.starts_with('1') {
                break; // closed by the server
            }
        }
    }
    echoes
}

/// One session: opens it, echoes until told to stop, closes it.
pub async fn session(ctx: Arc<Ctx>, client: HttpClient) -> Echoes {
    let Some(sid) = open(&ctx, &client).await else {
        ctx.error();
        return Echoes::default();
    };
    let permits = Arc::new(Semaphore::new(0)); // the window opens with the namespace
    let pong_due = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let receiving = tokio::spawn(receiver(
        ctx.clone(),
        client.clone(),
        sid.clone(),
        permits.clone(),
        pong_due.clone(),
        done.clone(),
    ));
    let url = format!("{}&sid={sid}", base(&ctx));
    let mut sent = 0u64;
    while ctx.sending() && !receiving.is_finished() {
        let mut body = String::new();
        if pong_due.swap(false, Ordering::Relaxed) {
            body.push('3');
        }
        let batch = take_batch(&permits).await;
        for k in 0..batch {
            if !body.is_empty() {
                body.push(SEPARATOR);
            }
            body.push_str("42[\"echo\",");
            body.push_str(&ctx.message(sent + k));
            body.push(']');
        }
        sent += batch;
        if body.is_empty() {
            continue;
        }
        if !matches!(
            request(&client, "POST", url.clone(), TEXT, body).await,
            Ok((200, _))
        ) {
            ctx.error();
            break;
        }
    }
    while sent > 0 && permits.available_permits() < ctx.window && !ctx.stopped() {
        if receiving.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = request(&client, "POST", url, TEXT, "1".into()).await;
    let mut echoes = receiving.await.unwrap_or_default();
    echoes.sent = sent;
    echoes
}
