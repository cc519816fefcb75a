//! The conformance checklist of `shared/spec/browserchannel.md` §13, over real HTTP on
//! loopback. Each test is named after its checklist number. Client-integration items (B) run
//! against the real Closure and node-browserchannel clients in `tests-js/`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use browserver_transport_bc::{CloseReason, Cors, Options, State};
use common::*;
use http::{HeaderName, HeaderValue, Method};
use serde_json::json;

const STANDARD: [(&str, &str); 5] = [
    ("content-type", "text/plain"),
    (
        "cache-control",
        "no-cache, no-store, max-age=0, must-revalidate",
    ),
    ("pragma", "no-cache"),
    ("expires", "Fri, 01 Jan 1990 00:00:00 GMT"),
    ("x-content-type-options", "nosniff"),
];

fn cors_options() -> Options {
    Options {
        cors: Some(Cors::Origin("foo.com".into())),
        cors_allow_credentials: true,
        ..Options::default()
    }
}

fn has_cors(h: &http::HeaderMap) -> bool {
    h.get("access-control-allow-origin")
        .is_some_and(|v| v == "foo.com")
        && h.get("access-control-allow-credentials")
            .is_some_and(|v| v == "true")
}

fn sid_of(creation: &str) -> String {
    let json = creation
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json.trim_end()).expect("creation json");
    v[0][1][1].as_str().expect("sid").to_string()
}

// A. Routing, client script, base path

#[tokio::test]
async fn item_01_client_script_is_served_with_js_type_and_etag() {
    let s = start(Options::default()).await;
    let (status, h, body) = s.text(Method::GET, "/channel/bcsocket.js", "").await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/javascript");
    assert!(h.get("etag").is_some());
    assert!(body.len() > 50);
}

#[tokio::test]
async fn item_02_requests_outside_base_are_not_handled() {
    let s = start(Options::default()).await;
    let path = "/otherapp";
    assert!(!s.bc.owns(path));
    assert!(!s.bc.owns("/channel"));
    assert!(!s.bc.owns("/channelfoo/test"));
    assert!(s.bc.owns("/channel/test"));
}

#[tokio::test]
async fn item_03_unknown_path_under_base_is_404() {
    let s = start(Options::default()).await;
    let (status, _, body) = s.text(Method::GET, "/channel/doesnotexist", "").await;
    assert_eq!((status.as_u16(), body.as_str()), (404, "Not found"));
}

#[tokio::test]
async fn items_04_to_06_base_is_normalised() {
    for base in ["/foozit", "foozit", "foozit/"] {
        let s = start(Options {
            base: base.into(),
            ..Options::default()
        })
        .await;
        let (status, _, body) = s
            .text(Method::GET, "/foozit/test?VER=8&MODE=init", "")
            .await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "[null,null]"),
            "{base}"
        );
    }
}

#[tokio::test]
async fn item_07_empty_base_mounts_at_root() {
    let s = start(Options {
        base: "".into(),
        ..Options::default()
    })
    .await;
    let (status, _, body) = s.text(Method::GET, "/test?VER=8&MODE=init", "").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "[null,null]"));
    let d = start(Options::default()).await;
    assert!(!d.bc.owns("/channel"));
}

#[tokio::test]
async fn item_08_other_methods_on_bind_are_405() {
    let s = start(Options::default()).await;
    let (status, _, body) = s.text(Method::PUT, "/channel/bind?VER=8", "").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (405, "Method not allowed")
    );
}

// B. Test channel phase 1

#[tokio::test]
async fn item_09_phase1_answers_null_null() {
    let s = start(Options::default()).await;
    let (status, _, body) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "[null,null]"));
}

#[tokio::test]
async fn item_10_phase1_answers_the_host_prefix() {
    let s = start(Options {
        host_prefixes: vec!["chan".into()],
        ..Options::default()
    })
    .await;
    let (_, _, body) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert_eq!(body, "[\"chan\",null]");
}

#[tokio::test]
async fn items_11_12_phase1_has_x_accept_and_the_standard_headers() {
    let s = start(Options::default()).await;
    let (_, h, _) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert_eq!(
        h["x-accept"],
        "application/json; application/x-www-form-urlencoded"
    );
    for (k, v) in STANDARD {
        assert!(
            h[k].to_str().is_ok_and(|x| x.eq_ignore_ascii_case(v)),
            "{k}"
        );
    }
}

#[tokio::test]
async fn item_13_no_cors_headers_without_the_option() {
    let s = start(Options::default()).await;
    let (_, h, _) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert!(h.get("access-control-allow-origin").is_none());
    assert!(h.get("access-control-allow-credentials").is_none());
}

#[tokio::test]
async fn item_14_cors_string_and_credentials_on_phase1() {
    let s = start(cors_options()).await;
    let (_, h, _) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert!(has_cors(&h));
}

#[tokio::test]
async fn item_15_cors_function_on_phase1_and_elsewhere() {
    let s = start(Options {
        cors: Some(Cors::Dynamic(Arc::new(|_| Some("something".into())))),
        ..Options::default()
    })
    .await;
    let (_, h, _) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert_eq!(h["access-control-allow-origin"], "something");
    let (_, h, _) = s
        .text(Method::POST, "/channel/bind?VER=8&RID=1&SID=nope", "")
        .await;
    assert_eq!(
        h["access-control-allow-origin"], "something",
        "applied beyond phase 1"
    );
}

