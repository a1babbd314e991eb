//! The command line: the flags and subcommands as argh parses them, and the seed's
//! spellings of them (see the module above).

use super::*;

/// Command and control anything asynchronously: send commands and events to nodes over NATS
/// with guaranteed delivery.
#[derive(FromArgs, Debug, Default)]
pub struct Flags {
    #[argh(subcommand)]
    pub command: Option<Subcommand>,
    /// read options from this TOML file; flags win over environment variables (STEWARD_NODE,
    /// ...), which win over the file
    #[argh(option)]
    pub config: Option<String>,
    /// some unique string to identify this Edge unit (default: the host name)
    #[argh(option)]
    pub node: Option<String>,
    /// the address of the message broker; a comma-separated list for a cluster
    /// (default "127.0.0.1:4222")
    #[argh(option)]
    pub broker_address: Option<String>,
    /// set to true if this is the node that should receive the error log's from other nodes
    #[argh(switch)]
    pub central_error_logger: bool,
    /// not the central error logger, whatever the environment or the config file says
    /// (what -centralErrorLogger=false says)
    #[argh(switch)]
    pub not_central_error_logger: bool,
    /// default amount of retries that will be done before a message is thrown away, and out
    /// of the system (default 3)
    #[argh(option)]
    pub default_message_retries: Option<String>,
    /// default message timeout in seconds. This can be overridden on the message level
    /// (default 10)
    #[argh(option)]
    pub default_message_timeout: Option<String>,
    /// default time to live in seconds: messages without their own "ttl" are retried
    /// until it runs out, whatever the retries; 0 means use the retries (default 0)
    #[argh(option)]
    pub default_message_ttl: Option<String>,
    /// the number of the profiling port: serves the process table as plain text on
    /// 127.0.0.1 (or give host:port)
    #[argh(option)]
    pub profiling_port: Option<String>,
    /// host and port for prometheus listener, e.g. localhost:2112; "off" disables it
    /// (default ":2112")
    #[argh(option)]
    pub prom_host_and_port: Option<String>,
    /// folder for inmsg.txt, the journal, logs and replies (default: the binary's folder)
    #[argh(option)]
    pub data_folder: Option<String>,
    /// name of the central node: commands are accepted from it, errors and Hello go to it
    /// (default "central")
    #[argh(option)]
    pub central_node_name: Option<String>,
    /// comma-separated nodes this node accepts commands from, each alone (any method) or
    /// as node:Method+Method, e.g. "central,ops:CLICommand" (default: the central node)
    #[argh(option)]
    pub allow_commands_from: Option<String>,
    /// seconds a signed message may be old (or ahead of this node's clock) and still be
    /// taken; older ones are refused as replays (default 300)
    #[argh(option)]
    pub replay_window: Option<String>,
    /// when to check a signed message's sending time against this node's clock: auto
    /// (while the kernel says the clock is synchronized), on, or off (a node without a
    /// reliable clock; counters still refuse replays) (default auto)
    #[argh(option)]
    pub clock_check: Option<String>,
    /// seconds between Hello messages to the central node; 0 disables (default 30)
    #[argh(option)]
    pub hello_interval: Option<String>,
    /// seconds between checks of the broker link: one in which nothing came from the broker
    /// and TCP moved no bytes sends a PING, and two such in a row take the link as cut and
    /// connect again (default 30; raise it behind a satellite modem that acknowledges bytes
    /// on the broker's behalf, for longer than a large message takes to go)
    #[argh(option)]
    pub broker_ping_interval: Option<String>,
    /// most received messages handled at once (default 32)
    #[argh(option)]
    pub max_concurrent_handlers: Option<String>,
    /// seconds a publisher with nothing to send waits before it ends (its thread and
    /// memory given back; it starts again with its lane's next message) (default 30)
    #[argh(option)]
    pub keep_publishers_alive_for: Option<String>,
    /// most publishers (threads sending to a lane) at once; past that, lanes wait their
    /// turn and idle publishers end at once to make room (default 1000)
    #[argh(option)]
    pub max_publishers: Option<String>,
    /// bytes each sender may write into this node's errors.log, and into its textlog file,
    /// per hour; past that its messages are refused (default 67108864, 64 MiB)
    #[argh(option)]
    pub max_log_bytes_per_hour: Option<String>,
    /// most bytes of a body HttpGet keeps; the rest is cut, with a note (default 1048576,
    /// 1 MiB)
    #[argh(option)]
    pub max_http_body_bytes: Option<String>,
    /// free bytes the data folder's disk keeps for the journal: below it, errors.log and
    /// textlog/ writes are refused (default 64 MiB or 2 % of the disk, whichever is smaller)
    #[argh(option)]
    pub min_free_bytes_for_logs: Option<String>,
    /// largest file CopySrc copies from this node, in bytes: all its chunks wait in the
    /// journal until the destination has them (default 268435456, 256 MiB)
    #[argh(option)]
    pub max_copy_bytes: Option<String>,
    /// CA certificate file (PEM): connect to the broker over TLS, checking its certificate
    /// and name against this CA
    #[argh(option)]
    pub tls_ca: Option<String>,
    /// client certificate file (PEM), for brokers that verify clients
    #[argh(option)]
    pub tls_cert: Option<String>,
    /// the client certificate's private key file (PEM)
    #[argh(option)]
    pub tls_key: Option<String>,
    /// broker user name; the password comes from --passwordFile or STEWARD_PASSWORD
    #[argh(option)]
    pub user: Option<String>,
    /// file holding the broker password
    #[argh(option)]
    pub password_file: Option<String>,
    /// file holding a broker token (or set STEWARD_TOKEN)
    #[argh(option)]
    pub token_file: Option<String>,
    /// file holding this node's NKey seed (SU...), for NKey authentication
    #[argh(option)]
    pub nkey_seed_file: Option<String>,
    /// NATS credentials file (user JWT and seed), for decentralized JWT authentication
    #[argh(option)]
    pub creds_file: Option<String>,
    /// print steward's version and exit
    #[argh(switch)]
    pub version: bool,
}

