//! # browserver-benches
//!
//! Criterion benchmarks (`cargo bench -p browserver-benches`) and, later, the load tool and
//! the side-by-side comparison with node-browserchannel and Socket.IO.