#[tokio::test]
async fn item_16_custom_headers_on_phase1() {
    let s = start(Options {
        headers: vec![(
            HeaderName::from_static("x-foo"),
            HeaderValue::from_static("bar"),
        )],
        ..Options::default()
    })
    .await;
    let (_, h, _) = s
        .text(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert_eq!(h["x-foo"], "bar");
}

#[tokio::test]
async fn items_17_18_phase1_requires_version_8() {
    let s = start(Options::default()).await;
    for uri in ["/channel/test?VER=7&MODE=init", "/channel/test?MODE=init"] {
        let (status, _, body) = s.text(Method::GET, uri, "").await;
        assert_eq!(status, 400, "{uri}");
        assert!(body.contains("Version 8 required"));
    }
}

// C. Test channel phase 2

#[tokio::test]
async fn item_19_phase2_xmlhttp_streams_11111_pauses_then_2() {
    let s = start(Options::default()).await; // the real 2 s pause
    let started = Instant::now();
    let mut r = s
        .request(Method::GET, "/channel/test?VER=8&TYPE=xmlhttp", "")
        .await;
    assert_eq!(r.status(), 200);
    let body = r.body_mut();
    assert_eq!(next_data(body, WAIT).await.as_deref(), Some("11111"));
    assert!(
        stays_quiet(body, Duration::from_millis(1900)).await,
        "nothing for 1.9 s"
    );
    assert_eq!(next_data(body, WAIT).await.as_deref(), Some("2"));
    assert!(started.elapsed() >= Duration::from_millis(1999));
    assert_eq!(next_data(body, WAIT).await, None, "then the response ends");
}

const PADDING: &str = browserver_transport_bc::codec::HTML_PADDING;

#[tokio::test]
async fn items_20_22_23_phase2_html_pieces_and_headers() {
    let s = start(fast_timers()).await;
    let mut r = s
        .request(Method::GET, "/channel/test?VER=8&TYPE=html", "")
        .await;
    assert_eq!(r.headers()["content-type"], "text/html");
    for (k, v) in &STANDARD[1..] {
        assert!(
            r.headers()[*k]
                .to_str()
                .is_ok_and(|x| x.eq_ignore_ascii_case(v))
        );
    }
    let first = next_data(r.body_mut(), WAIT).await.expect("piece 1");
    assert_eq!(
        first,
        format!(
            "<html><body><script>try {{parent.m(\"11111\")}} catch(e) {{}}</script>\n{PADDING}\n"
        )
    );
    let second = next_data(r.body_mut(), WAIT).await.expect("piece 2");
    assert_eq!(
        second,
        "<script>try {parent.m(\"2\")} catch(e) {}</script>\n<script>try  {parent.d(); }catch (e){}</script>\n"
    );
    assert_eq!(next_data(r.body_mut(), WAIT).await, None);
}

#[tokio::test]
async fn item_21_phase2_html_sets_document_domain() {
    let s = start(fast_timers()).await;
    let mut r = s
        .request(
            Method::GET,
            "/channel/test?VER=8&TYPE=html&DOMAIN=foo.bar.com",
            "",
        )
        .await;
    let first = next_data(r.body_mut(), WAIT).await.expect("piece 1");
    assert!(first.starts_with(
        "<html><body><script>try{document.domain=\"foo.bar.com\";}catch(e){}</script>\n<script>try {parent.m(\"11111\")}"
    ));
}

#[tokio::test]
async fn items_24_to_27_phase2_requires_version_8() {
    let s = start(Options::default()).await;
    for uri in [
        "/channel/test?VER=7&TYPE=xmlhttp",
        "/channel/test?TYPE=xmlhttp",
        "/channel/test?VER=7&TYPE=html",
        "/channel/test?TYPE=html",
    ] {
        let (status, _, _) = s.text(Method::GET, uri, "").await;
        assert_eq!(status, 400, "{uri}");
    }
}

// D. Session creation

#[tokio::test]
async fn item_28_creation_exposes_the_session_and_answers_the_c_array() {
    let mut s = start(Options::default()).await;
    let (status, _, body) = s
        .text(
            Method::POST,
            "/channel/bind?VER=8&RID=1000&CVER=99&t=1&junk=asdfasdf",
            "count=0",
        )
        .await;
    assert_eq!(status, 200);
    let session = s.accept().await;
    assert_eq!(session.app_version(), Some("99"));
    assert_eq!(
        session.address().map(|a| a.ip().to_string()).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(session.query_param("junk"), Some("asdfasdf"));
    assert!(session.headers().contains_key("host"));
    assert_eq!(
        body,
        lp(&format!("[[0,[\"c\",\"{}\",null,8]]]\n", session.id()))
    );
}

#[tokio::test]
async fn item_29_session_is_ok_once_the_creation_response_is_written() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut status = session.status();
    tokio::time::timeout(WAIT, status.wait_for(|st| st.state == State::Ok))
        .await
        .expect("ok in time")
        .expect("status");
}

#[tokio::test]
async fn item_30_no_cver_means_no_app_version() {
    let mut s = start(Options::default()).await;
    let (session, body) = s.connect().await;
    assert_eq!(session.app_version(), None);
    assert!(body.ends_with(&format!("[[0,[\"c\",\"{}\",null,8]]]\n", session.id())));
}

#[tokio::test]
async fn items_31_32_creation_requires_version_8() {
    let s = start(Options::default()).await;
    for uri in [
        "/channel/bind?RID=1000&t=1",
        "/channel/bind?VER=7&RID=1000&t=1",
    ] {
        let (status, _, _) = s.text(Method::POST, uri, "count=0").await;
        assert_eq!(status, 400);
    }
    assert_eq!(s.bc.table().len(), 0);
}

#[tokio::test]
async fn item_33_creating_post_delivers_its_maps() {
    let mut s = start(Options::default()).await;
    s.text(
        Method::POST,
        "/channel/bind?VER=8&RID=1000&t=1",
        "count=1&ofs=0&req0_k=v",
    )
    .await;
    let session = s.accept().await;
    let m = session.recv().await.expect("map");
    assert_eq!(m.map().expect("map")["k"], "v");
    assert_eq!(m.value(), None);
}

#[tokio::test]
async fn item_34_map_keys_and_values_are_form_decoded() {
    let mut s = start(Options::default()).await;
    s.text(
        Method::POST,
        "/channel/bind?VER=8&RID=1000&t=1",
        "count=1&ofs=0&req0__int_%5E%26%5E%25%23net=hi%22there%26%26%0Asam",
    )
    .await;
    let m = s.accept().await.recv().await.expect("map");
    assert_eq!(m.map().expect("map")["_int_^&^%#net"], "hi\"there&&\nsam");
}

fn with_hook(hook: impl Fn(&browserver_transport_bc::Session) + Send + Sync + 'static) -> Options {
    Options {
        connect_hook: Some(Arc::new(hook)),
        ..Options::default()
    }
}

#[tokio::test]
async fn item_35_sends_in_the_connect_hook_go_into_the_creation_response() {
    let mut s = start(with_hook(|s| {
        drop(s.send_json(&json!(["hello", "there", null, 1000, {}, [], [555]])));
    }))
    .await;
    let (session, body) = s.connect().await;
    assert_eq!(
        body,
        lp(&format!(
            "[[0,[\"c\",\"{}\",null,8]],[1,[\"hello\",\"there\",null,1000,{{}},[],[555]]]]\n",
            session.id()
        ))
    );
}

#[tokio::test]
async fn item_36_line_separators_are_escaped() {
    let mut s = start(with_hook(|s| {
        drop(s.send_json(&json!({"a": "hello\u{2028}\u{2029}there\u{2028}\u{2029}"})));
    }))
    .await;
    let (session, body) = s.connect().await;
    assert!(body.ends_with(&format!(
        "[[0,[\"c\",\"{}\",null,8]],[1,{{\"a\":\"hello\\u2028\\u2029there\\u2028\\u2029\"}}]]\n",
        session.id()
    )));
}

#[tokio::test]
async fn item_37_close_in_the_connect_hook_answers_403() {
    let s = start(with_hook(|s| s.close())).await;
    let (status, _, body) = s
        .text(Method::POST, "/channel/bind?VER=8&RID=1000&t=1", "count=0")
        .await;
    assert_eq!(status, 403);
    assert_eq!(body, "<html><body><h1>Forbidden</h1></body></html>");
}

#[tokio::test]
async fn items_38_39_stop_in_the_connect_hook_is_in_the_creation_response() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut s = start(with_hook(move |s| {
        let written = s.stop();
        let tx = tx.clone();
        tokio::spawn(async move {
            written.await;
            let _ = tx.send(());
        });
    }))
    .await;
    let (session, body) = s.connect().await;
    assert_eq!(
        body,
        lp(&format!(
            "[[0,[\"c\",\"{}\",null,8]],[1,[\"stop\"]]]\n",
            session.id()
        ))
    );
    assert!(rx.recv_timeout(WAIT).is_ok(), "stop callback fired");
    assert_eq!(session.closed().await, CloseReason::Stopped);
}

