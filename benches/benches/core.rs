//! Core benchmarks: sequencing with acknowledgement, inbound reordering, request correlation.
//!
//! `cargo bench -p browserver-benches --bench core`

use std::hint::black_box;
use std::time::{Duration, Instant};

use browserver_core::{
    Config, Event, PathMode, Reorder, Requests, Resolved, Role, Session, Transmit,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 64;

/// A server and a client session with a downstream path attached and the session open.
fn open_pair(now: Instant) -> (Session, Session) {
    let config = Config {
        max_buffered_bytes: 64 << 20,
        ..Config::default()
    };
    let mut server = Session::new(Role::Server, config.clone(), now);
    let mut client = Session::new(Role::Client, config, now);
    server.attach(now, PathMode::default()).expect("attach");
    pump(&mut server, &mut client, now);
    (server, client)
}

/// Moves everything the server transmits into the client, acknowledges it, and drains both
/// sides' events. Returns how many messages the client received.
fn pump(server: &mut Session, client: &mut Session, now: Instant) -> usize {
    while let Some(t) = server.poll_transmit() {
        if let Transmit::Batch { items, .. } = t {
            for item in items {
                let _ = client.handle_incoming(now, item.seq, item.payload);
            }
        }
    }
    let mut received = 0;
    while let Some(e) = client.poll_event() {
        if let Event::Message { data, .. } = e {
            black_box(data);
            received += 1;
        }
    }
    if let Some(ack) = client.ack_position() {
        let _ = server.handle_ack(now, ack);
    }
    while let Some(e) = server.poll_event() {
        black_box(e);
    }
    received
}

fn sequencing_with_acknowledgement(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/sequencing_ack");
    for size in [16usize, 1024] {
        let payload = Bytes::from(vec![b'x'; size]);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_with_input(
            BenchmarkId::new("messages", size),
            &payload,
            |b, payload| {
                let now = Instant::now();
                let (mut server, mut client) = open_pair(now);
                b.iter(|| {
                    for _ in 0..BATCH {
                        server.send(now, payload.clone()).expect("send");
                    }
                    let got = pump(&mut server, &mut client, now);
                    assert_eq!(got, BATCH);
                });
            },
        );
    }
    group.finish();
}

fn inbound_reordering(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/reorder");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Each batch arrives reversed: the worst case for holding.
    group.bench_function("reversed_batches", |b| {
        let mut r = Reorder::new(0, 4096);
        let mut base = 0u64;
        b.iter(|| {
            for pos in (base..base + BATCH as u64).rev() {
                black_box(r.insert(pos, pos));
            }
            while let Some(item) = r.pop_ready() {
                black_box(item);
            }
            base += BATCH as u64;
        });
    });
    group.finish();
}

fn request_correlation(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/correlation");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("insert_resolve", |b| {
        let now = Instant::now();
        let mut table = Requests::new(100_000);
        let mut ids = Vec::with_capacity(BATCH);
        b.iter(|| {
            ids.clear();
            for i in 0..BATCH {
                ids.push(
                    table
                        .insert(now, Duration::from_secs(30), i)
                        .expect("insert"),
                );
            }
            for id in ids.drain(..).rev() {
                assert!(matches!(table.resolve(id), Resolved::Matched(_)));
            }
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    sequencing_with_acknowledgement,
    inbound_reordering,
    request_correlation
);
criterion_main!(benches);
