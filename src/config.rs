//! Command-line flags → one validated [`Config`].
//!
//! The seed's flags are a contract (`--node="ship1"`, `-brokerAddress 127.0.0.1:4222`,
//! `--centralErrorLogger`), written Go-style: camelCase, one or two dashes, `=value` or a
//! separate value, `=true`/`=false` on switches. argh only knows lowercase `--kebab-case`
//! with separate values, so [`normalize_args`] rewrites the seed's spellings into argh's
//! before parsing, and `--help` is rewritten back, so users only ever see the seed's names.
//! Both spellings work.

use crate::subject::validate_name;
use argh::FromArgs;
use std::path::PathBuf;
use std::time::Duration;

/// Command and control anything asynchronously: send commands and events to nodes over NATS
/// with guaranteed delivery.
#[derive(FromArgs, Debug)]
pub struct Flags {
    #[argh(subcommand)]
    pub command: Option<Subcommand>,
    /// some unique string to identify this Edge unit (default: the host name)
    #[argh(option)]
    pub node: Option<String>,
    /// the address of the message broker; a comma-separated list for a cluster
    /// (default "127.0.0.1:4222")
    #[argh(option, default = "String::from(\"127.0.0.1:4222\")")]
    pub broker_address: String,
    /// set to true if this is the node that should receive the error log's from other nodes
    #[argh(switch)]
    pub central_error_logger: bool,
    /// default amount of retries that will be done before a message is thrown away, and out
    /// of the system (default 3)
    #[argh(option, default = "3")]
    pub default_message_retries: u32,
    /// default message timeout in seconds. This can be overridden on the message level
    /// (default 10)
    #[argh(option, default = "10")]
    pub default_message_timeout: u64,
    /// default time to live in seconds: messages without their own "ttl" are retried
    /// until it runs out, whatever the retries; 0 means use the retries (default 0)
    #[argh(option, default = "0")]
    pub default_message_ttl: u64,
    /// the number of the profiling port: serves the process table as plain text on
    /// 127.0.0.1 (or give host:port)
    #[argh(option)]
    pub profiling_port: Option<String>,
    /// host and port for prometheus listener, e.g. localhost:2112; "off" disables it
    /// (default ":2112")
    #[argh(option, default = "String::from(\":2112\")")]
    pub prom_host_and_port: String,
    /// folder for inmsg.txt, the journal, logs and replies (default: the binary's folder)
    #[argh(option)]
    pub data_folder: Option<PathBuf>,
    /// name of the central node: commands are accepted from it, errors and Hello go to it
    /// (default "central")
    #[argh(option, default = "String::from(\"central\")")]
    pub central_node_name: String,
    /// comma-separated nodes this node accepts commands from (default: the central node)
    #[argh(option)]
    pub allow_commands_from: Option<String>,
    /// seconds between Hello messages to the central node; 0 disables (default 30)
    #[argh(option, default = "30")]
    pub hello_interval: u64,
    /// most received messages handled at once (default 32)
    #[argh(option, default = "32")]
    pub max_concurrent_handlers: usize,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Subcommand {
    Demo(Demo),
}

/// Run a local demo: a nats-server, a central node and ship1 on this machine, one command
/// sent and its output shown.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "demo")]
pub struct Demo {
    /// folder for the demo's data and logs (default: a new folder under /tmp)
    #[argh(option)]
    pub folder: Option<PathBuf>,
}

/// The seed's (Go-style) flag names and argh's, and whether the flag is a switch.
const FLAG_NAMES: &[(&str, &str, bool)] = &[
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
    ("helloInterval", "hello-interval", false),
    ("maxConcurrentHandlers", "max-concurrent-handlers", false),
];

/// Rewrites Go-style flags (`-node=x`, `--brokerAddress=a`, `-centralErrorLogger=true`) into
/// argh's form (`--node x`, `--broker-address a`, `--central-error-logger`).
pub fn normalize_args(args: &[String]) -> Result<Vec<String>, String> {
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
                return Err(format!("--{name} is a switch: {v:?} is not true or false"))
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
    pub allow_commands_from: Vec<String>,
    pub hello_interval: Option<Duration>,
    pub max_handlers: usize,
    /// How long in-flight work may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn from_flags(flags: Flags) -> Result<Config, String> {
        let node = match flags.node {
            Some(n) => n,
            None => host_name()?,
        };
        validate_name(&node).map_err(|e| format!("--node: {e}"))?;
        validate_name(&flags.central_node_name).map_err(|e| format!("--centralNodeName: {e}"))?;
        let brokers = parse_brokers(&flags.broker_address)?;
        if flags.default_message_timeout == 0
            || flags.default_message_timeout > crate::message::MAX_TIMEOUT_SECS
        {
            return Err(format!(
                "--defaultMessageTimeout: {} is not between 1 and {} seconds",
                flags.default_message_timeout,
                crate::message::MAX_TIMEOUT_SECS
            ));
        }
        if flags.max_concurrent_handlers == 0 {
            return Err("--maxConcurrentHandlers must be at least 1".into());
        }
        let allow_commands_from = match flags.allow_commands_from {
            Some(list) => {
                let names: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                for n in &names {
                    validate_name(n).map_err(|e| format!("--allowCommandsFrom: {e}"))?;
                }
                names
            }
            None => vec![flags.central_node_name.clone()],
        };
        let data_folder = match flags.data_folder {
            Some(p) => p,
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .ok_or("cannot find the binary's folder; give --dataFolder")?,
        };
        Ok(Config {
            node,
            brokers,
            central_error_logger: flags.central_error_logger,
            default_retries: flags.default_message_retries,
            default_timeout: Duration::from_secs(flags.default_message_timeout),
            default_ttl: (flags.default_message_ttl > 0).then_some(flags.default_message_ttl),
            profiling_addr: flags.profiling_port.map(|p| listen_addr(&p, "127.0.0.1")),
            prom_addr: match flags.prom_host_and_port.as_str() {
                "" | "off" => None,
                a => Some(listen_addr(a, "0.0.0.0")),
            },
            data_folder,
            central_node: flags.central_node_name,
            allow_commands_from,
            hello_interval: (flags.hello_interval > 0)
                .then(|| Duration::from_secs(flags.hello_interval)),
            max_handlers: flags.max_concurrent_handlers,
            shutdown_grace: Duration::from_secs(5),
        })
    }
}