#[tokio::test]
async fn creating_post_with_a_bad_body_creates_no_session() {
    let s = start(Options::default()).await;
    let (status, _, body) = s
        .text(Method::POST, "/channel/bind?VER=8&RID=1000", "count=1")
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("Bad data"));
    assert_eq!(s.bc.table().len(), 0);
}

#[tokio::test]
async fn sid_helper_reads_the_creation_body() {
    let mut s = start(Options::default()).await;
    let (session, body) = s.connect().await;
    assert_eq!(sid_of(&body), session.id());
}

// E. Forward channel

#[tokio::test]
async fn item_43_forward_post_delivers_its_map() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, _) = s
        .forward(session.id(), 1001, 0, "count=1&ofs=0&req0_k=v")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        session.recv().await.expect("map").map().expect("map")["k"],
        "v"
    );
}

#[tokio::test]
async fn item_44_forward_answer_without_back_channel_is_0_0_0() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (_, body) = s
        .forward(session.id(), 1001, 0, "count=1&ofs=0&req0_k=v")
        .await;
    assert_eq!(body, "7\n[0,0,0]");
}

#[tokio::test]
async fn item_45_forward_answer_with_idle_back_channel_is_1_0_0() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let (_, body) = s.forward(session.id(), 1001, 0, "count=0").await;
    assert_eq!(body, lp("[1,0,0]"));
    assert!(stays_quiet(bc.body_mut(), Duration::from_millis(200)).await);
}

