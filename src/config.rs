//! Command-line flags → one validated [`Config`].
//!
//! The seed's flags are a contract (`--node="ship1"`, `-brokerAddress 127.0.0.1:4222`,
//! `--centralErrorLogger`), written Go-style: camelCase, one or two dashes, `=value` or a
//! separate value, `=true`/`=false` on switches. argh only knows lowercase `--kebab-case`
//! with separate values, so [`normalize_args`] rewrites the seed's spellings into argh's
//! before parsing, and `--help` is rewritten back, so users only ever see the seed's names.
//! Both spellings work.

use crate::keys::ClockCheck;
use crate::subject::{validate_name, NameError};
use argh::FromArgs;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// most received messages handled at once (default 32)
    #[argh(option)]
    pub max_concurrent_handlers: Option<String>,
    /// bytes each sender may write into this node's errors.log, and into its textlog file,
    /// per hour; past that its messages are refused (default 67108864, 64 MiB)
    #[argh(option)]
    pub max_log_bytes_per_hour: Option<String>,
    /// free bytes the data folder's disk keeps for the journal: below it, errors.log and
    /// textlog/ writes are refused (default 64 MiB or 2 % of the disk, whichever is smaller)
    #[argh(option)]
    pub min_free_bytes_for_logs: Option<String>,
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
}

impl Flags {
    /// The value given on the command line for an option, by its seed-style name.
    fn value(&self, name: &str) -> Option<String> {
        match name {
            "node" => self.node.clone(),
            "brokerAddress" => self.broker_address.clone(),
            "centralErrorLogger" => self.central_error_logger.then(|| "true".to_string()),
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
            "maxConcurrentHandlers" => self.max_concurrent_handlers.clone(),
            "maxLogBytesPerHour" => self.max_log_bytes_per_hour.clone(),
            "minFreeBytesForLogs" => self.min_free_bytes_for_logs.clone(),
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
    /// the message type: CommandACK, CommandNACK, EventACK or EventNACK (default: CommandACK for CLICommand,
    /// EventACK otherwise)
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
const FLAG_NAMES: &[(&str, &str, bool)] = &[
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
    ("maxConcurrentHandlers", "max-concurrent-handlers", false),
    ("maxLogBytesPerHour", "max-log-bytes-per-hour", false),
    ("minFreeBytesForLogs", "min-free-bytes-for-logs", false),
    ("tlsCA", "tls-ca", false),
    ("tlsCert", "tls-cert", false),
    ("tlsKey", "tls-key", false),
    ("user", "user", false),
    ("passwordFile", "password-file", false),
    ("tokenFile", "token-file", false),
    ("nkeySeedFile", "nkey-seed-file", false),
    ("credsFile", "creds-file", false),
];

/// Rewrites Go-style flags (`-node=x`, `--brokerAddress=a`, `-centralErrorLogger=true`) into
/// argh's form (`--node x`, `--broker-address a`, `--central-error-logger`).
pub fn normalize_args(args: &[String]) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(iter.cloned());
            break;
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
            (true, None | Some("true")) => out.push(format!("--{kebab}")),
            (true, Some("false")) => {}
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

/// Everything a running node needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub brokers: Vec<String>,
    pub central_error_logger: bool,
    pub default_retries: u32,
    pub default_timeout: Duration,
    /// Seconds a message without its own `ttl` is retried, whatever its retries.
    pub default_ttl: Option<u64>,
    pub profiling_addr: Option<String>,
    pub prom_addr: Option<String>,
    pub data_folder: PathBuf,
    pub central_node: String,
    /// Who may send commands here, and which.
    pub allow_commands_from: Vec<Allow>,
    /// How far a signed message's sending time may be from this node's clock.
    pub replay_window: Duration,
    /// When that is checked.
    pub clock_check: ClockCheck,
    pub hello_interval: Option<Duration>,
    pub max_handlers: usize,
    /// Bytes each sender may write into errors.log, and into its textlog file, per hour.
    pub max_log_bytes_per_hour: u64,
    /// Free bytes kept for the journal on the data folder's disk (`None`: 64 MiB or 2 % of
    /// the disk, whichever is smaller); see [`crate::log_budget`].
    pub min_free_bytes_for_logs: Option<u64>,
    /// How long in-flight work may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// TLS and authentication for the broker link.
    pub security: BrokerSecurity,
}

/// One entry of `allowCommandsFrom`: a sender, and the command methods it may call (all,
/// when `methods` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub from: String,
    pub methods: Option<Vec<String>>,
}

impl Allow {
    /// `node` or `node:Method+Method`.
    fn parse(rule: &str) -> Result<Allow, Problem> {
        let (from, methods) = match rule.split_once(':') {
            None => (rule, None),
            Some((from, list)) => {
                let methods: Vec<String> = list.split('+').map(|m| m.trim().to_string()).collect();
                if let Some(m) = methods.iter().find(|m| !crate::methods::is_known(m)) {
                    return Err(Problem::UnknownMethod {
                        rule: rule.to_string(),
                        method: m.clone(),
                    });
                }
                (from, Some(methods))
            }
        };
        validate_name(from).map_err(|source| Problem::Sender {
            rule: rule.to_string(),
            source,
        })?;
        Ok(Allow {
            from: from.to_string(),
            methods,
        })
    }

