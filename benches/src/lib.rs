//! Benches: `cargo bench -p resilience-benches`; peer comparisons in `benches/*.sh`.