#[tokio::test]
async fn item_46_forward_answer_counts_unacknowledged_bytes() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    for m in ["message 1", "message 2", "message 3"] {
        drop(session.send_json(&m));
    }
    let mut seen = String::new();
    while !seen.contains("message 3") {
        seen += &next_data(bc.body_mut(), WAIT).await.expect("data");
    }
    let (_, body) = s.forward(session.id(), 1001, 1, "count=0").await;
    assert_eq!(body, lp("[1,3,25]"));
}

async fn maps(session: &browserver_transport_bc::Session, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(WAIT, session.recv())
            .await
            .expect("map in time")
            .expect("map");
        let map = m.map().expect("map");
        out.push(
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    out
}

#[tokio::test]
async fn item_47_out_of_order_posts_deliver_maps_in_order() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    s.forward(session.id(), 1002, 0, "count=1&ofs=2&req0_v=2")
        .await;
    s.forward(session.id(), 1001, 0, "count=2&ofs=0&req0_v=0&req1_v=1")
        .await;
    assert_eq!(maps(&session, 3).await, ["v=0", "v=1", "v=2"]);
}

#[tokio::test]
async fn item_48_the_same_post_twice_delivers_once() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    s.forward(session.id(), 1001, 0, "count=1&ofs=0&req0_v=0")
        .await;
    s.forward(session.id(), 1001, 0, "count=1&ofs=0&req0_v=0")
        .await;
    s.forward(session.id(), 1002, 0, "count=1&ofs=1&req0_v=1")
        .await;
    assert_eq!(maps(&session, 2).await, ["v=0", "v=1"]);
}

#[tokio::test]
async fn item_49_a_retry_with_extra_maps_delivers_each_once() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    s.forward(session.id(), 1001, 0, "count=1&ofs=0&req0_v=0")
        .await;
    s.forward(session.id(), 1001, 0, "count=2&ofs=0&req0_v=0&req1_v=1")
        .await;
    s.forward(session.id(), 1002, 0, "count=1&ofs=2&req0_v=2")
        .await;
    assert_eq!(maps(&session, 3).await, ["v=0", "v=1", "v=2"]);
}

#[tokio::test]
async fn items_50_51_unknown_sid_is_400_with_the_text_after_offset_0_and_cors() {
    let s = start(cors_options()).await;
    let (status, h, body) = s
        .text(
            Method::POST,
            "/channel/bind?VER=8&RID=1001&SID=junkyjunk&AID=0",
            "count=0",
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.find("Unknown SID").is_some_and(|i| i > 0));
    assert!(has_cors(&h));
}

#[tokio::test]
async fn items_52_53_json_maps_become_messages_with_their_json_as_written() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let a = json!([{}, {"x": null}, "hi", "!@#$%^&*()-=", "'\""]);
    let body = browserver_transport_bc::codec::encode_forward(
        0,
        &[
            [("JSON".to_string(), a.to_string())].into(),
            [("JSON".to_string(), json!("hello dear user").to_string())].into(),
        ],
    );
    s.forward(session.id(), 1001, 0, &body).await;
    let first = session.recv().await.expect("message");
    assert_eq!(first.value(), Some(a.clone()));
    // The JSON exactly as the client wrote it.
    assert_eq!(first.as_text(), Some(a.to_string().as_str()));
    assert_eq!(
        session.recv().await.expect("message").value(),
        Some(json!("hello dear user"))
    );
}

#[tokio::test]
async fn item_54_json_body_messages_are_delivered_before_the_answer() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let data = json!([{}, {"x": null}, "hi", "!@#$%^&*()-=", "'\""]);
    let body = json!({"ofs": 0, "data": data}).to_string();
    let r = s
        .request_with(
            Method::POST,
            &format!("/channel/bind?VER=8&RID=1001&SID={}&AID=0", session.id()),
            &[("content-type", "application/json")],
            &body,
        )
        .await;
    let (_, _, text) = read_all(r).await;
    assert_eq!(text, lp("[0,0,0]"));
    for expected in data.as_array().expect("array") {
        let m = session.recv().await.expect("message");
        assert_eq!(m.value().as_ref(), Some(expected));
        assert_eq!(m.map(), None);
    }
}

#[tokio::test]
async fn item_55_underscore_s_maps_are_string_messages() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    s.forward(session.id(), 1001, 0, "count=1&ofs=0&req0__S=text")
        .await;
    assert_eq!(
        session.recv().await.expect("message").value(),
        Some(json!("text"))
    );
}

