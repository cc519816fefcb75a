//! Deterministic simulation of a server-role and a client-role session over a faulty network.
//! See `docs/simulation.md` for what the faults cover and what they do not.
//!
//! `SIM_SEEDS=N` changes how many seeds the sweep runs (default 10 000), `SIM_SEED_START=S`
//! where it starts; `SIM_SEED=S` selects the seed `replay_seed` runs.

use std::time::Duration;

use browserver_core::CloseReason;
use browserver_core::sim::{Ending, Faults, Scenario, run};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn ten_thousand_seeded_runs_hold_every_invariant() {
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_SEEDS", 10_000);
    let mut failures = Vec::new();
    let mut endings = std::collections::BTreeMap::<String, u64>::new();
    for seed in start..start + count {
        match run(&Scenario::from_seed(seed)) {
            Ok(report) => {
                let kind = match &report.closed[0] {
                    Some(CloseReason::Closed(Some(t))) if t == "end of run" => "open to the end",
                    Some(CloseReason::Closed(_)) => "closed by the server application",
                    Some(CloseReason::PeerClosed) => "terminated by the client",
                    Some(CloseReason::TimedOut) => "timed out",
                    Some(CloseReason::Stopped) => "stopped",
                    Some(CloseReason::Protocol(_)) => "protocol error",
                    _ => "other",
                };
                *endings.entry(kind.to_string()).or_default() += 1;
            }
            Err(failure) => {
                if failures.is_empty() {
                    eprintln!("{failure}");
                }
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed; first failing seeds: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    eprintln!("how the server sessions ended: {endings:?}");
    if count >= 1000 {
        // The sweep must exercise every way a session ends, not only the happy path.
        for kind in [
            "open to the end",
            "closed by the server application",
            "terminated by the client",
            "timed out",
            "stopped",
            "protocol error",
        ] {
            assert!(
                endings.get(kind).is_some_and(|&n| n > 0),
                "no run {kind}: {endings:?}"
            );
        }
    }
}

#[test]
fn replay_seed() {
    let seed = env_u64("SIM_SEED", 1);
    let scenario = Scenario::from_seed(seed);
    eprintln!("{scenario:#?}");
    match run(&scenario) {
        Ok(report) => eprintln!("{report:#?}"),
        Err(failure) => panic!("{failure}"),
    }
}

fn scenario(faults: Faults, ending: Ending) -> Scenario {
    Scenario {
        faults,
        ending,
        messages: 100,
        max_len: 200,
        ..Scenario::from_seed(42)
    }
}

fn quiet_session(s: &mut Scenario) {
    s.session.max_buffered_bytes = 1 << 20;
    s.session.reorder_window = 4096;
    s.session.max_held_bytes = 1 << 20;
}

#[test]
fn perfect_network_delivers_and_acknowledges_everything() {
    let mut s = scenario(Faults::perfect(), Ending::None);
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(r.delivered, [100, 100]);
    assert_eq!(r.acked, [100, 100]);
    assert_eq!(
        r.closed,
        [
            Some(CloseReason::Closed(Some("end of run".into()))),
            Some(CloseReason::Closed(Some("end of run".into())))
        ]
    );
}

#[test]
fn lossy_duplicating_reordering_network_still_delivers_everything_once_in_order() {
    for seed in 0..200 {
        let mut faults = Faults::perfect();
        faults.loss = 0.1;
        faults.cut = 0.1;
        faults.duplicate = 0.3;
        faults.latency = (Duration::from_millis(1), Duration::from_millis(300));
        faults.straggle = (0.1, Duration::from_secs(2));
        let mut s = scenario(faults, Ending::None);
        quiet_session(&mut s);
        s.seed = seed;
        let r = run(&s).expect("invariants");
        if r.closed[0] == Some(CloseReason::Closed(Some("end of run".into()))) {
            assert_eq!(r.delivered, [100, 100], "seed {seed}");
            assert_eq!(r.acked, [100, 100], "seed {seed}");
        }
    }
}

#[test]
fn buffering_proxy_one_batch_per_path_delivers_everything() {
    let mut faults = Faults::perfect();
    faults.one_shot = true;
    let mut s = scenario(faults, Ending::None);
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(r.acked, [100, 100]);
}

#[test]
fn partition_shorter_than_session_timeout_is_survived() {
    let mut faults = Faults::perfect();
    faults.partitions = vec![(Duration::from_secs(20), Duration::from_secs(5))];
    let mut s = scenario(faults, Ending::None);
    quiet_session(&mut s);
    s.session.keepalive_interval = Duration::from_secs(2);
    s.session.session_timeout = Duration::from_secs(30);
    let r = run(&s).expect("invariants");
    assert_eq!(r.acked, [100, 100]);
}

#[test]
fn partition_longer_than_session_timeout_closes_the_session_and_fails_pending_sends() {
    let mut faults = Faults::perfect();
    faults.partitions = vec![(Duration::from_secs(20), Duration::from_secs(200))];
    let mut s = scenario(faults, Ending::None);
    quiet_session(&mut s);
    s.session.keepalive_interval = Duration::from_secs(5);
    s.session.session_timeout = Duration::from_secs(10);
    let r = run(&s).expect("invariants");
    assert!(r.closed.contains(&Some(CloseReason::TimedOut)), "{r:?}");
    assert!(r.failed[0] + r.failed[1] > 0, "{r:?}");
}

#[test]
fn crashed_client_makes_the_server_session_time_out() {
    let mut faults = Faults::perfect();
    faults.client_crash = Some(Duration::from_secs(30));
    let mut s = scenario(faults, Ending::None);
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(r.closed[0], Some(CloseReason::TimedOut));
}

#[test]
fn server_stop_tells_the_client_not_to_reconnect() {
    let mut s = scenario(
        Faults::perfect(),
        Ending::ServerStop(Duration::from_secs(400)),
    );
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(
        r.closed,
        [Some(CloseReason::Stopped), Some(CloseReason::Stopped)]
    );
    assert_eq!(r.delivered, [100, 100]);
}

#[test]
fn server_close_is_seen_by_the_client_as_peer_closed() {
    let mut s = scenario(
        Faults::perfect(),
        Ending::ServerClose(Duration::from_secs(400)),
    );
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(r.closed[0], Some(CloseReason::Closed(Some("bye".into()))));
    assert_eq!(r.closed[1], Some(CloseReason::PeerClosed));
}

#[test]
fn client_terminate_closes_the_server_session() {
    let mut s = scenario(
        Faults::perfect(),
        Ending::ClientTerminate(Duration::from_secs(400)),
    );
    quiet_session(&mut s);
    let r = run(&s).expect("invariants");
    assert_eq!(
        r.closed,
        [
            Some(CloseReason::PeerClosed),
            Some(CloseReason::Closed(None))
        ]
    );
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    for seed in [3, 77, 1234] {
        let a = run(&Scenario::from_seed(seed));
        let b = run(&Scenario::from_seed(seed));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

/// Proxied requests as flow-controlled streams over the session, under the same faults:
/// window exhaustion (small windows, slow readers), credit lost with a dead connection and
/// retransmitted by the session, resets mid-stream, answer deadlines, sessions closing with
/// streams open. `SIM_STREAM_SEEDS=N` changes how many seeds run (default 1 000).
#[test]
fn streams_over_a_faulty_session_hold_every_invariant() {
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_STREAM_SEEDS", 1_000);
    let mut failures = Vec::new();
    let mut completed = 0;
    for seed in start..start + count {
        match run(&Scenario::streams_from_seed(seed)) {
            Ok(report) => completed += report.streams_completed,
            Err(failure) => {
                if failures.is_empty() {
                    eprintln!("{failure}");
                }
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} stream seeds failed; first failing seeds: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    eprintln!("{completed} streams completed over {count} seeds");
    assert!(
        completed > count as usize,
        "the sweep completes streams, not only resets"
    );
}

#[test]
fn replay_stream_seed() {
    let seed = env_u64("SIM_SEED", 1);
    let scenario = Scenario::streams_from_seed(seed);
    eprintln!("{scenario:#?}");
    match run(&scenario) {
        Ok(report) => eprintln!("{report:#?}"),
        Err(failure) => panic!("{failure}"),
    }
}
