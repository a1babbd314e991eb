//! Beneath the flags: the config file (TOML, the seed's option names as keys) and
//! `STEWARD_*` environment variables; a flag wins over the environment, which wins over
//! the file.

use super::*;

/// A config file: a TOML table whose keys are the options' seed-style names.
pub(super) struct ConfigFile {
    pub(super) path: String,
    pub(super) table: toml::Table,
}

/// Largest config file read: a few dozen options take a few kilobytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The text of a config file, which must be a regular file of at most [`MAX_FILE_BYTES`]
/// ([`crate::files::read_small`]: a FIFO nobody writes to held the agent, and `steward
/// status`, before it said anything; /dev/zero was read until memory ran out), and UTF-8.
fn read_text(path: &str) -> std::io::Result<String> {
    let bytes = crate::files::read_small(std::path::Path::new(path), MAX_FILE_BYTES, true)?;
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

impl ConfigFile {
    pub(super) fn read(path: &str) -> Result<ConfigFile, Error> {
        let text = read_text(path).map_err(|source| Error::ReadFile {
            path: path.to_string(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| Error::ParseFile {
            path: path.to_string(),
            source,
        })?;
        if let Some(key) = table.keys().find(|key| {
            COMMAND_LINE_ONLY.contains(&key.as_str())
                || !FLAG_NAMES.iter().any(|(camel, _, _)| camel == key)
        }) {
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
pub(super) struct Value {
    pub(super) text: String,
    pub(super) source: String,
}

impl Value {
    pub(super) fn default_for(text: String) -> Value {
        Value {
            text,
            source: "the default".into(),
        }
    }

    /// This value is bad: an error naming where it came from.
    pub(super) fn bad(&self, problem: Problem) -> Error {
        bad(&self.source, problem)
    }
}

/// The environment variable of an option (`brokerAddress`: `STEWARD_BROKER_ADDRESS`).
fn var_of(name: &str) -> String {
    let kebab = FLAG_NAMES
        .iter()
        .find(|(camel, _, _)| *camel == name)
        .map(|f| f.1)
        .expect("every option is in FLAG_NAMES");
    format!("STEWARD_{}", kebab.replace('-', "_").to_uppercase())
}

/// The value from `at` is bad.
pub(super) fn bad(at: &str, problem: Problem) -> Error {
    Error::Value {
        at: at.to_string(),
        problem,
    }
}

/// The three sources of options, highest first.
pub(super) struct Options<'a> {
    pub(super) flags: &'a Flags,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) file: Option<ConfigFile>,
}

impl Options<'_> {
    pub(super) fn get(&self, name: &str) -> Result<Option<Value>, Error> {
        if let Some(text) = self.flags.value(name) {
            return Ok(Some(Value {
                text,
                source: format!("--{name}"),
            }));
        }
        let var = var_of(name);
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
    pub(super) fn file(&self, name: &str) -> Result<Option<(PathBuf, String)>, Error> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) if std::path::Path::new(&v.text).is_file() => {
                Ok(Some((PathBuf::from(v.text), v.source)))
            }
            Some(v) => Err(v.bad(Problem::NoSuchFile(v.text.clone()))),
        }
    }

    /// Whether `name` is given by the config file alone (no flag, no variable).
    fn in_file_only(&self, name: &str) -> bool {
        self.flags.value(name).is_none()
            && (self.env)(&var_of(name)).is_none()
            && self
                .file
                .as_ref()
                .is_some_and(|f| f.table.contains_key(name))
    }

    /// A secret from the file an option names, or from an environment variable; with where
    /// it came from. As for every option, the variable wins over the config file (and a
    /// flag, or the option's own variable, over the variable).
    pub(super) fn secret(
        &self,
        file_option: &str,
        var: &str,
    ) -> Result<Option<(Secret, String)>, Error> {
        let from_var = (self.env)(var).map(|v| (Secret(v.trim().to_string()), var.to_string()));
        if from_var.is_some() && self.in_file_only(file_option) {
            return Ok(from_var);
        }
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
        Ok(from_var)
    }

    pub(super) fn security(&self) -> Result<BrokerSecurity, Error> {
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
        if let Some((token, _)) = self.secret("tokenFile", SECRET_VARS[1])? {
            ways.push(Auth::Token(token));
        }
        if let Some((seed, at)) = self.secret("nkeySeedFile", SECRET_VARS[2])? {
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
        let mut secret_files = Vec::new();
        for option in [
            "passwordFile",
            "tokenFile",
            "nkeySeedFile",
            "credsFile",
            "tlsKey",
        ] {
            secret_files.extend(self.file(option)?.map(|(path, _)| path));
        }
        Ok(BrokerSecurity {
            tls_ca,
            tls_client,
            auth: ways.pop().unwrap_or_default(),
            secret_files,
        })
    }

    pub(super) fn text(&self, name: &str, default: &str) -> Result<Value, Error> {
        Ok(self
            .get(name)?
            .unwrap_or_else(|| Value::default_for(default.to_string())))
    }

    pub(super) fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => v
                .text
                .trim()
                .parse()
                .map_err(|_| v.bad(Problem::Number(v.text.clone()))),
        }
    }

    /// A number option that `check` must find nothing wrong with; the error names where the
    /// value came from.
    pub(super) fn number_where<T: std::str::FromStr>(
        &self,
        name: &str,
        default: T,
        check: impl FnOnce(&T) -> Option<Problem>,
    ) -> Result<T, Error> {
        let n = self.number(name, default)?;
        match check(&n) {
            None => Ok(n),
            Some(problem) => Err(self.text(name, "")?.bad(problem)),
        }
    }

    pub(super) fn switch(&self, name: &str) -> Result<bool, Error> {
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
pub(super) fn parse_brokers(list: &str) -> Result<Vec<String>, Problem> {
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
pub(super) fn listen_addr(s: &str, default_host: &str) -> String {
    if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if s.chars().all(|c| c.is_ascii_digit()) {
        format!("{default_host}:{s}")
    } else {
        s.to_string()
    }
}

/// Warns when a file holding a secret can be read by others than its owner.
pub(super) fn check_private(path: &std::path::Path) {
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

pub(super) fn host_name() -> Result<String, Error> {
    let name = crate::sys::hostname().map_err(Error::HostName)?;
    let name = name.to_string_lossy();
    // A fully qualified name would add subject levels: keep the host part.
    Ok(name.split('.').next().unwrap_or_default().to_string())
}