    /// Whether this rule lets `from` call `method`.
    pub fn permits(&self, from: &str, method: &str) -> bool {
        self.from == from
            && self
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == method))
    }
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.methods {
            None => write!(f, "{}", self.from),
            Some(m) => write!(f, "{}:{}", self.from, m.join("+")),
        }
    }
}

/// How the node proves itself to the broker, and checks the broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub auth: Auth,
}

#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    NKeySeed(Secret),
    CredsFile(PathBuf),
}

impl Auth {
    pub fn describe(&self) -> &'static str {
        match self {
            Auth::None => "no authentication",
            Auth::UserPassword { .. } => "user and password",
            Auth::Token(_) => "token",
            Auth::NKeySeed(_) => "NKey",
            Auth::CredsFile(_) => "credentials file",
        }
    }
}

/// A password, token or seed: kept out of logs and `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Config {
    /// Builds the configuration from flags, the process environment and the config file.
    pub fn from_flags(flags: Flags) -> Result<Config, Error> {
        Config::load(&flags, &|name| std::env::var(name).ok())
    }

    /// Builds the configuration from flags, then `env`, then the config file (named by
    /// `--config` or `STEWARD_CONFIG`), then the defaults. Errors name the flag, variable
    /// or file and key that holds the bad value.
    pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let file = match flags.config.clone().or_else(|| env("STEWARD_CONFIG")) {
            Some(path) => Some(ConfigFile::read(&path)?),
            None => None,
        };
        let o = Options { flags, env, file };
        let node = match o.get("node")? {
            Some(v) => v,
            None => Value::default_for(host_name()?),
        };
        validate_name(&node.text).map_err(|e| node.bad(Problem::Name(e)))?;
        let central = o.text("centralNodeName", "central")?;
        validate_name(&central.text).map_err(|e| central.bad(Problem::Name(e)))?;
        let brokers = o.text("brokerAddress", "127.0.0.1:4222")?;
        let brokers = parse_brokers(&brokers.text).map_err(|e| brokers.bad(e))?;
        let timeout = o.number("defaultMessageTimeout", 10)?;
        if timeout == 0 || timeout > crate::message::MAX_TIMEOUT_SECS {
            let v = o.text("defaultMessageTimeout", "")?;
            return Err(v.bad(Problem::Timeout(timeout)));
        }
        let max_handlers = o.number("maxConcurrentHandlers", 32)?;
        if max_handlers == 0 {
            let v = o.text("maxConcurrentHandlers", "")?;
            return Err(v.bad(Problem::Zero));
        }
        let allow_commands_from = match o.get("allowCommandsFrom")? {
            Some(list) => list
                .text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|rule| Allow::parse(rule).map_err(|e| list.bad(e)))
                .collect::<Result<_, _>>()?,
            None => vec![Allow {
                from: central.text.clone(),
                methods: None,
            }],
        };
        let replay_window = o.number("replayWindow", 300)?;
        if replay_window == 0 {
            let v = o.text("replayWindow", "")?;
            return Err(v.bad(Problem::ZeroReplayWindow));
        }
        let clock = o.text("clockCheck", "auto")?;
        let clock_check =
            ClockCheck::parse(&clock.text).ok_or_else(|| clock.bad(Problem::ClockCheck))?;
        let data_folder = match o.get("dataFolder")? {
            Some(v) => PathBuf::from(v.text),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .ok_or(Error::NoDataFolder)?,
        };
        let security = o.security()?;
        let ttl: u64 = o.number("defaultMessageTTL", 0)?;
        let hello: u64 = o.number("helloInterval", 30)?;
        Ok(Config {
            node: node.text,
            brokers,
            central_error_logger: o.switch("centralErrorLogger")?,
            default_retries: o.number("defaultMessageRetries", 3)?,
            default_timeout: Duration::from_secs(timeout),
            default_ttl: (ttl > 0).then_some(ttl),
            profiling_addr: o
                .get("profilingPort")?
                .map(|p| listen_addr(&p.text, "127.0.0.1")),
            prom_addr: match o.text("promHostAndPort", ":2112")?.text.as_str() {
                "" | "off" => None,
                a => Some(listen_addr(a, "0.0.0.0")),
            },
            data_folder,
            central_node: central.text,
            allow_commands_from,
            replay_window: Duration::from_secs(replay_window),
            clock_check,
            hello_interval: (hello > 0).then(|| Duration::from_secs(hello)),
            max_handlers,
            max_log_bytes_per_hour: o.number(
                "maxLogBytesPerHour",
                crate::log_budget::DEFAULT_BYTES_PER_HOUR,
            )?,
            min_free_bytes_for_logs: match o.get("minFreeBytesForLogs")? {
                None => None,
                Some(_) => Some(o.number("minFreeBytesForLogs", 0)?),
            },
            shutdown_grace: Duration::from_secs(5),
            security,
        })
    }
}