#[tokio::test]
async fn item_56_invalid_json_closes_the_session_and_answers_403() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, body) = s
        .forward(
            session.id(),
            1001,
            0,
            "count=2&ofs=0&req0_JSON=not%20json&req1__S=after",
        )
        .await;
    assert_eq!(status, 403);
    assert!(body.contains("Forbidden"));
    let m = session.recv().await.expect("the map event still fires");
    assert_eq!(m.value(), None);
    assert_eq!(session.recv().await, None, "nothing after the close");
    assert_eq!(
        session.closed().await,
        CloseReason::Protocol("Invalid JSON".into())
    );
}

#[tokio::test]
async fn item_57_forward_body_without_ofs_or_empty_is_bad_data() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    for body in ["count=1", ""] {
        let (status, text) = s.forward(session.id(), 1001, 0, body).await;
        assert_eq!(status, 400, "{body:?}");
        assert!(text.contains("Bad data"));
    }
}

// F. Back channel, arrays, acknowledgements

#[tokio::test]
async fn item_60_back_channel_carries_cors_headers() {
    let mut s = start(cors_options()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&"flush"));
    let bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    assert!(has_cors(bc.headers()));
}

#[tokio::test]
async fn items_61_62_unknown_sid_on_back_channels() {
    let s = start(cors_options()).await;
    for kind in ["xmlhttp", "html"] {
        let (status, h, body) = read_all(s.back_channel("madeup", 0, 0, kind).await).await;
        assert_eq!(status, 400);
        assert!(body.find("Unknown SID").is_some_and(|i| i > 0));
        assert!(has_cors(&h));
    }
}

#[tokio::test]
async fn item_63_data_sent_without_back_channel_is_buffered() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&json!({"some": "data"})));
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let text = next_data(bc.body_mut(), WAIT).await.expect("data");
    assert_eq!(text, lp("[[1,{\"some\":\"data\"}]]\n"));
}

#[tokio::test]
async fn item_64_data_sent_later_arrives_on_the_open_back_channel() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(session.send_json(&json!({"some": "data"})));
    assert_eq!(
        next_data(bc.body_mut(), WAIT).await.as_deref(),
        Some(lp("[[1,{\"some\":\"data\"}]]\n").as_str())
    );
}

#[tokio::test]
async fn item_65_acknowledgements_resolve_sends_in_order() {
    let (tx, rx) = std::sync::mpsc::channel::<(u8, bool)>();
    let tx1 = tx.clone();
    let mut s = start(with_hook(move |s| {
        let ack = s.send_json(&json!([1]));
        let tx = tx1.clone();
        tokio::spawn(async move {
            let _ = tx.send((1, ack.await.is_ok()));
        });
    }))
    .await;
    let (session, _) = s.connect().await;
    let ack2 = session.send_json(&json!([2]));
    let ack3 = session.send_json(&json!([3]));
    let mut bc = s.back_channel(session.id(), 1, 0, "xmlhttp").await;
    assert_eq!(
        next_data(bc.body_mut(), WAIT).await.as_deref(),
        Some(lp("[[2,[2]],[3,[3]]]\n").as_str())
    );
    assert_eq!(
        rx.recv_timeout(WAIT).ok(),
        Some((1, true)),
        "acked by AID=1"
    );
    s.forward(session.id(), 1001, 2, "count=0").await;
    assert!(
        tokio::time::timeout(WAIT, ack2)
            .await
            .expect("in time")
            .is_ok()
    );
    let mut ack3 = Box::pin(ack3);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut ack3)
            .await
            .is_err(),
        "3 is neither acknowledged nor failed"
    );
    drop(tx);
}

#[tokio::test]
async fn item_66_closing_from_an_ack_callback_is_harmless() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let ack = session.send_json(&"x");
    let closer = session.clone();
    tokio::spawn(async move {
        let _ = ack.await;
        closer.close();
    });
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    next_data(bc.body_mut(), WAIT).await;
    s.forward(session.id(), 1001, 1, "count=0").await;
    assert_eq!(session.closed().await, CloseReason::Closed(None));
}

#[tokio::test]
async fn item_67_ci1_ends_after_the_first_chunk() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&"hi"));
    let (status, _, body) = read_all(s.back_channel(session.id(), 0, 1, "xmlhttp").await).await;
    assert_eq!((status.as_u16(), body), (200, lp("[[1,\"hi\"]]\n")));
}

#[tokio::test]
async fn item_68_ci0_stays_open_after_a_chunk() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&"hi"));
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    next_data(bc.body_mut(), WAIT).await.expect("chunk");
    assert!(stays_quiet(bc.body_mut(), Duration::from_millis(300)).await);
}

