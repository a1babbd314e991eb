//! The integration tests, in one binary (ripgrep's way): the harness in `common/` compiles
//! once, and the tests of every file run in parallel threads of one process. Each test
//! starts its own nats-server on a free port and its own nodes in temporary folders, so
//! they do not meet; the few that mount filesystems take [`common::serial`] first.
//!
//! No test waits on a node's log or sleeps a fixed time for something to happen. A node is
//! ready when its process table (`steward status`) shows every subscriber listening; what
//! happened is read from its metrics, its files, its control socket or the broker's
//! monitoring endpoint. A test that shows something does *not* happen first proves the
//! window for it over ([`common::settle`], [`common::Node::wait_refused`]).
//!
//! `cargo test --test tests delivery::` runs one file's tests; `cargo test <name>` one test.

mod common;

mod backpressure;
mod bad_input;
mod client;
mod copy;
mod delivery;
mod durability;
mod hostile;
mod http_get;
mod link;
mod observability;
mod powercut;
mod replies;
mod schedules;
mod security;
mod seed_examples;
mod signing;
mod storage;
mod streams;