/// Why the configuration could not be built. Each names where the bad value came from
/// (the flag, the environment variable, or the config file and key) and the value, so
/// the operator knows what to change; `steward` prints it and exits with status 2.
#[derive(Debug)]
pub enum Error {
    /// A switch given a value other than true or false (`-centralErrorLogger=yes`).
    Switch { flag: String, value: String },
    /// The config file could not be read.
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    /// The config file is not TOML.
    ParseFile {
        path: String,
        source: toml::de::Error,
    },
    /// The config file has a key that is no option.
    UnknownKey { path: String, key: String },
    /// An option's value is bad. `at` says where it came from: `--node`, `STEWARD_NODE`,
    /// `config file /etc/steward/steward.toml: node`, or `the default`.
    Value { at: String, problem: Problem },
    /// No `--node`, and the host name cannot be read.
    HostName(std::io::Error),
    /// No `--dataFolder`, and the binary's folder cannot be found.
    NoDataFolder,
    /// `--tlsCert` without `--tlsKey`, or the other way round.
    TlsPair,
    /// More than one way to authenticate to the broker (as [`Auth::describe`] names them).
    Auth(Vec<&'static str>),
}

/// What is wrong with an option's value.
#[derive(Debug)]
pub enum Problem {
    /// Not a valid node name.
    Name(NameError),
    /// A message timeout of 0 or past [`crate::message::MAX_TIMEOUT_SECS`].
    Timeout(u64),
    /// 0, where at least 1 is needed.
    Zero,
    /// A replay window of 0.
    ZeroReplayWindow,
    /// Not auto, on or off.
    ClockCheck,
    /// Not a whole number (the text given).
    Number(String),
    /// Not true or false (the text given).
    Switch(String),
    /// A file that does not exist (the path given).
    NoSuchFile(String),
    /// A file that exists and cannot be read.
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A user without a password.
    NoPassword,
    /// Not an NKey seed.
    NotNKeySeed(nkeys::error::Error),
    /// An empty broker list.
    NoBroker,
    /// An `allowCommandsFrom` rule naming a method this build does not have.
    UnknownMethod { rule: String, method: String },
    /// An `allowCommandsFrom` rule whose sender is not a valid node name.
    Sender { rule: String, source: NameError },
    /// A config file list holding something other than strings.
    NotStrings,
    /// A config file value that is a table or a date (its TOML type).
    NotScalar(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Switch { flag, value } => {
                write!(f, "--{flag} is a switch: {value:?} is not true or false")
            }
            Error::ReadFile { path, source } => write!(f, "config file {path}: {source}"),
            Error::ParseFile { path, source } => {
                write!(f, "config file {path}: {}", source.to_string().trim_end())
            }
            Error::UnknownKey { path, key } => {
                let known: Vec<&str> = FLAG_NAMES
                    .iter()
                    .map(|f| f.0)
                    .filter(|k| *k != "config")
                    .collect();
                write!(
                    f,
                    "config file {path}: unknown key {key:?} (known keys: {})",
                    known.join(", ")
                )
            }
            Error::Value { at, problem } => write!(f, "{at}: {problem}"),
            Error::HostName(e) => write!(f, "cannot read the host name ({e}); give --node"),
            Error::NoDataFolder => {
                f.write_str("cannot find the binary's folder; give --dataFolder")
            }
            Error::TlsPair => {
                f.write_str("--tlsCert and --tlsKey go together: give both or neither")
            }
            Error::Auth(ways) => write!(
                f,
                "choose one way to authenticate to the broker, not {}",
                ways.join(" and ")
            ),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Name(e) => write!(f, "{e}"),
            Problem::Timeout(t) => write!(
                f,
                "{t} is not between 1 and {} seconds",
                crate::message::MAX_TIMEOUT_SECS
            ),
            Problem::Zero => f.write_str("must be at least 1"),
            Problem::ZeroReplayWindow => {
                f.write_str("must be at least 1 second (signed messages carry their sending time)")
            }
            Problem::ClockCheck => f.write_str("must be auto, on or off"),
            Problem::Number(text) => write!(f, "{text:?} is not a whole number"),
            Problem::Switch(text) => write!(f, "{text:?} is not true or false"),
            Problem::NoSuchFile(path) => write!(f, "no such file: {path}"),
            Problem::Unreadable { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            Problem::NoPassword => {
                f.write_str("a user needs a password: give --passwordFile or STEWARD_PASSWORD")
            }
            Problem::NotNKeySeed(e) => write!(f, "not an NKey seed ({e})"),
            Problem::NoBroker => f.write_str("no broker address given"),
            Problem::UnknownMethod { rule, method } => {
                write!(f, "{rule:?}: unknown method {method:?}")
            }
            Problem::Sender { rule, source } => write!(f, "{rule:?}: {source}"),
            Problem::NotStrings => f.write_str("a list must hold only strings"),
            Problem::NotScalar(t) => write!(f, "a {t} is not a string, number or boolean"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ReadFile { source, .. } | Error::HostName(source) => Some(source),
            Error::ParseFile { source, .. } => Some(source),
            Error::Value { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

impl std::error::Error for Problem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Problem::Name(e) | Problem::Sender { source: e, .. } => Some(e),
            Problem::Unreadable { source, .. } => Some(source),
            Problem::NotNKeySeed(e) => Some(e),
            _ => None,
        }
    }
}

/// A config file: a TOML table whose keys are the options' seed-style names.
struct ConfigFile {
    path: String,
    table: toml::Table,
}

impl ConfigFile {
    fn read(path: &str) -> Result<ConfigFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_string(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| Error::ParseFile {
            path: path.to_string(),
            source,
        })?;
        if let Some(key) = table
            .keys()
            .find(|key| *key == "config" || !FLAG_NAMES.iter().any(|(camel, _, _)| camel == key))
        {
            return Err(Error::UnknownKey {
                path: path.to_string(),
                key: key.clone(),
            });
        }
        Ok(ConfigFile {
            path: path.to_string(),
            table,
        })
    }
}

/// An option's value as text, and where it came from (for error messages).
struct Value {
    text: String,
    source: String,
}

impl Value {
    fn default_for(text: String) -> Value {
        Value {
            text,
            source: "the default".into(),
        }
    }

