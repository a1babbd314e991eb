//! What is wrong with the configuration, and where the bad value came from.

use super::*;

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
    /// More handlers at once than [`super::MAX_HANDLERS`] (the number given).
    Handlers(usize),
    /// Retries past [`crate::message::MAX_RETRIES`], as a message may not ask for either.
    Retries(u32),
    /// A replay window of 0, or past [`super::MAX_REPLAY_WINDOW_SECS`] (the number given).
    ReplayWindow(u64),
    /// A broker ping interval of 0, or past [`super::MAX_PING_INTERVAL_SECS`].
    PingInterval(u64),
    /// Not auto, on or off.
    ClockCheck,
    /// Not a whole number (the text given).
    Number(String),
    /// Not a switch's value: true, false, yes, no, 1, 0 or empty (the text given).
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
    /// A config file value that is a table, a date or a float (its TOML type).
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
                    .filter(|k| !COMMAND_LINE_ONLY.contains(k))
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
            Problem::Handlers(n) => write!(
                f,
                "{n} handlers at once: between 1 and {} (each may be a thread of its own)",
                super::MAX_HANDLERS
            ),
            Problem::Retries(n) => write!(
                f,
                "{n} retries: at most {} (a node away for long gets a ttl instead: --defaultMessageTTL)",
                crate::message::MAX_RETRIES
            ),
            Problem::ReplayWindow(0) => {
                f.write_str("must be at least 1 second (signed messages carry their sending time)")
            }
            Problem::ReplayWindow(n) => write!(
                f,
                "{n} seconds: at most {} (a year and a day)",
                super::MAX_REPLAY_WINDOW_SECS
            ),
            Problem::PingInterval(n) => write!(
                f,
                "{n} seconds: between 1 and {} (a day; a link silent for two of them is taken as cut)",
                super::MAX_PING_INTERVAL_SECS
            ),
            Problem::ClockCheck => f.write_str("must be auto, on or off"),
            Problem::Number(text) => {
                // A whole number all the same, out of the option's range: said so.
                let t = text.trim();
                let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
                match t.strip_prefix('-') {
                    Some(d) if digits(d) => write!(f, "{text:?}: a negative number is not taken here"),
                    _ if digits(t.strip_prefix('+').unwrap_or(t)) => {
                        write!(f, "{text:?} is past the largest number this option takes")
                    }
                    _ => write!(f, "{text:?} is not a whole number"),
                }
            }
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
