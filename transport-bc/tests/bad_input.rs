//! Hostile and malformed requests: each gets the right status and a short body, never a panic
//! or a hang; other sessions are unaffected.

mod common;

use browserver_transport_bc::Options;
use common::*;
use http::Method;

async fn status_and_body(s: &Server, method: Method, uri: &str, body: &str) -> (u16, String) {
    let (status, _, text) = s.text(method, uri, body).await;
    (status.as_u16(), text)
}

#[tokio::test]
async fn wrong_or_repeated_version_is_400() {
    let s = start(Options::default()).await;
    for uri in [
        "/channel/bind?VER=9&RID=1",
        "/channel/bind?VER=x&RID=1",
        "/channel/bind?RID=1",
    ] {
        let (status, body) = status_and_body(&s, Method::POST, uri, "count=0").await;
        assert_eq!(status, 400, "{uri}");
        assert!(body.contains("Version 8 required"));
    }
}

#[tokio::test]
async fn bad_rid_on_a_post_is_400() {
    let s = start(Options::default()).await;
    for rid in ["", "abc", "-1", "1.5"] {
        let (status, body) = status_and_body(
            &s,
            Method::POST,
            &format!("/channel/bind?VER=8&RID={rid}"),
            "count=0",
        )
        .await;
        assert_eq!(
            (status, body.contains("Bad data")),
            (400, true),
            "RID={rid:?}"
        );
    }
    assert_eq!(s.bc.table().len(), 0);
}

#[tokio::test]
async fn a_rid_far_ahead_is_400_and_the_session_lives_on() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, _) = s
        .forward(session.id(), 10_000_000, 0, "count=1&ofs=0&req0_a=b")
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .forward(session.id(), 1001, 0, "count=1&ofs=0&req0_a=b")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_aid_acknowledges_nothing() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let ack = session.send_json(&"x");
    let mut bc = s.back_channel(session.id(), -1, 0, "xmlhttp").await;
    next_data(bc.body_mut(), WAIT).await.expect("written");
    for aid in ["abc", "-5", ""] {
        let (status, _, _) = s
            .text(
                Method::POST,
                &format!(
                    "/channel/bind?VER=8&RID=1001&SID={}&AID={aid}",
                    session.id()
                ),
                "count=0",
            )
            .await;
        assert_eq!(status, 200);
    }
    let mut ack = Box::pin(ack);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), &mut ack)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn missing_or_unknown_type_on_a_bind_get_is_400() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    for t in ["", "&TYPE=bogus"] {
        let (status, body) = status_and_body(
            &s,
            Method::GET,
            &format!("/channel/bind?VER=8&RID=rpc&SID={}{t}", session.id()),
            "",
        )
        .await;
        assert_eq!((status, body.contains("Bad TYPE")), (400, true), "{t:?}");
    }
}

#[tokio::test]
async fn back_channel_without_sid_is_400_unknown_sid() {
    let s = start(Options::default()).await;
    let (status, body) = status_and_body(
        &s,
        Method::GET,
        "/channel/bind?VER=8&RID=rpc&TYPE=xmlhttp&CI=0",
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.find("Unknown SID").is_some_and(|i| i > 0));
}

#[tokio::test]
async fn terminate_without_sid_is_200_and_does_nothing() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let (status, body) = status_and_body(
        &s,
        Method::GET,
        "/channel/bind?VER=8&RID=5&TYPE=terminate",
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(session.state(), browserver_transport_bc::State::Ok);
}

#[tokio::test]
async fn malformed_form_bodies_are_400_bad_data() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    for body in [
        "count=abc",
        "count=2&ofs=0&req7_a=b",
        "count=1&ofs=zz",
        "%%%",
        "\u{0}\u{1}garbage",
    ] {
        let (status, text) = s.forward(session.id(), 1001, 0, body).await;
        assert_eq!(
            (status.as_u16(), text.contains("Bad data")),
            (400, true),
            "{body:?}"
        );
    }
    let (status, _) = s
        .forward(session.id(), 1001, 0, "count=1&ofs=0&req0_a=%ZZ")
        .await;
    assert_eq!(
        status, 200,
        "a stray % is kept literally, like node-browserchannel"
    );
    assert_eq!(
        session.recv().await.expect("map").map().expect("map")["a"],
        "%ZZ"
    );
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = start(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    let big = format!("count=1&ofs=0&req0_a={}", "x".repeat(2000));
    let (status, _) = status_and_body(&s, Method::POST, "/channel/bind?VER=8&RID=1", &big).await;
    assert_eq!(status, 413);
    assert_eq!(s.bc.table().len(), 0);
}

