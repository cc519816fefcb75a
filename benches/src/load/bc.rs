//! BrowserChannel sessions as the Closure client runs them: one forward POST in flight
//! (maps batched while it is out, at most 100 per POST), one streaming back channel
//! (`CI=0`) reopened with `AID` whenever the server ends it, `TYPE=terminate` at the end.
//! Works against any BrowserChannel server (ours, node-browserchannel).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use browserver_transport_bc::codec::{self, Map};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use super::http::{HttpClient, request};
use super::{Ctx, Echoes, take_batch};

const FORM: &str = "application/x-www-form-urlencoded";

/// The `[id, value]` arrays of one back-channel chunk.
fn arrays(payload: &str) -> Vec<(i64, Box<RawValue>)> {
    serde_json::from_str(payload.trim_end()).unwrap_or_default()
}

/// Creates a session; its id.
async fn create(ctx: &Ctx, client: &HttpClient) -> Option<String> {
    let _permit = ctx.opening.acquire().await.ok()?;
    let url = format!("{}/bind?VER=8&RID=1000&t=1", ctx.url);
    let (status, body) = request(client, "POST", url, FORM, "count=0".into())
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let (payload, _) = codec::split_chunk(&body).ok().flatten()?;
    let (_, c) = arrays(payload).into_iter().next()?;
    let c: Vec<serde_json::Value> = serde_json::from_str(c.get()).ok()?;
    Some(c.get(1)?.as_str()?.to_string())
}

/// Reads back channels until `done`, acknowledging what it got through `last_array`.
async fn back_channel(
    ctx: Arc<Ctx>,
    client: HttpClient,
    sid: String,
    last_array: Arc<AtomicI64>,
    permits: Arc<Semaphore>,
    done: Arc<AtomicBool>,
) -> Echoes {
    let mut echoes = Echoes::default();
    let ended = || done.load(Ordering::Relaxed) || ctx.stopped();
    while !ended() {
        let aid = last_array.load(Ordering::Relaxed);
        let url = format!(
            "{}/bind?VER=8&RID=rpc&SID={sid}&CI=0&AID={aid}&TYPE=xmlhttp",
            ctx.url
        );
        let Ok(req) = http::Request::get(url).body(Full::new(Bytes::new())) else {
            break;
        };
        let res = match client.request(req).await {
            Ok(res) if res.status() == 200 => res,
            _ => {
                if !ended() {
                    ctx.error(); // the session is gone
                }
                break;
            }
        };
        echoes.open(&ctx);
        let mut body = res.into_body();
        let mut buf = String::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if ended() { break } else { continue }
                }
            };
            let Some(Ok(frame)) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Ok(Some((payload, used))) = codec::split_chunk(&buf) {
                for (id, value) in arrays(payload) {
                    last_array.store(id, Ordering::Relaxed);
                    if echoes.on_echo(&ctx, value.get()) {
                        permits.add_permits(1);
                    }
                }
                buf.drain(..used);
            }
        }
    }
    echoes
}

/// One session: creates it, echoes until told to stop, terminates it.
pub async fn session(ctx: Arc<Ctx>, client: HttpClient) -> Echoes {
    let Some(sid) = create(&ctx, &client).await else {
        ctx.error();
        return Echoes::default();
    };
    let last_array = Arc::new(AtomicI64::new(0));
    let permits = Arc::new(Semaphore::new(ctx.window));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = tokio::spawn(back_channel(
        ctx.clone(),
        client.clone(),
        sid.clone(),
        last_array.clone(),
        permits.clone(),
        done.clone(),
    ));

    let mut rid = 1000u64;
    let mut sent = 0u64;
    while ctx.sending() && !receiver.is_finished() {
        let batch = take_batch(&permits).await;
        if batch == 0 {
            continue;
        }
        let maps: Vec<Map> = (0..batch)
            .map(|k| [("JSON".to_string(), ctx.message(sent + k))].into())
            .collect();
        rid += 1;
        let aid = last_array.load(Ordering::Relaxed);
        let url = format!("{}/bind?VER=8&SID={sid}&RID={rid}&AID={aid}", ctx.url);
        match request(
            &client,
            "POST",
            url,
            FORM,
            codec::encode_forward(sent, &maps),
        )
        .await
        {
            Ok((200, _)) => sent += batch,
            _ => {
                ctx.error();
                break;
            }
        }
    }
    // Let the last echoes arrive, then end the session.
    while permits.available_permits() < ctx.window && !ctx.stopped() && !receiver.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.store(true, Ordering::Relaxed);
    rid += 1;
    let url = format!("{}/bind?VER=8&SID={sid}&RID={rid}&TYPE=terminate", ctx.url);
    let _ = request(&client, "GET", url, FORM, String::new()).await;
    let mut echoes = receiver.await.unwrap_or_default();
    echoes.sent = sent;
    echoes
}
