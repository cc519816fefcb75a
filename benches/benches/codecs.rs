//! Codec benchmarks: BrowserChannel forward-channel map parsing and back-channel framing;
//! the browserver message codec (text form with `x-brow-req-id`, JSON form) for small,
//! 64 KiB and 1 MiB bodies.
//!
//! `cargo bench -p browserver-benches --bench codecs`

use std::hint::black_box;

use browserver_transport_bc::codec::{self, Map};
use browserver_transport_http::message::{self, Head, Message};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const MAPS: usize = 100;

fn forward_body(payload: usize) -> String {
    let text = "x".repeat(payload);
    let maps: Vec<Map> = (0..MAPS)
        .map(|i| {
            let json = serde_json::json!({"i": i, "text": text}).to_string();
            [("JSON".to_string(), json)].into()
        })
        .collect();
    codec::encode_forward(0, &maps)
}

fn forward_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("bc/forward_parse");
    for payload in [16usize, 1024] {
        let body = forward_body(payload);
        group.throughput(Throughput::Elements(MAPS as u64));
        group.bench_with_input(BenchmarkId::new("maps", payload), &body, |b, body| {
            b.iter(|| {
                black_box(codec::parse_forward(
                    body.as_bytes(),
                    false,
                    codec::ForwardLimits::default(),
                ))
            });
        });
    }
    group.finish();
}

fn back_channel_framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("bc/back_channel_framing");
    for payload in [16usize, 1024] {
        let text = "x".repeat(payload);
        let messages: Vec<Vec<u8>> = (0..MAPS)
            .map(|i| {
                codec::to_ascii_json(&serde_json::json!({"i": i, "text": text}))
                    .expect("json")
                    .into_bytes()
            })
            .collect();
        group.throughput(Throughput::Elements(MAPS as u64));
        group.bench_with_input(
            BenchmarkId::new("xhr_arrays", payload),
            &messages,
            |b, m| {
                b.iter(|| {
                    let text =
                        codec::array_batch(m.iter().enumerate().map(|(i, d)| (i as u64, &d[..])));
                    black_box(codec::chunk(&text))
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("html_arrays", payload),
            &messages,
            |b, m| {
                b.iter(|| {
                    let text =
                        codec::array_batch(m.iter().enumerate().map(|(i, d)| (i as u64, &d[..])));
                    black_box(codec::html_script(&text, false))
                });
            },
        );
    }
    group.finish();
}

fn ascii_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("bc/ascii_json");
    let value = serde_json::json!({"text": "hello ⚗☗⚑☯ 😀 ".repeat(20), "n": [1, 2, 3]});
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialise_unicode", |b| {
        b.iter(|| black_box(codec::to_ascii_json(&value)))
    });
    group.finish();
}

/// A proxied request as the proxy writes it, with a body of `size` bytes of text.
fn request(size: usize) -> Message {
    Message {
        id: Some("k3j2h1".into()),
        head: Head::Request {
            method: "POST".into(),
            target: "/upload?name=file.txt".into(),
        },
        headers: vec![
            ("host".into(), b"k3j2h1.localhost:3572".to_vec()),
            ("content-type".into(), b"text/plain".to_vec()),
            ("x-forwarded-for".into(), b"127.0.0.1".to_vec()),
            ("x-forwarded-host".into(), b"k3j2h1.localhost:3572".to_vec()),
            ("x-forwarded-proto".into(), b"http".to_vec()),
        ],
        body: Bytes::from("a".repeat(size)),
    }
}

fn browserver_messages(c: &mut Criterion) {
    for (name, size) in [("small", 16usize), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let m = request(size);
        let text = message::encode_text(&m).expect("text form");
        let json = message::encode_json(&m);
        let mut group = c.benchmark_group("message");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode_text", name), &m, |b, m| {
            b.iter(|| black_box(message::encode_text(m)))
        });
        group.bench_with_input(BenchmarkId::new("decode_text", name), &text, |b, t| {
            b.iter(|| black_box(message::decode(t.as_bytes())))
        });
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode_json", name), &m, |b, m| {
            b.iter(|| black_box(message::encode_json(m)))
        });
        group.bench_with_input(BenchmarkId::new("decode_json", name), &json, |b, j| {
            b.iter(|| black_box(message::decode(j.as_bytes())))
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    forward_parsing,
    back_channel_framing,
    ascii_json,
    browserver_messages
);
criterion_main!(benches);
