//! # browserver-benches
//!
//! Criterion benchmarks (`cargo bench -p browserver-benches`), the load tool
//! `browserver-load` (its parts are in [`load`]) and the side-by-side comparison with
//! node-browserchannel, Socket.IO and bare servers (`benches/compare`). See
//! `docs/benchmarks.md`.

pub mod load;
