//! The integration tests, in one binary (ripgrep's way): the harness in `common/` compiles
//! once, and the tests of every file run in parallel threads of one process. Each test
//! starts its own nats-server on a free port and its own nodes in temporary folders, so
//! they do not meet; the few that mount filesystems take [`common::serial`] first.
//!
//! `cargo test --test tests delivery::` runs one file's tests; `cargo test <name>` one test.

mod common;

mod backpressure;
mod bad_input;
mod client;
mod delivery;
mod durability;
mod hostile;
mod observability;
mod powercut;
mod security;
mod seed_examples;
mod signing;
mod storage;