#[tokio::test]
async fn items_69_70_html_back_channels() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&json!(["hello", "there", null, 1000, {}, [], [555]])));
    let (_, h, body) = read_all(s.back_channel(session.id(), 0, 1, "html").await).await;
    assert_eq!(h["content-type"], "text/html");
    assert_eq!(
        body,
        format!(
            "<html><body><script>try {{parent.m(\"[[1,[\\\"hello\\\",\\\"there\\\",null,1000,{{}},[],[555]]]]\\n\")}} catch(e) {{}}</script>\n{PADDING}\n<script>try  {{parent.d(); }}catch (e){{}}</script>\n"
        )
    );
    drop(session.send_json(&json!({"other": "data"})));
    let mut bc = s
        .request(
            Method::GET,
            &format!(
                "/channel/bind?VER=8&RID=rpc&SID={}&AID=1&TYPE=html&CI=0&DOMAIN=foo.com",
                session.id()
            ),
            "",
        )
        .await;
    let mut text = String::new();
    while !text.ends_with(&format!("{PADDING}\n")) {
        text += &next_data(bc.body_mut(), WAIT).await.expect("data");
    }
    assert_eq!(
        text,
        format!(
            "<html><body><script>try{{document.domain=\"foo.com\";}}catch(e){{}}</script>\n<script>try {{parent.m(\"[[2,{{\\\"other\\\":\\\"data\\\"}}]]\\n\")}} catch(e) {{}}</script>\n{PADDING}\n"
        )
    );
    assert!(
        stays_quiet(bc.body_mut(), Duration::from_millis(200)).await,
        "stays open"
    );
}

#[tokio::test]
async fn item_71_a_second_back_channel_ends_the_first() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let first = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let _second = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let (status, _, body) = read_all(first).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, ""));
}

#[tokio::test]
async fn item_72_unacknowledged_arrays_are_resent_on_the_next_back_channel() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&json!([1, 2, 3])));
    drop(session.send_json(&json!([4, 5, 6])));
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    assert_eq!(
        next_data(bc.body_mut(), WAIT).await.as_deref(),
        Some(lp("[[1,[1,2,3]],[2,[4,5,6]]]\n").as_str())
    );
    let mut again = s.back_channel(session.id(), 1, 0, "xmlhttp").await;
    assert_eq!(
        next_data(again.body_mut(), WAIT).await.as_deref(),
        Some(lp("[[2,[4,5,6]]]\n").as_str())
    );
}

#[tokio::test]
async fn item_73_null_can_be_sent() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    drop(session.send_json(&serde_json::Value::Null));
    let (_, _, body) = read_all(s.back_channel(session.id(), 0, 1, "xmlhttp").await).await;
    assert_eq!(body, lp("[[1,null]]\n"));
}

#[tokio::test]
async fn item_74_streaming_back_channel_ends_after_10_kib() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let big = "x".repeat(3000);
    let mut written = 0;
    let mut chunks = 0;
    loop {
        drop(session.send_json(&big));
        match next_data(bc.body_mut(), WAIT).await {
            Some(text) => {
                written += text.len();
                chunks += 1;
            }
            None => break,
        }
        assert!(chunks < 10, "the response never ended");
    }
    assert_eq!(
        chunks, 4,
        "ends after the write that passes 10 240 characters"
    );
    assert!(written > 10_240);
}

#[tokio::test]
async fn item_75_back_channel_rid_must_be_rpc() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, _, body) = s
        .text(
            Method::GET,
            &format!(
                "/channel/bind?VER=8&RID=123&SID={}&AID=0&TYPE=xmlhttp&CI=0",
                session.id()
            ),
            "",
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("Expected RPC"));
}

// G. Keep-alive and timeouts (short intervals: 300 ms keep-alive, 500 ms session timeout)

#[tokio::test]
async fn item_77_a_session_without_back_channel_times_out_not_before_the_interval() {
    let mut s = start(fast_timers()).await;
    let started = Instant::now();
    let (session, _) = s.connect().await;
    assert_eq!(session.closed().await, CloseReason::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (status, _, _) = read_all(s.back_channel(session.id(), 0, 0, "xmlhttp").await).await;
    assert_eq!(status, 400, "the session is forgotten");
}

#[tokio::test]
async fn item_78_an_aborted_back_channel_starts_the_timeout() {
    let mut s = start(fast_timers()).await;
    let (session, _) = s.connect().await;
    let bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        session.state(),
        State::Ok,
        "alive while the back channel is open"
    );
    let aborted = Instant::now();
    drop(bc);
    assert_eq!(session.closed().await, CloseReason::TimedOut);
    assert!(aborted.elapsed() >= Duration::from_millis(450));
}

#[tokio::test]
async fn items_79_80_81_idle_back_channel_gets_numbered_noops_and_never_times_out() {
    let mut s = start(fast_timers()).await;
    let (session, _) = s.connect().await;
    let opened = Instant::now();
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    for id in 1..=5 {
        let text = next_data(bc.body_mut(), WAIT).await.expect("noop");
        assert_eq!(text, lp(&format!("[[{id},[\"noop\"]]]\n")));
        assert!(opened.elapsed() >= Duration::from_millis(300) * id);
    }
    assert_eq!(session.state(), State::Ok);
}

// H. Termination, close, stop, ghosting

#[tokio::test]
async fn item_82_terminate_answers_200_empty_and_closes_disconnected() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, _, body) = s
        .text(
            Method::GET,
            &format!(
                "/channel/bind?VER=8&RID=1001&SID={}&TYPE=terminate",
                session.id()
            ),
            "",
        )
        .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, ""));
    assert_eq!(session.closed().await, CloseReason::PeerClosed);
    assert_eq!(CloseReason::PeerClosed.to_string(), "Disconnected");
}