impl Flags {
    /// The value given on the command line for an option, by its seed-style name.
    pub(super) fn value(&self, name: &str) -> Option<String> {
        match name {
            "node" => self.node.clone(),
            "brokerAddress" => self.broker_address.clone(),
            "centralErrorLogger" => {
                match (self.central_error_logger, self.not_central_error_logger) {
                    (_, true) => Some("false".to_string()),
                    (true, false) => Some("true".to_string()),
                    (false, false) => None,
                }
            }
            "defaultMessageRetries" => self.default_message_retries.clone(),
            "defaultMessageTimeout" => self.default_message_timeout.clone(),
            "defaultMessageTTL" => self.default_message_ttl.clone(),
            "profilingPort" => self.profiling_port.clone(),
            "promHostAndPort" => self.prom_host_and_port.clone(),
            "dataFolder" => self.data_folder.clone(),
            "centralNodeName" => self.central_node_name.clone(),
            "allowCommandsFrom" => self.allow_commands_from.clone(),
            "replayWindow" => self.replay_window.clone(),
            "clockCheck" => self.clock_check.clone(),
            "helloInterval" => self.hello_interval.clone(),
            "brokerPingInterval" => self.broker_ping_interval.clone(),
            "maxConcurrentHandlers" => self.max_concurrent_handlers.clone(),
            "keepPublishersAliveFor" => self.keep_publishers_alive_for.clone(),
            "maxPublishers" => self.max_publishers.clone(),
            "maxLogBytesPerHour" => self.max_log_bytes_per_hour.clone(),
            "minFreeBytesForLogs" => self.min_free_bytes_for_logs.clone(),
            "maxHttpBodyBytes" => self.max_http_body_bytes.clone(),
            "maxCopyBytes" => self.max_copy_bytes.clone(),
            "tlsCA" => self.tls_ca.clone(),
            "tlsCert" => self.tls_cert.clone(),
            "tlsKey" => self.tls_key.clone(),
            "user" => self.user.clone(),
            "passwordFile" => self.password_file.clone(),
            "tokenFile" => self.token_file.clone(),
            "nkeySeedFile" => self.nkey_seed_file.clone(),
            "credsFile" => self.creds_file.clone(),
            _ => None,
        }
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Subcommand {
    Demo(Demo),
    Send(Send),
    Status(StatusCmd),
    Keys(Keys),
}

/// This node's signing key and the keys it trusts (in the data folder's keys/).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keys")]
pub struct Keys {
    #[argh(subcommand)]
    pub action: KeysAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum KeysAction {
    Generate(KeysGenerate),
    Show(KeysShow),
    Trust(KeysTrust),
    Distribute(KeysDistribute),
    Revoke(KeysRevoke),
}

/// Create this node's key pair (the agent also creates one on first start).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "generate")]
pub struct KeysGenerate {
    /// replace an existing key: nodes that trust the old one must be given the new one
    #[argh(switch)]
    pub force: bool,
}

/// Print this node's public key, and the line that makes another node trust it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct KeysShow {}

/// Trust a node's public key: its signed commands (if allowed) and replies are accepted.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "trust")]
pub struct KeysTrust {
    /// the node's name
    #[argh(positional)]
    pub node: String,
    /// its public key, as `steward keys show` prints it on that node
    #[argh(positional)]
    pub key: String,
}

/// Never trust a node's keys again (a stolen or retired node): they move from trusted.txt to
/// revoked.txt; `steward keys distribute` then hands the revocation on.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
pub struct KeysRevoke {
    /// the node's name
    #[argh(positional)]
    pub node: String,
}

/// Send the keys this node trusts (and its own) to nodes, as a signed TrustedKeys command
/// through the running agent.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "distribute")]
pub struct KeysDistribute {
    /// only queue the messages; do not wait for the replies
    #[argh(switch)]
    pub no_wait: bool,
    /// the nodes to send the set to
    #[argh(positional, greedy)]
    pub nodes: Vec<String>,
}

/// Send a message through the running agent and wait for its reply, e.g.
/// `steward send --to ship1 -- df -h`; exits with the remote command's exit status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "send")]
pub struct Send {
    /// the node to send to
    #[argh(option)]
    pub to: String,
    /// the method (default CLICommand)
    #[argh(option, default = "String::from(\"CLICommand\")")]
    pub method: String,
    /// the message type: CommandACK, CommandNACK, EventACK or EventNACK (default: the ACK
    /// kind the method is served as: CommandACK for commands, EventACK for events)
    #[argh(option)]
    pub kind: Option<String>,
    /// seconds to wait for the ACK (and the command's kill deadline)
    #[argh(option)]
    pub timeout: Option<u64>,
    /// attempts after the first
    #[argh(option)]
    pub retries: Option<u32>,
    /// seconds to keep trying, whatever the retries
    #[argh(option)]
    pub ttl: Option<u64>,
    /// only queue the message; print its id and return
    #[argh(switch)]
    pub no_wait: bool,
    /// the command and its arguments (after --), or the text of an event
    #[argh(positional, greedy)]
    pub data: Vec<String>,
}

/// Print the running agent's process table and queue depths.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusCmd {}

/// Run a local demo: a nats-server, a central node and ship1 on this machine, one command
/// sent and its output shown.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "demo")]
pub struct Demo {
    /// folder for the demo's data and logs (default: a new folder under /tmp)
    #[argh(option)]
    pub folder: Option<PathBuf>,
}

/// Every option: its seed-style name (flags and config-file keys), argh's name (from which
/// the environment variable's, `STEWARD_<NAME>`, is made), and whether it is a switch.
pub(super) const FLAG_NAMES: &[(&str, &str, bool)] = &[
    ("config", "config", false),
    ("node", "node", false),
    ("brokerAddress", "broker-address", false),
    ("centralErrorLogger", "central-error-logger", true),
    ("defaultMessageRetries", "default-message-retries", false),
    ("defaultMessageTimeout", "default-message-timeout", false),
    ("defaultMessageTTL", "default-message-ttl", false),
    ("profilingPort", "profiling-port", false),
    ("promHostAndPort", "prom-host-and-port", false),
    ("dataFolder", "data-folder", false),
    ("centralNodeName", "central-node-name", false),
    ("allowCommandsFrom", "allow-commands-from", false),
    ("replayWindow", "replay-window", false),
    ("clockCheck", "clock-check", false),
    ("helloInterval", "hello-interval", false),
    ("brokerPingInterval", "broker-ping-interval", false),
    ("maxConcurrentHandlers", "max-concurrent-handlers", false),
    ("keepPublishersAliveFor", "keep-publishers-alive-for", false),
    ("maxPublishers", "max-publishers", false),
    ("maxLogBytesPerHour", "max-log-bytes-per-hour", false),
    ("minFreeBytesForLogs", "min-free-bytes-for-logs", false),
    ("maxHttpBodyBytes", "max-http-body-bytes", false),
    ("maxCopyBytes", "max-copy-bytes", false),
    ("tlsCA", "tls-ca", false),
    ("tlsCert", "tls-cert", false),
    ("tlsKey", "tls-key", false),
    ("user", "user", false),
    ("passwordFile", "password-file", false),
    ("tokenFile", "token-file", false),
    ("nkeySeedFile", "nkey-seed-file", false),
    ("credsFile", "creds-file", false),
    ("version", "version", true),
];

/// Flags of the command line alone, never keys of the config file: the file itself, and
/// `--version`.
pub(super) const COMMAND_LINE_ONLY: &[&str] = &["config", "version"];

/// What argh's error for one of steward's own flags given after a subcommand (`steward status
/// --dataFolder=/srv/steward`: "Unrecognized argument: --data-folder") lacks: where it goes.
pub fn misplaced_flag(error: &str) -> Option<String> {
    let arg = error
        .lines()
        .find_map(|l| l.strip_prefix("Unrecognized argument: "))?;
    let name = arg.trim_start_matches('-');
    let &(camel, _, switch) = FLAG_NAMES
        .iter()
        .find(|(camel, kebab, _)| *camel == name || *kebab == name)?;
    let value = if switch { "" } else { "=…" };
    Some(format!(
        "--{camel} is one of steward's own flags: give it before the subcommand (steward --{camel}{value} status, send or keys …)"
    ))
}

/// Rewrites Go-style flags (`-node=x`, `--brokerAddress=a`, `-centralErrorLogger=true`, `-h`)
/// into argh's form (`--node x`, `--broker-address a`, `--central-error-logger`, `--help`).
pub fn normalize_args(args: &[String]) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(iter.cloned());
            break;
        }
        // Go's flag package, whose flags the seed's are, takes these for help too.
        if arg == "-h" || arg == "-help" {
            out.push("--help".to_string());
            continue;
        }
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            out.push(arg.clone());
            continue;
        };
        let (name, value) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (stripped, None),
        };
        let Some(&(_, kebab, switch)) = FLAG_NAMES
            .iter()
            .find(|(camel, kebab, _)| *camel == name || *kebab == name)
        else {
            out.push(arg.clone());
            continue;
        };
        match (switch, value) {
            // Go's words for true and false (strconv.ParseBool), as the seed's flags took.
            (true, None | Some("true" | "1" | "t" | "T" | "TRUE" | "True")) => {
                out.push(format!("--{kebab}"))
            }
            // Said, so that it wins over the environment and the config file.
            (true, Some("false" | "0" | "f" | "F" | "FALSE" | "False")) => {
                out.push(format!("--not-{kebab}"))
            }
            (true, Some(v)) => {
                return Err(Error::Switch {
                    flag: name.to_string(),
                    value: v.to_string(),
                })
            }
            (false, Some(v)) => {
                out.push(format!("--{kebab}"));
                out.push(v.to_string());
            }
            (false, None) => out.push(format!("--{kebab}")),
        }
    }
    Ok(out)
}

/// Rewrites argh's help text to show the seed's flag names (realigning the columns).
pub fn seed_help(help: &str) -> String {
    let mut help = help.to_string();
    // Longest first, so `--node` does not eat into another name.
    let mut names: Vec<_> = FLAG_NAMES.to_vec();
    names.sort_by_key(|(_, kebab, _)| std::cmp::Reverse(kebab.len()));
    for (camel, kebab, _) in names {
        help = help.replace(&format!("--{kebab}"), &format!("--{camel}"));
        help = help.replace(&format!("<{kebab}>"), &format!("<{camel}>"));
    }
    help.lines()
        .map(
            |line| match line.strip_prefix("  --").and_then(|l| l.split_once("  ")) {
                Some((name, desc)) if name.len() + 2 < 18 => {
                    format!("  {:<18}{}", format!("--{name}"), desc.trim_start())
                }
                _ => line.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}