#[tokio::test]
async fn too_many_maps_in_one_post_is_413() {
    let s = start(Options {
        max_maps_per_post: 2,
        ..Options::default()
    })
    .await;
    let (status, _) = status_and_body(
        &s,
        Method::POST,
        "/channel/bind?VER=8&RID=1",
        "count=3&ofs=0",
    )
    .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn too_many_sessions_is_503_with_retry_after() {
    let mut s = start(Options {
        max_sessions: 1,
        ..Options::default()
    })
    .await;
    let (_first, _) = s.connect().await;
    let (status, h, _) = s
        .text(Method::POST, "/channel/bind?VER=8&RID=1", "count=0")
        .await;
    assert_eq!(status, 503);
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn sends_past_the_buffer_limit_fail_with_buffer_full() {
    let mut s = start(Options {
        max_buffered_bytes: 64,
        ..Options::default()
    })
    .await;
    let (session, _) = s.connect().await;
    assert!(matches!(
        session.send_json(&"y".repeat(100)).await,
        Err(browserver_transport_bc::SendError::BufferFull { limit: 64, .. })
    ));
}

#[tokio::test]
async fn a_back_channel_opened_twice_ends_the_first_and_streams_on_the_second() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    let first = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let mut second = s.back_channel(session.id(), 0, 0, "xmlhttp").await;
    let (_, _, body) = read_all(first).await;
    assert_eq!(body, "");
    drop(session.send_json(&"to the second"));
    assert_eq!(
        next_data(second.body_mut(), WAIT).await.as_deref(),
        Some(lp("[[1,\"to the second\"]]\n").as_str())
    );
}

#[tokio::test]
async fn garbage_requests_do_not_disturb_other_sessions() {
    let mut s = start(Options::default()).await;
    let (session, _) = s.connect().await;
    for uri in [
        "/channel/bind?VER=8&SID=%FF%FE&RID=rpc&TYPE=xmlhttp",
        "/channel/bind?VER=8&VER=8&RID=x",
        "/channel/test?VER=8&MODE=init&MODE=x",
        "/channel/../../etc/passwd",
        "/channel/bind?VER=8&RID=18446744073709551616",
    ] {
        let (status, _) =
            status_and_body(&s, Method::POST, uri, "count=1&ofs=99999999999999999999").await;
        assert!(status >= 400 || status == 200, "{uri}: {status}");
    }
    let (status, _) = s
        .forward(session.id(), 1001, 0, "count=1&ofs=0&req0_ok=1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        session.recv().await.expect("map").map().expect("map")["ok"],
        "1"
    );
}

#[tokio::test]
async fn options_preflight_is_answered_with_cors_headers() {
    let s = start(Options {
        cors: Some(browserver_transport_bc::Cors::Origin(
            "https://app.example".into(),
        )),
        ..Options::default()
    })
    .await;
    let r = s
        .request_with(
            Method::OPTIONS,
            "/channel/bind?VER=8",
            &[("access-control-request-headers", "x-style")],
            "",
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-headers"], "x-style");
}

#[tokio::test]
async fn refused_creations_give_their_place_in_the_address_quota_back() {
    let quota = browserver_core::QuotaConfig {
        max_sessions: 1,
        creations_per_minute: 0,
        ..browserver_core::QuotaConfig::default()
    };
    let mut s = start(Options {
        quota: browserver_core::SharedQuota::new(quota),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        let (status, _) = status_and_body(
            &s,
            Method::POST,
            "/channel/bind?VER=8&RID=1000&t=1",
            "count=x",
        )
        .await;
        assert_eq!(status, 400, "a malformed creation");
    }
    let (session, _) = s.connect().await;
    let (status, body) = status_and_body(
        &s,
        Method::POST,
        "/channel/bind?VER=8&RID=1000&t=1",
        "count=0",
    )
    .await;
    assert_eq!(status, 429, "one live session per address: {body}");
    session.close();
    tokio::time::timeout(WAIT, session.closed())
        .await
        .expect("closed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.connect().await;
}

#[tokio::test]
async fn an_application_that_does_not_read_is_not_made_to_hold_more_than_its_limit() {
    let mut s = start(Options {
        max_unread_bytes: 10_000,
        ..Options::default()
    })
    .await;
    let (session, _) = s.connect().await;
    let value = "v".repeat(1000);
    for i in 0..5u64 {
        // Three maps of about 1 KB per request: 15 KB in all, nobody reading.
        let ofs = 3 * i;
        let body = format!("count=3&ofs={ofs}&req0__S={value}&req1__S={value}&req2__S={value}");
        s.forward(session.id(), 1001 + i, -1, &body).await;
    }
    assert_eq!(
        tokio::time::timeout(WAIT, session.closed())
            .await
            .expect("closed"),
        browserver_transport_bc::CloseReason::Protocol("the application is not reading".into())
    );
    let mut delivered = 0;
    while session.recv().await.is_some() {
        delivered += 1;
    }
    assert!(
        delivered < 15,
        "{delivered} maps held for an application that does not read"
    );
}
