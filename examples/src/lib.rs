//! Runnable examples live beside this crate root: see `embedded.rs`.
