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
    assert_eq!(s.bc.session_count(), 0);
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
    assert_eq!(m.map.expect("map")["k"], "v");
    assert_eq!(m.value, None);
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
    assert_eq!(m.map.expect("map")["_int_^&^%#net"], "hi\"there&&\nsam");
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
        let _ = s.send(&json!(["hello", "there", null, 1000, {}, [], [555]]));
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
        let _ = s.send(&json!({"a": "hello\u{2028}\u{2029}there\u{2028}\u{2029}"}));
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
    assert_eq!(s.bc.session_count(), 0);
}

#[tokio::test]
async fn sid_helper_reads_the_creation_body() {
    let mut s = start(Options::default()).await;
    let (session, body) = s.connect().await;
    assert_eq!(sid_of(&body), session.id());
}