    /// This value is bad: an error naming where it came from.
    fn bad(&self, problem: Problem) -> Error {
        bad(&self.source, problem)
    }
}

/// The value from `at` is bad.
fn bad(at: &str, problem: Problem) -> Error {
    Error::Value {
        at: at.to_string(),
        problem,
    }
}

/// The three sources of options, highest first.
struct Options<'a> {
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<ConfigFile>,
}

impl Options<'_> {
    fn get(&self, name: &str) -> Result<Option<Value>, Error> {
        let kebab = FLAG_NAMES
            .iter()
            .find(|(camel, _, _)| *camel == name)
            .map(|f| f.1)
            .expect("every option is in FLAG_NAMES");
        if let Some(text) = self.flags.value(name) {
            return Ok(Some(Value {
                text,
                source: format!("--{name}"),
            }));
        }
        let var = format!("STEWARD_{}", kebab.replace('-', "_").to_uppercase());
        if let Some(text) = (self.env)(&var) {
            return Ok(Some(Value { text, source: var }));
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let Some(value) = file.table.get(name) else {
            return Ok(None);
        };
        let source = format!("config file {}: {name}", file.path);
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let parts: Option<Vec<&str>> = items.iter().map(|v| v.as_str()).collect();
                parts
                    .ok_or_else(|| bad(&source, Problem::NotStrings))?
                    .join(",")
            }
            other => return Err(bad(&source, Problem::NotScalar(other.type_str()))),
        };
        Ok(Some(Value { text, source }))
    }

    /// A file an option names, which must exist.
    fn file(&self, name: &str) -> Result<Option<(PathBuf, String)>, Error> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) if std::path::Path::new(&v.text).is_file() => {
                Ok(Some((PathBuf::from(v.text), v.source)))
            }
            Some(v) => Err(v.bad(Problem::NoSuchFile(v.text.clone()))),
        }
    }

    /// A secret from the file an option names, or from an environment variable; with where
    /// it came from.
    fn secret(&self, file_option: &str, var: &str) -> Result<Option<(Secret, String)>, Error> {
        if let Some((path, source)) = self.file(file_option)? {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    &source,
                    Problem::Unreadable {
                        path: path.clone(),
                        source: e,
                    },
                )
            })?;
            check_private(&path);
            return Ok(Some((Secret(text.trim().to_string()), source)));
        }
        Ok((self.env)(var).map(|v| (Secret(v.trim().to_string()), var.to_string())))
    }

    fn security(&self) -> Result<BrokerSecurity, Error> {
        let tls_ca = self.file("tlsCA")?.map(|(p, _)| p);
        let tls_client = match (self.file("tlsCert")?, self.file("tlsKey")?) {
            (Some((cert, _)), Some((key, _))) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::TlsPair),
        };
        let mut ways = Vec::new();
        if let Some(user) = self.get("user")? {
            let (password, _) = self
                .secret("passwordFile", "STEWARD_PASSWORD")?
                .ok_or_else(|| user.bad(Problem::NoPassword))?;
            ways.push(Auth::UserPassword {
                user: user.text,
                password,
            });
        }
        if let Some((token, _)) = self.secret("tokenFile", "STEWARD_TOKEN")? {
            ways.push(Auth::Token(token));
        }
        if let Some((seed, at)) = self.secret("nkeySeedFile", "STEWARD_NKEY_SEED")? {
            nkeys::KeyPair::from_seed(seed.expose())
                .map_err(|e| bad(&at, Problem::NotNKeySeed(e)))?;
            ways.push(Auth::NKeySeed(seed));
        }
        if let Some((path, _)) = self.file("credsFile")? {
            ways.push(Auth::CredsFile(path));
        }
        if ways.len() > 1 {
            return Err(Error::Auth(ways.iter().map(Auth::describe).collect()));
        }
        Ok(BrokerSecurity {
            tls_ca,
            tls_client,
            auth: ways.pop().unwrap_or_default(),
        })
    }

    fn text(&self, name: &str, default: &str) -> Result<Value, Error> {
        Ok(self
            .get(name)?
            .unwrap_or_else(|| Value::default_for(default.to_string())))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => v
                .text
                .trim()
                .parse()
                .map_err(|_| v.bad(Problem::Number(v.text.clone()))),
        }
    }

    fn switch(&self, name: &str) -> Result<bool, Error> {
        match self.get(name)? {
            None => Ok(false),
            Some(v) => match v.text.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" | "" => Ok(false),
                other => Err(v.bad(Problem::Switch(other.to_string()))),
            },
        }
    }
}

