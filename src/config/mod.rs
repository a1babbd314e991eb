//! Command-line flags, the environment and the config file → one validated [`Config`].
//!
//! The seed's flags are a contract (`--node="ship1"`, `-brokerAddress 127.0.0.1:4222`,
//! `--centralErrorLogger`), written Go-style: camelCase, one or two dashes, `=value` or a
//! separate value, `=true`/`=false` on switches. argh only knows lowercase `--kebab-case`
//! with separate values, so [`normalize_args`] rewrites the seed's spellings into argh's
//! before parsing, and `--help` is rewritten back, so users only ever see the seed's names.
//! Both spellings work.
//!
//! In their own files: `flags` (the command line as argh sees it, and the seed's spellings
//! of it), `layers` (the config file and environment beneath the flags), `error` (what is
//! wrong, and where the bad value came from).

use crate::keys::ClockCheck;
use crate::subject::{validate_name, NameError};
use argh::FromArgs;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod error;
mod flags;
mod layers;
#[cfg(test)]
mod tests;

pub use error::{Error, Problem};
pub use flags::*;
use layers::*;

/// Most `--maxConcurrentHandlers`: a permit for each is made at start (a billion, meant as
/// "no limit", was 8 GB asked for at once: the agent aborted at every start).
pub const MAX_HANDLERS: usize = 65_536;

/// Most `--replayWindow`: a year and a day. (Past some 585 million years its milliseconds
/// overflowed, and the window became a fraction of a second: every signed message refused.)
pub const MAX_REPLAY_WINDOW_SECS: u64 = 366 * 24 * 3600;

/// The longest `brokerPingInterval`: a day.
pub const MAX_PING_INTERVAL_SECS: u64 = 24 * 3600;

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
    /// How often the broker link is checked (see [`crate::broker`]).
    pub broker_ping_interval: Duration,
    pub max_handlers: usize,
    /// How long an idle publisher waits before it ends.
    pub keep_publishers_alive_for: Duration,
    /// Most publisher threads at once.
    pub max_publishers: usize,
    /// Bytes each sender may write into errors.log, and into its textlog file, per hour.
    pub max_log_bytes_per_hour: u64,
    /// Free bytes kept for the journal on the data folder's disk (`None`: 64 MiB or 2 % of
    /// the disk, whichever is smaller); see [`crate::log_budget`].
    pub min_free_bytes_for_logs: Option<u64>,
    /// Most bytes of a body `HttpGet` keeps ([`crate::methods::http_get`]).
    pub max_http_body_bytes: u64,
    /// Largest file `CopySrc` copies from this node (see [`crate::methods::copy`]).
    pub max_copy_bytes: u64,
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

/// The environment variables a credential may be given in (instead of its file): never
/// handed on to a command the node runs ([`crate::methods::cli_command`]).
pub const SECRET_VARS: [&str; 3] = ["STEWARD_PASSWORD", "STEWARD_TOKEN", "STEWARD_NKEY_SEED"];

/// How the node proves itself to the broker, and checks the broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub auth: Auth,
    /// The files the credentials were read from (`--passwordFile`, `--tokenFile`,
    /// `--nkeySeedFile`, `--credsFile`, `--tlsKey`): never read out for a sender
    /// ([`crate::methods::private_to_the_node`]).
    pub secret_files: Vec<PathBuf>,
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
        let timeout = o.number_where("defaultMessageTimeout", 10, |&t| {
            (t == 0 || t > crate::message::MAX_TIMEOUT_SECS).then_some(Problem::Timeout(t))
        })?;
        let max_handlers = o.number_where("maxConcurrentHandlers", 32, |&n| {
            (n == 0 || n > MAX_HANDLERS).then_some(Problem::Handlers(n))
        })?;
        let keep_alive = o.number_where("keepPublishersAliveFor", 30, |&n| {
            (n == 0).then_some(Problem::Zero)
        })?;
        // Typed: inferred, it was an i32, and -5 became 18,446,744,073,709,551,611 (no cap).
        let max_publishers = o.number_where::<usize>("maxPublishers", 1000, |&n| {
            (n == 0).then_some(Problem::Zero)
        })?;
        let allow_commands_from = allow_rules(&o, &central.text)?;
        let replay_window = o.number_where("replayWindow", 300, |&n| {
            (n == 0 || n > MAX_REPLAY_WINDOW_SECS).then_some(Problem::ReplayWindow(n))
        })?;
        let clock = o.text("clockCheck", "auto")?;
        let clock_check =
            ClockCheck::parse(&clock.text).ok_or_else(|| clock.bad(Problem::ClockCheck))?;
        let data_folder = data_folder(&o)?;
        let security = o.security()?;
        // Credentials written into an address are what the NATS client sends, whatever
        // else is given: a second way would be taken and silently never used.
        if !matches!(security.auth, Auth::None)
            && brokers
                .iter()
                .any(|u| crate::broker::credentials(u).is_some())
        {
            return Err(Error::Auth(vec![
                security.auth.describe(),
                "credentials in brokerAddress",
            ]));
        }
        let ttl: u64 = o.number("defaultMessageTTL", 0)?;
        let hello: u64 = o.number("helloInterval", 30)?;
        let ping = o.number_where("brokerPingInterval", 30, |&n| {
            (n == 0 || n > MAX_PING_INTERVAL_SECS).then_some(Problem::PingInterval(n))
        })?;
        let max_http_body_bytes = o.number_where(
            "maxHttpBodyBytes",
            crate::methods::http_get::DEFAULT_MAX_BODY_BYTES,
            |&n| (n == 0).then_some(Problem::Zero),
        )?;
        Ok(Config {
            node: node.text,
            brokers,
            central_error_logger: o.switch("centralErrorLogger")?,
            default_retries: o.number_where("defaultMessageRetries", 3, |&n| {
                (n > crate::message::MAX_RETRIES).then_some(Problem::Retries(n))
            })?,
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
            broker_ping_interval: Duration::from_secs(ping),
            max_handlers,
            keep_publishers_alive_for: Duration::from_secs(keep_alive),
            max_publishers,
            max_log_bytes_per_hour: o.number(
                "maxLogBytesPerHour",
                crate::log_budget::DEFAULT_BYTES_PER_HOUR,
            )?,
            min_free_bytes_for_logs: match o.get("minFreeBytesForLogs")? {
                None => None,
                Some(_) => Some(o.number("minFreeBytesForLogs", 0)?),
            },
            max_http_body_bytes,
            max_copy_bytes: o.number("maxCopyBytes", crate::methods::copy::DEFAULT_MAX_BYTES)?,
            shutdown_grace: Duration::from_secs(5),
            security,
        })
    }
}

/// `allowCommandsFrom`: who may send commands here, and which; by default the central node,
/// any command.
fn allow_rules(o: &Options, central: &str) -> Result<Vec<Allow>, Error> {
    Ok(match o.get("allowCommandsFrom")? {
        Some(list) => list
            .text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|rule| Allow::parse(rule).map_err(|e| list.bad(e)))
            .collect::<Result<_, _>>()?,
        None => vec![Allow {
            from: central.to_string(),
            methods: None,
        }],
    })
}

/// `dataFolder`, by default the folder the binary is in (as the seed says).
fn data_folder(o: &Options) -> Result<PathBuf, Error> {
    match o.get("dataFolder")? {
        Some(v) => Ok(PathBuf::from(v.text)),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or(Error::NoDataFolder),
    }
}
