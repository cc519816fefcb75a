//! BrowserChannel codec benchmarks: forward-channel map parsing and back-channel framing.
//!
//! `cargo bench -p browserver-benches --bench bc_codec`

use std::hint::black_box;

use browserver_transport_bc::codec::{self, Map};
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
            b.iter(|| black_box(codec::parse_forward(body.as_bytes(), false, 1000)));
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

criterion_group!(benches, forward_parsing, back_channel_framing, ascii_json);
criterion_main!(benches);
