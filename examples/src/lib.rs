//! Examples live beside this crate as `cargo run -p resilience-examples --example NAME`.
