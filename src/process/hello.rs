//! The hello process: every `--helloInterval` seconds, tells the central node "I'm here"
//! with a Hello EventNACK (published once, not journaled: the next one replaces it); and at
//! once each time the broker link comes back, so that what central holds for this node
//! goes now (a Hello ends its lanes' pauses), not up to a minute later.

use super::{Failure, Process, State};
use crate::message::{Envelope, Kind, Message};
use crate::node::Node;
use crate::subject::Subject;
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::Duration;

pub struct HelloSender {
    pub node: Arc<Node>,
    pub interval: Duration,
    pub state: Arc<State>,
}

impl Process for HelloSender {
    fn run(&mut self, stop: &Receiver<()>) -> Result<(), Failure> {
        let reconnected = self.node.broker.reconnects();
        if self.node.broker.wait(stop).is_none() {
            return Ok(());
        }
        let config = &self.node.config;
        // The central node's name passed the configuration's check: a bug if not, which a
        // restart would meet again.
        let subject = Subject::new(&config.central_node, Kind::EventNack, "Hello")
            .map_err(Failure::fatal)?
            .to_string();
        let mut count = 0u64;
        loop {
            count += 1;
            let now = crate::files::unix_millis();
            let envelope = Envelope {
                id: format!(
                    "{}-hello-{now}-{}",
                    config.node,
                    crate::keys::random_hex128()
                ),
                from_node: config.node.clone(),
                accepted: now,
                reply_ticket: None,
                grant: None,
                message: Message::new(
                    &config.central_node,
                    Kind::EventNack,
                    "Hello",
                    vec![format!("hello {count} from {}", config.node)],
                ),
            };
            match self.node.broker.publish(
                &self.node.identity,
                crate::keys::Scope::request(&subject, None),
                &envelope.encode(),
                crate::keys::Covers::Payload,
                crate::broker::Confirm::ByServer,
            ) {
                Ok(_) => self.state.set(format!("sent hello {count}")),
                Err(e) => self.state.set(format!("hello {count} not sent: {e}")),
            }
            crossbeam_channel::select! {
                recv(stop) -> _ => return Ok(()),
                recv(reconnected) -> _ => {}
                default(self.interval) => {}
            }
        }
    }
}