#[tokio::test]
async fn item_83_terminate_waits_for_earlier_rids() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    s.text(
        Method::GET,
        &format!(
            "/channel/bind?VER=8&RID=1003&SID={}&TYPE=terminate",
            session.id()
        ),
        "",
    )
    .await;
    s.forward(session.id(), 1002, 0, "count=1&ofs=1&req0_m=2")
        .await;
    assert_eq!(session.state(), State::Ok);
    s.forward(session.id(), 1001, 0, "count=1&ofs=0&req0_m=1")
        .await;
    assert_eq!(maps(&session, 2).await, ["m=1", "m=2"]);
    assert_eq!(session.closed().await, CloseReason::PeerClosed);
}

async fn pending_sends_fail_with(
    reason: CloseReason,
    end: impl AsyncFnOnce(&mut Server, &browserver_transport_bc::Session),
) {
    let mut s = start(fast_timers()).await;
    let (session, _) = s.connect().await;
    let sent = session.send_json(&"sent");
    {
        let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
        next_data(bc.body_mut(), WAIT).await.expect("written");
    }
    let never_sent = session.send_json(&"never sent");
    end(&mut s, &session).await;
    assert_eq!(
        sent.await,
        Err(browserver_transport_bc::SendError::Closed(reason.clone()))
    );
    assert_eq!(
        never_sent.await,
        Err(browserver_transport_bc::SendError::Closed(reason))
    );
}

#[tokio::test]
async fn item_84_pending_sends_fail_with_timed_out() {
    pending_sends_fail_with(CloseReason::TimedOut, async |_, _| {}).await;
}

