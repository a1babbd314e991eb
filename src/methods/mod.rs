//! What a node can be asked to do. One file per method, behind one trait; adding a method is
//! a new file and one line in [`registry`].

use crate::message::{Envelope, Status};
use crate::node::Node;
use std::sync::{Arc, OnceLock};

pub mod cli_command;
pub mod error_log;
pub mod hello;
pub mod text_logging;
pub mod trusted_keys;

/// The result of running a method; becomes the [`crate::message::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub output: String,
}

impl Outcome {
    pub fn ok(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Ok,
            exit_code: None,
            output: output.into(),
        }
    }
    pub fn error(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Error,
            exit_code: None,
            output: output.into(),
        }
    }
    pub fn refused(output: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Refused,
            exit_code: None,
            output: output.into(),
        }
    }
}

pub trait Method: Send + Sync {
    /// The name used in subjects and in the `method` key.
    fn name(&self) -> &'static str;
    /// Runs a received message that has passed the sender checks. Runs on a handler thread
    /// of its own; may block (a CLICommand runs up to its timeout).
    fn handle(&self, envelope: &Envelope, node: &Node) -> Outcome;
    /// Runs a batch of received messages, in order (events of one subject that travelled
    /// together). A method that can do the batch's work in one go (one write, one fsync)
    /// overrides this; by default each runs alone.
    fn handle_batch(&self, envelopes: &[&Envelope], node: &Node) -> Vec<Outcome> {
        envelopes.iter().map(|e| self.handle(e, node)).collect()
    }
    /// Called about once a second by the method's subscriber, for deferred work.
    fn tick(&self, _node: &Node) {}
    /// Called when the node stops, to persist what `tick` would have.
    fn flush(&self, _node: &Node) {}
}

/// Every method this build serves.
pub fn registry() -> Vec<Arc<dyn Method>> {
    vec![
        Arc::new(cli_command::CliCommand),
        Arc::new(text_logging::TextLogging),
        Arc::new(hello::Hello::default()),
        Arc::new(error_log::ErrorLog),
        Arc::new(trusted_keys::TrustedKeys),
    ]
}

/// Whether this build knows a method by name.
pub fn is_known(name: &str) -> bool {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| registry().iter().map(|m| m.name()).collect())
        .contains(&name)
}