/// `127.0.0.1:4222,nats://b:4222` → NATS URLs. A bare port means localhost, as does the
/// seed's default "0".
fn parse_brokers(list: &str) -> Result<Vec<String>, Problem> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if part.contains("://") {
            part.to_string()
        } else if part == "0" {
            "nats://127.0.0.1:4222".to_string()
        } else if part.chars().all(|c| c.is_ascii_digit()) {
            format!("nats://127.0.0.1:{part}")
        } else {
            format!("nats://{part}")
        };
        out.push(url);
    }
    if out.is_empty() {
        return Err(Problem::NoBroker);
    }
    Ok(out)
}

/// `:2112` → `0.0.0.0:2112` (Go's meaning); `6060` → `<default_host>:6060`.
fn listen_addr(s: &str, default_host: &str) -> String {
    if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if s.chars().all(|c| c.is_ascii_digit()) {
        format!("{default_host}:{s}")
    } else {
        s.to_string()
    }
}

/// Warns when a file holding a secret can be read by others than its owner.
fn check_private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{} holds a secret but others may read it: chmod 600 it",
                path.display()
            );
        }
    }
}

fn host_name() -> Result<String, Error> {
    let name = crate::sys::hostname().map_err(Error::HostName)?;
    let name = name.to_string_lossy();
    // A fully qualified name would add subject levels: keep the host part.
    Ok(name.split('.').next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// The flags as `steward` parses them; the error's text, for tests of what it says.
    fn flags(a: &[&str]) -> Result<Flags, Error> {
        let normalized = normalize_args(&args(a))?;
        let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
        Ok(Flags::from_args(&["steward"], &refs).expect("flags argh takes"))
    }

    fn parse(a: &[&str]) -> Result<Config, Error> {
        Config::from_flags(flags(a)?)
    }

    #[test]
    fn seed_invocations_work_as_written() {
        let c = parse(&["--node=\"ship1\"".replace('"', "").as_str()]).unwrap();
        assert_eq!(c.node, "ship1");
        let c = parse(&[
            "--node=central",
            "--brokerAddress=127.0.0.1:4222",
            "-centralErrorLogger",
        ])
        .unwrap();
        assert_eq!(c.brokers, ["nats://127.0.0.1:4222"]);
        assert!(c.central_error_logger);
        let c = parse(&[
            "-node",
            "ship2",
            "-defaultMessageTimeout",
            "3",
            "-defaultMessageRetries=5",
        ])
        .unwrap();
        assert_eq!(
            (
                c.node.as_str(),
                c.default_timeout.as_secs(),
                c.default_retries
            ),
            ("ship2", 3, 5)
        );
        let c = parse(&[
            "--node",
            "x",
            "--centralErrorLogger=false",
            "--promHostAndPort",
            ":2112",
        ])
        .unwrap();
        assert!(!c.central_error_logger);
        assert_eq!(c.prom_addr.as_deref(), Some("0.0.0.0:2112"));
    }

    #[test]
    fn broker_lists_and_defaults() {
        let c = parse(&[
            "--node",
            "a",
            "--brokerAddress",
            "10.0.0.1:4222, nats://b:4223,4224",
        ])
        .unwrap();
        assert_eq!(
            c.brokers,
            [
                "nats://10.0.0.1:4222",
                "nats://b:4223",
                "nats://127.0.0.1:4224"
            ]
        );
        assert_eq!(
            c.allow_commands_from,
            [Allow {
                from: "central".into(),
                methods: None
            }]
        );
        assert_eq!(c.replay_window, Duration::from_secs(300));
        assert_eq!(c.profiling_addr, None);
        let c = parse(&[
            "--node",
            "a",
            "--profilingPort",
            "6060",
            "--promHostAndPort",
            "off",
        ])
        .unwrap();
        assert_eq!(c.profiling_addr.as_deref(), Some("127.0.0.1:6060"));
        assert_eq!(c.prom_addr, None);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = |a: &[&str]| parse(a).unwrap_err().to_string();
        assert!(e(&["--node", "ship 1"]).contains("--node"));
        assert!(e(&["--node", "a.b"]).contains("--node"));
        assert_eq!(
            e(&["--node", "a", "--defaultMessageTimeout", "0"]),
            "--defaultMessageTimeout: 0 is not between 1 and 604800 seconds"
        );
        assert!(e(&["--node", "a", "--centralErrorLogger=yes"]).contains("centralErrorLogger"));
        assert!(e(&["--node", "a", "--allowCommandsFrom", "x,*"]).contains("--allowCommandsFrom"));
        let err = e(&["--node", "a", "--allowCommandsFrom", "ops:CLIcommand"]);
        assert!(err.contains("unknown method \"CLIcommand\""), "{err}");
        assert_eq!(
            e(&["--node", "a", "--brokerAddress", ","]),
            "--brokerAddress: no broker address given"
        );
        // Typed: where, and what.
        assert!(matches!(
            parse(&["--node", "a", "--maxConcurrentHandlers", "lots"]),
            Err(Error::Value { at, problem: Problem::Number(text) })
                if at == "--maxConcurrentHandlers" && text == "lots"
        ));
    }

    #[test]
    fn allow_rules_name_senders_and_their_methods() {
        let c = parse(&[
            "--node",
            "a",
            "--allowCommandsFrom",
            "central, ops:CLICommand+TextLogging",
        ])
        .unwrap();
        let allowed = |from: &str, method: &str| {
            c.allow_commands_from
                .iter()
                .any(|rule| rule.permits(from, method))
        };
        assert!(allowed("central", "CLICommand") && allowed("central", "TrustedKeys"));
        assert!(allowed("ops", "CLICommand") && !allowed("ops", "TrustedKeys"));
        assert!(!allowed("ship2", "CLICommand"));
        assert_eq!(
            c.allow_commands_from[1].to_string(),
            "ops:CLICommand+TextLogging"
        );
    }

    fn load(a: &[&str], env: &[(&str, &str)]) -> Result<Config, Error> {
        let flags = flags(a)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steward.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    }

    #[test]
    fn flags_win_over_environment_which_wins_over_the_file() {
        let (_dir, path) = config_file(
            "node = \"from-file\"\nbrokerAddress = [\"a:4222\", \"b:4222\"]\ndefaultMessageTimeout = 7\ndefaultMessageRetries = 9\ncentralErrorLogger = true\nhelloInterval = 0\n",
        );
        let c = load(&["--config", &path], &[]).unwrap();
        assert_eq!(c.node, "from-file");
        assert_eq!(c.brokers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!((c.default_timeout.as_secs(), c.default_retries), (7, 9));
        assert!(c.central_error_logger);
        assert_eq!(c.hello_interval, None);
        let env = [
            ("STEWARD_NODE", "from-env"),
            ("STEWARD_DEFAULT_MESSAGE_TIMEOUT", "8"),
        ];
        let c = load(&["--config", &path], &env).unwrap();
        assert_eq!(
            (
                c.node.as_str(),
                c.default_timeout.as_secs(),
                c.default_retries
            ),
            ("from-env", 8, 9)
        );
        let c = load(&["--config", &path, "--node=from-flag"], &env).unwrap();
        assert_eq!(
            (c.node.as_str(), c.default_timeout.as_secs()),
            ("from-flag", 8)
        );
        // The file can also be named by the environment.
        let c = load(&["--node=x"], &[("STEWARD_CONFIG", &path)]).unwrap();
        assert_eq!(c.default_retries, 9);
    }

    #[test]
    fn config_errors_name_the_key_and_the_file() {
        let (_dir, path) = config_file("node = \"ship1\"\nbrokerAdress = \"x:4222\"\n");
        let e = load(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            e.contains(&path) && e.contains("unknown key \"brokerAdress\""),
            "{e}"
        );
        let (_dir, path) = config_file("node = \"ship1\"\ndefaultMessageTimeout = \"ten\"\n");
        let e = load(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            e.contains(&path) && e.contains("defaultMessageTimeout") && e.contains("\"ten\""),
            "{e}"
        );
        let (_dir, path) = config_file("node = \"ship 1\"\n");
        let e = load(&["--config", &path], &[]).unwrap_err().to_string();
        assert!(
            e.contains(&path) && e.contains("node") && e.contains("space"),
            "{e}"
        );
        let (_dir, path) = config_file("node = [1, 2]\n");
        assert!(load(&["--config", &path], &[])
            .unwrap_err()
            .to_string()
            .contains("only strings"));
        let (_dir, path) = config_file("node = \n");
        assert!(load(&["--config", &path], &[])
            .unwrap_err()
            .to_string()
            .contains(&path));
        let e = load(&["--config", "/no/such/steward.toml"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/steward.toml"), "{e}");
        let e = load(
            &["--node=a"],
            &[("STEWARD_MAX_CONCURRENT_HANDLERS", "lots")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("STEWARD_MAX_CONCURRENT_HANDLERS"), "{e}");
    }

    #[test]
    fn broker_security_options_are_checked_and_secrets_stay_out_of_debug() {
        let (_dir, pw) = config_file("s3cret\n");
        let c = load(
            &["--node=a", "--user=ship1", &format!("--passwordFile={pw}")],
            &[],
        )
        .unwrap();
        assert!(
            matches!(&c.security.auth, Auth::UserPassword { user, password } if user == "ship1" && password.expose() == "s3cret")
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "a secret in Debug output"
        );
        let c = load(&["--node=a"], &[("STEWARD_TOKEN", "tok")]).unwrap();
        assert!(matches!(&c.security.auth, Auth::Token(t) if t.expose() == "tok"));
        let e = load(&["--node=a", "--user=ship1"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--user") && e.contains("password"), "{e}");
        let e = load(
            &["--node=a", "--user=ship1", &format!("--passwordFile={pw}")],
            &[("STEWARD_TOKEN", "tok")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("choose one way"), "{e}");
        let e = load(&["--node=a", &format!("--tlsCert={pw}")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tlsKey"), "{e}");
        let e = load(&["--node=a", "--tlsCA=/no/such/ca.pem"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tlsCA") && e.contains("/no/such/ca.pem"),
            "{e}"
        );
        let e = load(&["--node=a", &format!("--nkeySeedFile={pw}")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an NKey seed"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/steward.toml");
        let c = load(&["--config", path], &[]).unwrap();
        assert_eq!(c.node, "ship1");
    }

    #[test]
    fn help_shows_the_seed_names() {
        let err = Flags::from_args(&["steward"], &["--help"]).unwrap_err();
        let help = seed_help(&err.output);
        for name in [
            "--brokerAddress",
            "--centralErrorLogger",
            "--defaultMessageRetries",
            "--defaultMessageTimeout",
            "--profilingPort",
            "--promHostAndPort",
            "--node",
        ] {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
        assert!(!help.contains("--broker-address"));
    }
}