#[tokio::test]
async fn item_85_pending_sends_fail_with_reconnected_when_ghosted() {
    pending_sends_fail_with(CloseReason::Replaced, async |s, session| {
        s.text(
            Method::POST,
            &format!(
                "/channel/bind?VER=8&RID=2000&t=1&OSID={}&OAID=0",
                session.id()
            ),
            "count=0",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn item_86_pending_sends_fail_with_the_close_reason() {
    pending_sends_fail_with(
        CloseReason::Closed(Some("foo".into())),
        async |_, session| {
            session.close_with("foo");
        },
    )
    .await;
}

#[tokio::test]
async fn item_87_pending_sends_fail_with_disconnected_after_terminate() {
    pending_sends_fail_with(CloseReason::PeerClosed, async |s, session| {
        s.text(
            Method::GET,
            &format!(
                "/channel/bind?VER=8&RID=1001&SID={}&TYPE=terminate",
                session.id()
            ),
            "",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn item_88_close_without_reason_is_closed() {
    pending_sends_fail_with(CloseReason::Closed(None), async |_, session| {
        session.close()
    })
    .await;
    assert_eq!(CloseReason::Closed(None).to_string(), "closed");
}

#[tokio::test]
async fn items_89_90_stop_after_init_is_sent_and_its_callback_fires() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let written = session.stop();
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    assert_eq!(
        next_data(bc.body_mut(), WAIT).await,
        Some(lp("[[1,[\"stop\"]]]\n"))
    );
    tokio::time::timeout(WAIT, written)
        .await
        .expect("callback fired");
    assert_eq!(session.closed().await, CloseReason::Stopped);
}

#[tokio::test]
async fn items_91_92_after_close_the_back_channel_is_400() {
    let mut s = start(with_hook(|s| s.close())).await;
    let (status, _, _) = s
        .text(Method::POST, "/channel/bind?VER=8&RID=1000&t=1", "count=0")
        .await;
    assert_eq!(status, 403);
    let closed_in_init = s.accept().await;
    let (status, _, _) = read_all(s.back_channel(closed_in_init.id(), 0, 0, "xmlhttp").await).await;
    assert_eq!(status, 400);

    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    session.close();
    session.closed().await;
    let (status, _, _) = read_all(s.back_channel(session.id(), 0, 0, "xmlhttp").await).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn items_93_94_close_reports_old_and_new_state() {
    let mut s = start(with_hook(|s| s.close())).await;
    s.text(Method::POST, "/channel/bind?VER=8&RID=1000&t=1", "count=0")
        .await;
    let session = s.accept().await;
    let mut status = session.status();
    let st = status
        .wait_for(|st| st.state == State::Closed)
        .await
        .expect("closed")
        .clone();
    assert_eq!(st.close_reason, Some(CloseReason::Closed(None)));

    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let mut status = session.status();
    status
        .wait_for(|st| st.state == State::Ok)
        .await
        .expect("ok");
    session.close();
    status
        .wait_for(|st| st.state == State::Closed)
        .await
        .expect("closed");
}

#[tokio::test]
async fn item_95_close_ends_the_attached_back_channel() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    session.close();
    let (status, _, body) = read_all(bc).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, ""));
}

#[tokio::test]
async fn item_96_whole_server_close_closes_every_session() {
    let mut s = start(Options::default()).await;
    let (a, _) = s.connect().await;
    let (b, _) = s.connect().await;
    s.bc.table().close_all();
    assert_eq!(a.closed().await, CloseReason::Closed(None));
    assert_eq!(b.closed().await, CloseReason::Closed(None));
}

#[tokio::test]
async fn items_97_99_osid_ghosts_the_old_session_after_confirming_oaid() {
    let mut s = start(with_hook(|s| {
        drop(s.send_json(&"one"));
    }))
    .await;
    let (old, _) = s.connect().await;
    let two = old.send_json(&"two");
    let three = old.send_json(&"three");
    let mut bc = s.back_channel(old.id(), 1, 0, "xmlhttp").await;
    next_data(bc.body_mut(), WAIT)
        .await
        .expect("2 and 3 written");
    s.text(
        Method::POST,
        &format!("/channel/bind?VER=8&RID=2000&t=1&OSID={}&OAID=2", old.id()),
        "count=0",
    )
    .await;
    assert_eq!(
        old.state(),
        State::Closed,
        "closed before the new session exists"
    );
    let new = s.accept().await;
    assert_ne!(new.id(), old.id());
    assert_eq!(two.await, Ok(()));
    assert_eq!(
        three.await,
        Err(browserver_transport_bc::SendError::Closed(
            CloseReason::Replaced
        ))
    );
}

#[tokio::test]
async fn item_98_unknown_osid_is_ignored() {
    let mut s = start(Options::default()).await;
    let (status, _, _) = s
        .text(
            Method::POST,
            "/channel/bind?VER=8&RID=2000&t=1&OSID=doesnotexist&OAID=0",
            "count=0",
        )
        .await;
    assert_eq!(status, 200);
    s.accept().await;
}

#[tokio::test]
async fn item_111_phase1_and_error_bodies_arrive_in_one_piece() {
    let mut s = start(Options::default()).await;
    let mut r = s
        .request(Method::GET, "/channel/test?VER=8&MODE=init", "")
        .await;
    assert!(r.headers().get("content-length").is_some());
    assert_eq!(
        next_data(r.body_mut(), WAIT).await.as_deref(),
        Some("[null,null]")
    );
    let mut r = s
        .request(
            Method::POST,
            "/channel/bind?VER=8&RID=1&SID=nope",
            "count=0",
        )
        .await;
    assert!(r.headers().get("content-length").is_some());
    assert_eq!(
        next_data(r.body_mut(), WAIT).await.as_deref(),
        Some("<html><body><h1>Unknown SID</h1></body></html>")
    );
    let (_session, _) = s.connect().await;
}

#[tokio::test]
async fn item_112_an_idle_back_channel_sends_its_headers_at_once() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    // `back_channel` waits for the response head: it arrives before any chunk.
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    assert_eq!(bc.status(), 200);
    assert!(stays_quiet(bc.body_mut(), Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_37_close_in_the_connect_hook_is_403_however_the_tasks_interleave() {
    // 200 creations from one address: beyond the default per-address quota.
    let s = start(Options {
        quota: browserver_core::SharedQuota::new(browserver_core::QuotaConfig::unlimited()),
        ..with_hook(|s| s.close())
    })
    .await;
    for _ in 0..200 {
        let (status, _, _) = s
            .text(Method::POST, "/channel/bind?VER=8&RID=1000&t=1", "count=0")
            .await;
        assert_eq!(status, 403);
    }
}

#[tokio::test]
async fn json_values_round_trip_exactly_as_the_client_wrote_them_numbers_included() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    // What JSON.stringify writes for these doubles: shortest round-trip forms, and an
    // integer beyond 2^53 (which a parse into f64 or i64 would change).
    let written =
        r#"[0.1,1e+21,5e-324,1.7976931348623157e+308,-0,123456789012345678901234567890,"é"]"#;
    let body = browserver_transport_bc::codec::encode_forward(
        0,
        &[[("JSON".to_string(), written.to_string())].into()],
    );
    s.forward(session.id(), 1001, 0, &body).await;
    let m = session.recv().await.expect("message");
    assert_eq!(m.as_text(), Some(written), "delivered as written");
    drop(session.send(m));
    let mut bc = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let data = next_data(bc.body_mut(), WAIT).await.expect("the echo");
    // Sent back as written, but for the non-ASCII character (escaped for the length framing).
    let expected = written.replace('é', "\\u00e9");
    assert!(data.contains(&format!("[1,{expected}]")), "{data}");
}

#[tokio::test]
async fn a_node_of_a_cluster_names_itself_in_every_sid() {
    let tag = browserver_core::cluster::NodeTag::new("n7", "e1").expect("tag");
    let mut s = common::start(browserver_transport_bc::Options {
        node: Some(tag),
        ..browserver_transport_bc::Options::default()
    })
    .await;
    let (session, body) = s.connect().await;
    assert!(session.id().starts_with("n7-e1-"), "{}", session.id());
    assert!(
        body.contains(session.id()),
        "the client gets it as its SID: {body}"
    );
    assert_eq!(
        browserver_core::cluster::owner_of(session.id()),
        Some(("n7", "e1"))
    );
}