/// `127.0.0.1:4222,nats://b:4222` → NATS URLs. A bare port means localhost, as does the
/// seed's default "0".
fn parse_brokers(list: &str) -> Result<Vec<String>, String> {
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
        return Err("--brokerAddress: no broker address given".into());
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

fn host_name() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err("cannot read the host name; give --node".into());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    // A fully qualified name would add subject levels: keep the host part.
    Ok(name.split('.').next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn parse(a: &[&str]) -> Result<Config, String> {
        let normalized = normalize_args(&args(a))?;
        let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
        let flags = Flags::from_args(&["steward"], &refs).map_err(|e| e.output)?;
        Config::from_flags(flags)
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
        assert_eq!(c.allow_commands_from, ["central"]);
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
        assert!(parse(&["--node", "ship 1"]).unwrap_err().contains("--node"));
        assert!(parse(&["--node", "a.b"]).unwrap_err().contains("--node"));
        assert!(parse(&["--node", "a", "--defaultMessageTimeout", "0"])
            .unwrap_err()
            .contains("--defaultMessageTimeout"));
        assert!(parse(&["--node", "a", "--centralErrorLogger=yes"])
            .unwrap_err()
            .contains("centralErrorLogger"));
        assert!(parse(&["--node", "a", "--allowCommandsFrom", "x,*"])
            .unwrap_err()
            .contains("--allowCommandsFrom"));
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
